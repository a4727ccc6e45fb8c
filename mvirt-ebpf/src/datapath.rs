//! The eBPF datapath: loading `bpf/datapath.c` with aya, pinning its maps and links, attaching
//! it to TAPs, and writing the routing/security tables derived from the store.
//!
//! Persistence across daemon restarts: every map is pinned by name under the pin directory
//! (`LIBBPF_PIN_BY_NAME`), and every TAP's TCX link is pinned under `<pin dir>/links/<tap>`.
//! A pinned link keeps the program attached while the daemon is down, so forwarding never stops;
//! at start the new program replaces the old one atomically through the pinned link
//! (`attach_to_link`) and reuses the pinned maps, then [`Datapath::sync`] rewrites the tables.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, SocketFilter, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use mvirt_common::{ErrorKind, HasErrorKind};

/// The datapath object compiled by build.rs.
static DATAPATH_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

pub const ROUTE_NIC: u32 = 1;
pub const ROUTE_TUNNEL: u32 = 2;
pub const ROUTE_UPLINK: u32 = 3;

/// `RouteValue::flags`: the destination is a veth, delivered into its peer with
/// `bpf_redirect_peer` (the daemon's NICs are TAPs and never set it; `mvirt-ebpf-bench` does).
pub const ROUTE_F_PEER: u8 = 1;
/// `RouteValue::flags`: the destination NIC has security groups. Set by [`Datapath::sync`]
/// from [`DesiredState::security`], like `NIC_F_SECURITY` in `NicInfo::flags`.
const ROUTE_F_SECURITY: u8 = 2;
const NIC_F_SECURITY: u32 = 1;

