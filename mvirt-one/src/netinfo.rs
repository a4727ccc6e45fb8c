//! What `GetNetworkInfo` reports: interfaces with their MAC and addresses, default gateways
//! (from `/proc/net/route` and `/proc/net/ipv6_route`) and DNS servers (`/etc/resolv.conf`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use nix::net::if_::InterfaceFlags;

use crate::proto;

fn prefix_len(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

pub fn collect() -> nix::Result<proto::NetworkInfo> {
    let mut interfaces: BTreeMap<String, proto::NetworkInterface> = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let entry = interfaces
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| proto::NetworkInterface {
                name: ifa.interface_name.clone(),
                ..Default::default()
            });
        entry.up |= ifa.flags.contains(InterfaceFlags::IFF_UP);
        let Some(address) = ifa.address else { continue };
        if let Some(link) = address.as_link_addr() {
            if let Some(mac) = link.addr() {
                entry.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
        } else if let Some(v4) = address.as_sockaddr_in() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().octets().to_vec()))
                .unwrap_or_default();
            entry
                .addresses
                .push(format!("{}/{}", v4.ip(), prefix_len(&mask)));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().octets().to_vec()))
                .unwrap_or_default();
            entry
                .addresses
                .push(format!("{}/{}", v6.ip(), prefix_len(&mask)));
        }
    }
    Ok(proto::NetworkInfo {
        interfaces: interfaces.into_values().collect(),
        default_gateways: default_gateways(),
        dns_servers: dns_servers(),
    })
}

fn default_gateways() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(routes) = std::fs::read_to_string("/proc/net/route") {
        for line in routes.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                if let Ok(gw) = u32::from_str_radix(f[2], 16) {
                    out.push(Ipv4Addr::from(u32::from_be(gw)).to_string());
                }
            }
        }
    }
    if let Ok(routes) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in routes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[0] == "0".repeat(32) && f[1] == "00" && f[4] != "0".repeat(32) {
                if let Ok(gw) = u128::from_str_radix(f[4], 16) {
                    out.push(Ipv6Addr::from(gw).to_string());
                }
            }
        }
    }
    out
}

fn dns_servers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .collect()
}
