//! SNAT for public networks (IPv4 and IPv6), in nftables on the host uplink.
//!
//! The datapath sends traffic of a public network that matches no NIC and no tunnel route up
//! the host stack (the TAP carries the gateway MAC, so the frame is for the host). The host
//! forwards it to the uplink, where the daemon's own nftables table (family `inet`, so one
//! table holds both) masquerades the network's IPv4 and IPv6 prefixes — NAT66 like Incus's
//! `ipv6.nat`. Replies are de-NATed by the kernel's conntrack and routed to the VM through a
//! /32 or /128 host route and a permanent neighbour entry on the NIC's TAP (no ARP/NDP towards
//! the VM). The table is rewritten as a whole on every change (`nft -f`, one transaction);
//! the same transaction removes the family-`ip` table of the same name that earlier versions
//! of the daemon owned.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ip::{self, CommandError};
use crate::model::format_mac;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("invalid nftables table or interface name {0:?}")]
    InvalidName(String),
    #[error("cannot enable {0} forwarding")]
    Forwarding(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Command(#[from] CommandError),
}

fn check(name: &str) -> Result<(), NatError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NatError::InvalidName(name.into()))
    }
}

/// Removes `table` (family `inet`) and the family-`ip` table of the same name that earlier
/// versions owned; creating before deleting makes this idempotent.
fn drop_tables(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\ntable ip {table} {{}}\ndelete table ip {table}\n")
}

/// The nftables script for `table`: masquerade `prefixes` (IPv4 and IPv6) leaving through
/// `uplink`.
pub fn script(table: &str, uplink: &str, prefixes: &[IpNet]) -> String {
    let mut s = drop_tables(table);
    let set = |v6: bool| -> Vec<String> {
        prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)) == v6)
            .map(ToString::to_string)
            .collect()
    };
    let mut rules = String::new();
    for (family, list) in [("ip", set(false)), ("ip6", set(true))] {
        if !list.is_empty() {
            rules.push_str(&format!(
                "    oifname \"{uplink}\" {family} saddr {{ {} }} masquerade\n",
                list.join(", ")
            ));
        }
    }
    if !rules.is_empty() {
        s.push_str(&format!(
            "table inet {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{rules}  }}\n}}\n"
        ));
    }
    s
}

/// Rewrites the NAT table and the host routes of public NICs (`hosts`: address, MAC, TAP).
pub fn sync(
    table: &str,
    uplink: &str,
    prefixes: &[IpNet],
    hosts: &[(IpAddr, [u8; 6], String)],
) -> Result<(), NatError> {
    check(table)?;
    check(uplink)?;
    if prefixes.iter().any(|p| matches!(p, IpNet::V4(_))) {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NatError::Forwarding("IPv4", e))?;
    }
    if prefixes.iter().any(|p| matches!(p, IpNet::V6(_))) {
        // IPv6 forwarding is only ever decided by the `all` switch.
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            .map_err(|e| NatError::Forwarding("IPv6", e))?;
    }
    ip::nft_script(&script(table, uplink, prefixes))?;
    for (addr, mac, tap) in hosts {
        check(tap)?;
        let dst = IpNet::from(*addr).to_string();
        ip::ip(&["route", "replace", &dst, "dev", tap])?;
        ip::ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &format_mac(mac),
            "dev",
            tap,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// Removes the NAT table, and the legacy family-`ip` table (daemon tests clean up with this).
pub fn remove(table: &str) -> Result<(), NatError> {
    check(table)?;
    ip::nft_script(&drop_tables(table))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_masquerades_public_prefixes_of_both_families_on_the_uplink_only() {
        let prefixes: Vec<IpNet> = ["10.0.0.0/24", "fd00:77::/64", "10.1.0.0/24"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let s = script("mvirt", "eth0", &prefixes);
        assert!(s.contains("table inet mvirt {\n"));
        assert!(s.contains("oifname \"eth0\" ip saddr { 10.0.0.0/24, 10.1.0.0/24 } masquerade"));
        assert!(s.contains("oifname \"eth0\" ip6 saddr { fd00:77::/64 } masquerade"));
        // The old family-ip table of the same name goes away in the same transaction.
        assert!(s.starts_with(
            "table inet mvirt {}\ndelete table inet mvirt\ntable ip mvirt {}\ndelete table ip mvirt\n"
        ));
        let v4_only = script("mvirt", "eth0", &prefixes[..1]);
        assert!(!v4_only.contains("ip6 saddr"));
        assert!(!script("mvirt", "eth0", &[]).contains("masquerade"));
    }
}
