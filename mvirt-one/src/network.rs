//! Guest networking as PID 1: every interface up (rtnetlink), DHCPv4 on every non-loopback
//! interface, address + default route through rtnetlink, DNS servers into `/etc/resolv.conf`.
//!
//! IPv6: with the interface up the kernel does SLAAC from router advertisements (`accept_ra` is
//! on by default for a non-forwarding host); [`crate::dhcpv6`] runs alongside for networks that
//! hand out addresses statefully. The DHCPv4 client is deliberately small: DISCOVER → OFFER →
//! REQUEST → ACK with the broadcast flag (so replies reach a socket on an interface without an
//! address), retransmission with a growing timeout, and a renewal at half the lease.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use futures::TryStreamExt;
use mvirt_common::Shutdown;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::RouteScope;

/// A DHCPv4 lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub routers: Vec<Ipv4Addr>,
    /// Option 121 (RFC 3442): destination, prefix length, gateway (0.0.0.0: on-link).
    pub classless_routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_seconds: u32,
    pub server: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netlink")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink connection")]
    Connection(#[source] std::io::Error),
    #[error("DHCP socket on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP lease on {0}")]
    NoLease(String),
}

struct Link {
    index: u32,
    name: String,
    mac: Vec<u8>,
    loopback: bool,
}

async fn links(handle: &rtnetlink::Handle) -> Result<Vec<Link>, NetworkError> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(msg) = stream.try_next().await? {
        let mut name = String::new();
        let mut mac = Vec::new();
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(a) => mac = a.clone(),
                _ => {}
            }
        }
        out.push(Link {
            index: msg.header.index,
            name,
            mac,
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
        });
    }
    Ok(out)
}

/// Brings every interface up and runs DHCPv4 on each non-loopback one (in the background,
/// renewing until shutdown).
pub async fn configure_all(shutdown: Shutdown) {
    if let Err(e) = configure(shutdown).await {
        tracing::error!(error = %mvirt_common::error::error_chain(&e), "network configuration failed");
    }
}

async fn configure(shutdown: Shutdown) -> Result<(), NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connection)?;
    tokio::spawn(connection);
    let mut first_rounds = Vec::new();
    for link in links(&handle).await? {
        handle
            .link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(link.index)
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        tracing::info!(interface = %link.name, "interface up");
        if link.loopback || link.mac.len() != 6 {
            continue;
        }
        tokio::spawn(run_dhcpv6(
            handle.clone(),
            link.index,
            link.name.clone(),
            link.mac.clone(),
            shutdown.clone(),
        ));
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        let (done, first_round) = tokio::sync::oneshot::channel();
        first_rounds.push(first_round);
        tokio::spawn(async move {
            run_dhcp(handle, link, shutdown, done).await;
        });
    }
    futures::future::join_all(first_rounds).await;
    Ok(())
}

