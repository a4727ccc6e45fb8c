//! Syntactic validation of requests, before anything is proposed. Checks that depend on the
//! state (references, uniqueness, conflicts) happen in `State::apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use mvirt_common::validate;

use crate::model::*;
use crate::state::ApiError;

const MIB: u64 = 1024 * 1024;
const MAX_USER_DATA: usize = 64 * 1024;

fn err<E: std::fmt::Display>(e: E) -> ApiError {
    ApiError::invalid(e.to_string())
}

pub fn name(what: &'static str, value: &str) -> Result<(), ApiError> {
    validate::dns_label(what, value).map_err(err)
}

pub fn id(what: &'static str, value: &str) -> Result<(), ApiError> {
    validate::resource_id(what, value).map_err(err)
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 64 {
        return Err(ApiError::invalid("at most 64 labels"));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "invalid label key {k:?}: 1-63 characters of letters, digits, '-', '_', '.', '/'"
            )));
        }
        if v.len() > 255 || v.chars().any(|c| c.is_control() || c == ',' || c == '=') {
            return Err(ApiError::invalid(format!(
                "invalid label value for {k:?}: at most 255 characters, no control characters, ',' or '='"
            )));
        }
    }
    Ok(())
}

fn ip(what: &str, value: &str) -> Result<IpAddr, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(format!("invalid {what} {value:?}: not an IP address")))
}

fn unique_ids(what: &str, ids: &[String]) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for i in ids {
        validate::resource_id("id", i).map_err(err)?;
        if !seen.insert(i) {
            return Err(ApiError::invalid(format!("duplicate {what} {i}")));
        }
    }
    Ok(())
}

pub fn network(spec: &NetworkSpec) -> Result<(), ApiError> {
    if spec.ipv4_prefix.is_none() && spec.ipv6_prefix.is_none() {
        return Err(ApiError::invalid(
            "a network needs ipv4_prefix, ipv6_prefix or both",
        ));
    }
    if let Some(p) = &spec.ipv4_prefix {
        match p.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if n.prefix_len() <= 30 && n.trunc() == n => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "invalid ipv4_prefix {p:?}: an IPv4 network like 10.0.0.0/24 (at most /30)"
                )))
            }
        }
    }
    if let Some(p) = &spec.ipv6_prefix {
        match p.parse::<IpNet>() {
            Ok(IpNet::V6(n)) if n.prefix_len() <= 126 && n.trunc() == n => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "invalid ipv6_prefix {p:?}: an IPv6 network like fd00::/64 (at most /126)"
                )))
            }
        }
    }
    for s in spec.dns_servers.iter().chain(&spec.ntp_servers) {
        ip("server address", s)?;
    }
    if let Some(k) = spec.tunnel_key {
        if k == 0 || k > crate::model::MAX_TUNNEL_KEY {
            return Err(ApiError::invalid(format!(
                "invalid tunnel_key {k}: a VXLAN VNI in 1..={}",
                crate::model::MAX_TUNNEL_KEY
            )));
        }
    }
    Ok(())
}

pub fn nic(spec: &NicSpec) -> Result<(), ApiError> {
    id("network_id", &spec.network_id)?;
    if let Some(mac) = &spec.mac_address {
        let bytes = validate::mac_address(mac).map_err(err)?;
        if bytes[0] & 1 == 1 {
            return Err(ApiError::invalid(format!("MAC address {mac} is multicast")));
        }
    }
    if let Some(a) = &spec.ipv4_address {
        if !ip("ipv4_address", a)?.is_ipv4() {
            return Err(ApiError::invalid("ipv4_address must be IPv4"));
        }
    }
    if let Some(a) = &spec.ipv6_address {
        if !ip("ipv6_address", a)?.is_ipv6() {
            return Err(ApiError::invalid("ipv6_address must be IPv6"));
        }
    }
    if spec.routed_prefixes.len() > 32 {
        return Err(ApiError::invalid("at most 32 routed_prefixes"));
    }
    for p in &spec.routed_prefixes {
        match p.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "invalid routed prefix {p:?}: a network like 10.1.0.0/24 or fd00:1::/64"
                )))
            }
        }
    }
    unique_ids("security group", &spec.security_group_ids)
}

