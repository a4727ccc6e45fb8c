//! Security groups in the real kernel datapath, with the test as the VMs: allow and deny,
//! connection tracking (expiry, TCP reset), live rule changes, remote groups. Needs root (eBPF,
//! TAPs). The IPv6 cases are in `ipv6.rs`.
//!
//! "Not delivered" is proven without timing: the forbidden frame is sent first, then an
//! allowed marker frame on the same path; frames arrive in order, so the forbidden one must
//! have been dropped if the marker arrives alone. The NIC's datapath drop counter confirms it.

mod common;

use common::*;
use mvirt_ebpf::proto;
use mvirt_testsupport::netns::TestTap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_allow_and_deny_with_connection_tracking_and_live_rule_changes() {
    let mut h = Harness::start().await;
    let net = h.network("10.40.0.0/24", false).await;
    let client_sg = new_id();
    let web_sg = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: client_sg.clone(),
            name: "client".into(),
            rules: vec![],
        })
        .await
        .unwrap();
    let web_rules = vec![
        rule(
            proto::Direction::Ingress,
            proto::Protocol::Tcp,
            (80, 80),
            "10.40.0.0/24",
        ),
        rule(proto::Direction::Ingress, proto::Protocol::Icmp, (0, 0), ""),
    ];
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: web_sg.clone(),
            name: "web".into(),
            rules: web_rules.clone(),
        })
        .await
        .unwrap();
    let c = h.nic(&net, mac(0xc1), "10.40.0.2", &[&client_sg]).await;
    let s = h.nic(&net, mac(0x5e), "10.40.0.3", &[&web_sg]).await;
    let (cip, sip) = (v4("10.40.0.2"), v4("10.40.0.3"));
    let mut tc = TestTap::open(&c.tap_name);
    let mut ts = TestTap::open(&s.tap_name);
    let marker_to_s =
        |tc: &mut TestTap| tc.write_frame(&tcp4(mac(0xc1), cip, sip, 40999, 80, false, b"marker"));

    // TCP 80 allowed; its SYN-ACK reply reaches the client although the client allows no ingress.
    tc.write_frame(&tcp4(mac(0xc1), cip, sip, 40000, 80, false, b"syn80"));
    assert!(collect_until(&mut ts, b"syn80"));
    ts.write_frame(&tcp4(mac(0x5e), sip, cip, 80, 40000, true, b"synack"));
    assert!(
        collect_until(&mut tc, b"synack"),
        "reply to an allowed flow passes"
    );

    // Unsolicited inbound to the client is dropped (marker: another reply of the allowed flow).
    ts.write_frame(&tcp4(
        mac(0x5e),
        sip,
        cip,
        5555,
        40001,
        false,
        b"unsolicited",
    ));
    ts.write_frame(&tcp4(mac(0x5e), sip, cip, 80, 40000, true, b"marker"));
    assert!(!collect_until_marker_any(&mut tc)
        .iter()
        .any(|p| p == b"unsolicited"));

    // TCP 22 and UDP 53 are not allowed.
    tc.write_frame(&tcp4(mac(0xc1), cip, sip, 40002, 22, false, b"ssh"));
    tc.write_frame(&udp4(mac(0xc1), cip, sip, 40003, 53, b"dns"));
    marker_to_s(&mut tc);
    let got = collect_until_marker_any(&mut ts);
    assert!(
        !got.iter().any(|p| p == b"ssh" || p == b"dns"),
        "denied traffic arrived: {got:?}"
    );
    assert!(
        h.stats(&s).await.tx_drops >= 2,
        "drops are counted on the destination NIC"
    );

    // ICMP echo allowed, and its reply passes.
    tc.write_frame(&ping4(mac(0xc1), cip, sip, 99, 1));
    let req = ts
        .read_matching(WAIT, |f| seen4(f).filter(|x| x.proto == 1))
        .expect("ping reaches the server");
    assert_eq!(req.sport, 8);
    ts.write_frame(&pong4(mac(0x5e), sip, cip, 99, 1));
    tc.read_matching(WAIT, |f| seen4(f).filter(|x| x.proto == 1 && x.sport == 0))
        .expect("echo reply reaches the client");

    // Live change: allow UDP 53 -> it passes at once.
    let mut rules = web_rules.clone();
    rules.push(rule(
        proto::Direction::Ingress,
        proto::Protocol::Udp,
        (53, 53),
        "",
    ));
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: web_sg.clone(),
            rules,
        })
        .await
        .unwrap();
    tc.write_frame(&udp4(mac(0xc1), cip, sip, 40003, 53, b"dns"));
    assert!(
        collect_until(&mut ts, b"dns"),
        "UDP 53 passes after the rule was added"
    );

    // Live change: remove TCP 80 -> even the established flow is cut (conntrack pruned).
    let rules = vec![rule(
        proto::Direction::Ingress,
        proto::Protocol::Udp,
        (53, 53),
        "",
    )];
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: web_sg.clone(),
            rules,
        })
        .await
        .unwrap();
    tc.write_frame(&tcp4(
        mac(0xc1),
        cip,
        sip,
        40000,
        80,
        false,
        b"after-removal",
    ));
    tc.write_frame(&udp4(mac(0xc1), cip, sip, 40003, 53, b"marker"));
    assert!(!collect_until_marker_any(&mut ts)
        .iter()
        .any(|p| p == b"after-removal"));

    // Egress rules restrict the client: with only "egress UDP" allowed, its TCP is dropped.
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: client_sg.clone(),
            rules: vec![rule(
                proto::Direction::Egress,
                proto::Protocol::Udp,
                (0, 0),
                "",
            )],
        })
        .await
        .unwrap();
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: web_sg.clone(),
            rules: vec![rule(
                proto::Direction::Ingress,
                proto::Protocol::All,
                (0, 0),
                "",
            )],
        })
        .await
        .unwrap();
    tc.write_frame(&tcp4(mac(0xc1), cip, sip, 41000, 443, false, b"egress-tcp"));
    tc.write_frame(&udp4(mac(0xc1), cip, sip, 41001, 9999, b"marker"));
    assert!(!collect_until_marker_any(&mut ts)
        .iter()
        .any(|p| p == b"egress-tcp"));

    // Detaching the client's group lifts its restriction.
    h.client
        .detach_security_group(proto::DetachSecurityGroupRequest {
            nic_id: c.id.clone(),
            security_group_id: client_sg.clone(),
        })
        .await
        .unwrap();
    tc.write_frame(&tcp4(mac(0xc1), cip, sip, 41000, 443, false, b"egress-tcp"));
    assert!(collect_until(&mut ts, b"egress-tcp"));
}

