//! The datapath's two deliveries between endpoints that are veth pairs (as in
//! `mvirt-ebpf-bench`): `bpf_redirect` to the destination's egress (what every TAP gets) and
//! `bpf_redirect_peer` into a veth's peer (`ROUTE_F_PEER`). Each endpoint is a network namespace
//! holding the veth's peer with a /32 and the link-local gateway, like a VM; the kernel's ping
//! answers prove delivery in both directions. Needs root.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use mvirt_ebpf::datapath::{
    Datapath, DesiredState, NicInfo, Route4Data, RouteValue, ROUTE_F_PEER, ROUTE_NIC,
};
use mvirt_testsupport::netns::{Netns, VethPair};

/// Removes the pin directory on drop (also on panic).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mac_in(ns: &Netns, dev: &str) -> [u8; 6] {
    let text = ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *slot = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

#[test]
fn veth_endpoints_reach_each_other_with_bpf_redirect_and_with_bpf_redirect_peer() {
    mvirt_testsupport::require_root();
    let suffix = mvirt_testsupport::unique_suffix();
    let pin = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/mvirt-test-veth-{suffix}"
    )));
    let mut dp = Datapath::load(&pin.0, 600)
        .unwrap_or_else(|e| panic!("{}", mvirt_common::error::error_chain(&e)));

    let mut endpoints = Vec::new();
    let mut desired = DesiredState::default();
    for (prefix, ip) in [
        ("mvra", Ipv4Addr::new(10, 66, 0, 2)),
        ("mvrb", Ipv4Addr::new(10, 66, 0, 3)),
    ] {
        let ns = Netns::new(prefix);
        let mut veth = VethPair::new(prefix);
        veth.move_peer(&ns);
        let dev = veth.peer.clone();
        ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", &dev]);
        ns.exec_ok(&["ip", "route", "add", "169.254.0.1", "dev", &dev]);
        ns.exec_ok(&["ip", "route", "add", "default", "via", "169.254.0.1"]);
        ns.exec_ok(&[
            "ip",
            "neigh",
            "add",
            "169.254.0.1",
            "lladdr",
            "02:6d:76:00:00:01",
            "dev",
            &dev,
        ]);
        let mac = mac_in(&ns, &dev);
        let ifindex = dp
            .attach_tap(&veth.host)
            .unwrap_or_else(|e| panic!("{}", mvirt_common::error::error_chain(&e)));
        let info = NicInfo {
            network: 1,
            flags: 0,
            mac,
            slot: 0,
        };
        desired.nics.insert(ifindex, info);
        let to_nic = RouteValue {
            kind: ROUTE_NIC,
            ifindex,
            mac,
            flags: 0,
            pad: 0,
            remote: [0; 4],
            key: 0,
        };
        let key = Route4Data {
            network: 1,
            addr: ip.octets(),
        };
        desired.routes4.insert((32, key), to_nic);
        endpoints.push((ns, veth, ifindex));
    }
    let ping = |ns: &Netns, id: &str| {
        let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.66.0.3"]);
        assert!(
            out.status.success(),
            "{id}: ping failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };

    // bpf_redirect (the TAP delivery).
    dp.sync(&desired).unwrap();
    ping(&endpoints[0].0, "bpf_redirect");
    let before = dp.stats(endpoints[1].2).tx_packets;
    assert!(before >= 3, "deliveries counted");

    // bpf_redirect_peer.
    for route in desired.routes4.values_mut() {
        route.flags = ROUTE_F_PEER;
    }
    dp.sync(&desired).unwrap();
    ping(&endpoints[0].0, "bpf_redirect_peer");
    assert!(dp.stats(endpoints[1].2).tx_packets >= before + 3);

    for (_, veth, _) in &endpoints {
        dp.detach(&veth.host);
    }
}