pub fn rule(rule: &SecurityGroupRule) -> Result<(), ApiError> {
    if let Some(i) = &rule.id {
        id("rule id", i)?;
    }
    let ports = rule.port_min != 0 || rule.port_max != 0;
    if ports {
        if !matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(ApiError::invalid("ports are only valid for tcp and udp"));
        }
        if rule.port_min == 0 || rule.port_min > rule.port_max {
            return Err(ApiError::invalid(
                "port range must be 1 <= port_min <= port_max",
            ));
        }
    }
    if let Some(c) = &rule.cidr {
        c.parse::<IpNet>()
            .map_err(|_| ApiError::invalid(format!("invalid cidr {c:?}")))?;
        if rule.remote_group_id.is_some() {
            return Err(ApiError::invalid(
                "a rule has either cidr or remote_group_id, not both",
            ));
        }
    }
    if let Some(g) = &rule.remote_group_id {
        id("remote_group_id", g)?;
    }
    if rule.description.len() > 255 {
        return Err(ApiError::invalid("description: at most 255 characters"));
    }
    Ok(())
}

pub fn security_group(spec: &SecurityGroupSpec) -> Result<(), ApiError> {
    if spec.rules.len() > 1000 {
        return Err(ApiError::invalid("at most 1000 rules"));
    }
    spec.rules.iter().try_for_each(rule)
}

fn url(what: &str, value: &str) -> Result<(), ApiError> {
    let ok = (value.starts_with("file:///") && value.len() > 8)
        || ((value.starts_with("http://") || value.starts_with("https://"))
            && value
                .split("://")
                .nth(1)
                .is_some_and(|rest| !rest.is_empty()));
    if !ok || value.chars().any(|c| c.is_whitespace() || c.is_control()) || value.len() > 2048 {
        return Err(ApiError::invalid(format!(
            "invalid {what} {value:?}: a file:///absolute/path or http(s):// URL"
        )));
    }
    Ok(())
}

pub fn template(spec: &TemplateSpec) -> Result<(), ApiError> {
    if spec.source_snapshot.is_some() {
        return Err(ApiError::invalid(
            "source_snapshot is set by POST /v1/volumes/{id}/snapshots/{snapshot_id}/promote, not by a create",
        ));
    }
    url("source_url", &spec.source_url)?;
    for (what, sum) in [
        ("sha256", &spec.sha256),
        ("kernel_sha256", &spec.kernel_sha256),
        ("initramfs_sha256", &spec.initramfs_sha256),
    ] {
        if let Some(h) = sum {
            if h.len() != 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(ApiError::invalid(format!(
                    "{what} must be 64 lowercase hex characters"
                )));
            }
        }
    }
    if spec.kernel_sha256.is_some() && spec.kernel_url.is_none() {
        return Err(ApiError::invalid("kernel_sha256 needs kernel_url"));
    }
    if spec.initramfs_sha256.is_some() && spec.initramfs_url.is_none() {
        return Err(ApiError::invalid("initramfs_sha256 needs initramfs_url"));
    }
    if let Some(k) = &spec.kernel_url {
        url("kernel_url", k)?;
    }
    if let Some(i) = &spec.initramfs_url {
        url("initramfs_url", i)?;
        if spec.kernel_url.is_none() {
            return Err(ApiError::invalid("initramfs_url needs kernel_url"));
        }
    }
    if let Some(c) = &spec.cmdline {
        if c.len() > 4096 || c.chars().any(|c| c.is_control()) {
            return Err(ApiError::invalid(
                "cmdline: at most 4096 printable characters",
            ));
        }
    }
    Ok(())
}

pub fn size(what: &str, bytes: u64) -> Result<(), ApiError> {
    if bytes < MIB || !bytes.is_multiple_of(MIB) || bytes > 64 * 1024 * 1024 * MIB {
        return Err(ApiError::invalid(format!(
            "invalid {what} {bytes}: a multiple of 1 MiB between 1 MiB and 64 TiB"
        )));
    }
    Ok(())
}

pub fn volume(spec: &VolumeSpec) -> Result<(), ApiError> {
    size("size_bytes", spec.size_bytes)?;
    if let Some(t) = &spec.template_id {
        id("template_id", t)?;
    }
    if let Some(n) = &spec.node_id {
        id("node_id", n)?;
    }
    if let Some(b) = &spec.backup_id {
        id("backup_id", b)?;
        if spec.template_id.is_some() {
            return Err(ApiError::invalid(
                "backup_id and template_id exclude each other: a volume is restored or cloned",
            ));
        }
    }
    if let Some(keep) = spec.backup_keep_last {
        backup_keep_last(keep)?;
    }
    Ok(())
}

