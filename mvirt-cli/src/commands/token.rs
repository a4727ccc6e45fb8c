//! `mvirt token`: API tokens; `mvirt whoami`: the calling token.

use serde_json::json;

use crate::cli::{ListArgs, TokenCmd};
use crate::client::ApiError;
use crate::output;
use crate::resources as res;

use super::ctx::Ctx;

/// `projects`: the `--project` flags of the command line (`token create` scopes the token to
/// them; the environment's project is not one of them).
pub async fn run(ctx: &Ctx, c: TokenCmd, projects: &[String]) -> Result<(), ApiError> {
    let r = &res::TOKENS;
    match c {
        TokenCmd::List => ctx.list(r, &ListArgs::default()).await,
        TokenCmd::Create { name, role } => {
            let mut body = json!({"name": name, "role": role});
            if !projects.is_empty() {
                body["projects"] = json!(projects);
            }
            let v = ctx.api.create(r.path, &body).await?;
            ctx.print_text_or_object(&v, |v| {
                format!(
                    "{}\n(token {} created; the secret is shown only now)\n",
                    output::text_at(v, "token"),
                    output::text_at(v, "id")
                )
            })
        }
        TokenCmd::Delete { id } => ctx.delete(r, &id, &[]).await,
    }
}

/// `mvirt whoami`: `GET /v1/whoami`.
pub async fn whoami(ctx: &Ctx) -> Result<(), ApiError> {
    let v = ctx.api.get("/v1/whoami", &[]).await?;
    ctx.print_text_or_object(&v, |v| {
        let projects = match output::text_at(v, "projects") {
            p if p.is_empty() => "all".to_string(),
            p => p,
        };
        let mut text = format!(
            "token:    {} ({})\nrole:     {}\nprojects: {projects}\n",
            output::text_at(v, "name"),
            output::text_at(v, "id"),
            output::text_at(v, "role"),
        );
        if let Some(node) = v.get("node_id").and_then(|n| n.as_str()) {
            text.push_str(&format!("node:     {node}\n"));
        }
        text
    })
}
