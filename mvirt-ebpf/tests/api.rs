//! NetService CRUD against a real daemon: idempotent creates, bad input rejected with the
//! right gRPC code and nothing changed, dependent objects protected from deletion.

mod common;

use common::*;
use mvirt_ebpf::proto;
use tonic::Code;

fn network_req(id: &str, v4: &str, public: bool) -> proto::CreateNetworkRequest {
    proto::CreateNetworkRequest {
        id: id.into(),
        name: "net".into(),
        ipv4_prefix: v4.into(),
        ipv6_prefix: String::new(),
        dns_servers: vec![],
        ntp_servers: vec![],
        public,
        tunnel_key: common::tunnel_key(),
    }
}

fn nic_req(network: &str, mac_s: &str, ip: &str) -> proto::CreateNicRequest {
    proto::CreateNicRequest {
        id: new_id(),
        network_id: network.into(),
        name: String::new(),
        mac_address: mac_s.into(),
        ipv4_address: ip.into(),
        ipv6_address: String::new(),
        routed_prefixes: vec![],
        hostname: String::new(),
        security_group_ids: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_changes_nothing() {
    let mut h = Harness::start().await;
    let c = &mut h.client;
    let code = |r: Result<tonic::Response<proto::Network>, tonic::Status>| r.unwrap_err().code();

    // Networks.
    assert_eq!(
        code(
            c.create_network(network_req("not-a-uuid", "10.0.0.0/24", false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.create_network(network_req(&new_id(), "10.0.0.1/24", false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.create_network(network_req(&new_id(), "10.0.0.0/33", false))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_network(network_req(&new_id(), "", false)).await),
        Code::InvalidArgument
    );
    let public = new_id();
    c.create_network(network_req(&public, "192.168.50.0/24", true))
        .await
        .unwrap();
    let err = c
        .create_network(network_req(&new_id(), "192.168.50.128/25", true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("overlaps"), "{}", err.message());
    // Private networks may overlap anything.
    let private = new_id();
    let private_req = network_req(&private, "192.168.50.0/24", false);
    c.create_network(private_req.clone()).await.unwrap();
    // Idempotent create; a different spec under the same id is ALREADY_EXISTS.
    c.create_network(private_req.clone()).await.unwrap();
    assert_eq!(
        code(
            c.create_network(proto::CreateNetworkRequest {
                ipv4_prefix: "192.168.51.0/24".into(),
                ..private_req.clone()
            })
            .await
        ),
        Code::AlreadyExists
    );
    // The tunnel key comes from the control plane: required, and never shared by two networks.
    let no_key = c
        .create_network(proto::CreateNetworkRequest {
            tunnel_key: 0,
            ..network_req(&new_id(), "10.9.0.0/24", false)
        })
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::InvalidArgument, "{}", no_key.message());
    let same_key = c
        .create_network(proto::CreateNetworkRequest {
            tunnel_key: private_req.tunnel_key,
            ..network_req(&new_id(), "10.9.0.0/24", false)
        })
        .await
        .unwrap_err();
    assert_eq!(same_key.code(), Code::FailedPrecondition);
    assert!(
        same_key.message().contains("same tunnel key"),
        "{}",
        same_key.message()
    );
    let listed = c
        .list_networks(proto::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner()
        .networks;
    assert_eq!(listed.len(), 2, "rejected creates left nothing behind");

    // NICs.
    let nic_code = |r: Result<tonic::Response<proto::Nic>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        nic_code(
            c.create_nic(nic_req(&private, "02:00:00:00:00:01", "10.9.9.9"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        nic_code(
            c.create_nic(nic_req(&private, "01:00:00:00:00:01", "192.168.50.5"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        nic_code(c.create_nic(nic_req(&private, "zz", "192.168.50.5")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        nic_code(
            c.create_nic(nic_req(&new_id(), "02:00:00:00:00:01", "192.168.50.5"))
                .await
        ),
        Code::NotFound
    );
    let mut with_sg = nic_req(&private, "02:00:00:00:00:01", "192.168.50.5");
    with_sg.security_group_ids = vec![new_id()];
    assert_eq!(nic_code(c.create_nic(with_sg).await), Code::NotFound);
    let first = nic_req(&private, "02:00:00:00:00:01", "192.168.50.5");
    let nic = h.nic_request(first.clone()).await;
    let c = &mut h.client;
    assert_eq!(
        c.create_nic(first.clone()).await.unwrap().into_inner(),
        nic,
        "idempotent NIC create"
    );
    let mut changed = first.clone();
    changed.ipv4_address = "192.168.50.6".into();
    assert_eq!(nic_code(c.create_nic(changed).await), Code::AlreadyExists);
    let err = c
        .create_nic(nic_req(&private, "02:00:00:00:00:02", "192.168.50.5"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("already used"), "{}", err.message());
    assert!(
        mvirt_ebpf::ip::link_exists(&nic.tap_name),
        "the NIC's TAP exists"
    );
    let nics = c
        .list_nics(proto::ListNicsRequest {
            network_id: private.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .nics;
    assert_eq!(nics.len(), 1);

    // Security groups.
    let sg_code =
        |r: Result<tonic::Response<proto::SecurityGroup>, tonic::Status>| r.unwrap_err().code();
    let bad_rule = |protocol: proto::Protocol, ports: (u32, u32), cidr: &str, remote: &str| {
        proto::CreateSecurityGroupRequest {
            id: new_id(),
            name: "sg".into(),
            rules: vec![proto::SecurityGroupRule {
                id: new_id(),
                direction: proto::Direction::Ingress as i32,
                protocol: protocol as i32,
                port_min: ports.0,
                port_max: ports.1,
                cidr: cidr.into(),
                remote_security_group_id: remote.into(),
                remote_addresses: vec![],
            }],
        }
    };
    assert_eq!(
        sg_code(
            c.create_security_group(bad_rule(proto::Protocol::Icmp, (1, 2), "", ""))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        sg_code(
            c.create_security_group(bad_rule(proto::Protocol::Tcp, (90, 80), "", ""))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        sg_code(
            c.create_security_group(bad_rule(proto::Protocol::Tcp, (1, 70000), "", ""))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        sg_code(
            c.create_security_group(bad_rule(proto::Protocol::Tcp, (0, 0), "10.0.0.1/8", ""))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        sg_code(
            c.create_security_group(bad_rule(proto::Protocol::Tcp, (0, 0), "", &new_id()))
                .await
        ),
        Code::NotFound
    );
    assert!(c
        .list_security_groups(proto::ListSecurityGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .security_groups
        .is_empty());
    let sg = c
        .create_security_group(bad_rule(proto::Protocol::Tcp, (22, 22), "10.0.0.0/8", ""))
        .await
        .unwrap()
        .into_inner();
    let attached = c
        .attach_security_group(proto::AttachSecurityGroupRequest {
            nic_id: nic.id.clone(),
            security_group_id: sg.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(attached.security_group_ids, vec![sg.id.clone()]);
    let err = c
        .delete_security_group(proto::DeleteSecurityGroupRequest { id: sg.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A network with NICs cannot be deleted; deleting the NIC removes its TAP.
    let err = c
        .delete_network(proto::DeleteNetworkRequest {
            id: private.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    c.delete_nic(proto::DeleteNicRequest { id: nic.id.clone() })
        .await
        .unwrap();
    assert!(
        !mvirt_ebpf::ip::link_exists(&nic.tap_name),
        "TAP removed with the NIC"
    );
    assert_eq!(
        c.get_nic(proto::GetNicRequest { id: nic.id.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    c.delete_security_group(proto::DeleteSecurityGroupRequest { id: sg.id.clone() })
        .await
        .unwrap();
    c.delete_network(proto::DeleteNetworkRequest {
        id: private.clone(),
    })
    .await
    .unwrap();

    // Network update changes DNS/NTP only.
    let updated = c
        .update_network(proto::UpdateNetworkRequest {
            id: public.clone(),
            dns_servers: vec!["9.9.9.9".into()],
            ntp_servers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.dns_servers, vec!["9.9.9.9".to_string()]);
    assert_eq!(updated.ipv4_prefix, "192.168.50.0/24");
    let err = c
        .update_network(proto::UpdateNetworkRequest {
            id: public.clone(),
            dns_servers: vec!["nope".into()],
            ntp_servers: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let version = c
        .get_version(proto::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.component, "mvirt-ebpf");
}

fn group_rule(remote_group: &str, addresses: &[&str]) -> proto::SecurityGroupRule {
    proto::SecurityGroupRule {
        id: new_id(),
        direction: proto::Direction::Ingress as i32,
        protocol: proto::Protocol::Tcp as i32,
        port_min: 22,
        port_max: 22,
        cidr: String::new(),
        remote_security_group_id: remote_group.into(),
        remote_addresses: addresses.iter().map(|a| a.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_addresses_of_group_rules_are_validated_persisted_and_returned() {
    let mut h = Harness::start().await;
    let members = new_id();
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: members.clone(),
            name: "members".into(),
            rules: vec![],
        })
        .await
        .unwrap();
    let sg = new_id();
    let rules = vec![group_rule(
        &members,
        &["10.1.0.5", "10.2.0.0/24", "fd00:1::7/128", "fd00:2::/64"],
    )];
    let created = h
        .client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: sg.clone(),
            name: "sg".into(),
            rules: rules.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let expected = vec!["10.1.0.5", "10.2.0.0/24", "fd00:1::7", "fd00:2::/64"];
    assert_eq!(created.rules[0].remote_addresses, expected);
    // Idempotent: the same spec again (host addresses written with or without /32 alike).
    h.client
        .create_security_group(proto::CreateSecurityGroupRequest {
            id: sg.clone(),
            name: "sg".into(),
            rules: rules.clone(),
        })
        .await
        .unwrap();

    let stored_addresses = |h: &Harness| {
        let mut c = h.client.clone();
        let id = sg.clone();
        async move {
            c.get_security_group(proto::GetSecurityGroupRequest { id })
                .await
                .unwrap()
                .into_inner()
                .rules[0]
                .remote_addresses
                .clone()
        }
    };
    assert_eq!(stored_addresses(&h).await, expected);

    // Bad input: INVALID_ARGUMENT, and the stored rules stay as they were.
    let bad_cases: Vec<(proto::SecurityGroupRule, &str)> = vec![
        (
            group_rule(&members, &["10.1.0.300"]),
            "invalid remote address",
        ),
        (
            group_rule(&members, &["not-an-address"]),
            "invalid remote address",
        ),
        (group_rule(&members, &["10.1.0.5/16"]), "host bits"),
        (group_rule("", &["10.1.0.5"]), "only allowed together"),
        (
            proto::SecurityGroupRule {
                cidr: "10.0.0.0/8".into(),
                ..group_rule("", &["10.1.0.5"])
            },
            "only allowed together",
        ),
    ];
    for (rule, message) in bad_cases {
        let err = h
            .client
            .update_security_group(proto::UpdateSecurityGroupRequest {
                id: sg.clone(),
                rules: vec![rule.clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{rule:?}");
        assert!(err.message().contains(message), "{}", err.message());
        let err = h
            .client
            .create_security_group(proto::CreateSecurityGroupRequest {
                id: new_id(),
                name: String::new(),
                rules: vec![rule],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    assert_eq!(stored_addresses(&h).await, expected);

    // Persisted: a restarted daemon returns them, in List too.
    h.restart().await;
    let listed = h
        .client
        .list_security_groups(proto::ListSecurityGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .security_groups;
    let stored = listed.iter().find(|g| g.id == sg).expect("listed");
    assert_eq!(stored.rules[0].remote_addresses, expected);
    assert_eq!(stored.rules[0].remote_security_group_id, members);

    // The datapath evaluates at most 4096 rules per NIC and direction: a change after which a
    // NIC's expanded rules would not fit is refused and changes nothing.
    let net = h.network("10.77.0.0/24", false).await;
    let many: Vec<String> = (0..4096u32)
        .map(|i| format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    h.client
        .update_security_group(proto::UpdateSecurityGroupRequest {
            id: sg.clone(),
            rules: vec![group_rule(&members, &many)],
        })
        .await
        .unwrap();
    let server = h.nic(&net, mac(0x31), "10.77.0.3", &[&sg]).await;
    let member = h.nic(&net, mac(0x32), "10.77.0.4", &[]).await;
    let err = h
        .client
        .attach_security_group(proto::AttachSecurityGroupRequest {
            nic_id: member.id.clone(),
            security_group_id: members.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains(&server.id), "{}", err.message());
    let member_now = h
        .client
        .get_nic(proto::GetNicRequest { id: member.id })
        .await
        .unwrap()
        .into_inner();
    assert!(member_now.security_group_ids.is_empty(), "nothing changed");
}
