//! NetService: translates between proto messages and domain types, nothing else. Parsing
//! errors are `INVALID_ARGUMENT`; everything else is decided by `manager.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tonic::{Request, Response, Status};

use crate::manager::flows::TrackedFlow;
use crate::manager::NetManager;
use crate::model::{self, format_mac, Direction, Protocol, RuleTarget};
use crate::proto::{self, net_service_server::NetService};

/// The gRPC face of a [`NetManager`].
pub struct NetGrpc {
    manager: Arc<NetManager>,
}

impl NetGrpc {
    pub fn new(manager: Arc<NetManager>) -> Self {
        Self { manager }
    }
}

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

fn parse_opt<T: std::str::FromStr>(what: &str, value: &str) -> Result<Option<T>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| bad(format!("invalid {what} {value:?}")))
}

fn parse_ips(what: &str, values: &[String]) -> Result<Vec<IpAddr>, Status> {
    values
        .iter()
        .map(|v| v.parse().map_err(|_| bad(format!("invalid {what} {v:?}"))))
        .collect()
}

fn parse_nets(what: &str, values: &[String]) -> Result<Vec<IpNet>, Status> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| bad(format!("invalid {what} {v:?} (expected a CIDR prefix)")))
        })
        .collect()
}

fn network_to_proto(n: model::Network) -> proto::Network {
    proto::Network {
        id: n.id,
        name: n.spec.name,
        ipv4_prefix: n
            .spec
            .ipv4_prefix
            .map(|p| p.to_string())
            .unwrap_or_default(),
        ipv6_prefix: n
            .spec
            .ipv6_prefix
            .map(|p| p.to_string())
            .unwrap_or_default(),
        dns_servers: n.spec.dns_servers.iter().map(ToString::to_string).collect(),
        ntp_servers: n.spec.ntp_servers.iter().map(ToString::to_string).collect(),
        public: n.spec.public,
        tunnel_key: n.tunnel_key,
        created_at_unix: n.created_at,
    }
}

fn nic_to_proto(n: model::Nic) -> proto::Nic {
    proto::Nic {
        id: n.id,
        network_id: n.spec.network_id,
        name: n.spec.name,
        mac_address: format_mac(&n.spec.mac),
        ipv4_address: n.spec.ipv4.map(|a| a.to_string()).unwrap_or_default(),
        ipv6_address: n.spec.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        routed_prefixes: n
            .spec
            .routed_prefixes
            .iter()
            .map(ToString::to_string)
            .collect(),
        hostname: n.spec.hostname,
        tap_name: n.tap_name,
        security_group_ids: n.spec.security_groups,
        created_at_unix: n.created_at,
    }
}