/// Payloads (TCP or UDP) up to the marker.
fn collect_until_marker_any(tap: &mut TestTap) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    let found = tap.read_matching(WAIT, |f| {
        let s = seen4(f)?;
        payloads.push(s.payload.clone());
        (s.payload == b"marker").then_some(())
    });
    assert!(
        found.is_some(),
        "marker frame did not arrive on {}",
        tap.name()
    );
    payloads
}

/// Whether a frame with `payload` arrives within the wait.
fn collect_until(tap: &mut TestTap, payload: &[u8]) -> bool {
    tap.read_matching(WAIT, |f| seen4(f).filter(|s| s.payload == payload))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_connections_expire_after_the_idle_timeout() {
    let mut h = Harness::start_configured(|c| c.conntrack_timeout_secs = 1).await;
    let net = h.network("10.41.0.0/24", false).await;
    let closed = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: closed.clone(),
            name: "closed".into(),
            rules: vec![],
        })
        .await
        .unwrap();
    let c = h.nic(&net, mac(0xd1), "10.41.0.2", &[&closed]).await;
    let s = h.nic(&net, mac(0xd2), "10.41.0.3", &[]).await;
    let (cip, sip) = (v4("10.41.0.2"), v4("10.41.0.3"));
    let mut tc = TestTap::open(&c.tap_name);
    let mut ts = TestTap::open(&s.tap_name);

    tc.write_frame(&udp4(mac(0xd1), cip, sip, 5353, 9000, b"request"));
    assert!(collect_until(&mut ts, b"request"));
    ts.write_frame(&udp4(mac(0xd2), sip, cip, 9000, 5353, b"reply"));
    assert!(
        collect_until(&mut tc, b"reply"),
        "a reply within the timeout passes"
    );

    // Idle for longer than the timeout: the same "reply" is now unsolicited and dropped.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let drops = h.stats(&c).await.tx_drops;
    ts.write_frame(&udp4(mac(0xd2), sip, cip, 9000, 5353, b"late-reply"));
    tc.write_frame(&udp4(mac(0xd1), cip, sip, 5353, 9000, b"marker"));
    assert!(collect_until(&mut ts, b"marker"));
    ts.write_frame(&udp4(mac(0xd2), sip, cip, 9000, 5353, b"marker"));
    let got = collect_until_marker_any(&mut tc);
    assert!(
        !got.iter().any(|p| p == b"late-reply"),
        "expired state let a late reply in: {got:?}"
    );
    assert_eq!(h.stats(&c).await.tx_drops, drops + 1);
}

