//! Security groups: their rules reach the datapath through every NIC that is a member.

use mvirt_common::validate;

use super::{not_found, now, ManagerError, NetManager, Result};
use crate::model::{self, SecurityGroup, SecurityGroupSpec};

impl NetManager {
    pub(super) fn check_group(&self, id: &str, spec: &SecurityGroupSpec) -> Result<()> {
        spec.validate()?;
        for rule in &spec.rules {
            if let Some(g) = rule.target.group_id() {
                if g != id && self.store.get_security_group(g)?.is_none() {
                    return Err(not_found("remote security group", g));
                }
            }
        }
        Ok(())
    }

    pub async fn create_security_group(
        &self,
        id: &str,
        spec: SecurityGroupSpec,
    ) -> Result<SecurityGroup> {
        validate::resource_id("security group id", id)?;
        let _inner = self.inner.lock().await;
        if let Some(existing) = self.store.get_security_group(id)? {
            if existing.spec == spec {
                return Ok(existing);
            }
            return Err(ManagerError::AlreadyExists(format!(
                "security group {id} exists with a different spec"
            )));
        }
        self.check_group(id, &spec)?;
        let sg = SecurityGroup {
            id: id.into(),
            spec,
            created_at: now(),
        };
        self.store.upsert_security_group(&sg)?;
        self.audit.audit(
            format!(
                "created security group {id} with {} rule(s)",
                sg.spec.rules.len()
            ),
            &[id],
        );
        Ok(sg)
    }

    pub fn get_security_group(&self, id: &str) -> Result<SecurityGroup> {
        self.store
            .get_security_group(id)?
            .ok_or_else(|| not_found("security group", id))
    }

    pub fn list_security_groups(&self) -> Result<Vec<SecurityGroup>> {
        Ok(self.store.list_security_groups()?)
    }

    /// Replaces the rules of a group; live traffic follows at once.
    pub async fn update_security_group(
        &self,
        id: &str,
        rules: Vec<model::Rule>,
    ) -> Result<SecurityGroup> {
        let mut inner = self.inner.lock().await;
        let mut sg = self.get_security_group(id)?;
        sg.spec.rules = rules;
        self.check_group(id, &sg.spec)?;
        self.check_rule_counts(None, Some(&sg))?;
        self.store.upsert_security_group(&sg)?;
        self.converge(&mut inner)?;
        self.audit.audit(
            format!(
                "updated rules of security group {id} ({} rule(s))",
                sg.spec.rules.len()
            ),
            &[id],
        );
        Ok(sg)
    }

    pub async fn delete_security_group(&self, id: &str) -> Result<()> {
        let mut inner = self.inner.lock().await;
        self.get_security_group(id)?;
        if let Some(nic) = self
            .store
            .list_nics()?
            .into_iter()
            .find(|n| n.spec.security_groups.iter().any(|g| g == id))
        {
            return Err(ManagerError::InUse(format!(
                "security group {id} is attached to NIC {}",
                nic.id
            )));
        }
        for other in self.store.list_security_groups()? {
            if other.id != id
                && other
                    .spec
                    .rules
                    .iter()
                    .any(|r| r.target.group_id() == Some(id))
            {
                return Err(ManagerError::InUse(format!(
                    "security group {id} is referenced by a rule of security group {}",
                    other.id
                )));
            }
        }
        self.store.delete_security_group(id)?;
        self.converge(&mut inner)?;
        self.audit
            .audit(format!("deleted security group {id}"), &[id]);
        Ok(())
    }
}
