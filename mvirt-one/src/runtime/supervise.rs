//! A container's supervisor: launches it through the launcher process, captures its output,
//! records its exit and restarts it by the policy with an exponential back-off.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use crate::launch::ContainerLaunch;
use crate::logs::Stream;

use super::{
    join_threads, now_ns, pass_status_fd, read_report, status_pipe, Container, ContainerState,
    Desired, Runtime, BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET_AFTER,
};

impl Runtime {
    /// Runs one container until it stops for good.
    pub(super) async fn supervise(&self, container: Arc<Container>, hostname: String) {
        let mut control = container.control.subscribe();
        let mut backoff = BACKOFF_INITIAL;
        let pod_label = container
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            if matches!(*control.borrow_and_update(), Desired::Stop { .. }) {
                break;
            }
            let started = Instant::now();
            let oom_kills_before = container.cgroup.oom_kills();
            let exit_code = match self.launch_container(&container, &hostname).await {
                Ok(Launched {
                    pid,
                    exit,
                    captures,
                }) => {
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Running;
                        s.pid = pid;
                        s.restarting = false;
                        s.started_at_ns = now_ns();
                        s.message.clear();
                        s.oom_killed = false;
                    });
                    tracing::info!(pod = %pod_label, container = %container.spec.name, pid, "container running");
                    let code = wait_for_exit(pid, exit, &mut control).await;
                    // Every line is in the log before the exit is visible (Logs relies on it).
                    join_threads(captures).await;
                    let oom_killed = container.cgroup.oom_kills() > oom_kills_before;
                    if oom_killed {
                        tracing::warn!(pod = %pod_label, container = %container.spec.name, code, "container OOM-killed");
                        self.audit.warn(
                            format!(
                                "container {} was killed by the OOM killer (memory limit {} bytes)",
                                container.spec.name,
                                container.spec.limits.memory_bytes.unwrap_or(0)
                            ),
                            &[&pod_label],
                        );
                    }
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Exited;
                        s.pid = 0;
                        s.exit_code = code;
                        s.finished_at_ns = now_ns();
                        s.oom_killed = oom_killed;
                    });
                    code
                }
                Err(message) => {
                    tracing::warn!(pod = %pod_label, container = %container.spec.name, %message, "container failed to start");
                    self.audit.warn(
                        format!(
                            "container {} failed to start: {message}",
                            container.spec.name
                        ),
                        &[&pod_label],
                    );
                    container.status.send_modify(|s| {
                        s.state = ContainerState::Exited;
                        s.pid = 0;
                        s.exit_code = 128;
                        s.finished_at_ns = now_ns();
                        s.message = message.clone();
                    });
                    128
                }
            };
            let stopping = matches!(*control.borrow(), Desired::Stop { .. });
            let restart = !stopping && container.spec.restart_policy.restarts_after(exit_code);
            self.audit.info(
                format!(
                    "container {} exited with code {exit_code}{}",
                    container.spec.name,
                    if restart { ", restarting" } else { "" }
                ),
                &[&pod_label],
            );
            if !restart {
                break;
            }
            if started.elapsed() > BACKOFF_RESET_AFTER {
                backoff = BACKOFF_INITIAL;
            }
            container.status.send_modify(|s| s.restarting = true);
            tracing::info!(pod = %pod_label, container = %container.spec.name, exit_code, ?backoff, "restarting container after back-off");
            let stop = tokio::select! {
                _ = tokio::time::sleep(backoff) => false,
                changed = control.changed() => changed.is_err() || matches!(*control.borrow(), Desired::Stop { .. }),
            };
            if stop {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            container.status.send_modify(|s| s.restart_count += 1);
        }
        container.status.send_modify(|s| s.restarting = false);
    }

    async fn launch_container(
        &self,
        container: &Container,
        hostname: &str,
    ) -> Result<Launched, String> {
        let spec = ContainerLaunch {
            lower: container.image.rootfs.clone(),
            upper: container.dir.join("upper"),
            work: container.dir.join("work"),
            merged: container.dir.join("rootfs"),
            hostname: hostname.to_string(),
            argv: container.process.argv.clone(),
            env: container.process.env.clone(),
            cwd: container.process.cwd.clone(),
            identity: container.process.identity.clone(),
            resolv_conf: self.config.resolv_conf.clone(),
            cgroup_procs: container.cgroup.procs_files(),
        };
        // The work dir must be empty for every mount; a previous run leaves a stale one.
        let _ = std::fs::remove_dir_all(&spec.work);
        let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        let (status_read, status_write) = status_pipe().map_err(|e| e.to_string())?;
        let (out_read, out_write) = status_pipe().map_err(|e| e.to_string())?;
        let (err_read, err_write) = status_pipe().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.config.launcher);
        command
            .arg("launch-container")
            .arg("--spec")
            .arg(json)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_write))
            .stderr(Stdio::from(err_write));
        pass_status_fd(&mut command, &status_write);
        let spawned = self.reaper.spawn(&mut command);
        drop(command);
        drop(status_write);
        let (_launcher_pid, exit) = spawned.map_err(|e| format!("cannot start launcher: {e}"))?;
        let captures = vec![
            container
                .log
                .capture(Stream::Stdout, std::fs::File::from(out_read)),
            container
                .log
                .capture(Stream::Stderr, std::fs::File::from(err_read)),
        ];
        match read_report(status_read).await {
            Ok(pid) => Ok(Launched {
                pid,
                exit,
                captures,
            }),
            Err(message) => {
                let _ = exit.await;
                join_threads(captures).await;
                Err(message)
            }
        }
    }
}

/// A container process that started.
struct Launched {
    pid: u32,
    exit: oneshot::Receiver<i32>,
    captures: Vec<std::thread::JoinHandle<()>>,
}

/// Waits for the container to exit, handling a stop request meanwhile.
async fn wait_for_exit(
    pid: u32,
    mut exit: oneshot::Receiver<i32>,
    control: &mut watch::Receiver<Desired>,
) -> i32 {
    let target = Pid::from_raw(pid as i32);
    loop {
        let desired = *control.borrow_and_update();
        if let Desired::Stop { deadline } = desired {
            let _ = kill(target, Signal::SIGTERM);
            tokio::select! {
                code = &mut exit => return code.unwrap_or(255),
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = kill(target, Signal::SIGKILL);
                    return exit.await.unwrap_or(255);
                }
            }
        }
        tokio::select! {
            code = &mut exit => return code.unwrap_or(255),
            changed = control.changed() => {
                if changed.is_err() {
                    let _ = kill(target, Signal::SIGKILL);
                    return exit.await.unwrap_or(255);
                }
            }
        }
    }
}