fn tcp_rst(
    src_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 0)
        .rst()
        .write(&mut out, b"rst")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reset_ends_the_tracked_connection() {
    let mut h = Harness::start().await;
    let net = h.network("10.42.0.0/24", false).await;
    let closed = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: closed.clone(),
            name: "closed".into(),
            rules: vec![],
        })
        .await
        .unwrap();
    let c = h.nic(&net, mac(0xe1), "10.42.0.2", &[&closed]).await;
    let s = h.nic(&net, mac(0xe2), "10.42.0.3", &[]).await;
    let (cip, sip) = (v4("10.42.0.2"), v4("10.42.0.3"));
    let mut tc = TestTap::open(&c.tap_name);
    let mut ts = TestTap::open(&s.tap_name);

    tc.write_frame(&tcp4(mac(0xe1), cip, sip, 41000, 80, false, b"syn"));
    assert!(collect_until(&mut ts, b"syn"));
    ts.write_frame(&tcp4(mac(0xe2), sip, cip, 80, 41000, true, b"synack"));
    assert!(collect_until(&mut tc, b"synack"));
    // The server resets the connection: the RST passes, and the flow is gone afterwards.
    ts.write_frame(&tcp_rst(mac(0xe2), sip, cip, 80, 41000));
    assert!(
        collect_until(&mut tc, b"rst"),
        "the RST itself reaches the client"
    );
    ts.write_frame(&tcp4(mac(0xe2), sip, cip, 80, 41000, true, b"after-rst"));
    // Marker: a reply of another, live flow.
    tc.write_frame(&tcp4(mac(0xe1), cip, sip, 41001, 80, false, b"syn2"));
    assert!(collect_until(&mut ts, b"syn2"));
    ts.write_frame(&tcp4(mac(0xe2), sip, cip, 80, 41001, true, b"marker"));
    let got = collect_until_marker_any(&mut tc);
    assert!(
        !got.iter().any(|p| p == b"after-rst"),
        "a reset flow still passed: {got:?}"
    );
}

