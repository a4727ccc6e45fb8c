//! The OpenAPI document tells the truth. schemathesis (PyPI, pinned and installed by
//! `scripts/setup.sh`) runs every check it has against a live one-member mvirt-api (with a real
//! mvirt-log behind `/v1/logs`), driven by `/v1/openapi.json` alone: no server errors, no
//! response that breaks its schema, no undocumented status or content type, no schema-violating
//! request accepted. A schema-valid request may be refused only by one of the rules between
//! fields listed in [`ACCEPTED_REJECTIONS`], each written in the operation's description.
//! Also: the reference page at `/v1/docs` is served from the binary and loads nothing from
//! elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::Value;

/// Where `scripts/setup.sh` installs schemathesis (a venv: Debian's python is "externally
/// managed"). `MVIRT_SCHEMATHESIS` overrides it.
const DEFAULT_SCHEMATHESIS: &str = "/opt/mvirt-schemathesis/bin/schemathesis";

/// Operations schemathesis cannot or must not drive, and why.
const EXCLUDED_PATHS: &[(&str, &str)] = &[
    (
        "/v1/events",
        "an endless text/event-stream (rest.rs reads and resumes it)",
    ),
    (
        "/v1/vms/{id}/console",
        "a WebSocket upgrade, which schemathesis does not speak (console tests cover it)",
    ),
    (
        "/v1/pods/{id}/exec",
        "a WebSocket upgrade, which schemathesis does not speak (tests/pods.rs covers it)",
    ),
    (
        "/v1/tokens/{id}",
        "DELETE would revoke the admin token the run authenticates with (the stateful phase \
         finds its id in GET /v1/tokens); rest.rs tests revocation",
    ),
];

/// A schema-valid request the API refuses with 400, because of a rule JSON Schema cannot say.
struct Rule {
    /// Operations (`METHOD /path`) the rule applies to.
    operations: &'static [&'static str],
    /// A piece of the API's error message for it.
    message: &'static str,
    /// A piece of each operation's description in the document that states the rule.
    documented: &'static str,
    /// Why the schema cannot express it.
    reason: &'static str,
}

