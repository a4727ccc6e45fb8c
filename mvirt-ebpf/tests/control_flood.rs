//! One guest flooding the gateway with DHCP and NDP cannot starve another guest: the real
//! daemon, datapath and responder, the test as both VMs on their TAPs. The flooding NIC's
//! answers are capped by its token bucket (`--control-rate`/`--control-burst`), and the other
//! NIC's DHCP discover is answered while the flood is still running.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dhcproto::{v4, Decodable, Decoder};
use etherparse::{Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};
use mvirt_ebpf::responder::ControlRateLimit;
use mvirt_testsupport::netns::TestTap;

const LIMIT: ControlRateLimit = ControlRateLimit {
    per_sec: 20,
    burst: 10,
};
const FLOOD: Duration = Duration::from_secs(3);

fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    dhcp4_frame(mac, xid, v4::MessageType::Discover, None)
}

/// A neighbour solicitation for the gateway (fe80::1).
fn solicitation(mac: [u8; 6]) -> Vec<u8> {
    let mut body = v6("fe80::1").octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&mac);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, [0x33, 0x33, 0xff, 0, 0, 1])
        .ipv6(
            v6("fe80::ff:fe00:41").octets(),
            v6("ff02::1:ff00:1").octets(),
            255,
        )
        .icmpv6(Icmpv6Type::NeighborSolicitation)
        .write(&mut out, &body)
        .unwrap();
    out
}

/// Whether a frame to the VM is a DHCP reply or a neighbour advertisement.
fn is_answer(frame: &[u8]) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    match p.transport {
        Some(TransportSlice::Udp(u)) => u.source_port() == 67,
        Some(TransportSlice::Icmpv6(i)) => i.type_u8() == 136,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_flooding_dhcp_and_ndp_is_capped_while_another_nics_dhcp_is_still_answered() {
    let mut h = Harness::start_configured(|c| c.control_rate = LIMIT).await;
    let net = h.network("10.40.0.0/24", false).await;
    let flooder_mac = mac(0x41);
    let victim_mac = mac(0x42);
    let flooder = h.nic(&net, flooder_mac, "10.40.0.41", &[]).await;
    let victim = h.nic(&net, victim_mac, "10.40.0.42", &[]).await;
    let mut flooder_tap = TestTap::open(&flooder.tap_name);
    let mut victim_tap = TestTap::open(&victim.tap_name);
    flooder_tap.drain();
    victim_tap.drain();

    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        let frames = [discover(flooder_mac, 0xf100d), solicitation(flooder_mac)];
        while started.elapsed() < FLOOD {
            for frame in &frames {
                flooder_tap.write_frame(frame);
            }
            counter.fetch_add(2, Ordering::Relaxed);
        }
        flooder_tap
    });

    // Once the flood has emptied the flooder's bucket many times over, the victim asks.
    let until = Instant::now() + WAIT;
    while sent.load(Ordering::Relaxed) < 2_000 {
        assert!(Instant::now() < until, "the flood does not get going");
        tokio::task::yield_now().await;
    }
    let (offer, victim_tap) = tokio::task::spawn_blocking(move || {
        victim_tap.write_frame(&discover(victim_mac, 0x7777));
        let offer = victim_tap.read_matching(Duration::from_secs(5), |f| {
            let s = seen4(f)?;
            let m = v4::Message::decode(&mut Decoder::new(&s.payload)).ok()?;
            (s.sport == 67 && m.xid() == 0x7777).then_some(m)
        });
        (offer, victim_tap)
    })
    .await
    .unwrap();
    let answered_during_flood = !flood.is_finished();
    let offer = offer.expect("the victim's DISCOVER is answered while the other NIC floods");
    assert_eq!(offer.opts().msg_type(), Some(v4::MessageType::Offer));
    assert_eq!(offer.yiaddr(), v4("10.40.0.42"));
    assert!(
        answered_during_flood,
        "the victim was answered only after the flood ended"
    );
    drop(victim_tap);

    let mut flooder_tap = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    let sent = sent.load(Ordering::Relaxed);
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers = 0u64;
        while let Some(frame) = flooder_tap.read_frame(Duration::from_secs(1)) {
            answers += u64::from(is_answer(&frame));
        }
        answers
    })
    .await
    .unwrap();
    // Every answer the flooder can have had: a full bucket plus the refill over the whole time
    // the responder could have read its frames (flood and counting), plus slack.
    let window = started.elapsed().as_secs_f64().ceil() as u64;
    let cap = u64::from(LIMIT.burst) + u64::from(LIMIT.per_sec) * window + 5;
    eprintln!("flood: {sent} frames sent, {answers} answered (cap {cap}) in {window} s");
    assert!(answers >= 1, "the flooder got no answer at all");
    assert!(
        answers <= cap,
        "{answers} answers to {sent} flooded frames, more than the bucket allows ({cap})"
    );
    assert!(
        sent >= 10 * cap,
        "the flood ({sent} frames) was too slow to test the limit"
    );
}
