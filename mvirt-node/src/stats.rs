//! Usage of the host and of the VMs and pods on it, sampled live (NodeAgent `GetStats`, and the
//! agent's per-VM metrics): the hypervisor process of each guest from `/proc/<pid>/stat`
//! (CPU time), `status` (resident memory, threads) and `io` (disk and syscall I/O), its NICs
//! from mvirt-ebpf's datapath counters, the host from `/proc/stat`, `/proc/meminfo` and
//! `/proc/loadavg`. Nothing is stored: every call reads anew (stats are not state).

use std::collections::HashSet;

use mvirt_api::proto::{GetStatsRequest, GuestUsage, HostUsage, NicUsage, NodeStats};
use tonic::Status;

use crate::daemons::Daemons;

/// What `/proc` says about one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub threads: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub rchar: u64,
    pub wchar: u64,
}

/// Reads `/proc/<pid>/{stat,status,io}`.
pub fn proc_usage(pid: u32) -> std::io::Result<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    parse_proc(
        &stat,
        &status,
        &io,
        mvirt_common::metrics::clock_ticks_per_second(),
    )
    .ok_or_else(|| {
        std::io::Error::other(format!(
            "unexpected format of /proc/{pid}/stat, status or io"
        ))
    })
}

/// The parsing of [`proc_usage`]: `ticks` is `USER_HZ`.
pub fn parse_proc(stat: &str, status: &str, io: &str, ticks: f64) -> Option<ProcUsage> {
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 → index 0; utime 14 → 11; stime 15 → 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(ProcUsage {
        cpu_seconds: (utime + stime) as f64 / ticks,
        rss_bytes: field(status, "VmRSS:").unwrap_or(0) * 1024,
        threads: field(status, "Threads:").unwrap_or(0) as u32,
        read_bytes: field(io, "read_bytes:")?,
        write_bytes: field(io, "write_bytes:")?,
        rchar: field(io, "rchar:")?,
        wchar: field(io, "wchar:")?,
    })
}

/// The host's CPU time, memory and load.
pub fn host_usage() -> HostUsage {
    let ticks = mvirt_common::metrics::clock_ticks_per_second();
    let mut host = HostUsage {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        ..Default::default()
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is inside user).
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            let idle = at(3) + at(4);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            host.cpu_busy_seconds = busy as f64 / ticks;
            host.cpu_idle_seconds = idle as f64 / ticks;
        }
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        host.memory_total_bytes = kib("MemTotal:");
        host.memory_available_bytes = kib("MemAvailable:");
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        host.load1 = load
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
    }
    host
}

async fn nic_usage(daemons: &Daemons, nic_ids: Vec<String>) -> Vec<NicUsage> {
    let mut out = Vec::new();
    for nic_id in nic_ids {
        let mut net = daemons.net.clone();
        // A NIC the datapath does not know (yet) has no counters: left out.
        if let Ok(s) = net
            .get_nic_stats(mvirt_ebpf::proto::GetNicStatsRequest { id: nic_id.clone() })
            .await
        {
            let s = s.into_inner();
            out.push(NicUsage {
                nic_id,
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_drops: s.rx_drops,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_drops: s.tx_drops,
            });
        }
    }
    out
}

async fn guest_usage(daemons: &Daemons, id: String, pid: u32, nic_ids: Vec<String>) -> GuestUsage {
    let mut usage = GuestUsage {
        id,
        pid,
        ..Default::default()
    };
    if pid != 0 {
        // The process may have exited since mvirt-vmm answered: then it is not running.
        if let Ok(p) = proc_usage(pid) {
            usage.running = true;
            usage.cpu_seconds = p.cpu_seconds;
            usage.memory_rss_bytes = p.rss_bytes;
            usage.threads = p.threads;
            usage.disk_read_bytes = p.read_bytes;
            usage.disk_write_bytes = p.write_bytes;
            usage.io_read_bytes = p.rchar;
            usage.io_write_bytes = p.wchar;
        }
    }
    usage.nics = nic_usage(daemons, nic_ids).await;
    usage
}

/// Samples what `request` asks for (see `GetStatsRequest`).
pub async fn sample(
    daemons: &Daemons,
    node_id: &str,
    request: &GetStatsRequest,
) -> Result<NodeStats, Status> {
    let everything = request.vm_ids.is_empty() && request.pod_ids.is_empty();
    let mut stats = NodeStats {
        node_id: node_id.to_string(),
        sampled_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        host: Some(host_usage()),
        ..Default::default()
    };
    if everything || !request.vm_ids.is_empty() {
        let vms = daemons
            .vmm
            .clone()
            .list_vms(mvirt_vmm::proto::ListVmsRequest::default())
            .await?
            .into_inner()
            .vms;
        let wanted: HashSet<&str> = request.vm_ids.iter().map(String::as_str).collect();
        if let Some(missing) = wanted.iter().find(|id| !vms.iter().any(|vm| vm.id == **id)) {
            return Err(Status::not_found(format!(
                "VM {missing} is not on this node"
            )));
        }
        for vm in vms {
            if !everything && !wanted.contains(vm.id.as_str()) {
                continue;
            }
            let nics = vm
                .config
                .as_ref()
                .map(|c| c.nics.iter().map(|n| n.id.clone()).collect())
                .unwrap_or_default();
            stats
                .vms
                .push(guest_usage(daemons, vm.id, vm.pid, nics).await);
        }
    }
    if everything || !request.pod_ids.is_empty() {
        let pods = daemons
            .pods
            .clone()
            .list_pods(mvirt_vmm::proto::ListPodsRequest::default())
            .await?
            .into_inner()
            .pods;
        let wanted: HashSet<&str> = request.pod_ids.iter().map(String::as_str).collect();
        if let Some(missing) = wanted
            .iter()
            .find(|id| !pods.iter().any(|pod| pod.id == **id))
        {
            return Err(Status::not_found(format!(
                "pod {missing} is not on this node"
            )));
        }
        for pod in pods {
            if !everything && !wanted.contains(pod.id.as_str()) {
                continue;
            }
            let nics = pod
                .config
                .as_ref()
                .map(|c| c.nics.iter().map(|n| n.id.clone()).collect())
                .unwrap_or_default();
            stats
                .pods
                .push(guest_usage(daemons, pod.id, pod.pid, nics).await);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_even_with_odd_process_names() {
        let stat = "4242 (qemu (x) vm) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 1000 10 18446744073709551615";
        let status = "Name:\tqemu\nVmRSS:\t  2048 kB\nThreads:\t3\n";
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        let usage = parse_proc(stat, status, io, 100.0).unwrap();
        assert_eq!(
            usage,
            ProcUsage {
                cpu_seconds: 3.0,
                rss_bytes: 2048 * 1024,
                threads: 3,
                read_bytes: 4096,
                write_bytes: 8192,
                rchar: 10,
                wchar: 20,
            }
        );
        assert!(parse_proc("garbage", status, io, 100.0).is_none());
    }

    #[test]
    fn this_process_and_the_host_are_read() {
        let me = proc_usage(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1, "{me:?}");
        let host = host_usage();
        assert!(host.cpus >= 1 && host.memory_total_bytes > host.memory_available_bytes);
        assert!(host.cpu_busy_seconds > 0.0, "{host:?}");
    }
}
