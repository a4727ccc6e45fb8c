//! Tracing set-up: readable lines on a terminal, one JSON object per line otherwise (journald,
//! files, log shippers). The filter comes from `RUST_LOG` and defaults to `info`.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Output format of the tracing subscriber (`--log-format auto|text|json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable when stderr is a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so
/// tests that start several daemons in one process can call it freely.
pub fn init(component: &str, format: LogFormat) {
    init_with_filter(component, format, "info")
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_with_filter(component: &str, format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(component, "tracing initialised");
    }
}

/// For tests: compact text output captured by the test harness.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_test_writer())
        .try_init();
}