pub fn backup_keep_last(keep: u32) -> Result<(), ApiError> {
    if !(1..=1000).contains(&keep) {
        return Err(ApiError::invalid(format!(
            "invalid backup_keep_last {keep}: between 1 and 1000"
        )));
    }
    Ok(())
}

pub fn backup(spec: &BackupSpec) -> Result<(), ApiError> {
    id("volume_id", &spec.volume_id)
}

pub fn vm(spec: &VmSpec) -> Result<(), ApiError> {
    if spec.vcpus == 0 || spec.vcpus > 256 {
        return Err(ApiError::invalid("vcpus must be between 1 and 256"));
    }
    if spec.memory_bytes < 64 * MIB
        || !spec.memory_bytes.is_multiple_of(MIB)
        || spec.memory_bytes > 4 * 1024 * 1024 * MIB
    {
        return Err(ApiError::invalid(
            "memory_bytes must be a multiple of 1 MiB between 64 MiB and 4 TiB",
        ));
    }
    if let Some(h) = &spec.hostname {
        if h.len() > 253
            || h.split('.')
                .any(|l| validate::dns_label("hostname", l).is_err())
        {
            return Err(ApiError::invalid(format!("invalid hostname {h:?}")));
        }
    }
    // `boot_mode` and `desired_state` are enums: serde refuses any other value.
    unique_ids("volume", &spec.volume_ids)?;
    unique_ids("NIC", &spec.nic_ids)?;
    if let Some(u) = &spec.user_data {
        if u.len() > MAX_USER_DATA {
            return Err(ApiError::invalid("user_data: at most 64 KiB"));
        }
    }
    for key in &spec.ssh_authorized_keys {
        let kind = key.split_whitespace().next().unwrap_or("");
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        if !known
            || key.split_whitespace().count() < 2
            || key.contains('\n')
            || key.len() > 16 * 1024
        {
            return Err(ApiError::invalid(
                "ssh_authorized_keys: one OpenSSH public key per entry",
            ));
        }
    }
    if let Some(sel) = &spec.node_selector {
        node_selector(sel)?;
    }
    if let Some(c) = &spec.kernel_cmdline {
        if c.len() > 4096 || c.chars().any(|c| c.is_control()) {
            return Err(ApiError::invalid(
                "kernel_cmdline: at most 4096 printable characters",
            ));
        }
    }
    if let Some(root) = &spec.root_volume {
        id("root_volume.template_id", &root.template_id)?;
        size("root_volume.size_bytes", root.size_bytes)?;
    }
    for nic in &spec.network_interfaces {
        id("network_interfaces.network_id", &nic.network_id)?;
        unique_ids("security group", &nic.security_group_ids)?;
        if let Some(a) = &nic.ipv4_address {
            ip("ipv4_address", a)?;
        }
        if let Some(a) = &nic.ipv6_address {
            ip("ipv6_address", a)?;
        }
    }
    Ok(())
}

/// Most containers in one pod.
pub const MAX_CONTAINERS: usize = 16;

/// An OCI image reference: 1-255 bytes, no whitespace or control characters, not starting with
/// `-` or `/`, no `://` (a reference names a registry host, not a URL).
pub fn image_ref(what: &str, image: &str) -> Result<(), ApiError> {
    let bad = image.is_empty()
        || image.len() > 255
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
        || image.starts_with('-')
        || image.starts_with('/')
        || image.ends_with('/')
        || image.ends_with(':')
        || image.contains("://")
        || image.contains("//");
    if bad {
        return Err(ApiError::invalid(format!(
            "invalid {what} {image:?}: an OCI image reference like registry.example:5000/team/app:1.2 (1-255 bytes, no whitespace)"
        )));
    }
    Ok(())
}

/// A registry host as credentials name it: `host[:port]`.
fn registry_host(value: &str) -> Result<(), ApiError> {
    let bad = value.is_empty()
        || value.len() > 255
        || value
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')));
    if bad {
        return Err(ApiError::invalid(format!(
            "invalid registry_credentials.registry {value:?}: a registry host like registry.example:5000"
        )));
    }
    Ok(())
}

/// A string passed to a container (command, argument, env, path): no NUL, at most 64 KiB.
fn container_string(what: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') || value.len() > 64 * 1024 {
        return Err(ApiError::invalid(format!(
            "invalid {what}: no NUL characters, at most 64 KiB"
        )));
    }
    Ok(())
}

