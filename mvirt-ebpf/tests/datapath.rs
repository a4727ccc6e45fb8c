//! The real kernel datapath, with the test as the VM: it opens the NICs' TAP devices and
//! writes/reads Ethernet frames. Needs root (eBPF, TAPs).
//!
//! "Not delivered" is proven without timing: the forbidden frame is sent first, then an
//! allowed marker frame on the same path; frames arrive in order, so the forbidden one must
//! have been dropped if the marker arrives alone. The NIC's datapath drop counter confirms it.

mod common;

use common::*;
use dhcproto::{v4, Decodable, Decoder, Encodable, Encoder};
use etherparse::TransportSlice;
use mvirt_ebpf::proto;
use mvirt_testsupport::netns::TestTap;

fn discover(
    mac: [u8; 6],
    xid: u32,
    kind: v4::MessageType,
    requested: Option<std::net::Ipv4Addr>,
) -> Vec<u8> {
    let mut msg = v4::Message::default();
    msg.set_opcode(v4::Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac);
    msg.opts_mut().insert(v4::DhcpOption::MessageType(kind));
    if let Some(ip) = requested {
        msg.opts_mut()
            .insert(v4::DhcpOption::RequestedIpAddress(ip));
    }
    let mut body = Vec::new();
    msg.encode(&mut Encoder::new(&mut body)).unwrap();
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac, [0xff; 6])
        .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
        .udp(68, 67)
        .write(&mut out, &body)
        .unwrap();
    out
}

