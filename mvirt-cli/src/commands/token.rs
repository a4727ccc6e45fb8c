//! `mvirt token`: API tokens.

use serde_json::json;

use crate::cli::{ListArgs, TokenCmd};
use crate::client::ApiError;
use crate::output;
use crate::resources as res;

use super::ctx::Ctx;

pub async fn run(ctx: &Ctx, c: TokenCmd) -> Result<(), ApiError> {
    let r = &res::TOKENS;
    match c {
        TokenCmd::List => ctx.list(r, &ListArgs::default()).await,
        TokenCmd::Create { name, role } => {
            let v = ctx
                .api
                .create(r.path, &json!({"name": name, "role": role}))
                .await?;
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
