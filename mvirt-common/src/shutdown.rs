//! Graceful shutdown: one token, fired by SIGINT or SIGTERM (or by a test), that every server
//! and background task watches. Servers stop accepting new calls and drain the ones in flight.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that fires on SIGINT or SIGTERM. Must be called inside a tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let shutdown = Self::new();
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
                _ = trigger.wait() => return,
            };
            tracing::info!(signal = name, "shutting down: draining in-flight calls");
            trigger.trigger();
        });
        Ok(shutdown)
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A child signal: fires with this one, and can also be fired on its own.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_fires_with_parent_but_not_the_reverse() {
        let parent = Shutdown::new();
        let child = parent.child();
        child.trigger();
        assert!(!parent.is_triggered());
        let other = parent.child();
        parent.trigger();
        other.wait().await;
        assert!(other.is_triggered());
    }
}
