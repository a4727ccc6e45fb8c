//! Networks: a project's L2/L3 segment, named between nodes by its tunnel key (VXLAN VNI).
//! Prefixes and the tunnel key are fixed after create; a network with NICs is deleted only
//! with `force` (which takes the NICs along).

use super::{refuse_if_used, ApiError, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Network {
    type Spec = NetworkSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::Network, &new.meta)?;
        new.spec.tunnel_key = Some(tunnel_key_for(s, new)?);
        Ok(())
    }

    fn update_spec(s: &mut State, _: u64, id: &str, mut new: NetworkSpec) -> SpecChanged {
        let net = &s.networks[id];
        if new.ipv4_prefix != net.spec.ipv4_prefix || new.ipv6_prefix != net.spec.ipv6_prefix {
            return Err(ApiError::invalid("a network's prefixes cannot change"));
        }
        match new.tunnel_key {
            None => new.tunnel_key = net.spec.tunnel_key,
            Some(k) if Some(k) != net.spec.tunnel_key => {
                return Err(ApiError::invalid("a network's tunnel_key cannot change"))
            }
            Some(_) => {}
        }
        let changed = s.store_spec(id, new, |n: &mut Network| &mut n.spec);
        Ok((changed, Vec::new()))
    }

    fn delete(s: &mut State, at: u64, id: &str, force: bool) -> Removed {
        let nics: Vec<String> = s
            .nics
            .values()
            .filter(|n| n.spec.network_id == id)
            .map(|n| n.meta.id.clone())
            .collect();
        if !force {
            let holders = nics.iter().map(|n| format!("nic/{n}")).collect();
            refuse_if_used(holders, || {
                format!("network {id} has NICs (delete them or use force=true)")
            })?;
        }
        let mut changes = Vec::new();
        for nic_id in nics {
            changes.extend(s.remove_nic(at, &nic_id));
        }
        s.networks.remove(id);
        Ok(changes)
    }
}

/// The tunnel key (VXLAN VNI) of a new network: the one it asks for when no other network
/// has it, else one past the largest key in use, else (all keys up to the maximum ever
/// handed out) the smallest free one. Derived from the stored networks only, so every
/// member computes the same key and a snapshot carries it in the networks' specs.
fn tunnel_key_for(s: &State, network: &Network) -> Result<u32, ApiError> {
    let used: std::collections::BTreeSet<u32> = s
        .networks
        .values()
        .filter_map(|n| n.spec.tunnel_key)
        .collect();
    if let Some(k) = network.spec.tunnel_key {
        if let Some(other) = s.networks.values().find(|n| n.spec.tunnel_key == Some(k)) {
            return Err(ApiError::conflict(format!(
                "tunnel_key {k} is used by network {} ({})",
                other.meta.name, other.meta.id
            )));
        }
        return Ok(k);
    }
    match used.last() {
        None => Ok(1),
        Some(&max) if max < MAX_TUNNEL_KEY => Ok(max + 1),
        Some(_) => (1..=MAX_TUNNEL_KEY)
            .find(|k| !used.contains(k))
            .ok_or_else(|| ApiError::conflict("every tunnel key (VXLAN VNI) is in use")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn prefixes_stay_and_a_network_with_nics_goes_only_with_force() {
        let mut s = State::initial();
        s.apply(1, &network("n1", "net")).0.result.unwrap();
        s.apply(2, &nic("c1", "a", "n1")).0.result.unwrap();
        let moved = NetworkSpec {
            ipv4_prefix: Some("10.9.0.0/24".into()),
            ..Default::default()
        };
        assert_eq!(
            s.apply(3, &update("n1", Spec::Network(moved)))
                .0
                .result
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
        let delete = |force| {
            p(Command::Delete {
                kind: Kind::Network,
                id: "n1".into(),
                if_match: None,
                force,
            })
        };
        assert_eq!(
            s.apply(4, &delete(false)).0.result.unwrap_err().code,
            ErrorCode::Conflict
        );
        let (_, changes) = s.apply(5, &delete(true));
        assert!(s.networks.is_empty() && s.nics.is_empty());
        assert_eq!(changes.len(), 2, "the NIC and the network: {changes:?}");
    }
}
