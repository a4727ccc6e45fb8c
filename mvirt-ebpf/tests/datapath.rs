//! The real kernel datapath, with the test as the VM: it opens the NICs' TAP devices and
//! writes/reads Ethernet frames. Needs root (eBPF, TAPs). This file: the IPv4 gateway (DHCP,
//! ARP, ping) and isolation between networks; security groups are in `security_groups.rs`,
//! IPv6 in `ipv6.rs`.
//!
//! "Not delivered" is proven without timing: the forbidden frame is sent first, then an
//! allowed marker frame on the same path; frames arrive in order, so the forbidden one must
//! have been dropped if the marker arrives alone. The NIC's datapath drop counter confirms it.

mod common;

use common::*;
use dhcproto::{v4, Decodable, Decoder, Encodable, Encoder};
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
