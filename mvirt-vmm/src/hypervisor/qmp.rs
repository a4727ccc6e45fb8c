//! A minimal QMP client.
//!
//! QEMU serves one QMP client at a time on a socket, so the daemon never keeps a connection
//! open for long: [`execute`] connects, reads the greeting, negotiates capabilities, runs one
//! command and closes. A [`Session`] runs several commands on one connection and can wait for an
//! event (e.g. `DEVICE_DELETED` after `device_del`); events arriving while waiting for a
//! command's answer are kept for a later [`Session::wait_event`].

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::HypervisorError;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` with `arguments` on a fresh connection and returns its `return` value.
pub async fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<Value, HypervisorError> {
    let mut session = Session::connect(socket).await?;
    session.execute(command, arguments).await
}

/// One negotiated QMP connection.
pub struct Session {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    events: VecDeque<Value>,
}

impl Session {
    /// Connects and negotiates capabilities.
    pub async fn connect(socket: &Path) -> Result<Self, HypervisorError> {
        tokio::time::timeout(CALL_TIMEOUT, Self::connect_inner(socket))
            .await
            .map_err(|_| HypervisorError::Timeout(CALL_TIMEOUT))?
    }

    async fn connect_inner(socket: &Path) -> Result<Self, HypervisorError> {
        let stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| HypervisorError::Connect {
                    path: socket.display().to_string(),
                    source,
                })?;
        let (read, write) = stream.into_split();
        let mut session = Self {
            lines: BufReader::new(read).lines(),
            write,
            events: VecDeque::new(),
        };
        let greeting = session.next_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(HypervisorError::Protocol(format!(
                "expected a QMP greeting, got {greeting}"
            )));
        }
        session.execute("qmp_capabilities", None).await?;
        Ok(session)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, HypervisorError> {
        tracing::debug!(command, ?arguments, "QMP call");
        tokio::time::timeout(CALL_TIMEOUT, self.execute_inner(command, arguments))
            .await
            .map_err(|_| HypervisorError::Timeout(CALL_TIMEOUT))?
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, HypervisorError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.write.write_all(&bytes).await?;
        loop {
            let message = self.next_message().await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let desc = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(HypervisorError::Api {
                    call: format!("QMP {command}"),
                    message: desc.to_string(),
                });
            }
            if message.get("event").is_some() {
                self.events.push_back(message);
            }
        }
    }

    /// Waits up to `timeout` for an event named `name` whose `data` satisfies `matches`.
    /// Returns whether it arrived.
    pub async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<bool, HypervisorError> {
        let is_it = |m: &Value| {
            m.get("event").and_then(Value::as_str) == Some(name)
                && matches(m.get("data").unwrap_or(&Value::Null))
        };
        if let Some(pos) = self.events.iter().position(is_it) {
            self.events.remove(pos);
            return Ok(true);
        }
        let wait = async {
            loop {
                let message = self.next_message().await?;
                if is_it(&message) {
                    return Ok::<_, HypervisorError>(());
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    async fn next_message(&mut self) -> Result<Value, HypervisorError> {
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .ok_or_else(|| HypervisorError::Protocol("QMP connection closed".into()))?;
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map_err(|e| HypervisorError::Protocol(format!("bad QMP JSON {line:?}: {e}")));
        }
    }
}
