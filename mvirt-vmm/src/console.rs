//! Serial consoles: one hub per running VM that multiplexes the hypervisor's console socket to
//! any number of viewers.
//!
//! The hub is the socket's only client. Every byte the guest writes goes into a bounded
//! scrollback (64 KiB) and to every live viewer; a new viewer first gets the scrollback, then live
//! output, with no gap or duplicate (both happen under one lock). Input from any viewer is
//! written to the socket. The hub ends when the hypervisor closes the socket (VM gone) or when
//! the daemon detaches (shutdown); after a daemon restart a new hub is seeded from the tail of
//! the VM's console log, so a late viewer still sees what happened meanwhile.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// How much recent output a new viewer receives.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console is closed (the VM is not running)")]
    Closed,
}

struct HubState {
    scrollback: VecDeque<u8>,
    output: Option<broadcast::Sender<Bytes>>,
}

pub struct ConsoleHub {
    state: Mutex<HubState>,
    input: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
}

impl ConsoleHub {
    /// Connects to `socket` in the background. `seed` pre-fills the scrollback; when `log` is
    /// set, output is also appended to that file (for hypervisors that do not log themselves).
    pub fn attach(socket: PathBuf, seed: Vec<u8>, log: Option<PathBuf>) -> Arc<Self> {
        let (output, _) = broadcast::channel(1024);
        let (input, input_rx) = mpsc::channel(256);
        let mut scrollback = VecDeque::with_capacity(SCROLLBACK_BYTES);
        let start = seed.len().saturating_sub(SCROLLBACK_BYTES);
        scrollback.extend(&seed[start..]);
        let hub = Arc::new(Self {
            state: Mutex::new(HubState {
                scrollback,
                output: Some(output),
            }),
            input,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(pump(hub.clone(), socket, input_rx, log));
        hub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scrollback so far and a receiver for everything after it. `None` when closed.
    pub fn subscribe(&self) -> (Vec<u8>, Option<broadcast::Receiver<Bytes>>) {
        let state = self.state();
        let scrollback: Vec<u8> = state.scrollback.iter().copied().collect();
        (scrollback, state.output.as_ref().map(|s| s.subscribe()))
    }

    /// Writes input to the guest's serial port.
    pub async fn send_input(&self, data: Bytes) -> Result<(), ConsoleError> {
        self.input
            .send(data)
            .await
            .map_err(|_| ConsoleError::Closed)
    }

    pub fn is_closed(&self) -> bool {
        self.state().output.is_none()
    }

    /// Stops the hub (daemon shutdown): the hypervisor keeps its console socket open for the
    /// next daemon.
    pub fn detach(&self) {
        self.cancel.cancel();
    }

    fn publish(&self, data: &[u8]) {
        let mut state = self.state();
        let len = state.scrollback.len();
        let overflow = (len + data.len()).saturating_sub(SCROLLBACK_BYTES);
        state.scrollback.drain(..overflow.min(len));
        let start = data.len().saturating_sub(SCROLLBACK_BYTES);
        state.scrollback.extend(&data[start..]);
        if let Some(output) = &state.output {
            let _ = output.send(Bytes::copy_from_slice(data));
        }
    }

    fn close(&self) {
        self.state().output = None;
    }
}

async fn connect(socket: &PathBuf) -> Option<tokio::net::UnixStream> {
    // The hypervisor's console socket listens from before the hypervisor starts (the daemon
    // binds it), so one attempt suffices.
    match tokio::net::UnixStream::connect(socket).await {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::warn!(socket = %socket.display(), error = %err, "cannot connect to the serial console");
            None
        }
    }
}

async fn pump(
    hub: Arc<ConsoleHub>,
    socket: PathBuf,
    mut input: mpsc::Receiver<Bytes>,
    log: Option<PathBuf>,
) {
    let Some(stream) = connect(&socket).await else {
        hub.close();
        return;
    };
    let mut log_file = match &log {
        Some(path) => tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .ok(),
        None => None,
    };
    let (mut read, mut write) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = hub.cancel.cancelled() => break,
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hub.publish(&buf[..n]);
                    if let Some(file) = log_file.as_mut() {
                        let _ = file.write_all(&buf[..n]).await;
                    }
                }
            },
            Some(data) = input.recv() => {
                if write.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
    }
    hub.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn viewers_get_scrollback_then_live_output_and_input_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hub = ConsoleHub::attach(path.clone(), b"old ".to_vec(), None);
        let (mut guest, _) = listener.accept().await.unwrap();
        guest.write_all(b"boot line\n").await.unwrap();

        let (early_scrollback, early) = hub.subscribe();
        let mut early = early.unwrap();
        // Wait until the hub has read the first line.
        let mut seen = early_scrollback.clone();
        while !String::from_utf8_lossy(&seen).contains("boot line") {
            seen.extend_from_slice(&early.recv().await.unwrap());
        }
        let (late_scrollback, late) = hub.subscribe();
        assert_eq!(late_scrollback, b"old boot line\n");
        guest.write_all(b"more\n").await.unwrap();
        assert_eq!(&early.recv().await.unwrap()[..], b"more\n");
        assert_eq!(&late.unwrap().recv().await.unwrap()[..], b"more\n");

        hub.send_input(Bytes::from_static(b"ls\n")).await.unwrap();
        let mut got = [0u8; 3];
        guest.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ls\n");

        drop(guest);
        while early.recv().await.is_ok() {}
        assert!(hub.is_closed());
    }

    #[test]
    fn scrollback_keeps_only_the_most_recent_bytes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let hub = ConsoleHub::attach(PathBuf::from("/nonexistent/sock"), vec![], None);
            hub.publish(&vec![b'a'; SCROLLBACK_BYTES]);
            hub.publish(b"tail");
            let (scrollback, _) = hub.subscribe();
            assert_eq!(scrollback.len(), SCROLLBACK_BYTES);
            assert!(scrollback.ends_with(b"tail"));
            hub.detach();
        });
    }
}
