//! Exec: a command started in a running container's namespaces, its input fed and its output
//! streamed back, ending with the exit code.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use tokio::sync::mpsc;

use crate::launch::{self, ExecLaunch};

use super::{
    join_threads, pass_status_fd, read_report, status_pipe, ContainerState, ExecInput, ExecOutput,
    ExecRequest, Runtime, RuntimeError,
};

impl Runtime {
    /// Starts a command in a running container. Returns a sender for input and a receiver of
    /// output ending with [`ExecOutput::Exit`].
    pub async fn exec(
        &self,
        request: ExecRequest,
    ) -> Result<(mpsc::Sender<ExecInput>, mpsc::Receiver<ExecOutput>), RuntimeError> {
        let pod = self.pod(&request.pod_id).await?;
        let container = pod.container(&request.container)?;
        let status = container.status.borrow().clone();
        if status.state != ContainerState::Running || status.pid == 0 {
            return Err(RuntimeError::NotRunning {
                pod: request.pod_id.clone(),
                container: request.container.clone(),
            });
        }
        if request.command.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        }
        if request
            .command
            .iter()
            .chain(request.env.keys())
            .chain(request.env.values())
            .any(|a| !launch::valid_arg(a))
        {
            return Err(RuntimeError::InvalidSpec(
                "exec command and env must not contain NUL bytes".into(),
            ));
        }
        let mut env: BTreeMap<String, String> = container.process.env.iter().cloned().collect();
        env.extend(request.env.clone());
        let spec = ExecLaunch {
            target_pid: status.pid,
            argv: request.command.clone(),
            env: env.into_iter().collect(),
            cwd: if request.working_dir.is_empty() {
                container.process.cwd.clone()
            } else {
                request.working_dir.clone()
            },
            identity: container.process.identity.clone(),
            tty: request.tty,
            cgroup_procs: container.cgroup.procs_files(),
        };
        let json =
            serde_json::to_string(&spec).map_err(|e| RuntimeError::ExecFailed(e.to_string()))?;
        let (status_read, status_write) = status_pipe()?;
        let mut command = Command::new(&self.config.launcher);
        command
            .arg("launch-exec")
            .arg("--spec")
            .arg(json)
            .env_clear();
        pass_status_fd(&mut command, &status_write);

        let (out_tx, out_rx) = mpsc::channel::<ExecOutput>(64);
        let (in_tx, in_rx) = mpsc::channel::<ExecInput>(64);
        let mut readers = Vec::new();
        let stdin_writer: std::fs::File;
        let mut pty_master: Option<OwnedFd> = None;
        if request.tty {
            let size = nix::pty::Winsize {
                ws_row: request.rows.max(1),
                ws_col: request.cols.max(1),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&size), None)
                .map_err(|e| RuntimeError::Launcher(e.into()))?;
            let slave = std::fs::File::from(pty.slave);
            let dup = |f: &std::fs::File| f.try_clone().map_err(RuntimeError::Launcher);
            command
                .stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            let master = std::fs::File::from(pty.master);
            stdin_writer = master.try_clone().map_err(RuntimeError::Launcher)?;
            let reader = master.try_clone().map_err(RuntimeError::Launcher)?;
            readers.push(spawn_output_reader(
                reader,
                out_tx.clone(),
                ExecOutput::Stdout,
            ));
            pty_master = Some(OwnedFd::from(master));
        } else {
            let (in_read, in_write) = status_pipe()?;
            let (out_read, out_write) = status_pipe()?;
            let (err_read, err_write) = status_pipe()?;
            command
                .stdin(Stdio::from(in_read))
                .stdout(Stdio::from(out_write))
                .stderr(Stdio::from(err_write));
            stdin_writer = std::fs::File::from(in_write);
            readers.push(spawn_output_reader(
                std::fs::File::from(out_read),
                out_tx.clone(),
                ExecOutput::Stdout,
            ));
            readers.push(spawn_output_reader(
                std::fs::File::from(err_read),
                out_tx.clone(),
                ExecOutput::Stderr,
            ));
        }
        let spawned = self.reaper.spawn(&mut command);
        drop(command);
        drop(status_write);
        let (_pid, exit) = spawned.map_err(RuntimeError::Launcher)?;
        if let Err(message) = read_report(status_read).await {
            let _ = exit.await;
            return Err(RuntimeError::ExecFailed(message));
        }
        self.audit.info(
            format!(
                "exec in container {}: {:?}",
                request.container, request.command
            ),
            &[&request.pod_id],
        );
        tokio::spawn(feed_input(in_rx, stdin_writer, pty_master));
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(255);
            join_threads(readers).await;
            let _ = out_tx.send(ExecOutput::Exit(code)).await;
        });
        Ok((in_tx, out_rx))
    }
}

fn spawn_output_reader(
    mut reader: std::fs::File,
    tx: mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                // EIO: the pty's last slave fd closed.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

async fn feed_input(
    mut input: mpsc::Receiver<ExecInput>,
    writer: std::fs::File,
    pty_master: Option<OwnedFd>,
) {
    let mut writer = Some(writer);
    while let Some(message) = input.recv().await {
        match message {
            ExecInput::Stdin(bytes) => {
                let Some(w) = writer.as_ref().and_then(|w| w.try_clone().ok()) else {
                    continue;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let mut w = w;
                    w.write_all(&bytes)
                })
                .await;
            }
            ExecInput::Resize { rows, cols } => {
                if let Some(master) = &pty_master {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
                    unsafe {
                        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
                    }
                }
            }
            ExecInput::CloseStdin => {
                if pty_master.is_some() {
                    // A terminal has no EOF of its own: send the EOF character.
                    if let Some(w) = writer.as_ref().and_then(|w| w.try_clone().ok()) {
                        let _ = tokio::task::spawn_blocking(move || {
                            use std::io::Write;
                            let mut w = w;
                            w.write_all(&[4])
                        })
                        .await;
                    }
                } else {
                    writer = None;
                }
            }
        }
    }
}
