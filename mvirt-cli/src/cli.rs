//! The command tree: `mvirt <resource> <verb>`, mirroring the REST API one to one.

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

const AFTER_HELP: &str = "\
Examples:
  mvirt login https://10.0.0.1:8080 --token-file /var/lib/mvirt/api/admin.token
  mvirt template import debian-12 --source https://example.org/debian-12.qcow2 --format qcow2
  mvirt network create lan --ipv4 10.0.0.0/24
  mvirt vm create web-1 --cpus 2 --memory 2G --template debian-12 --disk-size 20G \\
      --network lan --ssh-key ~/.ssh/id_ed25519.pub
  mvirt vm list -o json
  mvirt vm console web-1          (leave with Ctrl+a t)
  mvirt events --follow
  mvirt tui

Configuration: ~/.config/mvirt/config.toml holds named remotes (url, token, project, the
cluster CA pinned by `mvirt login`); MVIRT_REMOTE, MVIRT_URL, MVIRT_TOKEN, MVIRT_PROJECT,
MVIRT_CA_FILE and the flags below override it.

Exit codes: 0 ok, 1 API error, 2 usage or configuration error, 3 not found,
4 conflict (already exists, in use, precondition failed), 5 API unreachable or auth rejected.";

#[derive(Debug, Parser)]
#[command(
    name = "mvirt",
    version,
    about = "Manage mvirt VMs, networks, storage and the cluster through the mvirt API",
    long_about = "mvirt is the command-line client of mvirt, a distributed VM manager. It talks to the \
mvirt-api REST API: every resource is `mvirt <resource> <verb>`, output is a table by default or \
JSON/YAML with -o, and `mvirt tui` opens a full-screen terminal UI.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Named remote from the config file (default: the config's `current`).
    #[arg(long, global = true, env = "MVIRT_REMOTE")]
    pub remote: Option<String>,
    /// API URL, e.g. http://10.0.0.1:8080 (overrides the remote).
    #[arg(long, global = true, env = "MVIRT_URL")]
    pub url: Option<String>,
    /// API bearer token (overrides the remote).
    #[arg(long, global = true, env = "MVIRT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Project to work in (default: $MVIRT_PROJECT, else the remote's project, else `default`).
    /// `token create` takes it several times: the projects the new token sees.
    #[arg(short, long, global = true, action = clap::ArgAction::Append)]
    pub project: Vec<String>,
    /// Output format of reads.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Only change or delete the object if it is still at this revision (its ETag); a newer
    /// revision fails with exit code 4.
    #[arg(long, global = true, value_name = "REVISION")]
    pub if_match: Option<u64>,
    /// Config file (default: ~/.config/mvirt/config.toml).
    #[arg(long, global = true, env = "MVIRT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Verify an https:// API against this CA certificate (PEM) instead of the CA pinned for
    /// the remote by `mvirt login`.
    #[arg(long, global = true, env = "MVIRT_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Print the request id of every API call on stderr (`request-id: <id>`): `mvirt logs
    /// --trace <id>` then lists what that call caused in every process.
    #[arg(long, global = true, env = "MVIRT_SHOW_TRACE")]
    pub show_trace: bool,
}

