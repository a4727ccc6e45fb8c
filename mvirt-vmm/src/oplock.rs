//! Per-resource operation locks shared by VMs and pods: an operation on one id runs under that
//! id's lock, on a task of its own, so it completes even when its caller goes away (a gRPC
//! deadline, an agent killed mid-call) and never interleaves with another operation on the id.
//! The task inherits the caller's trace id (`mvirt_common::trace::inherit`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

type OpLock = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct OpLocks {
    locks: Mutex<HashMap<String, OpLock>>,
}

impl OpLocks {
    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpLock>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> OpLock {
        self.locks().entry(id.to_string()).or_default().clone()
    }

    /// Forgets the lock of a resource that no longer exists, unless another operation holds or
    /// waits for it: that one must stay serialised with whatever comes next for the same id (a
    /// re-create), so the entry stays until its last user is gone. (Removing it while shared
    /// would let two operations on one id run at once, each with its own lock.)
    fn release(&self, id: &str, held: &OpLock) {
        let mut locks = self.locks();
        // The map's reference and the caller's: nobody else can reach this lock any more.
        if locks.get(id).is_some_and(|l| Arc::ptr_eq(l, held)) && Arc::strong_count(held) == 2 {
            locks.remove(id);
        }
    }

    /// Runs `operation` under `id`'s lock on a task of its own; afterwards `gone` says whether
    /// the resource no longer exists (its lock is then released). `None`: the task was
    /// cancelled (the runtime is shutting down). A panic in `operation` is resumed here.
    pub(crate) async fn serialised<T: Send + 'static>(
        self: &Arc<Self>,
        id: &str,
        operation: impl Future<Output = T> + Send + 'static,
        gone: impl FnOnce() -> bool + Send + 'static,
    ) -> Option<T> {
        let (locks, owned) = (self.clone(), id.to_string());
        // The task carries on the caller's request: its trace id (and span) go with it, so the
        // operation's log lines and audit entries name the request that caused them.
        let task = tokio::spawn(mvirt_common::trace::inherit(async move {
            let op = locks.get(&owned);
            let guard = op.lock().await;
            let result = operation.await;
            drop(guard);
            if gone() {
                locks.release(&owned, &op);
            }
            result
        }));
        match task.await {
            Ok(result) => Some(result),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => None,
        }
    }
}
