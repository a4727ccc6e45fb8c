//! `mvirt pod exec`: a command in a pod's container over the API's exec WebSocket.
//!
//! Binary frames whose first byte is the channel (Kubernetes `v4.channel.k8s.io` style):
//! 0 stdin (to the server; an empty `[0]` closes the process's stdin), 1 stdout, 2 stderr,
//! 3 status (`{"exit_code": n}` or `{"error": "..."}`, then the server closes), 4 resize (to the
//! server, `{"cols": n, "rows": n}`). The CLI exits with the command's exit code.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{exit, ApiClient, ApiError};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Status(ExecStatus),
}

/// How the remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i32),
    Error(String),
}

/// `[0] + data`: input for the process (an empty `data` closes its stdin).
pub fn stdin_frame(data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 1);
    f.push(STDIN);
    f.extend_from_slice(data);
    f
}

/// `[4] + {"cols","rows"}`: the terminal's new size.
pub fn resize_frame(cols: u16, rows: u16) -> Vec<u8> {
    let mut f = vec![RESIZE];
    f.extend_from_slice(json!({"cols": cols, "rows": rows}).to_string().as_bytes());
    f
}

/// Decodes a binary frame from the server; a frame the client must not receive is an error.
pub fn decode(frame: &[u8]) -> Result<ServerFrame, String> {
    let (&channel, data) = frame
        .split_first()
        .ok_or_else(|| "the API sent an empty exec frame".to_string())?;
    match channel {
        STDOUT => Ok(ServerFrame::Stdout(data.to_vec())),
        STDERR => Ok(ServerFrame::Stderr(data.to_vec())),
        STATUS => {
            let v: Value = serde_json::from_slice(data).map_err(|e| {
                format!(
                    "the API sent an exec status that is not JSON ({e}): {}",
                    String::from_utf8_lossy(data)
                )
            })?;
            if let Some(code) = v.get("exit_code").and_then(Value::as_i64) {
                Ok(ServerFrame::Status(ExecStatus::Exited(
                    i32::try_from(code).unwrap_or(i32::MAX),
                )))
            } else if let Some(e) = v.get("error").and_then(Value::as_str) {
                Ok(ServerFrame::Status(ExecStatus::Error(e.to_string())))
            } else {
                Err(format!(
                    "the API sent an exec status without exit_code or error: {v}"
                ))
            }
        }
        other => Err(format!(
            "the API sent an exec frame on unknown channel {other}"
        )),
    }
}

/// The CLI's exit code for a remote exit code: 0-255 as they are; a negative code (the
/// process was killed by signal n, reported as -n) becomes 128 + n like a shell; anything
/// else larger is cut to its low byte, as the kernel would.
pub fn exit_code_for(code: i32) -> i32 {
    match code {
        0..=255 => code,
        c if c < 0 => (128 + c.unsigned_abs().min(127)) as i32,
        c => c & 0xff,
    }
}

/// What an exec asks for.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Pod id (or name).
    pub pod: String,
    pub container: Option<String>,
    pub tty: bool,
    pub command: Vec<String>,
    /// The local terminal's size (`cols`, `rows`) when it is one: the remote terminal starts so.
    pub size: Option<(u16, u16)>,
}

