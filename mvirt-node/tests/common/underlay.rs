//! Multi-node fixtures whose datapaths are machines of their own (tests/migration_nics.rs,
//! tests/migration_flows.rs; included by `#[path]`, not through `common/mod.rs`): the VXLAN
//! underlay of netns + veth + bridge, the hosts dropped in reverse order, and the agent of a
//! host in such a namespace.

#![allow(dead_code)]

use std::path::Path;

use mvirt_testsupport::netns::{ip, Netns, VethPair};
use serde_json::Value;

use super::common::{agent_config, Agent, HostDaemons, Rest};

/// The underlay: one namespace per node, each joined by a veth pair to a bridge in a namespace
/// of its own (10.200.0.1, .2, .3 /24). Dropped after the hosts (declared before them in the
/// test), also on panic.
pub struct Underlay {
    _veths: Vec<VethPair>,
    pub namespaces: Vec<Netns>,
    pub addresses: Vec<String>,
    _switch: Netns,
}

impl Underlay {
    pub fn new(nodes: usize) -> Underlay {
        let switch = Netns::new("mvms");
        switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let (mut veths, mut namespaces, mut addresses) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..nodes {
            let ns = Netns::new("mvmn");
            let mut veth = VethPair::new("mvu");
            // The host end to the switch by hand (the fixture deletes the pair from the
            // node's side on drop), the peer end into the node's namespace.
            ip(&["link", "set", &veth.host, "netns", switch.name()]);
            switch.exec_ok(&["ip", "link", "set", &veth.host, "master", "br0"]);
            switch.exec_ok(&["ip", "link", "set", &veth.host, "up"]);
            veth.move_peer(&ns);
            let address = format!("10.200.0.{}", i + 1);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &veth.peer,
            ]);
            veths.push(veth);
            namespaces.push(ns);
            addresses.push(address);
        }
        Underlay {
            _veths: veths,
            namespaces,
            addresses,
            _switch: switch,
        }
    }

    /// Whether interface `dev` exists in namespace `i`.
    pub fn has_link(&self, i: usize, dev: &str) -> bool {
        self.namespaces[i]
            .exec(&["ip", "link", "show", "dev", dev])
            .status
            .success()
    }
}

/// The hosts, dropped in reverse order of their start (also on panic): a later host's
/// namespace runtime holds copies of the earlier hosts' pool mounts, and a pool cannot be
/// destroyed while a copy of its mounts exists.
pub struct Hosts(pub Vec<HostDaemons>);

impl std::ops::Index<usize> for Hosts {
    type Output = HostDaemons;
    fn index(&self, i: usize) -> &HostDaemons {
        &self.0[i]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        while let Some(host) = self.0.pop() {
            drop(host);
        }
    }
}

/// The numbers of every `<tag>-<n>` in `text`, in order.
pub fn ticks(text: &str, tag: &str) -> Vec<u64> {
    text.split(&format!("{tag}-"))
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The IPv4 address the API assigned to each of the VM's NICs, in NIC order.
pub async fn nic_addresses(rest: &Rest, vm: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for id in vm["spec"]["nic_ids"].as_array().expect("nic_ids") {
        let id = id.as_str().unwrap();
        let nic = rest.get(&format!("/v1/nics/{id}")).await;
        let address = nic["spec"]["ipv4_address"]
            .as_str()
            .unwrap_or_else(|| panic!("NIC without an IPv4 address: {nic:#}"))
            .to_string();
        out.push((id.to_string(), address));
    }
    out
}

/// Starts the agent of host `i` (node `name`, data under `dir`): its registered address is its
/// underlay address (routes to its VMs are VXLAN to it); the agent itself (console relay,
/// node-to-node channel) listens on loopback in the host namespace.
pub fn start_underlay_agent(
    name: &str,
    dir: &Path,
    host: &HostDaemons,
    underlay: &Underlay,
    i: usize,
    api: &mvirt_api::server::Running,
    token: &str,
) -> Agent {
    let mut config = agent_config(name, &dir.join("agent"), &host.endpoints, api, token);
    config.address = underlay.addresses[i].clone();
    let port = mvirt_testsupport::net::free_port();
    config.console_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let scheme = if config.tls.insecure_plaintext {
        "http"
    } else {
        "https"
    };
    config.console_endpoint = format!("{scheme}://127.0.0.1:{port}");
    Agent::start(config)
}