/// Why the datapath dropped a frame, by the index `bpf/datapath.c` counts it under
/// (`DROP_*`): the `reason` label of `mvirt_ebpf_nic_dropped_packets_total` and the keys of
/// `NicStats.{rx,tx}_drops_by_reason`. Security groups are allow rules over a default deny, so
/// a deny is always "no rule matched" (no rule can be named for it).
pub const DROP_REASONS: [&str; 9] = [
    // Headers too short to read.
    "malformed",
    // Source MAC is not the NIC's.
    "spoofed_mac",
    // Source address does not route back to the sending NIC (anti-spoofing).
    "spoofed_source",
    // Neither IPv4, IPv6 nor ARP.
    "not_ip",
    // No route for the destination in the NIC's network.
    "no_route",
    // The destination is the sending NIC itself.
    "hairpin",
    // The sender's groups have egress rules and none matched.
    "no_egress_rule_matched",
    // The receiver's groups: no ingress rule matched (default deny).
    "no_ingress_rule_matched",
    // A helper failed (MAC rewrite, tunnel key).
    "error",
];
/// Room for reasons in `NicDrops` (a pinned map: its layout must not change).
const DROP_SLOTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot prepare the bpf filesystem at {path}")]
    BpfFs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel refused to load the eBPF datapath (are we root, with BPF and BTF support?)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name} is missing or invalid")]
    Program {
        name: &'static str,
        #[source]
        source: Option<ProgramError>,
    },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot attach the datapath to {iface}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin the datapath link of {iface}")]
    Pin {
        iface: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("cannot count possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("updating eBPF map {name} failed")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

impl HasErrorKind for DatapathError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicInfo {
    pub network: u32,
    pub flags: u32,
    pub mac: [u8; 6],
    /// Index of the NIC's counters in `nic_counters` / `nic_drop_counters`; assigned by
    /// [`Datapath::sync`] (whatever the caller sets is replaced). 0: not counted.
    pub slot: u16,
}

/// Counter slots (`MAX_SLOTS` in datapath.c); slot 0 is never assigned.
const MAX_SLOTS: u16 = 8192;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route4Data {
    pub network: u32,
    /// Network byte order (the bytes of the address).
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route6Data {
    pub network: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteValue {
    pub kind: u32,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub flags: u8,
    pub pad: u8,
    /// Remote node IPv4 for tunnel routes (network byte order).
    pub remote: [u8; 4],
    pub key: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgMeta {
    pub rules: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SgKey {
    pub ifindex: u32,
    pub index: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgRule {
    pub family: u8,
    pub proto: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub prefixlen: u8,
    pub pad: u8,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub network: u32,
    pub family: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub pad: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub last_seen: u64,
    pub closing: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_drops: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
}

// SAFETY: plain `repr(C)` data without padding holes the kernel could misread; layouts match
// the structs in bpf/datapath.c.
unsafe impl aya::Pod for NicInfo {}
unsafe impl aya::Pod for Route4Data {}
unsafe impl aya::Pod for Route6Data {}
unsafe impl aya::Pod for RouteValue {}
unsafe impl aya::Pod for SgMeta {}
unsafe impl aya::Pod for SgKey {}
unsafe impl aya::Pod for SgRule {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for NicStats {}
unsafe impl aya::Pod for NicDrops {}

/// Drops of one NIC by reason (indexes of [`DROP_REASONS`]) and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicDrops {
    /// From the VM.
    pub rx: [u64; DROP_SLOTS],
    /// To the VM.
    pub tx: [u64; DROP_SLOTS],
}

impl NicDrops {
    /// `(reason, from the VM, to the VM)` for every known reason.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        DROP_REASONS
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, self.rx[i], self.tx[i]))
    }
}

/// Where an expanded datapath rule comes from: the labels of its flow counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleOrigin {
    pub security_group: String,
    pub rule: String,
}

/// Flows a security-group rule allowed on one NIC (its expanded entries summed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFlows {
    /// 0 ingress, 1 egress.
    pub direction: u32,
    pub origin: RuleOrigin,
    pub flows: u64,
}

/// A security-group rule set for one NIC, per direction, as the datapath evaluates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicRules {
    pub ingress: Vec<SgRule>,
    pub egress: Vec<SgRule>,
    /// The group and rule of each entry of `ingress` / `egress` (same positions; missing
    /// entries count under empty labels).
    pub ingress_origin: Vec<RuleOrigin>,
    pub egress_origin: Vec<RuleOrigin>,
}

/// Everything the tables must contain, computed from the store by the manager.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub nics: StdHashMap<u32, NicInfo>,
    pub routes4: StdHashMap<(u32, Route4Data), RouteValue>,
    pub routes6: StdHashMap<(u32, Route6Data), RouteValue>,
    pub tunnel_keys: StdHashMap<u32, u32>,
    /// NICs with security groups attached (NICs absent here are unfiltered).
    pub security: StdHashMap<u32, NicRules>,
}

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    nics: HashMap<MapData, u32, NicInfo>,
    routes4: LpmTrie<MapData, Route4Data, RouteValue>,
    routes6: LpmTrie<MapData, Route6Data, RouteValue>,
    tunnel_keys: HashMap<MapData, u32, u32>,
    sg_nics: HashMap<MapData, u32, SgMeta>,
    sg_rules: HashMap<MapData, SgKey, SgRule>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    stats: PerCpuArray<MapData, NicStats>,
    drops: PerCpuArray<MapData, NicDrops>,
    /// The counter slot of each NIC (ifindex); recovered from the pinned `nics` at load.
    slots: StdHashMap<u32, u16>,
    rule_flows: PerCpuHashMap<MapData, SgKey, u64>,
    /// What each position of `sg_rules` holds, as far as its counter is concerned: a position
    /// whose rule or origin changes gets a zeroed counter, so no count moves to another rule.
    rule_positions: StdHashMap<SgKey, (RuleOrigin, SgRule)>,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let err = |source| DatapathError::BpfFs {
        path: pin_dir.display().to_string(),
        source,
    };
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) {
        let magic = nix::sys::statfs::statfs(root)
            .map(|s| s.filesystem_type().0)
            .map_err(|e| err(e.into()))?;
        if magic != BPF_FS_MAGIC {
            tracing::info!("mounting bpffs at /sys/fs/bpf");
            nix::mount::mount(
                Some("bpffs"),
                root,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| err(e.into()))?;
        }
    }
    std::fs::create_dir_all(pin_dir.join("links")).map_err(err)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DatapathError::MapType { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

impl Datapath {
    /// Loads the programs into the kernel, reusing pinned maps under `pin_dir`.
    pub fn load(pin_dir: &Path, conntrack_timeout_secs: u64) -> Result<Self, DatapathError> {
        Self::load_with_counters(pin_dir, conntrack_timeout_secs, true)
    }

    /// [`Datapath::load`], with `counters` false: the programs count nothing (no NIC stats,
    /// drop reasons or rule counters; the verifier removes that code). For `mvirt-ebpf-bench`
    /// only, which measures what counting costs: the daemon's `GetNicStats` needs the counters.
    pub fn load_with_counters(
        pin_dir: &Path,
        conntrack_timeout_secs: u64,
        counters: bool,
    ) -> Result<Self, DatapathError> {
        ensure_bpffs(pin_dir)?;
        let timeout_ns = conntrack_timeout_secs.saturating_mul(1_000_000_000);
        let counters = u32::from(counters);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global("ct_timeout_ns", &timeout_ns, true)
            .override_global("counters", &counters, true)
            .load(DATAPATH_OBJ)
            .map_err(DatapathError::Load)?;
        for name in ["tap_ingress", "tunnel_ingress"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program { name, source: None })?
                .try_into()
                .map_err(|e| DatapathError::Program {
                    name,
                    source: Some(e),
                })?;
            prog.load().map_err(|e| DatapathError::Program {
                name,
                source: Some(e),
            })?;
        }
        let filter: &mut SocketFilter = ebpf
            .program_mut("control_filter")
            .ok_or(DatapathError::Program {
                name: "control_filter",
                source: None,
            })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name: "control_filter",
                source: Some(e),
            })?;
        filter.load().map_err(|e| DatapathError::Program {
            name: "control_filter",
            source: Some(e),
        })?;

        let nics = take(&mut ebpf, "nics")?;
        let routes4 = take(&mut ebpf, "routes4")?;
        let routes6 = take(&mut ebpf, "routes6")?;
        let tunnel_keys = take(&mut ebpf, "tunnel_keys")?;
        let sg_nics = take(&mut ebpf, "sg_nics")?;
        let sg_rules = take(&mut ebpf, "sg_rules")?;
        let conntrack = take(&mut ebpf, "conntrack")?;
        let stats = take(&mut ebpf, "nic_counters")?;
        let drops = take(&mut ebpf, "nic_drop_counters")?;
        // Per-CPU hashes by ifindex of earlier versions, replaced by the slot arrays (a program
        // still attached keeps its own reference until it is replaced).
        for old in ["stats", "drops"] {
            let _ = std::fs::remove_file(pin_dir.join(old));
        }
        let rule_flows = take(&mut ebpf, "rule_flows")?;
        tracing::info!(pin_dir = %pin_dir.display(), "eBPF datapath loaded");
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            nics,
            routes4,
            routes6,
            tunnel_keys,
            sg_nics,
            sg_rules,
            conntrack,
            stats,
            drops,
            slots: StdHashMap::new(),
            rule_flows,
            rule_positions: StdHashMap::new(),
        })
        .map(|mut dp: Self| {
            // The slots the NICs had (entries of earlier versions carry 0: they get new ones).
            dp.slots = dp
                .nics
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, info)| info.slot != 0 && info.slot < MAX_SLOTS)
                .map(|(ifindex, info)| (ifindex, info.slot))
                .collect();
            dp
        })
    }

    fn link_pin(&self, iface: &str) -> PathBuf {
        self.pin_dir.join("links").join(iface)
    }

    /// Attaches `program` to the tc ingress of `iface`, replacing an earlier (pinned) attachment
    /// atomically. Returns the interface index.
    fn attach(&mut self, program: &'static str, iface: &str) -> Result<u32, DatapathError> {
        let ifindex =
            crate::tap::ifindex(iface).ok_or_else(|| DatapathError::NoInterface(iface.into()))?;
        let pin = self.link_pin(iface);
        let attach_err = |source| DatapathError::Attach {
            iface: iface.to_string(),
            source,
        };
        let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Pin {
            iface: iface.to_string(),
            source: e,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::Program {
                name: program,
                source: None,
            })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name: program,
                source: Some(e),
            })?;
        // Replace the pinned attachment atomically. A pinned link whose TAP was deleted and
        // re-created is defunct (the kernel refuses the update): attach afresh then.
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(old) => match SchedClassifierLink::try_from(FdLink::from(old)) {
                Ok(link) => prog.attach_to_link(link).ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let link_id = match replaced {
            Some(id) => id,
            None => {
                let _ = std::fs::remove_file(&pin);
                prog.attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err)?
            }
        };
        let link = prog.take_link(link_id).map_err(attach_err)?;
        if !pin.exists() {
            let fd: FdLink = link.try_into().map_err(|e| pin_err(Box::new(e)))?;
            fd.pin(&pin).map_err(|e| pin_err(Box::new(e)))?;
        }
        Ok(ifindex)
    }

    /// Attaches the TAP program to a NIC's TAP.
    pub fn attach_tap(&mut self, tap: &str) -> Result<u32, DatapathError> {
        self.attach("tap_ingress", tap)
    }

    /// Attaches the tunnel program to the VXLAN device.
    pub fn attach_tunnel(&mut self, dev: &str) -> Result<u32, DatapathError> {
        self.attach("tunnel_ingress", dev)
    }

    /// Drops the pinned link of `iface` (the attachment goes with it).
    pub fn detach(&mut self, iface: &str) {
        let _ = std::fs::remove_file(self.link_pin(iface));
    }

    /// The socket filter for the responder's packet sockets.
    pub fn attach_control_filter(
        &self,
        socket: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), DatapathError> {
        let prog: &SocketFilter = self
            .ebpf
            .program("control_filter")
            .ok_or(DatapathError::Program {
                name: "control_filter",
                source: None,
            })?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name: "control_filter",
                source: Some(e),
            })?;
        prog.attach(socket).map_err(|source| DatapathError::Attach {
            iface: "packet socket".into(),
            source,
        })
    }

    /// Makes the tables equal to `desired`: writes every entry, then removes stale ones.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<(), DatapathError> {
        // Security first (each NIC's rules before its rule count), then NICs and routes, whose
        // flags tell the program which NICs have rules: a NIC is only ever treated as filtered
        // once its rules are in place, and unfiltered traffic costs no security lookup.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        for (ifindex, rules) in &desired.security {
            for (dir, list, origins) in [
                (0u32, &rules.ingress, &rules.ingress_origin),
                (1u32, &rules.egress, &rules.egress_origin),
            ] {
                for (i, rule) in list.iter().enumerate() {
                    let key = SgKey {
                        ifindex: *ifindex,
                        index: (dir << 16) | i as u32,
                    };
                    self.sg_rules
                        .insert(key, rule, 0)
                        .map_err(map_err("sg_rules"))?;
                    // Another rule at this position: its counter starts at zero (after the rule
                    // was written, so the old rule's matches cannot land in the new count).
                    let held = (origins.get(i).cloned().unwrap_or_default(), *rule);
                    if self.rule_positions.get(&key) != Some(&held) {
                        let zero = PerCpuValues::try_from(vec![0u64; cpus])
                            .map_err(DatapathError::Cpus)?;
                        self.rule_flows
                            .insert(key, zero, 0)
                            .map_err(map_err("rule_flows"))?;
                        self.rule_positions.insert(key, held);
                    }
                }
            }
            let meta = SgMeta {
                rules: [rules.ingress.len() as u32, rules.egress.len() as u32],
            };
            self.sg_nics
                .insert(ifindex, meta, 0)
                .map_err(map_err("sg_nics"))?;
        }
        for (ifindex, info) in &desired.nics {
            let mut info = *info;
            info.flags &= !NIC_F_SECURITY;
            if desired.security.contains_key(ifindex) {
                info.flags |= NIC_F_SECURITY;
            }
            info.slot = self.slot(*ifindex, cpus)?;
            self.nics
                .insert(ifindex, info, 0)
                .map_err(map_err("nics"))?;
        }
        let slots = &self.slots;
        let route_flags = |value: &RouteValue| {
            let mut value = *value;
            value.flags &= !ROUTE_F_SECURITY;
            if value.kind == ROUTE_NIC {
                if desired.security.contains_key(&value.ifindex) {
                    value.flags |= ROUTE_F_SECURITY;
                }
                // The receiver's counter slot (0 for a NIC that is not in `desired.nics`).
                value.key = slots.get(&value.ifindex).copied().unwrap_or(0).into();
            }
            value
        };
        for ((plen, data), value) in &desired.routes4 {
            self.routes4
                .insert(&Key::new(32 + plen, *data), route_flags(value), 0)
                .map_err(map_err("routes4"))?;
        }
        for ((plen, data), value) in &desired.routes6 {
            self.routes6
                .insert(&Key::new(32 + plen, *data), route_flags(value), 0)
                .map_err(map_err("routes6"))?;
        }
        for (key, network) in &desired.tunnel_keys {
            self.tunnel_keys
                .insert(key, network, 0)
                .map_err(map_err("tunnel_keys"))?;
        }

        // Stale entries.
        let stale: Vec<u32> = self
            .sg_nics
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.security.contains_key(k))
            .collect();
        for k in stale {
            let _ = self.sg_nics.remove(&k);
        }
        let stale: Vec<SgKey> = self
            .sg_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let dir = k.index >> 16;
                let i = (k.index & 0xffff) as usize;
                match desired.security.get(&k.ifindex) {
                    Some(r) => {
                        i >= if dir == 0 {
                            r.ingress.len()
                        } else {
                            r.egress.len()
                        }
                    }
                    None => true,
                }
            })
            .collect();
        for k in stale {
            let _ = self.sg_rules.remove(&k);
        }
        let stale: Vec<SgKey> = self
            .rule_positions
            .keys()
            .filter(|k| self.sg_rules.get(k, 0).is_err())
            .copied()
            .collect();
        for k in stale {
            let _ = self.rule_flows.remove(&k);
            self.rule_positions.remove(&k);
        }
        let stale: Vec<Key<Route4Data>> = self
            .routes4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !desired
                    .routes4
                    .contains_key(&(k.prefix_len() - 32, k.data()))
            })
            .collect();
        for k in stale {
            let _ = self.routes4.remove(&k);
        }
        let stale: Vec<Key<Route6Data>> = self
            .routes6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !desired
                    .routes6
                    .contains_key(&(k.prefix_len() - 32, k.data()))
            })
            .collect();
        for k in stale {
            let _ = self.routes6.remove(&k);
        }
        let stale: Vec<u32> = self
            .tunnel_keys
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.tunnel_keys.contains_key(k))
            .collect();
        for k in stale {
            let _ = self.tunnel_keys.remove(&k);
        }
        let stale: Vec<u32> = self
            .nics
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.nics.contains_key(k))
            .collect();
        for k in stale {
            let _ = self.nics.remove(&k);
            self.slots.remove(&k);
        }
        Ok(())
    }

    /// The counter slot of NIC `ifindex`: its own, or the lowest free one, zeroed before the
    /// NIC's entries point at it (a freed slot carries the counts of the NIC that had it).
    /// Without a free slot the NIC is not counted (slot 0), with an error in the log.
    fn slot(&mut self, ifindex: u32, cpus: usize) -> Result<u16, DatapathError> {
        if let Some(slot) = self.slots.get(&ifindex) {
            return Ok(*slot);
        }
        let used: HashSet<u16> = self.slots.values().copied().collect();
        let Some(slot) = (1..MAX_SLOTS).find(|s| !used.contains(s)) else {
            tracing::error!(
                ifindex,
                "no free counter slot: the NIC's traffic is not counted"
            );
            return Ok(0);
        };
        let zero =
            PerCpuValues::try_from(vec![NicStats::default(); cpus]).map_err(DatapathError::Cpus)?;
        self.stats
            .set(u32::from(slot), zero, 0)
            .map_err(map_err("nic_counters"))?;
        let zero =
            PerCpuValues::try_from(vec![NicDrops::default(); cpus]).map_err(DatapathError::Cpus)?;
        self.drops
            .set(u32::from(slot), zero, 0)
            .map_err(map_err("nic_drop_counters"))?;
        self.slots.insert(ifindex, slot);
        Ok(slot)
    }

    /// Forgets tracked connections for which `still_allowed` says no (after rule changes, so
    /// that removing a rule also cuts flows it had let through).
    pub fn prune_conntrack(&mut self, mut still_allowed: impl FnMut(&CtKey) -> bool) {
        let doomed: Vec<CtKey> = self
            .conntrack
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !still_allowed(k))
            .collect();
        for k in doomed {
            let _ = self.conntrack.remove(&k);
        }
    }

    /// The tracked flows of `network` with `addrs` (16 bytes; IPv4 in the first 4) on either
    /// side, for handing them to another node (live migration).
    pub fn conntrack_of(&self, network: u32, addrs: &[[u8; 16]]) -> Vec<(CtKey, CtValue)> {
        self.conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| {
                k.network == network && (addrs.contains(&k.src) || addrs.contains(&k.dst))
            })
            .collect()
    }

    /// Inserts tracked flows with last-seen = now (the datapath's clock, CLOCK_MONOTONIC).
    pub fn conntrack_insert(&mut self, flows: &[(CtKey, bool)]) -> Result<(), DatapathError> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the one we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        for (key, closing) in flows {
            let value = CtValue {
                last_seen: now,
                closing: u32::from(*closing),
                pad: 0,
            };
            self.conntrack
                .insert(key, value, 0)
                .map_err(map_err("conntrack"))?;
        }
        Ok(())
    }

    /// Entries in the connection tracking table (for metrics).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().filter(Result::is_ok).count()
    }

    /// Datapath counters of a NIC, summed over CPUs.
    pub fn stats(&self, ifindex: u32) -> NicStats {
        let mut total = NicStats::default();
        let Some(slot) = self.slots.get(&ifindex) else {
            return total;
        };
        if let Ok(values) = self.stats.get(&u32::from(*slot), 0) {
            for v in values.iter() {
                total.rx_packets += v.rx_packets;
                total.rx_bytes += v.rx_bytes;
                total.rx_drops += v.rx_drops;
                total.tx_packets += v.tx_packets;
                total.tx_bytes += v.tx_bytes;
                total.tx_drops += v.tx_drops;
            }
        }
        total
    }

    /// Drops of a NIC by reason, summed over CPUs.
    pub fn drops(&self, ifindex: u32) -> NicDrops {
        let mut total = NicDrops::default();
        let Some(slot) = self.slots.get(&ifindex) else {
            return total;
        };
        if let Ok(values) = self.drops.get(&u32::from(*slot), 0) {
            for v in values.iter() {
                for i in 0..DROP_SLOTS {
                    total.rx[i] += v.rx[i];
                    total.tx[i] += v.tx[i];
                }
            }
        }
        total
    }

    /// Flows each security-group rule of NIC `ifindex` allowed (every rule in its tables, also
    /// those at zero), summed over CPUs and over the entries a rule expanded to, ordered by
    /// direction, group and rule.
    pub fn rule_flows(&self, ifindex: u32) -> Vec<RuleFlows> {
        let mut sums: std::collections::BTreeMap<(u32, RuleOrigin), u64> = Default::default();
        for (key, (origin, _)) in &self.rule_positions {
            if key.ifindex != ifindex {
                continue;
            }
            let flows: u64 = self
                .rule_flows
                .get(key, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            *sums.entry((key.index >> 16, origin.clone())).or_default() += flows;
        }
        sums.into_iter()
            .map(|((direction, origin), flows)| RuleFlows {
                direction,
                origin,
                flows,
            })
            .collect()
    }
}

/// Keys and lists that must not grow without bound are checked by the manager; this set is the
/// interfaces the datapath is attached to, for cleanup of links whose TAP is gone.
pub fn pinned_links(pin_dir: &Path) -> HashSet<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
