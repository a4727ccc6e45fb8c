//! Security groups in mvirt-ebpf. Rules may name other groups (also in cycles), which mvirt-ebpf
//! wants to exist first: observing creates the missing groups empty, then each group gets its
//! rules. A rule naming a remote group carries the control plane's list of that group's member
//! addresses on other nodes.

use std::collections::HashMap;

use tonic::Status;

use mvirt_api::proto as api;
use mvirt_ebpf::proto as net;

use super::{by_id, deleted, Context, Converging, Failure, Outcome, Reconciler};
use crate::ledger::Kind;

pub struct SecurityGroupReconciler<'a> {
    pub cx: &'a Context,
    pub spec: &'a api::NodeSpec,
}

/// The groups mvirt-ebpf has, once every desired group was made to exist.
pub struct Groups {
    groups: HashMap<String, net::SecurityGroup>,
    /// Desired groups that could not be created.
    create_failures: HashMap<String, Status>,
}

impl Reconciler for SecurityGroupReconciler<'_> {
    const KIND: Kind = Kind::SecurityGroup;
    type Desired = api::SecurityGroupSpec;
    type Observed = Groups;
    type Converged = ();

    /// Lists the groups and creates every missing desired group without rules.
    async fn observe(&self) -> Result<Groups, Status> {
        let mut client = self.cx.net();
        let listed = client
            .list_security_groups(net::ListSecurityGroupsRequest {})
            .await?
            .into_inner()
            .security_groups;
        let mut seen = Groups {
            groups: by_id(listed, |g| &g.id),
            create_failures: HashMap::new(),
        };
        for want in &self.spec.security_groups {
            if seen.groups.contains_key(&want.id) {
                continue;
            }
            self.cx.claim(Kind::SecurityGroup, &want.id)?;
            let created = client
                .create_security_group(net::CreateSecurityGroupRequest {
                    id: want.id.clone(),
                    name: want.name.clone(),
                    rules: Vec::new(),
                })
                .await;
            match created {
                Ok(group) => {
                    seen.groups.insert(want.id.clone(), group.into_inner());
                }
                Err(error) => {
                    seen.create_failures.insert(want.id.clone(), error);
                }
            }
        }
        Ok(seen)
    }

    async fn converge(&self, want: &Self::Desired, seen: &Self::Observed) -> Converging<()> {
        if let Some(error) = seen.create_failures.get(&want.id) {
            return Ok(Outcome::Failed(Failure::Call {
                what: "security group",
                error: error.clone(),
            }));
        }
        let rules: Vec<net::SecurityGroupRule> = want.rules.iter().map(net_rule).collect();
        if seen
            .groups
            .get(&want.id)
            .is_some_and(|have| have.rules == rules)
        {
            return Ok(Outcome::Ready(()));
        }
        let updated = self
            .cx
            .net()
            .update_security_group(net::UpdateSecurityGroupRequest {
                id: want.id.clone(),
                rules,
            })
            .await
            .map(drop);
        Ok(Outcome::of_call("security group", updated))
    }

    async fn delete(cx: &Context, id: &str) -> Result<(), Status> {
        let request = net::DeleteSecurityGroupRequest { id: id.to_string() };
        deleted(cx.net().delete_security_group(request).await)
    }
}

/// Converts an API security-group rule into mvirt-ebpf's form.
fn net_rule(rule: &api::SecurityGroupRuleSpec) -> net::SecurityGroupRule {
    let protocol = match api::Protocol::try_from(rule.protocol).unwrap_or_default() {
        api::Protocol::Unspecified | api::Protocol::Any => net::Protocol::All,
        api::Protocol::Tcp => net::Protocol::Tcp,
        api::Protocol::Udp => net::Protocol::Udp,
        api::Protocol::Icmp => net::Protocol::Icmp,
        api::Protocol::Icmpv6 => net::Protocol::Icmpv6,
    };
    let direction = match api::Direction::try_from(rule.direction).unwrap_or_default() {
        api::Direction::Egress => net::Direction::Egress,
        api::Direction::Ingress => net::Direction::Ingress,
        api::Direction::Unspecified => net::Direction::Unspecified,
    };
    net::SecurityGroupRule {
        id: rule.id.clone(),
        direction: direction as i32,
        protocol: protocol as i32,
        port_min: rule.port_min,
        port_max: rule.port_max,
        cidr: rule.cidr.clone(),
        remote_security_group_id: rule.remote_group_id.clone(),
        remote_addresses: rule.remote_addresses.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_group_rules_translate_protocols_and_directions() {
        let rule = api::SecurityGroupRuleSpec {
            id: "r".into(),
            direction: api::Direction::Ingress as i32,
            protocol: api::Protocol::Tcp as i32,
            port_min: 22,
            port_max: 22,
            cidr: "0.0.0.0/0".into(),
            remote_group_id: String::new(),
            remote_addresses: Vec::new(),
        };
        let translated = net_rule(&rule);
        assert_eq!(translated.protocol, net::Protocol::Tcp as i32);
        assert_eq!(translated.direction, net::Direction::Ingress as i32);
        let any = net_rule(&api::SecurityGroupRuleSpec {
            protocol: api::Protocol::Any as i32,
            ..rule
        });
        assert_eq!(any.protocol, net::Protocol::All as i32);
    }
}
