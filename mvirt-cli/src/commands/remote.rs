//! `mvirt login` and `mvirt remote`: the named remotes in the config file.

use serde_json::{json, Value};

use crate::cli::*;
use crate::client::{ApiClient, ApiError};
use crate::config::{self, ConfigFile, Remote};
use crate::output;
use crate::resources as res;
use crate::trust::{self, Decision, Trust};

use super::ctx::config_path;

pub(super) async fn login(g: &GlobalArgs, a: LoginArgs) -> Result<(), ApiError> {
    let path = config_path(g)?;
    let mut file = ConfigFile::load(&path)?;
    let existing = file.remotes.get(&a.name).cloned();
    let url = a
        .url
        .clone()
        .or_else(|| g.url.clone())
        .or_else(|| existing.as_ref().map(|r| r.url.clone()))
        .unwrap_or_else(|| config::DEFAULT_URL.to_string());
    let url = url.trim_end_matches('/').to_string();
    // Trust first: the token must not travel to a server that is not trusted yet.
    let trust = login_trust(g, &a, &url, existing.as_ref()).await?;
    let token = match (&g.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| ApiError::Usage(format!("cannot read token file {}: {e}", f.display())))?,
        (None, None) => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprint!("API token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| ApiError::Usage(format!("cannot read the token from stdin: {e}")))?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(ApiError::Usage(
            "no token given (use --token, --token-file or stdin)".into(),
        ));
    }
    let project = g.project().or_else(|| existing.and_then(|r| r.project));
    if !a.no_verify {
        let api = ApiClient::with_trust(
            &url,
            Some(token.clone()),
            project.as_deref().unwrap_or(config::DEFAULT_PROJECT),
            trust.clone(),
        )?;
        api.get(res::PROJECTS.path, &[("limit", "1".into())])
            .await?;
    }
    file.remotes.insert(
        a.name.clone(),
        Remote {
            url: url.clone(),
            token: Some(token),
            project,
            ca_pem: trust.as_ref().map(|t| t.ca_pem.clone()),
        },
    );
    file.current = Some(a.name.clone());
    file.save(&path)?;
    match &trust {
        Some(t) => println!(
            "Logged in to {url} as remote {:?}, trusting the cluster CA {} (saved in {})",
            a.name,
            t.fingerprint,
            path.display()
        ),
        None => println!(
            "Logged in to {url} as remote {:?} (saved in {})",
            a.name,
            path.display()
        ),
    }
    Ok(())
}

/// The CA to pin for `url`: `--ca-file` as given, else the CA the server presents once it is
/// confirmed ([`trust::decide`]); `None` for `http://` (with a warning).
async fn login_trust(
    g: &GlobalArgs,
    a: &LoginArgs,
    url: &str,
    existing: Option<&Remote>,
) -> Result<Option<Trust>, ApiError> {
    if url.starts_with("http://") {
        eprintln!(
            "warning: {url} is plain HTTP: the token and everything else travel unencrypted and \
             the server is not authenticated (the API serves http:// only with \
             --insecure-plaintext)"
        );
        return Ok(None);
    }
    if !url.starts_with("https://") {
        return Err(ApiError::Usage(format!(
            "the API URL {url:?} must start with https:// (or http:// for an API run with \
             --insecure-plaintext)"
        )));
    }
    if let Some(path) = &g.ca_file {
        return Trust::from_file(path).map(Some);
    }
    let presented = trust::presented_ca(url).await?;
    // A CA pinned for this remote before must still be the one presented (or be replaced
    // explicitly with --accept-fingerprint).
    let pinned = existing
        .and_then(|r| r.ca_pem.as_deref())
        .map(|pem| Trust::from_pem(pem, &format!("pinned for remote {:?}", a.name)))
        .transpose()?;
    match trust::decide(
        url,
        &presented.fingerprint,
        pinned.as_ref(),
        a.accept_fingerprint.as_deref(),
        a.yes,
    ) {
        Decision::Accept => {
            eprintln!(
                "The API at {url} presents the cluster CA {}",
                presented.fingerprint
            );
            Ok(Some(presented))
        }
        Decision::Refuse(message) => Err(ApiError::Tls(message)),
        Decision::Ask => {
            use std::io::{IsTerminal, Write};
            if !std::io::stdin().is_terminal() {
                return Err(ApiError::Usage(format!(
                    "the API at {url} presents the cluster CA {fp}; to trust it without a \
                     terminal to ask on, pass --accept-fingerprint {fp} (after checking it \
                     against mvirt-api's start-up log or `mvirt cluster join-token`) or --yes",
                    fp = presented.fingerprint
                )));
            }
            eprintln!(
                "The API at {url} presents a cluster CA with the fingerprint\n  {}\n\
                 Compare it with the one mvirt-api logged at start-up (or scripts/up.sh printed).",
                presented.fingerprint
            );
            eprint!("Trust this CA for remote {:?}? [y/N] ", a.name);
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin()
                .read_line(&mut answer)
                .map_err(|e| ApiError::Usage(format!("cannot read the answer: {e}")))?;
            if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                Ok(Some(presented))
            } else {
                Err(ApiError::Usage(
                    "the CA was not trusted; nothing was saved".into(),
                ))
            }
        }
    }
}

pub(super) fn remote(g: &GlobalArgs, c: RemoteCmd) -> Result<(), ApiError> {
    let path = config_path(g)?;
    let mut file = ConfigFile::load(&path)?;
    match c {
        RemoteCmd::List => {
            let items: Vec<Value> = file
                .remotes
                .iter()
                .map(|(n, r)| {
                    json!({"current": if file.current.as_deref() == Some(n) { "*" } else { "" },
                    "name": n, "url": r.url, "project": r.project, "token": if r.token.is_some() { "set" } else { "" },
                    "ca": r.ca_pem.as_deref().and_then(|pem| mvirt_common::tls::fingerprint_pem(pem).ok()).unwrap_or_default()})
                })
                .collect();
            let cols = [
                output::col("", "current"),
                output::col("name", "name"),
                output::col("url", "url"),
                output::col("project", "project"),
                output::col("token", "token"),
                output::col("ca", "ca"),
            ];
            print!(
                "{}",
                output::render_list(&items, &cols, g.output).map_err(ApiError::Other)?
            );
            Ok(())
        }
        RemoteCmd::Use { name } => {
            if !file.remotes.contains_key(&name) {
                return Err(config::ConfigError::UnknownRemote(name).into());
            }
            file.current = Some(name.clone());
            file.save(&path)?;
            println!("Now using remote {name:?}");
            Ok(())
        }
        RemoteCmd::Remove { name } => {
            if file.remotes.remove(&name).is_none() {
                return Err(config::ConfigError::UnknownRemote(name).into());
            }
            if file.current.as_deref() == Some(name.as_str()) {
                file.current = None;
            }
            file.save(&path)?;
            println!("Removed remote {name:?}");
            Ok(())
        }
    }
}
