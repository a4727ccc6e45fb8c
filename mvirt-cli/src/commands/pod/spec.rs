//! The request bodies of `mvirt pod run` and `mvirt pod create -f`: flag values (`--env K=V`,
//! `--port [NAME=]PORT[/PROTO]`, the image reference) and the pod file (JSON or YAML, one or
//! more containers), checked before anything is sent so a mistake creates nothing.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use crate::client::ApiError;

/// `--env K=V` values into the container's `env` map. The value may be empty or contain `=`;
/// the key may not be empty, contain whitespace or NUL, and may not be given twice.
pub fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut m = BTreeMap::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| ApiError::Usage(format!("--env {i:?} is not K=V")))?;
        if k.is_empty() {
            return Err(ApiError::Usage(format!(
                "--env {i:?}: the variable name is empty"
            )));
        }
        if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiError::Usage(format!(
                "--env {i:?}: the variable name {k:?} contains whitespace or control characters"
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::Usage(format!(
                "--env {k}: the value contains a NUL byte"
            )));
        }
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::Usage(format!("--env {k} is given twice")));
        }
    }
    Ok(m)
}

/// A `--port` value: `80`, `http=80`, `53/udp` or `dns=53/udp`.
pub fn parse_port(s: &str) -> Result<Value, ApiError> {
    let bad = |why: &str| {
        ApiError::Usage(format!(
            "--port {s:?}: {why} (use PORT, NAME=PORT, PORT/udp or NAME=PORT/tcp)"
        ))
    };
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) => (Some(n), r),
        None => (None, s),
    };
    let (port, protocol) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let protocol = protocol.to_ascii_lowercase();
    if protocol != "tcp" && protocol != "udp" {
        return Err(bad("the protocol is not tcp or udp"));
    }
    let mut p = json!({"container_port": port, "protocol": protocol});
    if let Some(n) = name {
        if !is_dns_label(n) {
            return Err(bad("the name is not a DNS label"));
        }
        p["name"] = json!(n);
    }
    Ok(p)
}

/// An image reference as the API accepts it: not empty, at most 255 bytes, no whitespace or
/// control characters.
pub fn check_image(image: &str) -> Result<(), ApiError> {
    if image.is_empty() {
        return Err(ApiError::Usage("the image reference is empty".into()));
    }
    if image.len() > 255 {
        return Err(ApiError::Usage(format!(
            "image reference {}… is {} bytes long (at most 255)",
            image.chars().take(40).collect::<String>(),
            image.len()
        )));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::Usage(format!(
            "image reference {image:?} contains whitespace or control characters"
        )));
    }
    Ok(())
}

/// A DNS label: 1-63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A container name given with `-c`: refused before any request unless it is a DNS label.
pub fn check_container_name(s: &str) -> Result<(), ApiError> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(ApiError::Usage(format!(
            "container name {s:?} is not a DNS label (a-z, 0-9 and -, at most 63 characters)"
        )))
    }
}

/// What `mvirt pod run` puts in its one container and around it (names already resolved).
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub env: Vec<String>,
    pub ports: Vec<String>,
    /// The trailing arguments: the image's arguments, or its command with `command_given`.
    pub args: Vec<String>,
    pub command_given: bool,
    pub restart_policy: String,
    pub network_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub hostname: Option<String>,
    pub node_selector: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The body of `POST /v1/pods` for `mvirt pod run`: one container named after the pod.
