//! Where a local daemon listens, and how its unix socket is kept to root (or one group).
//!
//! mvirt-vmm, -zfs, -ebpf and -log run as root (or as the `mvirt` service user) and have no
//! authentication of their own: whoever can connect can start a VM with a host file as its
//! disk. So they listen on a unix socket under `/run/mvirt/` whose file mode is the access
//! control: 0600 (only the socket's owner, and root) by default, 0660 with a group when the
//! operator names one. TCP is still possible for development, but only when asked for with an
//! explicit flag, and the daemon warns when it listens on TCP.
//!
//! A request flows: the daemon's flags give a [`Listen`] → [`Listen::bind`] refuses TCP without
//! `allow_tcp`, or creates the socket ([`Listener::bind`]) → `GrpcServer::serve` accepts on it →
//! when serving ends the socket file is removed (if it is still ours). Clients dial the
//! [`ListenAddr::endpoint`] form (`unix:/path` or `http://host:port`) through
//! [`crate::grpc::client_endpoint`].

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

use crate::grpc::ServeError;

/// Directory of the local daemons' sockets.
pub const RUN_DIR: &str = "/run/mvirt";

/// The default socket of a local daemon: `/run/mvirt/<daemon>.sock`.
pub fn default_socket(daemon: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{daemon}.sock"))
}

/// A listen address: a unix socket path or a TCP `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
#[error("{input:?} is neither a unix socket (unix:/path or an absolute path) nor a TCP host:port")]
pub struct ParseListenAddrError {
    input: String,
}

impl FromStr for ListenAddr {
    type Err = ParseListenAddrError;

    /// `unix:/path`, `unix:///path` or `/path` is a unix socket; `host:port` is TCP.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
            .unwrap_or(s);
        if path.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| ParseListenAddrError {
                input: s.to_string(),
            })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl ListenAddr {
    /// The endpoint a client dials: `unix:/path` or `http://host:port`.
    pub fn endpoint(&self) -> String {
        match self {
            ListenAddr::Unix(path) => format!("unix:{}", path.display()),
            ListenAddr::Tcp(addr) => format!("http://{addr}"),
        }
    }
}

/// Who may connect to a unix socket besides its owner (and root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// None: mode 0600. Some(group): the socket belongs to that group, mode 0660.
    pub group: Option<String>,
}

impl SocketOptions {
    pub fn mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }
}

/// A daemon's listen flags: `--listen`, `--allow-tcp`, `--socket-group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: ListenAddr,
    /// TCP has no access control at all; it must be asked for.
    pub allow_tcp: bool,
    pub socket: SocketOptions,
}

impl Listen {
    /// Binds, refusing a TCP address unless `allow_tcp` is set.
    pub async fn bind(&self) -> Result<Listener, ServeError> {
        if let ListenAddr::Tcp(addr) = self.addr {
            if !self.allow_tcp {
                return Err(ServeError::TcpNotAllowed { addr });
            }
        }
        Listener::bind(&self.addr, &self.socket).await
    }
}

/// A bound listener, TCP or unix.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        socket: SocketFile,
    },
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Listener {
    /// Binds `addr`. A TCP address is bound as given (port 0 picks one) with a warning; a unix
    /// socket is created as [`bind_unix`] describes.
    pub async fn bind(addr: &ListenAddr, socket: &SocketOptions) -> Result<Listener, ServeError> {
        match addr {
            ListenAddr::Tcp(addr) => {
                let listener = crate::grpc::bind(*addr).await?;
                let bound = listener.local_addr().unwrap_or(*addr);
                tracing::warn!(
                    addr = %bound,
                    "listening on TCP: anyone who can reach this address can call this daemon \
                     without authentication; use a unix socket outside development"
                );
                Ok(Listener::Tcp(listener))
            }
            ListenAddr::Unix(path) => bind_unix(path, socket),
        }
    }

    /// The address actually bound (with the port the kernel picked for TCP port 0).
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => ListenAddr::Tcp(addr),
                // A bound TCP listener always has an address; the unspecified one is harmless.
                Err(_) => ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            },
            Listener::Unix { socket, .. } => ListenAddr::Unix(socket.path.clone()),
        }
    }

    /// The endpoint a client dials to reach this listener.
    pub fn endpoint(&self) -> String {
        self.local_addr().endpoint()
    }
}

