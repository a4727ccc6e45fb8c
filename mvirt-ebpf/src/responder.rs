//! The gateway's userspace half: ARP, DHCPv4, ICMP echo, NDP (NA + RA), DHCPv6 and ICMPv6 echo.
//!
//! Each NIC gets an `AF_PACKET` socket bound to its TAP with the `control_filter` eBPF socket
//! filter attached, so only the frames the VM sends to the gateway reach userspace (packet taps
//! run before tc ingress, where the datapath drops those frames so the host stack never sees
//! them). [`answer`] is a pure function from (NIC configuration, frame) to the reply frame;
//! replies are written back on the same socket, i.e. transmitted to the VM through the TAP.
//!
//! A guest must not be able to starve the others: every NIC has its own token bucket
//! ([`ControlRateLimit`], the daemon's `--control-rate`/`--control-burst`). A frame that finds
//! the bucket empty is dropped before it is parsed, counted ([`Responder::rate_limited`]) and
//! reported in the log at most every [`DROP_LOG_INTERVAL`]. Everything that parses guest bytes
//! is fuzzed (`tests/fuzz_responder.rs`).
//!
//! Leases: each NIC has exactly one address, so there is no pool and no table to allocate
//! from; what a lease means here is that the guest was told it may use its address until a
//! time. [`Leases`] keeps that per NIC and family (granted by a DHCPACK / DHCPv6 Reply with the
//! address, ended by RELEASE/DECLINE or expiry) for the metrics. It lives in memory: after a
//! daemon restart a NIC counts again from the guest's next renewal (at half the lease time).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dhcproto::{v4, v6, Decodable, Decoder, Encodable, Encoder};
use etherparse::{
    icmpv6, ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv4Type, Icmpv6Type, LinkSlice,
    NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::io::unix::AsyncFd;

use crate::model::{GATEWAY_MAC, GATEWAY_V4, GATEWAY_V6};

/// What the responder needs to know about a NIC and its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    pub nic_id: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ipv4_prefix: Option<Ipv4Net>,
    pub ipv6_prefix: Option<Ipv6Net>,
    pub dns_servers: Vec<IpAddr>,
    pub ntp_servers: Vec<IpAddr>,
    pub hostname: String,
    pub lease_secs: u32,
    /// MTU announced by DHCP (option 26) and RAs; 0 = do not announce.
    pub mtu: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("cannot open a packet socket on {tap}")]
    Socket {
        tap: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach the control filter on {tap}")]
    Filter {
        tap: String,
        #[source]
        source: Box<crate::datapath::DatapathError>,
    },
}

/// How many control frames (ARP, DHCP, DHCPv6, NDP, echo to the gateway) one NIC may send to
/// the responder: `per_sec` on average, `burst` at once. `per_sec == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

impl Default for ControlRateLimit {
    /// A booting guest sends a handful of frames (DHCP, RS, NS, ARP); 100/s with a burst of
    /// 200 leaves room for a ping to the gateway at any sane interval.
    fn default() -> Self {
        Self {
            per_sec: 100,
            burst: 200,
        }
    }
}

/// A token bucket: starts full (`burst` tokens), refills at `per_sec`. Time is passed in, so
/// the arithmetic is tested without sleeping.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: ControlRateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: ControlRateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: now,
        }
    }

    /// Takes one token if there is one (always true without a limit).
    pub fn take(&mut self, now: Instant) -> bool {
        if self.limit.per_sec == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let capacity = f64::from(self.limit.burst.max(1));
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_sec)).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Frames dropped by the rate limit are logged at most this often per NIC (with their count).
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The address family of a DHCP lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What answering one DHCP message did to the NIC's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The reply hands the guest its address for `secs` seconds (DHCPACK, or a DHCPv6 Reply
    /// carrying the address).
    Granted { family: Family, secs: u32 },
    /// The guest gave its address back (DHCPRELEASE/DECLINE, DHCPv6 Release).
    Released { family: Family },
}

/// One NIC's leases, per family: until when the guest holds its address (Unix seconds, 0 =
/// none) and how many times it was granted.
#[derive(Debug, Default)]
pub struct Leases {
    until: [AtomicU64; 2],
    granted: [AtomicU64; 2],
}

/// One NIC's leases as read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseSample {
    /// Whether the guest holds an unexpired lease, IPv4 and IPv6.
    pub active: [bool; 2],
    /// Leases granted (including renewals) since the responder started, IPv4 and IPv6.
    pub granted: [u64; 2],
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Leases {
    /// Applies what an answer did, at `now` (Unix seconds).
    pub fn note(&self, event: LeaseEvent, now: u64) {
        match event {
            LeaseEvent::Granted { family, secs } => {
                self.until[family as usize].store(now + u64::from(secs), Ordering::Relaxed);
                self.granted[family as usize].fetch_add(1, Ordering::Relaxed);
            }
            LeaseEvent::Released { family } => {
                self.until[family as usize].store(0, Ordering::Relaxed);
            }
        }
    }

    /// The leases at `now` (Unix seconds).
    pub fn sample(&self, now: u64) -> LeaseSample {
        let active = |f: usize| self.until[f].load(Ordering::Relaxed) > now;
        let granted = |f: usize| self.granted[f].load(Ordering::Relaxed);
        LeaseSample {
            active: [active(0), active(1)],
            granted: [granted(0), granted(1)],
        }
    }
}

