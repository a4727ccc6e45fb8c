//! `mvirt-ebpf-bench`: throughput and latency between two network namespaces through the eBPF
//! datapath, against the same endpoints joined by a Linux bridge, side by side in one run.
//! Needs root, iperf3, ethtool and ping. `mvirt-ebpf-bench [rounds] [seconds] [no-offload]`
//! (default 15 rounds of 2 s iperf3 runs per path, offloads on) prints a Markdown table of
//! medians (the crate README records runs). `no-offload` switches TSO/GSO/GRO off on every veth
//! of both setups, so that each MTU-sized frame crosses the bridge or the eBPF program.
//!
//! Other work on the machine shifts absolute numbers by tens of percent from one run to the
//! next, so the paths are measured interleaved, every other round in reverse order (a load that
//! rises or falls during a round hits them evenly), and each path's ratio to the bridge is taken
//! within its round; the table reports median throughputs and the median (and quartiles) of those
//! ratios. (Pinning client and server to CPUs made it worse: one busy CPU then stalls a run.)
//!
//! The endpoints are veth pairs (a TAP's far side is a VM, which a benchmark cannot run at
//! speed here); the eBPF program attached to the host end of each veth is exactly the one that
//! runs on a NIC's TAP, with the tables written through the same `Datapath::sync`.
//!
//! Two eBPF deliveries are measured: `bpf_redirect` to the destination's egress (what a TAP
//! destination, i.e. every VM NIC, gets) and `bpf_redirect_peer` into the veth's peer (routes
//! flagged `ROUTE_F_PEER`, veth destinations only), plus the latter with 1,000 security-group
//! rules. The load average before and after the run is printed with the table.
//!
//! A fifth path bounds what any datapath could reach: the two namespaces joined directly by one
//! veth pair, with no forwarding step at all. A datapath between two veth (or TAP) endpoints
//! always adds a second device crossing to that, so its ratio to the bridge is the ceiling.
//!
//! `mvirt-ebpf-bench [rounds] [seconds] [offload|no-offload] counters` measures instead what
//! the datapath's counters cost (target <= 1 %): the same traffic through the TAP delivery
//! (`bpf_redirect`), without and with 1,000 security-group rules on the receiver, each with the
//! program loaded with counters on (the daemon's) and off (`Datapath::load_with_counters`: the
//! per-NIC stats, drop reasons and rule counters compiled out by the verifier). Both programs
//! share the pinned tables; a path switch replaces the program through the pinned TCX links.
//! Rounds interleave the four paths (every other round reversed) and the ratio on/off is taken
//! within each round. "Off" exists only here: the daemon always counts (GetNicStats needs it).
//! Throughput on 2 busy cores is far too noisy to resolve 1 %, so the variant also measures the
//! programs' own cost with the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`, the switch
//! behind `kernel.bpf_stats_enabled`, held through a file descriptor for the run only: the
//! kernel switches it back when the descriptor closes, whatever way the bench ends): the
//! `run_time_ns`/`run_cnt` of the program attached to both TAP ends, read before and after
//! each iperf3 run, give ns per packet through the program with counters on and off; their
//! difference is set against the wall time per packet of the run (1e9 / packets per second)
//! and the iperf3 CPU time per packet, i.e. the share of the path's per-packet cost that the
//! counters are.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use mvirt_ebpf::datapath::{
    Datapath, DesiredState, NicInfo, NicRules, Route4Data, RouteValue, SgRule, ROUTE_F_PEER,
    ROUTE_NIC,
};

fn run(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("cannot run {argv:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns(name: &str, argv: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", name];
    full.extend_from_slice(argv);
    run(&full)
}

