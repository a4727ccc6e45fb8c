//! The tracked flows (mvirt-ebpf connection tracking) of a live-migrating VM's NICs: exported
//! on the source once the guest paused, carried in `NodePeer.CompleteMigration`, imported on
//! the target before the guest runs there. Without them, the replies of connections the VM
//! opened (which no ingress rule of its security groups allows) are dropped on the target.
//! Best-effort: a failure is logged and reported, never fails the migration.

use std::time::Duration;

use mvirt_api::proto::{MigratedFlow, MigratedNicFlows};
use mvirt_ebpf::proto as net;
use net::net_service_client::NetServiceClient;

use crate::daemons::DaemonChannel;

/// How long one export or import may take: the guest is paused meanwhile, and a stuck
/// mvirt-ebpf must not hold the switch-over.
const CALL_WAIT: Duration = Duration::from_secs(5);

fn timed_out() -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("mvirt-ebpf did not answer within {CALL_WAIT:?}"))
}

/// The flows of each of `nic_ids` (the VM's NICs here), and what could not be exported.
pub async fn export(
    mut client: NetServiceClient<DaemonChannel>,
    nic_ids: &[String],
) -> (Vec<MigratedNicFlows>, Vec<String>) {
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    for nic_id in nic_ids {
        let request = net::ExportFlowsRequest {
            nic_id: nic_id.clone(),
        };
        let answer = tokio::time::timeout(CALL_WAIT, client.export_flows(request)).await;
        match answer.unwrap_or_else(|_| Err(timed_out())) {
            Ok(answer) => out.push(MigratedNicFlows {
                nic_id: nic_id.clone(),
                flows: answer
                    .into_inner()
                    .flows
                    .into_iter()
                    .map(|f| MigratedFlow {
                        protocol: f.protocol,
                        src: f.src,
                        dst: f.dst,
                        src_port: f.src_port,
                        dst_port: f.dst_port,
                        closing: f.closing,
                    })
                    .collect(),
            }),
            Err(status) => {
                tracing::warn!(nic = %nic_id, error = %status.message(), "cannot export the NIC's tracked flows");
                problems.push(format!(
                    "exporting the tracked flows of NIC {nic_id}: {}",
                    status.message()
                ));
            }
        }
    }
    (out, problems)
}

/// Imports the flows into this node's mvirt-ebpf; empty when all went in, else why not.
pub async fn import(
    mut client: NetServiceClient<DaemonChannel>,
    nic_flows: &[MigratedNicFlows],
) -> String {
    let mut problems = Vec::new();
    for nic in nic_flows.iter().filter(|n| !n.flows.is_empty()) {
        let request = net::ImportFlowsRequest {
            nic_id: nic.nic_id.clone(),
            flows: nic
                .flows
                .iter()
                .map(|f| net::TrackedFlow {
                    protocol: f.protocol,
                    src: f.src.clone(),
                    dst: f.dst.clone(),
                    src_port: f.src_port,
                    dst_port: f.dst_port,
                    closing: f.closing,
                })
                .collect(),
        };
        let answer = tokio::time::timeout(CALL_WAIT, client.import_flows(request)).await;
        match answer.unwrap_or_else(|_| Err(timed_out())) {
            Ok(answer) => {
                tracing::info!(nic = %nic.nic_id, flows = answer.into_inner().imported, "imported the tracked flows of a migrating NIC");
            }
            Err(status) => {
                tracing::warn!(nic = %nic.nic_id, error = %status.message(), "cannot import the NIC's tracked flows");
                problems.push(format!(
                    "importing the tracked flows of NIC {} on the target: {}",
                    nic.nic_id,
                    status.message()
                ));
            }
        }
    }
    problems.join("; ")
}
