//! `mvirt replication`: replication schedules of VMs (`/v1/replications`). The VM's node sends
//! its volumes to the target nodes every interval; `show` prints each volume's replication to
//! each target (last replicated, snapshot, bytes, lag, last error).
//!
//! The verbs are declared here (not in `cli.rs`) so the kind stays one module.

use clap::Subcommand;
use serde_json::json;

use crate::cli::ListArgs;
use crate::client::ApiError;
use crate::output::{col, colf, Fmt};
use crate::resources::Resource;

use super::ctx::Ctx;
use super::parse::parse_labels;

pub const REPLICATIONS: Resource = Resource {
    name: "replication",
    path: "/v1/replications",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        colf("vm", "spec.vm_id", Fmt::ShortId),
        col("targets", "spec.targets"),
        col("interval", "spec.interval_secs"),
        col("keep", "spec.keep"),
        col("phase", "status.phase"),
        col("message", "status.message"),
        colf("age", "created_at", Fmt::Age),
    ],
};

/// One volume's replication to one target (`show`'s second table).
const REPLICAS: &[crate::output::Column] = &[
    colf("volume", "volume_id", Fmt::ShortId),
    colf("target", "target_node_id", Fmt::ShortId),
    col("last replicated", "last_replicated_at"),
    colf("snapshot", "last_snapshot_id", Fmt::ShortId),
    colf("bytes", "last_bytes", Fmt::Bytes),
    col("incremental", "last_incremental"),
    col("lag (s)", "lag_secs"),
    col("error", "last_error"),
];

#[derive(Debug, Subcommand)]
pub enum ReplicationCmd {
    /// List replication schedules.
    List(ListArgs),
    /// Show one schedule with each volume's replication to each target.
    Show { replication: String },
    /// Replicate a VM's volumes to other nodes on a schedule.
    #[command(
        after_help = "Example:\n  mvirt replication create web-dr --vm web --target node-b --interval 300 --keep 3"
    )]
    Create {
        name: String,
        /// The VM (id or name).
        #[arg(long)]
        vm: String,
        /// A target node (id or name); repeat for several (at most 4).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Seconds between two replications (5-86400).
        #[arg(long, default_value_t = 300)]
        interval: u32,
        /// Replication snapshots kept on each side (1-100).
        #[arg(long, default_value_t = 3)]
        keep: u32,
        /// key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Delete a schedule (the replicas stay on their nodes).
    Delete { replication: String },
}

pub async fn run(ctx: &Ctx, c: ReplicationCmd) -> Result<(), ApiError> {
    let r = &REPLICATIONS;
    match c {
        ReplicationCmd::List(list) => ctx.list(r, &list).await,
        ReplicationCmd::Show { replication } => {
            ctx.show(r, &replication).await?;
            if ctx.format == crate::output::Format::Table {
                ctx.list_within(r, &replication, "status.replicas", REPLICAS)
                    .await?;
            }
            Ok(())
        }
        ReplicationCmd::Create {
            name,
            vm,
            targets,
            interval,
            keep,
            labels,
        } => {
            let spec =
                json!({"vm_id": vm, "targets": targets, "interval_secs": interval, "keep": keep});
            let body = json!({"name": name, "project": ctx.api.project, "labels": parse_labels(&labels)?, "spec": spec});
            ctx.create(r, body).await
        }
        ReplicationCmd::Delete { replication } => ctx.delete(r, &replication, &[]).await,
    }
}
