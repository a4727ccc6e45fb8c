//! Security-group counters in the real kernel datapath, read the way an operator does: through
//! `GetNicStats` and the daemon's `GET /metrics` (Prometheus text). Flows a rule allowed count
//! on that rule; frames no rule allows count as drops with their reason, on both NICs; a rule
//! change never hands a rule another rule's count. Needs root (eBPF, TAPs).
//!
//! Its own test binary: the metrics registry is per process, and one daemon per process keeps
//! the scraped numbers this daemon's.

mod common;

use common::prom::*;
use common::*;
use mvirt_ebpf::proto;
use mvirt_testsupport::netns::TestTap;

fn rule_flows(stats: &proto::NicStats, rule_id: &str) -> Option<u64> {
    stats
        .rule_flows
        .iter()
        .find(|r| r.rule_id == rule_id)
        .map(|r| r.flows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_count_the_flows_they_allow_drops_count_by_reason_and_metrics_show_both() {
    let mut h = Harness::start().await;
    let metrics = MetricsListener::start().await;

    let net = h.network("10.47.0.0/24", false).await;
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
    let http = rule(
        proto::Direction::Ingress,
        proto::Protocol::Tcp,
        (80, 80),
        "10.47.0.0/24",
    );
    let icmp = rule(proto::Direction::Ingress, proto::Protocol::Icmp, (0, 0), "");
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: web_sg.clone(),
            name: "web".into(),
            rules: vec![http.clone(), icmp.clone()],
        })
        .await
        .unwrap();
    let c = h.nic(&net, mac(0xc7), "10.47.0.2", &[&client_sg]).await;
    let s = h.nic(&net, mac(0x57), "10.47.0.3", &[&web_sg]).await;
    let (cip, sip) = (v4("10.47.0.2"), v4("10.47.0.3"));
    let mut tc = TestTap::open(&c.tap_name);
    let mut ts = TestTap::open(&s.tap_name);
    let arrives = |tap: &mut TestTap, payload: &[u8]| {
        tap.read_matching(WAIT, |f| seen4(f).filter(|x| x.payload == payload))
            .is_some()
    };

    // Three TCP 80 flows (one of them with a second packet, which conntrack passes without
    // the rules) and one ping: 3 flows on the HTTP rule, 1 on the ICMP rule.
    for sport in [40000, 40001, 40002] {
        let payload = format!("http{sport}");
        tc.write_frame(&tcp4(
            mac(0xc7),
            cip,
            sip,
            sport,
            80,
            false,
            payload.as_bytes(),
        ));
        assert!(arrives(&mut ts, payload.as_bytes()), "{payload}");
    }
    tc.write_frame(&tcp4(mac(0xc7), cip, sip, 40000, 80, false, b"again"));
    assert!(arrives(&mut ts, b"again"));
    tc.write_frame(&ping4(mac(0xc7), cip, sip, 77, 1));
    ts.read_matching(WAIT, |f| seen4(f).filter(|x| x.proto == 1))
        .expect("the ping reaches the server");

    // Not allowed by any rule: TCP 22 twice, UDP 53 once (then an allowed marker: in order, so
    // the three were dropped when it arrives alone).
    tc.write_frame(&tcp4(mac(0xc7), cip, sip, 40100, 22, false, b"ssh"));
    tc.write_frame(&tcp4(mac(0xc7), cip, sip, 40101, 22, false, b"ssh"));
    tc.write_frame(&udp4(mac(0xc7), cip, sip, 40102, 53, b"dns"));
    tc.write_frame(&tcp4(mac(0xc7), cip, sip, 40000, 80, false, b"marker"));
    let mut leaked = Vec::new();
    let marker = ts.read_matching(WAIT, |f| {
        let x = seen4(f)?;
        if x.payload != b"marker" {
            leaked.push(x.payload.clone());
        }
        (x.payload == b"marker").then_some(())
    });
    assert!(marker.is_some(), "the marker arrives");
    assert!(
        !leaked.iter().any(|p| p == b"ssh" || p == b"dns"),
        "{leaked:?}"
    );
    // A spoofed source address from the client.
    tc.write_frame(&udp4(mac(0xc7), v4("10.47.0.99"), sip, 1, 80, b"spoofed"));
    // Unsolicited to the client, whose group has no ingress rules (default deny).
    ts.write_frame(&udp4(mac(0x57), sip, cip, 7000, 7001, b"unsolicited"));
    ts.write_frame(&tcp4(mac(0x57), sip, cip, 80, 40001, true, b"marker"));
    assert!(arrives(&mut tc, b"marker"));

    // GetNicStats: per rule and per reason.
    let ss = h.stats(&s).await;
    assert_eq!(rule_flows(&ss, &http.id), Some(3), "{ss:?}");
    assert_eq!(rule_flows(&ss, &icmp.id), Some(1), "{ss:?}");
    assert_eq!(
        ss.tx_drops_by_reason["no_ingress_rule_matched"], 3,
        "{ss:?}"
    );
    assert_eq!(ss.tx_drops, 3);
    let cs = h.stats(&c).await;
    assert!(
        cs.rule_flows.is_empty(),
        "the client group has no rules: {cs:?}"
    );
    assert_eq!(
        cs.rx_drops_by_reason["no_ingress_rule_matched"], 3,
        "{cs:?}"
    );
    assert_eq!(cs.rx_drops_by_reason["spoofed_source"], 1, "{cs:?}");
    assert_eq!(
        cs.tx_drops_by_reason["no_ingress_rule_matched"], 1,
        "{cs:?}"
    );
    assert_eq!(
        cs.rx_drops,
        cs.rx_drops_by_reason.values().sum::<u64>(),
        "the reasons add up to the NIC's drops"
    );

    // The same through the metrics endpoint, with the labels an operator queries by.
    let m = scrape(metrics.addr);
    let flows = |m: &[Sample], nic: &str, group: &str, rule: &str| {
        value(
            m,
            "mvirt_ebpf_sg_rule_flows_total",
            &[
                ("nic", nic),
                ("security_group", group),
                ("rule", rule),
                ("direction", "ingress"),
            ],
        )
    };
    assert_eq!(flows(&m, &s.id, &web_sg, &http.id), 3.0);
    assert_eq!(flows(&m, &s.id, &web_sg, &icmp.id), 1.0);
    let dropped = |nic: &str, direction: &str, reason: &str| {
        value(
            &m,
            "mvirt_ebpf_nic_dropped_packets_total",
            &[("nic", nic), ("direction", direction), ("reason", reason)],
        )
    };
    assert_eq!(dropped(&s.id, "to_guest", "no_ingress_rule_matched"), 3.0);
    assert_eq!(dropped(&c.id, "from_guest", "no_ingress_rule_matched"), 3.0);
    assert_eq!(dropped(&c.id, "from_guest", "spoofed_source"), 1.0);
    assert_eq!(dropped(&c.id, "to_guest", "no_ingress_rule_matched"), 1.0);
    assert_eq!(dropped(&c.id, "from_guest", "no_route"), 0.0);

    // Rule change: the ICMP rule moves to the first position and a new TCP 80 rule takes the
    // second. Neither inherits a count: the new rule starts at 0, not at the ICMP rule's 1.
    let http2 = rule(
        proto::Direction::Ingress,
        proto::Protocol::Tcp,
        (80, 80),
        "10.47.0.0/24",
    );
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: web_sg.clone(),
            rules: vec![icmp.clone(), http2.clone()],
        })
        .await
        .unwrap();
    let ss = h.stats(&s).await;
    assert_eq!(rule_flows(&ss, &http.id), None, "a removed rule is gone");
    assert_eq!(rule_flows(&ss, &http2.id), Some(0), "{ss:?}");
    assert_eq!(rule_flows(&ss, &icmp.id), Some(0), "{ss:?}");
    // A new flow counts on the new rule (the old flows stay tracked: the new rule allows them).
    tc.write_frame(&tcp4(mac(0xc7), cip, sip, 40003, 80, false, b"after"));
    assert!(arrives(&mut ts, b"after"));
    assert_eq!(rule_flows(&h.stats(&s).await, &http2.id), Some(1));
    let m = scrape(metrics.addr);
    assert_eq!(flows(&m, &s.id, &web_sg, &http2.id), 1.0);
    assert_eq!(flows(&m, &s.id, &web_sg, &icmp.id), 0.0);
    assert!(
        !m.iter()
            .any(|(n, l, _)| n == "mvirt_ebpf_sg_rule_flows_total"
                && l.get("rule") == Some(&http.id)),
        "the removed rule left the metrics"
    );
}