impl GlobalArgs {
    /// The project to work in: the last `--project`, else `$MVIRT_PROJECT` (read here rather
    /// than by clap, so that `token create` sees only the projects given on the command line).
    pub fn project(&self) -> Option<String> {
        self.project.last().cloned().or_else(|| {
            std::env::var("MVIRT_PROJECT")
                .ok()
                .filter(|p| !p.is_empty())
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store an API URL, token and the cluster's CA as a named remote and make it current.
    ///
    /// For an https:// URL the CLI fetches the CA certificate the API presents, shows its
    /// fingerprint (mvirt-api logs the same at start-up) and pins it once confirmed: at the
    /// prompt, with --accept-fingerprint, or with --yes. Every later command verifies the API
    /// against the pinned CA; a server presenting another CA is refused with both fingerprints.
    #[command(
        after_help = "Examples:\n  mvirt login https://10.0.0.1:8080 --token-file admin.token\n  \
mvirt login https://10.0.0.1:8080 --token-file admin.token --accept-fingerprint sha256:3f1c...\n  \
echo $TOKEN | mvirt login --name lab https://lab.example:8080 --project web --yes\n  \
mvirt login https://10.0.0.1:8080 --ca-file /var/lib/mvirt/api/tls/ca.pem --token-file admin.token"
    )]
    Login(LoginArgs),
    /// Named remotes in the config file.
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// Projects group resources; `default` always exists.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Hypervisor nodes (registered by their node agents).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual L3 networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Network interfaces on a network.
    #[command(subcommand)]
    Nic(NicCmd),
    /// Security groups and their rules.
    #[command(subcommand, name = "sg", alias = "security-group")]
    Sg(SgCmd),
    /// Routes between nodes (derived by the API from NIC placement; read-only).
    #[command(subcommand)]
    Route(RouteCmd),
    /// Disk volumes, their snapshots and resizing.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Backups of volumes and VMs (stream files on the volume's node), and restores.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Replication schedules: a VM's volumes sent to other nodes every interval.
    #[command(subcommand)]
    Replication(crate::commands::replication::ReplicationCmd),
    /// Disk image templates, imported from a URL on every node.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Pods: OCI containers in a microVM (run, create -f, logs, exec).
    #[command(subcommand)]
    Pod(crate::commands::pod::PodCmd),
    /// Attach to a VM's serial console (same as `mvirt vm console`; leave with Ctrl+a t).
    Console(ConsoleArgs),
    /// Query the audit log.
    Logs(LogsArgs),
    /// Show the API's event stream (every change, with its revision).
    Events(EventsArgs),
    /// The control-plane cluster: members, join tokens.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Show the calling token: its name, role and projects (and a node token's node).
    Whoami,
    /// Show the client version and the API's health.
    Version,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  mvirt completion bash > /etc/bash_completion.d/mvirt\n  \
mvirt completion zsh > \"${fpath[1]}/_mvirt\"\n  mvirt completion fish > ~/.config/fish/completions/mvirt.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Full-screen terminal UI.
    Tui,
    /// Live usage of the nodes and their VMs and pods (CPU, memory, disk and network rates),
    /// sorted by CPU.
    #[command(
        after_help = "Examples:\n  mvirt top\n  mvirt top --once\n  mvirt top --once -o json --interval 1"
    )]
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one table (two samples one interval apart: rates need two) and exit.
    #[arg(long)]
    pub once: bool,
    /// Seconds between samples.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub interval: f64,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// API URL, e.g. https://10.0.0.1:8080 (or the global --url / MVIRT_URL; default: the
    /// remote's URL).
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Name of the remote to create or update.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Trust the API's CA only if its fingerprint is this (`sha256:<hex>`); also replaces a CA
    /// pinned before, after the cluster was re-created.
    #[arg(long, value_name = "FINGERPRINT")]
    pub accept_fingerprint: Option<String>,
    /// Trust the CA the API presents without asking (trust on first use). Never replaces a
    /// pinned CA that differs.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// API token; read from --token-file or stdin when not given (global --token works too).
    #[arg(long = "token-file")]
    pub token_file: Option<std::path::PathBuf>,
    /// Do not check the token against the API before saving.
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCmd {
    /// List remotes (* marks the current one).
    List,
    /// Make a remote the current one.
    Use { name: String },
    /// Remove a remote.
    Remove { name: String },
}

