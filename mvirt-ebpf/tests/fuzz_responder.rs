//! Fuzzing the gateway responder (`responder::answer`), which parses every control frame a
//! guest sends: Ethernet, ARP, IPv4/IPv6, UDP, DHCPv4, DHCPv6, ICMP echo, NDP (NS, RS).
//! Three targets: arbitrary bytes (with the NIC's source MAC, so they pass the first check),
//! valid frames of every kind with random edits, and valid Ethernet/IP/UDP/ICMP headers around
//! random payloads (so the DHCP/NDP parsers themselves see garbage). Every case must return
//! without a panic, in time and within 1 MiB, and a reply must be a well-formed frame from the
//! gateway to the NIC (or the all-nodes group) no larger than a jumbo frame.
//!
//! Short run: `cargo test -p mvirt-ebpf --test fuzz_responder`. Long run:
//! `MVIRT_FUZZ_CASES=1000000 cargo test --release -p mvirt-ebpf --test fuzz_responder`
//! (see `mvirt_testsupport::fuzz` for the seed and single-case reruns).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dhcproto::{v4, v6, Encodable, Encoder};
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv6Type, LinkSlice, PacketBuilder,
    SlicedPacket,
};
use mvirt_ebpf::model::{GATEWAY_MAC, GATEWAY_V4, GATEWAY_V6};
use mvirt_ebpf::responder::{answer, NicConfig};
use mvirt_testsupport::fuzz::{bytes, mutate, CountingAlloc, Target};
use rand::rngs::StdRng;
use rand::Rng;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The responder reads frames into a buffer of this size (longer ones arrive cut).
const RECV_BUFFER: usize = 2048;

/// The CI run: ~3 s per target in a debug build on the shared 2-core machine.
const CI_CASES: u64 = 3000;

fn nic_config(rng: &mut StdRng) -> NicConfig {
    let mac = [2, 0, 0, 0, rng.gen(), rng.gen()];
    let dns = rng.gen_range(0..=8);
    NicConfig {
        nic_id: "fuzz".into(),
        mac,
        ipv4: rng
            .gen_bool(0.9)
            .then(|| Ipv4Addr::new(10, 0, rng.gen(), rng.gen())),
        ipv6: rng
            .gen_bool(0.7)
            .then(|| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, rng.gen(), rng.gen())),
        ipv4_prefix: rng
            .gen_bool(0.8)
            .then(|| "10.0.0.0/16".parse().expect("prefix")),
        ipv6_prefix: rng
            .gen_bool(0.6)
            .then(|| "fd00::/64".parse().expect("prefix")),
        dns_servers: (0..dns)
            .map(|i| {
                if rng.gen() {
                    IpAddr::V4(Ipv4Addr::new(10, 53, 0, i))
                } else {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x53, 0, 0, 0, 0, 0, i.into()))
                }
            })
            .collect(),
        ntp_servers: vec![IpAddr::V4(Ipv4Addr::new(10, 123, 0, 1))],
        hostname: if rng.gen() {
            "vm".into()
        } else {
            String::new()
        },
        lease_secs: rng.gen(),
        mtu: [0, 1280, 1450, 1500, 9000, u16::MAX][rng.gen_range(0..6)],
    }
}

/// The properties every answer has, whatever the guest sent.
fn check(cfg: &NicConfig, frame: &[u8]) {
    let Some(reply) = answer(cfg, frame) else {
        return;
    };
    // No amplification: an echo reply mirrors the request; DHCP replies and RAs are small.
    assert!(
        reply.len() <= frame.len().max(600),
        "a {}-byte reply to a {}-byte frame",
        reply.len(),
        frame.len()
    );
    let parsed = SlicedPacket::from_ethernet(&reply).expect("the reply is a well-formed frame");
    let Some(LinkSlice::Ethernet2(eth)) = parsed.link else {
        panic!("the reply is not Ethernet II");
    };
    assert_eq!(eth.source(), GATEWAY_MAC, "replies come from the gateway");
    let dst = eth.destination();
    assert!(
        dst == cfg.mac || dst[..2] == [0x33, 0x33],
        "a reply to {dst:02x?}, neither the NIC nor a multicast group"
    );
}

fn ethertype(rng: &mut StdRng) -> [u8; 2] {
    [[0x08, 0x06], [0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]][rng.gen_range(0..4)]
}

