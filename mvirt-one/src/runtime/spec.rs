//! A pod spec's validation, and what a container runs: its command (Kubernetes semantics over
//! the image's entrypoint and cmd) and its user (from the image's passwd and group).

use std::collections::HashSet;
use std::path::Path;

use crate::launch::{self, Identity};

use super::{PodSpec, RuntimeError};

pub(super) fn validate_spec(spec: &PodSpec) -> Result<(), RuntimeError> {
    mvirt_common::validate::resource_id("pod id", &spec.id)?;
    if spec.containers.is_empty() {
        return Err(RuntimeError::InvalidSpec(
            "a pod needs at least one container".into(),
        ));
    }
    if !spec.hostname.is_empty() {
        mvirt_common::validate::dns_label("hostname", &spec.hostname)?;
    }
    let mut names = HashSet::new();
    for c in &spec.containers {
        mvirt_common::validate::dns_label("container name", &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container name {:?} is used twice",
                c.name
            )));
        }
        if c.image.trim().is_empty() {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?} has no image",
                c.name
            )));
        }
        let all_args = c.command.iter().chain(&c.args).chain(c.env.values());
        if all_args.clone().any(|a| !launch::valid_arg(a)) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?}: command, args and env must not contain NUL bytes",
                c.name
            )));
        }
        for key in c.env.keys() {
            if key.is_empty() || key.contains('=') || !launch::valid_arg(key) {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?}: invalid environment variable name {key:?}",
                    c.name
                )));
            }
        }
        if !c.working_dir.is_empty() && !c.working_dir.starts_with('/') {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {:?}: working dir must be absolute",
                c.name
            )));
        }
        c.limits
            .validate()
            .map_err(|e| RuntimeError::InvalidSpec(format!("container {:?}: {e}", c.name)))?;
    }
    Ok(())
}

/// Kubernetes semantics: `command` replaces the entrypoint (and drops the image's cmd),
/// `args` replaces the cmd.
pub fn effective_argv(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.iter().chain(args).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd).cloned().collect()
    }
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image's passwd/group.
pub fn resolve_identity(rootfs: &Path, user: &str) -> Option<(Identity, String)> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == user_part);
    let (uid, default_gid, home) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = entries.iter().find(|f| f[2] == user_part);
            (
                uid,
                entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
                entry.map(|f| f[5].to_string()),
            )
        }
        Err(_) => {
            let f = by_name?;
            (
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                Some(f[5].to_string()),
            )
        }
    };
    let gid = match group_part {
        None | Some("") => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())?,
        },
    };
    Some((
        Identity {
            uid,
            gid,
            groups: vec![gid],
        },
        home.unwrap_or_else(|| "/".to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_semantics() {
        let ep = s(&["/entry"]);
        let cmd = s(&["default"]);
        assert_eq!(
            effective_argv(&[], &[], &ep, &cmd),
            s(&["/entry", "default"])
        );
        assert_eq!(
            effective_argv(&[], &s(&["x"]), &ep, &cmd),
            s(&["/entry", "x"])
        );
        assert_eq!(
            effective_argv(&s(&["/bin/sh"]), &[], &ep, &cmd),
            s(&["/bin/sh"])
        );
        assert_eq!(
            effective_argv(&s(&["/bin/sh"]), &s(&["-c", "x"]), &ep, &cmd),
            s(&["/bin/sh", "-c", "x"])
        );
    }

    #[test]
    fn users_resolve_from_the_image_passwd_and_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let (id, home) = resolve_identity(dir.path(), "app").unwrap();
        assert_eq!((id.uid, id.gid, home.as_str()), (1000, 1001, "/home/app"));
        let (id, _) = resolve_identity(dir.path(), "app:staff").unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        let (id, _) = resolve_identity(dir.path(), "4242:7").unwrap();
        assert_eq!((id.uid, id.gid), (4242, 7));
        let (id, home) = resolve_identity(dir.path(), "").unwrap();
        assert_eq!((id.uid, id.gid, home.as_str()), (0, 0, "/root"));
        assert!(resolve_identity(dir.path(), "nobody-here").is_none());
    }
}
