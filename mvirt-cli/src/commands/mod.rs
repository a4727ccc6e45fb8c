//! Runs a parsed command: resolve the configuration, call the API, print the result.
//!
//! One module per noun (`vm`, `volume`, `network`, …) turns its verbs into REST calls; the
//! shapes they share live in `ctx` (the client and output format, list/show/create/delete,
//! actions on a sub-path, name resolution, printing) and `parse` (flag values). Noun modules use
//! those two and never each other, so a new noun is one new file plus an arm in `dispatch`.
//! Every command returns `Result<(), ApiError>`; `run` turns that into the process exit code.

pub mod backup;
pub mod cluster;
pub mod ctx;
pub mod events;
pub mod logs;
pub mod network;
pub mod nic;
pub mod node;
pub mod parse;
pub mod pod;
pub mod project;
pub mod remote;
pub mod replication;
pub mod route;
pub mod sg;
pub mod template;
pub mod token;
pub mod update;
pub mod version;
pub mod vm;
pub mod volume;

use crate::cli::*;
use crate::client::{exit, ApiError};
use ctx::{client_for, Ctx};

/// Parses arguments, runs the command and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    // `pod exec` exits with the remote command's exit code.
    if let Command::Pod(pod::PodCmd::Exec(a)) = &cli.command {
        return pod::run_exec(&cli.global, a).await;
    }
    match dispatch(cli).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("Error: {}", e.display_message());
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), ApiError> {
    let g = cli.global.clone();
    match cli.command {
        Command::Login(a) => return remote::login(&g, a).await,
        Command::Remote(c) => return remote::remote(&g, c),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "mvirt", &mut std::io::stdout());
            return Ok(());
        }
        Command::Tui => {
            let api = client_for(&g)?;
            return crate::tui::run(api)
                .await
                .map_err(|e| ApiError::Other(e.to_string()));
        }
        Command::Console(a) => {
            let api = client_for(&g)?;
            return crate::console::run(&api, &a.vm).await;
        }
        Command::Top(a) => {
            let api = client_for(&g)?;
            let interval = std::time::Duration::try_from_secs_f64(a.interval)
                .map_err(|_| ApiError::Usage(format!("invalid --interval {}", a.interval)))?;
            return crate::top::run(&api, g.output, a.once, interval).await;
        }
        _ => {}
    }
    let ctx = Ctx {
        api: client_for(&g)?,
        format: g.output,
    };
    match cli.command {
        Command::Project(c) => project::run(&ctx, c).await,
        Command::Node(c) => node::run(&ctx, c).await,
        Command::Network(c) => network::run(&ctx, c).await,
        Command::Nic(c) => nic::run(&ctx, c).await,
        Command::Sg(c) => sg::run(&ctx, c).await,
        Command::Route(RouteCmd::List(a)) => route::list(&ctx, &a).await,
        Command::Volume(c) => volume::run(&ctx, c).await,
        Command::Backup(c) => backup::run(&ctx, c).await,
        Command::Replication(c) => replication::run(&ctx, c).await,
        Command::Template(c) => template::run(&ctx, c).await,
        Command::Vm(c) => vm::run(&ctx, c).await,
        Command::Pod(c) => pod::run(&ctx, c).await,
        Command::Logs(a) => logs::run(&ctx, a).await,
        Command::Events(a) => events::run(&ctx, a).await,
        Command::Cluster(c) => cluster::run(&ctx, c).await,
        Command::Token(c) => token::run(&ctx, c, &g.project).await,
        Command::Whoami => token::whoami(&ctx).await,
        Command::Version => version::run(&ctx).await,
        Command::Login(_)
        | Command::Remote(_)
        | Command::Completion { .. }
        | Command::Tui
        | Command::Top(_)
        | Command::Console(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_help_and_the_tree_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