fn dhcp_reply(tap: &mut TestTap, xid: u32) -> v4::Message {
    tap.read_matching(WAIT, |f| {
        let s = seen4(f)?;
        if s.proto != 17 || s.sport != 67 {
            return None;
        }
        let m = v4::Message::decode(&mut Decoder::new(&s.payload)).ok()?;
        (m.xid() == xid).then_some(m)
    })
    .expect("a DHCP reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_dhcp_arp_and_ping_from_a_vm() {
    let mut h = Harness::start().await;
    let net = h.network("10.20.0.0/24", false).await;
    let vm_mac = mac(0x11);
    let nic = h.nic(&net, vm_mac, "10.20.0.7", &[]).await;
    assert!(nic.tap_name.starts_with("mv") && nic.tap_name.len() <= 15);
    let mut tap = TestTap::open(&nic.tap_name);

    // DHCP: DISCOVER -> OFFER with every option, REQUEST -> ACK, wrong address -> NAK.
    tap.write_frame(&discover(vm_mac, 0x1234, v4::MessageType::Discover, None));
    let offer = dhcp_reply(&mut tap, 0x1234);
    assert_eq!(offer.opts().msg_type(), Some(v4::MessageType::Offer));
    assert_eq!(offer.yiaddr(), v4("10.20.0.7"));
    let opt = |code| offer.opts().get(code).cloned();
    assert_eq!(
        opt(v4::OptionCode::Router),
        Some(v4::DhcpOption::Router(vec![v4("169.254.0.1")]))
    );
    assert_eq!(
        opt(v4::OptionCode::SubnetMask),
        Some(v4::DhcpOption::SubnetMask(v4("255.255.255.255")))
    );
    assert_eq!(
        opt(v4::OptionCode::DomainNameServer),
        Some(v4::DhcpOption::DomainNameServer(vec![v4("10.53.0.53")]))
    );
    assert_eq!(
        opt(v4::OptionCode::NtpServers),
        Some(v4::DhcpOption::NtpServers(vec![v4("10.123.0.123")]))
    );
    assert_eq!(
        opt(v4::OptionCode::AddressLeaseTime),
        Some(v4::DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opt(v4::OptionCode::InterfaceMtu),
        Some(v4::DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        opt(v4::OptionCode::Hostname),
        Some(v4::DhcpOption::Hostname("vm".into()))
    );
    match opt(v4::OptionCode::ClasslessStaticRoute) {
        Some(v4::DhcpOption::ClasslessStaticRoute(routes)) => {
            assert!(routes.contains(&("169.254.0.1/32".parse().unwrap(), v4("0.0.0.0"))));
            assert!(routes.contains(&("0.0.0.0/0".parse().unwrap(), v4("169.254.0.1"))));
        }
        other => panic!("no classless static routes: {other:?}"),
    }

    tap.write_frame(&discover(
        vm_mac,
        0x1235,
        v4::MessageType::Request,
        Some(v4("10.20.0.7")),
    ));
    assert_eq!(
        dhcp_reply(&mut tap, 0x1235).opts().msg_type(),
        Some(v4::MessageType::Ack)
    );
    tap.write_frame(&discover(
        vm_mac,
        0x1236,
        v4::MessageType::Request,
        Some(v4("10.20.0.99")),
    ));
    assert_eq!(
        dhcp_reply(&mut tap, 0x1236).opts().msg_type(),
        Some(v4::MessageType::Nak)
    );

    // ARP for the gateway.
    let arp = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &vm_mac,
        &[10, 20, 0, 7],
        &[0; 6],
        &[169, 254, 0, 1],
    )
    .unwrap();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(vm_mac, [0xff; 6])
        .arp(arp)
        .write(&mut frame)
        .unwrap();
    tap.write_frame(&frame);
    let reply = tap
        .read_matching(WAIT, |f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.net {
                Some(etherparse::NetSlice::Arp(a))
                    if a.operation() == etherparse::ArpOperation::REPLY =>
                {
                    Some((
                        a.sender_hw_addr().to_vec(),
                        a.sender_protocol_addr().to_vec(),
                    ))
                }
                _ => None,
            }
        })
        .expect("an ARP reply");
    assert_eq!(reply, (GATEWAY_MAC.to_vec(), vec![169, 254, 0, 1]));

    // Ping the gateway.
    tap.write_frame(&ping4(vm_mac, v4("10.20.0.7"), v4("169.254.0.1"), 7, 1));
    let pong = tap
        .read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 1 && s.sport == 0))
        .expect("an echo reply");
    assert_eq!(pong.src, v4("169.254.0.1"));
    assert_eq!(pong.dst, v4("10.20.0.7"));
    assert_eq!(pong.payload, b"mvirt-ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_of_one_network_reach_each_other_and_networks_never_cross_even_with_the_same_prefix() {
    let mut h = Harness::start().await;
    let net_a = h.network("10.30.0.0/24", false).await;
    let net_b = h.network("10.30.0.0/24", false).await;
    let a1 = h.nic(&net_a, mac(0xa1), "10.30.0.2", &[]).await;
    let a2 = h.nic(&net_a, mac(0xa2), "10.30.0.3", &[]).await;
    let b1 = h.nic(&net_b, mac(0xb1), "10.30.0.2", &[]).await;
    let b2 = h.nic(&net_b, mac(0xb2), "10.30.0.4", &[]).await;
    let mut t_a1 = TestTap::open(&a1.tap_name);
    let mut t_a2 = TestTap::open(&a2.tap_name);
    let mut t_b1 = TestTap::open(&b1.tap_name);
    let mut t_b2 = TestTap::open(&b2.tap_name);

    // a1 -> a2: redirected, MACs rewritten (gateway as source).
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"hello a2",
    ));
    let got = t_a2
        .read_matching(WAIT, |f| seen4(f).filter(|s| s.proto == 17))
        .expect("a1 reaches a2");
    assert_eq!(got.payload, b"hello a2");
    assert_eq!(got.src_mac, GATEWAY_MAC);
    assert_eq!(got.dst_mac, mac(0xa2));
    assert_eq!(got.src, v4("10.30.0.2"));

    // a1 -> 10.30.0.4 exists only in network B: dropped. Marker a1 -> b? No: marker on b2's
    // path comes from b1, the legitimate neighbour.
    let drops_before = h.stats(&a1).await.rx_drops;
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.2"),
        v4("10.30.0.4"),
        5000,
        6000,
        b"cross",
    ));
    // b1 (same address as a1, other network) -> 10.30.0.3 exists only in network A: dropped.
    t_b1.write_frame(&udp4(
        mac(0xb1),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"cross",
    ));
    t_b1.write_frame(&udp4(
        mac(0xb1),
        v4("10.30.0.2"),
        v4("10.30.0.4"),
        5000,
        6000,
        b"marker",
    ));
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"marker",
    ));
    for tap in [&mut t_b2, &mut t_a2] {
        let payloads: Vec<Vec<u8>> = collect_until_marker(tap);
        assert!(
            !payloads.iter().any(|p| p == b"cross"),
            "a frame crossed networks on {}",
            tap.name()
        );
    }
    assert_eq!(
        h.stats(&a1).await.rx_drops,
        drops_before + 1,
        "the datapath dropped a1's cross-network frame"
    );

    // A spoofed source address (a2's, or one outside the NIC) is dropped.
    let drops_before = h.stats(&a1).await.rx_drops;
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.3"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"cross",
    ));
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.77"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"cross",
    ));
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"marker",
    ));
    assert!(!collect_until_marker(&mut t_a2)
        .iter()
        .any(|p| p == b"cross"));
    assert_eq!(h.stats(&a1).await.rx_drops, drops_before + 2);

    // Spoofed source MAC is dropped too.
    t_a1.write_frame(&udp4(
        mac(0xee),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"cross",
    ));
    t_a1.write_frame(&udp4(
        mac(0xa1),
        v4("10.30.0.2"),
        v4("10.30.0.3"),
        5000,
        6000,
        b"marker",
    ));
    assert!(!collect_until_marker(&mut t_a2)
        .iter()
        .any(|p| p == b"cross"));

    let s = h.stats(&a2).await;
    assert!(s.tx_packets >= 3, "a2 counted deliveries: {s:?}");
    assert!(s.tx_bytes > 0);
}

