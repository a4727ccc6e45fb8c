//! mvirt-log's Prometheus metrics (see `mvirt_common::metrics` and the README's table): the
//! ingest rate (entries written, by component and level) and deduplicated entries.

use std::sync::OnceLock;

use mvirt_common::metrics::prometheus::metrics::counter::Counter;
use mvirt_common::metrics::prometheus::metrics::family::Family;
use mvirt_common::metrics::{self, Labels};

use crate::store::{NewEntry, Written};

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-log";

struct LogMetrics {
    ingested: Family<Labels, Counter>,
    deduplicated: Counter,
}

fn get() -> &'static LogMetrics {
    static METRICS: OnceLock<LogMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = LogMetrics {
            ingested: Family::default(),
            deduplicated: Counter::default(),
        };
        metrics::register(DAEMON, |r| {
            r.register(
                "mvirt_log_entries_ingested",
                "Log entries written durably, by component and level (rate() = ingest rate)",
                m.ingested.clone(),
            );
            r.register(
                "mvirt_log_entries_deduplicated",
                "Entries not stored again because their dedup key was already written",
                m.deduplicated.clone(),
            );
        });
        m
    })
}

/// Registers the metrics (so a scrape shows them before the first entry).
pub fn init() {
    get();
}

/// `entries` were committed with the outcome `written`.
pub fn written(entries: &[NewEntry], written: &[Written]) {
    let m = get();
    for (entry, w) in entries.iter().zip(written) {
        if w.new {
            m.ingested
                .get_or_create(&vec![
                    ("component", entry.component.clone()),
                    ("level", entry.level.as_str().to_string()),
                ])
                .inc();
        } else {
            m.deduplicated.inc();
        }
    }
}
