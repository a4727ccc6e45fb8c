//! `mvirt cluster`: control-plane members and join tokens.

use serde_json::{json, Value};

use crate::cli::ClusterCmd;
use crate::client::ApiError;
use crate::output::{self, Format};
use crate::resources as res;

use super::ctx::{encode, Ctx};

pub async fn run(ctx: &Ctx, c: ClusterCmd) -> Result<(), ApiError> {
    match c {
        ClusterCmd::Members => {
            let v = ctx.api.get("/v1/controlplane", &[]).await?;
            if ctx.format != Format::Table {
                return ctx.print_object(&v);
            }
            let members = v
                .get("members")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ctx.print_list(&members, res::MEMBERS)?;
            let s = |k: &str| output::text_at(&v, k);
            ctx.print(&format!(
                "\nleader {}  term {}  last log index {}  applied index {}\n",
                s("leader_id"),
                s("term"),
                s("last_log_index"),
                s("applied_index")
            ));
            Ok(())
        }
        ClusterCmd::JoinToken { ttl } => {
            let v = ctx
                .api
                .post(
                    "/v1/controlplane/join-tokens",
                    &[],
                    &json!({"ttl_seconds": ttl}),
                )
                .await?;
            ctx.print_text_or_object(&v, |v| {
                let s = |k: &str| output::text_at(v, k);
                format!(
                    "{}\n(single use, expires {}; on the new member: mvirt-api --join {} --token <token>)\n",
                    s("token"),
                    v.get("expires_at_ms")
                        .and_then(Value::as_i64)
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    ctx.api.base
                )
            })
        }
        ClusterCmd::Remove { member_id } => {
            let v = ctx
                .api
                .delete(
                    &format!("/v1/controlplane/members/{}", encode(&member_id)),
                    &[],
                )
                .await?;
            ctx.done(&v, &format!("member {member_id} removed"))
        }
    }
}