#[test]
fn arbitrary_frames_never_panic_hang_or_allocate_without_bound() {
    Target::new("responder/arbitrary", CI_CASES)
        .alloc_limit(1 << 20)
        .run(
            |rng| {
                let cfg = nic_config(rng);
                let mut frame = bytes(rng, 0..RECV_BUFFER);
                // Most frames get the NIC's source MAC and a control EtherType, or the
                // responder would drop them at the first check.
                if frame.len() >= 14 && rng.gen_bool(0.9) {
                    frame[6..12].copy_from_slice(&cfg.mac);
                    frame[12..14].copy_from_slice(&ethertype(rng));
                }
                (cfg, frame)
            },
            |(cfg, frame)| check(cfg, frame),
        );
}

fn dhcp4(rng: &mut StdRng, mac: [u8; 6]) -> Vec<u8> {
    let kinds = [
        v4::MessageType::Discover,
        v4::MessageType::Request,
        v4::MessageType::Inform,
        v4::MessageType::Release,
        v4::MessageType::Decline,
    ];
    let mut msg = v4::Message::default();
    msg.set_opcode(v4::Opcode::BootRequest)
        .set_xid(rng.gen())
        .set_chaddr(&mac);
    if rng.gen() {
        msg.set_flags(v4::Flags::default().set_broadcast());
    }
    let opts = msg.opts_mut();
    opts.insert(v4::DhcpOption::MessageType(
        kinds[rng.gen_range(0..kinds.len())],
    ));
    if rng.gen() {
        opts.insert(v4::DhcpOption::RequestedIpAddress(Ipv4Addr::from(
            rng.gen::<u32>(),
        )));
    }
    if rng.gen() {
        opts.insert(v4::DhcpOption::ParameterRequestList(vec![
            v4::OptionCode::SubnetMask,
            v4::OptionCode::Router,
            v4::OptionCode::ClasslessStaticRoute,
        ]));
    }
    let mut body = Vec::new();
    msg.encode(&mut Encoder::new(&mut body)).expect("encode");
    body
}

fn dhcp6(rng: &mut StdRng) -> Vec<u8> {
    let kinds = [
        v6::MessageType::Solicit,
        v6::MessageType::Request,
        v6::MessageType::Renew,
        v6::MessageType::Rebind,
        v6::MessageType::Confirm,
        v6::MessageType::InformationRequest,
        v6::MessageType::Release,
    ];
    let mut msg = v6::Message::new(kinds[rng.gen_range(0..kinds.len())]);
    let opts = msg.opts_mut();
    opts.insert(v6::DhcpOption::ClientId(bytes(rng, 1..20)));
    if rng.gen() {
        opts.insert(v6::DhcpOption::RapidCommit);
    }
    if rng.gen() {
        opts.insert(v6::DhcpOption::IANA(v6::IANA {
            id: rng.gen(),
            t1: 0,
            t2: 0,
            opts: v6::DhcpOptions::new(),
        }));
    }
    let mut body = Vec::new();
    msg.encode(&mut Encoder::new(&mut body)).expect("encode");
    body
}

/// A valid control frame of a random kind from the NIC, with `payload` as the innermost bytes
/// where the kind has a payload of its own (`None`: a valid one).
fn control_frame(rng: &mut StdRng, cfg: &NicConfig, payload: Option<Vec<u8>>) -> Vec<u8> {
    let mac = cfg.mac;
    let vm4 = cfg.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let vm6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, rng.gen());
    let mut out = Vec::new();
    match rng.gen_range(0..7) {
        0 => {
            let body = payload.unwrap_or_else(|| dhcp4(rng, mac));
            PacketBuilder::ethernet2(mac, [0xff; 6])
                .ipv4([0; 4], [255; 4], 64)
                .udp(68, 67)
                .write(&mut out, &body)
        }
        1 => {
            let body = payload.unwrap_or_else(|| dhcp6(rng));
            PacketBuilder::ethernet2(mac, [0x33, 0x33, 0, 1, 0, 2])
                .ipv6(
                    vm6.octets(),
                    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2).octets(),
                    64,
                )
                .udp(546, 547)
                .write(&mut out, &body)
        }
        2 => {
            let body = payload.unwrap_or_else(|| GATEWAY_V6.octets().to_vec());
            PacketBuilder::ethernet2(mac, GATEWAY_MAC)
                .ipv6(vm6.octets(), GATEWAY_V6.octets(), 255)
                .icmpv6(Icmpv6Type::NeighborSolicitation)
                .write(&mut out, &body)
        }
        3 => {
            let body = payload.unwrap_or_default();
            PacketBuilder::ethernet2(mac, [0x33, 0x33, 0, 0, 0, 2])
                .ipv6(
                    if rng.gen() {
                        vm6
                    } else {
                        Ipv6Addr::UNSPECIFIED
                    }
                    .octets(),
                    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    255,
                )
                .icmpv6(Icmpv6Type::RouterSolicitation)
                .write(&mut out, &body)
        }
        4 => {
            let body = payload.unwrap_or_else(|| b"ping".to_vec());
            PacketBuilder::ethernet2(mac, GATEWAY_MAC)
                .ipv4(vm4.octets(), GATEWAY_V4.octets(), 64)
                .icmpv4_echo_request(rng.gen(), rng.gen())
                .write(&mut out, &body)
        }
        5 => {
            let body = payload.unwrap_or_else(|| b"ping".to_vec());
            PacketBuilder::ethernet2(mac, GATEWAY_MAC)
                .ipv6(vm6.octets(), GATEWAY_V6.octets(), 64)
                .icmpv6_echo_request(rng.gen(), rng.gen())
                .write(&mut out, &body)
        }
        _ => {
            let target: [u8; 4] = if rng.gen() {
                GATEWAY_V4.octets()
            } else {
                rng.gen()
            };
            let arp = ArpPacket::new(
                ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                ArpOperation::REQUEST,
                &mac,
                &vm4.octets(),
                &[0; 6],
                &target,
            )
            .expect("ARP");
            PacketBuilder::ethernet2(mac, [0xff; 6])
                .arp(arp)
                .write(&mut out)
        }
    }
    .expect("a valid frame");
    out
}

