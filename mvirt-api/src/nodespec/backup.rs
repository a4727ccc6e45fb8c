//! The backups the node holds (or must take): every backup whose node is this one, whether its
//! volume still exists or not.

use super::Desired;
use crate::proto;

pub(super) fn backups(cx: &mut Desired) -> Vec<proto::BackupSpec> {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut backups = Vec::new();
    for b in state
        .backups
        .values()
        .filter(|b| b.node_id.as_deref() == Some(node_id))
    {
        cx.bump(b.meta.spec_revision);
        backups.push(proto::BackupSpec {
            id: b.meta.id.clone(),
            volume_id: b.spec.volume_id.clone(),
            incremental: b.spec.incremental,
            trace_id: b.meta.trace_id.clone().unwrap_or_default(),
        });
    }
    backups
}