/// UDP payloads received on `tap` up to and including the one that says "marker".
pub fn collect_until_marker(tap: &mut TestTap) -> Vec<Vec<u8>> {
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

fn rule(
    direction: proto::Direction,
    protocol: proto::Protocol,
    ports: (u32, u32),
    cidr: &str,
) -> proto::SecurityGroupRule {
    proto::SecurityGroupRule {
        id: new_id(),
        direction: direction as i32,
        protocol: protocol as i32,
        port_min: ports.0,
        port_max: ports.1,
        cidr: cidr.into(),
        remote_security_group_id: String::new(),
        remote_addresses: vec![],
    }
}

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

fn icmpv6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    dst: &str,
    ty: etherparse::Icmpv6Type,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv6(v6(src).octets(), v6(dst).octets(), 255)
        .icmpv6(ty)
        .write(&mut out, body)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_gets_router_advertisements_neighbour_answers_dhcpv6_and_routing() {
    let mut h = Harness::start().await;
    let net = new_id();
    h.client
        .create_network(proto::CreateNetworkRequest {
            id: net.clone(),
            name: "v6".into(),
            ipv4_prefix: String::new(),
            ipv6_prefix: "fd00:42::/64".into(),
            dns_servers: vec!["fd00:53::53".into()],
            ntp_servers: vec![],
            public: false,
            tunnel_key: common::tunnel_key(),
        })
        .await
        .unwrap();
    let req = |m: [u8; 6], ip: &str| proto::CreateNicRequest {
        id: new_id(),
        network_id: net.clone(),
        name: String::new(),
        mac_address: mac_str(&m),
        ipv4_address: String::new(),
        ipv6_address: ip.into(),
        routed_prefixes: vec![],
        hostname: String::new(),
        security_group_ids: vec![],
    };
    let a = h.nic_request(req(mac(0x61), "fd00:42::10")).await;
    let b = h.nic_request(req(mac(0x62), "fd00:42::11")).await;
    let mut ta = TestTap::open(&a.tap_name);
    let mut tb = TestTap::open(&b.tap_name);
    let ll = "fe80::ff:fe00:61";

    // Router solicitation -> RA: managed + other flags, prefix information, RDNSS.
    ta.write_frame(&icmpv6(
        mac(0x61),
        [0x33, 0x33, 0, 0, 0, 2],
        ll,
        "ff02::2",
        etherparse::Icmpv6Type::RouterSolicitation,
        &[0; 4],
    ));
    let (flags, body) = ta
        .read_matching(WAIT, |f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.transport {
                Some(TransportSlice::Icmpv6(i)) if i.type_u8() == 134 => {
                    Some((i.bytes5to8()[1], i.payload().to_vec()))
                }
                _ => None,
            }
        })
        .expect("a router advertisement");
    assert_eq!(flags & 0xc0, 0xc0, "managed and other-config flags");
    let prefix_opt = body
        .windows(2)
        .position(|w| w == [3, 4])
        .expect("prefix information option");
    assert_eq!(
        &body[prefix_opt + 16..prefix_opt + 24],
        &v6("fd00:42::").octets()[..8]
    );
    assert!(
        body.windows(16).any(|w| w == v6("fd00:53::53").octets()),
        "RDNSS carries the DNS server"
    );

    // Neighbour solicitation for fe80::1 -> NA with the gateway MAC.
    let mut ns = v6("fe80::1").octets().to_vec();
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&mac(0x61));
    ta.write_frame(&icmpv6(
        mac(0x61),
        [0x33, 0x33, 0xff, 0, 0, 1],
        ll,
        "ff02::1:ff00:1",
        etherparse::Icmpv6Type::NeighborSolicitation,
        &ns,
    ));
    let na = ta
        .read_matching(WAIT, |f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.transport {
                Some(TransportSlice::Icmpv6(i)) if i.type_u8() == 136 => Some(i.payload().to_vec()),
                _ => None,
            }
        })
        .expect("a neighbour advertisement");
    assert_eq!(&na[..16], &v6("fe80::1").octets());
    assert_eq!(&na[18..24], &GATEWAY_MAC);

    // DHCPv6 SOLICIT with IA_NA -> ADVERTISE with the NIC's address.
    let mut solicit =
        dhcproto::v6::Message::new_with_id(dhcproto::v6::MessageType::Solicit, [1, 2, 3]);
    solicit
        .opts_mut()
        .insert(dhcproto::v6::DhcpOption::ClientId(vec![
            0, 3, 0, 1, 2, 0, 0, 0, 0, 0x61,
        ]));
    solicit
        .opts_mut()
        .insert(dhcproto::v6::DhcpOption::IANA(dhcproto::v6::IANA {
            id: 7,
            t1: 0,
            t2: 0,
            opts: dhcproto::v6::DhcpOptions::new(),
        }));
    let mut body = Vec::new();
    solicit.encode(&mut Encoder::new(&mut body)).unwrap();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(0x61), [0x33, 0x33, 0, 1, 0, 2])
        .ipv6(v6(ll).octets(), v6("ff02::1:2").octets(), 1)
        .udp(546, 547)
        .write(&mut frame, &body)
        .unwrap();
    ta.write_frame(&frame);
    let adv = ta
        .read_matching(WAIT, |f| {
            let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
            match p.transport {
                Some(TransportSlice::Udp(u)) if u.source_port() == 547 => {
                    dhcproto::v6::Message::decode(&mut Decoder::new(u.payload())).ok()
                }
                _ => None,
            }
        })
        .expect("a DHCPv6 advertise");
    assert_eq!(adv.msg_type(), dhcproto::v6::MessageType::Advertise);
    match adv.opts().get(dhcproto::v6::OptionCode::IANA) {
        Some(dhcproto::v6::DhcpOption::IANA(ia)) => {
            assert_eq!(ia.id, 7);
            match ia.opts.get(dhcproto::v6::OptionCode::IAAddr) {
                Some(dhcproto::v6::DhcpOption::IAAddr(addr)) => {
                    assert_eq!(addr.addr, v6("fd00:42::10"))
                }
                other => panic!("no IA address: {other:?}"),
            }
        }
        other => panic!("no IA_NA: {other:?}"),
    }

    // Ping fe80::1.
    let mut ping = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(0x61), GATEWAY_MAC)
        .ipv6(v6("fd00:42::10").octets(), v6("fe80::1").octets(), 64)
        .icmpv6_echo_request(5, 1)
        .write(&mut ping, b"ping6")
        .unwrap();
    ta.write_frame(&ping);
    ta.read_matching(WAIT, |f| {
        let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
        match (p.net, p.transport) {
            (Some(etherparse::NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i)))
                if i.type_u8() == 129 && ip.header().source_addr() == v6("fe80::1") =>
            {
                Some(())
            }
            _ => None,
        }
    })
    .expect("an ICMPv6 echo reply from the gateway");

    // IPv6 routing between the two NICs.
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(0x61), GATEWAY_MAC)
        .ipv6(v6("fd00:42::10").octets(), v6("fd00:42::11").octets(), 64)
        .udp(1000, 2000)
        .write(&mut frame, b"hello v6")
        .unwrap();
    ta.write_frame(&frame);
    tb.read_matching(WAIT, |f| {
        let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
        match p.transport {
            Some(TransportSlice::Udp(u)) if u.payload() == b"hello v6" => Some(()),
            _ => None,
        }
    })
    .expect("IPv6 frame routed from a to b");
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

