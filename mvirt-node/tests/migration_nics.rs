//! Live migration of a VM with NICs, between three nodes whose datapaths are machines of their
//! own (issue 23): each node's mvirt-ebpf and mvirt-vmm — so its TAPs, VXLAN device and QEMU
//! processes — run in a network namespace of its own (`HostDaemons::start_in_netns`), joined
//! by veth pairs to a bridge: the VXLAN underlay (the node's registered `address` is its veth
//! address); the agents, mvirt-zfs and mvirt-api stay in the host namespace and talk to the
//! daemons over unix sockets.
//!
//! VM X (two NICs on two networks, DHCP addresses from mvirt-ebpf) serves TCP: each connection
//! gets a line `<TAG>-<n>` every 100 ms. VM Y, on X's node (so that after the move its
//! connections cross the underlay and X's old node must route X's addresses to the new one),
//! holds ONE connection to each of X's addresses (`ONE`, `TWO`); VM Z on the third node holds
//! one to X's network-one address (`THREE`: its node's route to X must be replaced). X migrates
//! to the second node. Then:
//! - all three connections keep delivering on the SAME connection (the numbers go on, never
//!   restart, no client ends), X's addresses are unchanged, its uptime goes on (no second boot);
//! - the migration is `completed` with `downtime_ms`;
//! - exactly one hypervisor process runs X (on the target), the source's TAPs for X are gone
//!   and the target holds them;
//! - the source and the third node route X's addresses to the target's underlay address, the
//!   target has no route for them.

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

use mvirt_testsupport::guest::uptime_of;

