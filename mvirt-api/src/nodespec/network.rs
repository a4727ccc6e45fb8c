//! The networks the node's NICs are on.

use std::collections::BTreeSet;

use super::Desired;
use crate::proto;

pub(super) fn networks(cx: &mut Desired, ids: &BTreeSet<String>) -> Vec<proto::NetworkSpec> {
    let state = cx.state;
    let mut networks = Vec::new();
    for n in ids.iter().filter_map(|id| state.networks.get(id)) {
        cx.bump(n.meta.spec_revision);
        networks.push(proto::NetworkSpec {
            id: n.meta.id.clone(),
            trace_id: n.meta.trace_id.clone().unwrap_or_default(),
            name: n.meta.name.clone(),
            project_id: cx.project_id(&n.meta.project),
            ipv4_prefix: n.spec.ipv4_prefix.clone().unwrap_or_default(),
            ipv6_prefix: n.spec.ipv6_prefix.clone().unwrap_or_default(),
            dns_servers: n.spec.dns_servers.clone(),
            ntp_servers: n.spec.ntp_servers.clone(),
            is_public: n.spec.is_public,
            tunnel_key: n.spec.tunnel_key.unwrap_or(0),
        });
    }
    networks
}
