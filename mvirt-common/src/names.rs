//! Node-local names derived from resource ids.
//!
//! Ids are UUIDv7: objects created in the same millisecond share their first 12 hex digits (the
//! timestamp), so no name may be cut from an id's prefix. A name either carries the whole id
//! ([`local_name`]) or, where the kernel limits its length (a network interface: 15 bytes), a
//! digest of the whole id ([`tap_name`]). Digest names can in theory collide; the daemon that
//! creates them checks its store and refuses a second object with the same name, so a collision
//! is an error and never a shared device.

use sha2::{Digest, Sha256};

/// Longest name part kept by [`local_name`], so that `name-<32 hex digits>` stays a DNS label
/// (at most 63 characters).
pub const LOCAL_NAME_MAX: usize = 63 - 1 - 32;

/// The name of a node-local object (a ZFS volume's name, a NIC's name in mvirt-ebpf) for a
/// resource called `name` with id `id`: `name-<id without dashes>`. Unique because the id is:
/// two projects' `web` volumes get different local names. An empty name gives `mvirt-<id>`.
pub fn local_name(name: &str, id: &str) -> String {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    let name: String = name.chars().take(LOCAL_NAME_MAX).collect();
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        format!("mvirt-{hex}")
    } else {
        format!("{name}-{hex}")
    }
}

/// The TAP device of a NIC: `mv` + 13 base32 characters (65 bits) of the SHA-256 of the whole
/// id, 15 characters in all (IFNAMSIZ − 1).
pub fn tap_name(nic_id: &str) -> String {
    format!("mv{}", digest(nic_id, 13))
}

/// `chars` (at most 25) lowercase base32 characters of the SHA-256 of the whole `id`: a short
/// name where a program limits lengths (IFNAMSIZ, QEMU's 31-character block node names).
pub fn digest(id: &str, chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(id.as_bytes());
    let mut bits: u128 = 0;
    for b in &digest[..16] {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..chars.min(25))
        .map(|i| {
            let shift = 128 - 5 * (i + 1);
            ALPHABET[((bits >> shift) & 31) as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// UUIDv7-shaped ids that share their millisecond (and so their first 13 characters).
    fn same_millisecond_ids(n: u32) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "0190f3a2-7c41-7{:03x}-8{:03x}-{:012x}",
                    i % 4096,
                    i,
                    i * 7919
                )
            })
            .collect()
    }

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ_for_ids_of_one_millisecond() {
        let ids = same_millisecond_ids(5000);
        let names: HashSet<String> = ids.iter().map(|id| tap_name(id)).collect();
        assert_eq!(names.len(), ids.len());
        for n in &names {
            assert_eq!(n.len(), 15, "{n}");
            assert!(n.starts_with("mv"));
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
        // Stable: the name of an id never changes between versions (devices outlive daemons).
        assert_eq!(
            tap_name("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"),
            tap_name("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f")
        );
        assert_ne!(
            tap_name("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"),
            tap_name("0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0e")
        );
    }

    #[test]
    fn local_names_carry_the_whole_id_and_stay_dns_labels() {
        let ids = same_millisecond_ids(100);
        let names: HashSet<String> = ids.iter().map(|id| local_name("web", id)).collect();
        assert_eq!(names.len(), ids.len());
        let long = "a".repeat(63);
        let n = local_name(&long, &ids[0]);
        assert_eq!(n.len(), 63);
        crate::validate::dns_label("name", &n).unwrap();
        assert_eq!(
            local_name("", "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f"),
            "mvirt-0b8f3c1e2a4d4f6b9c1d7e5a3b2c1d0f"
        );
        // A cut that ends in '-' would not be a DNS label.
        let dashy = format!("{}-b", "a".repeat(LOCAL_NAME_MAX - 1));
        crate::validate::dns_label("name", &local_name(&dashy, &ids[0])).unwrap();
    }
}
