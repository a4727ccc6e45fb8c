//! The pod half of the node-agent double ([`super::EchoConsole`]): `NodeAgent.PodLogs` and
//! `NodeAgent.PodExec` as mvirt-node relays them to a pod, played here because a real pod needs
//! mvirt-node + mvirt-vmm + a booted microVM (the node's e2e test runs that path).
//!
//! Logs: each container has three lines (`<container> line 1..3`, the second on stderr);
//! `tail` keeps the last N; `follow` then adds `<container> followed N` every 50 ms.
//! Exec: prints the start request (container, command, tty, rows, cols) as one JSON line on
//! stdout and `stderr of <container>` on stderr (on stdout with a TTY), then echoes stdin
//! upper-cased and reports resizes as `resize COLSxROWS`, until stdin closes; the exit code is
//! N for the command `exit N`, else 0.

use std::pin::Pin;

use mvirt_api::proto::{
    pod_exec_input::Input, pod_exec_output::Output, PodExecInput, PodExecOutput, PodLogEntry,
    PodLogsRequest,
};

pub type LogStream =
    Pin<Box<dyn futures::Stream<Item = Result<PodLogEntry, tonic::Status>> + Send>>;
pub type ExecStream =
    Pin<Box<dyn futures::Stream<Item = Result<PodExecOutput, tonic::Status>> + Send>>;

fn check_secret<T>(req: &tonic::Request<T>, secret: &str) -> Result<(), tonic::Status> {
    let auth = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth == format!("Bearer {secret}") {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated("bad relay secret"))
    }
}

fn entry(stream: &str, line: String) -> PodLogEntry {
    PodLogEntry {
        timestamp_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        stream: stream.into(),
        line: line.into_bytes(),
    }
}

pub async fn logs(
    secret: &str,
    req: tonic::Request<PodLogsRequest>,
) -> Result<tonic::Response<LogStream>, tonic::Status> {
    check_secret(&req, secret)?;
    let r = req.into_inner();
    if r.container.is_empty() {
        return Err(tonic::Status::invalid_argument("no container named"));
    }
    let c = r.container.clone();
    let mut lines: Vec<PodLogEntry> = (1..=3)
        .map(|i| {
            entry(
                if i == 2 { "stderr" } else { "stdout" },
                format!("{c} line {i}"),
            )
        })
        .collect();
    if r.tail > 0 && (r.tail as usize) < lines.len() {
        lines.drain(..lines.len() - r.tail as usize);
    }
    let follow = r.follow;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for l in lines {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        for n in 1.. {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if tx
                .send(Ok(entry("stdout", format!("{c} followed {n}"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(tonic::Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

pub async fn exec(
    secret: &str,
    req: tonic::Request<tonic::Streaming<PodExecInput>>,
) -> Result<tonic::Response<ExecStream>, tonic::Status> {
    check_secret(&req, secret)?;
    let mut input = req.into_inner();
    let Some(PodExecInput {
        input: Some(Input::Start(start)),
    }) = input.message().await?
    else {
        return Err(tonic::Status::invalid_argument(
            "the first message must be start",
        ));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let out = |b: Vec<u8>| PodExecOutput {
            output: Some(Output::Stdout(b)),
        };
        let described = serde_json::json!({
            "container": start.container, "command": start.command,
            "tty": start.tty, "rows": start.rows, "cols": start.cols,
        });
        let _ = tx
            .send(Ok(out(format!("{described}\n").into_bytes())))
            .await;
        let err_line = format!("stderr of {}\n", start.container).into_bytes();
        let err = if start.tty {
            out(err_line)
        } else {
            PodExecOutput {
                output: Some(Output::Stderr(err_line)),
            }
        };
        let _ = tx.send(Ok(err)).await;
        while let Ok(Some(m)) = input.message().await {
            let reply = match m.input {
                Some(Input::Stdin(b)) => out(b.to_ascii_uppercase()),
                Some(Input::Resize(s)) => {
                    out(format!("resize {}x{}\n", s.cols, s.rows).into_bytes())
                }
                Some(Input::CloseStdin(_)) => break,
                _ => continue,
            };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
        }
        let code = match start.command.as_slice() {
            [exit, n] if exit == "exit" => n.parse().unwrap_or(255),
            _ => 0,
        };
        let _ = tx
            .send(Ok(PodExecOutput {
                output: Some(Output::ExitCode(code)),
            }))
            .await;
    });
    Ok(tonic::Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}