fn rule_from_proto(r: proto::SecurityGroupRule) -> Result<model::Rule, Status> {
    let direction = match proto::Direction::try_from(r.direction) {
        Ok(proto::Direction::Ingress) => Direction::Ingress,
        Ok(proto::Direction::Egress) => Direction::Egress,
        _ => {
            return Err(bad(format!(
                "rule {}: direction must be INGRESS or EGRESS",
                r.id
            )))
        }
    };
    let protocol = match proto::Protocol::try_from(r.protocol) {
        Ok(proto::Protocol::All) => Protocol::All,
        Ok(proto::Protocol::Tcp) => Protocol::Tcp,
        Ok(proto::Protocol::Udp) => Protocol::Udp,
        Ok(proto::Protocol::Icmp) => Protocol::Icmp,
        Ok(proto::Protocol::Icmpv6) => Protocol::Icmpv6,
        Err(_) => {
            return Err(bad(format!(
                "rule {}: unknown protocol {}",
                r.id, r.protocol
            )))
        }
    };
    let ports = match (r.port_min, r.port_max) {
        (0, 0) => None,
        (lo, hi) if lo <= 65535 && hi <= 65535 => Some((lo as u16, hi as u16)),
        (lo, hi) => return Err(bad(format!("rule {}: invalid port range {lo}-{hi}", r.id))),
    };
    if !r.remote_addresses.is_empty() && r.remote_security_group_id.is_empty() {
        return Err(bad(format!(
            "rule {}: remote_addresses are only allowed together with remote_security_group_id",
            r.id
        )));
    }
    let target = match (r.cidr.is_empty(), r.remote_security_group_id.is_empty()) {
        (true, true) => RuleTarget::Any,
        (false, true) => RuleTarget::Cidr(
            r.cidr
                .parse()
                .map_err(|_| bad(format!("rule {}: invalid CIDR {:?}", r.id, r.cidr)))?,
        ),
        (true, false) => RuleTarget::Group {
            id: r.remote_security_group_id,
            remote_addresses: r
                .remote_addresses
                .iter()
                .map(|a| {
                    parse_host_or_cidr(a).ok_or_else(|| {
                        bad(format!(
                            "rule {}: invalid remote address {a:?} (expected an IPv4/IPv6 \
                             address or CIDR)",
                            r.id
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        },
        (false, false) => {
            return Err(bad(format!(
                "rule {}: set either a CIDR or a remote security group, not both",
                r.id
            )))
        }
    };
    Ok(model::Rule {
        id: r.id,
        direction,
        protocol,
        ports,
        target,
    })
}

fn rule_to_proto(r: model::Rule) -> proto::SecurityGroupRule {
    let (port_min, port_max) = r
        .ports
        .map(|(a, b)| (u32::from(a), u32::from(b)))
        .unwrap_or((0, 0));
    let (cidr, remote, remote_addresses) = match r.target {
        RuleTarget::Any => (String::new(), String::new(), Vec::new()),
        RuleTarget::Cidr(c) => (c.to_string(), String::new(), Vec::new()),
        RuleTarget::Group {
            id,
            remote_addresses,
        } => (
            String::new(),
            id,
            remote_addresses.iter().map(host_or_cidr).collect(),
        ),
    };
    proto::SecurityGroupRule {
        id: r.id,
        direction: match r.direction {
            Direction::Ingress => proto::Direction::Ingress as i32,
            Direction::Egress => proto::Direction::Egress as i32,
        },
        protocol: match r.protocol {
            Protocol::All => proto::Protocol::All,
            Protocol::Tcp => proto::Protocol::Tcp,
            Protocol::Udp => proto::Protocol::Udp,
            Protocol::Icmp => proto::Protocol::Icmp,
            Protocol::Icmpv6 => proto::Protocol::Icmpv6,
        } as i32,
        port_min,
        port_max,
        cidr,
        remote_security_group_id: remote,
        remote_addresses,
    }
}

/// "10.0.0.5" (a host prefix) or "10.0.0.0/24".
fn parse_host_or_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A host prefix as its bare address, anything else as a CIDR (inverse of
/// [`parse_host_or_cidr`]).
fn host_or_cidr(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn sg_to_proto(sg: model::SecurityGroup) -> proto::SecurityGroup {
    proto::SecurityGroup {
        id: sg.id,
        name: sg.spec.name,
        rules: sg.spec.rules.into_iter().map(rule_to_proto).collect(),
        created_at_unix: sg.created_at,
    }
}

fn route_to_proto(r: model::Route) -> proto::Route {
    proto::Route {
        id: r.id,
        network_id: r.spec.network_id,
        destination: r.spec.destination.to_string(),
        remote_node: r.spec.remote_node.to_string(),
        created_at_unix: r.created_at,
    }
}

fn nic_spec(r: proto::CreateNicRequest) -> Result<model::NicSpec, Status> {
    let mac =
        mvirt_common::validate::mac_address(&r.mac_address).map_err(|e| bad(e.to_string()))?;
    Ok(model::NicSpec {
        network_id: r.network_id,
        name: r.name,
        mac,
        ipv4: parse_opt("IPv4 address", &r.ipv4_address)?,
        ipv6: parse_opt("IPv6 address", &r.ipv6_address)?,
        routed_prefixes: parse_nets("routed prefix", &r.routed_prefixes)?,
        hostname: r.hostname,
        security_groups: r.security_group_ids,
    })
}

#[tonic::async_trait]
impl NetService for NetGrpc {
    async fn get_version(
        &self,
        _: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        let v = mvirt_common::version::VersionInfo::new("mvirt-ebpf", env!("CARGO_PKG_VERSION"));
        Ok(Response::new(proto::VersionInfo {
            component: v.component,
            version: v.version,
            git_commit: v.git_commit,
        }))
    }

    async fn create_network(
        &self,
        req: Request<proto::CreateNetworkRequest>,
    ) -> Result<Response<proto::Network>, Status> {
        let r = req.into_inner();
        let spec = model::NetworkSpec {
            name: r.name,
            ipv4_prefix: parse_opt("IPv4 prefix", &r.ipv4_prefix)?,
            ipv6_prefix: parse_opt("IPv6 prefix", &r.ipv6_prefix)?,
            dns_servers: parse_ips("DNS server", &r.dns_servers)?,
            ntp_servers: parse_ips("NTP server", &r.ntp_servers)?,
            public: r.public,
        };
        let n = self
            .manager
            .create_network(&r.id, spec, r.tunnel_key)
            .await?;
        Ok(Response::new(network_to_proto(n)))
    }

    async fn get_network(
        &self,
        req: Request<proto::GetNetworkRequest>,
    ) -> Result<Response<proto::Network>, Status> {
        Ok(Response::new(network_to_proto(
            self.manager.get_network(&req.into_inner().id)?,
        )))
    }

    async fn list_networks(
        &self,
        _: Request<proto::ListNetworksRequest>,
    ) -> Result<Response<proto::ListNetworksResponse>, Status> {
        let networks = self
            .manager
            .list_networks()?
            .into_iter()
            .map(network_to_proto)
            .collect();
        Ok(Response::new(proto::ListNetworksResponse { networks }))
    }

    async fn update_network(
        &self,
        req: Request<proto::UpdateNetworkRequest>,
    ) -> Result<Response<proto::Network>, Status> {
        let r = req.into_inner();
        let n = self
            .manager
            .update_network(
                &r.id,
                parse_ips("DNS server", &r.dns_servers)?,
                parse_ips("NTP server", &r.ntp_servers)?,
            )
            .await?;
        Ok(Response::new(network_to_proto(n)))
    }

    async fn delete_network(
        &self,
        req: Request<proto::DeleteNetworkRequest>,
    ) -> Result<Response<proto::DeleteNetworkResponse>, Status> {
        self.manager.delete_network(&req.into_inner().id).await?;
        Ok(Response::new(proto::DeleteNetworkResponse {}))
    }

    async fn create_nic(
        &self,
        req: Request<proto::CreateNicRequest>,
    ) -> Result<Response<proto::Nic>, Status> {
        let r = req.into_inner();
        let id = r.id.clone();
        let spec = nic_spec(r)?;
        Ok(Response::new(nic_to_proto(
            self.manager.create_nic(&id, spec).await?,
        )))
    }

    async fn get_nic(
        &self,
        req: Request<proto::GetNicRequest>,
    ) -> Result<Response<proto::Nic>, Status> {
        Ok(Response::new(nic_to_proto(
            self.manager.get_nic(&req.into_inner().id)?,
        )))
    }

    async fn list_nics(
        &self,
        req: Request<proto::ListNicsRequest>,
    ) -> Result<Response<proto::ListNicsResponse>, Status> {
        let r = req.into_inner();
        let filter = (!r.network_id.is_empty()).then_some(r.network_id.as_str());
        let nics = self
            .manager
            .list_nics(filter)?
            .into_iter()
            .map(nic_to_proto)
            .collect();
        Ok(Response::new(proto::ListNicsResponse { nics }))
    }

    async fn update_nic(
        &self,
        req: Request<proto::UpdateNicRequest>,
    ) -> Result<Response<proto::Nic>, Status> {
        let r = req.into_inner();
        let nic = self
            .manager
            .update_nic(
                &r.id,
                r.hostname,
                parse_nets("routed prefix", &r.routed_prefixes)?,
                r.security_group_ids,
            )
            .await?;
        Ok(Response::new(nic_to_proto(nic)))
    }

    async fn delete_nic(
        &self,
        req: Request<proto::DeleteNicRequest>,
    ) -> Result<Response<proto::DeleteNicResponse>, Status> {
        self.manager.delete_nic(&req.into_inner().id).await?;
        Ok(Response::new(proto::DeleteNicResponse {}))
    }

    async fn get_nic_stats(
        &self,
        req: Request<proto::GetNicStatsRequest>,
    ) -> Result<Response<proto::NicStats>, Status> {
        let id = req.into_inner().id;
        let s = self.manager.nic_stats(&id).await?;
        let control_rate_limited = self.manager.control_rate_limited(&id).await?;
        let (drops, rules) = self.manager.nic_drops_and_rule_flows(&id).await?;
        let by_reason = |pick: fn(&(&'static str, u64, u64)) -> u64| {
            drops
                .by_reason()
                .map(|r| (r.0.to_string(), pick(&r)))
                .collect()
        };
        let rule_flows = rules
            .into_iter()
            .map(|r| proto::RuleFlows {
                security_group_id: r.origin.security_group,
                rule_id: r.origin.rule,
                direction: if r.direction == 0 {
                    proto::Direction::Ingress
                } else {
                    proto::Direction::Egress
                } as i32,
                flows: r.flows,
            })
            .collect();
        Ok(Response::new(proto::NicStats {
            nic_id: id,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            rx_drops: s.rx_drops,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            tx_drops: s.tx_drops,
            control_rate_limited,
            rx_drops_by_reason: by_reason(|r| r.1),
            tx_drops_by_reason: by_reason(|r| r.2),
            rule_flows,
        }))
    }

    async fn export_flows(
        &self,
        req: Request<proto::ExportFlowsRequest>,
    ) -> Result<Response<proto::ExportFlowsResponse>, Status> {
        let flows = self.manager.export_flows(&req.into_inner().nic_id).await?;
        Ok(Response::new(proto::ExportFlowsResponse {
            flows: flows
                .into_iter()
                .map(|f| proto::TrackedFlow {
                    protocol: u32::from(f.protocol),
                    src: f.src.to_string(),
                    dst: f.dst.to_string(),
                    src_port: u32::from(f.src_port),
                    dst_port: u32::from(f.dst_port),
                    closing: f.closing,
                })
                .collect(),
        }))
    }

    async fn import_flows(
        &self,
        req: Request<proto::ImportFlowsRequest>,
    ) -> Result<Response<proto::ImportFlowsResponse>, Status> {
        let req = req.into_inner();
        let small = |what: &str, v: u32, max: u32| {
            if v > max {
                Err(bad(format!("invalid {what} {v} (at most {max})")))
            } else {
                Ok(v)
            }
        };
        let flows = req
            .flows
            .into_iter()
            .map(|f| {
                Ok(TrackedFlow {
                    protocol: small("protocol", f.protocol, 255)? as u8,
                    src: f
                        .src
                        .parse()
                        .map_err(|_| bad(format!("invalid flow source {:?}", f.src)))?,
                    dst: f
                        .dst
                        .parse()
                        .map_err(|_| bad(format!("invalid flow destination {:?}", f.dst)))?,
                    src_port: small("source port", f.src_port, 65535)? as u16,
                    dst_port: small("destination port", f.dst_port, 65535)? as u16,
                    closing: f.closing,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let imported = self.manager.import_flows(&req.nic_id, &flows).await?;
        Ok(Response::new(proto::ImportFlowsResponse {
            imported: imported as u32,
        }))
    }

    async fn create_security_group(
        &self,
        req: Request<proto::CreateSecurityGroupRequest>,
    ) -> Result<Response<proto::SecurityGroup>, Status> {
        let r = req.into_inner();
        let rules = r
            .rules
            .into_iter()
            .map(rule_from_proto)
            .collect::<Result<_, _>>()?;
        let sg = self
            .manager
            .create_security_group(
                &r.id,
                model::SecurityGroupSpec {
                    name: r.name,
                    rules,
                },
            )
            .await?;
        Ok(Response::new(sg_to_proto(sg)))
    }

    async fn get_security_group(
        &self,
        req: Request<proto::GetSecurityGroupRequest>,
    ) -> Result<Response<proto::SecurityGroup>, Status> {
        Ok(Response::new(sg_to_proto(
            self.manager.get_security_group(&req.into_inner().id)?,
        )))
    }

    async fn list_security_groups(
        &self,
        _: Request<proto::ListSecurityGroupsRequest>,
    ) -> Result<Response<proto::ListSecurityGroupsResponse>, Status> {
        let security_groups = self
            .manager
            .list_security_groups()?
            .into_iter()
            .map(sg_to_proto)
            .collect();
        Ok(Response::new(proto::ListSecurityGroupsResponse {
            security_groups,
        }))
    }

    async fn update_security_group(
        &self,
        req: Request<proto::UpdateSecurityGroupRequest>,
    ) -> Result<Response<proto::SecurityGroup>, Status> {
        let r = req.into_inner();
        let rules = r
            .rules
            .into_iter()
            .map(rule_from_proto)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(sg_to_proto(
            self.manager.update_security_group(&r.id, rules).await?,
        )))
    }

    async fn delete_security_group(
        &self,
        req: Request<proto::DeleteSecurityGroupRequest>,
    ) -> Result<Response<proto::DeleteSecurityGroupResponse>, Status> {
        self.manager
            .delete_security_group(&req.into_inner().id)
            .await?;
        Ok(Response::new(proto::DeleteSecurityGroupResponse {}))
    }

    async fn attach_security_group(
        &self,
        req: Request<proto::AttachSecurityGroupRequest>,
    ) -> Result<Response<proto::Nic>, Status> {
        let r = req.into_inner();
        let nic = self
            .manager
            .attach_security_group(&r.nic_id, &r.security_group_id, true)
            .await?;
        Ok(Response::new(nic_to_proto(nic)))
    }

    async fn detach_security_group(
        &self,
        req: Request<proto::DetachSecurityGroupRequest>,
    ) -> Result<Response<proto::Nic>, Status> {
        let r = req.into_inner();
        let nic = self
            .manager
            .attach_security_group(&r.nic_id, &r.security_group_id, false)
            .await?;
        Ok(Response::new(nic_to_proto(nic)))
    }

    async fn create_route(
        &self,
        req: Request<proto::CreateRouteRequest>,
    ) -> Result<Response<proto::Route>, Status> {
        let r = req.into_inner();
        let spec = model::RouteSpec {
            network_id: r.network_id,
            destination: r.destination.parse().map_err(|_| {
                bad(format!(
                    "invalid destination {:?} (expected a CIDR prefix)",
                    r.destination
                ))
            })?,
            remote_node: r.remote_node.parse().map_err(|_| {
                bad(format!(
                    "invalid remote node {:?} (expected an IPv4 address)",
                    r.remote_node
                ))
            })?,
        };
        Ok(Response::new(route_to_proto(
            self.manager.create_route(&r.id, spec).await?,
        )))
    }

    async fn list_routes(
        &self,
        req: Request<proto::ListRoutesRequest>,
    ) -> Result<Response<proto::ListRoutesResponse>, Status> {
        let r = req.into_inner();
        let filter = (!r.network_id.is_empty()).then_some(r.network_id.as_str());
        let routes = self
            .manager
            .list_routes(filter)?
            .into_iter()
            .map(route_to_proto)
            .collect();
        Ok(Response::new(proto::ListRoutesResponse { routes }))
    }

    async fn delete_route(
        &self,
        req: Request<proto::DeleteRouteRequest>,
    ) -> Result<Response<proto::DeleteRouteResponse>, Status> {
        self.manager.delete_route(&req.into_inner().id).await?;
        Ok(Response::new(proto::DeleteRouteResponse {}))
    }
}