/// Common list flags.
#[derive(Debug, Args, Clone, Default)]
pub struct ListArgs {
    /// List across all projects.
    #[arg(short = 'A', long)]
    pub all_projects: bool,
    /// Only objects with these labels (`k=v,k2=v2`).
    #[arg(short = 'l', long)]
    pub label: Option<String>,
    /// Only objects placed on this node (id or name; VMs and volumes).
    #[arg(long)]
    pub node: Option<String>,
    /// Only objects in this phase (e.g. running, ready, pending; nodes: online/offline).
    #[arg(long)]
    pub phase: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// List projects.
    List,
    /// Show one project.
    Show { name: String },
    /// Create a project.
    #[command(after_help = "Example:\n  mvirt project create web --description \"web tier\"")]
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Labels `k=v` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Delete a project (refused while it holds resources).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes with capacity and allocation.
    List(ListArgs),
    /// Show one node (id or name).
    Show { node: String },
    /// The node's host now: CPU model, cores, NUMA nodes, memory, hugepages, and its storage
    /// pool (size, allocated, free, provisioned bytes, compression ratio), read live.
    Host { node: String },
    /// Stop placing new VMs on a node.
    Cordon { node: String },
    /// Allow placing VMs on a node again.
    Uncordon { node: String },
    /// Cordon a node and move everything off it: running VMs live, then stopped VMs cold (their
    /// volumes copied), one at a time, then its pods (re-created on another node). What cannot
    /// move is listed as failed. With --wait: follow it, exit 1 if it failed.
    Drain {
        node: String,
        /// Print progress until the drain ends; exit non-zero if it ended failed.
        #[arg(long)]
        wait: bool,
    },
    /// End a node's drain (no new migrations start; one in flight finishes) and uncordon it.
    Undrain { node: String },
    /// Set labels on a node (`k=v`, repeatable; replaces the label set).
    #[command(after_help = "Example:\n  mvirt node label hv1 --label zone=a --label ssd=true")]
    Label {
        node: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Forget a node.
    Delete { node: String },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// List networks.
    List(ListArgs),
    /// Show one network.
    Show { network: String },
    /// Create a network.
    #[command(
        after_help = "Examples:\n  mvirt network create lan --ipv4 10.0.0.0/24 --dns 1.1.1.1\n  \
mvirt network create pub --ipv4 192.168.50.0/24 --ipv6 fd00:50::/64 --public"
    )]
    Create {
        name: String,
        /// IPv4 prefix, e.g. 10.0.0.0/24.
        #[arg(long)]
        ipv4: Option<String>,
        /// IPv6 prefix, e.g. fd00::/64.
        #[arg(long)]
        ipv6: Option<String>,
        /// DNS server handed out by DHCP (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// NTP server handed out by DHCP (repeatable).
        #[arg(long)]
        ntp: Vec<String>,
        /// Reach the outside through NAT.
        #[arg(long)]
        public: bool,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Delete a network (refused while it has NICs unless --force).
    Delete {
        network: String,
        /// Also delete the network's NICs.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NicCmd {
    /// List NICs.
    List(ListArgs),
    /// Show one NIC.
    Show { nic: String },
    /// Create a NIC (address and MAC are allocated unless given).
    #[command(
        after_help = "Example:\n  mvirt nic create web-eth0 --network lan --ipv4 10.0.0.10 --sg web"
    )]
    Create {
        name: String,
        /// Network id or name.
        #[arg(long)]
        network: String,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        ipv4: Option<String>,
        #[arg(long)]
        ipv6: Option<String>,
        /// Security group id or name (repeatable).
        #[arg(long = "sg")]
        security_groups: Vec<String>,
        /// A prefix routed to this NIC, e.g. 10.9.0.0/24 behind a router VM (repeatable).
        #[arg(long = "routed-prefix")]
        routed_prefixes: Vec<String>,
    },
    /// Delete a NIC.
    Delete { nic: String },
}

#[derive(Debug, Subcommand)]
pub enum SgCmd {
    /// List security groups.
    List(ListArgs),
    /// Show one security group with its rules.
    Show { sg: String },
    /// Create an (empty) security group.
    Create { name: String },
    /// Delete a security group (refused while a NIC uses it).
    Delete { sg: String },
    /// Rules of a security group.
    #[command(subcommand)]
    Rule(SgRuleCmd),
}

