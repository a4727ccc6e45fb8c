//! What `GetVersion` reports: the component, the crate version and the git commit it was built
//! from (when the build had one).

/// Version information of a daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    pub component: String,
    pub version: String,
    pub git_commit: String,
}

impl VersionInfo {
    /// Version info for `component`, built from the calling crate's `CARGO_PKG_VERSION`.
    pub fn new(component: &str, version: &str) -> Self {
        Self {
            component: component.to_string(),
            version: version.to_string(),
            git_commit: option_env!("MVIRT_GIT_COMMIT")
                .unwrap_or("unknown")
                .to_string(),
        }
    }
}
