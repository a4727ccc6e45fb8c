//! The row encoding of the state: one JSON row per object (kind, id, json), as the store keeps
//! it and snapshots carry it, and the JSON of one object as responses and events show it.

use serde::Serialize;
use serde_json::Value;

use super::{names::NameIndex, with_resource, State, Stored};
use crate::model::*;

/// Evaluates `$body` with `$T` the stored type of `$kind` (every kind).
macro_rules! with_stored {
    ($kind:expr, $T:ident => $body:expr) => {
        with_resource!($kind, $T => $body, _ => match $kind {
            Kind::Token => with_resource!(@ $T = ApiToken, $body),
            Kind::JoinToken => with_resource!(@ $T = JoinToken, $body),
            _ => with_resource!(@ $T = super::IdempotencyRecord, $body),
        })
    };
}

/// One object of the state as it is shown (a node as its view, see [`State::node_view`]),
/// serializable straight from its type; `null` if it does not exist.
struct ObjectRef<'a> {
    state: &'a State,
    kind: Kind,
    id: &'a str,
}

impl Serialize for ObjectRef<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (s, id) = (self.state, self.id);
        match self.kind {
            Kind::Node => s.nodes.get(id).map(|n| s.node_view(n)).serialize(ser),
            // Registry secrets stay in the state (the node needs them), never in a view.
            Kind::Pod => s.pods.get(id).map(Pod::view).serialize(ser),
            Kind::Vm => s.vms.get(id).map(Vm::view).serialize(ser),
            kind => with_stored!(kind, T => T::map(s).get(id).serialize(ser)),
        }
    }
}

impl State {
    /// The object of `kind` with `id` as JSON.
    pub fn object(&self, kind: Kind, id: &str) -> Option<Value> {
        let object = ObjectRef {
            state: self,
            kind,
            id,
        };
        self.contains(kind, id)
            .then(|| serde_json::to_value(&object).unwrap_or(Value::Null))
    }

    /// The object of `kind` with `id` as JSON text, serialized straight from its type.
    pub fn object_json(&self, kind: Kind, id: &str) -> Option<Json> {
        self.contains(kind, id).then(|| {
            Json::of(&ObjectRef {
                state: self,
                kind,
                id,
            })
        })
    }

    fn contains(&self, kind: Kind, id: &str) -> bool {
        with_stored!(kind, T => T::map(self).contains_key(id))
    }

    /// Loads one persisted row (kind, id, json) into the state.
    pub fn load_row(&mut self, kind: Kind, id: &str, json: &str) -> Result<(), serde_json::Error> {
        // Rebuilt on the next lookup.
        self.names = NameIndex::default();
        with_stored!(kind, T => {
            T::map_mut(self).insert(id.to_string(), serde_json::from_str(json)?);
        });
        Ok(())
    }

    /// Every row of the state as (kind, id, json), for snapshots and full rewrites.
    pub fn rows(&self) -> Vec<(Kind, String, String)> {
        fn push<T: Stored>(state: &State, rows: &mut Vec<(Kind, String, String)>) {
            for (id, v) in T::map(state) {
                let json = serde_json::to_string(v).unwrap_or_default();
                rows.push((T::KIND, id.clone(), json));
            }
        }
        let mut rows = Vec::new();
        push::<Project>(self, &mut rows);
        // Nodes are stored without the derived `allocated` field.
        push::<Node>(self, &mut rows);
        push::<Network>(self, &mut rows);
        push::<Nic>(self, &mut rows);
        push::<SecurityGroup>(self, &mut rows);
        push::<Template>(self, &mut rows);
        push::<Volume>(self, &mut rows);
        push::<Vm>(self, &mut rows);
        push::<Pod>(self, &mut rows);
        push::<Backup>(self, &mut rows);
        push::<Replication>(self, &mut rows);
        push::<ApiToken>(self, &mut rows);
        push::<JoinToken>(self, &mut rows);
        push::<super::IdempotencyRecord>(self, &mut rows);
        rows
    }

    /// The stored form of one object (what `rows` would give for it).
    pub fn stored_json(&self, kind: Kind, id: &str) -> Option<String> {
        with_stored!(kind, T => serde_json::to_string(T::map(self).get(id)?).ok())
    }
}
