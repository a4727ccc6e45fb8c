//! The OpenAPI document served at `/v1/openapi.json`, and the API reference page at `/v1/docs`.
//!
//! utoipa generates the document from the handlers' `#[utoipa::path]` annotations and the types'
//! schemas ([`super::ApiDoc`]). [`document`] then makes it tell the whole truth where one
//! annotation per handler cannot, in three passes over the JSON:
//! 1. **Shared responses.** Every operation gets the statuses the cross-cutting code returns:
//!    401/403 (auth middleware), 400 (a parameter or body that does not parse), 413/415 (bodies),
//!    404 (a path that names an object), 409 (writes), 412 (where `If-Match` is read: the header
//!    is added as a parameter too), 503 `no_leader` (every write and linearizable read).
//! 2. **Request constraints.** What `validate.rs` enforces on one field at a time (patterns,
//!    ranges, enums, lengths) is written into the *request* schemas ([`REQUEST_RULES`]); the
//!    response schemas stay as the types are, since stored objects are not re-validated.
//!    Rules between fields, which JSON Schema cannot say, are in the operation's description
//!    ([`CROSS_FIELD_RULES`]).
//! 3. **Details**: streaming content types, the `details` of an error may be null.
//!
//! `tests/openapi.rs` runs schemathesis with every check against a live member to keep this
//! honest. The result is built once and cached.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::OpenApi;

/// The finished document (generated once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap_or(Value::Null);
        add_shared_responses(&mut doc);
        flatten_string_enums(&mut doc);
        add_request_rules(&mut doc);
        add_cross_field_rules(&mut doc);
        fix_details(&mut doc);
        doc
    })
}

pub async fn openapi_json() -> Response {
    let mut resp = axum::Json(document()).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

// ------------------------------------------------------------------------- shared responses

/// Paths that need no token (see `super::access`).
const ANONYMOUS: &[&str] = &["/v1/health", "/v1/controlplane/join"];

/// Operations that answer from local state without the Raft read index (so never 503).
const LOCAL_READS: &[&str] = &["GET /v1/health", "GET /v1/controlplane", "GET /v1/whoami"];

/// Operations that read `If-Match` (`super::if_match`).
const IF_MATCH: &[&str] = &[
    "PUT /v1/projects/{id}",
    "DELETE /v1/projects/{id}",
    "PUT /v1/nodes/{id}",
    "DELETE /v1/nodes/{id}",
    "PUT /v1/networks/{id}",
    "DELETE /v1/networks/{id}",
    "PUT /v1/nics/{id}",
    "DELETE /v1/nics/{id}",
    "PUT /v1/security-groups/{id}",
    "DELETE /v1/security-groups/{id}",
    "PUT /v1/templates/{id}",
    "DELETE /v1/templates/{id}",
    "PUT /v1/volumes/{id}",
    "DELETE /v1/volumes/{id}",
    "PUT /v1/vms/{id}",
    "DELETE /v1/vms/{id}",
    "PUT /v1/pods/{id}",
    "DELETE /v1/pods/{id}",
    "PUT /v1/backups/{id}",
    "DELETE /v1/backups/{id}",
    "PUT /v1/replications/{id}",
    "DELETE /v1/replications/{id}",
    "POST /v1/volumes/{id}/resize",
];

/// `If-Match: "<revision>"` (`*` = no condition; a weak `W/` prefix is ignored).
const IF_MATCH_PATTERN: &str = r#"^\s*(\*|(W/)?"?[0-9]{1,19}"?)\s*$"#;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    })
}

fn has_query_param(params: &Value, name: &str) -> bool {
    params
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" && p["name"] == name))
}