const ACCEPTED_REJECTIONS: &[Rule] = &[
    Rule {
        operations: &["POST /v1/controlplane/join"],
        message: "api_url must be https://",
        documented: "`api_url` must be `https://` on a TLS cluster",
        reason: "the scheme follows the cluster's TLS mode, which the schema does not know",
    },
    Rule {
        operations: &["POST /v1/tokens"],
        message: "only operator and viewer tokens are limited to projects",
        documented: "`projects` is for operator and viewer tokens only",
        reason: "one field is allowed only for some values of another",
    },
    Rule {
        operations: &[
            "POST /v1/nics",
            "PUT /v1/nics/{id}",
            "POST /v1/pods",
            "PUT /v1/pods/{id}",
        ],
        message: " is in project ",
        documented: "is in the object's own project",
        reason: "depends on the stored network's project",
    },
    Rule {
        operations: &[
            "POST /v1/nics",
            "PUT /v1/nics/{id}",
            "POST /v1/vms",
            "PUT /v1/vms/{id}",
            "POST /v1/pods",
            "PUT /v1/pods/{id}",
        ],
        message: " is in another project",
        documented: "is in the object's own project",
        reason: "depends on the stored objects' projects",
    },
    Rule {
        operations: &["POST /v1/backups"],
        message: "a backup lives in its volume's project",
        documented: "names a volume of the backup's project",
        reason: "depends on the stored volume's project",
    },
    Rule {
        operations: &["POST /v1/replications", "PUT /v1/replications/{id}"],
        message: "is the VM's own node",
        documented: "none the VM's current node",
        reason: "depends on where the stored VM is placed",
    },
    Rule {
        operations: &["POST /v1/replications", "PUT /v1/replications/{id}"],
        message: "a replication lives in its VM's project",
        documented: "of the replication's project",
        reason: "depends on the stored VM's project",
    },
    Rule {
        operations: &["PUT /v1/replications/{id}"],
        message: "vm_id cannot change",
        documented: "`vm_id` cannot change",
        reason: "depends on the stored replication",
    },
    Rule {
        operations: &["POST /v1/networks", "PUT /v1/networks/{id}"],
        message: "a network needs ipv4_prefix, ipv6_prefix or both",
        documented: "needs `ipv4_prefix`, `ipv6_prefix` or both",
        reason: "one of two nullable fields must be set",
    },
    Rule {
        operations: &["POST /v1/networks", "PUT /v1/networks/{id}"],
        message: "_prefix \"",
        documented: "host bits are zero",
        reason: "the address must agree with the prefix length (arithmetic, not a pattern)",
    },
    Rule {
        operations: &["PUT /v1/networks/{id}"],
        message: "tunnel_key",
        documented: "may omit `tunnel_key` or repeat the network's own",
        reason: "depends on the stored network",
    },
    Rule {
        operations: &["POST /v1/nics", "PUT /v1/nics/{id}"],
        message: "invalid routed prefix",
        documented: "Each routed prefix is a network address",
        reason: "the address must agree with the prefix length",
    },
    Rule {
        operations: &[
            "POST /v1/nics",
            "PUT /v1/nics/{id}",
            "POST /v1/vms",
            "PUT /v1/vms/{id}",
        ],
        message: "must be IPv",
        documented: "valid IP addresses of their family",
        reason: "the family of an address given in a field that takes either",
    },
    Rule {
        operations: &[
            "POST /v1/security-groups",
            "PUT /v1/security-groups/{id}",
            "POST /v1/security-groups/{id}/rules",
        ],
        message: "ports are only valid for tcp and udp",
        documented: "must be `tcp` or `udp`",
        reason: "ports depend on the protocol",
    },
    Rule {
        operations: &[
            "POST /v1/security-groups",
            "PUT /v1/security-groups/{id}",
            "POST /v1/security-groups/{id}/rules",
        ],
        message: "port range must be",
        documented: "1 <= `port_min` <= `port_max`",
        reason: "compares two fields",
    },
    Rule {
        operations: &[
            "POST /v1/security-groups",
            "PUT /v1/security-groups/{id}",
            "POST /v1/security-groups/{id}/rules",
        ],
        message: "either cidr or remote_group_id",
        documented: "`cidr` (a valid prefix) or `remote_group_id`, not both",
        reason: "two nullable fields exclude each other",
    },
    Rule {
        operations: &[
            "POST /v1/security-groups",
            "PUT /v1/security-groups/{id}",
            "POST /v1/security-groups/{id}/rules",
        ],
        message: "invalid cidr",
        documented: "`cidr` (a valid prefix)",
        reason: "an IPv6 prefix and its length have no exact pattern",
    },
    Rule {
        operations: &["POST /v1/templates", "PUT /v1/templates/{id}"],
        message: " needs ",
        documented: "`kernel_sha256` needs `kernel_url`",
        reason: "one field requires another",
    },
    Rule {
        operations: &["POST /v1/vms", "PUT /v1/vms/{id}"],
        message: "ssh_authorized_keys",
        documented: "each SSH key is `<type> <key> [comment]`",
        reason: "whitespace splitting beyond a portable pattern",
    },
    Rule {
        operations: &["POST /v1/vms", "PUT /v1/vms/{id}"],
        message: "user_data",
        documented: "`user_data` is at most 64 KiB of UTF-8",
        reason: "a limit in bytes, and JSON Schema counts characters",
    },
    Rule {
        operations: &["GET /v1/logs"],
        message: "time range is empty or reversed",
        documented: "`since_ns` must be before `until_ns`",
        reason: "compares two parameters",
    },
    Rule {
        operations: &["GET /v1/logs"],
        message: "malformed cursor",
        documented: "`cursor` is a `next_cursor` from an earlier page",
        reason: "an opaque token the server issued",
    },
    Rule {
        operations: &["PUT /v1/templates/{id}"],
        message: "source cannot change",
        documented: "source (URLs, format, digests) cannot change",
        reason: "compares with the stored template",
    },
    Rule {
        operations: &["POST /v1/volumes", "PUT /v1/volumes/{id}"],
        message: "backup_id and template_id exclude each other",
        documented: "`backup_id` and `template_id` exclude each other",
        reason: "two nullable fields exclude each other",
    },
    Rule {
        operations: &["PUT /v1/volumes/{id}"],
        message: "backup_id cannot change",
        documented: "`backup_id` cannot change",
        reason: "compares with the stored volume",
    },
    Rule {
        operations: &["PUT /v1/volumes/{id}"],
        message: "template and node cannot change",
        documented: "`template_id` and `node_id` cannot change",
        reason: "compares with the stored volume",
    },
    Rule {
        operations: &["PUT /v1/vms/{id}"],
        message: "fixed after create",
        documented: "fixed after create",
        reason: "compares with the stored VM",
    },
    Rule {
        operations: &[
            "POST /v1/security-groups",
            "PUT /v1/security-groups/{id}",
            "POST /v1/security-groups/{id}/rules",
        ],
        message: "duplicate rule id",
        documented: "Rule ids are unique in their group",
        reason: "compares rules with each other and with the stored group",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "duplicate container name",
        documented: "Container names are distinct in the pod",
        reason: "compares the items of a list by one field",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "OCI image reference",
        documented: "each `image` is an OCI image reference",
        reason:
            "a limit in bytes and Rust's whitespace and control classes, beyond a portable pattern",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "and the pod's memory_bytes",
        documented: "a container's `memory_bytes` is at most the pod's",
        reason: "compares two fields",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "duplicate port",
        documented: "its ports are distinct per protocol",
        reason: "compares the items of a list",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "invalid env name",
        documented: "env names have no `=`",
        reason: "a pattern on map keys",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "no NUL characters",
        documented: "command, args and env have no NUL",
        reason: "a limit in bytes on every string of a container",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "registry_credentials for",
        documented: "A registry credential has `username` with `password`, or a `token`, not both",
        reason: "fields that require or exclude each other",
    },
    Rule {
        operations: &["POST /v1/pods", "PUT /v1/pods/{id}"],
        message: "duplicate registry_credentials",
        documented: "one per registry",
        reason: "compares the items of a list by one field",
    },
    Rule {
        operations: &["POST /v1/pods"],
        message: "a password (with username) or a token is required",
        documented: "every registry credential carries its secret",
        reason: "the secret fields are optional only on updates",
    },
    Rule {
        operations: &["PUT /v1/pods/{id}"],
        message: "a password (with username) or a token is required",
        documented: "keeps the stored one of the same registry and username",
        reason: "compares with the stored pod",
    },
    Rule {
        operations: &["POST /v1/pods/{id}/{action}"],
        message: "force applies to stop only",
        documented: "`force` applies to `stop` only",
        reason: "a parameter valid for one value of the path",
    },
    Rule {
        operations: &["GET /v1/pods/{id}/logs"],
        message: "name one with ?container=",
        documented: "`container` is required when the pod has more than one container",
        reason: "depends on the stored pod",
    },
    Rule {
        operations: &["POST /v1/volumes/{id}/resize", "PUT /v1/volumes/{id}"],
        message: "only grow",
        documented: "A volume only grows",
        reason: "compares with the stored size",
    },
];

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("MVIRT_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCHEMATHESIS));
    assert!(
        path.is_file(),
        "schemathesis not found at {} (set MVIRT_SCHEMATHESIS, or run `bash scripts/setup.sh`, \
         which installs it)",
        path.display()
    );
    path
}

