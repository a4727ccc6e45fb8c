//! The trace ids of recent removals: a DELETE takes the object out of the state, so the node
//! specs no longer name it and the agent's delete would run without the request's id. The
//! specs carry this map (`NodeSpec.removed_trace_ids`) so the agent deletes in that trace.

use std::collections::{HashMap, VecDeque};

/// How many removals are remembered. A node agent that falls further behind deletes the older
/// ones without their trace id (nothing else depends on it).
const KEEP: usize = 256;

/// Object id → trace id of the request that removed it, for the last [`KEEP`] removals made
/// by a request with an id. Derived from applied commands on each member (not persisted: after
/// a restart or a snapshot install, removals made before it are no longer named). It never
/// takes part in equality.
#[derive(Debug, Clone, Default)]
pub struct RecentRemovals {
    order: VecDeque<String>,
    trace_ids: HashMap<String, String>,
}

impl PartialEq for RecentRemovals {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl RecentRemovals {
    /// Records that `id` was removed by the request `trace_id`.
    pub fn record(&mut self, id: &str, trace_id: &str) {
        if self
            .trace_ids
            .insert(id.to_string(), trace_id.to_string())
            .is_none()
        {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > KEEP {
            if let Some(oldest) = self.order.pop_front() {
                self.trace_ids.remove(&oldest);
            }
        }
    }

    /// Id → trace id of the remembered removals.
    pub fn trace_ids(&self) -> &HashMap<String, String> {
        &self.trace_ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_removals_only() {
        let mut removals = RecentRemovals::default();
        for i in 0..KEEP + 10 {
            removals.record(&format!("id-{i}"), &format!("trace-{i}"));
        }
        assert_eq!(removals.trace_ids().len(), KEEP);
        assert!(!removals.trace_ids().contains_key("id-9"));
        assert_eq!(removals.trace_ids()["id-10"], "trace-10");
        let newest = format!("id-{}", KEEP + 9);
        assert_eq!(removals.trace_ids()[&newest], format!("trace-{}", KEEP + 9));
        // A second removal of the same id (a re-created object) takes the newer trace.
        removals.record(&newest, "again");
        assert_eq!(removals.trace_ids()[&newest], "again");
        assert_eq!(removals.trace_ids().len(), KEEP);
    }
}