async fn run_dhcp(
    handle: rtnetlink::Handle,
    link: Link,
    shutdown: Shutdown,
    first_round: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_round = Some(first_round);
    let mut current: Option<Lease> = None;
    loop {
        let lease = tokio::select! {
            lease = acquire(&link, current.as_ref().map(|l| l.address)) => lease,
            _ = shutdown.wait() => return,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(interface = %link.name, error = %mvirt_common::error::error_chain(&e), "DHCP failed; retrying");
                if let Some(done) = first_round.take() {
                    let _ = done.send(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                    _ = shutdown.wait() => return,
                }
            }
        };
        if current.as_ref() != Some(&lease) {
            if let Err(e) = apply(&handle, &link, &lease).await {
                tracing::error!(interface = %link.name, error = %mvirt_common::error::error_chain(&e), "cannot apply DHCP lease");
            } else {
                tracing::info!(interface = %link.name, address = %lease.address, prefix = lease.prefix_len, routers = ?lease.routers, "DHCP lease applied");
            }
            current = Some(lease.clone());
        }
        if let Some(done) = first_round.take() {
            let _ = done.send(());
        }
        let renew = Duration::from_secs(u64::from(lease.lease_seconds.max(60) / 2));
        tokio::select! {
            _ = tokio::time::sleep(renew) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// DNS servers by source (`dhcpv4:eth0`, `dhcpv6:eth0`), written together to resolv.conf.
static DNS: std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn set_dns(source: &str, servers: Vec<String>) {
    let mut all = DNS.lock().unwrap_or_else(|p| p.into_inner());
    all.insert(source.to_string(), servers);
    let mut content = String::new();
    for server in all.values().flatten() {
        let line = format!("nameserver {server}\n");
        if !content.contains(&line) {
            content.push_str(&line);
        }
    }
    if let Err(e) = std::fs::write("/etc/resolv.conf", content) {
        tracing::warn!(error = %e, "cannot write /etc/resolv.conf");
    }
}

/// DHCPv6 on one interface, in the background: a lease when a server answers, renewed at T1;
/// quiet retries when none does (many networks use SLAAC only).
async fn run_dhcpv6(
    handle: rtnetlink::Handle,
    index: u32,
    name: String,
    mac: Vec<u8>,
    shutdown: Shutdown,
) {
    let mut current: Option<crate::dhcpv6::Lease6> = None;
    loop {
        let result = tokio::select! {
            r = crate::dhcpv6::acquire(&name, index, &mac) => r,
            _ = shutdown.wait() => return,
        };
        let wait = match result {
            Ok(lease) => {
                if current.as_ref() != Some(&lease) {
                    let added = ignore_exists(
                        handle
                            .address()
                            .add(index, lease.address.into(), 128)
                            .execute()
                            .await,
                    );
                    match added {
                        Ok(()) => {
                            tracing::info!(interface = %name, address = %lease.address, "DHCPv6 lease applied")
                        }
                        Err(e) => {
                            tracing::error!(interface = %name, error = %mvirt_common::error::error_chain(&e), "cannot apply DHCPv6 lease")
                        }
                    }
                    set_dns(
                        &format!("dhcpv6:{name}"),
                        lease.dns.iter().map(|d| d.to_string()).collect(),
                    );
                }
                let wait = lease.renew_after();
                current = Some(lease);
                wait
            }
            Err(e) => {
                tracing::debug!(interface = %name, error = %mvirt_common::error::error_chain(&e), "no DHCPv6 lease");
                Duration::from_secs(30)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Renewals re-add what exists already.
fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<(), NetworkError> {
    match result {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => Ok(other?),
    }
}

impl Lease {
    /// The routes to install: option 121 when present (RFC 3442: it replaces the router
    /// option), else a default route via the first router.
    pub fn routes(&self) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
        if !self.classless_routes.is_empty() {
            self.classless_routes.clone()
        } else {
            self.routers
                .first()
                .map(|r| vec![(Ipv4Addr::UNSPECIFIED, 0, *r)])
                .unwrap_or_default()
        }
    }
}

async fn apply(handle: &rtnetlink::Handle, link: &Link, lease: &Lease) -> Result<(), NetworkError> {
    ignore_exists(
        handle
            .address()
            .add(link.index, lease.address.into(), lease.prefix_len)
            .execute()
            .await,
    )?;
    for (destination, prefix_len, gateway) in lease.routes() {
        let mut route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(link.index);
        if gateway.is_unspecified() {
            route = route.scope(RouteScope::Link);
        } else {
            // The gateway may lie outside the leased subnet (mvirt's link-local 169.254.0.1
            // with a /32 address): make it reachable on the link first.
            let to_gateway = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(link.index)
                .scope(RouteScope::Link)
                .build();
            ignore_exists(handle.route().add(to_gateway).execute().await)?;
            route = route.gateway(gateway);
        }
        ignore_exists(handle.route().add(route.build()).execute().await)?;
    }
    set_dns(
        &format!("dhcpv4:{}", link.name),
        lease.dns.iter().map(|d| d.to_string()).collect(),
    );
    Ok(())
}

fn dhcp_socket(interface: &str) -> Result<tokio::net::UdpSocket, NetworkError> {
    let err = |source: nix::Error| NetworkError::Socket {
        interface: interface.to_string(),
        source: source.into(),
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true).map_err(err)?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(err)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
    )
    .map_err(err)?;
    let std_socket = std::net::UdpSocket::from(fd);
    tokio::net::UdpSocket::from_std(std_socket).map_err(|source| NetworkError::Socket {
        interface: interface.to_string(),
        source,
    })
}

fn request_message(xid: u32, mac: &[u8], kind: MessageType) -> Message {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    msg.set_opcode(Opcode::BootRequest);
    msg.set_flags(Flags::default().set_broadcast());
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    msg
}

/// Sends `msg` and waits for a reply of type `want` with the same xid, retransmitting.
async fn exchange(
    socket: &tokio::net::UdpSocket,
    msg: &Message,
    want: MessageType,
) -> Option<Message> {
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes)).ok()?;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut buf = vec![0u8; 1500];
    for attempt in 0..6u32 {
        if socket.send_to(&bytes, broadcast).await.is_err() {
            continue;
        }
        let wait = Duration::from_millis(500 * (1 << attempt.min(4)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = received else { break };
            let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if reply.xid() == msg.xid()
                && reply.opcode() == Opcode::BootReply
                && reply.opts().msg_type() == Some(want)
            {
                return Some(reply);
            }
        }
    }
    None
}

fn lease_from(ack: &Message) -> Lease {
    let opts = ack.opts();
    let mask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let routers = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.clone(),
        _ => Vec::new(),
    };
    let classless_routes = match opts.get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(routes)) => routes
            .iter()
            .map(|(net, gw)| (net.network(), net.prefix_len(), *gw))
            .collect(),
        _ => Vec::new(),
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let lease_seconds = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => ack.siaddr(),
    };
    Lease {
        address: ack.yiaddr(),
        prefix_len: mask,
        routers,
        classless_routes,
        dns,
        lease_seconds,
        server,
    }
}

/// One DHCPv4 exchange on `link`.
async fn acquire(link: &Link, previous: Option<Ipv4Addr>) -> Result<Lease, NetworkError> {
    let socket = dhcp_socket(&link.name)?;
    let xid = u32::from_be_bytes([link.mac[2], link.mac[3], link.mac[4], link.mac[5]])
        ^ (std::process::id() << 16)
        ^ (chrono::Utc::now().timestamp_subsec_nanos());
    let mut discover = request_message(xid, &link.mac, MessageType::Discover);
    if let Some(previous) = previous {
        discover
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(previous));
    }
    let offer = exchange(&socket, &discover, MessageType::Offer)
        .await
        .ok_or_else(|| NetworkError::NoLease(link.name.clone()))?;
    let offered = lease_from(&offer);
    let mut request = request_message(xid, &link.mac, MessageType::Request);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offered.address));
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(offered.server));
    let ack = exchange(&socket, &request, MessageType::Ack)
        .await
        .ok_or_else(|| NetworkError::NoLease(link.name.clone()))?;
    Ok(lease_from(&ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(options: Vec<DhcpOption>) -> Message {
        let mut msg = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 5),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[1, 2, 3, 4, 5, 6],
        );
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in options {
            msg.opts_mut().insert(o);
        }
        msg
    }

    #[test]
    fn classless_routes_replace_the_router_option() {
        let gw = Ipv4Addr::new(169, 254, 0, 1);
        let lease = lease_from(&ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 255)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]),
            DhcpOption::ClasslessStaticRoute(vec![("0.0.0.0/0".parse().unwrap(), gw)]),
            DhcpOption::AddressLeaseTime(600),
        ]));
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(lease.prefix_len, 32);
        assert_eq!(lease.lease_seconds, 600);
        assert_eq!(lease.routes(), vec![(Ipv4Addr::UNSPECIFIED, 0, gw)]);

        let plain = lease_from(&ack(vec![DhcpOption::Router(vec![Ipv4Addr::new(
            10, 0, 0, 1,
        )])]));
        assert_eq!(
            plain.routes(),
            vec![(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(10, 0, 0, 1))]
        );
    }
}