/// One failed check of the run: code (`ST202`), operation, schemathesis' message, the status
/// and body the API answered.
#[derive(Debug)]
struct Failure {
    code: String,
    operation: String,
    message: String,
    request: String,
    status: u64,
    body: String,
}

/// The failed checks in schemathesis' NDJSON event report, one per (code, operation, message).
fn failures(ndjson: &Path) -> Vec<Failure> {
    let text = std::fs::read_to_string(ndjson).expect("read the NDJSON report");
    let mut out: Vec<Failure> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).expect("NDJSON event");
        let Some(recorder) = event.pointer("/ScenarioFinished/recorder") else {
            continue;
        };
        let Some(checks) = recorder["checks"].as_object() else {
            continue;
        };
        for (case, results) in checks {
            for check in results.as_array().into_iter().flatten() {
                if check["status"] != "failure" {
                    continue;
                }
                let f = &check["failure_info"]["failure"];
                let interaction = &recorder["interactions"][case];
                let content = &interaction["response"]["content"];
                let body = match content.get("$base64").and_then(Value::as_str) {
                    Some(b) => String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .unwrap_or_default(),
                    )
                    .into_owned(),
                    None => content.as_str().unwrap_or_default().to_string(),
                };
                let failure = Failure {
                    code: f["code"].as_str().unwrap_or("?").to_string(),
                    operation: f["operation"].as_str().unwrap_or("?").to_string(),
                    message: f["message"].as_str().unwrap_or("").to_string(),
                    request: format!(
                        "{} {}",
                        interaction["request"]["method"].as_str().unwrap_or(""),
                        interaction["request"]["uri"].as_str().unwrap_or("")
                    ),
                    status: interaction["response"]["status_code"].as_u64().unwrap_or(0),
                    body,
                };
                let seen = out.iter().any(|o| {
                    o.code == failure.code
                        && o.operation == failure.operation
                        && o.message == failure.message
                        && o.body == failure.body
                });
                if !seen {
                    out.push(failure);
                }
            }
        }
    }
    out
}