/// The socket file of a unix listener; removed when dropped, unless another process has
/// replaced it in the meantime.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::debug!(path = %self.path.display(), error = %err, "cannot remove the socket");
                }
            }
        }
    }
}

/// Creates the socket at `path`:
/// - the parent directory is created (mode 0755) when missing;
/// - a socket file nobody answers on (left by a crash) is replaced, but a socket a live process
///   serves is not taken over ([`ServeError::SocketInUse`]), and a file that is not a socket is
///   never deleted ([`ServeError::NotASocket`]);
/// - the socket is bound under a temporary name, given its group and mode, and only then linked
///   into place, so no client can connect while it still has the default permissions.
///
/// Must be called inside a tokio runtime (the listener registers with it).
pub fn bind_unix(path: &Path, options: &SocketOptions) -> Result<Listener, ServeError> {
    let socket_err = |what: &'static str, source: std::io::Error| ServeError::Socket {
        path: path.to_path_buf(),
        what,
        source,
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| ServeError::NotASocket {
            path: path.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| socket_err("cannot create the socket directory", e))?;
    }
    let gid = match &options.group {
        None => None,
        Some(group) => Some(
            nix::unistd::Group::from_name(group)
                .map_err(|e| socket_err("cannot look up the socket group", e.into()))?
                .ok_or_else(|| ServeError::UnknownGroup {
                    group: group.clone(),
                })?
                .gid,
        ),
    };
    remove_stale_socket(path)?;

    let temporary = parent.join(format!(".{file_name}.{}.new", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(|e| socket_err("cannot bind", e))?;
    let prepared = (|| -> Result<(), ServeError> {
        if let Some(gid) = gid {
            nix::unistd::chown(&temporary, None, Some(gid))
                .map_err(|e| socket_err("cannot set the socket group", e.into()))?;
        }
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(options.mode()))
            .map_err(|e| socket_err("cannot set the socket mode", e))?;
        // A hard link, not a rename: it fails if another daemon started at the same moment
        // has put its socket there first, where a rename would silently replace it.
        std::fs::hard_link(&temporary, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ServeError::SocketInUse {
                    path: path.to_path_buf(),
                }
            } else {
                socket_err("cannot move the socket into place", e)
            }
        })
    })();
    let _ = std::fs::remove_file(&temporary);
    prepared?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| socket_err("cannot stat", e))?;
    tracing::info!(
        path = %path.display(),
        mode = format!("{:o}", options.mode()),
        group = options.group.as_deref().unwrap_or("-"),
        "listening on a unix socket"
    );
    Ok(Listener::Unix {
        listener,
        socket: SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}

/// Removes a socket file at `path` that nobody answers on; refuses if someone does.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Socket {
                path: path.to_path_buf(),
                what: "cannot stat",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket nobody serves");
            std::fs::remove_file(path).map_err(|source| ServeError::Socket {
                path: path.to_path_buf(),
                what: "cannot remove the stale socket",
                source,
            })
        }
        Err(source) => Err(ServeError::Socket {
            path: path.to_path_buf(),
            what: "cannot tell whether the existing socket is served",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_paths_and_tcp_addresses() {
        let sock = ListenAddr::Unix(PathBuf::from("/run/mvirt/vmm.sock"));
        assert_eq!(
            "unix:/run/mvirt/vmm.sock".parse::<ListenAddr>().unwrap(),
            sock
        );
        assert_eq!(
            "unix:///run/mvirt/vmm.sock".parse::<ListenAddr>().unwrap(),
            sock
        );
        assert_eq!("/run/mvirt/vmm.sock".parse::<ListenAddr>().unwrap(), sock);
        assert_eq!(
            "[::1]:50051".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:50051".parse().unwrap())
        );
        assert!("vmm.sock".parse::<ListenAddr>().is_err());
        assert!("unix:relative.sock".parse::<ListenAddr>().is_err());
        assert_eq!(sock.endpoint(), "unix:/run/mvirt/vmm.sock");
        assert_eq!(sock.to_string().parse::<ListenAddr>().unwrap(), sock);
        assert_eq!(
            ListenAddr::Tcp("127.0.0.1:7".parse().unwrap()).endpoint(),
            "http://127.0.0.1:7"
        );
    }

    #[test]
    fn default_sockets_live_in_run_mvirt() {
        assert_eq!(default_socket("zfs"), PathBuf::from("/run/mvirt/zfs.sock"));
    }
}