#[derive(Debug, Subcommand)]
pub enum SgRuleCmd {
    /// List a group's rules.
    List { sg: String },
    /// Add an allow rule.
    #[command(
        after_help = "Examples:\n  mvirt sg rule add web --direction ingress --protocol tcp --port 443 --cidr 0.0.0.0/0\n  \
mvirt sg rule add web --direction ingress --protocol tcp --port 8000-8100 --remote-group lb"
    )]
    Add {
        sg: String,
        /// ingress or egress.
        #[arg(long, default_value = "ingress")]
        direction: String,
        /// any, tcp, udp, icmp, icmpv6.
        #[arg(long, default_value = "any")]
        protocol: String,
        /// A port or a range `min-max`.
        #[arg(long)]
        port: Option<String>,
        #[arg(long)]
        cidr: Option<String>,
        /// Security group id or name the peer must belong to.
        #[arg(long)]
        remote_group: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a rule by id.
    Delete { sg: String, rule_id: String },
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// List the routes the API derives: each placed NIC address and the node that hosts it.
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// List volumes.
    List(ListArgs),
    /// Show one volume.
    Show { volume: String },
    /// Create a volume, empty or cloned from a template.
    #[command(after_help = "Examples:\n  mvirt volume create data --size 50G\n  \
mvirt volume create root2 --size 20G --template debian-12 --node hv1")]
    Create {
        name: String,
        /// Size, e.g. 512M, 20G.
        #[arg(long)]
        size: String,
        /// Template id or name to clone.
        #[arg(long)]
        template: Option<String>,
        /// Pin to a node (id).
        #[arg(long)]
        node: Option<String>,
        /// Retention of the volume's backups: keep the newest N ready backups (1-1000) and
        /// the backups they are increments on.
        #[arg(long, value_name = "N")]
        keep_backups: Option<u32>,
    },
    /// Grow a volume.
    Resize {
        volume: String,
        /// New size, e.g. 40G (grow only).
        #[arg(long)]
        size: String,
    },
    /// Delete a volume (refused while attached).
    Delete { volume: String },
    /// Snapshots of a volume.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// List backups (with size, SHA-256 and phase: pending, running, ready, failed).
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Only the backups of this volume (id or name).
        #[arg(long)]
        volume: Option<String>,
    },
    /// Show one backup.
    Show { backup: String },
    /// Back up a volume, or every volume of a VM.
    #[command(after_help = "Examples:\n  mvirt backup create --volume data\n  \
mvirt backup create --vm web --name nightly\n  mvirt backup create --volume data --incremental")]
    Create {
        /// The volume to back up (id or name).
        #[arg(long, conflicts_with = "vm", required_unless_present = "vm")]
        volume: Option<String>,
        /// Back up every volume of this VM (id or name).
        #[arg(long)]
        vm: Option<String>,
        /// Backup name (a VM's backups get <name>-<n>); default <volume>-<8 hex digits>.
        #[arg(long)]
        name: Option<String>,
        /// An increment on the volume's newest backup.
        #[arg(long)]
        incremental: bool,
    },
    /// Restore a backup into a new volume (on the backup's node).
    #[command(after_help = "Example:\n  mvirt backup restore nightly --name data-restored")]
    Restore {
        backup: String,
        /// Name of the new volume.
        #[arg(long)]
        name: String,
        /// Size of the new volume, e.g. 40G (default and minimum: the backed-up volume's size).
        #[arg(long)]
        size: Option<String>,
    },
    /// Set or clear the retention of a volume's backups: after each new ready backup the
    /// newest N ready backups (and the bases they are increments on) are kept, older ones deleted.
    #[command(
        after_help = "Examples:\n  mvirt backup retention data --keep-last 7\n  \
mvirt backup retention data --off"
    )]
    Retention {
        /// The volume (id or name).
        volume: String,
        /// Keep the newest N ready backups (1-1000).
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "off",
            required_unless_present = "off"
        )]
        keep_last: Option<u32>,
        /// Keep every backup (remove the retention rule).
        #[arg(long)]
        off: bool,
    },
    /// Delete a backup (refused while increments depend on it, unless --force deletes them
    /// too).
    Delete {
        backup: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List a volume's snapshots.
    List { volume: String },
    /// Take a snapshot.
    Create { volume: String, name: String },
    /// Delete a snapshot (by id or name).
    Delete { volume: String, snapshot: String },
    /// Roll the volume back to a snapshot (refused while a VM using it runs; newer snapshots
    /// are removed). The volume's node carries it out before the VM starts again.
    Rollback { volume: String, snapshot: String },
    /// Copy a snapshot into a new template (it lives on the volume's node).
    Promote {
        volume: String,
        snapshot: String,
        /// Name of the new template.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List templates with import state.
    List(ListArgs),
    /// Show one template.
    Show { template: String },
    /// Cancel a template's import on every node (copies already imported stay).
    Cancel { template: String },
    /// Import a disk image as a template and follow the import to its end.
    #[command(
        visible_alias = "create",
        after_help = "Examples:\n  mvirt template import debian-12 --source https://cloud.debian.org/…/debian-12-generic-amd64.qcow2 --format qcow2\n  \
mvirt template import tiny --source file:///srv/images/tiny.raw --kernel file:///srv/vmlinuz --no-wait"
    )]
    Import {
        name: String,
        /// Source URL (file://, http://, https://).
        #[arg(long)]
        source: String,
        /// raw or qcow2.
        #[arg(long, default_value = "raw")]
        format: String,
        /// Expected sha256 of the image.
        #[arg(long)]
        sha256: Option<String>,
        /// Kernel URL for direct boot.
        #[arg(long)]
        kernel: Option<String>,
        /// Initramfs URL for direct boot.
        #[arg(long)]
        initramfs: Option<String>,
        /// Expected sha256 of the kernel (needs --kernel); every node verifies its download.
        #[arg(long)]
        kernel_sha256: Option<String>,
        /// Expected sha256 of the initramfs (needs --initramfs); every node verifies its download.
        #[arg(long)]
        initramfs_sha256: Option<String>,
        /// Default kernel command line.
        #[arg(long)]
        cmdline: Option<String>,
        /// Return once the import is requested instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a template (refused while volumes are cloned from it).
    Delete { template: String },
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// List VMs.
    List(ListArgs),
    /// Show one VM.
    Show { vm: String },
    /// Create (and by default start) a VM.
    #[command(
        after_help = "Examples:\n  mvirt vm create web-1 --cpus 2 --memory 2G --template debian-12 --disk-size 20G --network lan\n  \
mvirt vm create db --cpus 4 --memory 8G --template debian-12 --disk-size 100G --network lan \\\n      \
--ssh-key ~/.ssh/id_ed25519.pub --user-data cloud-init.yaml --node-selector zone=a --stopped"
    )]
    Create(Box<VmCreateArgs>),
    /// Start a VM.
    Start { vm: String },
    /// Stop a VM gracefully (ACPI power button).
    Stop { vm: String },
    /// Stop a VM at once (power off).
    Kill { vm: String },
    /// Restart a VM.
    Restart { vm: String },
    /// Move a VM to another node: a running VM while it runs (live migration, memory and
    /// disks), a stopped VM cold (its volumes copied; it stays stopped there).
    #[command(after_help = "Examples:\n  mvirt vm migrate web-1\n  \
