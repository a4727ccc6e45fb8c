//! Daemon restarts and the way out: forwarding survives a restart without losing a frame
//! (pinned TCX links and maps), and a public network reaches an "outside" host in a network
//! namespace through SNAT on the uplink.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mvirt_testsupport::netns::{Netns, TestTap, VethPair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_continues_without_loss_while_the_daemon_restarts() {
    let mut h = Harness::start().await;
    let net = h.network("10.60.0.0/24", false).await;
    let a = h.nic(&net, mac(0x71), "10.60.0.2", &[]).await;
    let b = h.nic(&net, mac(0x72), "10.60.0.3", &[]).await;
    // A deep queue on the receiving TAP, so a reader starved by a busy machine loses nothing
    // (the ring is sized when the TAP is opened).
    mvirt_testsupport::netns::ip(&["link", "set", "dev", &b.tap_name, "txqueuelen", "20000"]);
    let mut tb = TestTap::open(&b.tap_name);
    let ta = TestTap::open(&a.tap_name);

    // A "VM" sends numbered frames every millisecond while the daemon stops and starts again.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut ta = ta;
        std::thread::spawn(move || {
            let mut seq: u32 = 0;
            while !stop.load(Ordering::Relaxed) || seq < 50 {
                let payload = seq.to_be_bytes();
                ta.write_frame(&udp4(
                    mac(0x71),
                    v4("10.60.0.2"),
                    v4("10.60.0.3"),
                    7,
                    7,
                    &payload,
                ));
                seq += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (ta, seq)
        })
    };
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(f) = tb.read_frame(Duration::from_secs(3)) {
            if let Some(s) = seen4(&f).filter(|s| s.dport == 7) {
                got.push(u32::from_be_bytes(s.payload[..4].try_into().unwrap()));
            }
        }
        (tb, got)
    });
    h.stop().await;
    // While no daemon runs, the kernel keeps forwarding with the pinned program and maps.
    h.restart().await;
    stop.store(true, Ordering::Relaxed);
    let (mut ta, sent) = writer.join().unwrap();
    let (mut tb, got) = reader.join().unwrap();
    let expected: Vec<u32> = (0..sent).collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "frames lost across the restart: sent {sent}, got {}",
        got.len()
    );
    assert_eq!(got, expected);

    // The restarted daemon serves the same NICs (DHCP is answered again, stats continue).
    let stats = h.stats(&b).await;
    assert!(
        stats.tx_packets >= u64::from(sent),
        "counters survived the restart: {stats:?}"
    );
    ta.write_frame(&ping4(mac(0x71), v4("10.60.0.2"), v4("169.254.0.1"), 1, 1));
    ta.read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 1 && s.sport == 0))
        .expect("the restarted responder answers");
    let nics = h
        .client
        .list_nics(mvirt_ebpf::proto::ListNicsRequest {
            network_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .nics;
    assert_eq!(nics.len(), 2);
    tb.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_network_reaches_an_outside_host_through_snat_and_a_private_one_does_not() {
    mvirt_testsupport::require_root();
    let outside = Netns::new("mvout");
    let mut veth = VethPair::new("mvu");
    veth.move_peer(&outside);
    mvirt_testsupport::netns::ip(&["addr", "add", "198.51.100.1/24", "dev", &veth.host]);
    outside.exec_ok(&["ip", "addr", "add", "198.51.100.2/24", "dev", &veth.peer]);

    let mut h = Harness::start_with(Some(veth.host.clone())).await;
    let public = h.network("10.77.0.0/24", true).await;
    let private = h.network("10.78.0.0/24", false).await;
    let p = h.nic(&public, mac(0x81), "10.77.0.5", &[]).await;
    let q = h.nic(&private, mac(0x82), "10.78.0.5", &[]).await;
    let mut tp = TestTap::open(&p.tap_name);
    let mut tq = TestTap::open(&q.tap_name);

    // The outside host only knows 198.51.100.0/24: its echo reply proves the source was NATed.
    tp.write_frame(&ping4(
        mac(0x81),
        v4("10.77.0.5"),
        v4("198.51.100.2"),
        42,
        1,
    ));
    let reply = tp
        .read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 1 && s.sport == 0))
        .expect("echo reply from the outside host");
    assert_eq!(reply.src, v4("198.51.100.2"));
    assert_eq!(reply.dst, v4("10.77.0.5"));

    // A private network has no way out: the datapath drops the frame.
    let before = h.stats(&q).await.rx_drops;
    tq.write_frame(&ping4(
        mac(0x82),
        v4("10.78.0.5"),
        v4("198.51.100.2"),
        43,
        1,
    ));
    tq.write_frame(&ping4(mac(0x82), v4("10.78.0.5"), v4("169.254.0.1"), 44, 1));
    let first = tq
        .read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 1 && s.sport == 0))
        .expect("gateway echo reply (marker)");
    assert_eq!(first.src, v4("169.254.0.1"), "only the gateway answered");
    assert_eq!(h.stats(&q).await.rx_drops, before + 1);
}