pub fn run_body(r: &RunSpec, project: &str) -> Result<Value, ApiError> {
    check_image(&r.image)?;
    let (command, args) = if r.command_given {
        if r.args.is_empty() {
            return Err(ApiError::Usage(
                "--command needs the command after `--`, e.g. --command -- /bin/sh -c 'echo hi'"
                    .into(),
            ));
        }
        (r.args.clone(), vec![])
    } else {
        (vec![], r.args.clone())
    };
    let ports = r
        .ports
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>, _>>()?;
    let container = json!({
        "name": r.name,
        "image": r.image,
        "command": command,
        "args": args,
        "env": parse_env(&r.env)?,
        "restart_policy": r.restart_policy,
        "ports": ports,
    });
    let mut spec = json!({
        "vcpus": r.vcpus,
        "memory_bytes": r.memory_bytes,
        "containers": [container],
        "desired_state": "running",
    });
    if !r.network_ids.is_empty() {
        spec["network_interfaces"] = r
            .network_ids
            .iter()
            .map(|n| json!({"network_id": n, "security_group_ids": r.security_group_ids}))
            .collect();
    } else if !r.security_group_ids.is_empty() {
        return Err(ApiError::Usage(
            "--sg applies to the pod's NICs: give --network as well".into(),
        ));
    }
    super::super::ctx::set_given(
        &mut spec,
        [
            ("hostname", r.hostname.clone()),
            ("node_selector", r.node_selector.clone()),
        ],
    );
    Ok(json!({"name": r.name, "project": project, "labels": r.labels, "spec": spec}))
}

const TOP_FIELDS: [&str; 4] = ["name", "project", "labels", "spec"];

/// A pod file (`mvirt pod create -f`): the body of `POST /v1/pods` — `name`, optional `project`
/// and `labels`, and `spec` with one or more containers — as JSON or YAML. `source` names the
/// file in messages. Checked here: the shape, a name, unique container names that are DNS
/// labels, an image on each container; the API checks the rest.
pub fn parse_pod_file(text: &str, source: &str) -> Result<Value, ApiError> {
    let bad = |why: String| ApiError::Usage(format!("{source}: {why}"));
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?
    } else {
        serde_yaml::from_str(text).map_err(|e| bad(format!("not valid YAML: {e}")))?
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected an object with name and spec".into()))?;
    if let Some(k) = obj.keys().find(|k| !TOP_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field {k:?} (the file holds {})",
            TOP_FIELDS.join(", ")
        )));
    }
    match obj.get("name") {
        Some(Value::String(n)) if !n.is_empty() => {}
        _ => return Err(bad("the pod needs a `name` (a string)".into())),
    }
    let spec = obj
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the pod needs a `spec` object".into()))?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("spec.containers needs at least one container".into()))?;
    let mut seen = HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let c = c
            .as_object()
            .ok_or_else(|| bad(format!("spec.containers[{i}] is not an object")))?;
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("spec.containers[{i}] has no `name`")))?;
        if !is_dns_label(name) {
            return Err(bad(format!(
                "container name {name:?} is not a DNS label (a-z, 0-9 and -, at most 63 characters)"
            )));
        }
        if !seen.insert(name.to_string()) {
            return Err(bad(format!("container name {name:?} is used twice")));
        }
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("container {name} has no `image`")))?;
        check_image(image).map_err(|e| bad(format!("container {name}: {e}")))?;
    }
    Ok(v)
}

/// The names a pod file uses where the API wants ids: each `spec.network_interfaces[]`'s
/// `network_id` and `security_group_ids`, and `spec.nic_ids` — as (JSON pointer, name or id).
/// Each may be written as a name; `create` resolves them all before it sends the pod.
pub fn references(body: &Value) -> Vec<(String, Reference, String)> {
    let mut out = Vec::new();
    let spec = &body["spec"];
    if let Some(nis) = spec.get("network_interfaces").and_then(Value::as_array) {
        for (i, ni) in nis.iter().enumerate() {
            if let Some(n) = ni.get("network_id").and_then(Value::as_str) {
                out.push((
                    format!("/spec/network_interfaces/{i}/network_id"),
                    Reference::Network,
                    n.to_string(),
                ));
            }
            if let Some(sgs) = ni.get("security_group_ids").and_then(Value::as_array) {
                for (j, sg) in sgs.iter().enumerate() {
                    if let Some(s) = sg.as_str() {
                        out.push((
                            format!("/spec/network_interfaces/{i}/security_group_ids/{j}"),
                            Reference::SecurityGroup,
                            s.to_string(),
                        ));
                    }
                }
            }
        }
    }
    if let Some(nics) = spec.get("nic_ids").and_then(Value::as_array) {
        for (i, n) in nics.iter().enumerate() {
            if let Some(s) = n.as_str() {
                out.push((format!("/spec/nic_ids/{i}"), Reference::Nic, s.to_string()));
            }
        }
    }
    out
}

