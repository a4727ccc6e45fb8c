//! The gateway's userspace half: ARP, DHCPv4, ICMP echo, NDP (NA + RA), DHCPv6 and ICMPv6 echo.
//!
//! Each NIC gets an `AF_PACKET` socket bound to its TAP with the `control_filter` eBPF socket
//! filter attached, so only the frames the VM sends to the gateway reach userspace (packet taps
//! run before tc ingress, where the datapath drops those frames so the host stack never sees
//! them). [`answer`] is a pure function from (NIC configuration, frame) to the reply frame;
//! replies are written back on the same socket, i.e. transmitted to the VM through the TAP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};

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

/// A running responder for one NIC; stops when dropped.
pub struct Responder {
    config: Arc<RwLock<NicConfig>>,
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
        let tap = tap.to_string();
        let task = tokio::spawn(async move { serve(afd, shared, tap).await });
        Ok(Self { config, task })
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

async fn serve(afd: AsyncFd<OwnedFd>, config: Arc<RwLock<NicConfig>>, tap: String) {
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
        let reply = {
            let cfg = config.read().unwrap_or_else(|p| p.into_inner());
            answer(&cfg, &buf[..n])
        };
        if let Some(frame) = reply {
            send(&afd, &frame, &tap);
        }
    }
}

/// The reply to one frame from the VM, if the gateway answers it.
pub fn answer(cfg: &NicConfig, frame: &[u8]) -> Option<Vec<u8>> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
        return None;
    };
    if eth.source() != cfg.mac {
        return None;
    }
    match &packet.net {
        Some(NetSlice::Arp(arp)) => answer_arp(cfg, arp),
        Some(NetSlice::Ipv4(ip)) => {
            let src = ip.header().source_addr();
            let dst = ip.header().destination_addr();
            match &packet.transport {
                Some(TransportSlice::Udp(udp)) if udp.destination_port() == 67 => {
                    answer_dhcp4(cfg, udp.payload())
                }
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
                Some(TransportSlice::Udp(udp)) if udp.destination_port() == 547 => {
                    answer_dhcp6(cfg, src, udp.payload())
                }
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

fn answer_dhcp4(cfg: &NicConfig, payload: &[u8]) -> Option<Vec<u8>> {
    let ip = cfg.ipv4?;
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

/// The gateway's DHCPv6 server DUID (DUID-LL of the gateway MAC).
fn server_duid() -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&GATEWAY_MAC);
    duid
}

fn answer_dhcp6(cfg: &NicConfig, src: Ipv6Addr, payload: &[u8]) -> Option<Vec<u8>> {
    let request = v6::Message::decode(&mut Decoder::new(payload)).ok()?;
    let client_id = match request.opts().get(v6::OptionCode::ClientId) {
        Some(v6::DhcpOption::ClientId(id)) => id.clone(),
        _ => return None,
    };
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
    Some(out)
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
    fn router_advertisements_go_to_all_nodes_when_the_solicitation_had_no_source() {
        let mut cfg = config();
        cfg.ipv6_prefix = Some("fd00::/64".parse().unwrap());
        let ra = router_advertisement(&cfg, Ipv6Addr::UNSPECIFIED);
        assert_eq!(&ra[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }
}
