//! The fence lease (HA fencing, issue 23): a dead or hung node agent still fences.
//!
//! The node agent renews the lease every tick while it reaches the control plane
//! (`RenewFenceLease { ttl_ms, vm_ids }`, ttl = the time left until its own fence would fire).
//! When the lease expires without a renewal, this daemon kills (SIGKILL, as `KillVm`) every
//! running VM it names, logs it at error level, audits it, and records the state reason
//! [`REASON`] (GetVm, ListVms, WatchVms). It fires once: a later renewal starts a new lease.
//! An empty `vm_ids` cancels it. Ids this daemon does not know are kept (the agent may name a
//! VM not created yet) and skipped when the lease fires.
//!
//! Restarts: every renewal is written to `<data-dir>/fence-lease.json` (deadline as unix ms,
//! ttl, ids; written to a temporary file and renamed, not fsynced: a host crash ends the
//! guests anyway). A restarted daemon adopts its guests and re-arms the lease to expire at
//! the earlier of the stored deadline and (restart time + ttl), so a restart never extends
//! it; a deadline already past fires at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::vmm::Vmm;

/// The longest lease a renewal may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(600);
/// The most VMs one lease may name.
pub const MAX_VMS: usize = 100_000;
/// The state reason of a VM the lease killed.
pub const REASON: &str = "fenced: the node agent's lease expired";
const FILE: &str = "fence-lease.json";

/// The current lease: when it fires and which VMs it kills then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub deadline: Instant,
    pub vm_ids: Vec<String>,
}

/// The pure timer logic (no I/O).
#[derive(Debug, Default)]
pub struct LeaseState {
    current: Option<Lease>,
}

impl LeaseState {
    /// Replaces the lease (an empty `vm_ids` cancels it).
    pub fn renew(&mut self, now: Instant, ttl: Duration, vm_ids: Vec<String>) {
        self.current = (!vm_ids.is_empty()).then(|| Lease {
            deadline: now + ttl,
            vm_ids,
        });
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.current.as_ref().map(|l| l.deadline)
    }

    /// The VMs to kill when the lease expired by `now` (the lease is then gone).
    pub fn take_expired(&mut self, now: Instant) -> Option<Vec<String>> {
        if self.deadline()? > now {
            return None;
        }
        self.current.take().map(|l| l.vm_ids)
    }
}

/// Checks a renewal: the ttl when it is valid, else the message for INVALID_ARGUMENT.
pub fn validate(ttl_ms: u64, vm_ids: &[String]) -> Result<Duration, String> {
    if vm_ids.is_empty() {
        return Ok(Duration::ZERO);
    }
    if vm_ids.len() > MAX_VMS {
        return Err(format!(
            "a fence lease names at most {MAX_VMS} VMs, not {}",
            vm_ids.len()
        ));
    }
    if let Some(i) = vm_ids.iter().position(|id| id.trim().is_empty()) {
        return Err(format!("vm_ids[{i}] is empty"));
    }
    let ttl = Duration::from_millis(ttl_ms);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!(
            "ttl_ms must be 1..={} when vm_ids is not empty, not {ttl_ms}",
            MAX_TTL.as_millis()
        ));
    }
    Ok(ttl)
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    deadline_unix_ms: u64,
    ttl_ms: u64,
    vm_ids: Vec<String>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Shared {
    state: Mutex<LeaseState>,
    changed: watch::Sender<()>,
    path: PathBuf,
}

/// The daemon's fence lease. Cheap to clone.
#[derive(Clone)]
pub struct FenceLease {
    shared: Arc<Shared>,
}