#[test]
fn valid_control_frames_with_random_edits_never_panic_hang_or_allocate_without_bound() {
    Target::new("responder/mutated", CI_CASES)
        .alloc_limit(1 << 20)
        .run(
            |rng| {
                let cfg = nic_config(rng);
                let frame = control_frame(rng, &cfg, None);
                // Keep the source MAC intact most of the time so the edits land deeper.
                let mutated = mutate(rng, frame.clone());
                let keep_mac = rng.gen_bool(0.8) && mutated.len() >= 12;
                let mut mutated = mutated;
                if keep_mac {
                    mutated[6..12].copy_from_slice(&cfg.mac);
                }
                mutated.truncate(RECV_BUFFER);
                (cfg, mutated)
            },
            |(cfg, frame)| check(cfg, frame),
        );
}

/// DHCPv4 with a valid fixed header and magic cookie, followed by random option TLVs (the
/// part of a DHCP message a parser walks in a loop).
fn dhcp4_with_random_options(rng: &mut StdRng, mac: [u8; 6]) -> Vec<u8> {
    let mut body = dhcp4(rng, mac);
    body.truncate(240); // fixed header (236) + magic cookie (4)
    for _ in 0..rng.gen_range(0..24) {
        let code: u8 = if rng.gen_bool(0.3) {
            [53, 50, 55, 61, 121, 255, 0, 12, 81, 119][rng.gen_range(0..10)]
        } else {
            rng.gen()
        };
        body.push(code);
        let len: u8 = if rng.gen_bool(0.2) {
            rng.gen()
        } else {
            rng.gen_range(0..8)
        };
        body.push(len);
        let actual = if rng.gen_bool(0.9) {
            len as usize
        } else {
            rng.gen_range(0..256)
        };
        body.extend(bytes(rng, actual..actual + 1));
    }
    if rng.gen() {
        body.push(255);
    }
    body
}

/// DHCPv6 with a valid message type and transaction id, followed by random option TLVs.
fn dhcp6_with_random_options(rng: &mut StdRng) -> Vec<u8> {
    let mut body = vec![[1, 3, 5, 6, 4, 11, 8][rng.gen_range(0..7)], 0, 0, 1];
    for _ in 0..rng.gen_range(0..16) {
        let code: u16 = if rng.gen_bool(0.4) {
            [1, 2, 3, 5, 14, 23, 24, 25, 26, 39][rng.gen_range(0..10)]
        } else {
            rng.gen()
        };
        let len: u16 = if rng.gen_bool(0.2) {
            rng.gen()
        } else {
            rng.gen_range(0..40)
        };
        body.extend(code.to_be_bytes());
        body.extend(len.to_be_bytes());
        let actual = if rng.gen_bool(0.9) {
            len as usize
        } else {
            rng.gen_range(0..64)
        };
        body.extend(bytes(rng, actual.min(1400)..actual.min(1400) + 1));
    }
    body
}

#[test]
fn valid_headers_around_random_payloads_never_panic_hang_or_allocate_without_bound() {
    Target::new("responder/payloads", CI_CASES)
        .alloc_limit(1 << 20)
        .run(
            |rng| {
                let cfg = nic_config(rng);
                let payload = match rng.gen_range(0..4) {
                    0 => dhcp4_with_random_options(rng, cfg.mac),
                    1 => dhcp6_with_random_options(rng),
                    2 => {
                        let valid = dhcp4(rng, cfg.mac);
                        mutate(rng, valid)
                    }
                    _ => bytes(rng, 0..1400),
                };
                let mut frame = control_frame(rng, &cfg, Some(payload));
                frame.truncate(RECV_BUFFER);
                (cfg, frame)
            },
            |(cfg, frame)| check(cfg, frame),
        );
}

