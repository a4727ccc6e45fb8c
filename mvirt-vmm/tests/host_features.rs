//! A VM's `hugepages` and `nested_virtualization` reach the hypervisor, or its start is refused
//! with the reason: a VM never runs silently without what its spec asks for.
//!
//! One test, because it changes the host's `vm.nr_hugepages` (restored on drop) and the
//! hugepage counters it reads would be disturbed by a second guest.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mvirt_vmm::proto;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.split_whitespace().next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{key} missing from /proc/meminfo"))
}

/// Sets `vm.nr_hugepages` and puts the old value back on drop.
struct HugepagePool {
    before: String,
}

impl HugepagePool {
    fn set(pages: u64) -> Self {
        let before = std::fs::read_to_string(NR_HUGEPAGES).unwrap();
        std::fs::write(NR_HUGEPAGES, pages.to_string()).unwrap();
        Self { before }
    }

    fn resize(&self, pages: u64) {
        std::fs::write(NR_HUGEPAGES, pages.to_string()).unwrap();
        assert_eq!(
            meminfo("HugePages_Total"),
            pages,
            "the kernel gave fewer pages"
        );
    }
}

impl Drop for HugepagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.trim());
    }
}

/// A hugetlbfs mount of the default page size: the host's `/dev/hugepages` if systemd mounted
/// one, else one this test mounts (and unmounts on drop).
struct Hugetlbfs {
    path: PathBuf,
    _ours: Option<tempfile::TempDir>,
}

impl Hugetlbfs {
    fn find_or_mount() -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        if mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/dev/hugepages") && l.contains("hugetlbfs")
        }) {
            return Self {
                path: "/dev/hugepages".into(),
                _ours: None,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "hugetlbfs", "mvirt-test-hugetlbfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t hugetlbfs failed: {status}");
        Self {
            path: dir.path().to_path_buf(),
            _ours: Some(dir),
        }
    }
}

impl Drop for Hugetlbfs {
    fn drop(&mut self) {
        if self._ours.is_some() {
            let _ = std::process::Command::new("umount")
                .arg(&self.path)
                .status();
        }
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

async fn refused_start(
    client: &mut proto::vm_service_client::VmServiceClient<tonic::transport::Channel>,
    id: &str,
) -> tonic::Status {
    let err = client
        .start_vm(proto::StartVmRequest { id: id.into() })
        .await
        .expect_err("the start should be refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let vm = get_vm(client, id).await;
    assert_ne!(state(&vm), proto::VmState::Running, "{vm:?}");
    assert_eq!(vm.pid, 0, "no hypervisor may run: {vm:?}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hugepages_and_nested_virtualization_reach_qemu_or_the_start_says_why() {
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, mut client) = start_daemon(config(dir.path(), &[])).await;
    let mut reaper = GuestReaper::default();

    let mut config = guest_config("huge", "");
    config.hugepages = true;
    let huge = new_id();
    reaper.watch(&huge);
    client
        .create_vm(proto::CreateVmRequest {
            id: huge.clone(),
            config: Some(config),
        })
        .await
        .unwrap();
    let mut config = guest_config("nested", "");
    config.nested_virtualization = true;
    let nested = new_id();
    reaper.watch(&nested);
    client
        .create_vm(proto::CreateVmRequest {
            id: nested.clone(),
            config: Some(config),
        })
        .await
        .unwrap();

    // No hugepages on the host: the start is refused, saying what is missing.
    let mount = Hugetlbfs::find_or_mount();
    let pool = HugepagePool::set(0);
    let err = refused_start(&mut client, &huge).await;
    assert!(
        err.message().contains("hugepages asked for") && err.message().contains("96 free pages"),
        "{}",
        err.message()
    );

    // TCG cannot give a guest VMX/SVM: nested virtualization is refused, not ignored.
    let err = refused_start(&mut client, &nested).await;
    assert!(
        err.message().contains("nested virtualization needs KVM"),
        "{}",
        err.message()
    );

    // With enough pages the guest's memory comes from hugetlbfs, preallocated.
    pool.resize(96 + 8);
    let free_before = meminfo("HugePages_Free");
    let running = client
        .start_vm(proto::StartVmRequest { id: huge.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&running), proto::VmState::Running);
    let args = cmdline(running.pid);
    let backend = args
        .iter()
        .find(|a| a.starts_with("memory-backend-file"))
        .unwrap_or_else(|| panic!("no hugepage memory backend in {args:?}"));
    assert!(
        backend.contains(&format!("mem-path={}", mount.path.display()))
            && backend.contains("size=192M")
            && backend.contains("prealloc=on"),
        "{backend}"
    );
    // Under TCG the CPU model stays `max` (see `QemuDriver::command_line`).
    assert!(args.iter().any(|a| a == "max"), "{args:?}");
    let used = free_before - meminfo("HugePages_Free");
    assert!(used >= 96, "the guest took {used} hugepages, wanted 96");
    Viewer::open(&mut client, &huge)
        .await
        .wait_for("MVIRT-GUEST-BOOTED", BOOT_TIMEOUT)
        .await;

    client
        .delete_vm(proto::DeleteVmRequest {
            id: huge.clone(),
            force: true,
        })
        .await
        .unwrap();
    // The pages go back to the host with the guest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while meminfo("HugePages_Free") < free_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hugepages not returned: {} free, {free_before} before",
            meminfo("HugePages_Free")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{}", running.pid)).exists() || {
            !cmdline(running.pid).iter().any(|a| a.contains(&huge))
        }
    );
    drop(pool);
    drop(mount);
}
