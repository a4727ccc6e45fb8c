//! `/v1/replications`: replication schedules of VMs (CRUD). The VM's node sends the VM's
//! volumes to each target node every `interval_secs` and reports each volume's replication to
//! each target in `status.replicas` (last replicated time, snapshot, bytes, lag, last error).
//! `vm_id` and `targets` accept names too (the VM's in the replication's project, the nodes');
//! they are stored as ids.

use super::resources::crud;
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Replication,
    "replications",
    "/v1/replications",
    "/v1/replications/{id}",
    Replication,
    ReplicationSpec,
    validate_replication,
    build_replication
);

/// Bounds of a replication spec (the references are checked against the state).
pub fn validate_replication(spec: &ReplicationSpec) -> Result<(), ApiError> {
    fn id_or_name(what: &'static str, value: &str) -> Result<(), ApiError> {
        validate::id(what, value).or_else(|_| validate::name(what, value))
    }
    id_or_name("vm_id", &spec.vm_id)?;
    if spec.targets.is_empty() || spec.targets.len() > 4 {
        return Err(ApiError::invalid("targets: between 1 and 4 nodes"));
    }
    for t in &spec.targets {
        id_or_name("targets", t)?;
    }
    if !(5..=86_400).contains(&spec.interval_secs) {
        return Err(ApiError::invalid(format!(
            "invalid interval_secs {}: between 5 and 86400",
            spec.interval_secs
        )));
    }
    if !(1..=100).contains(&spec.keep) {
        return Err(ApiError::invalid(format!(
            "invalid keep {}: between 1 and 100 (the newest snapshot is the base of the next increment)",
            spec.keep
        )));
    }
    Ok(())
}

fn build_replication(meta: Meta, spec: ReplicationSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateReplication {
        replication: Replication::new(meta, spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ReplicationSpec {
        ReplicationSpec {
            vm_id: "web".into(),
            targets: vec!["node-b".into()],
            interval_secs: 60,
            keep: 3,
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert!(validate_replication(&spec()).is_ok());
        let bad = [
            ReplicationSpec {
                targets: vec![],
                ..spec()
            },
            ReplicationSpec {
                targets: vec!["a".into(); 5],
                ..spec()
            },
            ReplicationSpec {
                targets: vec!["Not A Name".into()],
                ..spec()
            },
            ReplicationSpec {
                interval_secs: 4,
                ..spec()
            },
            ReplicationSpec {
                interval_secs: 86_401,
                ..spec()
            },
            ReplicationSpec { keep: 0, ..spec() },
            ReplicationSpec {
                keep: 101,
                ..spec()
            },
            ReplicationSpec {
                vm_id: String::new(),
                ..spec()
            },
        ];
        for s in bad {
            assert!(validate_replication(&s).is_err(), "{s:?}");
        }
    }
}