/// Frames the fuzzer found panicking inside dhcproto, kept as regressions: each is ignored
/// (no answer) instead of taking the NIC's responder task down.
#[test]
fn dhcp_messages_that_crashed_the_decoder_are_ignored() {
    let cfg = NicConfig {
        nic_id: "regression".into(),
        mac: [2, 0, 0, 0, 0, 1],
        ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ipv4_prefix: None,
        ipv6_prefix: None,
        dns_servers: vec![],
        ntp_servers: vec![],
        hostname: String::new(),
        lease_secs: 60,
        mtu: 0,
    };
    let frame4 = |body: &[u8]| {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(cfg.mac, [0xff; 6])
            .ipv4([0; 4], [255; 4], 64)
            .udp(68, 67)
            .write(&mut out, body)
            .expect("frame");
        out
    };
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(1);
    let valid = dhcp4(&mut rng, cfg.mac);
    // `hlen` 128: dhcproto's `chaddr()` sliced 128 bytes of a 16-byte array (release builds
    // too).
    let mut long_hlen = valid.clone();
    long_hlen[2] = 128;
    assert_eq!(answer(&cfg, &frame4(&long_hlen)), None);
    // Rapid commit with a value: a `debug_assert!(len == 0)` in dhcproto.
    let mut rapid = valid[..240].to_vec();
    rapid.extend_from_slice(&[53, 1, 1, 80, 1, 0, 255]);
    assert_eq!(answer(&cfg, &frame4(&rapid)), None);
    // DHCPv6 status code of length 0 followed by another option: dhcproto read the code from
    // the next option, then computed `len - 2`.
    let mut out = Vec::new();
    PacketBuilder::ethernet2(cfg.mac, [0x33, 0x33, 0, 1, 0, 2])
        .ipv6(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).octets(),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2).octets(),
            64,
        )
        .udp(546, 547)
        .write(
            &mut out,
            &[1, 0, 0, 1, 0, 1, 0, 1, 7, 0, 13, 0, 0, 0, 14, 0, 0],
        )
        .expect("frame");
    assert_eq!(answer(&cfg, &out), None);
}

/// The long run (seed 7310925419, case 4897133 of `responder/payloads`) found a DHCPv6 Solicit
/// whose ~1,000-byte client id the reply echoed: 1,202 bytes back for 1,104 in. A client id
/// longer than a DUID (130 bytes) now gets no answer; one of exactly 130 bytes still does, and
/// its reply is smaller than the 600-byte bound.
#[test]
fn a_dhcpv6_client_id_longer_than_a_duid_gets_no_answer() {
    let cfg = NicConfig {
        nic_id: "regression".into(),
        mac: [2, 0, 0, 0, 0, 1],
        ipv4: None,
        ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ipv4_prefix: None,
        ipv6_prefix: None,
        dns_servers: (0..8)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x53, 0, 0, 0, 0, 0, i)))
            .collect(),
        ntp_servers: vec![],
        hostname: String::new(),
        lease_secs: 60,
        mtu: 0,
    };
    let solicit = |client_id_len: usize| {
        let mut msg = v6::Message::new(v6::MessageType::Solicit);
        msg.opts_mut()
            .insert(v6::DhcpOption::ClientId(vec![7; client_id_len]));
        msg.opts_mut().insert(v6::DhcpOption::RapidCommit);
        msg.opts_mut().insert(v6::DhcpOption::IANA(v6::IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: v6::DhcpOptions::new(),
        }));
        let mut body = Vec::new();
        msg.encode(&mut Encoder::new(&mut body)).expect("encode");
        let mut out = Vec::new();
        PacketBuilder::ethernet2(cfg.mac, [0x33, 0x33, 0, 1, 0, 2])
            .ipv6(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).octets(),
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2).octets(),
                64,
            )
            .udp(546, 547)
            .write(&mut out, &body)
            .expect("frame");
        out
    };
    for len in [131, 1000, 1400] {
        assert_eq!(
            answer(&cfg, &solicit(len)),
            None,
            "client id of {len} bytes"
        );
    }
    let frame = solicit(130);
    let reply = answer(&cfg, &frame).expect("a DUID of 130 bytes is answered");
    check(&cfg, &frame);
    assert!(reply.len() <= 600, "{}-byte reply", reply.len());
}
