//! mvirt-cli: the `mvirt` command-line client and terminal UI for mvirt-api's REST API.
//!
//! `cli` declares the command tree (clap), `commands` runs it against `client::ApiClient` (one
//! module per noun, shared shapes in `commands::ctx` and `commands::parse`),
//! `output` renders tables/JSON/YAML, `config` resolves remotes, flags and environment,
//! `trust` pins the cluster CA an `https://` API is verified against (trust on first use),
//! `console` attaches to a VM console, `progress` follows template imports, `top` shows live
//! usage of nodes, VMs and pods, and `tui` is the
//! full-screen UI (state in `tui::app`, drawing in `tui::ui`, I/O in background workers).

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod console;
pub mod output;
pub mod progress;
pub mod resources;
pub mod top;
pub mod trust;
pub mod tui;