/// A running responder for one NIC; stops when dropped.
pub struct Responder {
    config: Arc<RwLock<NicConfig>>,
    rate_limited: Arc<AtomicU64>,
    leases: Arc<Leases>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn packet_socket() -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, ifindex: u32) -> std::io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Responder {
    /// Opens the packet socket on `tap` (filter first, then bind) and starts answering.
    pub fn spawn(
        tap: &str,
        ifindex: u32,
        config: NicConfig,
        limit: ControlRateLimit,
        datapath: &crate::datapath::Datapath,
    ) -> Result<Self, ResponderError> {
        let sock_err = |source| ResponderError::Socket {
            tap: tap.to_string(),
            source,
        };
        let fd = packet_socket().map_err(sock_err)?;
        datapath
            .attach_control_filter(fd.as_fd())
            .map_err(|source| ResponderError::Filter {
                tap: tap.to_string(),
                source: Box::new(source),
            })?;
        bind(&fd, ifindex).map_err(sock_err)?;
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open
        // (and is not reused) for as long as it is registered.
        let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| sock_err(e.into()))?;
        let config = Arc::new(RwLock::new(config));
        let shared = config.clone();
        let rate_limited = Arc::new(AtomicU64::new(0));
        let limiter = RateLimiter {
            bucket: TokenBucket::new(limit, Instant::now()),
            dropped: rate_limited.clone(),
            unlogged: 0,
            last_log: None,
        };
        let tap = tap.to_string();
        let leases = Arc::new(Leases::default());
        let noted = leases.clone();
        let task = tokio::spawn(async move { serve(afd, shared, limiter, noted, tap).await });
        Ok(Self {
            config,
            rate_limited,
            leases,
            task,
        })
    }

    /// The NIC's DHCP leases now.
    pub fn leases(&self) -> LeaseSample {
        self.leases.sample(unix_now())
    }

    /// Frames dropped so far because the NIC exceeded its control rate limit.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Replaces the NIC configuration (served from the next request on).
    pub fn update(&self, config: NicConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// Unsolicited router advertisements are sent this often (RFC 4861 allows 4–1800 s).
const RA_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

fn send(afd: &AsyncFd<OwnedFd>, frame: &[u8], tap: &str) {
    // SAFETY: frame is valid for frame.len() bytes; the socket is bound to the TAP.
    let rc = unsafe {
        libc::send(
            afd.get_ref().as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
        )
    };
    if rc < 0 {
        tracing::debug!(tap, error = %std::io::Error::last_os_error(), "frame not sent (no VM on the TAP?)");
    }
}

/// The bucket of one NIC and its drop accounting.
struct RateLimiter {
    bucket: TokenBucket,
    dropped: Arc<AtomicU64>,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl RateLimiter {
    /// Whether a frame received now may be answered; counts (and now and then logs) a drop.
    fn admit(&mut self, tap: &str, nic: &Arc<RwLock<NicConfig>>) -> bool {
        let now = Instant::now();
        if self.bucket.take(now) {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
        {
            let nic = nic.read().unwrap_or_else(|p| p.into_inner()).nic_id.clone();
            tracing::warn!(
                tap,
                nic,
                dropped = self.unlogged,
                total = self.dropped.load(Ordering::Relaxed),
                "control frames over the NIC's rate limit dropped"
            );
            self.unlogged = 0;
            self.last_log = Some(now);
        }
        false
    }
}

async fn serve(
    afd: AsyncFd<OwnedFd>,
    config: Arc<RwLock<NicConfig>>,
    mut limiter: RateLimiter,
    leases: Arc<Leases>,
    tap: String,
) {
    let mut buf = vec![0u8; 2048];
    let mut ra_timer = tokio::time::interval(RA_INTERVAL);
    ra_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let readable = tokio::select! {
            r = afd.readable() => r,
            _ = ra_timer.tick() => {
                let ra = {
                    let cfg = config.read().unwrap_or_else(|p| p.into_inner());
                    cfg.ipv6.is_some().then(|| router_advertisement(&cfg, Ipv6Addr::UNSPECIFIED))
                };
                if let Some(frame) = ra {
                    send(&afd, &frame, &tap);
                }
                continue;
            }
        };
        let mut guard = match readable {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(tap, error = %e, "responder socket failed");
                return;
            }
        };
        let read = guard.try_io(|fd| {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => continue,
            Ok(Err(e)) => {
                tracing::warn!(tap, error = %e, "responder read failed");
                continue;
            }
            Err(_would_block) => continue,
        };
        // Dropped before parsing: a flood costs one recv per frame and nothing else.
        if !limiter.admit(&tap, &config) {
            continue;
        }
        let (reply, lease) = {
            let cfg = config.read().unwrap_or_else(|p| p.into_inner());
            answer_noting(&cfg, &buf[..n])
        };
        if let Some(frame) = reply {
            send(&afd, &frame, &tap);
        }
        if let Some(event) = lease {
            leases.note(event, unix_now());
        }
    }
}

/// The reply to one frame from the VM, if the gateway answers it.
pub fn answer(cfg: &NicConfig, frame: &[u8]) -> Option<Vec<u8>> {
    answer_noting(cfg, frame).0
}

/// The reply to one frame from the VM, and what it did to the NIC's DHCP lease.
pub fn answer_noting(cfg: &NicConfig, frame: &[u8]) -> (Option<Vec<u8>>, Option<LeaseEvent>) {
    let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
        return (None, None);
    };
    let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
        return (None, None);
    };
    if eth.source() != cfg.mac {
        return (None, None);
    }
    let udp_to = |port: u16| match &packet.transport {
        Some(TransportSlice::Udp(udp)) if udp.destination_port() == port => Some(udp.payload()),
        _ => None,
    };
    match &packet.net {
        Some(NetSlice::Ipv4(_)) => {
            if let Some(payload) = udp_to(67) {
                return answer_dhcp4(cfg, payload);
            }
        }
        Some(NetSlice::Ipv6(ip)) => {
            if let Some(payload) = udp_to(547) {
                return answer_dhcp6(cfg, ip.header().source_addr(), payload);
            }
        }
        _ => {}
    }
    (answer_other(cfg, &packet), None)
}

