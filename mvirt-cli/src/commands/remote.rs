//! `mvirt login` and `mvirt remote`: the named remotes in the config file.

use serde_json::{json, Value};

use crate::cli::*;
use crate::client::{ApiClient, ApiError};
use crate::config::{self, ConfigFile, Remote};
use crate::output;
use crate::resources as res;

use super::ctx::config_path;

pub(super) async fn login(g: &GlobalArgs, a: LoginArgs) -> Result<(), ApiError> {
    let path = config_path(g)?;
    let mut file = ConfigFile::load(&path)?;
    let existing = file.remotes.get(&a.name).cloned();
    let url = g
        .url
        .clone()
        .or_else(|| existing.as_ref().map(|r| r.url.clone()))
        .unwrap_or_else(|| config::DEFAULT_URL.to_string());
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
        let api = ApiClient::new(
            &url,
            Some(token.clone()),
            project.as_deref().unwrap_or(config::DEFAULT_PROJECT),
        )?;
        api.get(res::PROJECTS.path, &[("limit", "1".into())])
            .await?;
    }
    file.remotes.insert(
        a.name.clone(),
        Remote {
            url: url.trim_end_matches('/').to_string(),
            token: Some(token),
            project,
        },
    );
    file.current = Some(a.name.clone());
    file.save(&path)?;
    println!(
        "Logged in to {url} as remote {:?} (saved in {})",
        a.name,
        path.display()
    );
    Ok(())
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
                    "name": n, "url": r.url, "project": r.project, "token": if r.token.is_some() { "set" } else { "" }})
                })
                .collect();
            let cols = [
                output::col("", "current"),
                output::col("name", "name"),
                output::col("url", "url"),
                output::col("project", "project"),
                output::col("token", "token"),
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
