//! Node-to-node transfer grants (`NodeSpec.transfers`): what one node may push to another
//! through `NodePeer` (mvirt-node's peer channel). A grant goes into the specs of both its
//! nodes: the source learns where to push, the target what to accept.
//!
//! A kind of work that moves data between nodes (live migration, replication) adds its grants
//! here, derived from its state, so a grant exists exactly as long as that work does.

use super::Desired;
use crate::proto;

/// The grants naming the node as source or target.
pub(super) fn grants(cx: &mut Desired) -> Vec<proto::TransferGrant> {
    let mut all = Vec::new();
    super::replication::grants(cx, &mut all);
    all
}