/// ARP, echo to the gateway and NDP: answers that change no lease.
fn answer_other(cfg: &NicConfig, packet: &SlicedPacket) -> Option<Vec<u8>> {
    match &packet.net {
        Some(NetSlice::Arp(arp)) => answer_arp(cfg, arp),
        Some(NetSlice::Ipv4(ip)) => {
            let src = ip.header().source_addr();
            let dst = ip.header().destination_addr();
            match &packet.transport {
                Some(TransportSlice::Icmpv4(icmp)) if dst == GATEWAY_V4 => match icmp.icmp_type() {
                    Icmpv4Type::EchoRequest(echo) => {
                        let builder = PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
                            .ipv4(GATEWAY_V4.octets(), src.octets(), 64)
                            .icmpv4_echo_reply(echo.id, echo.seq);
                        let mut out = Vec::new();
                        builder.write(&mut out, icmp.payload()).ok()?;
                        Some(out)
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        Some(NetSlice::Ipv6(ip)) => {
            let src = ip.header().source_addr();
            let dst = ip.header().destination_addr();
            match &packet.transport {
                Some(TransportSlice::Icmpv6(icmp)) => {
                    match icmp.icmp_type() {
                        Icmpv6Type::EchoRequest(echo) if dst == GATEWAY_V6 => {
                            let builder = PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
                                .ipv6(GATEWAY_V6.octets(), src.octets(), 64)
                                .icmpv6_echo_reply(echo.id, echo.seq);
                            let mut out = Vec::new();
                            builder.write(&mut out, icmp.payload()).ok()?;
                            Some(out)
                        }
                        Icmpv6Type::Unknown { type_u8: 135, .. }
                        | Icmpv6Type::NeighborSolicitation => answer_ns(cfg, src, icmp.payload()),
                        Icmpv6Type::Unknown { type_u8: 133, .. }
                        | Icmpv6Type::RouterSolicitation => Some(router_advertisement(cfg, src)),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        None => None,
    }
}

fn answer_arp(cfg: &NicConfig, arp: &etherparse::ArpPacketSlice<'_>) -> Option<Vec<u8>> {
    if arp.operation() != ArpOperation::REQUEST || arp.proto_addr_type() != EtherType::IPV4 {
        return None;
    }
    let target: [u8; 4] = arp.target_protocol_addr().try_into().ok()?;
    let sender: [u8; 4] = arp.sender_protocol_addr().try_into().ok()?;
    let target_ip = Ipv4Addr::from(target);
    // Never claim the VM's own address (duplicate address detection) or answer probes.
    if Some(target_ip) == cfg.ipv4 || target == sender || sender == [0; 4] {
        return None;
    }
    // The gateway answers for every address (proxy ARP): all traffic is routed at L3, so
    // a guest that believes its prefix is on-link still sends to the gateway MAC.
    let reply = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REPLY,
        &GATEWAY_MAC,
        &target,
        &cfg.mac,
        &sender,
    )
    .ok()?;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
        .arp(reply)
        .write(&mut out)
        .ok()?;
    Some(out)
}

fn answer_dhcp4(cfg: &NicConfig, payload: &[u8]) -> (Option<Vec<u8>>, Option<LeaseEvent>) {
    let mut lease = None;
    let reply = dhcp4(cfg, payload, &mut lease);
    (reply, lease)
}

/// The DHCPv4 answer; `lease` is set to what it does to the NIC's lease.
fn dhcp4(cfg: &NicConfig, payload: &[u8], lease: &mut Option<LeaseEvent>) -> Option<Vec<u8>> {
    let ip = cfg.ipv4?;
    if let Err(e) = option_lengths::check_v4(payload) {
        tracing::debug!(nic = cfg.nic_id, error = %e, "DHCPv4 message ignored");
        return None;
    }
    let request = v4::Message::decode(&mut Decoder::new(payload)).ok()?;
    if request.opcode() != v4::Opcode::BootRequest || request.chaddr().get(..6)? != cfg.mac {
        return None;
    }
    let kind = match request.opts().msg_type()? {
        v4::MessageType::Discover => v4::MessageType::Offer,
        v4::MessageType::Request => {
            let asked = match request.opts().get(v4::OptionCode::RequestedIpAddress) {
                Some(v4::DhcpOption::RequestedIpAddress(a)) => Some(*a),
                _ => None,
            }
            .or_else(|| (!request.ciaddr().is_unspecified()).then(|| request.ciaddr()));
            if asked.is_some_and(|a| a != ip) {
                v4::MessageType::Nak
            } else {
                v4::MessageType::Ack
            }
        }
        v4::MessageType::Release | v4::MessageType::Decline => {
            tracing::info!(nic = cfg.nic_id, "DHCP lease released");
            *lease = Some(LeaseEvent::Released { family: Family::V4 });
            return None;
        }
        v4::MessageType::Inform => v4::MessageType::Ack,
        _ => return None,
    };
    let mut reply = v4::Message::default();
    reply
        .set_opcode(v4::Opcode::BootReply)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_chaddr(&cfg.mac)
        .set_giaddr(request.giaddr());
    let opts = reply.opts_mut();
    opts.insert(v4::DhcpOption::MessageType(kind));
    opts.insert(v4::DhcpOption::ServerIdentifier(GATEWAY_V4));
    if kind != v4::MessageType::Nak {
        reply.set_yiaddr(ip);
        let opts = reply.opts_mut();
        // A /32 with the link-local gateway: every packet goes through the router (the eBPF
        // datapath); the classless routes say the same for clients that honour option 121.
        opts.insert(v4::DhcpOption::SubnetMask(Ipv4Addr::BROADCAST));
        opts.insert(v4::DhcpOption::Router(vec![GATEWAY_V4]));
        let mut routes = vec![(Ipv4Net::new(GATEWAY_V4, 32).ok()?, Ipv4Addr::UNSPECIFIED)];
        if let Some(prefix) = cfg.ipv4_prefix {
            routes.push((prefix, GATEWAY_V4));
        }
        routes.push((Ipv4Net::default(), GATEWAY_V4));
        opts.insert(v4::DhcpOption::ClasslessStaticRoute(routes));
        opts.insert(v4::DhcpOption::AddressLeaseTime(cfg.lease_secs));
        if cfg.mtu != 0 {
            opts.insert(v4::DhcpOption::InterfaceMtu(cfg.mtu));
        }
        opts.insert(v4::DhcpOption::Renewal(cfg.lease_secs / 2));
        opts.insert(v4::DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
        let dns: Vec<Ipv4Addr> = cfg.dns_servers.iter().filter_map(v4_of).collect();
        if !dns.is_empty() {
            opts.insert(v4::DhcpOption::DomainNameServer(dns));
        }
        let ntp: Vec<Ipv4Addr> = cfg.ntp_servers.iter().filter_map(v4_of).collect();
        if !ntp.is_empty() {
            opts.insert(v4::DhcpOption::NtpServers(ntp));
        }
        if !cfg.hostname.is_empty() {
            opts.insert(v4::DhcpOption::Hostname(cfg.hostname.clone()));
        }
        if kind == v4::MessageType::Ack {
            tracing::info!(nic = cfg.nic_id, %ip, "DHCP lease acknowledged");
        }
    }
    let mut body = Vec::new();
    reply.encode(&mut Encoder::new(&mut body)).ok()?;
    let dst = if kind == v4::MessageType::Nak || request.flags().broadcast() {
        Ipv4Addr::BROADCAST
    } else {
        ip
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
        .ipv4(GATEWAY_V4.octets(), dst.octets(), 64)
        .udp(67, 68)
        .write(&mut out, &body)
        .ok()?;
    // An INFORM's ACK hands out no address (the guest configured it by other means).
    if kind == v4::MessageType::Ack && request.opts().msg_type() == Some(v4::MessageType::Request) {
        *lease = Some(LeaseEvent::Granted {
            family: Family::V4,
            secs: cfg.lease_secs,
        });
    }
    Some(out)
}

fn v4_of(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

fn v6_of(ip: &IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    }
}

fn answer_ns(cfg: &NicConfig, src: Ipv6Addr, payload: &[u8]) -> Option<Vec<u8>> {
    let target: [u8; 16] = payload.get(..16)?.try_into().ok()?;
    if Ipv6Addr::from(target) != GATEWAY_V6 || src.is_unspecified() {
        return None;
    }
    let mut body = target.to_vec();
    body.extend_from_slice(&[2, 1]); // target link-layer address option
    body.extend_from_slice(&GATEWAY_MAC);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
        .ipv6(GATEWAY_V6.octets(), src.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            icmpv6::NeighborAdvertisementHeader {
                router: true,
                solicited: true,
                r#override: true,
            },
        ))
        .write(&mut out, &body)
        .ok()?;
    Some(out)
}

/// A router advertisement: the gateway as default router (fe80::1), addresses from DHCPv6
/// (managed flag: the control plane assigns them, so no SLAAC), the network prefix as
/// information (neither on-link nor autonomous: everything is routed), RDNSS with the
/// network's IPv6 DNS servers.
pub fn router_advertisement(cfg: &NicConfig, dst: Ipv6Addr) -> Vec<u8> {
    let dst = if dst.is_unspecified() {
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
    } else {
        dst
    };
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_be_bytes()); // reachable time
    body.extend_from_slice(&0u32.to_be_bytes()); // retrans timer
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&GATEWAY_MAC);
    if cfg.mtu != 0 {
        body.extend_from_slice(&[5, 1, 0, 0]); // MTU option
        body.extend_from_slice(&u32::from(cfg.mtu).to_be_bytes());
    }
    if let Some(prefix) = cfg.ipv6_prefix {
        body.extend_from_slice(
            &icmpv6::PrefixInformation {
                prefix_length: prefix.prefix_len(),
                on_link: false,
                autonomous_address_configuration: false,
                valid_lifetime: cfg.lease_secs,
                preferred_lifetime: cfg.lease_secs,
                prefix: prefix.network().octets(),
            }
            .to_bytes(),
        );
    }
    let dns: Vec<Ipv6Addr> = cfg.dns_servers.iter().filter_map(v6_of).collect();
    if !dns.is_empty() {
        body.push(25); // RDNSS (RFC 8106)
        body.push((1 + 2 * dns.len()) as u8);
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&cfg.lease_secs.to_be_bytes());
        for d in dns {
            body.extend_from_slice(&d.octets());
        }
    }
    let mut out = Vec::new();
    let mac = if dst.is_multicast() {
        let o = dst.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    } else {
        cfg.mac
    };
    let _ = PacketBuilder::ethernet2(GATEWAY_MAC, mac)
        .ipv6(GATEWAY_V6.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::RouterAdvertisement(
            icmpv6::RouterAdvertisementHeader {
                cur_hop_limit: 64,
                managed_address_config: true,
                other_config: true,
                router_lifetime: 1800,
            },
        ))
        .write(&mut out, &body);
    out
}

/// Longest DUID (RFC 8415 §11.1: a 2-byte type and at most 128 bytes of identifier).
const MAX_DUID_LEN: usize = 130;

/// The gateway's DHCPv6 server DUID (DUID-LL of the gateway MAC).
fn server_duid() -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&GATEWAY_MAC);
    duid
}

fn answer_dhcp6(
    cfg: &NicConfig,
    src: Ipv6Addr,
    payload: &[u8],
) -> (Option<Vec<u8>>, Option<LeaseEvent>) {
    let mut lease = None;
    let reply = dhcp6(cfg, src, payload, &mut lease);
    (reply, lease)
}

/// The DHCPv6 answer; `lease` is set to what it does to the NIC's lease.
fn dhcp6(
    cfg: &NicConfig,
    src: Ipv6Addr,
    payload: &[u8],
    lease: &mut Option<LeaseEvent>,
) -> Option<Vec<u8>> {
    if let Err(e) = option_lengths::check_v6(payload) {
        tracing::debug!(nic = cfg.nic_id, error = %e, "DHCPv6 message ignored");
        return None;
    }
    let request = v6::Message::decode(&mut Decoder::new(payload)).ok()?;
    let client_id = match request.opts().get(v6::OptionCode::ClientId) {
        Some(v6::DhcpOption::ClientId(id)) => id.clone(),
        _ => return None,
    };
    // The reply echoes the client's DUID: one longer than a DUID can be would make the reply
    // larger than the request (a reflection amplifier; found by `tests/fuzz_responder.rs`).
    if client_id.len() > MAX_DUID_LEN {
        tracing::debug!(
            nic = cfg.nic_id,
            len = client_id.len(),
            "DHCPv6 message with an overlong client DUID ignored"
        );
        return None;
    }
    let rapid = request.opts().get(v6::OptionCode::RapidCommit).is_some();
    let kind = match request.msg_type() {
        v6::MessageType::Solicit if rapid => v6::MessageType::Reply,
        v6::MessageType::Solicit => v6::MessageType::Advertise,
        v6::MessageType::Request
        | v6::MessageType::Renew
        | v6::MessageType::Rebind
        | v6::MessageType::Confirm
        | v6::MessageType::InformationRequest
        | v6::MessageType::Release => v6::MessageType::Reply,
        _ => return None,
    };
    let mut reply = v6::Message::new_with_id(kind, request.xid());
    let opts = reply.opts_mut();
    opts.insert(v6::DhcpOption::ClientId(client_id));
    opts.insert(v6::DhcpOption::ServerId(server_duid()));
    if rapid && kind == v6::MessageType::Reply && request.msg_type() == v6::MessageType::Solicit {
        opts.insert(v6::DhcpOption::RapidCommit);
    }
    let wants_address = request.msg_type() != v6::MessageType::InformationRequest
        && request.msg_type() != v6::MessageType::Release;
    // Whether this reply gives the guest its address (an Advertise only offers it).
    let mut grants = false;
    if wants_address {
        if let (Some(addr), Some(v6::DhcpOption::IANA(ia))) =
            (cfg.ipv6, request.opts().get(v6::OptionCode::IANA))
        {
            let mut ia_opts = v6::DhcpOptions::new();
            ia_opts.insert(v6::DhcpOption::IAAddr(v6::IAAddr {
                addr,
                preferred_life: cfg.lease_secs,
                valid_life: cfg.lease_secs,
                opts: v6::DhcpOptions::new(),
            }));
            opts.insert(v6::DhcpOption::IANA(v6::IANA {
                id: ia.id,
                t1: cfg.lease_secs / 2,
                t2: cfg.lease_secs / 8 * 7,
                opts: ia_opts,
            }));
            grants =
                kind == v6::MessageType::Reply && request.msg_type() != v6::MessageType::Confirm;
        }
    }
    let dns: Vec<Ipv6Addr> = cfg.dns_servers.iter().filter_map(v6_of).collect();
    if !dns.is_empty() {
        opts.insert(v6::DhcpOption::DomainNameServers(dns));
    }
    let mut body = Vec::new();
    reply.encode(&mut Encoder::new(&mut body)).ok()?;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, cfg.mac)
        .ipv6(GATEWAY_V6.octets(), src.octets(), 64)
        .udp(547, 546)
        .write(&mut out, &body)
        .ok()?;
    if grants {
        *lease = Some(LeaseEvent::Granted {
            family: Family::V6,
            secs: cfg.lease_secs,
        });
    } else if request.msg_type() == v6::MessageType::Release {
        *lease = Some(LeaseEvent::Released { family: Family::V6 });
    }
    Some(out)
}

/// Lengths checked before `dhcproto` decodes a message. dhcproto 0.15 trusts some of them:
/// `Message::chaddr()` slices by the header's `hlen` (a panic, in release builds too, for
/// `hlen > 16`), and option decoding `debug_assert!`s fixed lengths and subtracts header sizes
/// from a length without checking (a panic in debug builds, a misparse in release). All were
/// found by `tests/fuzz_responder.rs`. A message with such an option is not a well-formed client
/// message, so it is ignored; everything the decoder walks is checked to fit, and DHCPv6
/// options nested in IA options are checked to a bounded depth.
mod option_lengths {
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub enum BadOptions {
        #[error("DHCPv4 message shorter than its fixed header and magic cookie")]
        Short,
        #[error("DHCPv4 hardware address length {0} is more than 16")]
        HardwareLength(u8),
        #[error("option {code} runs past the end of the message")]
        Truncated { code: u16 },
        #[error("option {code} has length {len}, which its format does not allow")]
        Length { code: u16, len: usize },
        #[error("DHCPv6 options nested deeper than {MAX_DEPTH}")]
        TooDeep,
        #[error("DHCPv6 relay messages are not answered")]
        Relay,
    }

    /// Fixed header (236 bytes) and magic cookie.
    const V4_OPTIONS_START: usize = 240;
    const MAX_DEPTH: usize = 4;

    /// What a DHCPv4 option's (concatenated, RFC 3396) length must be for dhcproto.
    fn v4_length_ok(code: u8, len: usize) -> bool {
        match code {
            80 => len == 0,        // rapid commit
            81 => len >= 3,        // client FQDN: flags, two rcodes, name
            94 => len == 3,        // client network interface identifier
            151 => len >= 1,       // bulk leasequery status code
            152..=155 => len == 4, // bulk leasequery times
            _ => true,
        }
    }

    pub fn check_v4(payload: &[u8]) -> Result<(), BadOptions> {
        let options = payload.get(V4_OPTIONS_START..).ok_or(BadOptions::Short)?;
        // `hlen`: how much of the 16-byte `chaddr` field is the address.
        if payload[2] > 16 {
            return Err(BadOptions::HardwareLength(payload[2]));
        }
        let mut at = 0;
        // dhcproto concatenates consecutive options with the same code before decoding.
        let mut run: Option<(u8, usize)> = None;
        let finish = |run: Option<(u8, usize)>| match run {
            Some((code, len)) if !v4_length_ok(code, len) => Err(BadOptions::Length {
                code: code.into(),
                len,
            }),
            _ => Ok(()),
        };
        while let Some(&code) = options.get(at) {
            match code {
                0 | 255 => {
                    finish(run.take())?;
                    if code == 255 {
                        return Ok(());
                    }
                    at += 1;
                }
                _ => {
                    let len = usize::from(
                        *options
                            .get(at + 1)
                            .ok_or(BadOptions::Truncated { code: code.into() })?,
                    );
                    if at + 2 + len > options.len() {
                        return Err(BadOptions::Truncated { code: code.into() });
                    }
                    run = match run {
                        Some((c, total)) if c == code => Some((c, total + len)),
                        other => {
                            finish(other)?;
                            Some((code, len))
                        }
                    };
                    at += 2 + len;
                }
            }
        }
        finish(run)
    }

    pub fn check_v6(payload: &[u8]) -> Result<(), BadOptions> {
        match payload.first() {
            // Relay-forward and relay-reply have another header; a guest sends neither.
            Some(12 | 13) => Err(BadOptions::Relay),
            Some(_) => v6_options(payload.get(4..).unwrap_or_default(), 0),
            None => Ok(()),
        }
    }

    fn v6_options(mut options: &[u8], depth: usize) -> Result<(), BadOptions> {
        if depth > MAX_DEPTH {
            return Err(BadOptions::TooDeep);
        }
        while !options.is_empty() {
            let header = options.get(..4).ok_or(BadOptions::Truncated { code: 0 })?;
            let code = u16::from_be_bytes([header[0], header[1]]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let body = options
                .get(4..4 + len)
                .ok_or(BadOptions::Truncated { code })?;
            let length = |ok: bool| {
                if ok {
                    Ok(())
                } else {
                    Err(BadOptions::Length { code, len })
                }
            };
            // Options holding options after a fixed part: IA_NA, IA_TA, IAADDR, IA_PD,
            // IAPREFIX.
            let nested = match code {
                3 | 25 => Some(12),
                4 => Some(4),
                5 => Some(24),
                26 => Some(25),
                _ => None,
            };
            match (code, nested) {
                (_, Some(fixed)) => {
                    length(len >= fixed)?;
                    v6_options(&body[fixed..], depth + 1)?;
                }
                (9, _) => return Err(BadOptions::Relay), // relay message
                (13, _) => length(len >= 2)?,            // status code
                (16 | 17, _) => length(len >= 4)?,       // vendor class, vendor options
                (14 | 20, _) => length(len == 0)?,       // rapid commit, reconfigure accept
                _ => {}
            }
            options = &options[4 + len..];
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn v4(options: &[u8]) -> Vec<u8> {
            let mut payload = vec![0u8; 236];
            payload.extend_from_slice(&[99, 130, 83, 99]);
            payload.extend_from_slice(options);
            payload
        }

        #[test]
        fn dhcpv4_options_that_dhcproto_would_assert_on_are_refused() {
            assert_eq!(check_v4(&v4(&[53, 1, 1, 255])), Ok(()));
            // Rapid commit with a value; a 2-byte client network interface; an FQDN too short
            // for its header; a status code of length 0 (dhcproto subtracts 1).
            for bad in [&[80, 1, 0][..], &[94, 2, 1, 2], &[81, 1, 0], &[151, 0]] {
                assert!(matches!(check_v4(&v4(bad)), Err(BadOptions::Length { .. })));
            }
            // Two 3-byte interface options concatenate to 6 bytes.
            assert!(check_v4(&v4(&[94, 3, 1, 2, 3, 94, 3, 1, 2, 3])).is_err());
            assert!(check_v4(&v4(&[94, 3, 1, 2, 3, 0, 94, 3, 1, 2, 3])).is_ok());
            assert_eq!(
                check_v4(&v4(&[12, 9, 1])),
                Err(BadOptions::Truncated { code: 12 })
            );
            assert_eq!(check_v4(&[0; 100]), Err(BadOptions::Short));
            let mut long_hardware_address = v4(&[53, 1, 1, 255]);
            long_hardware_address[2] = 128;
            assert_eq!(
                check_v4(&long_hardware_address),
                Err(BadOptions::HardwareLength(128))
            );
        }

        #[test]
        fn dhcpv6_options_are_checked_also_inside_identity_associations() {
            assert_eq!(check_v6(&[1, 0, 0, 1, 0, 14, 0, 0]), Ok(()));
            assert!(check_v6(&[1, 0, 0, 1, 0, 13, 0, 1, 0]).is_err());
            // A status code of length 1 inside an IA_NA.
            let mut ia = vec![1, 0, 0, 1, 0, 3, 0, 17];
            ia.extend_from_slice(&[0; 12]);
            ia.extend_from_slice(&[0, 13, 0, 1, 0]);
            assert!(matches!(
                check_v6(&ia),
                Err(BadOptions::Length { code: 13, len: 1 })
            ));
            assert_eq!(check_v6(&[12, 0, 0, 0]), Err(BadOptions::Relay));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NicConfig {
        NicConfig {
            nic_id: "nic".into(),
            mac: [2, 0, 0, 0, 0, 9],
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 9)),
            ipv6: None,
            ipv4_prefix: Some("10.0.0.0/24".parse().unwrap()),
            ipv6_prefix: None,
            dns_servers: vec![],
            ntp_servers: vec![],
            hostname: String::new(),
            lease_secs: 60,
            mtu: 1450,
        }
    }

    fn arp_request(sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &sender_mac,
            &sender,
            &[0; 6],
            &target,
        )
        .unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(sender_mac, [0xff; 6])
            .arp(arp)
            .write(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn arp_is_answered_for_other_addresses_but_never_for_the_vms_own() {
        let cfg = config();
        assert!(answer(&cfg, &arp_request(cfg.mac, [10, 0, 0, 9], [169, 254, 0, 1])).is_some());
        assert!(answer(&cfg, &arp_request(cfg.mac, [10, 0, 0, 9], [10, 0, 0, 5])).is_some());
        // Duplicate address detection probes (sender 0.0.0.0) and the VM's own address.
        assert!(answer(&cfg, &arp_request(cfg.mac, [0, 0, 0, 0], [10, 0, 0, 9])).is_none());
        assert!(answer(&cfg, &arp_request(cfg.mac, [10, 0, 0, 9], [10, 0, 0, 9])).is_none());
        // Frames from another MAC are not the VM's.
        assert!(answer(
            &cfg,
            &arp_request([2, 0, 0, 0, 0, 8], [10, 0, 0, 9], [169, 254, 0, 1])
        )
        .is_none());
    }

    #[test]
    fn the_token_bucket_allows_a_burst_then_the_rate_and_no_limit_means_no_limit() {
        let start = Instant::now();
        let limit = ControlRateLimit {
            per_sec: 10,
            burst: 5,
        };
        let mut bucket = TokenBucket::new(limit, start);
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 5);
        // One second refills `per_sec` tokens, capped at the burst.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 5);
        let soon = later + Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| bucket.take(soon)).count(), 3);
        // A clock that goes backwards refills nothing.
        assert!(!bucket.take(start));
        let mut unlimited = TokenBucket::new(
            ControlRateLimit {
                per_sec: 0,
                burst: 0,
            },
            start,
        );
        assert!((0..10_000).all(|_| unlimited.take(start)));
    }

    fn dhcp4(cfg: &NicConfig, kind: v4::MessageType, asked: Option<Ipv4Addr>) -> Vec<u8> {
        let mut msg = v4::Message::default();
        msg.set_opcode(v4::Opcode::BootRequest)
            .set_xid(7)
            .set_chaddr(&cfg.mac);
        msg.opts_mut().insert(v4::DhcpOption::MessageType(kind));
        if let Some(a) = asked {
            msg.opts_mut().insert(v4::DhcpOption::RequestedIpAddress(a));
        }
        let mut body = Vec::new();
        msg.encode(&mut Encoder::new(&mut body)).unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(cfg.mac, [0xff; 6])
            .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
            .udp(68, 67)
            .write(&mut out, &body)
            .unwrap();
        out
    }

    fn dhcp6(cfg: &NicConfig, kind: v6::MessageType, rapid: bool) -> Vec<u8> {
        let mut msg = v6::Message::new_with_id(kind, [1, 2, 3]);
        msg.opts_mut()
            .insert(v6::DhcpOption::ClientId(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 9]));
        msg.opts_mut().insert(v6::DhcpOption::IANA(v6::IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: v6::DhcpOptions::new(),
        }));
        if rapid {
            msg.opts_mut().insert(v6::DhcpOption::RapidCommit);
        }
        let mut body = Vec::new();
        msg.encode(&mut Encoder::new(&mut body)).unwrap();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(cfg.mac, [0x33, 0x33, 0, 1, 0, 2])
            .ipv6(
                "fe80::9".parse::<Ipv6Addr>().unwrap().octets(),
                "ff02::1:2".parse::<Ipv6Addr>().unwrap().octets(),
                64,
            )
            .udp(546, 547)
            .write(&mut out, &body)
            .unwrap();
        out
    }

    #[test]
    fn only_an_ack_or_a_reply_with_the_address_grants_a_lease_and_a_release_ends_it() {
        let mut cfg = config();
        cfg.ipv6 = Some("fd00::9".parse().unwrap());
        let own = cfg.ipv4;
        let granted = |family| {
            Some(LeaseEvent::Granted {
                family,
                secs: cfg.lease_secs,
            })
        };
        let event = |frame: Vec<u8>| answer_noting(&cfg, &frame).1;
        // DHCPv4: an offer is no lease; an ACK is; a NAK (another address) and an INFORM's ACK
        // are not; RELEASE and DECLINE end it.
        assert_eq!(event(dhcp4(&cfg, v4::MessageType::Discover, None)), None);
        assert_eq!(
            event(dhcp4(&cfg, v4::MessageType::Request, own)),
            granted(Family::V4)
        );
        let other = Some(Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(event(dhcp4(&cfg, v4::MessageType::Request, other)), None);
        assert_eq!(event(dhcp4(&cfg, v4::MessageType::Inform, None)), None);
        let released = |family| Some(LeaseEvent::Released { family });
        assert_eq!(
            event(dhcp4(&cfg, v4::MessageType::Release, None)),
            released(Family::V4)
        );
        assert_eq!(
            event(dhcp4(&cfg, v4::MessageType::Decline, None)),
            released(Family::V4)
        );
        // DHCPv6: an Advertise offers; a Reply to a Request, or to a rapid-commit Solicit, grants.
        assert_eq!(event(dhcp6(&cfg, v6::MessageType::Solicit, false)), None);
        assert_eq!(
            event(dhcp6(&cfg, v6::MessageType::Solicit, true)),
            granted(Family::V6)
        );
        assert_eq!(
            event(dhcp6(&cfg, v6::MessageType::Request, false)),
            granted(Family::V6)
        );
        assert_eq!(event(dhcp6(&cfg, v6::MessageType::Confirm, false)), None);
        assert_eq!(
            event(dhcp6(&cfg, v6::MessageType::Release, false)),
            released(Family::V6)
        );
        // Without an IPv6 address there is nothing to lease.
        cfg.ipv6 = None;
        assert_eq!(
            answer_noting(&cfg, &dhcp6(&cfg, v6::MessageType::Request, false)).1,
            None
        );
    }

    #[test]
    fn leases_expire_count_renewals_and_end_with_a_release() {
        let leases = Leases::default();
        let grant = LeaseEvent::Granted {
            family: Family::V4,
            secs: 60,
        };
        assert_eq!(leases.sample(1000), LeaseSample::default());
        leases.note(grant, 1000);
        leases.note(grant, 1030);
        let s = leases.sample(1089);
        assert_eq!((s.active, s.granted), ([true, false], [2, 0]));
        assert_eq!(leases.sample(1090).active, [false, false]);
        leases.note(grant, 1100);
        leases.note(LeaseEvent::Released { family: Family::V4 }, 1101);
        let s = leases.sample(1102);
        assert_eq!((s.active, s.granted), ([false, false], [3, 0]));
    }

    #[test]
    fn router_advertisements_go_to_all_nodes_when_the_solicitation_had_no_source() {
        let mut cfg = config();
        cfg.ipv6_prefix = Some("fd00::/64".parse().unwrap());
        let ra = router_advertisement(&cfg, Ipv6Addr::UNSPECIFIED);
        assert_eq!(&ra[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }
}
