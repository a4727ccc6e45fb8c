//! Validation of identifiers and names before they reach a command line, a file path, a ZFS
//! dataset or a network interface. Every daemon validates with these, so the rules are one.

use std::fmt;

/// Why a name or id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidName {
    InvalidName {
        what,
        value: value.chars().take(80).collect(),
        reason,
    }
}

/// A resource id: a UUID in canonical lowercase hyphenated form.
pub fn resource_id(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(invalid(what, value, "must not be empty"));
    }
    let bytes = value.as_bytes();
    let ok = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            value,
            "must be a lowercase UUID like 0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f",
        ))
    }
}

/// A user-facing name: a DNS label (1–63 chars of `a-z`, `0-9`, `-`, not starting or ending
/// with `-`).
pub fn dns_label(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(invalid(what, value, "must not be empty"));
    }
    if value.len() > 63 {
        return Err(invalid(what, value, "must be at most 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            what,
            value,
            "may contain only lowercase letters, digits and '-'",
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(what, value, "must not start or end with '-'"));
    }
    Ok(())
}

/// A MAC address `aa:bb:cc:dd:ee:ff`, unicast. Returns the six bytes.
pub fn mac_address(value: &str) -> Result<[u8; 6], InvalidName> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6 {
        return Err(invalid(
            "MAC address",
            value,
            "must be six hex octets separated by ':'",
        ));
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(invalid(
                "MAC address",
                value,
                "each octet must be two hex digits",
            ));
        }
        *slot = u8::from_str_radix(part, 16)
            .map_err(|_| invalid("MAC address", value, "each octet must be two hex digits"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(invalid(
            "MAC address",
            value,
            "must be unicast (multicast bit set)",
        ));
    }
    if mac == [0; 6] {
        return Err(invalid("MAC address", value, "must not be all zero"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_must_be_canonical_uuids() {
        assert!(resource_id("vm id", "0b8f3c1e-2a4d-4f6b-9c1d-7e5a3b2c1d0f").is_ok());
        assert!(resource_id("vm id", "").is_err());
        assert!(resource_id("vm id", "0B8F3C1E-2A4D-4F6B-9C1D-7E5A3B2C1D0F").is_err());
        assert!(resource_id("vm id", "../../etc/passwd").is_err());
        let err = resource_id("vm id", "x; rm -rf /").unwrap_err();
        assert!(err.to_string().contains("invalid vm id"));
    }

    #[test]
    fn dns_labels_follow_rfc_1123() {
        assert!(dns_label("name", "web-1").is_ok());
        assert!(dns_label("name", "-web").is_err());
        assert!(dns_label("name", "Web").is_err());
        assert!(dns_label("name", "a/b").is_err());
        assert!(dns_label("name", &"a".repeat(64)).is_err());
    }

    #[test]
    fn mac_addresses_are_parsed_and_must_be_unicast() {
        assert_eq!(
            mac_address("02:00:00:aa:bb:cc").unwrap(),
            [2, 0, 0, 0xaa, 0xbb, 0xcc]
        );
        assert!(mac_address("01:00:00:aa:bb:cc").is_err());
        assert!(mac_address("02:00:00:aa:bb").is_err());
        assert!(mac_address("zz:00:00:aa:bb:cc").is_err());
        assert!(mac_address("00:00:00:00:00:00").is_err());
    }
}
