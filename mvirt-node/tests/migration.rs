//! Live migration through the API between two nodes on this host (each with its own agent,
//! data dir and local daemons; QEMU TCG guests), on one booted VM:
//!
//! 1. Refusals: the VM's own node and an unknown node are refused with the reason.
//! 2. A migration whose target agent is down fails with a reason, and the VM runs on where it
//!    was (one hypervisor process, on the source; the guest keeps counting there).
//! 3. With both agents up, `POST /v1/vms/{id}/migrate {}` moves the counting guest to the other
//!    node (the scheduler's choice): the count goes on there without a reboot (no second boot
//!    banner, uptime continues), the migration is `completed` with its downtime, the VM's node
//!    changed, and exactly one hypervisor process runs it (the source's paused copy is gone).
//! 4. The lost answer: the VM migrates back while the new target loses its `CompleteMigration`
//!    answers (a failpoint: it resumes the guest, then answers UNAVAILABLE) and its agent is
//!    killed right after the guest runs there. The source keeps its copy paused (never two
//!    running copies, sampled for 40 s — longer than the 30 s after which the source used to
//!    resume), the migration stays `completing` with the reason; the target's agent restarted,
//!    the source's next completion attempt succeeds: `completed`, the VM on the target, one copy.
//! 5. The source's agent killed mid-stream (the guest rewrites 32 MiB in a loop, so the stream
//!    goes on for seconds): never two running copies; once the agent is back the migration
//!    ended (failed or, retried under the same grant, completed), exactly one copy runs, on the
//!    VM's node, and the guest counts on without a reboot.
//! 6. The TARGET's agent killed mid-stream (as `kill -9`: its relays die with it, and its
//!    heartbeat is gone): exactly one running copy on every sample (mvirt-vmm `ListVms` of
//!    both nodes, and the hypervisor process of that copy alive), the source's copy runs on,
//!    the migration `failed` with a reason, the guest counts on without a reboot.
//! 7. The target lost in the switch-over after it resumed the guest: its `CompleteMigration`
//!    and `AbortMigration` answers are lost (failpoint) and its agent is cut from the API
//!    (a TCP proxy; its peer link stays). Fencing 20 s, the API's lost time 25 s: the target's
//!    agent kills the resumed copy, THEN the API fails the migration naming the lost node
//!    (`finished_at`), THEN the source resumes its paused copy — never two running; every
//!    sample before the API's failure shows the source paused.
//!
//! The agents reach the API through proxies (phase 7), with a fencing time of 20 s and the
//! API's lost time 25 s: a phase that keeps an agent away (phases 2, 4, 5) brings it back
//! before an active migration's node counts as lost.

mod common;
#[path = "common/partition.rs"]
mod partition;

use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use mvirt_vmm::proto as vmm;
use mvirt_vmm::proto::vm_service_client::VmServiceClient;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(180);
/// The agents' fencing time, and when the API counts a silent node as lost (+ 5 s margin).
const FENCING: Duration = Duration::from_secs(20);
const LOST_AFTER: Duration = Duration::from_secs(25);
const MIGRATION: Duration = Duration::from_secs(120);

use mvirt_testsupport::guest::uptime_of;

/// The VMs one node's mvirt-vmm has, with their state.
async fn vms_on(vmm_endpoint: &str) -> Vec<vmm::Vm> {
    VmServiceClient::connect(vmm_endpoint.to_string())
        .await
        .expect("connect vmm")
        .list_vms(vmm::ListVmsRequest::default())
        .await
        .expect("ListVms")
        .into_inner()
        .vms
}

/// The running copies of the VM on the two nodes' mvirt-vmms: (index, pid) of each one that
/// mvirt-vmm reports running and whose hypervisor process is alive; never two. (A copy killed a
/// moment ago — fenced — may still be reported running until mvirt-vmm notes its exit: its
/// process is what counts.)
async fn running_copies(endpoints: &[String; 2]) -> Vec<(usize, u32)> {
    let (here, there) = (vms_on(&endpoints[0]).await, vms_on(&endpoints[1]).await);
    let running: Vec<(usize, u32)> = here
        .iter()
        .map(|vm| (0, vm))
        .chain(there.iter().map(|vm| (1, vm)))
        .filter(|(_, vm)| vm.state == vmm::VmState::Running as i32)
        .filter(|(_, vm)| vm.pid != 0 && !partition::process_gone(vm.pid))
        .map(|(i, vm)| (i, vm.pid))
        .collect();
    assert!(
        running.len() <= 1,
        "at most one running copy:\n{here:?}\n{there:?}"
    );
    running
}

