//! Shared harness of the integration tests: a daemon started in-process on port 0 with its own
//! data dir, bpffs pin dir, nftables table and tunnel device, plus frame builders.
//! Everything global is removed on drop (TAPs of NICs the test created, pins, NAT table).
#![allow(dead_code)]

pub mod prom;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use mvirt_common::Shutdown;
use mvirt_ebpf::proto::net_service_client::NetServiceClient;
use mvirt_ebpf::proto::{self};
use mvirt_ebpf::{DaemonConfig, RunningDaemon};
use tonic::transport::Channel;

pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x6d, 0x76, 0x00, 0x00, 0x01];
pub const WAIT: Duration = Duration::from_secs(5);

/// Ids as the control plane mints them: UUIDv7, so ids of one millisecond share their prefix.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A tunnel key (VNI) not used before in this test process, as the control plane allocates.
pub fn tunnel_key() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct Harness {
    pub client: NetServiceClient<Channel>,
    pub config: DaemonConfig,
    daemon: Option<(RunningDaemon, Shutdown)>,
    pub data_dir: tempfile::TempDir,
    taps: Mutex<Vec<String>>,
}

pub fn config(data_dir: PathBuf, uplink: Option<String>) -> DaemonConfig {
    let suffix = mvirt_testsupport::unique_suffix();
    DaemonConfig {
        data_dir,
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/mvirt-test-{suffix}")),
        lease_secs: 3600,
        guest_mtu: 1450,
        conntrack_timeout_secs: 600,
        uplink,
        nft_table: format!("mvirt_test_{suffix}"),
        tunnel_device: format!("mvvx{suffix}"),
        tunnel_port: 4789,
        log_endpoint: String::new(),
        control_rate: Default::default(),
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(uplink: Option<String>) -> Self {
        Self::start_configured(|c| c.uplink = uplink).await
    }

    /// Starts a daemon after `adjust` changed its configuration.
    pub async fn start_configured(adjust: impl FnOnce(&mut DaemonConfig)) -> Self {
        mvirt_testsupport::require_root();
        mvirt_common::telemetry::init_for_tests();
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(data_dir.path().to_path_buf(), None);
        adjust(&mut config);
        let (daemon, shutdown, client) = launch(&config).await;
        Self {
            client,
            config,
            daemon: Some((daemon, shutdown)),
            data_dir,
            taps: Mutex::new(Vec::new()),
        }
    }

    /// Stops the daemon (the datapath stays attached through its pinned links).
    pub async fn stop(&mut self) {
        if let Some((daemon, shutdown)) = self.daemon.take() {
            shutdown.trigger();
            let manager = daemon.manager.clone();
            daemon.wait().await.expect("daemon stopped cleanly");
            drop(manager);
        }
    }

    /// Starts a new daemon on the same data dir and pin dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (daemon, shutdown, client) = launch(&self.config).await;
        self.daemon = Some((daemon, shutdown));
        self.client = client;
    }

    pub async fn network(&mut self, prefix: &str, public: bool) -> String {
        let id = new_id();
        self.client
            .create_network(proto::CreateNetworkRequest {
                id: id.clone(),
                name: "net".into(),
                ipv4_prefix: prefix.into(),
                ipv6_prefix: String::new(),
                dns_servers: vec!["10.53.0.53".into()],
                ntp_servers: vec!["10.123.0.123".into()],
                public,
                tunnel_key: tunnel_key(),
            })
            .await
            .expect("create network");
        id
    }

    pub async fn nic(
        &mut self,
        network_id: &str,
        mac: [u8; 6],
        ipv4: &str,
        sgs: &[&str],
    ) -> proto::Nic {
        self.nic_request(proto::CreateNicRequest {
            id: new_id(),
            network_id: network_id.into(),
            name: String::new(),
            mac_address: mac_str(&mac),
            ipv4_address: ipv4.into(),
            ipv6_address: String::new(),
            routed_prefixes: vec![],
            hostname: "vm".into(),
            security_group_ids: sgs.iter().map(|s| s.to_string()).collect(),
        })
        .await
    }

    pub async fn nic_request(&mut self, req: proto::CreateNicRequest) -> proto::Nic {
        let nic = self
            .client
            .create_nic(req)
            .await
            .expect("create NIC")
            .into_inner();
        self.taps.lock().unwrap().push(nic.tap_name.clone());
        nic
    }

    pub async fn stats(&mut self, nic: &proto::Nic) -> proto::NicStats {
        self.client
            .get_nic_stats(proto::GetNicStatsRequest { id: nic.id.clone() })
            .await
            .expect("stats")
            .into_inner()
    }
}

