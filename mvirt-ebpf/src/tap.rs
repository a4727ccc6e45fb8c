//! Persistent TAP devices, one per NIC.
//!
//! The daemon creates the TAP with `TUNSETIFF` + `TUNSETPERSIST` and closes its fd: the device
//! outlives the daemon, and the hypervisor later opens it by name. On the host side every TAP
//! carries the gateway MAC (so frames from the VM addressed to the gateway are "for this host"
//! when they go up the stack, e.g. to the NAT uplink) and has IPv6 disabled (the host must not
//! talk NDP/MLD to the VM; the daemon's responder does) — except on NICs whose IPv6 the host
//! NATs to the uplink (NAT66): there IPv6 is enabled without any address of its own
//! (`addr_gen_mode` none, no RAs accepted), so the host forwards but still never speaks NDP.
//!
//! Orphans: a TAP that follows the daemon's naming ([`follows_naming`]) but belongs to no stored
//! NIC (left by a crash between creating the device and recording it, or by a delete that died
//! half-way) is found by [`orphans`] and removed by the manager. Every TAP the daemon creates
//! carries the interface alias `mvirt-ebpf:<pin dir>` ([`owner_alias`]), so a TAP of *another*
//! mvirt-ebpf on the same host (tests run several; the pin dir is unique per daemon) is never
//! taken for an orphan. An unmarked TAP with our naming (made by hand, or by a version before
//! the alias) is ours to clean up.

use std::os::fd::AsRawFd;

use crate::ip::{self, CommandError};
use crate::model::{format_mac, GATEWAY_MAC};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("ioctl {op} on TAP {name} failed")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure TAP {name}")]
    Configure {
        name: String,
        #[source]
        source: CommandError,
    },
    #[error("cannot set {setting} on TAP {name}")]
    Sysctl {
        name: String,
        setting: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Interface names reaching ioctls, sysctl paths and command lines.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TapError::InvalidName(name.to_string()))
    }
}

fn ioctl_tap(name: &str, persist: bool) -> Result<(), TapError> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads/writes an ifreq, which `req` is (with the kernel's layout).
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(TapError::Ioctl {
            op: "TUNSETIFF",
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: TUNSETPERSIST takes an int argument by value.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) } < 0 {
        return Err(TapError::Ioctl {
            op: "TUNSETPERSIST",
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates (or adopts) the persistent TAP `name`, marks it with the `owner` alias (see
/// [`owner_alias`]) and brings it up; `host_ipv6`: whether the host stack handles the NIC's
/// IPv6 (NAT66 of public networks). Idempotent.
pub fn ensure(name: &str, host_ipv6: bool, owner: &str) -> Result<(), TapError> {
    check_name(name)?;
    if !ip::link_exists(name) {
        ioctl_tap(name, true)?;
        tracing::info!(tap = name, "created persistent TAP");
    }
    // Marked at once, before anything that may fail: an unmarked device with our name is an
    // orphan for every mvirt-ebpf on the host.
    ip::ip(&["link", "set", "dev", name, "alias", owner]).map_err(|source| {
        TapError::Configure {
            name: name.into(),
            source,
        }
    })?;
    let sysctl = |setting: &'static str, value: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/{setting}");
        std::fs::write(&path, value).map_err(|source| TapError::Sysctl {
            name: name.into(),
            setting,
            source,
        })
    };
    if host_ipv6 {
        // No link-local address (so no DAD, MLD or NDP from the host), no RAs taken from VMs.
        sysctl("addr_gen_mode", "1")?;
        sysctl("accept_ra", "0")?;
        sysctl("disable_ipv6", "0")?;
    } else {
        sysctl("disable_ipv6", "1")?;
    }
    let mac = format_mac(&GATEWAY_MAC);
    ip::ip(&["link", "set", "dev", name, "address", &mac, "up"]).map_err(|source| {
        TapError::Configure {
            name: name.into(),
            source,
        }
    })?;
    Ok(())
}

/// Removes the TAP `name` if it exists.
pub fn remove(name: &str) -> Result<(), TapError> {
    check_name(name)?;
    if !ip::link_exists(name) {
        return Ok(());
    }
    ip::ip(&["link", "del", "dev", name]).map_err(|source| TapError::Configure {
        name: name.into(),
        source,
    })?;
    tracing::info!(tap = name, "removed TAP");
    Ok(())
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The interface alias marking the TAPs of the mvirt-ebpf whose maps are pinned at `pin_dir`.
pub fn owner_alias(pin_dir: &std::path::Path) -> String {
    format!("mvirt-ebpf:{}", pin_dir.display())
}

/// Whether `name` is a TAP name mvirt-ebpf gives its NICs: `mv` + 13 characters of lowercase
/// base32 (`a`–`z`, `2`–`7`; [`mvirt_common::names::tap_name`], a digest of the whole NIC id),
/// or the earlier `mv` + 12 lowercase hex digits (the id's prefix), which devices made by older
/// versions still carry.
pub fn follows_naming(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("mv") else {
        return false;
    };
    let digest = rest.len() == 13
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    digest || is_id_prefix_name(name)
}

/// The `mv` + 12 lowercase hex digits names of versions before the digest names.
fn is_id_prefix_name(name: &str) -> bool {
    name.strip_prefix("mv").is_some_and(|rest| {
        rest.len() == 12
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// TAP devices (tun devices in TAP mode) on the host that follow mvirt-ebpf's naming, are not in
/// `known` (the TAPs of stored NICs) and either carry this daemon's alias `owner`, or carry none
/// and have the id-prefix name of versions that labelled nothing: the devices this daemon must
/// remove. An unlabelled TAP with a digest name is left alone: another mvirt-ebpf on the host
/// (tests run several) may have just created it and not labelled it yet. Any other device,
/// however it is named, is never returned.
pub fn orphans(known: &std::collections::HashSet<String>, owner: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| follows_naming(name) && !known.contains(name))
        .filter(|name| {
            let dev = std::path::Path::new("/sys/class/net").join(name);
            let is_tap = std::fs::read_to_string(dev.join("tun_flags"))
                .ok()
                .and_then(|f| i64::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
                .is_some_and(|flags| flags & i64::from(IFF_TAP) != 0);
            let alias = std::fs::read_to_string(dev.join("ifalias")).unwrap_or_default();
            let alias = alias.trim_end_matches('\n');
            let unlabelled_legacy = alias.is_empty() && is_id_prefix_name(name);
            is_tap && (alias == owner || unlabelled_legacy)
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naming_covers_digest_and_id_prefix_names_and_nothing_else() {
        let digest = mvirt_common::names::tap_name("0190f3a2-7c41-7000-8000-000000000001");
        assert!(follows_naming(&digest), "{digest}");
        assert!(follows_naming("mv0b8f3c1e2a4d"));
        for foreign in [
            "mv0b8f3c1e2a4",    // 11 hex digits
            "mv0b8f3c1e2a4dx",  // 13 characters, but 0, 1, 8 and 9 are not base32
            "mvabcdefghijk1m",  // `1` is not in the base32 alphabet
            "mvABCDEFGHIJKLM",  // upper case
            "mv0B8F3C1E2A4D",   // upper-case hex
            "mvabcdefghijklmn", // too long
            "tap0",
            "mvt1a2b0",
            "xv0b8f3c1e2a4d",
        ] {
            assert!(!follows_naming(foreign), "{foreign}");
        }
    }
}