/// The exec endpoint's path and query: each argument is its own `command=` value, so nothing
/// is ever joined into a shell line.
pub fn exec_query(r: &ExecRequest, project: &str) -> (String, Vec<(&'static str, String)>) {
    let path = format!("/v1/pods/{}/exec", crate::commands::ctx::encode(&r.pod));
    let mut q = vec![("project", project.to_string())];
    if let Some(c) = &r.container {
        q.push(("container", c.clone()));
    }
    q.push(("tty", r.tty.to_string()));
    if let (true, Some((cols, rows))) = (r.tty, r.size) {
        q.push(("cols", cols.to_string()));
        q.push(("rows", rows.to_string()));
    }
    for a in &r.command {
        q.push(("command", a.clone()));
    }
    (path, q)
}

/// Input to an exec session.
#[derive(Debug)]
pub enum Input {
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The local stdin ended: close the process's stdin.
    Eof,
    /// The local terminal is now `cols`×`rows`.
    Resize(u16, u16),
}

/// Runs one exec over an open WebSocket: `input` goes to the server, stdout/stderr frames to
/// `out`/`err`; returns the remote exit code, or the error the server reported. With
/// `stdin_open` false the process's stdin is closed at once.
pub async fn session<S, O, E>(
    ws: S,
    mut input: mpsc::Receiver<Input>,
    stdin_open: bool,
    out: &mut O,
    err: &mut E,
) -> Result<i32, ApiError>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let broken = |e: tokio_tungstenite::tungstenite::Error| {
        ApiError::Other(format!("the exec connection broke: {e}"))
    };
    let (mut sink, mut source) = ws.split();
    let mut stdin_open = stdin_open;
    if !stdin_open {
        sink.send(Message::Binary(stdin_frame(&[]).into()))
            .await
            .map_err(broken)?;
    }
    // Resizes flow even when stdin is not passed (`-t` without `-i`).
    let mut input_open = true;
    let mut status: Option<ExecStatus> = None;
    loop {
        tokio::select! {
            m = source.next() => match m {
                Some(Ok(Message::Binary(b))) => match decode(&b).map_err(ApiError::BadResponse)? {
                    ServerFrame::Stdout(d) => { let _ = out.write_all(&d).await; let _ = out.flush().await; }
                    ServerFrame::Stderr(d) => { let _ = err.write_all(&d).await; let _ = err.flush().await; }
                    ServerFrame::Status(s) => status = Some(s),
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if status.is_some() { break; }
                    return Err(broken(e));
                }
            },
            i = input.recv(), if input_open => {
                let frame = match i {
                    Some(Input::Stdin(d)) if d.is_empty() || !stdin_open => continue,
                    Some(Input::Stdin(d)) => stdin_frame(&d),
                    Some(Input::Resize(cols, rows)) => resize_frame(cols, rows),
                    Some(Input::Eof) | None => {
                        input_open = i.is_some();
                        if !stdin_open { continue; }
                        stdin_open = false;
                        stdin_frame(&[])
                    }
                };
                // The server may already be done (the process exited): its status follows.
                let _ = sink.send(Message::Binary(frame.into())).await;
            }
        }
    }
    let _ = sink.close().await;
    match status {
        Some(ExecStatus::Exited(c)) => Ok(c),
        Some(ExecStatus::Error(e)) => Err(ApiError::Other(format!("exec failed: {e}"))),
        None => Err(ApiError::Other(
            "the exec stream ended without the command's exit status".into(),
        )),
    }
}

/// The local terminal in raw mode while it lives (only when stdin is a terminal).
struct RawMode(bool);