/// A pod spec, without what depends on the state (networks, NICs, names).
pub fn pod(spec: &PodSpec) -> Result<(), ApiError> {
    if spec.vcpus == 0 || spec.vcpus > 64 {
        return Err(ApiError::invalid("vcpus must be between 1 and 64"));
    }
    if spec.memory_bytes < 128 * MIB
        || !spec.memory_bytes.is_multiple_of(MIB)
        || spec.memory_bytes > 1024 * 1024 * MIB
    {
        return Err(ApiError::invalid(
            "memory_bytes must be a multiple of 1 MiB between 128 MiB and 1 TiB",
        ));
    }
    if let Some(h) = &spec.hostname {
        validate::dns_label("hostname", h).map_err(err)?;
    }
    if spec.containers.is_empty() {
        return Err(ApiError::invalid(
            "containers: a pod needs at least one container",
        ));
    }
    if spec.containers.len() > MAX_CONTAINERS {
        return Err(ApiError::invalid(format!(
            "containers: at most {MAX_CONTAINERS} per pod"
        )));
    }
    let mut names = BTreeSet::new();
    for c in &spec.containers {
        validate::dns_label("containers.name", &c.name).map_err(err)?;
        if !names.insert(c.name.as_str()) {
            return Err(ApiError::invalid(format!(
                "duplicate container name {:?}: container names are unique in a pod",
                c.name
            )));
        }
        image_ref(&format!("image of container {:?}", c.name), &c.image)?;
        for a in c.command.iter().chain(&c.args) {
            container_string("command/args", a)?;
        }
        for (k, v) in &c.env {
            if k.is_empty() || k.contains('=') || k.len() > 1024 {
                return Err(ApiError::invalid(format!(
                    "invalid env name {k:?} in container {:?}: 1-1024 characters, no '='",
                    c.name
                )));
            }
            container_string("env name", k)?;
            container_string("env value", v)?;
        }
        if let Some(w) = &c.working_dir {
            container_string("working_dir", w)?;
            if !w.starts_with('/') {
                return Err(ApiError::invalid(format!(
                    "working_dir of container {:?} must be an absolute path",
                    c.name
                )));
            }
        }
        if c.cpu_millis == Some(0) {
            return Err(ApiError::invalid(
                "cpu_millis must be at least 1 (omit it for no limit)",
            ));
        }
        if let Some(m) = c.memory_bytes {
            if m < MIB || m > spec.memory_bytes {
                return Err(ApiError::invalid(format!(
                    "memory_bytes of container {:?} must be between 1 MiB and the pod's memory_bytes",
                    c.name
                )));
            }
        }
        let mut ports = BTreeSet::new();
        for p in &c.ports {
            if p.container_port == 0 {
                return Err(ApiError::invalid(
                    "container_port must be between 1 and 65535",
                ));
            }
            if let Some(n) = &p.name {
                validate::dns_label("ports.name", n).map_err(err)?;
            }
            if !ports.insert((p.container_port, p.protocol.as_str())) {
                return Err(ApiError::invalid(format!(
                    "duplicate port {}/{} in container {:?}",
                    p.container_port, p.protocol, c.name
                )));
            }
        }
    }
    unique_ids("NIC", &spec.nic_ids)?;
    for nic in &spec.network_interfaces {
        id("network_interfaces.network_id", &nic.network_id)?;
        unique_ids("security group", &nic.security_group_ids)?;
        if let Some(a) = &nic.ipv4_address {
            ip("ipv4_address", a)?;
        }
        if let Some(a) = &nic.ipv6_address {
            ip("ipv6_address", a)?;
        }
    }
    if let Some(sel) = &spec.node_selector {
        node_selector(sel)?;
    }
    let mut registries = BTreeSet::new();
    for cred in &spec.registry_credentials {
        registry_host(&cred.registry)?;
        if !registries.insert(cred.registry.as_str()) {
            return Err(ApiError::invalid(format!(
                "duplicate registry_credentials for {:?}",
                cred.registry
            )));
        }
        if cred.password.is_some() && cred.token.is_some() {
            return Err(ApiError::invalid(format!(
                "registry_credentials for {:?}: either username and password, or token",
                cred.registry
            )));
        }
        if cred.password.is_some() && cred.username.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid(format!(
                "registry_credentials for {:?}: a password needs a username",
                cred.registry
            )));
        }
        for v in [&cred.username, &cred.password, &cred.token]
            .into_iter()
            .flatten()
        {
            if v.len() > 4096 || v.chars().any(|c| c.is_control()) {
                return Err(ApiError::invalid(format!(
                    "registry_credentials for {:?}: username, password and token are at most 4096 printable characters",
                    cred.registry
                )));
            }
        }
    }
    Ok(())
}