/// Seconds since the epoch of a UTC RFC 3339 time as the API writes it
/// (`2026-12-07T23:04:03.123Z`, fraction optional).
fn rfc3339_secs(t: &str) -> f64 {
    let (date, time) = t
        .strip_suffix('Z')
        .and_then(|t| t.split_once('T'))
        .unwrap_or_else(|| panic!("not a UTC RFC 3339 time: {t:?}"));
    let d: Vec<i64> = date.split('-').map(|v| v.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let hms: Vec<f64> = time.split(':').map(|v| v.parse().unwrap()).collect();
    days as f64 * 86400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

/// Waits until the VM's migration reached `phase`; returns the VM.
async fn wait_migration(rest: &Rest, vm_id: &str, phase: &str) -> Value {
    let path = format!("/v1/vms/{vm_id}");
    wait_until_async(&format!("the migration to be {phase}"), MIGRATION, || {
        let (rest, path) = (rest.clone(), path.clone());
        async move {
            let vm = rest.get(&path).await;
            (vm["migration"]["phase"] == phase).then_some(vm)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counting_guest_migrates_live_through_the_api_and_a_failed_migration_leaves_it_running() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (log_endpoint, log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |config| {
        config.ha_lost_after = LOST_AFTER;
    })
    .await;
    let proxies = [
        partition::Proxy::start(api.grpc_addr).await,
        partition::Proxy::start(api.grpc_addr).await,
    ];
    let scheme = api.grpc_url().split("://").next().unwrap().to_string();
    let hosts = [
        HostDaemons::start(&root.join("a"), &root.join("images"), &log_endpoint).await,
        HostDaemons::start(&root.join("b"), &root.join("images"), &log_endpoint).await,
    ];
    let configs = [("node-a", "a"), ("node-b", "b")].map(|(name, d)| {
        let i = if d == "a" { 0 } else { 1 };
        let mut config = agent_config(
            name,
            &root.join(d).join("agent"),
            &hosts[i].endpoints,
            &api,
            &token,
        );
        config.endpoints.api = format!("{scheme}://127.0.0.1:{}", proxies[i].port);
        config.ha_fencing = FENCING;
        config
    });
    let mut agents = [
        Some(Agent::start(configs[0].clone())),
        Some(Agent::start(configs[1].clone())),
    ];
    let node_ids = rest.wait_nodes_online(&["node-a", "node-b"]).await;

    let template_id = rest.create_template("tiny", &hosts[0].images).await;
    // No NIC: both "hosts" of this test share one kernel, and a NIC's TAP name derives from
    // its id alone, so the target's TAP for the moving VM's NIC would be the source's, which
    // the source's QEMU holds (on two machines each has its own).
    let vm = rest
        .post(
            "/v1/vms",
            json!({"name": "mover", "spec": {
                "vcpus": 1,
                "memory_bytes": 128u64 << 20,
                "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            }}),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let vm = rest.wait_vm_phase(&vm_id, "running", BOOT).await;
    let source = vm["node_id"].as_str().unwrap().to_string();
    let (s, t) = if source == node_ids[0] {
        (0, 1)
    } else {
        (1, 0)
    };
    let target = node_ids[t].clone();

    let on_source = GuestConsole::open(&hosts[s].endpoints.vmm, &vm_id).await;
    on_source.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;
    // Typed with `""` inside, so the echo of the typed line never matches what is waited for.
    on_source
        .send("(i=0; while true; do i=$((i+1)); echo COUNT-$i; sleep 1; done) &\n")
        .await;
    on_source.wait_for("COUNT-2", BOOT).await;
    on_source
        .send("echo UP\"\"BEFORE $(cut -d' ' -f1 /proc/uptime)\n")
        .await;
    on_source.wait_for("UPBEFORE ", BOOT).await;
    let path = format!("/v1/vms/{vm_id}/migrate");

    // 1. Refusals, with the reason.
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            &path,
            Some(json!({"node": source.clone()})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already runs"),
        "{body}"
    );
    let (status, body) = rest
        .call(
            reqwest::Method::POST,
            &path,
            Some(json!({"node": "nowhere"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // 2. The target's agent is down: the migration fails, the VM runs on where it was.
    let endpoint_before =
        rest.get(&format!("/v1/nodes/{target}")).await["status"]["console_endpoint"].clone();
    agents[t].take().unwrap().kill();
    let started = rest.post(&path, json!({"node": target.clone()})).await;
    assert_eq!(started["migration"]["phase"], "pending", "{started:#}");
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    assert!(
        started["migration"].get("grant_token").is_none(),
        "the grant's secret is never shown: {started:#}"
    );
    let failed = wait_migration(&rest, &vm_id, "failed").await;
    assert_eq!(failed["node_id"], json!(source), "{failed:#}");
    let reason = failed["migration"]["error"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "a failed migration says why: {failed:#}"
    );
    let count = on_source.count();
    on_source
        .wait_for(&format!("COUNT-{}", count + 2), BOOT)
        .await;
    let here = vms_on(&hosts[s].endpoints.vmm).await;
    assert_eq!(here.len(), 1, "{here:?}");
    assert_eq!(here[0].state, vmm::VmState::Running as i32, "{here:?}");
    agents[t] = Some(Agent::start(configs[t].clone()));
    // What the target may have prepared is gone once its agent is back.
    wait_until_async(
        "the target to hold no copy of the VM",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[t].endpoints.vmm.clone();
            async move { vms_on(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;
    // Back: registered again (with the endpoint of its new listener) and online.
    wait_until_async("the target back online", Duration::from_secs(60), || {
        let (rest, target, before) = (rest.clone(), target.clone(), endpoint_before.clone());
        async move {
            let node = rest.get(&format!("/v1/nodes/{target}")).await;
            (node["status"]["state"] == "online" && node["status"]["console_endpoint"] != before)
                .then_some(())
        }
    })
    .await;

    // 3. The migration the scheduler targets: the guest moves and counts on.
    let started = rest.post(&path, json!({})).await;
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    let done = wait_migration(&rest, &vm_id, "completed").await;
    assert_eq!(done["node_id"], json!(target), "{done:#}");
    let migration = &done["migration"];
    assert_eq!(migration["source_node_id"], json!(source));
    assert!(migration["downtime_ms"].is_u64(), "{done:#}");
    assert!(
        migration["bytes_transferred"].as_u64().unwrap_or(0) > 0,
        "{done:#}"
    );
    assert!(migration["finished_at"].is_string(), "{done:#}");
    let last_on_source = on_source.count();
    let on_target = GuestConsole::open(&hosts[t].endpoints.vmm, &vm_id).await;
    on_target
        .wait_for(&format!("COUNT-{}", last_on_source + 2), BOOT)
        .await;
    on_target
        .send("echo UP\"\"AFTER $(cut -d' ' -f1 /proc/uptime)\n")
        .await;
    let after = on_target.wait_for("UPAFTER ", BOOT).await;
    let (before, after_up) = (
        uptime_of(&on_source.text(), "UPBEFORE "),
        uptime_of(&after, "UPAFTER "),
    );
    assert!(after_up > before, "uptime went on: {before} -> {after_up}");
    assert!(
        !after.contains("MVIRT-GUEST-BOOTED"),
        "no second boot on the target:\n{after}"
    );
    // Exactly one hypervisor runs the VM: the source's paused copy goes.
    wait_until_async(
        "the source's paused copy to be deleted",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[s].endpoints.vmm.clone();
            async move { vms_on(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;
    let there = vms_on(&hosts[t].endpoints.vmm).await;
    assert_eq!(there.len(), 1, "{there:?}");
    assert_eq!(there[0].state, vmm::VmState::Running as i32, "{there:?}");
    rest.wait_vm_phase(&vm_id, "running", Duration::from_secs(60))
        .await;
    let volume = rest
        .get(&format!(
            "/v1/volumes/{}",
            done["spec"]["volume_ids"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        volume["node_id"],
        json!(target),
        "the disk moved with the VM"
    );

    // 4. Back to the first node, whose answers to the switch-over are lost and whose agent
    // dies right after it let the guest run.
    let (s, t) = (t, s);
    let (source, target) = (target, source);
    mvirt_node::transfer::lose_migration_answers(&target, true);
    let started = rest.post(&path, json!({})).await;
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    let resumed_there = wait_until_async("the guest to run on the target", MIGRATION, || {
        let endpoint = hosts[t].endpoints.vmm.clone();
        async move {
            let vms = vms_on(&endpoint).await;
            vms.iter()
                .any(|vm| vm.state == vmm::VmState::Running as i32)
                .then_some(vms)
        }
    })
    .await;
    // Answers stay lost until the agent is started again: the killed agent's peer server may
    // still be winding down (graceful shutdown) and must not answer a retry meanwhile.
    agents[t].take().unwrap().kill();
    assert_eq!(resumed_there.len(), 1, "{resumed_there:?}");
    let on_new = GuestConsole::open(&hosts[t].endpoints.vmm, &vm_id).await;
    // The source must not resume its paused copy while the target cannot tell it whether it
    // runs the VM: exactly one running copy the whole time (12 s: the agent must be back
    // before the API counts its node as lost, LOST_AFTER).
    on_new.wait_for("COUNT-", BOOT).await;
    let count_at_kill = on_new.count();
    let watch_until = std::time::Instant::now() + Duration::from_secs(12);
    let mut waiting = Value::Null;
    while std::time::Instant::now() < watch_until {
        let (here, there) = (
            vms_on(&hosts[s].endpoints.vmm).await,
            vms_on(&hosts[t].endpoints.vmm).await,
        );
        let running = here
            .iter()
            .chain(there.iter())
            .filter(|vm| vm.state == vmm::VmState::Running as i32)
            .count();
        assert_eq!(running, 1, "one running copy:\n{here:?}\n{there:?}");
        assert_eq!(there[0].state, vmm::VmState::Running as i32, "{there:?}");
        waiting = rest.get(&format!("/v1/vms/{vm_id}")).await;
        assert_eq!(waiting["node_id"], json!(source), "{waiting:#}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(waiting["migration"]["phase"], "completing", "{waiting:#}");
    let reason = waiting["migration"]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("stays paused"), "{waiting:#}");
    assert!(
        on_new.count() > count_at_kill,
        "the guest counts on the target meanwhile"
    );
    mvirt_node::transfer::lose_migration_answers(&target, false);
    agents[t] = Some(Agent::start(configs[t].clone()));
    let done = wait_migration(&rest, &vm_id, "completed").await;
    assert_eq!(done["node_id"], json!(target), "{done:#}");
    assert!(done["migration"]["error"].is_null(), "{done:#}");
    wait_until_async(
        "the source's paused copy to be deleted",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[s].endpoints.vmm.clone();
            async move { vms_on(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;
    let there = vms_on(&hosts[t].endpoints.vmm).await;
    assert_eq!(there.len(), 1, "{there:?}");
    assert_eq!(there[0].state, vmm::VmState::Running as i32, "{there:?}");
    let count = on_new.count();
    on_new.wait_for(&format!("COUNT-{}", count + 2), BOOT).await;
    assert!(
        !on_new.text().contains("MVIRT-GUEST-BOOTED"),
        "no second boot:\n{}",
        on_new.text()
    );

    // 5. The source's agent killed in the middle of the stream.
    let (s, t) = (t, s);
    let (source, target) = (target, source);
    on_new
        .send("dd if=/dev/urandom of=/src bs=1M count=32 2>/dev/null; echo DIRTY\"\"READY\n")
        .await;
    on_new.wait_for("DIRTYREADY", BOOT).await;
    on_new
        .send("(while [ ! -e /stop ]; do dd if=/src of=/dirty bs=1M conv=notrunc 2>/dev/null; done; echo DIRTY\"\"STOPPED) &\n")
        .await;
    // Both nodes online again and the VM running where it is, as the API sees it.
    rest.wait_nodes_online(&["node-a", "node-b"]).await;
    rest.wait_vm_phase(&vm_id, "running", Duration::from_secs(60))
        .await;
    let started = rest.post(&path, json!({})).await;
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    wait_until_async("the stream to run", MIGRATION, || {
        let endpoint = hosts[s].endpoints.vmm.clone();
        async move {
            let vms = vms_on(&endpoint).await;
            vms.iter()
                .any(|vm| vm.state_reason == "migrating")
                .then_some(())
        }
    })
    .await;
    let mid = vms_on(&hosts[s].endpoints.vmm).await;
    assert!(
        mid.iter().any(|vm| vm.state_reason == "migrating"),
        "still streaming: {mid:?}"
    );
    agents[s].take().unwrap().kill();
    let copies = |what: &'static str| {
        let endpoints = [
            hosts[s].endpoints.vmm.clone(),
            hosts[t].endpoints.vmm.clone(),
        ];
        async move {
            let (here, there) = (vms_on(&endpoints[0]).await, vms_on(&endpoints[1]).await);
            let running: Vec<_> = here
                .iter()
                .map(|vm| (0, vm))
                .chain(there.iter().map(|vm| (1, vm)))
                .filter(|(_, vm)| vm.state == vmm::VmState::Running as i32)
                .map(|(i, vm)| (i, vm.state_reason.clone()))
                .collect();
            assert!(
                running.len() <= 1,
                "{what}: at most one running copy:\n{here:?}\n{there:?}"
            );
            running
        }
    };
    // Without its agent the stream breaks: mvirt-vmm resumes the guest on the source — or,
    // when the source's hypervisor had written its last bytes into the socket already (it
    // paused the guest: "migrated away"), nothing runs it until the restarted agent settled
    // with the target. Never two.
    let watch_until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < watch_until {
        copies("source agent killed").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = copies("source agent killed").await;
    eprintln!(
        "after the source agent's kill: running {running:?}; source {:?}; target {:?}",
        vms_on(&hosts[s].endpoints.vmm).await,
        vms_on(&hosts[t].endpoints.vmm).await
    );
    agents[s] = Some(Agent::start(configs[s].clone()));
    let ended = wait_until_async("the migration to end", MIGRATION, || {
        let (rest, path) = (rest.clone(), format!("/v1/vms/{vm_id}"));
        async move {
            let vm = rest.get(&path).await;
            let phase = vm["migration"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (phase == "failed" || phase == "completed").then_some(vm)
        }
    })
    .await;
    let node = ended["node_id"].as_str().unwrap().to_string();
    let (home, away) = if node == source { (s, t) } else { (t, s) };
    wait_until_async(
        "one copy, on the VM's node",
        Duration::from_secs(60),
        || {
            let copies = copies("after the restart");
            let away = hosts[away].endpoints.vmm.clone();
            async move {
                let running = copies.await;
                let gone = vms_on(&away).await.is_empty();
                (gone && running.len() == 1).then_some(())
            }
        },
    )
    .await;
    let on_home = if home == s {
        on_new
    } else {
        GuestConsole::open(&hosts[home].endpoints.vmm, &vm_id).await
    };
    let count = on_home.count();
    on_home
        .wait_for(&format!("COUNT-{}", count + 2), BOOT)
        .await;
    on_home.send("touch /stop\n").await;
    on_home.wait_for("DIRTYSTOPPED", BOOT).await;
    eprintln!(
        "the source agent's kill mid-stream ended as {}",
        ended["migration"]
    );
    assert!(
        !on_home.text().contains("MVIRT-GUEST-BOOTED"),
        "no second boot ({}):\n{}",
        ended["migration"],
        on_home.text()
    );

    // 6. The target's agent killed mid-stream, its heartbeat gone with it.
    let (s, t) = (home, away);
    let (source, target) = (node_ids[s].clone(), node_ids[t].clone());
    rest.wait_nodes_online(&["node-a", "node-b"]).await;
    rest.wait_vm_phase(&vm_id, "running", Duration::from_secs(60))
        .await;
    on_home
        .send("rm -f /stop; (while [ ! -e /stop ]; do dd if=/src of=/dirty bs=1M conv=notrunc 2>/dev/null; done; echo AGAIN\"\"STOPPED) &\n")
        .await;
    let started = rest.post(&path, json!({"node": target.clone()})).await;
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    // Bytes flow to the target (not only the source's hypervisor waiting for the relay).
    let flowing = wait_until_async("the stream to carry bytes", MIGRATION, || {
        let (rest, path) = (rest.clone(), format!("/v1/vms/{vm_id}"));
        async move {
            let vm = rest.get(&path).await;
            (vm["migration"]["bytes_transferred"].as_u64().unwrap_or(0) > 0).then_some(vm)
        }
    })
    .await;
    assert_eq!(flowing["migration"]["phase"], "transferring", "{flowing:#}");
    // ... into the target's prepared hypervisor (before the prepare, the relay only buffers).
    let receiving = wait_until_async("the target's hypervisor to receive", MIGRATION, || {
        let endpoint = hosts[t].endpoints.vmm.clone();
        async move { vms_on(&endpoint).await.into_iter().find(|vm| vm.pid != 0) }
    })
    .await;
    // No pause here: on a quiet machine the whole stream takes about a second.
    let mid = vms_on(&hosts[s].endpoints.vmm).await;
    assert!(
        mid.iter().any(|vm| vm.state_reason == "migrating"),
        "still streaming: {mid:?}"
    );
    let endpoint_before =
        rest.get(&format!("/v1/nodes/{target}")).await["status"]["console_endpoint"].clone();
    agents[t].take().unwrap().kill();
    let endpoints = [
        hosts[s].endpoints.vmm.clone(),
        hosts[t].endpoints.vmm.clone(),
    ];
    let failed = {
        let watch_until = std::time::Instant::now() + Duration::from_secs(10);
        let mut samples = 0;
        loop {
            let running = running_copies(&endpoints).await;
            assert_eq!(
                running.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                [0],
                "exactly one running copy, the source's, while the target is lost"
            );
            samples += 1;
            let vm = rest.get(&format!("/v1/vms/{vm_id}")).await;
            if std::time::Instant::now() >= watch_until && vm["migration"]["phase"] == "failed" {
                eprintln!(
                    "target killed mid-stream (its hypervisor: {:?}, pid {}): {samples} \
                     samples, {}",
                    receiving.state_reason, receiving.pid, vm["migration"]
                );
                break vm;
            }
            assert!(
                std::time::Instant::now() < watch_until + MIGRATION,
                "the migration did not fail: {vm:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(failed["node_id"], json!(source), "{failed:#}");
    let reason = failed["migration"]["error"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "a failed migration says why: {failed:#}"
    );
    let count = on_home.count();
    on_home
        .wait_for(&format!("COUNT-{}", count + 2), BOOT)
        .await;
    assert!(
        !on_home.text().contains("MVIRT-GUEST-BOOTED"),
        "no second boot:\n{}",
        on_home.text()
    );
    on_home.send("touch /stop\n").await;
    on_home.wait_for("AGAINSTOPPED", BOOT).await;
    agents[t] = Some(Agent::start(configs[t].clone()));
    wait_until_async("the target back online", Duration::from_secs(60), || {
        let (rest, target, before) = (rest.clone(), target.clone(), endpoint_before.clone());
        async move {
            let node = rest.get(&format!("/v1/nodes/{target}")).await;
            (node["status"]["state"] == "online" && node["status"]["console_endpoint"] != before)
                .then_some(())
        }
    })
    .await;
    wait_until_async(
        "the restarted target to hold no copy of the VM",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[t].endpoints.vmm.clone();
            async move { vms_on(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;

    // 7. The target lost in the switch-over, after it resumed the guest: fenced, then failed
    // by the API, then resumed on the source.
    rest.wait_nodes_online(&["node-a", "node-b"]).await;
    rest.wait_vm_phase(&vm_id, "running", Duration::from_secs(60))
        .await;
    mvirt_node::transfer::lose_migration_answers(&target, true);
    let started = rest.post(&path, json!({"node": target.clone()})).await;
    assert_eq!(started["migration"]["target_node_id"], json!(target));
    let resumed_there = wait_until_async("the guest to run on the target", MIGRATION, || {
        let endpoint = hosts[t].endpoints.vmm.clone();
        async move {
            let vms = vms_on(&endpoint).await;
            vms.iter()
                .find(|vm| vm.state == vmm::VmState::Running as i32)
                .cloned()
        }
    })
    .await;
    proxies[t].cut();
    let cut_at = partition::epoch_secs();
    // (epoch seconds) the first sample without the target's copy, the last sample with the
    // source's copy paused, the first with it running.
    let (mut target_gone, mut source_paused, mut source_running) = (None, None, None);
    let deadline = std::time::Instant::now() + LOST_AFTER + MIGRATION;
    let ended = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the source did not resume"
        );
        let at = partition::epoch_secs();
        let running = running_copies(&endpoints).await;
        let here = running.iter().any(|(i, _)| *i == 0);
        let there = running.iter().any(|(i, _)| *i == 1);
        if !there && target_gone.is_none() {
            target_gone = Some(at);
        }
        if here {
            source_running.get_or_insert(at);
        } else if source_running.is_none() {
            source_paused = Some(at);
        }
        assert!(
            !(here && target_gone.is_none()),
            "the source resumed before the target's copy was gone"
        );
        if source_running.is_some() {
            break rest.get(&format!("/v1/vms/{vm_id}")).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (target_gone, source_running) = (target_gone.unwrap(), source_running.unwrap());
    let migration = &ended["migration"];
    assert_eq!(migration["phase"], "failed", "{ended:#}");
    assert_eq!(ended["node_id"], json!(source), "{ended:#}");
    let reason = migration["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "target node node-{} ({target}) is lost",
            ["a", "b"][t]
        )),
        "the reason names the lost node: {ended:#}"
    );
    let failed_at = rfc3339_secs(migration["finished_at"].as_str().unwrap());
    eprintln!(
        "switch-over lost: cut at {cut_at:.2}, target copy (pid {}) gone by {target_gone:.2} \
         (+{:.1} s), API failed at {failed_at:.2} (+{:.1} s), source paused until \
         {:.2}, running by {source_running:.2} (+{:.1} s)",
        resumed_there.pid,
        target_gone - cut_at,
        failed_at - cut_at,
        source_paused.unwrap_or(0.0),
        source_running - cut_at
    );
    // The API waited for the lost time (counted from the last heartbeat, at most one
    // heartbeat interval, 3 s, before the cut).
    let waited = failed_at - cut_at;
    assert!(
        (LOST_AFTER.as_secs_f64() - 3.5..LOST_AFTER.as_secs_f64() + 30.0).contains(&waited),
        "the API failed the migration {waited:.1} s after the cut"
    );
    assert!(
        target_gone < failed_at,
        "the target fenced its copy ({target_gone}) before the API failed the migration \
         ({failed_at})"
    );
    assert!(
        partition::process_gone(resumed_there.pid),
        "the target's hypervisor process is gone"
    );
    assert!(
        source_paused.is_some_and(|p| p >= target_gone.min(failed_at) - 0.5),
        "the source stayed paused while the target was fenced"
    );
    assert!(
        source_running >= failed_at,
        "the source resumed ({source_running}) only after the API failed the migration \
         ({failed_at})"
    );
    let count = on_home.count();
    on_home
        .wait_for(&format!("COUNT-{}", count + 2), BOOT)
        .await;
    assert!(
        !on_home.text().contains("MVIRT-GUEST-BOOTED"),
        "no second boot:\n{}",
        on_home.text()
    );
    // The partition heals: the fence lifts with a fresh spec, which no longer names the VM;
    // the target deletes what it held.
    mvirt_node::transfer::lose_migration_answers(&target, false);
    proxies[t].restore();
    wait_until_async(
        "the target to delete its fenced copy",
        Duration::from_secs(60),
        || {
            let endpoint = hosts[t].endpoints.vmm.clone();
            async move { vms_on(&endpoint).await.is_empty().then_some(()) }
        },
    )
    .await;
    assert_eq!(running_copies(&endpoints).await.len(), 1);

    rest.delete(&format!("/v1/vms/{vm_id}")).await;
    wait_until_async("the VM to be deleted", Duration::from_secs(60), || {
        let endpoints = [
            hosts[0].endpoints.vmm.clone(),
            hosts[1].endpoints.vmm.clone(),
        ];
        async move {
            (vms_on(&endpoints[0]).await.is_empty() && vms_on(&endpoints[1]).await.is_empty())
                .then_some(())
        }
    })
    .await;
    for agent in agents.iter_mut() {
        agent.take().unwrap().stop().await;
    }
    api.stop().await;
    mvirt_testsupport::process::assert_no_hypervisor_outlives(root, Duration::from_secs(10)).await;
    log_shutdown.trigger();
}