/// The rule that explains a "schema-valid request rejected", if any.
fn accepted_rule(f: &Failure) -> Option<&'static Rule> {
    if f.code != "ST202" || f.status != 400 {
        return None;
    }
    let message: Value = serde_json::from_str(&f.body).ok()?;
    let message = message.pointer("/error/message")?.as_str()?;
    ACCEPTED_REJECTIONS
        .iter()
        .find(|r| r.operations.contains(&f.operation.as_str()) && message.contains(r.message))
}

fn description<'a>(doc: &'a Value, operation: &str) -> &'a str {
    let (method, path) = operation.split_once(' ').expect("METHOD /path");
    doc["paths"][path][method.to_lowercase()]["description"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_document_true_with_every_check() {
    let schemathesis = schemathesis();

    let log_dir = tempfile::tempdir().unwrap();
    let log_server = mvirt_log::server::BoundServer::bind(mvirt_log::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: log_dir.path().to_path_buf(),
        retention: Default::default(),
    })
    .await
    .expect("bind mvirt-log");
    let log_addr = log_server.local_addr();
    let log_shutdown = mvirt_common::Shutdown::new();
    let s = log_shutdown.clone();
    tokio::spawn(async move { log_server.serve(s).await });
    let m = start_member_with(|c| c.log_endpoint = format!("http://{log_addr}")).await;

    // Every rule the test accepts is written in the document, for every operation it names.
    let (status, doc) = m.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    for rule in ACCEPTED_REJECTIONS {
        for op in rule.operations {
            assert!(
                description(&doc, op).contains(rule.documented),
                "{op}: its description does not state the rule {:?} ({})",
                rule.documented,
                rule.reason
            );
        }
    }

    let work = tempfile::tempdir().unwrap();
    // `follow=true` turns `GET /v1/logs` into an endless stream: pinned off. A stale `If-Match`
    // is a schema-valid request that rightly gets 412, so 412 counts as accepting it.
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        r#"
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]

[[operations]]
include-path = "/v1/logs"
parameters = { "query.follow" = "false" }

