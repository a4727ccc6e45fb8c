//! The client configuration: named remotes (API URL, token, default project, pinned cluster
//! CA) in `~/.config/mvirt/config.toml`, and how flags and environment variables override them.
//!
//! Precedence, highest first: command-line flag, environment variable (`MVIRT_URL`,
//! `MVIRT_TOKEN`, `MVIRT_PROJECT`, `MVIRT_REMOTE`, `MVIRT_CA_FILE`; clap folds these two
//! together), the selected remote in the config file, built-in defaults
//! (`http://127.0.0.1:8080`, project `default`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot write config file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialise the config: {0}")]
    Serialise(#[from] toml::ser::Error),
    #[error("no remote named {0:?} in the config file (see `mvirt remote list`)")]
    UnknownRemote(String),
    #[error("cannot locate the config directory: neither $XDG_CONFIG_HOME nor $HOME is set")]
    NoHome,
}

/// One API endpoint the CLI can talk to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The cluster CA (PEM) pinned by `mvirt login` (trust on first use); every `https://`
    /// connection to this remote is verified against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// The config file as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The remote used when no `--remote` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// Where the config file lives: `$XDG_CONFIG_HOME/mvirt/config.toml`, else
/// `$HOME/.config/mvirt/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("mvirt").join("config.toml"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("mvirt")
            .join("config.toml")),
        None => Err(ConfigError::NoHome),
    }
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.into(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes the file with mode 0600 (it holds tokens), creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)?;
        let werr = |source| ConfigError::Write {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let tmp = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(werr)?;
            f.write_all(text.as_bytes()).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        std::fs::rename(&tmp, path).map_err(werr)
    }
}

/// What the command line and environment asked for (all optional).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub remote: Option<String>,
    pub url: Option<String>,
    pub token: Option<String>,
    pub project: Option<String>,
    /// `--ca-file` / `MVIRT_CA_FILE`.
    pub ca_file: Option<PathBuf>,
}

/// Where the CA an `https://` API is verified against comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CaSource {
    /// `--ca-file` / `MVIRT_CA_FILE`.
    File(PathBuf),
    /// Pinned in the config file for this remote.
    Pinned { remote: String, pem: String },
}

/// The settings a command runs with, after applying precedence.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The remote the settings came from, if any.
    pub remote: Option<String>,
    pub url: String,
    pub token: Option<String>,
    pub project: String,
    pub ca: Option<CaSource>,
}

pub fn resolve(file: &ConfigFile, o: &Overrides) -> Result<Resolved, ConfigError> {
    let remote_name = o.remote.clone().or_else(|| file.current.clone());
    let remote = match &remote_name {
        Some(name) => match file.remotes.get(name) {
            Some(r) => Some(r.clone()),
            // An explicitly named remote must exist; a stale `current` is just ignored when the
            // URL comes from elsewhere.
            None if o.remote.is_some() || o.url.is_none() => {
                return Err(ConfigError::UnknownRemote(name.clone()))
            }
            None => None,
        },
        None => None,
    };
    let url = o
        .url
        .clone()
        .or_else(|| remote.as_ref().map(|r| r.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let token = o
        .token
        .clone()
        .or_else(|| remote.as_ref().and_then(|r| r.token.clone()));
    let project = o
        .project
        .clone()
        .or_else(|| remote.as_ref().and_then(|r| r.project.clone()))
        .unwrap_or_else(|| DEFAULT_PROJECT.to_string());
    let remote_name = remote.as_ref().map(|_| remote_name.unwrap_or_default());
    // The remote's CA is the cluster's: it also verifies another member given with --url.
    let ca = match (&o.ca_file, &remote, &remote_name) {
        (Some(file), _, _) => Some(CaSource::File(file.clone())),
        (
            None,
            Some(Remote {
                ca_pem: Some(pem), ..
            }),
            Some(name),
        ) => Some(CaSource::Pinned {
            remote: name.clone(),
            pem: pem.clone(),
        }),
        _ => None,
    };
    Ok(Resolved {
        remote: remote_name,
        url: url.trim_end_matches('/').to_string(),
        token: token.filter(|t| !t.is_empty()),
        project,
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        let mut f = ConfigFile {
            current: Some("lab".into()),
            ..Default::default()
        };
        f.remotes.insert(
            "lab".into(),
            Remote {
                url: "http://lab:8080/".into(),
                token: Some("t-lab".into()),
                project: Some("web".into()),
                ca_pem: Some("PEM-LAB".into()),
            },
        );
        f.remotes.insert(
            "prod".into(),
            Remote {
                url: "https://prod".into(),
                token: None,
                project: None,
                ca_pem: None,
            },
        );
        f
    }

    #[test]
    fn current_remote_supplies_url_token_and_project() {
        let r = resolve(&file(), &Overrides::default()).unwrap();
        assert_eq!(r.url, "http://lab:8080");
        assert_eq!(r.token.as_deref(), Some("t-lab"));
        assert_eq!(r.project, "web");
        assert_eq!(r.remote.as_deref(), Some("lab"));
        assert_eq!(
            r.ca,
            Some(CaSource::Pinned {
                remote: "lab".into(),
                pem: "PEM-LAB".into()
            })
        );
    }

    #[test]
    fn a_ca_file_overrides_the_pinned_ca() {
        let o = Overrides {
            ca_file: Some("/etc/ca.pem".into()),
            ..Default::default()
        };
        let r = resolve(&file(), &o).unwrap();
        assert_eq!(r.ca, Some(CaSource::File("/etc/ca.pem".into())));
        let o = Overrides {
            remote: Some("prod".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&file(), &o).unwrap().ca, None);
    }

    #[test]
    fn flags_and_env_override_the_remote() {
        let o = Overrides {
            url: Some("http://x".into()),
            token: Some("t".into()),
            project: Some("p".into()),
            remote: None,
            ca_file: None,
        };
        let r = resolve(&file(), &o).unwrap();
        assert_eq!(
            (r.url.as_str(), r.token.as_deref(), r.project.as_str()),
            ("http://x", Some("t"), "p")
        );
    }

    #[test]
    fn selected_remote_without_project_falls_back_to_default_project() {
        let o = Overrides {
            remote: Some("prod".into()),
            ..Default::default()
        };
        let r = resolve(&file(), &o).unwrap();
        assert_eq!(
            (r.url.as_str(), r.token, r.project.as_str()),
            ("https://prod", None, "default")
        );
    }

    #[test]
    fn unknown_remote_is_an_error() {
        let o = Overrides {
            remote: Some("nope".into()),
            ..Default::default()
        };
        assert!(matches!(resolve(&file(), &o), Err(ConfigError::UnknownRemote(n)) if n == "nope"));
    }

    #[test]
    fn empty_config_uses_builtin_defaults() {
        let r = resolve(&ConfigFile::default(), &Overrides::default()).unwrap();
        assert_eq!(
            (r.url.as_str(), r.token, r.project.as_str()),
            (DEFAULT_URL, None, DEFAULT_PROJECT)
        );
    }

    #[test]
    fn save_then_load_round_trips_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        file().save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ConfigFile::load(&dir.path().join("none.toml")).unwrap(),
            ConfigFile::default()
        );
    }
}
