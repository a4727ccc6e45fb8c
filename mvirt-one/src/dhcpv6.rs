//! A small stateful DHCPv6 client (RFC 8415): Solicit → Advertise → Request → Reply for one
//! IA_NA address and the DNS servers, renewed by repeating the exchange at T1 (or half the valid
//! lifetime). Addresses are added as /128 (the on-link prefix comes from router advertisements,
//! which the kernel handles together with SLAAC).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::time::Duration;

use dhcproto::v6::{self, DhcpOption, DhcpOptions, IAAddr, MessageType, OptionCode, IANA, ORO};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};

/// All DHCP relay agents and servers (link scope).
const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// A DHCPv6 lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    pub address: Ipv6Addr,
    pub valid_seconds: u32,
    pub t1_seconds: u32,
    pub dns: Vec<Ipv6Addr>,
}

impl Lease6 {
    /// When to renew.
    pub fn renew_after(&self) -> Duration {
        let seconds = if self.t1_seconds > 0 {
            self.t1_seconds
        } else {
            self.valid_seconds / 2
        };
        Duration::from_secs(u64::from(seconds.max(60)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Dhcpv6Error {
    #[error("DHCPv6 socket on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCPv6 server answered on {0}")]
    NoAnswer(String),
    #[error("the DHCPv6 server offered no address on {0}")]
    NoAddress(String),
}

fn socket_for(interface: &str) -> Result<tokio::net::UdpSocket, Dhcpv6Error> {
    let err = |source: nix::Error| Dhcpv6Error::Socket {
        interface: interface.to_string(),
        source: source.into(),
    };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err)?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(err)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0)),
    )
    .map_err(err)?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| {
        Dhcpv6Error::Socket {
            interface: interface.to_string(),
            source,
        }
    })
}

/// DUID-LL (type 3, hardware type 1 = Ethernet) from the interface's MAC.
fn duid(mac: &[u8]) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(mac);
    duid
}

fn message(kind: MessageType, xid: [u8; 3], client_id: &[u8], ia: IANA) -> v6::Message {
    let mut msg = v6::Message::new_with_id(kind, xid);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::ClientId(client_id.to_vec()));
    opts.insert(DhcpOption::ElapsedTime(0));
    opts.insert(DhcpOption::IANA(ia));
    opts.insert(DhcpOption::ORO(ORO {
        opts: vec![OptionCode::DomainNameServers],
    }));
    msg
}

async fn exchange(
    socket: &tokio::net::UdpSocket,
    if_index: u32,
    msg: &v6::Message,
    want: MessageType,
) -> Option<v6::Message> {
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes)).ok()?;
    let to = SocketAddrV6::new(ALL_DHCP_SERVERS, 547, 0, if_index);
    let mut buf = vec![0u8; 1500];
    for attempt in 0..5u32 {
        // Fails while the link-local address is still tentative (DAD): the next attempt works.
        let _ = socket.send_to(&bytes, to).await;
        let wait = Duration::from_millis(1000 * (1 << attempt.min(3)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = received else { break };
            let Ok(reply) = v6::Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if reply.xid() == msg.xid() && reply.msg_type() == want {
                return Some(reply);
            }
        }
    }
    None
}

fn offered_address(reply: &v6::Message) -> Option<IAAddr> {
    let Some(DhcpOption::IANA(ia)) = reply.opts().get(OptionCode::IANA) else {
        return None;
    };
    match ia.opts.get(OptionCode::IAAddr) {
        Some(DhcpOption::IAAddr(addr)) => Some(addr.clone()),
        _ => None,
    }
}

/// Parses a Reply into a lease.
pub fn lease_from(reply: &v6::Message) -> Option<Lease6> {
    let address = offered_address(reply)?;
    let t1 = match reply.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => ia.t1,
        _ => 0,
    };
    let dns = match reply.opts().get(OptionCode::DomainNameServers) {
        Some(DhcpOption::DomainNameServers(d)) => d.clone(),
        _ => Vec::new(),
    };
    Some(Lease6 {
        address: address.addr,
        valid_seconds: address.valid_life,
        t1_seconds: t1,
        dns,
    })
}

/// One DHCPv6 exchange on an interface.
pub async fn acquire(interface: &str, if_index: u32, mac: &[u8]) -> Result<Lease6, Dhcpv6Error> {
    let socket = socket_for(interface)?;
    let client_id = duid(mac);
    let seed = chrono::Utc::now().timestamp_subsec_nanos() ^ if_index;
    let xid = [(seed >> 16) as u8, (seed >> 8) as u8, seed as u8];
    let empty_ia = IANA {
        id: if_index,
        t1: 0,
        t2: 0,
        opts: DhcpOptions::new(),
    };
    let solicit = message(MessageType::Solicit, xid, &client_id, empty_ia);
    let advertise = exchange(&socket, if_index, &solicit, MessageType::Advertise)
        .await
        .ok_or_else(|| Dhcpv6Error::NoAnswer(interface.to_string()))?;
    let offered =
        offered_address(&advertise).ok_or_else(|| Dhcpv6Error::NoAddress(interface.to_string()))?;
    let server_id = match advertise.opts().get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(id)) => id.clone(),
        _ => return Err(Dhcpv6Error::NoAnswer(interface.to_string())),
    };
    let ia = IANA {
        id: if_index,
        t1: 0,
        t2: 0,
        opts: [DhcpOption::IAAddr(IAAddr {
            addr: offered.addr,
            preferred_life: 0,
            valid_life: 0,
            opts: DhcpOptions::new(),
        })]
        .into_iter()
        .collect(),
    };
    let mut request = message(MessageType::Request, xid, &client_id, ia);
    request.opts_mut().insert(DhcpOption::ServerId(server_id));
    let reply = exchange(&socket, if_index, &request, MessageType::Reply)
        .await
        .ok_or_else(|| Dhcpv6Error::NoAnswer(interface.to_string()))?;
    lease_from(&reply).ok_or_else(|| Dhcpv6Error::NoAddress(interface.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_an_address_and_dns_becomes_a_lease() {
        let addr: Ipv6Addr = "fd00::10".parse().unwrap();
        let dns: Ipv6Addr = "fd00::1".parse().unwrap();
        let ia = IANA {
            id: 2,
            t1: 1800,
            t2: 2880,
            opts: [DhcpOption::IAAddr(IAAddr {
                addr,
                preferred_life: 3600,
                valid_life: 3600,
                opts: DhcpOptions::new(),
            })]
            .into_iter()
            .collect(),
        };
        let mut reply = message(
            MessageType::Reply,
            [1, 2, 3],
            &duid(&[1, 2, 3, 4, 5, 6]),
            ia,
        );
        reply
            .opts_mut()
            .insert(DhcpOption::DomainNameServers(vec![dns]));
        // Through the wire format and back.
        let mut bytes = Vec::new();
        reply.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let decoded = v6::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        let lease = lease_from(&decoded).unwrap();
        assert_eq!(lease.address, addr);
        assert_eq!(lease.dns, vec![dns]);
        assert_eq!(lease.renew_after(), Duration::from_secs(1800));
    }
}