fn add_shared_responses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let key = format!("{} {path}", method.to_uppercase());
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            if IF_MATCH.contains(&key.as_str()) {
                let params = op
                    .entry("parameters")
                    .or_insert_with(|| json!([]))
                    .as_array_mut();
                if let Some(params) = params {
                    let declared = params
                        .iter()
                        .any(|p| p["name"] == "If-Match" && p["in"] == "header");
                    if !declared {
                        params.push(json!({"name": "If-Match", "in": "header", "required": false,
                            "description": "\"<revision>\": the change is made only if the object is still at this revision",
                            "schema": {"type": "string"}}));
                    }
                    for p in params.iter_mut() {
                        if p["name"] == "If-Match" && p["in"] == "header" {
                            p["schema"] = json!({"type": "string", "pattern": IF_MATCH_PATTERN});
                        }
                    }
                }
            }
            let has_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let has_body = op.contains_key("requestBody");
            let op_params = op.get("parameters").cloned().unwrap_or(Value::Null);
            let op_params = &op_params;
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            let Some(responses) = responses else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            };
            if has_params || has_body {
                add(
                    "400",
                    "invalid_argument: a parameter or the body is malformed or breaks a rule",
                );
            }
            if !ANONYMOUS.contains(&path.as_str()) {
                add(
                    "401",
                    "unauthenticated: no token, or an unknown or revoked one",
                );
                add("403", "permission_denied: the token's role may not call this (viewers read; operators also change project resources; tokens, the control plane, nodes and projects need admin; node tokens are for NodeService and `GET /v1/whoami` only), or a create names a project outside the token's projects");
            }
            if path.contains('{') {
                add("404", "not_found: nothing with this id or name");
            }
            if has_query_param(op_params, "node") {
                add("404", "not_found: the `node` filter names no node");
            }
            if has_body {
                add("413", "payload_too_large: the body exceeds 1 MiB");
                add(
                    "415",
                    "unsupported_media_type: the body is not application/json",
                );
            }
            if method != "get" {
                add("409", "already_exists or conflict: the change is refused by the current state; `details` names what is in the way");
            }
            if IF_MATCH.contains(&key.as_str()) {
                add(
                    "412",
                    "precondition_failed: the object is no longer at the `If-Match` revision",
                );
            }
            if !LOCAL_READS.contains(&key.as_str()) {
                add("503", "no_leader (or unavailable): no Raft leader is elected or reachable right now; retry");
            }
        }
    }
}

// ------------------------------------------------------------------------- request rules

const UUID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const DNS_LABEL: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
const NO_CONTROL: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";
const URL: &str = "^(file:///|https?://)[^\\s\\x00-\\x1f\\x7f-\\x9f]+$";
const SHA256: &str = "^[0-9a-f]{64}$";
const MIB: u64 = 1024 * 1024;
const IPV4: &str =
    "((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const LABEL_KEY: &str = "[A-Za-z0-9._/-]{1,63}";
const LABEL_VALUE: &str = "[^\\x00-\\x1f\\x7f-\\x9f,=]{0,255}";

fn labels() -> Value {
    json!({
        "maxProperties": 64,
        "propertyNames": {"pattern": format!("^{LABEL_KEY}$")},
        "additionalProperties": {"type": "string", "pattern": format!("^{LABEL_VALUE}$")}
    })
}