[[operations]]
include-path = "/v1/pods/{id}/logs"
parameters = { "query.follow" = "false" }
"#,
    )
    .unwrap();
    let report_dir = work.path().join("report");
    let mut args: Vec<String> = vec![
        "--config-file".into(),
        config.display().to_string(),
        "run".into(),
        format!("{}/v1/openapi.json", m.url),
        "--header".into(),
        format!("Authorization: Bearer {}", m.token),
        "--checks".into(),
        "all".into(),
        "--max-examples".into(),
        "30".into(),
        "--seed".into(),
        "20261207".into(),
        "--generation-database".into(),
        "none".into(),
        // One worker: hypothesis' lambda-source inspection is not thread-safe on this Python
        // (a "Runtime Error: AST constructor recursion depth mismatch" with two).
        "--workers".into(),
        "1".into(),
        "--request-timeout".into(),
        "10".into(),
        "--no-color".into(),
        // The member serves TLS signed by its cluster CA.
        "--tls-verify".into(),
        m.dir.path().join("tls/ca.pem").display().to_string(),
        "--report".into(),
        "ndjson,json".into(),
        "--report-ndjson-path".into(),
        report_dir.join("events.ndjson").display().to_string(),
        "--report-json-path".into(),
        report_dir.join("run.json").display().to_string(),
    ];
    for (path, _why) in EXCLUDED_PATHS {
        args.push("--exclude-path".into());
        args.push(path.to_string());
    }
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(&schemathesis)
        .args(&args)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", schemathesis.display()));
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "schemathesis took {:.0?}; its summary:\n{}",
        started.elapsed(),
        stdout
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let run: Value = std::fs::read_to_string(report_dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no run report; schemathesis said:\n{stdout}\n{stderr}"));
    assert_eq!(run["complete"], true, "the run did not complete:\n{stdout}");
    assert!(
        run["errors"].as_array().is_some_and(|e| e.is_empty()),
        "schemathesis errors (network, schema, timeouts): {}\n{stdout}",
        run["errors"]
    );
    let tested = run["operations"]["tested"].as_u64().unwrap_or(0);
    assert!(
        tested >= 50,
        "only {tested} operations tested:\n{}",
        run["operations"]
    );
    let generated = run["test_cases"]["generated"].as_u64().unwrap_or(0);
    assert!(generated >= 1000, "only {generated} test cases generated");

    let all = failures(&report_dir.join("events.ndjson"));
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for f in all {
        match accepted_rule(&f) {
            Some(rule) => accepted.push((f, rule)),
            None => refused.push(f),
        }
    }
    for (f, rule) in &accepted {
        eprintln!(
            "accepted: {} refused a schema-valid request by a documented rule ({}): {}",
            f.operation, rule.reason, f.body
        );
    }
    assert!(
        refused.is_empty(),
        "{} failed checks:\n{}",
        refused.len(),
        refused
            .iter()
            .map(|f| format!(
                "{} {}: {}\n    {} -> {} {}",
                f.code,
                f.operation,
                f.message.replace('\n', " / "),
                f.request,
                f.status,
                f.body
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    log_shutdown.trigger();
}

#[tokio::test]
async fn the_reference_page_is_served_from_the_binary_and_loads_only_local_assets() {
    let m = start_member().await;
    // The page and its assets hold no data: no token needed, like the web UI's files. The
    // document it renders keeps its rule.
    let anon = https_client(&m.ca_pem);
    let resp = anon
        .get(format!("{}/v1/openapi.json", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the document needs a token");

    let resp = anon.get(format!("{}/v1/docs", m.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("/v1/openapi.json"),
        "the page renders the document"
    );

    // Every src/href is on this server, and each answers.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap_or("").to_string());
        }
    }
    assert!(
        refs.len() >= 3,
        "script and style sheet referenced: {refs:?}"
    );
    for r in &refs {
        assert!(
            r.starts_with('/') && !r.starts_with("//"),
            "{r:?} is not a local asset"
        );
    }
    for (asset, kind) in [
        ("/v1/docs/docs.js", "text/javascript"),
        ("/v1/docs/docs.css", "text/css"),
    ] {
        assert!(refs.iter().any(|r| r == asset), "{asset} not referenced");
        let resp = anon.get(format!("{}{asset}", m.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{asset}: {ct}");
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("@import"),
            "{asset} refers to another server"
        );
    }
    // The script fetches the document with the token the user gives it.
    let js = anon
        .get(format!("{}/v1/docs/docs.js", m.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("fetch('/v1/openapi.json'") && js.contains("Authorization"));
    // A name under /v1/docs that is no asset is the API's 404, not the page.
    let resp = anon
        .get(format!("{}/v1/docs/nothing.js", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