/// The kind a pod file's reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    Network,
    SecurityGroup,
    Nic,
}

/// Writes `value` at the JSON pointer `at` (which exists: it came from [`references`]).
pub fn set_at(body: &mut Value, at: &str, value: &str) {
    if let Some(slot) = body.pointer_mut(at) {
        *slot = Value::String(value.to_string());
    }
}

/// The container names of a pod object (its spec), in order.
pub fn container_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_parse_and_bad_ones_say_why() {
        let m = parse_env(&["A=1".into(), "B=x=y".into(), "EMPTY=".into()]).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x=y");
        assert_eq!(m["EMPTY"], "");
        let err = |v: &str| parse_env(&[v.to_string()]).unwrap_err().to_string();
        assert_eq!(err("NOVALUE"), "--env \"NOVALUE\" is not K=V");
        assert_eq!(err("=v"), "--env \"=v\": the variable name is empty");
        assert!(err("A B=1").contains("whitespace"), "{}", err("A B=1"));
        assert!(err("A=a\0b").contains("NUL"));
        let twice = parse_env(&["A=1".into(), "A=2".into()]).unwrap_err();
        assert_eq!(twice.to_string(), "--env A is given twice");
        assert_eq!(twice.exit_code(), crate::client::exit::USAGE);
    }

    #[test]
    fn ports_take_name_number_and_protocol() {
        assert_eq!(
            parse_port("80").unwrap(),
            json!({"container_port": 80, "protocol": "tcp"})
        );
        assert_eq!(
            parse_port("dns=53/UDP").unwrap(),
            json!({"name": "dns", "container_port": 53, "protocol": "udp"})
        );
        for bad in ["0", "70000", "http=", "x=80/sctp", "Bad_Name=80", "80/"] {
            assert!(parse_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn images_are_checked() {
        check_image("127.0.0.1:5000/httpd:1").unwrap();
        assert!(check_image("").is_err());
        assert!(check_image("a b").is_err());
        assert!(check_image("a\nb").is_err());
        assert!(check_image(&"a".repeat(256)).is_err());
        check_image(&"a".repeat(255)).unwrap();
    }

    fn run_spec() -> RunSpec {
        RunSpec {
            name: "web".into(),
            image: "reg:5000/httpd:1".into(),
            vcpus: 2,
            memory_bytes: 1 << 30,
            env: vec!["MODE=prod".into()],
            ports: vec!["http=80".into()],
            args: vec!["-f".into(), "a b; rm -rf /".into()],
            restart_policy: "always".into(),
            network_ids: vec!["n1".into(), "n2".into()],
            security_group_ids: vec!["sg1".into()],
            node_selector: Some("zone=a".into()),
            ..Default::default()
        }
    }

    #[test]
    fn run_body_has_one_container_named_after_the_pod() {
        let b = run_body(&run_spec(), "default").unwrap();
        assert_eq!(b["name"], "web");
        assert_eq!(b["project"], "default");
        let s = &b["spec"];
        assert_eq!(s["vcpus"], 2);
        assert_eq!(s["memory_bytes"], 1u64 << 30);
        assert_eq!(s["desired_state"], "running");
        assert_eq!(s["node_selector"], "zone=a");
        assert!(s.get("hostname").is_none());
        let c = &s["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["name"], "web");
        assert_eq!(c[0]["image"], "reg:5000/httpd:1");
        // Arguments pass as they are: one argv element each, no shell in between.
        assert_eq!(c[0]["args"], json!(["-f", "a b; rm -rf /"]));
        assert_eq!(c[0]["command"], json!([]));
        assert_eq!(c[0]["env"], json!({"MODE": "prod"}));
        assert_eq!(c[0]["ports"][0]["container_port"], 80);
        assert_eq!(
            s["network_interfaces"],
            json!([{"network_id": "n1", "security_group_ids": ["sg1"]},
                   {"network_id": "n2", "security_group_ids": ["sg1"]}])
        );
    }

    #[test]
    fn run_body_with_command_replaces_the_entrypoint() {
        let mut r = run_spec();
        r.command_given = true;
        let b = run_body(&r, "p").unwrap();
        assert_eq!(
            b["spec"]["containers"][0]["command"],
            json!(["-f", "a b; rm -rf /"])
        );
        assert_eq!(b["spec"]["containers"][0]["args"], json!([]));
        r.args.clear();
        assert!(run_body(&r, "p")
            .unwrap_err()
            .to_string()
            .contains("--command needs the command"));
    }

    #[test]
    fn run_body_refuses_bad_flags_before_any_request() {
        let mut r = run_spec();
        r.image = "bad image".into();
        assert!(run_body(&r, "p").is_err());
        let mut r = run_spec();
        r.env = vec!["X".into()];
        assert_eq!(
            run_body(&r, "p").unwrap_err().exit_code(),
            crate::client::exit::USAGE
        );
        let mut r = run_spec();
        r.network_ids.clear();
        assert!(run_body(&r, "p")
            .unwrap_err()
            .to_string()
            .contains("give --network"));
    }

    const TWO_YAML: &str = r#"
name: app
labels: {tier: web}
spec:
  vcpus: 1
  memory_bytes: 536870912
  network_interfaces:
    - network_id: demo-net
      security_group_ids: [web-sg]
  containers:
    - name: web
      image: 127.0.0.1:5000/httpd:1
      ports: [{name: http, container_port: 80, protocol: tcp}]
    - name: writer
      image: 127.0.0.1:5000/busybox:1
      command: [/bin/sh, -c]
      args: ["while true; do echo line; sleep 1; done"]
      env: {GREETING: "hello world"}
      restart_policy: on_failure
"#;

    #[test]
    fn yaml_and_json_pod_files_with_two_containers_parse_alike() {
        let y = parse_pod_file(TWO_YAML, "pod.yaml").unwrap();
        assert_eq!(container_names(&y), ["web", "writer"]);
        assert_eq!(
            y["spec"]["containers"][1]["args"][0],
            "while true; do echo line; sleep 1; done"
        );
        assert_eq!(y["spec"]["containers"][1]["env"]["GREETING"], "hello world");
        let j = parse_pod_file(&serde_json::to_string_pretty(&y).unwrap(), "pod.json").unwrap();
        assert_eq!(j, y);
        let refs = references(&y);
        assert_eq!(
            refs,
            vec![
                (
                    "/spec/network_interfaces/0/network_id".to_string(),
                    Reference::Network,
                    "demo-net".to_string()
                ),
                (
                    "/spec/network_interfaces/0/security_group_ids/0".to_string(),
                    Reference::SecurityGroup,
                    "web-sg".to_string()
                ),
            ]
        );
        let mut y = y;
        set_at(&mut y, &refs[0].0, "id-1");
        assert_eq!(y["spec"]["network_interfaces"][0]["network_id"], "id-1");
    }

    #[test]
    fn bad_pod_files_name_the_file_and_the_problem() {
        let err = |text: &str| parse_pod_file(text, "p.yaml").unwrap_err().to_string();
        assert!(err("name: [").starts_with("p.yaml: not valid YAML"));
        assert!(err("{\"name\": ").starts_with("p.yaml: not valid JSON"));
        assert!(err("- a").contains("expected an object"));
        assert!(err("name: a\nspec: {containers: []}").contains("at least one container"));
        assert!(err("spec: {containers: [{name: a, image: b}]}").contains("needs a `name`"));
        assert!(err("name: a\nkind: Pod\nspec: {}").contains("unknown field \"kind\""));
        assert!(
            err("name: a\nspec: {containers: [{name: a, image: b}, {name: a, image: c}]}")
                .contains("container name \"a\" is used twice")
        );
        assert!(
            err("name: a\nspec: {containers: [{name: Web, image: b}]}").contains("not a DNS label")
        );
        assert!(
            err("name: a\nspec: {containers: [{name: a}]}").contains("container a has no `image`")
        );
        assert!(
            err("name: a\nspec: {containers: [{name: a, image: 'x y'}]}")
                .contains("container a: image reference")
        );
    }

    #[test]
    fn container_names_are_dns_labels() {
        check_container_name("web-1").unwrap();
        for bad in ["", "Web", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_container_name(bad).is_err(), "{bad:?}");
        }
    }
}
