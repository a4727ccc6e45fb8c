//! What the host has: CPU, memory, hugepages, NUMA nodes, disks and NICs, read from `/proc` and
//! `/sys` (no external programs).

use std::collections::HashMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostDisk {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostNic {
    pub name: String,
    pub mac: String,
    pub up: bool,
    pub mtu: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepage_size_bytes: u64,
    pub numa_nodes: u32,
    pub disks: Vec<HostDisk>,
    pub nics: Vec<HostNic>,
}

/// `/proc/meminfo` as key → number (kB for sizes, a count for HugePages_*).
pub fn meminfo() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn dir_names(path: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn collect() -> HostInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cpu_cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    let mem = meminfo();
    let kib = |k: &str| mem.get(k).copied().unwrap_or(0) * 1024;
    let numa_nodes = dir_names("/sys/devices/system/node")
        .iter()
        .filter(|n| n.starts_with("node") && n[4..].chars().all(|c| c.is_ascii_digit()))
        .count()
        .max(1) as u32;
    let disks = dir_names("/sys/block")
        .into_iter()
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .map(|name| HostDisk {
            size_bytes: read_trim(&format!("/sys/block/{name}/size"))
                .parse::<u64>()
                .unwrap_or(0)
                * 512,
            rotational: read_trim(&format!("/sys/block/{name}/queue/rotational")) == "1",
            name,
        })
        .collect();
    let nics = dir_names("/sys/class/net")
        .into_iter()
        .map(|name| HostNic {
            mac: read_trim(&format!("/sys/class/net/{name}/address")),
            up: read_trim(&format!("/sys/class/net/{name}/operstate")) != "down",
            mtu: read_trim(&format!("/sys/class/net/{name}/mtu"))
                .parse()
                .unwrap_or(0),
            name,
        })
        .collect();
    HostInfo {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_default(),
        cpu_model,
        cpu_cores,
        memory_total_bytes: kib("MemTotal"),
        memory_available_bytes: kib("MemAvailable"),
        hugepages_total: mem.get("HugePages_Total").copied().unwrap_or(0),
        hugepages_free: mem.get("HugePages_Free").copied().unwrap_or(0),
        hugepage_size_bytes: kib("Hugepagesize"),
        numa_nodes,
        disks,
        nics,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_reports_cpus_memory_and_loopback() {
        let info = super::collect();
        assert!(info.cpu_cores >= 1);
        assert!(info.memory_total_bytes > 0);
        assert!(info.memory_available_bytes <= info.memory_total_bytes);
        assert!(info.numa_nodes >= 1);
        assert!(info.nics.iter().any(|n| n.name == "lo"));
    }
}
