//! Retention: entries older than a maximum age, and the oldest entries beyond a maximum count,
//! are deleted periodically (and once at start).

use std::sync::Arc;
use std::time::Duration;

use mvirt_common::Shutdown;

use crate::store::Store;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete entries older than this. `None`: keep regardless of age.
    pub max_age: Option<Duration>,
    /// Keep at most this many entries (the newest). `None`: no limit.
    pub max_rows: Option<u64>,
    /// How often to apply the policy.
    pub interval: Duration,
}

impl RetentionPolicy {
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_rows.is_some()
    }

    /// Applies the policy once; returns how many entries were deleted.
    pub fn apply(&self, store: &Store) -> Result<u64, crate::store::StoreError> {
        let min_ts = self
            .max_age
            .map(|age| crate::audit::now_ns().saturating_sub(age.as_nanos() as i64));
        store.apply_retention(min_ts, self.max_rows)
    }
}

/// Runs the policy every `interval` until shutdown.
pub async fn run(policy: RetentionPolicy, store: Arc<Store>, shutdown: Shutdown) {
    if !policy.is_enabled() {
        return;
    }
    let mut ticker = tokio::time::interval(policy.interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || policy.apply(&store)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(deleted, "retention deleted old log entries"),
            Ok(Err(err)) => {
                tracing::warn!(error = %mvirt_common::error::error_chain(&err), "retention failed")
            }
            Err(err) => tracing::warn!(error = %err, "retention task failed"),
        }
    }
}
