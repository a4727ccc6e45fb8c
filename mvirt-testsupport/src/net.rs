//! Free ports on loopback.

use std::net::{SocketAddr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago. Prefer binding port 0 in-process;
/// use this only when a child process must be given a port on its command line.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