impl FenceLease {
    /// Re-arms a stored lease (see the module docs) and starts the task that fires it; the
    /// task ends with the daemon (`vmm`'s shutdown).
    pub fn start(vmm: Vmm, data_dir: &Path) -> FenceLease {
        let path = data_dir.join(FILE);
        let mut state = LeaseState::default();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
                Ok(p) => {
                    let left = Duration::from_millis(p.deadline_unix_ms.saturating_sub(unix_ms()))
                        .min(Duration::from_millis(p.ttl_ms));
                    tracing::warn!(
                        vms = p.vm_ids.len(),
                        expires_in_ms = left.as_millis() as u64,
                        "fence lease re-armed after a restart"
                    );
                    state.renew(Instant::now(), left, p.vm_ids);
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), error = %err, "unreadable fence lease ignored")
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "cannot read the fence lease")
            }
        }
        let lease = FenceLease {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed: watch::channel(()).0,
                path,
            }),
        };
        tokio::spawn(run(vmm, lease.clone()));
        lease
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the lease; the unix ms when it fires (0: cancelled), or the validation error.
    pub fn renew(&self, ttl_ms: u64, vm_ids: Vec<String>) -> Result<u64, String> {
        let ttl = validate(ttl_ms, &vm_ids)?;
        let persisted = (!vm_ids.is_empty()).then(|| Persisted {
            deadline_unix_ms: unix_ms() + ttl.as_millis() as u64,
            ttl_ms: ttl.as_millis() as u64,
            vm_ids: vm_ids.clone(),
        });
        self.state().renew(Instant::now(), ttl, vm_ids);
        self.persist(persisted.as_ref());
        self.shared.changed.send_replace(());
        Ok(persisted.map(|p| p.deadline_unix_ms).unwrap_or(0))
    }

    fn persist(&self, lease: Option<&Persisted>) {
        let path = &self.shared.path;
        let result = match lease {
            None => match std::fs::remove_file(path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
            Some(lease) => {
                let tmp = path.with_extension("json.tmp");
                let bytes = serde_json::to_vec(lease).expect("a lease serializes");
                std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path))
            }
        };
        if let Err(err) = result {
            tracing::error!(path = %path.display(), error = %err, "cannot store the fence lease");
        }
    }
}

async fn run(vmm: Vmm, lease: FenceLease) {
    let stop = vmm.shutdown_token();
    let mut changed = lease.shared.changed.subscribe();
    loop {
        let deadline = lease.state().deadline();
        let expiry = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.changed() => continue,
            _ = expiry => {}
        }
        let Some(ids) = lease.state().take_expired(Instant::now()) else {
            continue;
        };
        lease.persist(None);
        fence(&vmm, &ids).await;
    }
}

/// Kills the running VMs among `ids`.
async fn fence(vmm: &Vmm, ids: &[String]) {
    tracing::error!(
        vms = ids.len(),
        "fence lease expired: the node agent stopped renewing it; killing its VMs"
    );
    for id in ids {
        let Ok(vm) = vmm.get(id) else { continue };
        if vm.process.is_none() {
            continue;
        }
        let pid = vm.process.map(|p| p.pid).unwrap_or(0);
        let message = format!("{REASON}: killing VM {} ({id}, pid {pid})", vm.spec.name);
        tracing::error!("{message}");
        vmm.audit().error(message, &[id]);
        if let Err(err) = vmm.kill_with_reason(id, REASON).await {
            tracing::error!(vm = %id, error = %err, "fence lease: kill failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_are_validated() {
        let ids = |n: usize| vec!["vm".to_string(); n];
        assert_eq!(
            validate(0, &[]),
            Ok(Duration::ZERO),
            "a cancel needs no ttl"
        );
        assert_eq!(validate(1500, &ids(2)), Ok(Duration::from_millis(1500)));
        assert!(validate(0, &ids(1)).unwrap_err().contains("ttl_ms"));
        assert!(validate(600_001, &ids(1)).unwrap_err().contains("ttl_ms"));
        assert!(validate(1000, &["a".into(), " ".into()])
            .unwrap_err()
            .contains("vm_ids[1]"));
        assert!(validate(1000, &ids(MAX_VMS + 1)).is_err());
    }

    #[test]
    fn a_lease_fires_once_at_its_deadline_unless_renewed_or_cancelled() {
        // The timer logic takes `now` explicitly: no clock involved.
        let mut state = LeaseState::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(state.take_expired(t0), None, "no lease, nothing fires");
        state.renew(t0, Duration::from_secs(3), vec!["a".into(), "b".into()]);
        assert_eq!(state.take_expired(at(2000)), None, "not yet");
        // A renewal at +2 s moves the deadline to +5 s and names only "a".
        state.renew(at(2000), Duration::from_secs(3), vec!["a".into()]);
        assert_eq!(state.deadline(), Some(at(5000)));
        assert_eq!(state.take_expired(at(4999)), None);
        assert_eq!(
            state.take_expired(at(5000)),
            Some(vec!["a".to_string()]),
            "the last lease's VMs"
        );
        assert_eq!(state.take_expired(at(9000)), None, "fires once");
        state.renew(at(9000), Duration::from_secs(1), vec!["a".into()]);
        state.renew(at(9000), Duration::from_secs(1), vec![]);
        assert_eq!(state.deadline(), None);
        assert_eq!(state.take_expired(at(20_000)), None, "cancelled");
    }
}