mvirt vm migrate web-1 --node node-b --wait")]
    Migrate(VmMigrateArgs),
    /// Delete a VM with its owned root volume and NICs.
    Delete { vm: String },
    /// Attach to the serial console (leave with Ctrl+a t).
    Console(ConsoleArgs),
    /// Change a VM's vCPUs and/or memory. A running VM's node hot-plugs what it can; the rest
    /// shows as the condition `restart_required` until the next boot.
    #[command(after_help = "Examples:\n  mvirt vm resize web-1 --vcpus 4\n  \
mvirt vm resize web-1 --vcpus 2 --memory 2GiB")]
    Resize(VmResizeArgs),
    /// Attach existing volumes and/or NICs to a VM.
    #[command(after_help = "Examples:\n  mvirt vm attach web-1 --volume data\n  \
mvirt vm attach web-1 --nic web-eth1")]
    Attach(VmDeviceArgs),
    /// Detach volumes and/or NICs from a VM (a VM's own root volume and NICs stay).
    #[command(after_help = "Examples:\n  mvirt vm detach web-1 --volume data\n  \
mvirt vm detach web-1 --nic web-eth1")]
    Detach(VmDeviceArgs),
}

#[derive(Debug, Args, Clone)]
pub struct VmMigrateArgs {
    /// VM id or name.
    pub vm: String,
    /// The target node (id or name); the scheduler picks one when absent.
    #[arg(long)]
    pub node: Option<String>,
    /// Wait until the migration completed (or failed: then the exit status is non-zero).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args, Clone)]
#[command(group = clap::ArgGroup::new("size").required(true).multiple(true).args(["vcpus", "memory"]))]
pub struct VmResizeArgs {
    /// VM id or name.
    pub vm: String,
    /// New number of vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// New memory, e.g. 2GiB, 512M.
    #[arg(long)]
    pub memory: Option<String>,
}

#[derive(Debug, Args, Clone)]
#[command(group = clap::ArgGroup::new("device").required(true).multiple(true).args(["volumes", "nics"]))]
pub struct VmDeviceArgs {
    /// VM id or name.
    pub vm: String,
    /// Volume id or name (repeatable).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// NIC id or name (repeatable).
    #[arg(long = "nic")]
    pub nics: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct VmCreateArgs {
    pub name: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory, e.g. 512M, 2G.
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Template (id or name) to clone the root disk from.
    #[arg(long)]
    pub template: Option<String>,
    /// Root disk size (with --template), e.g. 20G.
    #[arg(long, default_value = "10G")]
    pub disk_size: String,
    /// Network (id or name) to give the VM a NIC on (repeatable).
    #[arg(long)]
    pub network: Vec<String>,
    /// Security group for the VM's NICs (repeatable).
    #[arg(long = "sg")]
    pub security_groups: Vec<String>,
    /// Existing volume to attach (repeatable).
    #[arg(long)]
    pub volume: Vec<String>,
    /// SSH public key, inline or a path to a .pub file (repeatable).
    #[arg(long)]
    pub ssh_key: Vec<String>,
    /// cloud-init user-data file.
    #[arg(long)]
    pub user_data: Option<std::path::PathBuf>,
    /// Node id, node name or labels `k=v,k2=v2`.
    #[arg(long)]
    pub node_selector: Option<String>,
    /// Guest hostname (default: the VM name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Create without starting.
    #[arg(long)]
    pub stopped: bool,
    /// Back the guest's memory with the host's hugepages (fixed after create).
    #[arg(long)]
    pub hugepages: bool,
    /// Expose the CPU's virtualization extensions to the guest (fixed after create).
    #[arg(long)]
    pub nested_virtualization: bool,
    #[arg(long = "label")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ConsoleArgs {
    /// VM id or name.
    pub vm: String,
}

#[derive(Debug, Args, Clone, Default)]
#[command(
    after_help = "Examples:\n  mvirt logs --object <vm-id> --level audit,error\n  mvirt logs --component mvirt-api --since 1h --limit 20\n  mvirt logs --follow"
)]
pub struct LogsArgs {
    /// Only entries about this object id.
    #[arg(long)]
    pub object: Option<String>,
    #[arg(long)]
    pub component: Option<String>,
    /// audit, info, warn, error, debug (comma-separated for several).
    #[arg(long)]
    pub level: Option<String>,
    /// Entries at or after this time: RFC 3339, or an age like 10m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Entries before this time: RFC 3339, or an age.
    #[arg(long)]
    pub until: Option<String>,
    /// Substring to search for.
    #[arg(long)]
    pub text: Option<String>,
    /// Only entries written for this request id (printed by `--show-trace`; an object's
    /// `trace_id` field names the last request that changed it).
    #[arg(long, value_name = "REQUEST_ID")]
    pub trace: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
    /// Keep the stream open and print new entries.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args, Clone, Default)]
#[command(
    after_help = "Examples:\n  mvirt events                      (the events so far, then exit)\n  mvirt events --follow --type vm.created\n  mvirt events --follow --from-revision 120 -o json"
)]
pub struct EventsArgs {
    /// Keep the stream open.
    #[arg(short, long)]
    pub follow: bool,
    /// Only events of this type (e.g. vm.created).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Start after this revision.
    #[arg(long)]
    pub from_revision: Option<u64>,
    /// Events of all projects.
    #[arg(short = 'A', long)]
    pub all_projects: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// List control-plane members and the leader.
    Members,
    /// Create a single-use join token for a new member.
    JoinToken {
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Remove a member.
    Remove { member_id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// List API tokens.
    List,
    /// Create a token (the secret is shown once).
    #[command(after_help = "Examples:\n  mvirt token create ci --role admin\n  \
mvirt token create dash --role viewer --project a --project b\n  mvirt token create agents --role node")]
    Create {
        name: String,
        /// admin (everything), operator (changes project resources), viewer (reads only) or
        /// node (NodeService only, bound to the first node it registers). Operator and viewer
        /// tokens see only the projects given with `--project` (repeat; none = every project).
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Delete a token.
    Delete { id: String },
}
