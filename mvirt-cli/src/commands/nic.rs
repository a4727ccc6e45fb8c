//! `mvirt nic`: network interfaces.

use serde_json::json;

use crate::cli::NicCmd;
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{set_given, Ctx};

pub async fn run(ctx: &Ctx, c: NicCmd) -> Result<(), ApiError> {
    let r = &res::NICS;
    match c {
        NicCmd::List(a) => ctx.list(r, &a).await,
        NicCmd::Show { nic } => ctx.show(r, &nic).await,
        NicCmd::Create {
            name,
            network,
            mac,
            ipv4,
            ipv6,
            security_groups,
            routed_prefixes,
        } => {
            let network_id = ctx.resolve_id(&res::NETWORKS, &network).await?;
            let sgs = ctx
                .resolve_all(&res::SECURITY_GROUPS, &security_groups)
                .await?;
            let mut spec = json!({"network_id": network_id, "security_group_ids": sgs,
                "routed_prefixes": routed_prefixes});
            set_given(
                &mut spec,
                [
                    ("mac_address", mac),
                    ("ipv4_address", ipv4),
                    ("ipv6_address", ipv6),
                ],
            );
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": spec}),
            )
            .await
        }
        NicCmd::Delete { nic } => ctx.delete(r, &nic, &[]).await,
    }
}
