//! HA helpers shared by tests/ha.rs and benches/ha.rs (included by `#[path]`, not through
//! `common/mod.rs`): a TCP proxy that partitions an agent from the API, the hypervisor process
//! of a VM on a host, /proc start and exit times, and a tagged block on a volume.

#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use tokio::net::{TcpListener, TcpStream};

/// Where on a volume the tag block goes (inside a 32 MiB volume, past the guest's root image).
pub const TAG_OFFSET: u64 = 28 * 1024 * 1024;

/// Writes a 1 MiB block of `tag` at [`TAG_OFFSET`] of the volume at `path` and syncs it.
pub fn write_tag(path: &Path, tag: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(TAG_OFFSET)).unwrap();
    let block: Vec<u8> = tag.bytes().cycle().take(1024 * 1024).collect();
    f.write_all(&block).unwrap();
    f.sync_all().unwrap();
}

/// Whether the volume at `path` holds the block [`write_tag`] wrote with `tag`.
pub fn has_tag(path: &Path, tag: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0; 4096];
    f.seek(SeekFrom::Start(TAG_OFFSET)).unwrap();
    f.read_exact(&mut buf).is_ok() && buf.starts_with(tag.as_bytes())
}

/// A TCP proxy to `target` that can be cut (open connections closed, new ones dropped) and
/// restored.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = tokio::sync::watch::channel(0u64).0;
        let (cut2, generation2) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = generation2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            generation,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The hypervisor process of `vm_id` on a host, if mvirt-vmm shows one running.
pub async fn hypervisor_pid(
    vmm: &mut VmServiceClient<tonic::transport::Channel>,
    vm_id: &str,
) -> Option<u32> {
    vmm.list_vms(vmm::ListVmsRequest::default())
        .await
        .ok()?
        .into_inner()
        .vms
        .into_iter()
        .find(|v| v.id == vm_id && v.pid != 0)
        .map(|v| v.pid)
}

/// Whether process `pid` is gone (or a zombie).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// When process `pid` started, as seconds since the epoch (from /proc/<pid>/stat and btime).
pub fn process_start(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    // Fields after the command: state is field 3, starttime field 22.
    let ticks: f64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    btime + ticks / hz
}

pub fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
