//! `mvirt vm console`: the VM's serial console over the API's WebSocket, in raw terminal mode.
//!
//! Bytes from the socket go to stdout; keystrokes go to the socket, except the escape sequence
//! `Ctrl+a t`, which detaches (`Ctrl+a Ctrl+a` sends one literal `Ctrl+a`).

use std::io::{IsTerminal, Read, Write};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ApiClient, ApiError};

pub const CTRL_A: u8 = 0x01;

/// Watches keystrokes for `Ctrl+a t`.
#[derive(Debug, Default)]
pub struct EscapeDetector {
    after_ctrl_a: bool,
}

/// What to do with a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Bytes to send to the console.
    pub forward: Vec<u8>,
    /// The user asked to detach.
    pub detach: bool,
}

impl EscapeDetector {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut forward = Vec::with_capacity(input.len());
        for &b in input {
            if self.after_ctrl_a {
                self.after_ctrl_a = false;
                match b {
                    b't' | b'T' => {
                        return Filtered {
                            forward,
                            detach: true,
                        }
                    }
                    CTRL_A => forward.push(CTRL_A),
                    other => forward.extend_from_slice(&[CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.after_ctrl_a = true;
            } else {
                forward.push(b);
            }
        }
        Filtered {
            forward,
            detach: false,
        }
    }
}

/// `http://h:p` → `ws://h:p/v1/vms/<vm>/console?project=<p>`.
pub fn console_url(base: &str, vm: &str, project: &str) -> String {
    crate::commands::ctx::ws_url(base, &console_path(vm), &[("project", project.to_string())])
}

fn console_path(vm: &str) -> String {
    format!("/v1/vms/{}/console", crate::commands::ctx::encode(vm))
}

/// Opens the console WebSocket (authenticated with the API token).
pub async fn connect(
    api: &ApiClient,
    vm: &str,
) -> Result<crate::commands::ctx::WebSocket, ApiError> {
    crate::commands::ctx::websocket(api, &console_path(vm), &[("project", api.project.clone())])
        .await
}

struct RawMode(bool);

impl RawMode {
    fn enable() -> RawMode {
        RawMode(std::io::stdin().is_terminal() && crossterm::terminal::enable_raw_mode().is_ok())
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

pub async fn run(api: &ApiClient, vm: &str) -> Result<(), ApiError> {
    let ws = connect(api, vm).await?;
    eprintln!("Connected to the console of {vm}. Detach with Ctrl+a t.\r");
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    // stdin is blocking: read it on its own thread. The thread ends with the process.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let _raw = RawMode::enable();
    let mut esc = EscapeDetector::default();
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = stdout.write_all(&b); let _ = stdout.flush(); }
                Some(Ok(Message::Text(t))) => { let _ = stdout.write_all(t.as_bytes()); let _ = stdout.flush(); }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ApiError::Unreachable { url: api.base.clone(), reason: e.to_string() }),
            },
            input = rx.recv(), if stdin_open => match input {
                Some(bytes) => {
                    let f = esc.feed(&bytes);
                    if !f.forward.is_empty() && sink.send(Message::Binary(f.forward.into())).await.is_err() {
                        break;
                    }
                    if f.detach {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                }
                None => stdin_open = false,
            },
        }
    }
    drop(_raw);
    eprintln!("\r\nDetached from {vm}.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_t_detaches_and_keeps_earlier_bytes() {
        let mut d = EscapeDetector::default();
        assert_eq!(
            d.feed(b"ls\r\x01t ignored"),
            Filtered {
                forward: b"ls\r".to_vec(),
                detach: true
            }
        );
    }

    #[test]
    fn escape_split_across_reads_still_detaches() {
        let mut d = EscapeDetector::default();
        assert_eq!(
            d.feed(b"a\x01"),
            Filtered {
                forward: b"a".to_vec(),
                detach: false
            }
        );
        assert!(d.feed(b"t").detach);
    }

    #[test]
    fn double_ctrl_a_sends_one_and_other_keys_pass() {
        let mut d = EscapeDetector::default();
        assert_eq!(
            d.feed(b"\x01\x01x\x01y"),
            Filtered {
                forward: b"\x01x\x01y".to_vec(),
                detach: false
            }
        );
    }

    #[test]
    fn console_url_switches_scheme_and_encodes() {
        assert_eq!(
            console_url("http://h:8080", "web-1", "default"),
            "ws://h:8080/v1/vms/web-1/console?project=default"
        );
        assert_eq!(
            console_url("https://h", "a b", "p"),
            "wss://h/v1/vms/a%20b/console?project=p"
        );
    }
}