/// Node 1 is the daemon (host namespace); "node 2" is a network namespace whose kernel VXLAN
/// device uses the network's VNI and owns 10.95.1.5: the echo request leaves node 1
/// encapsulated, node 2's kernel answers, and the reply comes back through the daemon's VXLAN
/// device to the NIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_carry_ipv4_and_ipv6_of_a_network_to_another_node_over_vxlan_keyed_by_network() {
    mvirt_testsupport::require_root();
    let node2 = Netns::new("mvnode");
    let mut underlay = VethPair::new("mvg");
    underlay.move_peer(&node2);
    mvirt_testsupport::netns::ip(&["addr", "add", "198.18.95.1/24", "dev", &underlay.host]);
    node2.exec_ok(&["ip", "addr", "add", "198.18.95.2/24", "dev", &underlay.peer]);

    let mut h = Harness::start().await;
    let net = h.network("10.95.0.0/16", false).await;
    let key = h
        .client
        .get_network(mvirt_ebpf::proto::GetNetworkRequest { id: net.clone() })
        .await
        .unwrap()
        .into_inner()
        .tunnel_key;
    let nic = h.nic(&net, mac(0x95), "10.95.0.2", &[]).await;
    let net6 = new_id();
    h.client
        .create_network(mvirt_ebpf::proto::CreateNetworkRequest {
            id: net6.clone(),
            name: "v6".into(),
            ipv4_prefix: String::new(),
            ipv6_prefix: "fd00:95::/64".into(),
            dns_servers: vec![],
            ntp_servers: vec![],
            public: false,
        })
        .await
        .unwrap();
    let nic6 = h
        .nic_request(mvirt_ebpf::proto::CreateNicRequest {
            id: new_id(),
            network_id: net6.clone(),
            name: String::new(),
            mac_address: mac_str(&mac(0x96)),
            ipv4_address: String::new(),
            ipv6_address: "fd00:95::2".into(),
            routed_prefixes: vec![],
            hostname: String::new(),
            security_group_ids: vec![],
        })
        .await;
    h.client
        .create_route(mvirt_ebpf::proto::CreateRouteRequest {
            id: new_id(),
            network_id: net.clone(),
            destination: "10.95.1.0/24".into(),
            remote_node: "198.18.95.2".into(),
        })
        .await
        .expect("create route");

    let key_s = key.to_string();
    // Node 2 plays an mvirt node: its tunnel device carries the gateway MAC and knows the
    // gateway MAC as the next hop for the other node's prefix.
    node2.exec_ok(&[
        "ip",
        "link",
        "add",
        "vx1",
        "type",
        "vxlan",
        "id",
        &key_s,
        "local",
        "198.18.95.2",
        "remote",
        "198.18.95.1",
        "dstport",
        "4789",
    ]);
    node2.exec_ok(&[
        "ip",
        "link",
        "set",
        "vx1",
        "address",
        "02:6d:76:00:00:01",
        "up",
    ]);
    node2.exec_ok(&["ip", "addr", "add", "10.95.1.5/32", "dev", "vx1"]);
    node2.exec_ok(&["ip", "route", "add", "10.95.0.0/24", "dev", "vx1"]);
    node2.exec_ok(&[
        "ip",
        "neigh",
        "add",
        "10.95.0.2",
        "lladdr",
        "02:6d:76:00:00:01",
        "dev",
        "vx1",
    ]);

    let mut tap = TestTap::open(&nic.tap_name);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reply = loop {
        // The first packets may race the remote's neighbour/route set-up: retry until answered.
        tap.write_frame(&ping4(mac(0x95), v4("10.95.0.2"), v4("10.95.1.5"), 77, 1));
        if let Some(r) = tap.read_matching(Duration::from_millis(500), |f| {
            seen4(f).filter(|s| s.proto == 1 && s.sport == 0 && s.src == v4("10.95.1.5"))
        }) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no echo reply through the VXLAN tunnel; node 2: {} {}; node 1: {} {}",
            node2.exec_ok(&["ip", "-s", "link", "show", "vx1"]),
            node2.exec_ok(&["ip", "-s", "link", "show", &underlay.peer]),
            mvirt_testsupport::netns::ip(&["-s", "link", "show", &underlay.host]),
            mvirt_testsupport::netns::ip(&["-s", "-d", "link", "show", &h.config.tunnel_device]),
        );
    };
    assert_eq!(reply.dst, v4("10.95.0.2"));
    assert_eq!(reply.src_mac, GATEWAY_MAC);
    assert_eq!(reply.dst_mac, mac(0x95));

    // IPv6 inside the same tunnel: a v6 route to node 2, whose kernel answers the echo.
    h.client
        .create_route(mvirt_ebpf::proto::CreateRouteRequest {
            id: new_id(),
            network_id: net6.clone(),
            destination: "fd00:95:1::/64".into(),
            remote_node: "198.18.95.2".into(),
        })
        .await
        .expect("create IPv6 route");
    let key6 = h
        .client
        .get_network(mvirt_ebpf::proto::GetNetworkRequest { id: net6.clone() })
        .await
        .unwrap()
        .into_inner()
        .tunnel_key
        .to_string();
    node2.exec_ok(&[
        "ip",
        "link",
        "add",
        "vx2",
        "type",
        "vxlan",
        "id",
        &key6,
        "local",
        "198.18.95.2",
        "remote",
        "198.18.95.1",
        "dstport",
        "4789",
    ]);
    node2.exec_ok(&[
        "ip",
        "link",
        "set",
        "vx2",
        "address",
        "02:6d:76:00:00:01",
        "up",
    ]);
    node2.exec_ok(&[
        "ip",
        "addr",
        "add",
        "fd00:95:1::5/128",
        "dev",
        "vx2",
        "nodad",
    ]);
    node2.exec_ok(&["ip", "route", "add", "fd00:95::/64", "dev", "vx2"]);
    node2.exec_ok(&[
        "ip",
        "neigh",
        "add",
        "fd00:95::2",
        "lladdr",
        "02:6d:76:00:00:01",
        "dev",
        "vx2",
    ]);
    let mut tap6 = TestTap::open(&nic6.tap_name);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(0x96), GATEWAY_MAC)
            .ipv6(v6("fd00:95::2").octets(), v6("fd00:95:1::5").octets(), 64)
            .icmpv6_echo_request(9, 1)
            .write(&mut frame, b"v6 over vxlan")
            .unwrap();
        tap6.write_frame(&frame);
        let answered = tap6.read_matching(Duration::from_millis(500), |f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match (p.net, p.transport) {
                (
                    Some(etherparse::NetSlice::Ipv6(ip)),
                    Some(etherparse::TransportSlice::Icmpv6(i)),
                ) if i.type_u8() == 129 && ip.header().source_addr() == v6("fd00:95:1::5") => {
                    Some(())
                }
                _ => None,
            }
        });
        if answered.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no IPv6 echo reply through the VXLAN tunnel"
        );
    }

    let routes = h
        .client
        .list_routes(mvirt_ebpf::proto::ListRoutesRequest {
            network_id: net.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert_eq!(routes.len(), 1);
    let err = h
        .client
        .delete_network(mvirt_ebpf::proto::DeleteNetworkRequest { id: net.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_recreates_a_tap_deleted_behind_the_daemons_back() {
    let mut h = Harness::start().await;
    let net = h.network("10.61.0.0/24", false).await;
    let a = h.nic(&net, mac(0x73), "10.61.0.2", &[]).await;
    let b = h.nic(&net, mac(0x74), "10.61.0.3", &[]).await;
    h.stop().await;
    mvirt_testsupport::netns::ip(&["link", "del", &b.tap_name]);
    h.restart().await;
    assert!(
        mvirt_ebpf::ip::link_exists(&b.tap_name),
        "TAP re-created from the store"
    );
    let mut ta = TestTap::open(&a.tap_name);
    let mut tb = TestTap::open(&b.tap_name);
    ta.write_frame(&udp4(
        mac(0x73),
        v4("10.61.0.2"),
        v4("10.61.0.3"),
        1,
        2,
        b"after",
    ));
    tb.read_matching(WAIT, |f| seen4(f).filter(|s| s.payload == b"after"))
        .expect("forwarding to the re-created TAP");
    tb.write_frame(&ping4(mac(0x74), v4("10.61.0.3"), v4("169.254.0.1"), 3, 1));
    tb.read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 1 && s.sport == 0))
        .expect("the responder serves the re-created TAP");
}
