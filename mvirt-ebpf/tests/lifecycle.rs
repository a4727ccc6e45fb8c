//! Daemon restarts and the way out: forwarding survives a restart without losing a frame
//! (pinned TCX links and maps), and a public network reaches an "outside" host in a network
//! namespace through SNAT and NAT66 on the uplink.

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

/// An ICMPv6 echo request from a VM to the gateway MAC.
fn ping6(src_mac: [u8; 6], src: &str, dst: &str, id: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv6(v6(src).octets(), v6(dst).octets(), 64)
        .icmpv6_echo_request(id, 1)
        .write(&mut frame, b"mvirt-ping6")
        .unwrap();
    frame
}

/// (source, destination) of an ICMPv6 echo reply.
fn pong6(frame: &[u8]) -> Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match (p.net, p.transport) {
        (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Icmpv6(i)))
            if i.type_u8() == 129 =>
        {
            Some((ip.header().source_addr(), ip.header().destination_addr()))
        }
        _ => None,
    }
}

/// Whether nftables has `table` in `family`.
fn nft_table_exists(family: &str, table: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", family, table])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_network_reaches_an_outside_host_through_snat_and_nat66_and_a_private_one_does_not(
) {
    mvirt_testsupport::require_root();
    let outside = Netns::new("mvout");
    let mut veth = VethPair::new("mvu");
    veth.move_peer(&outside);
    mvirt_testsupport::netns::ip(&["addr", "add", "198.51.100.1/24", "dev", &veth.host]);
    outside.exec_ok(&["ip", "addr", "add", "198.51.100.2/24", "dev", &veth.peer]);
    mvirt_testsupport::netns::ip(&[
        "addr",
        "add",
        "fd6f:51:100::1/64",
        "dev",
        &veth.host,
        "nodad",
    ]);
    outside.exec_ok(&[
        "ip",
        "addr",
        "add",
        "fd6f:51:100::2/64",
        "dev",
        &veth.peer,
        "nodad",
    ]);

    // A table of the old family `ip` left by an earlier version is replaced by the `inet` one.
    let mut h = Harness::start_configured(|c| c.uplink = Some(veth.host.clone())).await;
    let table = h.config.nft_table.clone();
    mvirt_ebpf::ip::nft_script(&format!(
        "table ip {table} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n  }}\n}}\n"
    ))
    .unwrap();
    assert!(nft_table_exists("ip", &table));

    let dual =
        |id: &str, v4: &str, v6: &str, public: bool| mvirt_ebpf::proto::CreateNetworkRequest {
            id: id.into(),
            name: "net".into(),
            ipv4_prefix: v4.into(),
            ipv6_prefix: v6.into(),
            dns_servers: vec![],
            ntp_servers: vec![],
            public,
            tunnel_key: common::tunnel_key(),
        };
    let (public, private) = (new_id(), new_id());
    h.client
        .create_network(dual(&public, "10.77.0.0/24", "fd6e:77::/64", true))
        .await
        .unwrap();
    h.client
        .create_network(dual(&private, "10.78.0.0/24", "fd6e:78::/64", false))
        .await
        .unwrap();
    assert!(!nft_table_exists("ip", &table), "old ip table removed");
    assert!(nft_table_exists("inet", &table));
    let nic = |network: &str, m: u8, v4: &str, v6: &str| mvirt_ebpf::proto::CreateNicRequest {
        id: new_id(),
        network_id: network.into(),
        name: String::new(),
        mac_address: mac_str(&mac(m)),
        ipv4_address: v4.into(),
        ipv6_address: v6.into(),
        routed_prefixes: vec![],
        hostname: String::new(),
        security_group_ids: vec![],
    };
    let p = h
        .nic_request(nic(&public, 0x81, "10.77.0.5", "fd6e:77::5"))
        .await;
    let q = h
        .nic_request(nic(&private, 0x82, "10.78.0.5", "fd6e:78::5"))
        .await;
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

    // NAT66: the outside host only knows fd6f:51:100::/64, so it can only answer the uplink's
    // address; the reply is de-NATed back to the VM. The first echo may wait for neighbour
    // discovery on the uplink: retry until answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reply6 = loop {
        tp.write_frame(&ping6(mac(0x81), "fd6e:77::5", "fd6f:51:100::2", 61));
        if let Some(r) = tp.read_matching(Duration::from_millis(500), pong6) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no IPv6 echo reply from the outside host; host routes: {}",
            mvirt_testsupport::netns::ip(&["-6", "route", "show", "dev", &p.tap_name])
        );
    };
    assert_eq!(reply6, (v6("fd6f:51:100::2"), v6("fd6e:77::5")));
    // And a UDP socket on the outside host names the uplink's address as the sender.
    let (listener, bound) = udp_listener_in(&outside, "[fd6f:51:100::2]:5353");
    bound.recv_timeout(WAIT).expect("outside listener bound");
    let mut datagram = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(0x81), GATEWAY_MAC)
        .ipv6(v6("fd6e:77::5").octets(), v6("fd6f:51:100::2").octets(), 64)
        .udp(40000, 5353)
        .write(&mut datagram, b"who am i")
        .unwrap();
    tp.write_frame(&datagram);
    let (payload, sender) = listener
        .join()
        .unwrap()
        .expect("the datagram reached the outside host");
    assert_eq!(payload, b"who am i");
    assert_eq!(
        sender.ip(),
        std::net::IpAddr::V6(v6("fd6f:51:100::1")),
        "the outside host sees the uplink's address"
    );

    // A private network has no way out, in either family: the datapath drops the frames.
    let before = h.stats(&q).await.rx_drops;
    tq.write_frame(&ping4(
        mac(0x82),
        v4("10.78.0.5"),
        v4("198.51.100.2"),
        43,
        1,
    ));
    tq.write_frame(&ping6(mac(0x82), "fd6e:78::5", "fd6f:51:100::2", 62));
    tq.write_frame(&ping4(mac(0x82), v4("10.78.0.5"), v4("169.254.0.1"), 44, 1));
    let first = tq
        .read_matching(WAIT, |f| {
            seen4(f)
                .filter(|s| s.proto == 1 && s.sport == 0)
                .map(|s| s.src.to_string())
                .or_else(|| pong6(f).map(|(src, _)| src.to_string()))
        })
        .expect("gateway echo reply (marker)");
    assert_eq!(first, "169.254.0.1", "only the gateway answered");
    assert_eq!(h.stats(&q).await.rx_drops, before + 2);

    // A restart keeps the table (idempotent) and the way out.
    h.restart().await;
    assert!(nft_table_exists("inet", &table));
    tp.write_frame(&ping6(mac(0x81), "fd6e:77::5", "fd6f:51:100::2", 63));
    assert_eq!(
        tp.read_matching(WAIT, pong6),
        Some((v6("fd6f:51:100::2"), v6("fd6e:77::5")))
    );
}

type UdpListener = std::thread::JoinHandle<Option<(Vec<u8>, std::net::SocketAddr)>>;

/// A UDP socket bound to `addr` inside `ns` (on its own thread, which enters the namespace):
/// the first datagram and its sender, or `None` after the wait. The channel says "bound".
fn udp_listener_in(ns: &Netns, addr: &str) -> (UdpListener, std::sync::mpsc::Receiver<()>) {
    let path = format!("/var/run/netns/{}", ns.name());
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns handle");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let socket = std::net::UdpSocket::bind(addr).expect("bind in the outside namespace");
        socket.set_read_timeout(Some(WAIT)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    });
    (handle, rx)
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
            tunnel_key: common::tunnel_key(),
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
