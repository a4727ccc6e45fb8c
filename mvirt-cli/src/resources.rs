//! What the CLI knows about each REST resource: its path and its table columns.

use crate::output::{col, colf, Column, Fmt};

#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// Singular name used in messages.
    pub name: &'static str,
    /// Collection path, e.g. `/v1/vms`.
    pub path: &'static str,
    pub columns: &'static [Column],
    /// Whether objects live in a project (lists take `?project=`).
    pub projected: bool,
}

pub const PROJECTS: Resource = Resource {
    name: "project",
    path: "/v1/projects",
    projected: false,
    columns: &[
        col("name", "name"),
        col("description", "description"),
        colf("labels", "labels", Fmt::Labels),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const NODES: Resource = Resource {
    name: "node",
    path: "/v1/nodes",
    projected: false,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("state", "status.state"),
        col("schedulable", "spec.schedulable"),
        col("address", "status.address"),
        col("vcpus", "status.capacity.vcpus"),
        col("vcpus used", "allocated.vcpus"),
        colf("memory", "status.capacity.memory_bytes", Fmt::Bytes),
        colf("memory used", "allocated.memory_bytes", Fmt::Bytes),
        colf("storage", "status.capacity.storage_bytes", Fmt::Bytes),
        col("pod artefacts", "status.pod_artefacts_version"),
        colf("labels", "labels", Fmt::Labels),
    ],
};

pub const NETWORKS: Resource = Resource {
    name: "network",
    path: "/v1/networks",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("project", "project"),
        col("ipv4", "spec.ipv4_prefix"),
        col("ipv6", "spec.ipv6_prefix"),
        col("public", "spec.is_public"),
        col("phase", "status.phase"),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const NICS: Resource = Resource {
    name: "nic",
    path: "/v1/nics",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        colf("network", "spec.network_id", Fmt::ShortId),
        col("mac", "spec.mac_address"),
        col("ipv4", "spec.ipv4_address"),
        col("ipv6", "spec.ipv6_address"),
        colf("vm", "vm_id", Fmt::ShortId),
        col("phase", "status.phase"),
    ],
};

pub const SECURITY_GROUPS: Resource = Resource {
    name: "security group",
    path: "/v1/security-groups",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("project", "project"),
        colf("rules", "spec.rules", Fmt::Count),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const SG_RULES: &[Column] = &[
    col("id", "id"),
    col("direction", "direction"),
    col("protocol", "protocol"),
    col("port min", "port_min"),
    col("port max", "port_max"),
    col("cidr", "cidr"),
    colf("remote group", "remote_group_id", Fmt::ShortId),
    col("description", "description"),
];

pub const VOLUMES: Resource = Resource {
    name: "volume",
    path: "/v1/volumes",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        colf("size", "spec.size_bytes", Fmt::Bytes),
        colf("template", "spec.template_id", Fmt::ShortId),
        colf("node", "node_id|spec.node_id", Fmt::ShortId),
        colf("vm", "vm_id|owner_vm_id", Fmt::ShortId),
        colf("snapshots", "snapshots", Fmt::Count),
        col("phase", "status.phase"),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const BACKUPS: Resource = Resource {
    name: "backup",
    path: "/v1/backups",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("volume", "volume_name"),
        colf("vm", "vm_id", Fmt::ShortId),
        col("incremental", "spec.incremental"),
        colf("node", "node_id", Fmt::ShortId),
        col("phase", "status.phase"),
        colf("size", "status.backup.size_bytes", Fmt::Bytes),
        col("sha256", "status.backup.sha256"),
        col("message", "status.message"),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const SNAPSHOTS: &[Column] = &[
    col("id", "id"),
    col("name", "name"),
    col("status", "status.phase"),
    colf("used", "status.used_bytes", Fmt::Bytes),
    col("message", "status.message"),
    colf("age", "created_at", Fmt::Age),
];

pub const TEMPLATES: Resource = Resource {
    name: "template",
    path: "/v1/templates",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("format", "spec.format"),
        col("phase", "status.phase"),
        colf("progress", "status", Fmt::Progress),
        col("source", "spec.source_url"),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const VMS: Resource = Resource {
    name: "vm",
    path: "/v1/vms",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("phase", "status.phase|scheduling.state"),
        col("desired", "spec.desired_state"),
        col("vcpus", "spec.vcpus"),
        colf("memory", "spec.memory_bytes", Fmt::Bytes),
        colf("node", "node_id", Fmt::ShortId),
        // `offline` while the VM's node misses heartbeats: the phase is then its last report.
        col("node state", "node_state"),
        col("ipv4", "status.ipv4_addresses"),
        colf("age", "created_at", Fmt::Age),
        colf("conditions", "status.conditions", Fmt::Conditions),
    ],
};

pub const PODS: Resource = Resource {
    name: "pod",
    path: "/v1/pods",
    projected: true,
    columns: &[
        colf("id", "id", Fmt::ShortId),
        col("name", "name"),
        col("phase", "status.phase|scheduling.state"),
        col("desired", "spec.desired_state"),
        colf("containers", "status.containers", Fmt::Containers),
        col("vcpus", "spec.vcpus"),
        colf("memory", "spec.memory_bytes", Fmt::Bytes),
        colf("node", "node_id", Fmt::ShortId),
        col("ipv4", "status.ipv4_addresses"),
        colf("age", "created_at", Fmt::Age),
    ],
};

/// A pod's containers (`status.containers`) in `mvirt pod show` and the TUI's pod detail.
pub const POD_CONTAINERS: &[Column] = &[
    col("name", "name"),
    col("image", "image"),
    col("state", "state"),
    col("exit code", "exit_code"),
    col("restarts", "restart_count"),
    col("oom", "oom_killed"),
    colf("started", "started_at", Fmt::Age),
    col("message", "message"),
];

pub const TOKENS: Resource = Resource {
    name: "token",
    path: "/v1/tokens",
    projected: false,
    columns: &[
        col("id", "id"),
        col("name", "name"),
        col("role", "role"),
        col("projects", "projects"),
        col("node", "node_id"),
        colf("age", "created_at", Fmt::Age),
    ],
};

pub const MEMBERS: &[Column] = &[
    col("id", "id"),
    col("role", "role"),
    col("api url", "api_url"),
    col("raft address", "raft_addr"),
];

pub const EVENTS: &[Column] = &[
    col("revision", "revision"),
    col("type", "type"),
    col("project", "project"),
    col("name", "object.name"),
    col("id", "id"),
];

pub const LOGS: &[Column] = &[
    col("time", "timestamp|time|timestamp_ns"),
    col("level", "level"),
    col("component", "component"),
    col("message", "message"),
    colf("objects", "object_ids", Fmt::ShortId),
];

pub const ROUTES: &[Column] = &[
    col("network", "network"),
    col("destination", "destination"),
    col("nic", "nic"),
    col("vm", "vm"),
    col("node", "node"),
];
