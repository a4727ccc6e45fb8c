//! StartVm racing DeleteVm against real QEMU (TCG): a delete that arrives while a start is in
//! flight ends with no hypervisor process and no record, and a start after the delete does not
//! bring the VM back. The starts are fired the way the node agent fires them, including callers
//! that give up mid-start (an agent killed or restarted while its StartVm is in flight: the
//! client drops the call, the server sees the stream reset).

mod common;

use std::time::Duration;

use common::*;
use mvirt_vmm::proto;
use tonic::Code;

/// Iterations; each one boots (at least the start of) a QEMU process.
const ROUNDS: u64 = 40;

/// A small deterministic generator, so a failing round can be replayed.
fn jitter(round: u64, salt: u64, max_ms: u64) -> Duration {
    let mut x = round
        .wrapping_mul(6364136223846793005)
        .wrapping_add(salt.wrapping_mul(1442695040888963407))
        .wrapping_add(0x9e3779b97f4a7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    Duration::from_millis(x % (max_ms + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_a_start_leaves_no_hypervisor_and_a_later_start_does_not_resurrect_the_vm()
{
    mvirt_testsupport::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, mut client) = start_daemon(config(dir.path(), &[])).await;
    let mut reaper = GuestReaper::default();
    let mut cancelled_starts = 0;
    let mut completed_starts = 0;

    for round in 0..ROUNDS {
        let id = new_id();
        reaper.watch(&id);
        client
            .create_vm(proto::CreateVmRequest {
                id: id.clone(),
                config: Some(guest_config(&format!("race-{round}"), "")),
            })
            .await
            .unwrap();

        // StartVm, abandoned by its caller after a random time on odd rounds (the QEMU start
        // itself takes ~50–300 ms here, so many of these drop the call mid-launch).
        let start = {
            let mut client = client.clone();
            let id = id.clone();
            let patience = (round % 2 == 1).then(|| jitter(round, 1, 300));
            tokio::spawn(async move {
                let call = client.start_vm(proto::StartVmRequest { id });
                match patience {
                    Some(p) => tokio::time::timeout(p, call).await.ok(),
                    None => Some(call.await),
                }
            })
        };
        // KillVm + DeleteVm(force) after a random delay, as the agent's delete does.
        let delete = {
            let mut client = client.clone();
            let id = id.clone();
            let delay = jitter(round, 2, 250);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                match client
                    .kill_vm(proto::KillVmRequest { id: id.clone() })
                    .await
                {
                    Ok(_) => {}
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => panic!("KillVm: {s}"),
                }
                client
                    .delete_vm(proto::DeleteVmRequest { id, force: true })
                    .await
            })
        };
        // A second StartVm that arrives while the delete is under way.
        let late_start = {
            let mut client = client.clone();
            let id = id.clone();
            let delay = jitter(round, 3, 300);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                client.start_vm(proto::StartVmRequest { id }).await
            })
        };

        match start.await.unwrap() {
            None => cancelled_starts += 1,
            Some(Ok(_)) => completed_starts += 1,
            // The delete may have come first.
            Some(Err(s)) if s.code() == Code::NotFound => {}
            Some(Err(s)) => panic!("round {round}: StartVm failed: {s}"),
        }
        match late_start.await.unwrap() {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => panic!("round {round}: late StartVm failed: {s}"),
        }
        delete
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("round {round}: DeleteVm failed: {s}"));

        // The delete has answered: no record, and no QEMU naming the VM's run directory —
        // at once, with no grace period.
        let run_dir = dir.path().join("run").join(&id);
        let left = mvirt_testsupport::process::hypervisors_under(&run_dir);
        assert!(
            left.is_empty(),
            "round {round}: QEMU of deleted VM {id} still runs: {left:?}"
        );
        let gone = client
            .get_vm(proto::GetVmRequest { id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "round {round}");
        // A start after the delete does not resurrect it.
        let again = client
            .start_vm(proto::StartVmRequest { id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::NotFound, "round {round}");
        assert!(
            mvirt_testsupport::process::hypervisors_under(&run_dir).is_empty(),
            "round {round}: a start after the delete left a QEMU for {id}"
        );
        assert!(!run_dir.exists(), "round {round}: run directory left");
    }
    // Both kinds of start happened, or the test did not test the race.
    assert!(
        cancelled_starts > 0 && completed_starts > 0,
        "cancelled {cancelled_starts}, completed {completed_starts}"
    );
    let vms = client
        .list_vms(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .vms;
    assert!(vms.is_empty(), "{vms:?}");
    daemon.stop().await.unwrap();
    mvirt_testsupport::process::assert_no_hypervisor_outlives(dir.path(), Duration::ZERO).await;
}
