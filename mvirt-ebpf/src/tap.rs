//! Persistent TAP devices, one per NIC.
//!
//! The daemon creates the TAP with `TUNSETIFF` + `TUNSETPERSIST` and closes its fd: the device
//! outlives the daemon, and the hypervisor later opens it by name. On the host side every TAP
//! carries the gateway MAC (so frames from the VM addressed to the gateway are "for this host"
//! when they go up the stack, e.g. to the NAT uplink) and has IPv6 disabled (the host must not
//! talk NDP/MLD to the VM; the daemon's responder does) — except on NICs whose IPv6 the host
//! NATs to the uplink (NAT66): there IPv6 is enabled without any address of its own
//! (`addr_gen_mode` none, no RAs accepted), so the host forwards but still never speaks NDP.

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

/// Creates (or adopts) the persistent TAP `name` and brings it up; `host_ipv6`: whether the
/// host stack handles the NIC's IPv6 (NAT66 of public networks). Idempotent.
pub fn ensure(name: &str, host_ipv6: bool) -> Result<(), TapError> {
    check_name(name)?;
    if !ip::link_exists(name) {
        ioctl_tap(name, true)?;
        tracing::info!(tap = name, "created persistent TAP");
    }
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
