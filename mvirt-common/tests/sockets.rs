//! The local daemons' unix sockets: who may connect, what happens to a stale or a live socket,
//! and that TCP needs the flag. Runs as root (it changes users and groups to prove the modes).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use mvirt_common::grpc::{client_endpoint, GrpcServer, ServeError};
use mvirt_common::listen::{bind_unix, Listen, ListenAddr, Listener, SocketOptions};
use mvirt_common::Shutdown;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NOBODY: u32 = 65534;

/// Held across every fork (connect_as) and while a test holds a socket it means to leave stale:
/// a child forked meanwhile by a concurrent test would inherit the listening descriptor (fork
/// without exec keeps even close-on-exec ones) and keep answering on the "stale" socket.
static FORK: Mutex<()> = Mutex::new(());

/// A temp dir that other users may traverse (tempfile makes them 0700), so that only the
/// socket's own mode decides who connects.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Connects to `path` from a forked child running as `uid`/`gid` (no supplementary groups);
/// returns the child's connect result as an errno (0: connected).
fn connect_as(path: &Path, uid: u32, gid: u32) -> i32 {
    // Everything the child needs is prepared before the fork: it only makes system calls.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(201);
            }
            let rc = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let errno = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(errno);
        }
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    let code = libc::WEXITSTATUS(status);
    assert!(
        code < 200,
        "the child could not become {uid}:{gid} ({code})"
    );
    code
}

async fn serve(listener: Listener) -> (Shutdown, tokio::task::JoinHandle<Result<(), ServeError>>) {
    let shutdown = Shutdown::new();
    let server = GrpcServer::new();
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    (shutdown, task)
}

async fn health(endpoint: &str) -> ServingStatus {
    let channel = client_endpoint(endpoint).unwrap().connect().await.unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn socket_is_0600_by_default_serves_health_and_is_removed_on_stop() {
    let dir = open_dir();
    let path = dir.path().join("run/mvirt/vmm.sock");
    let listener = Listener::bind(&ListenAddr::Unix(path.clone()), &SocketOptions::default())
        .await
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    // The missing parent directories were created 0755.
    let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o7777, 0o755);
    assert_eq!(listener.endpoint(), format!("unix:{}", path.display()));

    let (shutdown, task) = serve(listener).await;
    assert_eq!(
        health(&format!("unix:{}", path.display())).await,
        ServingStatus::Serving
    );
    // A bare absolute path is a unix endpoint too.
    assert_eq!(health(path.to_str().unwrap()).await, ServingStatus::Serving);
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket is removed when serving ends");
}

#[tokio::test]
async fn a_non_root_user_cannot_connect_to_a_0600_socket() {
    let dir = open_dir();
    let path = dir.path().join("log.sock");
    let listener = bind_unix(&path, &SocketOptions::default()).unwrap();
    assert_eq!(connect_as(&path, NOBODY, NOBODY), libc::EACCES);
    assert_eq!(connect_as(&path, 0, 0), 0, "root connects");
    // The control: the same user connects once the mode lets it, so the refusal above was the
    // socket's mode and not the directory or the test.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(connect_as(&path, NOBODY, NOBODY), 0);
    drop(listener);
}

#[tokio::test]
async fn socket_group_gives_0660_and_admits_that_group_only() {
    // `daemon` (gid 1) exists on every Debian system; the daemons' packages use `mvirt`.
    let group = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .expect("group daemon");
    let dir = open_dir();
    let path = dir.path().join("zfs.sock");
    let options = SocketOptions {
        group: Some("daemon".into()),
    };
    let _listener = bind_unix(&path, &options).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), group.gid.as_raw());
    assert_eq!(connect_as(&path, NOBODY, group.gid.as_raw()), 0);
    assert_eq!(connect_as(&path, NOBODY, NOBODY), libc::EACCES);

    let unknown = bind_unix(
        &dir.path().join("other.sock"),
        &SocketOptions {
            group: Some("no-such-group-mvirt".into()),
        },
    );
    assert!(matches!(unknown, Err(ServeError::UnknownGroup { .. })));
}

#[tokio::test]
async fn a_stale_socket_from_a_crash_is_replaced() {
    let dir = open_dir();
    let path = dir.path().join("ebpf.sock");
    // A crashed daemon leaves its socket file behind with nobody listening (no fork may copy
    // the descriptor while it is open).
    {
        let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    }
    assert!(path.exists());
    let listener = bind_unix(&path, &SocketOptions::default()).unwrap();
    let (shutdown, task) = serve(listener).await;
    assert_eq!(
        health(&format!("unix:{}", path.display())).await,
        ServingStatus::Serving
    );
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_socket_a_live_daemon_serves_is_not_taken_over() {
    let dir = open_dir();
    let path = dir.path().join("vmm.sock");
    let first = bind_unix(&path, &SocketOptions::default()).unwrap();
    let (shutdown, task) = serve(first).await;

    let second = bind_unix(&path, &SocketOptions::default());
    assert!(
        matches!(second, Err(ServeError::SocketInUse { .. })),
        "{second:?}"
    );
    // The first daemon still has its socket and still answers on it.
    assert_eq!(
        health(&format!("unix:{}", path.display())).await,
        ServingStatus::Serving
    );
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = open_dir();
    let path = dir.path().join("vmm.sock");
    std::fs::write(&path, b"precious").unwrap();
    let result = bind_unix(&path, &SocketOptions::default());
    assert!(matches!(result, Err(ServeError::NotASocket { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

/// Collects what the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tcp_needs_the_flag_and_warns() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let addr: ListenAddr = "127.0.0.1:0".parse().unwrap();
    let refused = Listen {
        addr: addr.clone(),
        allow_tcp: false,
        socket: SocketOptions::default(),
    }
    .bind()
    .await;
    assert!(matches!(refused, Err(ServeError::TcpNotAllowed { .. })));
    assert!(refused.unwrap_err().to_string().contains("--allow-tcp"));

    let listener = Listen {
        addr,
        allow_tcp: true,
        socket: SocketOptions::default(),
    }
    .bind()
    .await
    .unwrap();
    let ListenAddr::Tcp(bound) = listener.local_addr() else {
        panic!("a TCP listener")
    };
    assert_ne!(bound.port(), 0);
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        output.contains("WARN") && output.contains("listening on TCP"),
        "{output}"
    );
    // Served like any other listener.
    let (shutdown, task) = serve(listener).await;
    assert_eq!(
        health(&format!("http://{bound}")).await,
        ServingStatus::Serving
    );
    shutdown.trigger();
    task.await.unwrap().unwrap();
}