fn ip() -> Value {
    json!({"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
}

fn size(max: u64) -> Value {
    json!({"minimum": MIB, "maximum": max, "multipleOf": MIB})
}

fn ids() -> Value {
    json!({"uniqueItems": true, "items": {"type": "string", "pattern": UUID}})
}

/// `(schema, property, constraints)`: `schema` is a component name, or `Create:<Spec>` /
/// `Update:<Spec>` / `Spec:<Spec>` (both) for the spec inlined in the create/update bodies.
/// Each line mirrors a check in `validate.rs` (or the handler named in the comment).
fn request_rules() -> Vec<(&'static str, &'static str, Value)> {
    let name = json!({"pattern": DNS_LABEL});
    let url = json!({"pattern": URL, "maxLength": 2048});
    let sha = json!({"pattern": SHA256});
    let printable4k = json!({"pattern": NO_CONTROL, "maxLength": 4096});
    vec![
        // new_meta: names, projects and labels of every create; labels of every update.
        ("Create:*", "name", name.clone()),
        ("Create:*", "project", name.clone()),
        ("Create:*", "labels", labels()),
        ("Update:*", "labels", labels()),
        ("CreateProjectRequest", "name", name.clone()),
        ("CreateProjectRequest", "labels", labels()),
        (
            "CreateProjectRequest",
            "description",
            json!({"maxLength": 1024}),
        ),
        ("UpdateProjectRequest", "labels", labels()),
        ("CreateTokenRequest", "name", name.clone()),
        (
            "CreateTokenRequest",
            "role",
            json!({"enum": ["admin", "operator", "viewer", "node"]}),
        ),
        (
            "CreateTokenRequest",
            "projects",
            json!({"maxItems": 100, "items": {"type": "string", "pattern": DNS_LABEL}}),
        ),
        (
            "CreateJoinTokenRequest",
            "ttl_seconds",
            json!({"minimum": 1, "maximum": 604800}),
        ),
        ("JoinRequest", "api_url", json!({"pattern": "^https?://"})),
        (
            "JoinRequest",
            "raft_addr",
            json!({"pattern": format!("^({IPV4}|\\[[0-9a-fA-F:.]+\\]):[0-9]{{1,5}}$")}),
        ),
        ("SnapshotRequest", "name", name.clone()),
        ("PromoteRequest", "name", name.clone()),
        ("PromoteRequest", "labels", labels()),
        ("ResizeRequest", "size_bytes", size(64 * 1024 * 1024 * MIB)),
        // validate::network
        (
            "Spec:NetworkSpec",
            "ipv4_prefix",
            json!({"pattern": format!("^{IPV4}/([0-9]|[12][0-9]|30)$")}),
        ),
        (
            "Spec:NetworkSpec",
            "ipv6_prefix",
            json!({"pattern": "^[0-9a-fA-F:]*:[0-9a-fA-F:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-6])$"}),
        ),
        ("Spec:NetworkSpec", "dns_servers", json!({"items": ip()})),
        ("Spec:NetworkSpec", "ntp_servers", json!({"items": ip()})),
        (
            "Spec:NetworkSpec",
            "tunnel_key",
            json!({"minimum": 1, "maximum": crate::model::MAX_TUNNEL_KEY}),
        ),
        // validate::nic
        ("Spec:NicSpec", "network_id", json!({"pattern": UUID})),
        (
            "Spec:NicSpec",
            "mac_address",
            json!({"pattern": "^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$",
            "not": {"enum": ["00:00:00:00:00:00"]}, "description": "unicast, not all zero"}),
        ),
        ("Spec:NicSpec", "ipv4_address", json!({"format": "ipv4"})),
        ("Spec:NicSpec", "ipv6_address", json!({"format": "ipv6"})),
        ("Spec:NicSpec", "security_group_ids", ids()),
        (
            "Spec:NicSpec",
            "routed_prefixes",
            json!({"maxItems": 32, "items": {"pattern": format!("^({IPV4}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)/[0-9]{{1,3}}$")}}),
        ),
        // validate::rule, validate::security_group
        ("SecurityGroupRule", "id", json!({"pattern": UUID})),
        ("SecurityGroupRule", "port_min", json!({"maximum": 65535})),
        ("SecurityGroupRule", "port_max", json!({"maximum": 65535})),
        (
            "SecurityGroupRule",
            "cidr",
            json!({"pattern": format!("^({IPV4}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)/[0-9]{{1,3}}$")}),
        ),
        (
            "SecurityGroupRule",
            "remote_group_id",
            json!({"pattern": UUID}),
        ),
        (
            "SecurityGroupRule",
            "description",
            json!({"maxLength": 255}),
        ),
        ("Spec:SecurityGroupSpec", "rules", json!({"maxItems": 1000})),
        // validate::template
        ("Spec:TemplateSpec", "source_url", url.clone()),
        (
            "Spec:TemplateSpec",
            "format",
            json!({"enum": ["raw", "qcow2"]}),
        ),
        ("Spec:TemplateSpec", "sha256", sha.clone()),
        ("Spec:TemplateSpec", "kernel_sha256", sha.clone()),
        ("Spec:TemplateSpec", "initramfs_sha256", sha),
        ("Spec:TemplateSpec", "kernel_url", url.clone()),
        ("Spec:TemplateSpec", "initramfs_url", url),
        ("Spec:TemplateSpec", "cmdline", printable4k.clone()),
        // validate::volume
        (
            "Spec:VolumeSpec",
            "size_bytes",
            size(64 * 1024 * 1024 * MIB),
        ),
        ("Spec:VolumeSpec", "template_id", json!({"pattern": UUID})),
        ("Spec:VolumeSpec", "node_id", json!({"pattern": UUID})),
        ("Spec:VolumeSpec", "backup_id", json!({"pattern": UUID})),
        (
            "Spec:VolumeSpec",
            "backup_keep_last",
            json!({"minimum": 1, "maximum": 1000}),
        ),
        // validate::backup and the backup requests
        ("Spec:BackupSpec", "volume_id", json!({"pattern": UUID})),
        ("TakeBackupRequest", "name", name.clone()),
        ("TakeBackupRequest", "labels", labels()),
        ("RestoreRequest", "name", name.clone()),
        ("RestoreRequest", "labels", labels()),
        ("RestoreRequest", "size_bytes", size(64 * 1024 * 1024 * MIB)),
        // rest::replications::validate_replication
        ("Spec:ReplicationSpec", "vm_id", name.clone()),
        (
            "Spec:ReplicationSpec",
            "targets",
            json!({"minItems": 1, "maxItems": 4, "uniqueItems": true,
                "items": {"type": "string", "pattern": DNS_LABEL}}),
        ),
        (
            "Spec:ReplicationSpec",
            "interval_secs",
            json!({"minimum": 5, "maximum": 86400}),
        ),
        (
            "Spec:ReplicationSpec",
            "keep",
            json!({"minimum": 1, "maximum": 100}),
        ),
        // validate::vm
        (
            "Spec:VmSpec",
            "vcpus",
            json!({"minimum": 1, "maximum": 256}),
        ),
        (
            "Spec:VmSpec",
            "memory_bytes",
            json!({"minimum": 64 * MIB, "maximum": 4 * 1024 * 1024 * MIB, "multipleOf": MIB}),
        ),
        (
            "Spec:VmSpec",
            "hostname",
            json!({"maxLength": 253, "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"}),
        ),
        (
            "Spec:VmSpec",
            "boot_mode",
            json!({"enum": ["uefi", "direct_kernel", null]}),
        ),
        (
            "Spec:VmSpec",
            "desired_state",
            json!({"enum": ["running", "stopped"]}),
        ),
        ("Spec:VmSpec", "volume_ids", ids()),
        ("Spec:VmSpec", "nic_ids", ids()),
        ("Spec:VmSpec", "user_data", json!({"maxLength": 65536})),
        (
            "Spec:VmSpec",
            "ssh_authorized_keys",
            json!({"items": {"type": "string", "maxLength": 16384,
            "pattern": "^[ \\t]*(ssh-|ecdsa-|sk-)[^\\s]*[ \\t]+[^\\n]*[^\\s][^\\n]*$"}}),
        ),
        (
            "Spec:VmSpec",
            "node_selector",
            json!({"minLength": 1, "maxLength": 1024,
            "pattern": format!("^([^=]+|{LABEL_KEY}={LABEL_VALUE}(,{LABEL_KEY}={LABEL_VALUE})*)$")}),
        ),
        ("Spec:VmSpec", "kernel_cmdline", printable4k.clone()),
        ("RootVolumeRequest", "template_id", json!({"pattern": UUID})),
        (
            "RootVolumeRequest",
            "size_bytes",
            size(64 * 1024 * 1024 * MIB),
        ),
        (
            "NetworkInterfaceRequest",
            "network_id",
            json!({"pattern": UUID}),
        ),
        ("NetworkInterfaceRequest", "security_group_ids", ids()),
        ("NetworkInterfaceRequest", "ipv4_address", ip()),
        ("NetworkInterfaceRequest", "ipv6_address", ip()),
        // validate::pod
        (
            "Spec:PodSpec",
            "vcpus",
            json!({"minimum": 1, "maximum": 64}),
        ),
        (
            "Spec:PodSpec",
            "memory_bytes",
            json!({"minimum": 128 * MIB, "maximum": 1024 * 1024 * MIB, "multipleOf": MIB}),
        ),
        ("Spec:PodSpec", "hostname", name.clone()),
        (
            "Spec:PodSpec",
            "containers",
            json!({"minItems": 1, "maxItems": crate::validate::MAX_CONTAINERS}),
        ),
        ("Spec:PodSpec", "nic_ids", ids()),
        (
            "Spec:PodSpec",
            "desired_state",
            json!({"enum": ["running", "stopped"]}),
        ),
        (
            "Spec:PodSpec",
            "node_selector",
            json!({"minLength": 1, "maxLength": 1024,
            "pattern": format!("^([^=]+|{LABEL_KEY}={LABEL_VALUE}(,{LABEL_KEY}={LABEL_VALUE})*)$")}),
        ),
        ("PodContainer", "name", name.clone()),
        (
            "PodContainer",
            "image",
            json!({"minLength": 1, "maxLength": 255, "pattern": "^[^\\s/-][^\\s]*$"}),
        ),
        (
            "PodContainer",
            "restart_policy",
            json!({"enum": ["always", "on_failure", "never"]}),
        ),
        ("PodContainer", "cpu_millis", json!({"minimum": 1})),
        ("PodContainer", "memory_bytes", json!({"minimum": MIB})),
        ("PodContainer", "working_dir", json!({"pattern": "^/"})),
        ("ContainerPort", "name", name.clone()),
        (
            "ContainerPort",
            "container_port",
            json!({"minimum": 1, "maximum": 65535}),
        ),
        ("ContainerPort", "protocol", json!({"enum": ["tcp", "udp"]})),
        (
            "RegistryCredential",
            "registry",
            json!({"pattern": "^[A-Za-z0-9.:\\[\\]-]{1,255}$"}),
        ),
        ("RegistryCredential", "username", printable4k.clone()),
        ("RegistryCredential", "password", printable4k.clone()),
        ("RegistryCredential", "token", printable4k.clone()),
    ]
}

/// Merges `rule` into the schema of `object.properties[property]`.
fn constrain(object: &mut Value, property: &str, rule: &Value) {
    let Some(schema) = object
        .get_mut("properties")
        .and_then(|p| p.get_mut(property))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if let Some(rule) = rule.as_object() {
        for (k, v) in rule {
            if k == "items" {
                let items = schema.entry("items").or_insert_with(|| json!({}));
                if let (Some(items), Some(v)) = (items.as_object_mut(), v.as_object()) {
                    items.extend(v.clone());
                }
            } else {
                schema.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A field whose type is one of the model's string enums is, as utoipa inlines it, a `oneOf`
/// of that enum (and `null` when optional); written plainly it is a string (or null) with an
/// `enum` of its values, as the request rules and every client expect.
fn flatten_string_enums(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let flat = map
                .get("oneOf")
                .and_then(Value::as_array)
                .and_then(|members| {
                    let nullable = members.iter().any(|m| *m == json!({"type": "null"}));
                    let enums: Vec<&Value> = members
                        .iter()
                        .filter(|m| **m != json!({"type": "null"}))
                        .collect();
                    match enums.as_slice() {
                        [e] if e.get("type") == Some(&json!("string")) => {
                            let mut values = e.get("enum")?.as_array()?.clone();
                            if nullable {
                                values.push(Value::Null);
                            }
                            Some((nullable, values))
                        }
                        _ => None,
                    }
                });
            if let Some((nullable, values)) = flat {
                map.remove("oneOf");
                let ty = if nullable {
                    json!(["string", "null"])
                } else {
                    json!("string")
                };
                map.insert("type".into(), ty);
                map.insert("enum".into(), Value::Array(values));
            }
            map.values_mut().for_each(flatten_string_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_string_enums),
        _ => {}
    }
}

fn add_request_rules(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (target, property, rule) in request_rules() {
        for (name, schema) in schemas.iter_mut() {
            let (create, update, spec) = match name.split_once('_') {
                Some(("CreateRequest", s)) => (true, false, s),
                Some(("UpdateRequest", s)) => (false, true, s),
                _ => (false, false, ""),
            };
            let applies = match target.split_once(':') {
                Some(("Create", "*")) => create,
                Some(("Update", "*")) => update,
                Some(("Spec", s)) => (create || update) && s == spec,
                None => target == name,
                _ => false,
            };
            if !applies {
                continue;
            }
            if target.starts_with("Spec:") {
                if let Some(inline) = schema.pointer_mut("/properties/spec") {
                    constrain(inline, property, &rule);
                }
            } else {
                constrain(schema, property, &rule);
            }
        }
    }
    // `source_snapshot` is set by promote only: a create or update that names it is refused;
    // `source_url` is required of both (empty only in a promoted template).
    for name in ["CreateRequest_TemplateSpec", "UpdateRequest_TemplateSpec"] {
        if let Some(spec) = schemas
            .get_mut(name)
            .and_then(|s| s.pointer_mut("/properties/spec"))
        {
            if let Some(props) = spec.get_mut("properties").and_then(Value::as_object_mut) {
                props.remove("source_snapshot");
            }
            let required = spec
                .as_object_mut()
                .map(|o| o.entry("required").or_insert_with(|| json!([])));
            if let Some(Value::Array(required)) = required {
                required.push(json!("source_url"));
            }
        }
    }
    // `root_volume` and `network_interfaces` are create-only.
    if let Some(props) = schemas
        .get_mut("UpdateRequest_VmSpec")
        .and_then(|s| s.pointer_mut("/properties/spec/properties"))
        .and_then(Value::as_object_mut)
    {
        props.remove("root_volume");
        props.remove("network_interfaces");
    }
    // `network_interfaces` of a pod are create-only too.
    if let Some(props) = schemas
        .get_mut("UpdateRequest_PodSpec")
        .and_then(|s| s.pointer_mut("/properties/spec/properties"))
        .and_then(Value::as_object_mut)
    {
        props.remove("network_interfaces");
    }
    // An update's `spec` may be null (= unchanged), like its absence.
    for (name, schema) in schemas.iter_mut() {
        if name.starts_with("UpdateRequest_") {
            if let Some(spec) = schema.pointer_mut("/properties/spec") {
                if spec.get("type") == Some(&json!("object")) {
                    spec["type"] = json!(["object", "null"]);
                }
            }
        }
    }
    // A join token's body is optional (all defaults).
    if let Some(body) = doc.pointer_mut("/paths/~1v1~1controlplane~1join-tokens/post/requestBody") {
        body["required"] = Value::Bool(false);
    }
    // The pod action in the path.
    if let Some(params) = doc
        .pointer_mut("/paths/~1v1~1pods~1{id}~1{action}/post/parameters")
        .and_then(Value::as_array_mut)
    {
        for p in params.iter_mut().filter(|p| p["name"] == "action") {
            p["schema"] = json!({"type": "string", "enum": ["start", "stop", "restart"]});
        }
    }
    // The VM action in the path.
    if let Some(params) = doc
        .pointer_mut("/paths/~1v1~1vms~1{id}~1{action}/post/parameters")
        .and_then(Value::as_array_mut)
    {
        for p in params.iter_mut().filter(|p| p["name"] == "action") {
            p["schema"] = json!({"type": "string", "enum": ["start", "stop", "kill", "restart"]});
        }
    }
    // List queries (`super::paginate`) and the audit log query (`logs::request`).
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let max_limit = if path == "/v1/logs" { 10_000 } else { 1000 };
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params.iter_mut() {
                    let extra = match (p["in"].as_str(), p["name"].as_str()) {
                        (Some("query"), Some("limit")) => {
                            json!({"minimum": 1, "maximum": max_limit})
                        }
                        (Some("query"), Some("label")) => {
                            json!({"pattern": "^[^,=]+=[^,]*(,[^,=]+=[^,]*)*$"})
                        }
                        (Some("query"), Some("order")) => json!({"enum": ["newest", "oldest"]}),
                        (Some("query"), Some("level")) => json!({
                            "pattern": "^,*((audit|info|warn|error|debug)(,+(audit|info|warn|error|debug))*)?,*$"
                        }),
                        // Empty: no filter (mvirt_common::trace::is_valid otherwise).
                        (Some("query"), Some("trace_id")) => json!({
                            "pattern": "^[A-Za-z0-9._:-]{0,128}$"
                        }),
                        (Some("header"), Some("Idempotency-Key")) => json!({
                            "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]{0,253}[\\x21-\\x7e])?$"
                        }),
                        _ => continue,
                    };
                    if let (Some(schema), Some(extra)) = (
                        p.get_mut("schema").and_then(Value::as_object_mut),
                        extra.as_object(),
                    ) {
                        schema.extend(extra.clone());
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------- cross-field rules

/// Rules between fields (or inside one value, beyond a pattern) that a schema-valid request can
/// still break: `(operations, rule)`. Each is appended to the operations' descriptions, and
/// `tests/openapi.rs` accepts a schemathesis "schema-valid request rejected" only for one of
/// these.
pub const CROSS_FIELD_RULES: &[(&[&str], &str)] = &[
    (
        &["POST /v1/volumes", "PUT /v1/volumes/{id}"],
        "`backup_id` and `template_id` exclude each other; `backup_id` names a ready backup (409 otherwise) in any project, the volume goes to the backup's node and is at least as large as the backed-up volume; `backup_id` cannot change.",
    ),
    (
        &["POST /v1/backups"],
        "`volume_id` names a volume of the backup's project that is on a node (409 otherwise); `incremental` needs an earlier backup of that volume (409).",
    ),
    (
        &["POST /v1/replications", "PUT /v1/replications/{id}"],
        "`vm_id` names a VM (id, or name in the replication's project) of the replication's project; `targets` name nodes (ids or names), none twice and none the VM's current node; a VM is replicated to one node by at most one replication (409); `vm_id` cannot change.",
    ),
    (
        &["POST /v1/tokens"],
        "`projects` is for operator and viewer tokens only (400 with `admin` or `node`).",
    ),
    (
        &["POST /v1/nics", "PUT /v1/nics/{id}", "POST /v1/vms", "PUT /v1/vms/{id}"],
        "What an object references (network, security groups, volumes, NICs) is in the object's own project; templates may be in any.",
    ),
    (
        &["POST /v1/networks", "PUT /v1/networks/{id}"],
        "A network needs `ipv4_prefix`, `ipv6_prefix` or both; each prefix is a network address (its host bits are zero), IPv4 at most /30, IPv6 at most /126.",
    ),
    (
        &["PUT /v1/networks/{id}"],
        "An update may omit `tunnel_key` or repeat the network's own; a different one is refused.",
    ),
    (
        &["POST /v1/nics", "PUT /v1/nics/{id}", "POST /v1/vms", "PUT /v1/vms/{id}"],
        "Addresses are valid IP addresses of their family; ids in a list are distinct.",
    ),
    (
        &["POST /v1/security-groups", "PUT /v1/security-groups/{id}", "POST /v1/security-groups/{id}/rules"],
        "A rule with ports (`port_min`/`port_max` not both 0) must be `tcp` or `udp` with 1 <= `port_min` <= `port_max`; a rule has `cidr` (a valid prefix) or `remote_group_id`, not both.",
    ),
    (
        &["POST /v1/templates", "PUT /v1/templates/{id}"],
        "`kernel_sha256` needs `kernel_url`, `initramfs_sha256` needs `initramfs_url`, and `initramfs_url` needs `kernel_url`.",
    ),
    (
        &["POST /v1/vms", "PUT /v1/vms/{id}"],
        "`user_data` is at most 64 KiB of UTF-8; each SSH key is `<type> <key> [comment]`.",
    ),
    (
        &["POST /v1/volumes/{id}/resize", "PUT /v1/volumes/{id}"],
        "A volume only grows: `size_bytes` below the current size is refused.",
    ),
    (
        &["POST /v1/nics", "PUT /v1/nics/{id}"],
        "Each routed prefix is a network address (its host bits are zero) of a valid length.",
    ),
    (
        &["GET /v1/logs"],
        "`since_ns` must be before `until_ns` when both are given; `cursor` is a `next_cursor` from an earlier page.",
    ),
    (
        &["PUT /v1/templates/{id}"],
        "A template's source (URLs, format, digests) cannot change: create a new template.",
    ),
    (
        &["PUT /v1/volumes/{id}"],
        "A volume's `template_id` and `node_id` cannot change.",
    ),
    (
        &["PUT /v1/vms/{id}"],
        "`hugepages` and `nested_virtualization` are fixed after create.",
    ),
    (
        &["POST /v1/security-groups/{id}/rules", "POST /v1/security-groups", "PUT /v1/security-groups/{id}"],
        "Rule ids are unique in their group.",
    ),
    (
        &["POST /v1/pods", "PUT /v1/pods/{id}"],
        "What a pod references (networks, security groups, NICs) is in the object's own project. Addresses are valid IP addresses of their family; ids in a list are distinct. Container names are distinct in the pod; each `image` is an OCI image reference (at most 255 bytes, no whitespace, not a URL, not ending in `/` or `:`); a container's `memory_bytes` is at most the pod's; its ports are distinct per protocol; env names have no `=`; `working_dir` is absolute; command, args and env have no NUL. A registry credential has `username` with `password`, or a `token`, not both; one per registry.",
    ),
    (
        &["POST /v1/pods"],
        "On create every registry credential carries its secret (`password` or `token`).",
    ),
    (
        &["PUT /v1/pods/{id}"],
        "A pod's containers, vCPUs, memory, hostname, NICs and node selector are fixed after create (409); `desired_state`, `registry_credentials` and labels change. A credential sent without its secret keeps the stored one of the same registry and username; otherwise it needs one.",
    ),
    (
        &["POST /v1/pods/{id}/{action}"],
        "`force` applies to `stop` only.",
    ),
    (
        &["GET /v1/pods/{id}/logs", "GET /v1/pods/{id}/exec"],
        "`container` is required when the pod has more than one container (400, listing them); an unknown one is 404.",
    ),
];

fn add_cross_field_rules(doc: &mut Value) {
    for (operations, rule) in CROSS_FIELD_RULES {
        for op in *operations {
            let Some((method, path)) = op.split_once(' ') else {
                continue;
            };
            let pointer = format!(
                "/paths/{}/{}",
                path.replace('~', "~0").replace('/', "~1"),
                method.to_lowercase()
            );
            if let Some(op) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) {
                let text = match op.get("description").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{rule}"),
                    _ => rule.to_string(),
                };
                op.insert("description".into(), Value::String(text));
            }
        }
    }
}

// ------------------------------------------------------------------------- details

fn fix_details(doc: &mut Value) {
    // Streams: `GET /v1/events` is Server-Sent Events only; `GET /v1/logs` is JSON, or SSE with
    // `follow=true`.
    if let Some(ok) = doc.pointer_mut("/paths/~1v1~1events/get/responses/200") {
        if let Some(content) = ok.get_mut("content").and_then(Value::as_object_mut) {
            if let Some(schema) = content.remove("application/json") {
                content.insert("text/event-stream".into(), schema);
            }
        }
    }
    if let Some(content) = doc
        .pointer_mut("/paths/~1v1~1logs/get/responses/200/content")
        .and_then(Value::as_object_mut)
    {
        content.insert(
            "text/event-stream".into(),
            json!({"schema": {"type": "string", "description": "with `follow=true`: `event: log` entries"}}),
        );
    }
    // An error's `details` is an object or null.
    if let Some(details) = doc.pointer_mut("/components/schemas/ErrorBody/properties/details") {
        *details = json!({"type": ["object", "null"], "description": "what is in the way (e.g. the ids that block a delete), or null"});
    }
}

// ------------------------------------------------------------------------- errors

/// Turns what axum answers by itself (a path or method it cannot take, a body it refuses) into
/// the error envelope, so that every 4xx/5xx is `application/json` as the document says.
pub async fn envelope_rejections(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    envelope(next.run(req).await).await
}

/// What [`envelope_rejections`] does to a response (the REST router's front layer,
/// `rest::front`, calls it).
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status.as_u16() {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        503 => "unavailable",
        s if s < 500 => "invalid_argument",
        _ => "internal",
    };
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        t => t.to_string(),
    };
    let body = json!({"error": {
        "code": code,
        "message": message,
        "details": null,
        "request_id": mvirt_common::trace::current(),
    }})
    .to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

// ------------------------------------------------------------------------- /v1/docs

/// The reference page: a small self-written page (HTML, one script, one style sheet, all
/// compiled into the binary) that fetches `/v1/openapi.json` with the token the user gives it
/// and renders it. Like the web UI's files, the page holds no data and needs no token; the
/// document it renders keeps its rule (a token is needed).
const DOCS_HTML: &str = include_str!("docs/index.html");
const DOCS_JS: &str = include_str!("docs/docs.js");
const DOCS_CSS: &str = include_str!("docs/docs.css");

/// Scripts, styles and requests only to this origin; no framing.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                        base-uri 'none'; form-action 'none'";

fn docs_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn docs_html() -> Response {
    docs_file("text/html; charset=utf-8", DOCS_HTML)
}

pub async fn docs_js() -> Response {
    docs_file("text/javascript; charset=utf-8", DOCS_JS)
}

pub async fn docs_css() -> Response {
    docs_file("text/css; charset=utf-8", DOCS_CSS)
}

/// Paths of the reference page (anonymous, see `super::auth`).
pub fn is_docs_path(path: &str) -> bool {
    path == "/v1/docs" || path.starts_with("/v1/docs/")
}
