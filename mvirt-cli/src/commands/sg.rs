//! `mvirt sg`: security groups and their rules.

use serde_json::json;

use crate::cli::{SgCmd, SgRuleCmd};
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{encode, set_given, Ctx};
use super::parse::parse_port_range;

pub async fn run(ctx: &Ctx, c: SgCmd) -> Result<(), ApiError> {
    let r = &res::SECURITY_GROUPS;
    match c {
        SgCmd::List(a) => ctx.list(r, &a).await,
        SgCmd::Show { sg } => ctx.show(r, &sg).await,
        SgCmd::Create { name } => {
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": {"rules": []}}),
            )
            .await
        }
        SgCmd::Delete { sg } => ctx.delete(r, &sg, &[]).await,
        SgCmd::Rule(SgRuleCmd::List { sg }) => {
            ctx.list_within(r, &sg, "spec.rules", res::SG_RULES).await
        }
        SgCmd::Rule(SgRuleCmd::Add {
            sg,
            direction,
            protocol,
            port,
            cidr,
            remote_group,
            description,
        }) => {
            let (port_min, port_max) = match port {
                Some(p) => parse_port_range(&p)?,
                None => (0, 0),
            };
            let mut rule = json!({"direction": direction, "protocol": protocol, "port_min": port_min, "port_max": port_max});
            let remote_group_id = match remote_group {
                Some(g) => Some(ctx.resolve_id(r, &g).await?),
                None => None,
            };
            set_given(
                &mut rule,
                [
                    ("cidr", cidr),
                    ("remote_group_id", remote_group_id),
                    ("description", description),
                ],
            );
            let v = ctx.post_below(r, &sg, "rules", &rule).await?;
            ctx.done(&v, &format!("rule added to security group {sg}"))
        }
        SgCmd::Rule(SgRuleCmd::Delete { sg, rule_id }) => {
            let v = ctx
                .delete_below(r, &sg, &format!("rules/{}", encode(&rule_id)))
                .await?;
            ctx.done(
                &v,
                &format!("rule {rule_id} deleted from security group {sg}"),
            )
        }
    }
}
