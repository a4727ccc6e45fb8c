//! Per-object serialisation: operations on the same volume or template run one at a time,
//! operations on different objects run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A map of object id → async mutex. Entries are dropped once nobody holds or waits for them.
#[derive(Debug, Default, Clone)]
pub struct ObjectLocks {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while operating on one object.
pub struct ObjectGuard {
    _guard: OwnedMutexGuard<()>,
    id: String,
    locks: ObjectLocks,
}

impl ObjectLocks {
    pub async fn lock(&self, id: &str) -> ObjectGuard {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        ObjectGuard {
            _guard: guard,
            id: id.to_string(),
            locks: self.clone(),
        }
    }
}

impl Drop for ObjectGuard {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // One reference in the map and one in our guard: nobody else is waiting.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) <= 2) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_id_is_serialised_and_other_ids_are_not() {
        let locks = ObjectLocks::default();
        let a = locks.lock("a").await;
        // A different id is free while "a" is held.
        let _b = locks.lock("b").await;
        let locks2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _a = locks2.lock("a").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(locks.map.lock().unwrap().get("a").is_none());
    }
}
