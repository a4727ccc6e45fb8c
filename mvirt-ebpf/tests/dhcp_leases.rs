//! DHCP leases in the metrics, as the real daemon's responder hands them out on real TAPs: a
//! guest that was only offered its address holds no lease, one that was acknowledged does until
//! it releases it, and a request for another address (NAK) grants nothing. Two NICs, so one
//! NIC's lease is never counted on the other. Needs root (eBPF, TAPs).
//!
//! Its own test binary: the metrics registry is per process.

mod common;

use std::time::{Duration, Instant};

use common::prom::*;
use common::*;
use dhcproto::{v4, Decodable, Decoder};
use mvirt_testsupport::netns::TestTap;

/// Sends `frame` on `tap` and returns the type of the DHCP answer with `xid`.
fn exchange(tap: &mut TestTap, frame: &[u8], xid: u32) -> v4::MessageType {
    tap.write_frame(frame);
    tap.read_matching(Duration::from_secs(5), |f| {
        let s = seen4(f)?;
        let m = v4::Message::decode(&mut Decoder::new(&s.payload)).ok()?;
        (s.sport == 67 && m.xid() == xid).then_some(m)
    })
    .unwrap_or_else(|| panic!("no DHCP answer to xid {xid:#x}"))
    .opts()
    .msg_type()
    .expect("a message type")
}

/// The metrics once `check` holds for them (a RELEASE has no answer to wait for).
fn scrape_until(addr: std::net::SocketAddr, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let until = Instant::now() + WAIT;
    loop {
        let m = scrape(addr);
        if check(&m) || Instant::now() > until {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_granted_by_an_ack_show_per_nic_and_end_with_a_release() {
    let mut h = Harness::start().await;
    let metrics = MetricsListener::start().await;
    let net = h.network("10.48.0.0/24", false).await;
    let (a_mac, b_mac) = (mac(0x51), mac(0x52));
    let a = h.nic(&net, a_mac, "10.48.0.51", &[]).await;
    let b = h.nic(&net, b_mac, "10.48.0.52", &[]).await;
    let mut a_tap = TestTap::open(&a.tap_name);
    let mut b_tap = TestTap::open(&b.tap_name);
    a_tap.drain();
    b_tap.drain();

    let leases = |m: &[Sample]| value(m, "mvirt_ebpf_dhcp_leases", &[("family", "ipv4")]);
    let granted = |m: &[Sample], nic: &str| {
        value(
            m,
            "mvirt_ebpf_dhcp_leases_granted_total",
            &[("nic", nic), ("family", "ipv4")],
        )
    };
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    let addr = metrics.addr;
    tokio::task::spawn_blocking(move || {
        let m = scrape(addr);
        assert_eq!(leases(&m), 0.0);
        assert_eq!(granted(&m, &a_id), 0.0);

        // A: offered (no lease yet), then acknowledged, then renewed.
        let discover = dhcp4_frame(a_mac, 1, v4::MessageType::Discover, None);
        assert_eq!(exchange(&mut a_tap, &discover, 1), v4::MessageType::Offer);
        assert_eq!(leases(&scrape(addr)), 0.0, "an offer is no lease");
        let own = Some("10.48.0.51".parse().unwrap());
        let request = dhcp4_frame(a_mac, 2, v4::MessageType::Request, own);
        assert_eq!(exchange(&mut a_tap, &request, 2), v4::MessageType::Ack);
        let renew = dhcp4_frame(a_mac, 3, v4::MessageType::Request, own);
        assert_eq!(exchange(&mut a_tap, &renew, 3), v4::MessageType::Ack);
        // B asks for A's address: refused, no lease.
        let stolen = dhcp4_frame(b_mac, 4, v4::MessageType::Request, own);
        assert_eq!(exchange(&mut b_tap, &stolen, 4), v4::MessageType::Nak);
        let m = scrape(addr);
        assert_eq!(leases(&m), 1.0, "A holds its lease, B none");
        assert_eq!(granted(&m, &a_id), 2.0, "A's ACK and its renewal");
        assert_eq!(granted(&m, &b_id), 0.0, "a NAK grants nothing");

        // B gets its own; A releases.
        let b_own = Some("10.48.0.52".parse().unwrap());
        let request = dhcp4_frame(b_mac, 5, v4::MessageType::Request, b_own);
        assert_eq!(exchange(&mut b_tap, &request, 5), v4::MessageType::Ack);
        assert_eq!(leases(&scrape(addr)), 2.0);
        a_tap.write_frame(&dhcp4_frame(a_mac, 6, v4::MessageType::Release, None));
        let m = scrape_until(addr, |m| leases(m) == 1.0);
        assert_eq!(leases(&m), 1.0, "A's release ended its lease, B's stays");
        assert_eq!(granted(&m, &a_id), 2.0);
        assert_eq!(granted(&m, &b_id), 1.0);
    })
    .await
    .unwrap();
}