/// The routes one node's mvirt-ebpf has.
async fn routes_on(ebpf_endpoint: &str) -> Vec<mvirt_ebpf::proto::Route> {
    mvirt_ebpf::proto::net_service_client::NetServiceClient::connect(ebpf_endpoint.to_string())
        .await
        .expect("connect mvirt-ebpf")
        .list_routes(mvirt_ebpf::proto::ListRoutesRequest::default())
        .await
        .expect("ListRoutes")
        .into_inner()
        .routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_connection_from_another_vm_survives_the_live_migration_of_its_server() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let underlay = Underlay::new(3);
    let (log_endpoint, _log_shutdown) = start_log(root).await;
    let (api, token, rest) = start_api(root, |_| {}).await;
    let mut hosts = Hosts(Vec::new());
    for (i, d) in ["a", "b", "c"].iter().enumerate() {
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
    for (i, (name, d)) in [("node-a", "a"), ("node-b", "b"), ("node-c", "c")]
        .iter()
        .enumerate()
    {
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
    let node_ids = rest
        .wait_nodes_online(&["node-a", "node-b", "node-c"])
        .await;

    let mut networks = Vec::new();
    // Network two is dual-stack: X's /128 there must follow X too.
    for (name, spec) in [
        ("one", json!({"ipv4_prefix": "10.81.0.0/24"})),
        (
            "two",
            json!({"ipv4_prefix": "10.82.0.0/24", "ipv6_prefix": "fd00:82::/64"}),
        ),
    ] {
        let network = rest
            .post("/v1/networks", json!({"name": name, "spec": spec}))
            .await;
        networks.push(network["id"].as_str().unwrap().to_string());
    }
    let template_id = rest.create_template("tiny", &hosts[0].images).await;
    let vm_spec = |selector: Option<&str>, nets: usize| {
        let interfaces: Vec<Value> = networks[..nets]
            .iter()
            .map(|n| json!({"network_id": n}))
            .collect();
        let mut spec = json!({
            "vcpus": 1,
            "memory_bytes": 128u64 << 20,
            "root_volume": {"template_id": template_id, "size_bytes": 32u64 << 20},
            "network_interfaces": interfaces,
        });
        if let Some(s) = selector {
            spec["node_selector"] = json!(s);
        }
        spec
    };
    let x = rest
        .post(
            "/v1/vms",
            json!({"name": "server", "spec": vm_spec(None, 2)}),
        )
        .await;
    let x_id = x["id"].as_str().unwrap().to_string();
    let x = rest.wait_vm_phase(&x_id, "running", BOOT).await;
    let source = x["node_id"].as_str().unwrap().to_string();
    let s = node_ids.iter().position(|n| *n == source).unwrap();
    // t: the target; c: the third node, where Z is.
    let (t, c) = ((s + 1) % 3, (s + 2) % 3);
    let target = node_ids[t].clone();
    // Y next to X: after the move its connections cross the underlay.
    let y = rest
        .post(
            "/v1/vms",
            json!({"name": "client", "spec": vm_spec(Some(&source), 2)}),
        )
        .await;
    let y_id = y["id"].as_str().unwrap().to_string();
    // Z on the third node, on network one only: it reaches X over the underlay before and
    // after, so its node's route for X must follow X.
    let z = rest
        .post(
            "/v1/vms",
            json!({"name": "far-client", "spec": vm_spec(Some(&node_ids[c]), 1)}),
        )
        .await;
    let z_id = z["id"].as_str().unwrap().to_string();
    let y = rest.wait_vm_phase(&y_id, "running", BOOT).await;
    assert_eq!(y["node_id"], json!(source), "{y:#}");
    let z = rest.wait_vm_phase(&z_id, "running", BOOT).await;
    assert_eq!(z["node_id"], json!(node_ids[c]), "{z:#}");
    let z_address = nic_addresses(&rest, &z).await[0].1.clone();

    let x_nics = nic_addresses(&rest, &x).await;
    let x_v6 = rest.get(&format!("/v1/nics/{}", x_nics[1].0)).await["spec"]["ipv6_address"]
        .as_str()
        .expect("X's NIC on network two has an IPv6 address")
        .to_string();
    let y_nics = nic_addresses(&rest, &y).await;
    let x_taps: Vec<String> = x_nics
        .iter()
        .map(|(id, _)| mvirt_common::names::tap_name(id))
        .collect();
    for tap in &x_taps {
        assert!(underlay.has_link(s, tap), "X's TAP {tap} on the source");
        assert!(!underlay.has_link(t, tap), "no TAP {tap} on the target yet");
    }

    // Both guests: eth0 from the init's DHCP, eth1 by DHCP here; wait for both addresses.
    let x_console = GuestConsole::open(&hosts[s].endpoints.vmm, &x_id).await;
    let y_console = GuestConsole::open(&hosts[s].endpoints.vmm, &y_id).await;
    for (console, nics, tag) in [(&x_console, &x_nics, "X"), (&y_console, &y_nics, "Y")] {
        console.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;
        console
            .send(&format!(
                "udhcpc -i eth1 -s /etc/udhcpc.script -t 5 -T 2 -A 5 -b >/dev/null 2>&1; \
                 for i in $(seq 1 90); do ip -o addr show dev eth0 | grep -q 'inet {}/' && \
                 ip -o addr show dev eth1 | grep -q 'inet {}/' && break; sleep 1; done; \
                 ip -o addr; echo ADDR\"\"S-{tag}\n",
                nics[0].1, nics[1].1
            ))
            .await;
        let seen = console.wait_for(&format!("ADDRS-{tag}"), BOOT).await;
        for (_, address) in nics.iter() {
            assert!(
                seen.contains(&format!("inet {address}/")),
                "{tag} got {address} by DHCP:\n{seen}"
            );
        }
    }

    let z_console = GuestConsole::open(&hosts[c].endpoints.vmm, &z_id).await;
    z_console.wait_for("MVIRT-GUEST-BOOTED", BOOT).await;
    z_console
        .send(&format!(
            "for i in $(seq 1 90); do ip -o addr show dev eth0 | grep -q 'inet {z_address}/' && break; \
             sleep 1; done; ip -o addr; echo ADDR\"\"S-Z\n"
        ))
        .await;
    let seen = z_console.wait_for("ADDRS-Z", BOOT).await;
    assert!(seen.contains(&format!("inet {z_address}/")), "{seen}");

    // X serves: one line every 100 ms to each connection; one server per client connection.
    x_console
        .send(
            "for n in ONE TWO THREE; do printf '#!/bin/sh\\ni=0; while true; do i=$((i+1)); echo %s-$i; sleep 0.1; done\\n' $n > /tmp/$n; chmod +x /tmp/$n; done; \
             nc -l -p 7001 -e /tmp/ONE & nc -l -p 7002 -e /tmp/TWO & nc -l -p 7003 -e /tmp/THREE & echo SERV\"\"ING\n",
        )
        .await;
    x_console.wait_for("SERVING", BOOT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    y_console
        .send(&format!(
            "(nc {} 7001; echo NC1\"\"-ENDED) & (nc {} 7002; echo NC2\"\"-ENDED) &\n",
            x_nics[0].1, x_nics[1].1
        ))
        .await;
    z_console
        .send(&format!(
            "(nc {} 7003; echo NC3\"\"-ENDED) &\n",
            x_nics[0].1
        ))
        .await;
    y_console.wait_for("ONE-20", BOOT).await;
    y_console.wait_for("TWO-20", BOOT).await;
    z_console.wait_for("THREE-20", BOOT).await;
    // Z's node routes X's network-one address to X's node.
    let via_source = routes_on(&hosts[c].endpoints.ebpf).await;
    let x0 = format!("{}/32", x_nics[0].1);
    assert!(
        via_source
            .iter()
            .any(|r| r.destination == x0 && r.remote_node == underlay.addresses[s]),
        "{via_source:?}"
    );
    x_console
        .send("echo UP\"\"BEFORE $(cut -d' ' -f1 /proc/uptime)\n")
        .await;
    x_console.wait_for("UPBEFORE ", BOOT).await;

    // Migrate X away from Y's node.
    let path = format!("/v1/vms/{x_id}/migrate");
    let before = (
        *ticks(&y_console.text(), "ONE").last().unwrap(),
        *ticks(&y_console.text(), "TWO").last().unwrap(),
    );
    let migration_started = std::time::Instant::now();
    let begun = rest.post(&path, json!({"node": target.clone()})).await;
    assert_eq!(begun["migration"]["target_node_id"], json!(target));
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
    assert_eq!(done["node_id"], json!(target), "{done:#}");
    let downtime = &done["migration"]["downtime_ms"];
    assert!(downtime.is_u64(), "{done:#}");
    let at_switch = (
        *ticks(&y_console.text(), "ONE").last().unwrap(),
        *ticks(&y_console.text(), "TWO").last().unwrap(),
        *ticks(&z_console.text(), "THREE").last().unwrap(),
    );

    // The same connections keep delivering: 100+ more lines each (10 s of the server's
    // counting), after the switch.
    for (console, tag, n) in [
        (&y_console, "ONE", at_switch.0),
        (&y_console, "TWO", at_switch.1),
        (&z_console, "THREE", at_switch.2),
    ] {
        let needle = format!("{tag}-{}", n + 100);
        let text = console.wait_for(&needle, MIGRATION).await;
        let seen = ticks(&text, tag);
        assert!(
            seen.windows(2).all(|w| w[1] > w[0]),
            "{tag}: the numbers never restart (one connection, one server process): {seen:?}"
        );
    }
    let text = y_console.text() + &z_console.text();
    assert!(
        !text.contains("NC1-ENDED") && !text.contains("NC2-ENDED") && !text.contains("NC3-ENDED"),
        "a client's connection ended:\n{text}"
    );

    // X: same addresses, no reboot, uptime went on.
    let x_after = rest.get(&format!("/v1/vms/{x_id}")).await;
    assert_eq!(nic_addresses(&rest, &x_after).await, x_nics);
    let on_target = GuestConsole::open(&hosts[t].endpoints.vmm, &x_id).await;
    on_target
        .send("echo UP\"\"AFTER $(cut -d' ' -f1 /proc/uptime); ip -o addr; echo ADDR\"\"S-AFTER\n")
        .await;
    let after = on_target.wait_for("ADDRS-AFTER", BOOT).await;
    let up_before = uptime_of(&x_console.text(), "UPBEFORE ");
    let up_after = uptime_of(&after, "UPAFTER ");
    assert!(
        up_after > up_before,
        "uptime went on: {up_before} -> {up_after}"
    );
    assert!(!after.contains("MVIRT-GUEST-BOOTED"), "{after}");
    for (_, address) in &x_nics {
        assert!(after.contains(&format!("inet {address}/")), "{after}");
    }

    // One hypervisor process for X, on the target; X's TAPs only there.
    wait_until_async(
        "X only on the target's hypervisor",
        Duration::from_secs(60),
        || {
            let (a, b) = (
                hosts[s].endpoints.vmm.clone(),
                hosts[t].endpoints.vmm.clone(),
            );
            let x_id = x_id.clone();
            async move {
                let on_source = hypervisor_vms(&a).await;
                let on_target = hypervisor_vms(&b).await;
                (!on_source.iter().any(|v| v.id == x_id)
                    && on_target.iter().filter(|v| v.id == x_id).count() == 1)
                    .then_some(())
            }
        },
    )
    .await;
    for tap in &x_taps {
        let tap = tap.clone();
        wait_until_async(
            &format!("X's TAP {tap} gone from the source"),
            Duration::from_secs(60),
            || {
                let gone = !underlay.has_link(s, &tap);
                async move { gone.then_some(()) }
            },
        )
        .await;
        assert!(underlay.has_link(t, &tap), "X's TAP {tap} on the target");
    }
    // The source routes X's addresses to the target over the underlay (the routes followed
    // the VM); the target has no route for them (its NICs are local there).
    // Z's node too, for the network it has (its route to X was replaced).
    let to_target = Some(underlay.addresses[t].as_str());
    for (i, via, nets) in [(s, to_target, 2), (t, None, 2), (c, to_target, 1)] {
        let mut want: Vec<(String, Option<&str>)> = x_nics[..nets]
            .iter()
            .map(|(_, a)| (format!("{a}/32"), via))
            .collect();
        if nets == 2 {
            want.push((format!("{x_v6}/128"), via));
        }
        let endpoint = hosts[i].endpoints.ebpf.clone();
        wait_until_async(
            &format!("node {i}'s routes for X's addresses: {want:?}"),
            Duration::from_secs(30),
            || {
                let (endpoint, want) = (endpoint.clone(), want.clone());
                async move {
                    let routes = routes_on(&endpoint).await;
                    want.iter()
                        .all(|(destination, via)| {
                            let found = routes.iter().find(|r| r.destination == *destination);
                            found.map(|r| r.remote_node.as_str()) == *via
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }
    // Y still on the source, its connections still going.
    let n = *ticks(&y_console.text(), "ONE").last().unwrap();
    y_console
        .wait_for(&format!("ONE-{}", n + 20), MIGRATION)
        .await;
    eprintln!(
        "migration_nics: lines before {before:?}, at the switch {at_switch:?}; migration {migration_secs:.1} s, \
         downtime {downtime} ms; test {:.0} s",
        started.elapsed().as_secs_f64()
    );

    for agent in agents {
        agent.stop().await;
    }
    drop(hosts);
    drop(underlay);
}
