//! IPv6 in the real kernel datapath, with the test as the VM: router advertisements,
//! neighbour answers, DHCPv6, routing, and security groups over IPv6. Needs root (eBPF, TAPs).

mod common;

use common::*;
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use etherparse::TransportSlice;
use mvirt_ebpf::proto;
use mvirt_testsupport::netns::TestTap;

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
