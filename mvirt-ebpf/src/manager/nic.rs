//! NICs: a TAP device, its datapath attachment and responder per NIC; security groups
//! attached; counters.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use mvirt_common::validate;

use super::rules::nic_rules;
use super::{dedup, not_found, now, ManagerError, NetManager, Result, MAX_RULES_PER_DIRECTION};
use crate::datapath::{NicDrops, NicStats, RuleFlows};
use crate::model::{tap_name, Invalid, Network, Nic, NicSpec, SecurityGroup};
use crate::tap;

impl NetManager {
    pub(super) fn check_nic(&self, id: &str, spec: &NicSpec) -> Result<Network> {
        let network = self
            .store
            .get_network(&spec.network_id)?
            .ok_or_else(|| not_found("network", &spec.network_id))?;
        spec.validate(&network)?;
        for other in self.store.list_nics()? {
            if other.id == id {
                continue;
            }
            if other.spec.network_id == spec.network_id {
                for (mine, theirs) in [
                    (spec.ipv4.map(IpAddr::V4), other.spec.ipv4.map(IpAddr::V4)),
                    (spec.ipv6.map(IpAddr::V6), other.spec.ipv6.map(IpAddr::V6)),
                ] {
                    if let (Some(a), Some(b)) = (mine, theirs) {
                        if a == b {
                            return Err(ManagerError::AlreadyExists(format!(
                                "address {a} is already used by NIC {} in network {}",
                                other.id, spec.network_id
                            )));
                        }
                    }
                }
            }
            if other.tap_name == tap_name(id) {
                return Err(ManagerError::AlreadyExists(format!(
                    "NIC {} already uses TAP name {} (the digests of two ids collide)",
                    other.id, other.tap_name
                )));
            }
        }
        for sg in &spec.security_groups {
            if self.store.get_security_group(sg)?.is_none() {
                return Err(not_found("security group", sg));
            }
        }
        let candidate = Nic {
            id: id.into(),
            spec: spec.clone(),
            tap_name: tap_name(id),
            created_at: 0,
        };
        self.check_rule_counts(Some(&candidate), None)?;
        Ok(network)
    }

    /// Refuses a change after which some NIC would have more rules per direction than the
    /// datapath evaluates (remote groups expand into one rule per member address). `nic` and
    /// `group` are the changed objects, replacing their stored versions.
    pub(super) fn check_rule_counts(
        &self,
        nic: Option<&Nic>,
        group: Option<&SecurityGroup>,
    ) -> Result<()> {
        let mut nics = self.store.list_nics()?;
        if let Some(changed) = nic {
            nics.retain(|n| n.id != changed.id);
            nics.push(changed.clone());
        }
        let mut groups: HashMap<String, SecurityGroup> = self
            .store
            .list_security_groups()?
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        if let Some(changed) = group {
            groups.insert(changed.id.clone(), changed.clone());
        }
        for n in nics.iter().filter(|n| !n.spec.security_groups.is_empty()) {
            let rules = nic_rules(n, &nics, &groups);
            let most = rules.ingress.len().max(rules.egress.len());
            if most > MAX_RULES_PER_DIRECTION {
                return Err(Invalid(format!(
                    "NIC {} would have {most} security-group rules in one direction after \
                     expanding remote groups; the datapath evaluates at most \
                     {MAX_RULES_PER_DIRECTION}",
                    n.id
                ))
                .into());
            }
        }
        Ok(())
    }

