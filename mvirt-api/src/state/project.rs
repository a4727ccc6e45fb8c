//! Projects: cluster-wide names that hold the other resources. A project has no spec; it is
//! deleted only when empty, and the `default` project never.

use super::{refuse_if_used, ApiError, Removed, Resource, SpecChanged, State, DEFAULT_PROJECT_ID};
use crate::model::*;

/// The kinds a project holds, which keep it from being deleted.
const HELD_KINDS: [Kind; 7] = [
    Kind::Vm,
    Kind::Pod,
    Kind::Volume,
    Kind::Nic,
    Kind::Network,
    Kind::SecurityGroup,
    Kind::Template,
];

impl Resource for Project {
    /// Projects have no spec: an update changes labels only.
    type Spec = std::convert::Infallible;

    fn check_create(s: &State, new: &mut Self) -> Result<(), ApiError> {
        s.check_unique_name(Kind::Project, "", &new.meta.name)
    }

    fn update_spec(_: &mut State, _: u64, _: &str, new: Self::Spec) -> SpecChanged {
        match new {}
    }

    fn delete(s: &mut State, _: u64, id: &str, _: bool) -> Removed {
        if id == DEFAULT_PROJECT_ID {
            return Err(ApiError::conflict("the default project cannot be deleted"));
        }
        let p = s
            .projects
            .get(id)
            .map(|p| p.meta.name.clone())
            .unwrap_or_default();
        let holders: Vec<String> = HELD_KINDS
            .into_iter()
            .flat_map(|kind| {
                s.metas(kind)
                    .filter(|m| m.project == p)
                    .map(move |m| format!("{}/{}", kind.as_str(), m.id))
            })
            .collect();
        refuse_if_used(holders, || format!("project {p} still holds resources"))?;
        s.projects.remove(id);
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delete, meta, network, p, refused};
    use super::super::{Command, DEFAULT_PROJECT};
    use super::*;

    fn project(id: &str, name: &str) -> Command {
        let mut meta = meta(id, name);
        meta.project = name.into();
        Command::CreateProject {
            project: Project {
                meta,
                description: String::new(),
            },
        }
    }

    #[test]
    fn a_project_is_deleted_only_when_empty_and_never_the_default_one() {
        let mut s = State::initial();
        let err = refused(&mut s, 1, &delete(Kind::Project, DEFAULT_PROJECT_ID));
        assert_eq!(err.http_status(), 409);
        s.apply(2, &p(project("p1", "team"))).0.result.unwrap();
        let taken = s.apply(3, &p(project("p2", "team"))).0.result.unwrap_err();
        assert_eq!(taken.http_status(), 409, "names are cluster-wide");
        let mut net = network("n1", "net");
        if let Command::CreateNetwork { network } = &mut net.command {
            network.meta.project = "team".into();
        }
        s.apply(4, &net).0.result.unwrap();
        let err = refused(&mut s, 5, &delete(Kind::Project, "p1"));
        assert_eq!(err.details["in_use_by"][0], "network/n1");
        assert!(s.projects.contains_key("p1"));
        assert_eq!(
            s.project_by_name(DEFAULT_PROJECT)
                .map(|p| p.meta.id.as_str()),
            Some(DEFAULT_PROJECT_ID)
        );
    }
}
