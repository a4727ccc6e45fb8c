//! Tracked flows (mvirt-ebpf connection tracking) move with a live-migrating VM's NICs
//! (issue 23). Two nodes whose datapaths are machines of their own (netns underlay, as in
//! tests/migration_nics.rs). VM X has a security group without rules: no ingress at all, so
//! the replies of a connection X opened pass only by X's tracked flow. X (node one) connects to
//! a server on VM Y (node two) that sends a line `ONE-<n>` every 100 ms, and prints them. X
//! migrates to Y's node: there the replies cross X's NIC locally, and only the flow handed over
//! (exported on the source once the guest paused, imported on the target before it runs, with
//! `NodePeer.CompleteMigration`) lets them in. The numbers must go on, on the SAME connection
//! (never restart, the client never ends).

mod common;
#[path = "common/underlay.rs"]
mod underlay;

use std::time::Duration;

use common::*;
use mvirt_testsupport::process::wait_until_async;
use serde_json::{json, Value};
use underlay::*;

const BOOT: Duration = Duration::from_secs(240);
const MIGRATION: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_the_vm_opened_survives_its_migration_behind_a_closed_security_group() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let underlay = Underlay::new(2);
    let (log_endpoint, _log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |_| {}).await;
    let mut hosts = Hosts(Vec::new());
    for (i, d) in ["a", "b"].iter().enumerate() {
        hosts.0.push(
            HostDaemons::start_in_netns(
                &root.join(d),
                &root.join("images"),
                &log_endpoint,
                &underlay.namespaces[i],
            )
            .await,
        );
    }
    let mut agents = Vec::new();
    for (i, (name, d)) in [("node-a", "a"), ("node-b", "b")].iter().enumerate() {
        agents.push(start_underlay_agent(
            name,
            &root.join(d),
            &hosts[i],
            &underlay,
            i,
            &api,
            &token,
        ));
    }
    let node_ids = rest.wait_nodes_online(&["node-a", "node-b"]).await;

    let network = rest
        .post(
            "/v1/networks",
            json!({"name": "one", "spec": {"ipv4_prefix": "10.83.0.0/24"}}),
        )
        .await;
    let network_id = network["id"].as_str().unwrap().to_string();
    let closed = rest
        .post(
            "/v1/security-groups",
            json!({"name": "closed", "spec": {"rules": []}}),
        )
        .await;
    let template_id = rest.create_template("tiny", &hosts[0].images).await;
    let vm_spec = |node: Option<&str>, groups: Value| {
        let mut spec = json!({
            "vcpus": 1,
            "memory_bytes": 128u64 << 20,
            "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            "network_interfaces": [{"network_id": network_id, "security_group_ids": groups}],
        });
        if let Some(node) = node {
            spec["node_selector"] = json!(node);
        }
        spec
    };
    // X unpinned (it migrates); Y pinned to the other node.
    let x = rest
        .post(
            "/v1/vms",
            json!({"name": "client", "spec": vm_spec(None, json!([closed["id"]]))}),
        )
        .await;
    let x_id = x["id"].as_str().unwrap().to_string();
    let x = rest.wait_vm_phase(&x_id, "running", BOOT).await;
    let s = node_ids
        .iter()
        .position(|n| *n == x["node_id"].as_str().unwrap())
        .unwrap();
    let t = 1 - s;
    let y = rest
        .post(
            "/v1/vms",
            json!({"name": "server", "spec": vm_spec(Some(&node_ids[t]), json!([]))}),
        )
        .await;
    let y_id = y["id"].as_str().unwrap().to_string();
    let y = rest.wait_vm_phase(&y_id, "running", BOOT).await;
    assert_eq!(y["node_id"], json!(node_ids[t]), "{y:#}");
    let x_address = nic_addresses(&rest, &x).await[0].1.clone();
    let y_address = nic_addresses(&rest, &y).await[0].1.clone();

    let x_console = GuestConsole::open(&hosts[s].endpoints.vmm, &x_id).await;
    let y_console = GuestConsole::open(&hosts[t].endpoints.vmm, &y_id).await;
    for (console, address, tag) in [(&x_console, &x_address, "X"), (&y_console, &y_address, "Y")] {
        console.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;
        console
            .send(&format!(
                "for i in $(seq 1 90); do ip -o addr show dev eth0 | grep -q 'inet {address}/' && \
                 break; sleep 1; done; ip -o addr; echo ADDR\"\"S-{tag}\n"
            ))
            .await;
        let seen = console.wait_for(&format!("ADDRS-{tag}"), BOOT).await;
        assert!(seen.contains(&format!("inet {address}/")), "{tag}: {seen}");
    }
    // Y serves the counter; X opens the connection and prints what it reads.
    y_console
        .send(
            "printf '#!/bin/sh\\ni=0; while true; do i=$((i+1)); echo ONE-$i; sleep 0.1; done\\n' > /tmp/ONE; \
             chmod +x /tmp/ONE; nc -l -p 7001 -e /tmp/ONE & echo SERV\"\"ING\n",
        )
        .await;
    y_console.wait_for("SERVING", BOOT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    x_console
        .send(&format!("(nc {y_address} 7001; echo NC1\"\"-ENDED) &\n"))
        .await;
    x_console.wait_for("ONE-20", BOOT).await;

    let path = format!("/v1/vms/{x_id}/migrate");
    let migration_started = std::time::Instant::now();
    let begun = rest.post(&path, json!({"node": node_ids[t].clone()})).await;
    assert_eq!(begun["migration"]["target_node_id"], json!(node_ids[t]));
    let done = wait_until_async("the migration to complete", MIGRATION, || {
        let (rest, path) = (rest.clone(), format!("/v1/vms/{x_id}"));
        async move {
            let vm = rest.get(&path).await;
            assert_ne!(vm["migration"]["phase"], "failed", "{vm:#}");
            (vm["migration"]["phase"] == "completed").then_some(vm)
        }
    })
    .await;
    let migration_secs = migration_started.elapsed().as_secs_f64();
    assert_eq!(done["node_id"], json!(node_ids[t]), "{done:#}");
    let before = *ticks(&x_console.text(), "ONE").last().unwrap();

    // On the target, X goes on reading the same stream: 100 more lines (10 s of counting).
    let on_target = GuestConsole::open(&hosts[t].endpoints.vmm, &x_id).await;
    let needle = format!("ONE-{}", before + 100);
    let text = on_target.wait_for(&needle, MIGRATION).await;
    let seen = ticks(&text, "ONE");
    assert!(
        seen.first().is_some_and(|n| *n > 20) && seen.windows(2).all(|w| w[1] > w[0]),
        "the numbers go on, never restart (one connection): {seen:?}"
    );
    let all = x_console.text() + &text;
    assert!(!all.contains("NC1-ENDED"), "the connection ended:\n{all}");
    eprintln!(
        "migration_flows: {before} lines before the switch; migration {migration_secs:.1} s, \
         downtime {} ms; test {:.0} s",
        done["migration"]["downtime_ms"],
        started.elapsed().as_secs_f64()
    );

    for agent in agents {
        agent.stop().await;
    }
    drop(hosts);
    drop(underlay);
}
