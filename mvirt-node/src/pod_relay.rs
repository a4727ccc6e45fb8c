//! Pod logs and exec for the control plane: `NodeAgent.PodLogs` and `NodeAgent.PodExec`, relayed
//! to mvirt-vmm's PodService on its unix socket (and from there over vsock to mvirt-one).
//!
//! Like the console, the API presents the console secret (checked by the caller in
//! [`crate::console`]), and only pods this agent manages (in its ledger) are reachable.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use mvirt_api::proto as api;
use mvirt_vmm::proto as vmm;

use crate::daemons::Daemons;
use crate::ledger::{Kind, Ledger};

pub type LogStream = Pin<Box<dyn Stream<Item = Result<api::PodLogEntry, Status>> + Send>>;
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<api::PodExecOutput, Status>> + Send>>;

/// The command an exec runs when the request names none.
const DEFAULT_SHELL: &str = "/bin/sh";

/// Checks the id and that the pod is one this agent manages.
fn managed(ledger: &Ledger, pod_id: &str) -> Result<(), Status> {
    mvirt_common::validate::resource_id("pod id", pod_id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let owned = ledger
        .owns(Kind::Pod, pod_id)
        .map_err(|e| Status::internal(mvirt_common::error::error_chain(&e)))?;
    if owned {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "pod {pod_id} is not managed by this node"
        )))
    }
}

pub async fn logs(
    daemons: &Daemons,
    ledger: &Ledger,
    request: api::PodLogsRequest,
) -> Result<LogStream, Status> {
    managed(ledger, &request.pod_id)?;
    if request.container.is_empty() {
        return Err(Status::invalid_argument("name the container"));
    }
    let upstream = daemons
        .pods
        .clone()
        .pod_logs(vmm::PodLogsRequest {
            pod_id: request.pod_id,
            container: request.container,
            tail: request.tail,
            follow: request.follow,
            timestamps: true,
        })
        .await?
        .into_inner();
    let entries = upstream.map(|entry| {
        entry.map(|e| api::PodLogEntry {
            timestamp_ns: e.timestamp_ns,
            stream: e.stream,
            line: e.line,
        })
    });
    Ok(Box::pin(entries))
}

pub async fn exec(
    daemons: &Daemons,
    ledger: &Ledger,
    mut input: Streaming<api::PodExecInput>,
) -> Result<ExecStream, Status> {
    let first = input
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("the first message must be start"))??;
    let Some(api::pod_exec_input::Input::Start(start)) = first.input else {
        return Err(Status::invalid_argument("the first message must be start"));
    };
    managed(ledger, &start.pod_id)?;
    if start.container.is_empty() {
        return Err(Status::invalid_argument("name the container"));
    }
    tracing::info!(pod_id = %start.pod_id, container = %start.container, "pod exec relayed");
    let command = if start.command.is_empty() {
        vec![DEFAULT_SHELL.to_string()]
    } else {
        start.command
    };
    let head = tokio_stream::once(vmm::PodExecInput {
        input: Some(vmm::pod_exec_input::Input::Start(vmm::PodExecStart {
            pod_id: start.pod_id,
            container: start.container,
            command,
            tty: start.tty,
            env: start.env,
            working_dir: start.working_dir,
            rows: start.rows,
            cols: start.cols,
        })),
    });
    // The client's input until it ends (or fails): then the command's stdin closes.
    let rest = input
        .take_while(|message| message.is_ok())
        .filter_map(|message| message.ok()?.input)
        .map(|input| vmm::PodExecInput {
            input: Some(match input {
                api::pod_exec_input::Input::Start(_) => {
                    // A second start is meaningless; treat it as the end of stdin.
                    vmm::pod_exec_input::Input::CloseStdin(true)
                }
                api::pod_exec_input::Input::Stdin(data) => vmm::pod_exec_input::Input::Stdin(data),
                api::pod_exec_input::Input::Resize(size) => {
                    vmm::pod_exec_input::Input::Resize(vmm::TerminalSize {
                        rows: size.rows,
                        cols: size.cols,
                    })
                }
                api::pod_exec_input::Input::CloseStdin(close) => {
                    vmm::pod_exec_input::Input::CloseStdin(close)
                }
            }),
        });
    let upstream = daemons
        .pods
        .clone()
        .pod_exec(head.chain(rest))
        .await?
        .into_inner();
    let output = upstream.map(|message| {
        message.map(|m| api::PodExecOutput {
            output: m.output.map(|o| match o {
                vmm::pod_exec_output::Output::Stdout(d) => api::pod_exec_output::Output::Stdout(d),
                vmm::pod_exec_output::Output::Stderr(d) => api::pod_exec_output::Output::Stderr(d),
                vmm::pod_exec_output::Output::ExitCode(c) => {
                    api::pod_exec_output::Output::ExitCode(c)
                }
            }),
        })
    });
    Ok(Box::pin(output))
}
