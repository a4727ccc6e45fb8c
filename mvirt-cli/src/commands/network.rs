//! `mvirt network`: virtual networks.

use serde_json::json;

use crate::cli::NetworkCmd;
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{set_given, Ctx};
use super::parse::parse_labels;

pub async fn run(ctx: &Ctx, c: NetworkCmd) -> Result<(), ApiError> {
    let r = &res::NETWORKS;
    match c {
        NetworkCmd::List(a) => ctx.list(r, &a).await,
        NetworkCmd::Show { network } => ctx.show(r, &network).await,
        NetworkCmd::Create {
            name,
            ipv4,
            ipv6,
            dns,
            ntp,
            public,
            labels,
        } => {
            let mut spec = json!({"dns_servers": dns, "ntp_servers": ntp, "is_public": public});
            set_given(&mut spec, [("ipv4_prefix", ipv4), ("ipv6_prefix", ipv6)]);
            let body = json!({"name": name, "project": ctx.api.project, "labels": parse_labels(&labels)?, "spec": spec});
            ctx.create(r, body).await
        }
        NetworkCmd::Delete { network, force } => {
            let extra = if force {
                vec![("force", "true".to_string())]
            } else {
                vec![]
            };
            ctx.delete(r, &network, &extra).await
        }
    }
}
