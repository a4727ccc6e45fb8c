//! Free ports on loopback, for child processes that must be told their port on the command line.
//!
//! Binding port 0 and releasing it again hands out a port from the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default) — the same range every outgoing
//! connection takes its source port from. Under load a member's Raft client or a test's HTTP
//! client could take that port between the release and the child's bind, and the child died
//! with "Address already in use" (a CI run lost a test that way). So ports come from below the
//! ephemeral range, where only explicit binds land, and each one is reserved for the life of the
//! test process with a lock file: no two test processes — and no two calls in one — get the same
//! port, and a member restarted on its old port finds it still free.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;

/// The ports handed out, below the kernel's default ephemeral range.
const FIRST: u16 = 20_000;
const COUNT: u16 = 12_000;

/// The lock files of the ports this process holds; closed (released) when it exits.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("mvirt-test-ports");
    std::fs::create_dir_all(&dir).expect("create the test port lock directory");
    dir
}

/// A TCP port free on every loopback address, reserved for this process until it exits.
/// Prefer binding port 0 in-process; use this only when a child process must be given a port
/// on its command line.
pub fn free_port() -> u16 {
    let dir = lock_dir();
    let start = rand::random::<u16>() % COUNT;
    for i in 0..COUNT {
        let port = FIRST + (start + i) % COUNT;
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // flock: held by another test process, or by this one for an earlier call (a second
        // open file description of the same file conflicts too).
        if file.try_lock().is_err() {
            continue;
        }
        // The wildcard bind fails while anything listens on this port on any address.
        if TcpListener::bind(("0.0.0.0", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap().push(file);
        return port;
    }
    panic!(
        "no free port in {FIRST}..{}: every one is in use or reserved by another test process",
        FIRST + COUNT
    )
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!((FIRST..FIRST + COUNT).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn a_port_reserved_by_another_process_is_not_handed_out() {
        let port = free_port();
        // Another open file description of the same lock file — what another test process
        // would hold — cannot take the lock.
        let other = File::open(lock_dir().join(port.to_string())).unwrap();
        assert!(other.try_lock().is_err(), "port {port} is not reserved");
    }
}