fn v6_frame(
    src_mac: [u8; 6],
    src: &str,
    dst: &str,
    icmp_echo_id: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = etherparse::PacketBuilder::ethernet2(src_mac, GATEWAY_MAC).ipv6(
        v6(src).octets(),
        v6(dst).octets(),
        64,
    );
    match icmp_echo_id {
        Some(id) => b
            .icmpv6_echo_request(id, 1)
            .write(&mut out, payload)
            .unwrap(),
        None => b.udp(1000, 2000).write(&mut out, payload).unwrap(),
    }
    out
}

fn v6_payload(frame: &[u8]) -> Option<Vec<u8>> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.transport {
        Some(TransportSlice::Udp(u)) => Some(u.payload().to_vec()),
        Some(TransportSlice::Icmpv6(i)) => Some(i.payload().to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_security_groups_allow_icmpv6_echo_and_drop_other_traffic() {
    let mut h = Harness::start().await;
    let net = new_id();
    h.client
        .create_network(proto::CreateNetworkRequest {
            id: net.clone(),
            name: "v6sg".into(),
            ipv4_prefix: String::new(),
            ipv6_prefix: "fd00:43::/64".into(),
            dns_servers: vec![],
            ntp_servers: vec![],
            public: false,
            tunnel_key: common::tunnel_key(),
        })
        .await
        .unwrap();
    let sg = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: sg.clone(),
            name: "ping6".into(),
            rules: vec![rule(
                proto::Direction::Ingress,
                proto::Protocol::Icmpv6,
                (0, 0),
                "fd00:43::/64",
            )],
        })
        .await
        .unwrap();
    let req = |m: [u8; 6], ip: &str, sgs: Vec<String>| proto::CreateNicRequest {
        id: new_id(),
        network_id: net.clone(),
        name: String::new(),
        mac_address: mac_str(&m),
        ipv4_address: String::new(),
        ipv6_address: ip.into(),
        routed_prefixes: vec![],
        hostname: String::new(),
        security_group_ids: sgs,
    };
    let a = h.nic_request(req(mac(0x63), "fd00:43::10", vec![])).await;
    let b = h
        .nic_request(req(mac(0x64), "fd00:43::11", vec![sg.clone()]))
        .await;
    let mut ta = TestTap::open(&a.tap_name);
    let mut tb = TestTap::open(&b.tap_name);

    // UDP is not allowed; an echo request (identifier 134, an NDP type number) is.
    ta.write_frame(&v6_frame(
        mac(0x63),
        "fd00:43::10",
        "fd00:43::11",
        None,
        b"udp6",
    ));
    ta.write_frame(&v6_frame(
        mac(0x63),
        "fd00:43::10",
        "fd00:43::11",
        Some(134),
        b"marker",
    ));
    let mut got = Vec::new();
    tb.read_matching(WAIT, |f| {
        let p = v6_payload(f)?;
        got.push(p.clone());
        (p == b"marker").then_some(())
    })
    .expect("ICMPv6 echo passes the security group");
    assert!(!got.iter().any(|p| p == b"udp6"), "UDP passed: {got:?}");
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