impl RawMode {
    fn enable(want: bool) -> RawMode {
        use std::io::IsTerminal;
        RawMode(
            want && std::io::stdin().is_terminal()
                && crossterm::terminal::enable_raw_mode().is_ok(),
        )
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// `mvirt pod exec`: connects, wires the local stdin (with `-i`), the terminal (raw mode and
/// SIGWINCH → resize with `-t`), stdout and stderr, and returns the CLI's exit code.
pub async fn run(api: &ApiClient, r: &ExecRequest, interactive: bool) -> Result<i32, ApiError> {
    use std::io::{IsTerminal, Read};
    let terminal = r.tty && std::io::stdin().is_terminal();
    let mut r = r.clone();
    if terminal {
        r.size = crossterm::terminal::size().ok();
    }
    let (path, q) = exec_query(&r, &api.project);
    let ws = crate::commands::ctx::websocket(api, &path, &q).await?;
    let (tx, rx) = mpsc::channel::<Input>(64);
    if interactive {
        let stdin_tx = tx.clone();
        // stdin is blocking: read it on its own thread (it ends with the process).
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.blocking_send(Input::Eof);
                        break;
                    }
                    Ok(n) => {
                        if stdin_tx
                            .blocking_send(Input::Stdin(buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
    }
    if terminal {
        let resize_tx = tx.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Ok((cols, rows)) = crossterm::terminal::size() {
                        if resize_tx.send(Input::Resize(cols, rows)).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    }
    // Without -i nobody else holds a sender: the session must not wait on input.
    drop(tx);
    let raw = RawMode::enable(terminal);
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let result = session(ws, rx, interactive, &mut out, &mut err).await;
    drop(raw);
    result.map(exit_code_for)
}

/// `exec`'s exit code when it failed before or instead of the remote command.
pub fn failure_code(e: &ApiError) -> i32 {
    match e {
        ApiError::Other(_) | ApiError::BadResponse(_) => exit::API,
        other => other.exit_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_with_their_channel() {
        assert_eq!(stdin_frame(b"ls\n"), b"\x00ls\n");
        assert_eq!(stdin_frame(b""), [0u8]);
        let r = resize_frame(120, 40);
        assert_eq!(r[0], RESIZE);
        let v: Value = serde_json::from_slice(&r[1..]).unwrap();
        assert_eq!(v, json!({"cols": 120, "rows": 40}));
    }

    #[test]
    fn server_frames_decode_and_bad_ones_are_errors() {
        assert_eq!(
            decode(b"\x01hi").unwrap(),
            ServerFrame::Stdout(b"hi".to_vec())
        );
        assert_eq!(
            decode(b"\x02oops").unwrap(),
            ServerFrame::Stderr(b"oops".to_vec())
        );
        assert_eq!(decode(b"\x01").unwrap(), ServerFrame::Stdout(vec![]));
        assert_eq!(
            decode(b"\x03{\"exit_code\":7}").unwrap(),
            ServerFrame::Status(ExecStatus::Exited(7))
        );
        assert_eq!(
            decode(b"\x03{\"error\":\"no such container\"}").unwrap(),
            ServerFrame::Status(ExecStatus::Error("no such container".into()))
        );
        assert!(decode(b"").unwrap_err().contains("empty"));
        assert!(decode(b"\x03nope").unwrap_err().contains("not JSON"));
        assert!(decode(b"\x03{}").unwrap_err().contains("without exit_code"));
        assert!(decode(b"\x00x").unwrap_err().contains("unknown channel 0"));
        assert!(decode(b"\x09x").unwrap_err().contains("unknown channel 9"));
    }

    #[test]
    fn remote_exit_codes_map_like_a_shell() {
        assert_eq!(exit_code_for(0), 0);
        assert_eq!(exit_code_for(3), 3);
        assert_eq!(exit_code_for(255), 255);
        assert_eq!(exit_code_for(256), 0);
        assert_eq!(exit_code_for(257), 1);
        assert_eq!(exit_code_for(-9), 137);
        assert_eq!(exit_code_for(-15), 143);
        assert_eq!(exit_code_for(i32::MIN), 255);
    }

    #[test]
    fn every_argument_is_its_own_query_value() {
        let r = ExecRequest {
            pod: "web".into(),
            container: Some("writer".into()),
            tty: true,
            command: vec!["sh".into(), "-c".into(), "echo $HOME; exit 3".into()],
            size: Some((100, 30)),
        };
        let (path, q) = exec_query(&r, "default");
        assert_eq!(path, "/v1/pods/web/exec");
        let url = crate::commands::ctx::ws_url("http://h", &path, &q);
        assert_eq!(
            url,
            "ws://h/v1/pods/web/exec?project=default&container=writer&tty=true&cols=100&rows=30&command=sh&command=-c&command=echo%20%24HOME%3B%20exit%203"
        );
    }

    /// A scripted exec server: records every frame the client sends, echoes stdin upper-cased
    /// on stdout until it has `wait_frames` frames, then answers with `script` and closes.
    async fn scripted_server(
        script: Vec<Vec<u8>>,
        wait_frames: usize,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let mut got = Vec::new();
            while got.len() < wait_frames {
                let Some(Ok(m)) = ws.next().await else { break };
                if let Message::Binary(b) = m {
                    got.push(b.to_vec());
                    if b[0] == STDIN && b.len() > 1 {
                        let mut f = vec![STDOUT];
                        f.extend(b[1..].to_ascii_uppercase());
                        ws.send(Message::Binary(f.into())).await.unwrap();
                    }
                }
            }
            for f in script {
                ws.send(Message::Binary(f.into())).await.unwrap();
            }
            let _ = ws.close(None).await;
            // Drain what the client still sends (its close).
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Binary(b) = m {
                    got.push(b.to_vec());
                }
            }
            got
        });
        (url, task)
    }

    async fn connect(url: &str) -> crate::commands::ctx::WebSocket {
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }

    #[tokio::test]
    async fn output_goes_to_its_stream_and_the_exit_code_comes_back() {
        let (url, server) = scripted_server(
            vec![
                b"\x01out-1\n".to_vec(),
                b"\x02err-1\n".to_vec(),
                b"\x01out-2\n".to_vec(),
                b"\x03{\"exit_code\":3}".to_vec(),
            ],
            0,
        )
        .await;
        let ws = connect(&url).await;
        let (_tx, rx) = mpsc::channel(4);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = session(ws, rx, false, &mut out, &mut err).await.unwrap();
        assert_eq!(code, 3);
        assert_eq!(out, b"out-1\nout-2\n");
        assert_eq!(err, b"err-1\n");
        // Without -i the process's stdin is closed at once.
        assert_eq!(server.await.unwrap(), vec![vec![STDIN]]);
    }

    #[tokio::test]
    async fn stdin_and_resize_reach_the_server_and_eof_closes_stdin() {
        let (url, server) = scripted_server(vec![b"\x03{\"exit_code\":0}".to_vec()], 3).await;
        let ws = connect(&url).await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(Input::Resize(100, 30)).await.unwrap();
        tx.send(Input::Stdin(b"hello\n".to_vec())).await.unwrap();
        tx.send(Input::Eof).await.unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = session(ws, rx, true, &mut out, &mut err).await.unwrap();
        assert_eq!(code, 0);
        assert_eq!(out, b"HELLO\n");
        let got = server.await.unwrap();
        assert_eq!(got[0], resize_frame(100, 30));
        assert_eq!(got[1], stdin_frame(b"hello\n"));
        assert_eq!(got[2], vec![STDIN]);
    }

    #[tokio::test]
    async fn without_stdin_resizes_still_flow_and_stdin_bytes_do_not() {
        let (url, server) = scripted_server(vec![b"\x03{\"exit_code\":0}".to_vec()], 2).await;
        let ws = connect(&url).await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(Input::Stdin(b"ignored".to_vec())).await.unwrap();
        tx.send(Input::Resize(80, 24)).await.unwrap();
        drop(tx);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // The close of stdin comes first (no -i), then the resize; stdin bytes never.
        let code = session(ws, rx, false, &mut out, &mut err).await.unwrap();
        assert_eq!(code, 0);
        let got = server.await.unwrap();
        assert_eq!(got[0], vec![STDIN]);
        assert_eq!(got[1..], [resize_frame(80, 24)]);
    }

    #[tokio::test]
    async fn an_error_status_or_a_missing_status_fails_the_exec() {
        let (url, _server) = scripted_server(
            vec![b"\x03{\"error\":\"container writer is not running\"}".to_vec()],
            0,
        )
        .await;
        let (_tx, rx) = mpsc::channel(1);
        let e = session(
            connect(&url).await,
            rx,
            false,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "exec failed: container writer is not running"
        );
        assert_eq!(failure_code(&e), exit::API);

        let (url, _server) = scripted_server(vec![b"\x01partial".to_vec()], 0).await;
        let (_tx, rx) = mpsc::channel(1);
        let e = session(
            connect(&url).await,
            rx,
            false,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("without the command's exit status"),
            "{e}"
        );
    }
}
