//! Address and MAC allocation for NICs. Pure functions of the state (called from `apply`), so
//! every member allocates the same addresses.
//!
//! IPv4: every host address of the prefix except the network and broadcast addresses (the guest
//! gateway is the link-local 169.254.0.1, so `.1` is usable). IPv6: every address except the
//! subnet-router anycast address (`::0` of the prefix). First free wins; a requested address must
//! be inside the prefix and free.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::state::ApiError;

/// How far to search for a free address before giving up (prefixes larger than this are only
/// searched from their start, which is plenty for any real network).
const SEARCH_LIMIT: usize = 1 << 20;

/// Allocates an address from `prefix` (None = the network has no such family → no address).
pub fn allocate(
    prefix: Option<&str>,
    requested: Option<&str>,
    used: &BTreeSet<IpAddr>,
) -> Result<Option<String>, ApiError> {
    let Some(prefix) = prefix else {
        if let Some(r) = requested {
            return Err(ApiError::invalid(format!(
                "address {r} requested but the network has no prefix of that family"
            )));
        }
        return Ok(None);
    };
    let net: IpNet = prefix
        .parse()
        .map_err(|_| ApiError::invalid(format!("invalid prefix {prefix:?}")))?;
    if let Some(r) = requested {
        let ip: IpAddr = r
            .parse()
            .map_err(|_| ApiError::invalid(format!("invalid address {r:?}")))?;
        if !net.contains(&ip) || !usable(&net, &ip) {
            return Err(ApiError::invalid(format!(
                "address {ip} is not usable in {net}"
            )));
        }
        if used.contains(&ip) {
            return Err(ApiError::conflict(format!("address {ip} is in use")));
        }
        return Ok(Some(ip.to_string()));
    }
    for ip in net.hosts().take(SEARCH_LIMIT) {
        if usable(&net, &ip) && !used.contains(&ip) {
            return Ok(Some(ip.to_string()));
        }
    }
    Err(ApiError::conflict(format!(
        "network prefix {net} has no free address"
    )))
}

fn usable(net: &IpNet, ip: &IpAddr) -> bool {
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() >= 31 {
                return true;
            }
            *ip != IpAddr::V4(n.network()) && *ip != IpAddr::V4(n.broadcast())
        }
        IpNet::V6(n) => *ip != IpAddr::V6(n.network()),
    }
}

/// A locally administered unicast MAC derived from the NIC id, bumped past any collision.
pub fn mac_for(id: &str, used: &BTreeSet<String>) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let mut n: u64 = u64::from_be_bytes([
        0, 0, 0, digest[0], digest[1], digest[2], digest[3], digest[4],
    ]);
    loop {
        let b = n.to_be_bytes();
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[3], b[4], b[5], b[6], b[7]
        );
        if !used.contains(&mac) {
            return mac;
        }
        n = (n + 1) & 0xff_ffff_ffff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_free_ipv4_skips_network_and_used_addresses() {
        let mut used = BTreeSet::new();
        let a = allocate(Some("10.0.0.0/24"), None, &used).unwrap().unwrap();
        assert_eq!(a, "10.0.0.1");
        used.insert(a.parse().unwrap());
        let b = allocate(Some("10.0.0.0/24"), None, &used).unwrap().unwrap();
        assert_eq!(b, "10.0.0.2");
    }

    #[test]
    fn a_full_prefix_is_a_conflict() {
        let mut used = BTreeSet::new();
        used.insert("10.0.0.1".parse().unwrap());
        used.insert("10.0.0.2".parse().unwrap());
        let err = allocate(Some("10.0.0.0/30"), None, &used).unwrap_err();
        assert_eq!(err.code, crate::state::ErrorCode::Conflict);
    }

    #[test]
    fn requested_address_must_be_inside_and_free() {
        let mut used = BTreeSet::new();
        used.insert("10.0.0.5".parse().unwrap());
        assert_eq!(
            allocate(Some("10.0.0.0/24"), Some("10.0.1.5"), &used)
                .unwrap_err()
                .code,
            crate::state::ErrorCode::InvalidArgument
        );
        assert_eq!(
            allocate(Some("10.0.0.0/24"), Some("10.0.0.5"), &used)
                .unwrap_err()
                .code,
            crate::state::ErrorCode::Conflict
        );
        assert_eq!(
            allocate(Some("10.0.0.0/24"), Some("10.0.0.255"), &used)
                .unwrap_err()
                .code,
            crate::state::ErrorCode::InvalidArgument
        );
        assert_eq!(
            allocate(Some("10.0.0.0/24"), Some("10.0.0.6"), &used).unwrap(),
            Some("10.0.0.6".into())
        );
    }

    #[test]
    fn ipv6_allocation_starts_after_the_anycast_address() {
        let used = BTreeSet::new();
        assert_eq!(
            allocate(Some("fd00::/64"), None, &used).unwrap(),
            Some("fd00::1".into())
        );
    }

    #[test]
    fn macs_are_stable_local_unicast_and_unique() {
        let used = BTreeSet::new();
        let a = mac_for("abc", &used);
        assert_eq!(a, mac_for("abc", &used));
        assert!(a.starts_with("02:"));
        let mut used = BTreeSet::new();
        used.insert(a.clone());
        assert_ne!(mac_for("abc", &used), a);
    }
}