/// Namespaces and links created by the benchmark, removed on drop.
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
    links: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = run(&["ip", "link", "del", l]);
        }
        for n in &self.netns {
            let _ = run(&["ip", "netns", "del", n]);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn mac_of(ns_name: &str, dev: &str) -> Result<[u8; 6], String> {
    let out = ns(ns_name, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(out.trim().split(':')) {
        *slot = u8::from_str_radix(part, 16).map_err(|e| e.to_string())?;
    }
    Ok(mac)
}

/// One endpoint: netns `name` with veth `<name>h` (host) / `eth0` (inside).
/// With `offload` false, TSO/GSO/GRO are switched off on both ends of the veth, so TCP moves
/// MTU-sized frames and every frame pays the forwarding path (the datapath's own cost) instead
/// of one 64 KB segment doing so for ~45 frames.
fn endpoint(c: &mut Cleanup, name: &str, offload: bool) -> Result<String, String> {
    run(&["ip", "netns", "add", name])?;
    c.netns.push(name.to_string());
    let host = format!("{name}h");
    run(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    c.links.push(host.clone());
    run(&["ip", "link", "set", &host, "up"])?;
    ns(name, &["ip", "link", "set", "lo", "up"])?;
    ns(name, &["ip", "link", "set", "eth0", "up"])?;
    if !offload {
        let off = ["tso", "off", "gso", "off", "gro", "off"];
        let mut argv = vec!["ethtool", "-K", &host];
        argv.extend_from_slice(&off);
        run(&argv)?;
        let mut argv = vec!["ethtool", "-K", "eth0"];
        argv.extend_from_slice(&off);
        ns(name, &argv)?;
    }
    Ok(host)
}

struct Result3 {
    gbits: f64,
    rtt_ms: f64,
    /// CPU time of iperf3's client and server (as iperf3 reports it, % of one CPU) per Gbit/s:
    /// the cost of moving the bytes, which other work on the machine disturbs less than the
    /// throughput itself.
    cpu_per_gbit: f64,
    /// % of one CPU that iperf3's client and server used (as iperf3 reports it).
    cpu_percent: f64,
}

/// One round of a counters-on/off pair: (ns in the program, runs) on and off, and the off run.
type RoundPair<'a> = ((&'a (u64, u64), &'a (u64, u64)), &'a Result3);

/// `run_time_ns` and `run_cnt` summed over the programs attached (pinned TCX links under
/// `pin/links/<iface>`) to `ifaces`: the kernel's BPF run-time statistics, which count only
/// while they are enabled (`BPF_ENABLE_STATS`).
fn prog_stats(pin: &std::path::Path, ifaces: &[String]) -> Result<(u64, u64), String> {
    use aya::programs::links::{FdLink, PinnedLink};
    let mut ids: Vec<u32> = Vec::new();
    for iface in ifaces {
        let path = pin.join("links").join(iface);
        let link = FdLink::from(
            PinnedLink::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let id = link
            .info()
            .map_err(|e| format!("link info of {}: {e}", path.display()))?
            .program_id();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut found = 0;
    let (mut ns, mut cnt) = (0u64, 0u64);
    for info in aya::programs::loaded_programs() {
        let info = info.map_err(|e| format!("listing BPF programs: {e}"))?;
        if ids.contains(&info.id()) {
            found += 1;
            ns += info.run_time().as_nanos() as u64;
            cnt += info.run_count();
        }
    }
    if found != ids.len() {
        return Err(format!(
            "programs {ids:?} attached to {ifaces:?}: only {found} found loaded"
        ));
    }
    Ok((ns, cnt))
}

fn measure(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    seconds: &str,
) -> Result<Result3, String> {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    // The server needs a moment to listen: retry the client until it connects.
    let mut out = Err(String::new());
    for _ in 0..50 {
        // iperf3 -J reports "connection refused" in its JSON with exit status 0.
        out = ns(
            client_ns,
            &["iperf3", "-c", server_ip, "-t", seconds, "-A", "0,1", "-J"],
        )
        .and_then(|j| {
            if j.contains("\"error\"") {
                Err(j)
            } else {
                Ok(j)
            }
        });
        if out.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let json = out.map_err(|e| {
        format!(
            "{e}; server: {}",
            ns(server_ns, &["ip", "-br", "addr"]).unwrap_or_default()
        )
    })?;
    let parsed: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    let gbits = parsed["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no end.sum_received.bits_per_second in iperf3 output: {json}"))?
        / 1e9;
    let ping = ns(
        client_ns,
        &["ping", "-q", "-c", "100", "-i", "0.005", server_ip],
    )?;
    let rtt_ms = ping
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|s| s.trim().split('/').nth(1))
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or("cannot parse ping output")?;
    let cpu = &parsed["end"]["cpu_utilization_percent"];
    let cpu_total = cpu["host_total"].as_f64().unwrap_or(f64::NAN)
        + cpu["remote_total"].as_f64().unwrap_or(f64::NAN);
    Ok(Result3 {
        gbits,
        rtt_ms,
        cpu_per_gbit: cpu_total / gbits,
        cpu_percent: cpu_total,
    })
}

fn median(mut runs: Vec<Result3>) -> Result3 {
    let mid = runs.len() / 2;
    runs.sort_by(|a, b| a.gbits.total_cmp(&b.gbits));
    let gbits = runs[mid].gbits;
    runs.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
    let rtt_ms = runs[mid].rtt_ms;
    runs.sort_by(|a, b| a.cpu_per_gbit.total_cmp(&b.cpu_per_gbit));
    let cpu_per_gbit = runs[mid].cpu_per_gbit;
    runs.sort_by(|a, b| a.cpu_percent.total_cmp(&b.cpu_percent));
    Result3 {
        gbits,
        rtt_ms,
        cpu_per_gbit,
        cpu_percent: runs[mid].cpu_percent,
    }
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("mvirt-ebpf-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let id = std::process::id() & 0xffff;
    let offload = match std::env::args().nth(3).as_deref() {
        None | Some("offload") => true,
        Some("no-offload") => false,
        Some(other) => return Err(format!("third argument {other:?}: offload or no-offload")),
    };
    let counters_mode = match std::env::args().nth(4).as_deref() {
        None => false,
        Some("counters") => true,
        Some(other) => return Err(format!("fourth argument {other:?}: counters or nothing")),
    };
    let mut c = Cleanup::default();

    // Baseline: Linux bridge, one subnet.
    let br = format!("mvbbr{id:x}");
    run(&["ip", "link", "add", &br, "type", "bridge"])?;
    c.links.push(br.clone());
    run(&["ip", "link", "set", &br, "up"])?;
    let (b1, b2) = (format!("mvbb1{id:x}"), format!("mvbb2{id:x}"));
    for (name, ip) in [(&b1, "10.98.0.2/24"), (&b2, "10.98.0.3/24")] {
        let host = endpoint(&mut c, name, offload)?;
        run(&["ip", "link", "set", &host, "master", &br])?;
        ns(name, &["ip", "addr", "add", ip, "dev", "eth0"])?;
    }

    // Ceiling: one veth pair straight between two namespaces, no forwarding step.
    let (d1, d2) = (format!("mvbd1{id:x}"), format!("mvbd2{id:x}"));
    for name in [&d1, &d2] {
        run(&["ip", "netns", "add", name])?;
        c.netns.push(name.to_string());
        ns(name, &["ip", "link", "set", "lo", "up"])?;
    }
    ns(
        &d1,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &d2,
        ],
    )?;
    for (name, ip) in [(&d1, "10.97.0.2/24"), (&d2, "10.97.0.3/24")] {
        ns(name, &["ip", "link", "set", "eth0", "up"])?;
        ns(name, &["ip", "addr", "add", ip, "dev", "eth0"])?;
        if !offload {
            ns(
                name,
                &[
                    "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off",
                ],
            )?;
        }
    }

    // eBPF: each endpoint is a "VM" with a /32 and the link-local gateway.
    let pin = PathBuf::from(format!("/sys/fs/bpf/mvirt-bench-{id:x}"));
    c.dirs.push(pin.clone());
    let mut dp = Datapath::load(&pin, 600).map_err(|e| mvirt_common::error::error_chain(&e))?;
    // The same program with its counters compiled out, on the same pinned tables.
    let mut dp_off = Datapath::load_with_counters(&pin, 600, false)
        .map_err(|e| mvirt_common::error::error_chain(&e))?;
    let (e1, e2) = (format!("mvbe1{id:x}"), format!("mvbe2{id:x}"));
    let mut desired = DesiredState::default();
    let mut ifindexes = Vec::new();
    for (name, ip) in [
        (&e1, Ipv4Addr::new(10, 99, 0, 2)),
        (&e2, Ipv4Addr::new(10, 99, 0, 3)),
    ] {
        let host = endpoint(&mut c, name, offload)?;
        ns(
            name,
            &["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        )?;
        ns(name, &["ip", "route", "add", "169.254.0.1", "dev", "eth0"])?;
        ns(
            name,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "169.254.0.1",
                "dev",
                "eth0",
            ],
        )?;
        ns(
            name,
            &[
                "ip",
                "neigh",
                "add",
                "169.254.0.1",
                "lladdr",
                "02:6d:76:00:00:01",
                "dev",
                "eth0",
            ],
        )?;
        let mac = mac_of(name, "eth0")?;
        let ifindex = dp
            .attach_tap(&host)
            .map_err(|e| mvirt_common::error::error_chain(&e))?;
        desired.nics.insert(
            ifindex,
            NicInfo {
                network: 1,
                flags: 0,
                mac,
                slot: 0,
            },
        );
        desired.routes4.insert(
            (
                32,
                Route4Data {
                    network: 1,
                    addr: ip.octets(),
                },
            ),
            RouteValue {
                kind: ROUTE_NIC,
                ifindex,
                mac,
                flags: 0,
                pad: 0,
                remote: [0; 4],
                key: 0,
            },
        );
        ifindexes.push(ifindex);
    }
    let plain = desired;
    let mut peer = plain.clone();
    for route in peer.routes4.values_mut() {
        route.flags = ROUTE_F_PEER;
    }

    // The same with 1,000 security-group rules on the server (999 that do not match, then the
    // allow rule): only the first packet of a flow walks them, conntrack carries the rest.
    let mut rules = NicRules::default();
    for i in 0..999u32 {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&Ipv4Addr::from(0xC633_0000 + i).octets());
        rules.ingress.push(SgRule {
            family: 4,
            proto: 6,
            port_lo: 1,
            port_hi: 1000,
            prefixlen: 32,
            pad: 0,
            addr,
        });
    }
    rules.ingress.push(SgRule {
        family: 0,
        proto: 0,
        port_lo: 0,
        port_hi: 0,
        prefixlen: 0,
        pad: 0,
        addr: [0; 16],
    });
    let mut security = HashMap::new();
    security.insert(ifindexes[1], rules);
    let mut with_rules = peer.clone();
    with_rules.security = security.clone();
    let mut tap_rules = plain.clone();
    tap_rules.security = security;

    // Rounds interleave the paths and the median is reported: other work on the machine
    // shifts absolute numbers, interleaving keeps the comparison fair.
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let seconds = std::env::args().nth(2).unwrap_or_else(|| "2".into());
    let load_before = loadavg();
    if counters_mode {
        let hosts = [format!("{e1}h"), format!("{e2}h")];
        let paths: [(&str, &DesiredState, bool); 4] = [
            ("TAP delivery, counters on", &plain, true),
            ("TAP delivery, counters off", &plain, false),
            (
                "TAP delivery + 1,000 SG rules, counters on",
                &tap_rules,
                true,
            ),
            (
                "TAP delivery + 1,000 SG rules, counters off",
                &tap_rules,
                false,
            ),
        ];
        let mut results: Vec<Vec<Result3>> = paths.iter().map(|_| Vec::new()).collect();
        // Per path and round: ns in the program and program runs (packets through it).
        let mut prog: Vec<Vec<(u64, u64)>> = paths.iter().map(|_| Vec::new()).collect();
        let mut counted_while_off = 0u64;
        // The kernel's BPF run-time statistics, on while this descriptor is open (an earlier
        // `kernel.bpf_stats_enabled=1` stays; closing it switches back only what it switched).
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| format!("BPF_ENABLE_STATS (run time): {e}"))?;
        let secs: f64 = seconds
            .parse()
            .map_err(|e| format!("second argument {seconds:?}: {e}"))?;
        for round in 0..rounds {
            eprintln!("round {}/{rounds}", round + 1);
            let mut order: Vec<usize> = (0..paths.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (name, tables, on) = paths[i];
                let d = if on { &mut dp } else { &mut dp_off };
                for host in &hosts {
                    d.attach_tap(host)
                        .map_err(|e| mvirt_common::error::error_chain(&e))?;
                }
                d.sync(tables)
                    .map_err(|e| mvirt_common::error::error_chain(&e))?;
                let before = dp.stats(ifindexes[1]).tx_packets;
                let (ns0, cnt0) = prog_stats(&pin, &hosts)?;
                let r = measure(&e2, "10.99.0.3", &e1, &seconds)?;
                let (ns1, cnt1) = prog_stats(&pin, &hosts)?;
                let delta = dp.stats(ifindexes[1]).tx_packets - before;
                if !on {
                    counted_while_off += delta;
                }
                let (run_ns, runs) = (ns1 - ns0, cnt1 - cnt0);
                if runs == 0 {
                    return Err(format!(
                        "{name}: the program did not run (run_cnt unchanged)"
                    ));
                }
                eprintln!(
                    "  {name}: {:.2} Gbit/s, {:.1} CPU %/Gbit/s, {:.3} ms, {delta} packets \
                     counted, {runs} program runs, {:.1} ns/run",
                    r.gbits,
                    r.cpu_per_gbit,
                    r.rtt_ms,
                    run_ns as f64 / runs as f64
                );
                results[i].push(r);
                prog[i].push((run_ns, runs));
            }
        }
        let load_after = loadavg();
        for host in &hosts {
            dp.detach(host);
        }
        if counted_while_off != 0 {
            return Err(format!(
                "{counted_while_off} packets were counted with the counters off"
            ));
        }
        // Per round: throughput and CPU per Gbit/s with counters on relative to off.
        let quartiles = |mut r: Vec<f64>| -> [f64; 3] {
            r.sort_by(f64::total_cmp);
            let n = r.len() - 1;
            [r[n / 4], r[n / 2], r[(3 * n).div_ceil(4)]]
        };
        let on_off = |on: usize, off: usize, f: fn(&Result3) -> f64| {
            quartiles(
                results[on]
                    .iter()
                    .zip(&results[off])
                    .map(|(a, b)| (f(a) / f(b) - 1.0) * 100.0)
                    .collect(),
            )
        };
        let cmp: Vec<([f64; 3], [f64; 3])> = [(0, 1), (2, 3)]
            .iter()
            .map(|&(on, off)| {
                (
                    on_off(on, off, |r| r.gbits),
                    on_off(on, off, |r| r.cpu_per_gbit),
                )
            })
            .collect();
        // Per round: ns per packet in the program with counters on and off, their difference,
        // and that difference as a share of the whole path's time per packet (wall: 1e9 /
        // packets per second of the run; CPU: iperf3's CPU time per packet).
        let per_run = |&(ns, n): &(u64, u64)| ns as f64 / n as f64;
        let bpf: Vec<[[f64; 3]; 5]> =
            [(0, 1), (2, 3)]
                .iter()
                .map(|&(on, off)| {
                    let pairs = || prog[on].iter().zip(&prog[off]).zip(&results[off]);
                    let q = |f: &dyn Fn(RoundPair) -> f64| quartiles(pairs().map(f).collect());
                    [
                        q(&|((a, _), _)| per_run(a)),
                        q(&|((_, b), _)| per_run(b)),
                        q(&|((a, b), _)| per_run(a) - per_run(b)),
                        // Wall time per packet of the off run: 1e9 * seconds / packets.
                        q(&|((a, b), _)| {
                            (per_run(a) - per_run(b)) / (1e9 * secs / b.1 as f64) * 100.0
                        }),
                        // iperf3 CPU time per packet of the off run.
                        q(&|((a, b), r)| {
                            (per_run(a) - per_run(b))
                                / (r.cpu_percent / 100.0 * 1e9 * secs / b.1 as f64)
                                * 100.0
                        }),
                    ]
                })
                .collect();
        // Pooled over all rounds: total ns in the program / total runs.
        let pooled: Vec<f64> = prog
            .iter()
            .map(|p| {
                let (ns, n) = p
                    .iter()
                    .fold((0u64, 0u64), |(a, b), &(ns, n)| (a + ns, b + n));
                ns as f64 / n as f64
            })
            .collect();
        // Mean and standard error of the per-round difference on − off (ns per packet).
        let mean_se: Vec<(f64, f64)> = [(0, 1), (2, 3)]
            .iter()
            .map(|&(on, off)| {
                let d: Vec<f64> = prog[on]
                    .iter()
                    .zip(&prog[off])
                    .map(|(a, b)| per_run(a) - per_run(b))
                    .collect();
                let n = d.len() as f64;
                let mean = d.iter().sum::<f64>() / n;
                let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
                (mean, (var / n).sqrt())
            })
            .collect();
        let medians: Vec<Result3> = results.into_iter().map(median).collect();
        let rates: Vec<f64> = prog
            .iter()
            .map(|p| quartiles(p.iter().map(|&(_, n)| n as f64 / secs).collect())[1])
            .collect();
        println!(
            "| path | TCP Gbit/s (median) | iperf3 CPU % per Gbit/s (median) | ping RTT (ms) |"
        );
        println!("|---|---|---|---|");
        for ((name, _, _), r) in paths.iter().zip(&medians) {
            println!(
                "| {name} | {:.2} | {:.1} | {:.3} |",
                r.gbits, r.cpu_per_gbit, r.rtt_ms
            );
        }
        for (label, ([t1, t2, t3], [c1, c2, c3])) in
            ["TAP delivery", "TAP delivery + 1,000 SG rules"]
                .iter()
                .zip(&cmp)
        {
            println!(
                "{label}: counters on vs off, per round: throughput median {t2:+.2}% (quartiles \
                 {t1:+.2}% to {t3:+.2}%), CPU per Gbit/s median {c2:+.2}% (quartiles {c1:+.2}% \
                 to {c3:+.2}%)"
            );
        }
        println!(
            "BPF run-time statistics (run_time_ns / run_cnt of the program on both TAP ends, \
             per round; medians, quartiles in brackets):"
        );
        for (k, (label, [on, off, diff, wall, cpu])) in
            ["TAP delivery", "TAP delivery + 1,000 SG rules"]
                .iter()
                .zip(&bpf)
                .enumerate()
        {
            let fmt = |[a, b, c]: [f64; 3], unit: &str| format!("{b:.1}{unit} ({a:.1}…{c:.1})");
            let fmt2 = |[a, b, c]: [f64; 3]| format!("{b:+.2} % ({a:+.2}…{c:+.2})");
            println!(
                "{label}: ns per packet in the program: counters on {}, off {}; on − off {}; \
                 share of the path's time per packet: {} of wall time (1e9 / packets per \
                 second, {:.0} kpps off), {} of iperf3 CPU time; pooled over all rounds: on \
                 {:.1} ns, off {:.1} ns, on − off {:+.1} ns = {:+.2} % of the median wall time \
                 per packet; per-round mean on − off {:+.1} ns (standard error {:.1} ns): 95 % \
                 interval {:+.2} % to {:+.2} % of the median wall time per packet",
                fmt(*on, " ns"),
                fmt(*off, " ns"),
                fmt(*diff, " ns"),
                fmt2(*wall),
                rates[2 * k + 1] / 1e3,
                fmt2(*cpu),
                pooled[2 * k],
                pooled[2 * k + 1],
                pooled[2 * k] - pooled[2 * k + 1],
                (pooled[2 * k] - pooled[2 * k + 1]) * rates[2 * k + 1] / 1e9 * 100.0,
                mean_se[k].0,
                mean_se[k].1,
                (mean_se[k].0 - 2.0 * mean_se[k].1) * rates[2 * k + 1] / 1e9 * 100.0,
                (mean_se[k].0 + 2.0 * mean_se[k].1) * rates[2 * k + 1] / 1e9 * 100.0,
            );
        }
        println!(
            "{rounds} rounds of {seconds} s, offloads {}; load average before: {load_before}; \
             after: {load_after}",
            if offload { "on" } else { "off" }
        );
        return Ok(());
    }
    drop(dp_off);
    let paths: [(&str, Path); 5] = [
        ("Linux bridge", Path::Bridge),
        ("eBPF, bpf_redirect (TAP delivery)", Path::Ebpf(&plain)),
        ("eBPF, bpf_redirect_peer (veth delivery)", Path::Ebpf(&peer)),
        (
            "eBPF, bpf_redirect_peer + 1,000 SG rules",
            Path::Ebpf(&with_rules),
        ),
        ("ceiling: direct veth pair, no forwarding", Path::Direct),
    ];
    let mut results: Vec<Vec<Result3>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (name, tables) = paths[i];
            let r = match tables {
                Path::Bridge => measure(&b2, "10.98.0.3", &b1, &seconds)?,
                Path::Direct => measure(&d2, "10.97.0.3", &d1, &seconds)?,
                Path::Ebpf(tables) => {
                    dp.sync(tables)
                        .map_err(|e| mvirt_common::error::error_chain(&e))?;
                    measure(&e2, "10.99.0.3", &e1, &seconds)?
                }
            };
            eprintln!("  {name}: {:.2} Gbit/s, {:.3} ms", r.gbits, r.rtt_ms);
            results[i].push(r);
        }
    }
    let load_after = loadavg();
    for host in [&e1, &e2] {
        dp.detach(&format!("{host}h"));
    }
    // Ratio of each path to the bridge (or to another path) within each round: quartiles.
    let ratio = |of: usize, to: usize| -> [f64; 3] {
        let mut r: Vec<f64> = results[of]
            .iter()
            .zip(&results[to])
            .map(|(a, b)| a.gbits / b.gbits)
            .collect();
        r.sort_by(f64::total_cmp);
        let n = r.len() - 1;
        [r[n / 4], r[n / 2], r[(3 * n).div_ceil(4)]]
    };
    let ratios: Vec<[f64; 3]> = (0..paths.len()).map(|i| ratio(i, 0)).collect();
    let rules_vs_none = ratio(3, 2);
    let medians: Vec<Result3> = results.into_iter().map(median).collect();

    println!(
        "| path | TCP throughput (Gbit/s, median) | ratio to bridge (per round: median, quartiles) | iperf3 CPU % per Gbit/s (median) | ping RTT avg (ms) |"
    );
    println!("|---|---|---|---|---|");
    for (((name, _), r), [q1, q2, q3]) in paths.iter().zip(&medians).zip(&ratios) {
        println!(
            "| {name} | {:.2} | {q2:.2}x ({q1:.2}–{q3:.2}) | {:.1} | {:.3} |",
            r.gbits, r.cpu_per_gbit, r.rtt_ms
        );
    }
    let [q1, q2, q3] = rules_vs_none.map(|r| (r - 1.0) * 100.0);
    println!(
        "1,000 rules vs none (both bpf_redirect_peer, per round): median {q2:+.1}% throughput \
         (quartiles {q1:+.1}% to {q3:+.1}%)"
    );
    println!(
        "{rounds} rounds of {seconds} s, offloads {}; load average before: {load_before}; after: \
         {load_after}",
        if offload { "on" } else { "off" }
    );
    Ok(())
}

/// How the two endpoints of one benchmark path are joined.
#[derive(Clone, Copy)]
enum Path<'a> {
    Bridge,
    /// One veth pair between the namespaces: no forwarding step at all.
    Direct,
    /// The eBPF datapath with these tables.
    Ebpf(&'a DesiredState),
}

/// The 1/5/15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