    pub async fn create_nic(&self, id: &str, spec: NicSpec) -> Result<Nic> {
        validate::resource_id("NIC id", id)?;
        let mut inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_nic(id)? {
            if existing.spec == spec {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "NIC {id} exists with a different spec"
            )));
        }
        self.check_nic(id, &spec)?;
        let nic = Nic {
            id: id.into(),
            tap_name: tap_name(id),
            spec,
            created_at: now(),
        };
        self.store.upsert_nic(&nic)?;
        let result = self
            .bring_up_nic(&mut inner, &nic)
            .and_then(|_| self.converge(&mut inner));
        if let Err(e) = result {
            // Undo: nothing changed.
            inner.responders.remove(id);
            inner.ifindex.remove(id);
            inner.datapath.detach(&nic.tap_name);
            let _ = tap::remove(&nic.tap_name);
            self.store.delete_nic(id)?;
            let _ = self.converge(&mut inner);
            return Err(e);
        }
        self.audit.audit(
            format!(
                "created NIC {id} (TAP {}) in network {}",
                nic.tap_name, nic.spec.network_id
            ),
            &[id, &nic.spec.network_id],
        );
        Ok(nic)
    }

    pub fn get_nic(&self, id: &str) -> Result<Nic> {
        self.store.get_nic(id)?.ok_or_else(|| not_found("NIC", id))
    }

    pub fn list_nics(&self, network_id: Option<&str>) -> Result<Vec<Nic>> {
        Ok(self
            .store
            .list_nics()?
            .into_iter()
            .filter(|n| network_id.is_none_or(|id| n.spec.network_id == id))
            .collect())
    }

    /// Replaces hostname, routed prefixes and security groups of a NIC.
    pub async fn update_nic(
        &self,
        id: &str,
        hostname: String,
        routed_prefixes: Vec<IpNet>,
        security_groups: Vec<String>,
    ) -> Result<Nic> {
        let mut inner = self.inner.lock().await;
        let mut nic = self.get_nic(id)?;
        nic.spec.hostname = hostname;
        nic.spec.routed_prefixes = routed_prefixes;
        nic.spec.security_groups = dedup(security_groups);
        let network = self.check_nic(id, &nic.spec)?;
        self.store.upsert_nic(&nic)?;
        if let Some(r) = inner.responders.get(id) {
            r.update(self.nic_config(&nic, &network));
        }
        self.converge(&mut inner)?;
        self.audit.audit(format!("updated NIC {id}"), &[id]);
        Ok(nic)
    }

    pub async fn attach_security_group(
        &self,
        nic_id: &str,
        sg_id: &str,
        attach: bool,
    ) -> Result<Nic> {
        let nic = self.get_nic(nic_id)?;
        if self.store.get_security_group(sg_id)?.is_none() {
            return Err(not_found("security group", sg_id));
        }
        let mut groups = nic.spec.security_groups.clone();
        groups.retain(|g| g != sg_id);
        if attach {
            groups.push(sg_id.to_string());
        }
        let nic = self
            .update_nic(
                nic_id,
                nic.spec.hostname.clone(),
                nic.spec.routed_prefixes.clone(),
                groups,
            )
            .await?;
        let verb = if attach { "attached" } else { "detached" };
        self.audit.audit(
            format!("{verb} security group {sg_id} to NIC {nic_id}"),
            &[nic_id, sg_id],
        );
        Ok(nic)
    }

    pub async fn delete_nic(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let nic = self.get_nic(id)?;
        inner.responders.remove(id);
        inner.ifindex.remove(id);
        inner.datapath.detach(&nic.tap_name);
        self.store.delete_nic(id)?;
        // Before converging, which would otherwise find the TAP an orphan.
        tap::remove(&nic.tap_name)?;
        self.converge(&mut inner)?;
        self.audit
            .audit(format!("deleted NIC {id} (TAP {})", nic.tap_name), &[id]);
        Ok(())
    }

    pub async fn nic_stats(&self, id: &str) -> Result<NicStats> {
        let inner = self.inner.lock().await;
        let nic = self.get_nic(id)?;
        Ok(inner
            .ifindex
            .get(&nic.id)
            .map(|i| inner.datapath.stats(*i))
            .unwrap_or_default())
    }

    /// The NIC's drops by reason and the flows each of its security-group rules allowed.
    pub async fn nic_drops_and_rule_flows(&self, id: &str) -> Result<(NicDrops, Vec<RuleFlows>)> {
        let inner = self.inner.lock().await;
        let nic = self.get_nic(id)?;
        Ok(match inner.ifindex.get(&nic.id) {
            Some(i) => (inner.datapath.drops(*i), inner.datapath.rule_flows(*i)),
            None => Default::default(),
        })
    }
}
