//! `mvirt route`: routes derived on the client from NIC placement (the API has no route
//! resource).

use serde_json::{json, Value};

use crate::cli::ListArgs;
use crate::client::ApiError;
use crate::output;
use crate::resources as res;

use super::ctx::Ctx;

pub async fn list(ctx: &Ctx, a: &ListArgs) -> Result<(), ApiError> {
    let q = ctx.list_query(&res::NICS, a);
    let nics = ctx.api.list_all(res::NICS.path, &q).await?;
    let vms = ctx
        .api
        .list_all(res::VMS.path, &ctx.list_query(&res::VMS, a))
        .await?;
    let networks = ctx
        .api
        .list_all(res::NETWORKS.path, &ctx.list_query(&res::NETWORKS, a))
        .await?;
    let rows = derive_routes(&nics, &vms, &networks);
    ctx.print_list(&rows, res::ROUTES)
}

pub fn derive_routes(nics: &[Value], vms: &[Value], networks: &[Value]) -> Vec<Value> {
    let name_of = |items: &[Value], id: &str| -> String {
        items
            .iter()
            .find(|i| i.get("id").and_then(Value::as_str) == Some(id))
            .and_then(|i| i.get("name").and_then(Value::as_str))
            .unwrap_or(id)
            .to_string()
    };
    let mut rows = Vec::new();
    for nic in nics {
        let Some(vm_id) = nic.get("vm_id").and_then(Value::as_str) else {
            continue;
        };
        let vm = vms
            .iter()
            .find(|v| v.get("id").and_then(Value::as_str) == Some(vm_id));
        let Some(node) = vm.and_then(|v| v.get("node_id")).and_then(Value::as_str) else {
            continue;
        };
        let network_id = output::lookup(nic, "spec.network_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (key, plen) in [("spec.ipv4_address", 32), ("spec.ipv6_address", 128)] {
            if let Some(addr) = output::lookup(nic, key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                rows.push(json!({
                    "network": name_of(networks, network_id),
                    "destination": format!("{addr}/{plen}"),
                    "nic": nic.get("name").cloned().unwrap_or(Value::Null),
                    "vm": name_of(vms, vm_id),
                    "node": node,
                }));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_derived_from_placed_nics() {
        let nics = vec![
            json!({"id":"n1","name":"eth0","vm_id":"v1","spec":{"network_id":"net","ipv4_address":"10.0.0.5","ipv6_address":"fd00::5"}}),
            json!({"id":"n2","name":"loose","vm_id":null,"spec":{"network_id":"net","ipv4_address":"10.0.0.6"}}),
        ];
        let vms = vec![json!({"id":"v1","name":"web","node_id":"node-a"})];
        let nets = vec![json!({"id":"net","name":"lan"})];
        let rows = derive_routes(&nics, &vms, &nets);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            json!({"network":"lan","destination":"10.0.0.5/32","nic":"eth0","vm":"web","node":"node-a"})
        );
        assert_eq!(rows[1]["destination"], "fd00::5/128");
    }
}