/// Members of a remote group that live on other nodes are given as `remote_addresses`; their
/// traffic reaches this node through a route (here: a router NIC whose routed prefix holds the
/// "remote member" addresses, so the datapath's anti-spoofing accepts them as sources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_group_rules_allow_members_on_other_nodes_by_address_and_follow_updates_live() {
    let mut h = Harness::start().await;
    let net = h.network("10.41.0.0/24", false).await;
    let group_a = new_id();
    let group_b = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: group_b.clone(),
            name: "b".into(),
            rules: vec![],
        })
        .await
        .unwrap();
    let ssh_from_b = |addresses: &[&str]| proto::SecurityGroupRule {
        id: "00000000-0000-4000-8000-0000000000aa".into(),
        direction: proto::Direction::Ingress as i32,
        protocol: proto::Protocol::Tcp as i32,
        port_min: 22,
        port_max: 22,
        cidr: String::new(),
        remote_security_group_id: group_b.clone(),
        remote_addresses: addresses.iter().map(|a| a.to_string()).collect(),
    };
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: group_a.clone(),
            name: "a".into(),
            rules: vec![ssh_from_b(&["10.99.0.5", "10.98.0.0/28"])],
        })
        .await
        .unwrap();
    let router = h
        .nic_request(proto::CreateNicRequest {
            id: new_id(),
            network_id: net.clone(),
            name: String::new(),
            mac_address: mac_str(&mac(0x70)),
            ipv4_address: "10.41.0.2".into(),
            ipv6_address: String::new(),
            routed_prefixes: vec!["10.99.0.0/24".into(), "10.98.0.0/24".into()],
            hostname: "router".into(),
            security_group_ids: vec![],
        })
        .await;
    let server = h.nic(&net, mac(0x71), "10.41.0.3", &[&group_a]).await;
    let sip = v4("10.41.0.3");
    let mut tr = TestTap::open(&router.tap_name);
    let mut ts = TestTap::open(&server.tap_name);
    let ssh = |src: &str, sport: u16, payload: &[u8]| {
        tcp4(mac(0x70), v4(src), sip, sport, 22, false, payload)
    };

    // A listed remote member (host address and inside a listed CIDR) reaches port 22.
    tr.write_frame(&ssh("10.99.0.5", 40000, b"member"));
    assert!(collect_until(&mut ts, b"member"), "remote member allowed");
    tr.write_frame(&ssh("10.98.0.9", 40001, b"member-cidr"));
    assert!(collect_until(&mut ts, b"member-cidr"), "member in a CIDR");
    // Its reply passes back (connection tracking).
    ts.write_frame(&tcp4(
        mac(0x71),
        sip,
        v4("10.99.0.5"),
        22,
        40000,
        true,
        b"reply",
    ));
    assert!(collect_until(&mut tr, b"reply"));

    // An address that is not listed (same routed prefix) is dropped.
    let drops_before = h.stats(&server).await.tx_drops;
    tr.write_frame(&ssh("10.99.0.6", 40002, b"stranger"));
    tr.write_frame(&ssh("10.98.0.17", 40003, b"outside-cidr"));
    tr.write_frame(&ssh("10.99.0.5", 40000, b"marker"));
    let got = collect_until_marker_any(&mut ts);
    assert!(
        !got.iter().any(|p| p == b"stranger" || p == b"outside-cidr"),
        "addresses not in the list arrived: {got:?}"
    );
    assert!(h.stats(&server).await.tx_drops >= drops_before + 2);

    // The control plane updates the members: 10.99.0.5 left, 10.99.0.6 joined. The established
    // flow of the departed member is cut on live traffic, the new member gets through.
    let updated = h
        .client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: group_a.clone(),
            rules: vec![ssh_from_b(&["10.99.0.6"])],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.rules[0].remote_addresses, vec!["10.99.0.6"]);
    tr.write_frame(&ssh("10.99.0.5", 40000, b"after-update"));
    tr.write_frame(&ssh("10.98.0.9", 40001, b"after-update-cidr"));
    tr.write_frame(&ssh("10.99.0.6", 40004, b"marker"));
    let got = collect_until_marker_any(&mut ts);
    assert!(
        !got.iter()
            .any(|p| p == b"after-update" || p == b"after-update-cidr"),
        "removed members still pass: {got:?}"
    );

    // Local members still count: the router joins group B, so its own address is allowed.
    h.client
        .attach_security_group(proto::AttachSecurityGroupRequest {
            nic_id: router.id.clone(),
            security_group_id: group_b.clone(),
        })
        .await
        .unwrap();
    tr.write_frame(&ssh("10.41.0.2", 40005, b"local-member"));
    assert!(collect_until(&mut ts, b"local-member"));
}
