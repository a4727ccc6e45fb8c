//! Templates: disk images every node imports (or, promoted from a volume's snapshot, one copy
//! on that volume's node). A template's source never changes; one with clones is not deleted.

use super::{refuse_if_used, stamp, ApiError, Applied, Removed, Resource, SpecChanged, State};
use crate::model::*;

impl Resource for Template {
    type Spec = TemplateSpec;

    fn update_spec(s: &mut State, _: u64, id: &str, new: TemplateSpec) -> SpecChanged {
        if new != s.templates[id].spec {
            return Err(ApiError::invalid(
                "a template's source cannot change; create a new template",
            ));
        }
        Ok((false, Vec::new()))
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        let clones: Vec<String> = s
            .volumes
            .values()
            .filter(|v| v.spec.template_id.as_deref() == Some(id))
            .map(|v| format!("volume/{}", v.meta.id))
            .collect();
        refuse_if_used(clones, || format!("template {id} has clones"))?;
        s.templates.remove(id);
        Ok(Vec::new())
    }
}

impl State {
    /// Stops a template's imports on every node (copies already imported stay).
    pub(super) fn cancel_import(&mut self, index: u64, id: &str, now: &str) -> Applied {
        let t = self.get_mut::<Template>(id)?;
        let everywhere_ready =
            !t.status.nodes.is_empty() && t.status.nodes.values().all(|n| n.phase == Phase::Ready);
        if t.spec.source_snapshot.is_some() || everywhere_ready {
            return Err(ApiError::conflict(format!(
                "template {} has no import to cancel",
                t.meta.name
            )));
        }
        t.import_cancelled = true;
        stamp(&mut t.meta, index, now, true);
        self.answer(Kind::Template, id, "import_cancelled")
    }

    /// Creates a template from a volume's snapshot. The copy is made on the volume's node, so
    /// the template lives there only and VMs cloning it are placed there.
    pub(super) fn promote_snapshot(
        &mut self,
        index: u64,
        volume_id: &str,
        snapshot_id: &str,
        template: &Template,
    ) -> Applied {
        if self.templates.contains_key(&template.meta.id) {
            return self.same_or_exists(Kind::Template, &template.meta.id);
        }
        let vol = self.ready_snapshot(volume_id, snapshot_id)?;
        let Some(node_id) = vol.node_id.clone() else {
            return Err(ApiError::conflict(format!(
                "volume {} is on no node yet",
                vol.meta.name
            )));
        };
        let mut template = template.clone();
        template.node_id = Some(node_id);
        template.spec.source_snapshot = Some(SnapshotSource {
            volume_id: volume_id.to_string(),
            snapshot_id: snapshot_id.to_string(),
        });
        self.create(index, &template)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn template(id: &str, name: &str) -> Proposal {
        p(Command::CreateTemplate {
            template: Template {
                meta: meta(id, name),
                spec: TemplateSpec {
                    source_url: "file:///image.raw".into(),
                    ..Default::default()
                },
                status: Status::default(),
                node_id: None,
                import_cancelled: false,
            },
        })
    }

    #[test]
    fn a_template_with_clones_stays_and_an_import_is_cancelled_once_begun() {
        let mut s = State::initial();
        s.apply(1, &template("t1", "base")).0.result.unwrap();
        let mut clone = volume("v1", "disk");
        if let Command::CreateVolume { volume } = &mut clone.command {
            volume.spec.template_id = Some("t1".into());
        }
        s.apply(2, &clone).0.result.unwrap();
        let err = refused(&mut s, 3, &delete(Kind::Template, "t1"));
        assert_eq!(err.details["in_use_by"][0], "volume/v1");
        let cancel = || {
            p(Command::CancelImport {
                id: "t1".into(),
                now: "t1".into(),
            })
        };
        s.apply(4, &cancel()).0.result.unwrap();
        assert!(s.templates["t1"].import_cancelled);
        s.templates.get_mut("t1").unwrap().status.nodes.insert(
            "a".into(),
            PerNodeStatus {
                phase: Phase::Ready,
                ..Default::default()
            },
        );
        assert_eq!(
            s.apply(5, &cancel()).0.result.unwrap_err().code,
            ErrorCode::Conflict
        );
    }
}
