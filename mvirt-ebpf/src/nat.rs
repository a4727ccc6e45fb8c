//! SNAT for public networks, in nftables on the host uplink.
//!
//! The datapath sends traffic of a public network that matches no NIC and no tunnel route up
//! the host stack (the TAP carries the gateway MAC, so the frame is for the host). The host
//! forwards it to the uplink, where the daemon's own nftables table masquerades the network's
//! prefix. Replies are de-NATed by the kernel's conntrack and routed to the VM through a /32
//! host route and a permanent neighbour entry on the NIC's TAP (no ARP towards the VM).
//! The table is rewritten as a whole on every change (`nft -f`, atomic).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ip::{self, CommandError};
use crate::model::format_mac;

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("invalid nftables table or interface name {0:?}")]
    InvalidName(String),
    #[error("cannot enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
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

/// The nftables script for `table`: masquerade `prefixes` leaving through `uplink`.
pub fn script(table: &str, uplink: &str, prefixes: &[Ipv4Net]) -> String {
    let mut s = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    if !prefixes.is_empty() {
        let set: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        s.push_str(&format!(
            "table ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{uplink}\" ip saddr {{ {} }} masquerade\n  }}\n}}\n",
            set.join(", ")
        ));
    }
    s
}

/// Rewrites the NAT table and the host routes of public NICs.
pub fn sync(
    table: &str,
    uplink: &str,
    prefixes: &[Ipv4Net],
    hosts: &[(Ipv4Addr, [u8; 6], String)],
) -> Result<(), NatError> {
    check(table)?;
    check(uplink)?;
    if !prefixes.is_empty() {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NatError::Forwarding)?;
    }
    ip::nft_script(&script(table, uplink, prefixes))?;
    for (addr, mac, tap) in hosts {
        check(tap)?;
        let dst = format!("{addr}/32");
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

/// Removes the NAT table (daemon tests clean up with this).
pub fn remove(table: &str) -> Result<(), NatError> {
    check(table)?;
    ip::nft_script(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_masquerades_public_prefixes_on_the_uplink_only() {
        let s = script("mvirt", "eth0", &["10.0.0.0/24".parse().unwrap()]);
        assert!(s.contains("oifname \"eth0\" ip saddr { 10.0.0.0/24 } masquerade"));
        assert!(s.starts_with("table ip mvirt {}\ndelete table ip mvirt\n"));
        assert!(!script("mvirt", "eth0", &[]).contains("masquerade"));
    }
}