async fn launch(config: &DaemonConfig) -> (RunningDaemon, Shutdown, NetServiceClient<Channel>) {
    // The daemon's unix socket, in its data dir as it is under /run/mvirt in production.
    let socket = mvirt_common::listen::ListenAddr::Unix(config.data_dir.join("ebpf.sock"));
    let listener = mvirt_common::listen::Listener::bind(
        &socket,
        &mvirt_common::listen::SocketOptions::default(),
    )
    .await
    .expect("bind the socket");
    let shutdown = Shutdown::new();
    let daemon = mvirt_ebpf::start(config.clone(), listener, shutdown.clone())
        .await
        .unwrap_or_else(|e| panic!("daemon start: {}", mvirt_common::error::error_chain(&e)));
    let client = NetServiceClient::connect(daemon.addr.endpoint())
        .await
        .expect("connect");
    (daemon, shutdown, client)
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((_, shutdown)) = &self.daemon {
            shutdown.trigger();
        }
        for tap in self.taps.lock().unwrap().iter() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", tap])
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.config.tunnel_device])
            .output();
        let _ = std::fs::remove_dir_all(&self.config.pin_dir);
        let _ = mvirt_ebpf::nat::remove(&self.config.nft_table);
    }
}

/// A DHCPv4 client message of `kind` from `mac` (broadcast from 0.0.0.0), asking for `asked`
/// if given.
pub fn dhcp4_frame(
    mac: [u8; 6],
    xid: u32,
    kind: dhcproto::v4::MessageType,
    asked: Option<Ipv4Addr>,
) -> Vec<u8> {
    use dhcproto::{v4, Encodable, Encoder};
    let mut msg = v4::Message::default();
    msg.set_opcode(v4::Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac);
    msg.opts_mut().insert(v4::DhcpOption::MessageType(kind));
    if let Some(a) = asked {
        msg.opts_mut().insert(v4::DhcpOption::RequestedIpAddress(a));
    }
    let mut body = Vec::new();
    msg.encode(&mut Encoder::new(&mut body)).unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, [0xff; 6])
        .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
        .udp(68, 67)
        .write(&mut out, &body)
        .unwrap();
    out
}

pub fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn mac(last: u8) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x00, 0x00, last]
}

/// A UDP/IPv4 frame from `src_mac` to the gateway MAC.
pub fn udp4(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// A TCP/IPv4 frame (SYN, or SYN-ACK when `ack`).
pub fn tcp4(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64000)
        .syn();
    let b = if ack { b.ack(1) } else { b };
    b.write(&mut out, payload).unwrap();
    out
}

pub fn ping4(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq)
        .write(&mut out, b"mvirt-ping")
        .unwrap();
    out
}

pub fn pong4(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_reply(id, seq)
        .write(&mut out, b"mvirt-ping")
        .unwrap();
    out
}

/// What a received IPv4 frame carries, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

pub fn seen4(frame: &[u8]) -> Option<Seen> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        return None;
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    let (proto, sport, dport, payload) = match &p.transport {
        Some(TransportSlice::Udp(u)) => (
            17,
            u.source_port(),
            u.destination_port(),
            u.payload().to_vec(),
        ),
        Some(TransportSlice::Tcp(t)) => (
            6,
            t.source_port(),
            t.destination_port(),
            t.payload().to_vec(),
        ),
        Some(TransportSlice::Icmpv4(i)) => (1, i.type_u8() as u16, 0, i.payload().to_vec()),
        _ => (0, 0, 0, vec![]),
    };
    Some(Seen {
        src_mac: eth.source(),
        dst_mac: eth.destination(),
        src: ip.header().source_addr(),
        dst: ip.header().destination_addr(),
        proto,
        sport,
        dport,
        payload,
    })
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A security group rule for a CIDR (no remote group).
pub fn rule(
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
