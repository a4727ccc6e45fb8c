//! Security groups: rules a NIC's traffic must match. A rule may name another group (or its
//! own) as the remote side; a group used by a NIC or named by another group's rule is not
//! deleted.

use std::collections::BTreeSet;

use super::{
    refuse_if_used, stamp, ApiError, Applied, ErrorCode, Removed, Resource, SpecChanged, State,
};
use crate::model::*;

impl Resource for SecurityGroup {
    type Spec = SecurityGroupSpec;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_new(Kind::SecurityGroup, &new.meta)?;
        s.check_rules(&new.meta.id, &new.spec.rules)
    }

    fn update_spec(s: &mut State, _: u64, id: &str, new: SecurityGroupSpec) -> SpecChanged {
        s.check_rules(id, &new.rules)?;
        let changed = s.store_spec(id, new, |g: &mut SecurityGroup| &mut g.spec);
        Ok((changed, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        let mut users: Vec<String> = s
            .nics
            .values()
            .filter(|n| n.spec.security_group_ids.iter().any(|g| g == id))
            .map(|n| format!("nic/{}", n.meta.id))
            .collect();
        users.extend(
            s.security_groups
                .values()
                .filter(|g| {
                    g.meta.id != id
                        && g.spec
                            .rules
                            .iter()
                            .any(|r| r.remote_group_id.as_deref() == Some(id))
                })
                .map(|g| format!("security_group/{}", g.meta.id)),
        );
        refuse_if_used(users, || format!("security group {id} is in use"))?;
        s.security_groups.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Rule ids are unique in a group and remote groups exist (or are the group itself).
    fn check_rules(&self, own_id: &str, rules: &[SecurityGroupRule]) -> Result<(), ApiError> {
        let mut ids = BTreeSet::new();
        for rule in rules {
            if let Some(id) = &rule.id {
                if !ids.insert(id.clone()) {
                    return Err(ApiError::invalid(format!("duplicate rule id {id}")));
                }
            }
            if let Some(remote) = &rule.remote_group_id {
                if remote != own_id && !self.security_groups.contains_key(remote) {
                    return Err(ApiError::not_found(Kind::SecurityGroup, remote));
                }
            }
        }
        Ok(())
    }

    /// Adds one rule to a group.
    pub(super) fn add_rule(
        &mut self,
        index: u64,
        security_group_id: &str,
        rule: &SecurityGroupRule,
        now: &str,
    ) -> Applied {
        let sg = self.get::<SecurityGroup>(security_group_id)?;
        let mut rules = sg.spec.rules.clone();
        rules.push(rule.clone());
        self.check_rules(security_group_id, &rules)?;
        let sg = self.get_mut::<SecurityGroup>(security_group_id)?;
        sg.spec.rules = rules;
        stamp(&mut sg.meta, index, now, true);
        let change = self.change(Kind::SecurityGroup, security_group_id, "updated");
        Ok((Json::of(rule), vec![change]))
    }

    /// Removes one rule from a group.
    pub(super) fn delete_rule(
        &mut self,
        index: u64,
        security_group_id: &str,
        rule_id: &str,
        now: &str,
    ) -> Applied {
        let sg = self.get_mut::<SecurityGroup>(security_group_id)?;
        let before = sg.spec.rules.len();
        sg.spec.rules.retain(|r| r.id.as_deref() != Some(rule_id));
        if sg.spec.rules.len() == before {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("rule {rule_id} not found in security group {security_group_id}"),
            ));
        }
        stamp(&mut sg.meta, index, now, true);
        self.updated(Kind::SecurityGroup, security_group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn group(id: &str, name: &str, remote: Option<&str>) -> Proposal {
        let rule = SecurityGroupRule {
            id: Some(format!("{id}-r")),
            direction: Direction::Ingress,
            protocol: Protocol::Any,
            port_min: 0,
            port_max: 0,
            cidr: None,
            remote_group_id: remote.map(String::from),
            description: String::new(),
        };
        p(Command::CreateSecurityGroup {
            security_group: SecurityGroup {
                meta: meta(id, name),
                spec: SecurityGroupSpec { rules: vec![rule] },
                status: Status::default(),
            },
        })
    }

    #[test]
    fn remote_groups_must_exist_and_a_named_group_is_not_deleted() {
        let mut s = State::initial();
        let missing = s
            .apply(1, &group("g1", "web", Some("nope")))
            .0
            .result
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        s.apply(2, &group("g1", "web", Some("g1")))
            .0
            .result
            .unwrap();
        s.apply(3, &group("g2", "db", Some("g1"))).0.result.unwrap();
        let err = refused(&mut s, 4, &delete(Kind::SecurityGroup, "g1"));
        assert_eq!(err.details["in_use_by"][0], "security_group/g2");
        let drop_rule = Command::DeleteRule {
            security_group_id: "g2".into(),
            rule_id: "nope".into(),
            now: "t1".into(),
        };
        assert_eq!(
            s.apply(5, &p(drop_rule)).0.result.unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