pub fn node_selector(sel: &str) -> Result<(), ApiError> {
    if sel.is_empty() || sel.len() > 1024 {
        return Err(ApiError::invalid("node_selector must not be empty"));
    }
    if sel.contains('=') {
        for part in sel.split(',') {
            let mut kv = part.splitn(2, '=');
            let k = kv.next().unwrap_or("");
            let v = kv.next().unwrap_or("");
            let mut one = BTreeMap::new();
            one.insert(k.to_string(), v.to_string());
            labels(&one)
                .map_err(|_| ApiError::invalid(format!("invalid node_selector term {part:?}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_spec() -> VmSpec {
        serde_json::from_value(serde_json::json!({"vcpus": 1, "memory_bytes": 268435456})).unwrap()
    }

    #[test]
    fn vm_limits_are_enforced() {
        assert!(vm(&vm_spec()).is_ok());
        let mut s = vm_spec();
        s.vcpus = 0;
        assert!(vm(&s).is_err());
        let mut s = vm_spec();
        s.memory_bytes = 1000;
        assert!(vm(&s).is_err());
        let mut s = vm_spec();
        s.ssh_authorized_keys = vec!["not a key\nreally".into()];
        assert!(vm(&s).is_err());
    }

    #[test]
    fn network_prefixes_must_be_networks() {
        let mut s = NetworkSpec {
            ipv4_prefix: Some("10.0.0.1/24".into()),
            ..Default::default()
        };
        assert!(network(&s).is_err());
        s.ipv4_prefix = Some("10.0.0.0/24".into());
        assert!(network(&s).is_ok());
        s.ipv6_prefix = Some("10.0.0.0/24".into());
        assert!(network(&s).is_err());
    }

    #[test]
    fn rule_ports_only_for_tcp_and_udp() {
        let r: SecurityGroupRule =
            serde_json::from_value(serde_json::json!({"direction": "ingress", "protocol": "icmp", "port_min": 22, "port_max": 22}))
                .unwrap();
        assert!(rule(&r).is_err());
        let r: SecurityGroupRule =
            serde_json::from_value(serde_json::json!({"direction": "ingress", "protocol": "tcp", "port_min": 22, "port_max": 22, "cidr": "0.0.0.0/0"}))
                .unwrap();
        assert!(rule(&r).is_ok());
    }

    #[test]
    fn template_urls_and_checksums_are_checked() {
        let mut t = TemplateSpec {
            source_url: "file:///images/debian.raw".into(),
            format: ImageFormat::Raw,
            ..Default::default()
        };
        assert!(template(&t).is_ok());
        t.source_url = "ftp://x".into();
        assert!(template(&t).is_err());
        t.source_url = "http://127.0.0.1:8000/a.qcow2".into();
        t.sha256 = Some("ABC".into());
        assert!(template(&t).is_err());
        t.sha256 = None;
        let sum = "0123456789abcdef".repeat(4);
        t.kernel_sha256 = Some(sum.clone());
        let needs_url = template(&t).unwrap_err();
        assert!(format!("{needs_url:?}").contains("kernel_sha256 needs kernel_url"));
        t.kernel_url = Some("http://127.0.0.1:8000/vmlinuz".into());
        assert!(template(&t).is_ok());
        t.kernel_sha256 = Some(sum.to_uppercase());
        assert!(template(&t).is_err());
        t.kernel_sha256 = Some(sum[..63].into());
        assert!(template(&t).is_err());
        t.kernel_sha256 = Some(sum.clone());
        t.initramfs_sha256 = Some(sum.clone());
        assert!(
            template(&t).is_err(),
            "initramfs_sha256 without initramfs_url"
        );
        t.initramfs_url = Some("http://127.0.0.1:8000/initrd".into());
        assert!(template(&t).is_ok());
        t.initramfs_sha256 = Some(format!("{}g", &sum[..63]));
        assert!(template(&t).is_err());
    }
}
