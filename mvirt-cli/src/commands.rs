//! Runs a parsed command: resolve the configuration, call the API, print the result.
//!
//! Every command returns `Result<(), ApiError>`; `run` turns that into the process exit code.

use std::collections::BTreeMap;
use std::io::Write;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::cli::*;
use crate::client::{exit, ApiClient, ApiError};
use crate::config::{self, ConfigFile, Overrides, Remote};
use crate::output::{self, Format};
use crate::resources::{self as res, Resource};

/// Parses arguments, runs the command and returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    match dispatch(cli).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("Error: {}", e.display_message());
            e.exit_code()
        }
    }
}

fn config_path(g: &GlobalArgs) -> Result<std::path::PathBuf, ApiError> {
    match &g.config {
        Some(p) => Ok(p.clone()),
        None => Ok(config::default_path()?),
    }
}

/// Builds the API client from config file + environment + flags.
pub fn client_for(g: &GlobalArgs) -> Result<ApiClient, ApiError> {
    let file = ConfigFile::load(&config_path(g)?)?;
    let o = Overrides {
        remote: g.remote.clone(),
        url: g.url.clone(),
        token: g.token.clone(),
        project: g.project.clone(),
    };
    let r = config::resolve(&file, &o)?;
    let mut api = ApiClient::new(&r.url, r.token, &r.project)?;
    api.if_match = g.if_match;
    Ok(api)
}

struct Ctx {
    api: ApiClient,
    format: Format,
}

impl Ctx {
    fn print(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`mvirt vm list | head`) is not an error worth reporting.
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }

    fn print_list(&self, items: &[Value], columns: &[output::Column]) -> Result<(), ApiError> {
        let s = output::render_list(items, columns, self.format).map_err(ApiError::Other)?;
        self.print(&s);
        Ok(())
    }

    fn print_object(&self, v: &Value) -> Result<(), ApiError> {
        let s = output::render_object(v, self.format).map_err(ApiError::Other)?;
        self.print(&s);
        Ok(())
    }

    /// Result of a mutation: the object in `-o json|yaml`, a one-line confirmation otherwise.
    fn done(&self, v: &Value, what: &str) -> Result<(), ApiError> {
        match self.format {
            Format::Table => {
                self.print(&format!("{what}\n"));
                Ok(())
            }
            _ => self.print_object(v),
        }
    }

    fn pq(&self) -> Vec<(&'static str, String)> {
        vec![("project", self.api.project.clone())]
    }

    fn list_query(&self, r: &Resource, a: &ListArgs) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if r.projected && !a.all_projects {
            q.push(("project", self.api.project.clone()));
        }
        for (k, v) in [("label", &a.label), ("node", &a.node), ("phase", &a.phase)] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        q
    }

    async fn list(&self, r: &Resource, a: &ListArgs) -> Result<(), ApiError> {
        let items = self.api.list_all(r.path, &self.list_query(r, a)).await?;
        self.print_list(&items, r.columns)
    }

    async fn get(&self, r: &Resource, id: &str) -> Result<Value, ApiError> {
        self.api.get(&item_path(r, id), &self.pq()).await
    }

    async fn show(&self, r: &Resource, id: &str) -> Result<(), ApiError> {
        let v = self.get(r, id).await?;
        self.print_object(&v)
    }

    /// The id of an object named by id or name.
    async fn resolve_id(&self, r: &Resource, id_or_name: &str) -> Result<String, ApiError> {
        let v = self.get(r, id_or_name).await?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::BadResponse(format!("{} {id_or_name}: the response has no id", r.name))
            })
    }

    async fn create(&self, r: &Resource, body: Value) -> Result<(), ApiError> {
        let v = self.api.create(r.path, &body).await?;
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
        self.done(&v, &format!("{} {name} created ({id})", r.name))
    }

    async fn delete(
        &self,
        r: &Resource,
        id: &str,
        extra: &[(&'static str, String)],
    ) -> Result<(), ApiError> {
        let mut q = self.pq();
        q.extend_from_slice(extra);
        let v = self.api.delete(&item_path(r, id), &q).await?;
        self.done(&v, &format!("{} {id} deleted", r.name))
    }
}

pub fn item_path(r: &Resource, id: &str) -> String {
    format!("{}/{}", r.path, encode(id))
}

/// Percent-encodes a path segment (names and ids are DNS labels/UUIDs, but stay safe).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `k=v` strings into a label map.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut m = BTreeMap::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| ApiError::Usage(format!("label {i:?} is not k=v")))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

fn size(s: &str) -> Result<u64, ApiError> {
    output::parse_size(s).map_err(ApiError::Usage)
}

/// A `--port` value: `443` or `8000-8100`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), ApiError> {
    let bad = || ApiError::Usage(format!("invalid port {s:?} (use 443 or 8000-8100)"));
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// An `--ssh-key` value: a path to a key file, or the key itself.
fn ssh_key(s: &str) -> Result<String, ApiError> {
    let expanded = match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(s),
    };
    if s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-") {
        return Ok(s.trim().to_string());
    }
    std::fs::read_to_string(&expanded)
        .map(|k| k.trim().to_string())
        .map_err(|e| {
            ApiError::Usage(format!(
                "--ssh-key {s}: not a public key and not a readable file: {e}"
            ))
        })
}

async fn dispatch(cli: Cli) -> Result<(), ApiError> {
    let g = cli.global.clone();
    match cli.command {
        Command::Login(a) => return login(&g, a).await,
        Command::Remote(c) => return remote(&g, c),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "mvirt", &mut std::io::stdout());
            return Ok(());
        }
        Command::Tui => {
            let api = client_for(&g)?;
            return crate::tui::run(api)
                .await
                .map_err(|e| ApiError::Other(e.to_string()));
        }
        Command::Console(a) => {
            let api = client_for(&g)?;
            return crate::console::run(&api, &a.vm).await;
        }
        _ => {}
    }
    let ctx = Ctx {
        api: client_for(&g)?,
        format: g.output,
    };
    match cli.command {
        Command::Project(c) => project(&ctx, c).await,
        Command::Node(c) => node(&ctx, c).await,
        Command::Network(c) => network(&ctx, c).await,
        Command::Nic(c) => nic(&ctx, c).await,
        Command::Sg(c) => sg(&ctx, c).await,
        Command::Route(RouteCmd::List(a)) => routes(&ctx, &a).await,
        Command::Volume(c) => volume(&ctx, c).await,
        Command::Template(c) => template(&ctx, c).await,
        Command::Vm(c) => vm(&ctx, c).await,
        Command::Logs(a) => logs(&ctx, a).await,
        Command::Events(a) => events(&ctx, a).await,
        Command::Cluster(c) => cluster(&ctx, c).await,
        Command::Token(c) => token(&ctx, c).await,
        Command::Version => version(&ctx).await,
        Command::Login(_)
        | Command::Remote(_)
        | Command::Completion { .. }
        | Command::Tui
        | Command::Console(_) => Ok(()),
    }
}

// ------------------------------------------------------------------------------ config

async fn login(g: &GlobalArgs, a: LoginArgs) -> Result<(), ApiError> {
    let path = config_path(g)?;
    let mut file = ConfigFile::load(&path)?;
    let existing = file.remotes.get(&a.name).cloned();
    let url = g
        .url
        .clone()
        .or_else(|| existing.as_ref().map(|r| r.url.clone()))
        .unwrap_or_else(|| config::DEFAULT_URL.to_string());
    let token = match (&g.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| ApiError::Usage(format!("cannot read token file {}: {e}", f.display())))?,
        (None, None) => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprint!("API token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| ApiError::Usage(format!("cannot read the token from stdin: {e}")))?;
            line
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(ApiError::Usage(
            "no token given (use --token, --token-file or stdin)".into(),
        ));
    }
    let project = g
        .project
        .clone()
        .or_else(|| existing.and_then(|r| r.project));
    if !a.no_verify {
        let api = ApiClient::new(
            &url,
            Some(token.clone()),
            project.as_deref().unwrap_or(config::DEFAULT_PROJECT),
        )?;
        api.get(res::PROJECTS.path, &[("limit", "1".into())])
            .await?;
    }
    file.remotes.insert(
        a.name.clone(),
        Remote {
            url: url.trim_end_matches('/').to_string(),
            token: Some(token),
            project,
        },
    );
    file.current = Some(a.name.clone());
    file.save(&path)?;
    println!(
        "Logged in to {url} as remote {:?} (saved in {})",
        a.name,
        path.display()
    );
    Ok(())
}

fn remote(g: &GlobalArgs, c: RemoteCmd) -> Result<(), ApiError> {
    let path = config_path(g)?;
    let mut file = ConfigFile::load(&path)?;
    match c {
        RemoteCmd::List => {
            let items: Vec<Value> = file
                .remotes
                .iter()
                .map(|(n, r)| {
                    json!({"current": if file.current.as_deref() == Some(n) { "*" } else { "" },
                    "name": n, "url": r.url, "project": r.project, "token": if r.token.is_some() { "set" } else { "" }})
                })
                .collect();
            let cols = [
                output::col("", "current"),
                output::col("name", "name"),
                output::col("url", "url"),
                output::col("project", "project"),
                output::col("token", "token"),
            ];
            print!(
                "{}",
                output::render_list(&items, &cols, g.output).map_err(ApiError::Other)?
            );
            Ok(())
        }
        RemoteCmd::Use { name } => {
            if !file.remotes.contains_key(&name) {
                return Err(config::ConfigError::UnknownRemote(name).into());
            }
            file.current = Some(name.clone());
            file.save(&path)?;
            println!("Now using remote {name:?}");
            Ok(())
        }
        RemoteCmd::Remove { name } => {
            if file.remotes.remove(&name).is_none() {
                return Err(config::ConfigError::UnknownRemote(name).into());
            }
            if file.current.as_deref() == Some(name.as_str()) {
                file.current = None;
            }
            file.save(&path)?;
            println!("Removed remote {name:?}");
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------------ resources

async fn project(ctx: &Ctx, c: ProjectCmd) -> Result<(), ApiError> {
    let r = &res::PROJECTS;
    match c {
        ProjectCmd::List => ctx.list(r, &ListArgs::default()).await,
        ProjectCmd::Show { name } => ctx.show(r, &name).await,
        ProjectCmd::Create {
            name,
            description,
            labels,
        } => {
            let mut body = json!({"name": name, "labels": parse_labels(&labels)?});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            ctx.create(r, body).await
        }
        ProjectCmd::Delete { name } => ctx.delete(r, &name, &[]).await,
    }
}

async fn node(ctx: &Ctx, c: NodeCmd) -> Result<(), ApiError> {
    let r = &res::NODES;
    match c {
        NodeCmd::List(a) => ctx.list(r, &a).await,
        NodeCmd::Show { node } => ctx.show(r, &node).await,
        NodeCmd::Host { node } => {
            let v = ctx
                .api
                .get(&format!("{}/host", item_path(r, &node)), &[])
                .await?;
            ctx.print_object(&v)
        }
        NodeCmd::Cordon { node } => set_schedulable(ctx, &node, false).await,
        NodeCmd::Uncordon { node } => set_schedulable(ctx, &node, true).await,
        NodeCmd::Label { node, labels } => {
            let v = ctx
                .api
                .put(
                    &item_path(r, &node),
                    &[],
                    &json!({"labels": parse_labels(&labels)?}),
                )
                .await?;
            ctx.done(&v, &format!("node {node} labelled"))
        }
        NodeCmd::Delete { node } => ctx.delete(r, &node, &[]).await,
    }
}

async fn set_schedulable(ctx: &Ctx, node: &str, schedulable: bool) -> Result<(), ApiError> {
    let v = ctx
        .api
        .put(
            &item_path(&res::NODES, node),
            &[],
            &json!({"spec": {"schedulable": schedulable}}),
        )
        .await?;
    ctx.done(
        &v,
        &format!(
            "node {node} {}",
            if schedulable {
                "uncordoned"
            } else {
                "cordoned"
            }
        ),
    )
}

async fn network(ctx: &Ctx, c: NetworkCmd) -> Result<(), ApiError> {
    let r = &res::NETWORKS;
    match c {
        NetworkCmd::List(a) => ctx.list(r, &a).await,
        NetworkCmd::Show { network } => ctx.show(r, &network).await,
        NetworkCmd::Create {
            name,
            ipv4,
            ipv6,
            dns,
            ntp,
            public,
            labels,
        } => {
            let mut spec = json!({"dns_servers": dns, "ntp_servers": ntp, "is_public": public});
            if let Some(p) = ipv4 {
                spec["ipv4_prefix"] = json!(p);
            }
            if let Some(p) = ipv6 {
                spec["ipv6_prefix"] = json!(p);
            }
            let body = json!({"name": name, "project": ctx.api.project, "labels": parse_labels(&labels)?, "spec": spec});
            ctx.create(r, body).await
        }
        NetworkCmd::Delete { network, force } => {
            let extra = if force {
                vec![("force", "true".to_string())]
            } else {
                vec![]
            };
            ctx.delete(r, &network, &extra).await
        }
    }
}

async fn resolve_all(ctx: &Ctx, r: &Resource, names: &[String]) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for n in names {
        ids.push(ctx.resolve_id(r, n).await?);
    }
    Ok(ids)
}

async fn nic(ctx: &Ctx, c: NicCmd) -> Result<(), ApiError> {
    let r = &res::NICS;
    match c {
        NicCmd::List(a) => ctx.list(r, &a).await,
        NicCmd::Show { nic } => ctx.show(r, &nic).await,
        NicCmd::Create {
            name,
            network,
            mac,
            ipv4,
            ipv6,
            security_groups,
            routed_prefixes,
        } => {
            let network_id = ctx.resolve_id(&res::NETWORKS, &network).await?;
            let sgs = resolve_all(ctx, &res::SECURITY_GROUPS, &security_groups).await?;
            let mut spec = json!({"network_id": network_id, "security_group_ids": sgs,
                "routed_prefixes": routed_prefixes});
            for (k, v) in [
                ("mac_address", mac),
                ("ipv4_address", ipv4),
                ("ipv6_address", ipv6),
            ] {
                if let Some(v) = v {
                    spec[k] = json!(v);
                }
            }
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": spec}),
            )
            .await
        }
        NicCmd::Delete { nic } => ctx.delete(r, &nic, &[]).await,
    }
}

async fn sg(ctx: &Ctx, c: SgCmd) -> Result<(), ApiError> {
    let r = &res::SECURITY_GROUPS;
    match c {
        SgCmd::List(a) => ctx.list(r, &a).await,
        SgCmd::Show { sg } => ctx.show(r, &sg).await,
        SgCmd::Create { name } => {
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": {"rules": []}}),
            )
            .await
        }
        SgCmd::Delete { sg } => ctx.delete(r, &sg, &[]).await,
        SgCmd::Rule(SgRuleCmd::List { sg }) => {
            let v = ctx.get(r, &sg).await?;
            let rules = output::lookup(&v, "spec.rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ctx.print_list(&rules, res::SG_RULES)
        }
        SgCmd::Rule(SgRuleCmd::Add {
            sg,
            direction,
            protocol,
            port,
            cidr,
            remote_group,
            description,
        }) => {
            let (port_min, port_max) = match port {
                Some(p) => parse_port_range(&p)?,
                None => (0, 0),
            };
            let mut rule = json!({"direction": direction, "protocol": protocol, "port_min": port_min, "port_max": port_max});
            if let Some(c) = cidr {
                rule["cidr"] = json!(c);
            }
            if let Some(g) = remote_group {
                rule["remote_group_id"] = json!(ctx.resolve_id(r, &g).await?);
            }
            if let Some(d) = description {
                rule["description"] = json!(d);
            }
            let v = ctx
                .api
                .post(&format!("{}/rules", item_path(r, &sg)), &ctx.pq(), &rule)
                .await?;
            ctx.done(&v, &format!("rule added to security group {sg}"))
        }
        SgCmd::Rule(SgRuleCmd::Delete { sg, rule_id }) => {
            let path = format!("{}/rules/{}", item_path(r, &sg), encode(&rule_id));
            let v = ctx.api.delete(&path, &ctx.pq()).await?;
            ctx.done(
                &v,
                &format!("rule {rule_id} deleted from security group {sg}"),
            )
        }
    }
}

/// Routes as the API derives them: every NIC address of a VM placed on a node.
async fn routes(ctx: &Ctx, a: &ListArgs) -> Result<(), ApiError> {
    let q = ctx.list_query(&res::NICS, a);
    let nics = ctx.api.list_all(res::NICS.path, &q).await?;
    let vms = ctx
        .api
        .list_all(res::VMS.path, &ctx.list_query(&res::VMS, a))
        .await?;
    let networks = ctx
        .api
        .list_all(res::NETWORKS.path, &ctx.list_query(&res::NETWORKS, a))
        .await?;
    let rows = derive_routes(&nics, &vms, &networks);
    ctx.print_list(&rows, res::ROUTES)
}

pub fn derive_routes(nics: &[Value], vms: &[Value], networks: &[Value]) -> Vec<Value> {
    let name_of = |items: &[Value], id: &str| -> String {
        items
            .iter()
            .find(|i| i.get("id").and_then(Value::as_str) == Some(id))
            .and_then(|i| i.get("name").and_then(Value::as_str))
            .unwrap_or(id)
            .to_string()
    };
    let mut rows = Vec::new();
    for nic in nics {
        let Some(vm_id) = nic.get("vm_id").and_then(Value::as_str) else {
            continue;
        };
        let vm = vms
            .iter()
            .find(|v| v.get("id").and_then(Value::as_str) == Some(vm_id));
        let Some(node) = vm.and_then(|v| v.get("node_id")).and_then(Value::as_str) else {
            continue;
        };
        let network_id = output::lookup(nic, "spec.network_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (key, plen) in [("spec.ipv4_address", 32), ("spec.ipv6_address", 128)] {
            if let Some(addr) = output::lookup(nic, key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                rows.push(json!({
                    "network": name_of(networks, network_id),
                    "destination": format!("{addr}/{plen}"),
                    "nic": nic.get("name").cloned().unwrap_or(Value::Null),
                    "vm": name_of(vms, vm_id),
                    "node": node,
                }));
            }
        }
    }
    rows
}

async fn volume(ctx: &Ctx, c: VolumeCmd) -> Result<(), ApiError> {
    let r = &res::VOLUMES;
    match c {
        VolumeCmd::List(a) => ctx.list(r, &a).await,
        VolumeCmd::Show { volume } => ctx.show(r, &volume).await,
        VolumeCmd::Create {
            name,
            size: sz,
            template,
            node,
        } => {
            let mut spec = json!({"size_bytes": size(&sz)?});
            if let Some(t) = template {
                spec["template_id"] = json!(ctx.resolve_id(&res::TEMPLATES, &t).await?);
            }
            if let Some(n) = node {
                spec["node_id"] = json!(ctx.resolve_id(&res::NODES, &n).await?);
            }
            ctx.create(
                r,
                json!({"name": name, "project": ctx.api.project, "spec": spec}),
            )
            .await
        }
        VolumeCmd::Resize { volume, size: sz } => {
            let path = format!("{}/resize", item_path(r, &volume));
            let v = ctx
                .api
                .post(&path, &ctx.pq(), &json!({"size_bytes": size(&sz)?}))
                .await?;
            ctx.done(&v, &format!("volume {volume} resized to {sz}"))
        }
        VolumeCmd::Delete { volume } => ctx.delete(r, &volume, &[]).await,
        VolumeCmd::Snapshot(SnapshotCmd::List { volume }) => {
            let v = ctx.get(r, &volume).await?;
            let snaps = v
                .get("snapshots")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ctx.print_list(&snaps, res::SNAPSHOTS)
        }
        VolumeCmd::Snapshot(SnapshotCmd::Create { volume, name }) => {
            let path = format!("{}/snapshots", item_path(r, &volume));
            let v = ctx
                .api
                .post(&path, &ctx.pq(), &json!({"name": name}))
                .await?;
            ctx.done(&v, &format!("snapshot {name} of volume {volume} created"))
        }
        // The API takes a snapshot's name as well as its id.
        VolumeCmd::Snapshot(SnapshotCmd::Delete { volume, snapshot }) => {
            let path = format!("{}/snapshots/{}", item_path(r, &volume), encode(&snapshot));
            let v = ctx.api.delete(&path, &ctx.pq()).await?;
            ctx.done(
                &v,
                &format!("snapshot {snapshot} of volume {volume} deleted"),
            )
        }
        VolumeCmd::Snapshot(SnapshotCmd::Rollback { volume, snapshot }) => {
            let path = format!(
                "{}/snapshots/{}/rollback",
                item_path(r, &volume),
                encode(&snapshot)
            );
            let v = ctx.api.post(&path, &ctx.pq(), &json!({})).await?;
            let generation = v
                .pointer("/rollback/generation")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            ctx.done(
                &v,
                &format!(
                    "volume {volume}: rollback to snapshot {snapshot} accepted (generation {generation}; done when status.rollback_generation shows it)"
                ),
            )
        }
        VolumeCmd::Snapshot(SnapshotCmd::Promote {
            volume,
            snapshot,
            name,
        }) => {
            let path = format!(
                "{}/snapshots/{}/promote",
                item_path(r, &volume),
                encode(&snapshot)
            );
            let v = ctx
                .api
                .post(&path, &ctx.pq(), &json!({"name": name}))
                .await?;
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            ctx.done(
                &v,
                &format!(
                    "template {name} ({id}) created from snapshot {snapshot} of volume {volume}"
                ),
            )
        }
    }
}

async fn template(ctx: &Ctx, c: TemplateCmd) -> Result<(), ApiError> {
    let r = &res::TEMPLATES;
    match c {
        TemplateCmd::List(a) => ctx.list(r, &a).await,
        TemplateCmd::Show { template } => ctx.show(r, &template).await,
        TemplateCmd::Import {
            name,
            source,
            format,
            sha256,
            kernel,
            initramfs,
            kernel_sha256,
            initramfs_sha256,
            cmdline,
            no_wait,
        } => {
            let mut spec = json!({"source_url": source, "format": format});
            for (k, v) in [
                ("sha256", sha256),
                ("kernel_url", kernel),
                ("initramfs_url", initramfs),
                ("kernel_sha256", kernel_sha256),
                ("initramfs_sha256", initramfs_sha256),
                ("cmdline", cmdline),
            ] {
                if let Some(v) = v {
                    spec[k] = json!(v);
                }
            }
            let body = json!({"name": name, "project": ctx.api.project, "spec": spec});
            let created = ctx.api.create(r.path, &body).await?;
            let id = created
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if no_wait {
                return ctx.done(&created, &format!("template {name} import started ({id})"));
            }
            let revision = created.get("revision").and_then(Value::as_u64);
            let last = crate::progress::follow_import(
                &ctx.api,
                &id,
                revision,
                ctx.format == Format::Table,
            )
            .await?;
            ctx.done(&last, &format!("template {name} imported ({id})"))
        }
        TemplateCmd::Delete { template } => ctx.delete(r, &template, &[]).await,
        TemplateCmd::Cancel { template } => {
            let v = ctx
                .api
                .post(
                    &format!("{}/cancel", item_path(r, &template)),
                    &ctx.pq(),
                    &json!({}),
                )
                .await?;
            ctx.done(&v, &format!("import of template {template} cancelled"))
        }
    }
}

/// The JSON body of `POST /v1/vms` for `mvirt vm create` (names already resolved to ids).
pub fn vm_create_body(
    a: &VmCreateArgs,
    project: &str,
    ids: &VmCreateIds,
) -> Result<Value, ApiError> {
    let mut spec = json!({
        "vcpus": a.cpus,
        "memory_bytes": size(&a.memory)?,
        "hostname": a.hostname.clone().unwrap_or_else(|| a.name.clone()),
        "desired_state": if a.stopped { "stopped" } else { "running" },
        "hugepages": a.hugepages,
        "nested_virtualization": a.nested_virtualization,
        "volume_ids": ids.volumes,
        "ssh_authorized_keys": ids.ssh_keys,
    });
    if let Some(t) = &ids.template {
        spec["root_volume"] = json!({"template_id": t, "size_bytes": size(&a.disk_size)?});
    }
    if !ids.networks.is_empty() {
        spec["network_interfaces"] = ids
            .networks
            .iter()
            .map(|n| json!({"network_id": n, "security_group_ids": ids.security_groups}))
            .collect();
    }
    if let Some(u) = &ids.user_data {
        spec["user_data"] = json!(u);
    }
    if let Some(s) = &a.node_selector {
        spec["node_selector"] = json!(s);
    }
    Ok(
        json!({"name": a.name, "project": project, "labels": parse_labels(&a.labels)?, "spec": spec}),
    )
}

/// Ids and file contents gathered for a VM create.
#[derive(Debug, Default)]
pub struct VmCreateIds {
    pub template: Option<String>,
    pub networks: Vec<String>,
    pub security_groups: Vec<String>,
    pub volumes: Vec<String>,
    pub ssh_keys: Vec<String>,
    pub user_data: Option<String>,
}

async fn vm(ctx: &Ctx, c: VmCmd) -> Result<(), ApiError> {
    let r = &res::VMS;
    match c {
        VmCmd::List(a) => ctx.list(r, &a).await,
        VmCmd::Show { vm } => ctx.show(r, &vm).await,
        VmCmd::Create(a) => {
            let ids = VmCreateIds {
                template: match &a.template {
                    Some(t) => Some(ctx.resolve_id(&res::TEMPLATES, t).await?),
                    None => None,
                },
                networks: resolve_all(ctx, &res::NETWORKS, &a.network).await?,
                security_groups: resolve_all(ctx, &res::SECURITY_GROUPS, &a.security_groups)
                    .await?,
                volumes: resolve_all(ctx, &res::VOLUMES, &a.volume).await?,
                ssh_keys: a
                    .ssh_key
                    .iter()
                    .map(|k| ssh_key(k))
                    .collect::<Result<_, _>>()?,
                user_data: match &a.user_data {
                    Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                        ApiError::Usage(format!("cannot read --user-data {}: {e}", p.display()))
                    })?),
                    None => None,
                },
            };
            let body = vm_create_body(&a, &ctx.api.project, &ids)?;
            ctx.create(r, body).await
        }
        VmCmd::Start { vm } => vm_action(ctx, &vm, "start", "start requested").await,
        VmCmd::Stop { vm } => vm_action(ctx, &vm, "stop", "stop requested").await,
        VmCmd::Kill { vm } => vm_action(ctx, &vm, "kill", "kill requested").await,
        VmCmd::Restart { vm } => vm_action(ctx, &vm, "restart", "restart requested").await,
        VmCmd::Delete { vm } => ctx.delete(r, &vm, &[]).await,
        VmCmd::Console(a) => crate::console::run(&ctx.api, &a.vm).await,
        VmCmd::Resize(a) => {
            let memory = a.memory.as_deref().map(size).transpose()?;
            let v = update_vm_spec(&ctx.api, &a.vm, |spec| {
                resize_spec(spec, a.vcpus, memory);
                Ok(())
            })
            .await?;
            let s = |k: &str| output::lookup(&v, k).map(output::text).unwrap_or_default();
            let memory = output::lookup(&v, "spec.memory_bytes")
                .and_then(Value::as_u64)
                .map(output::human_bytes)
                .unwrap_or_default();
            let what = format!(
                "vm {}: resized to {} vCPUs, {memory} memory",
                a.vm,
                s("spec.vcpus")
            );
            ctx.done(&v, &with_conditions(what, &v))
        }
        VmCmd::Attach(a) => vm_devices(ctx, &a, DeviceChange::Attach).await,
        VmCmd::Detach(a) => vm_devices(ctx, &a, DeviceChange::Detach).await,
    }
}

/// Reads a VM, lets `edit` change its spec, and writes the spec back only while the VM is still
/// at the revision that was read (`If-Match`): a change someone made in between is refused with
/// a message that says so, never overwritten.
pub async fn update_vm_spec(
    api: &ApiClient,
    vm: &str,
    edit: impl FnOnce(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    let q = vec![("project", api.project.clone())];
    let current = api.get(&item_path(&res::VMS, vm), &q).await?;
    let field = |k: &str| {
        current
            .get(k)
            .cloned()
            .ok_or_else(|| ApiError::BadResponse(format!("vm {vm}: the response has no {k}")))
    };
    let revision = field("revision")?.as_u64().unwrap_or_default();
    let id = field("id")?.as_str().unwrap_or(vm).to_string();
    let mut spec = field("spec")?;
    edit(&mut spec)?;
    // By id from here on: a rename in between must not make the write hit another VM.
    api.put_at_revision(
        &item_path(&res::VMS, &id),
        &q,
        &json!({"spec": spec}),
        revision,
    )
    .await
    .map_err(|e| stale_revision(e, vm, revision))
}

/// A refused `If-Match` of a read-modify-write, told as what happened.
fn stale_revision(e: ApiError, vm: &str, read: u64) -> ApiError {
    match e {
        ApiError::Api {
            status: 412,
            code,
            details,
            ..
        } => {
            let now = details
                .get("actual")
                .and_then(Value::as_u64)
                .map(|r| format!(", it is now at revision {r}"))
                .unwrap_or_default();
            ApiError::Api {
                status: 412,
                code,
                message: format!(
                    "vm {vm} was changed by someone else after it was read at revision {read}{now}; nothing was changed, run the command again"
                ),
                details: Value::Null,
            }
        }
        other => other,
    }
}

/// Sets the vCPUs and/or memory in a VM spec.
pub fn resize_spec(spec: &mut Value, vcpus: Option<u32>, memory_bytes: Option<u64>) {
    if let Some(n) = vcpus {
        spec["vcpus"] = json!(n);
    }
    if let Some(m) = memory_bytes {
        spec["memory_bytes"] = json!(m);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChange {
    Attach,
    Detach,
}

/// Adds `id` to or removes it from the id list `field` (`volume_ids`, `nic_ids`) of the spec of
/// `vm`; `what` names the device (`volume data`) in the error when it is already (or not) there.
pub fn change_device(
    spec: &mut Value,
    field: &str,
    id: &str,
    change: DeviceChange,
    what: &str,
    vm: &str,
) -> Result<(), ApiError> {
    let mut ids: Vec<Value> = spec
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pos = ids.iter().position(|v| v.as_str() == Some(id));
    match (change, pos) {
        (DeviceChange::Attach, None) => ids.push(json!(id)),
        (DeviceChange::Detach, Some(p)) => {
            ids.remove(p);
        }
        (DeviceChange::Attach, Some(_)) => {
            return Err(ApiError::Conflict(format!(
                "{what} is already attached to vm {vm}"
            )))
        }
        (DeviceChange::Detach, None) => {
            return Err(ApiError::Conflict(format!(
                "{what} is not attached to vm {vm}"
            )))
        }
    }
    spec[field] = Value::Array(ids);
    Ok(())
}

async fn vm_devices(ctx: &Ctx, a: &VmDeviceArgs, change: DeviceChange) -> Result<(), ApiError> {
    let mut devices = Vec::new();
    for (r, field, names) in [
        (&res::VOLUMES, "volume_ids", &a.volumes),
        (&res::NICS, "nic_ids", &a.nics),
    ] {
        for n in names {
            devices.push((
                field,
                ctx.resolve_id(r, n).await?,
                format!("{} {n}", r.name),
            ));
        }
    }
    let vm = &a.vm;
    let v = update_vm_spec(&ctx.api, vm, |spec| {
        for (field, id, what) in &devices {
            change_device(spec, field, id, change, what, vm)?;
        }
        Ok(())
    })
    .await?;
    let verb = match change {
        DeviceChange::Attach => "attached",
        DeviceChange::Detach => "detached",
    };
    let list = devices
        .iter()
        .map(|(_, _, what)| what.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    ctx.done(&v, &with_conditions(format!("vm {vm}: {list} {verb}"), &v))
}

/// `what`, followed by one line per condition of the object that holds, e.g.
/// `restart required: memory shrinks at the next boot`.
pub fn with_conditions(what: String, v: &Value) -> String {
    let mut s = what;
    for c in output::lookup(v, "status.conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("true"))
    {
        let kind = c.get("type").map(output::text).unwrap_or_default();
        let message = c.get("message").map(output::text).unwrap_or_default();
        s.push_str(&format!("\n{}: {message}", kind.replace('_', " ")));
    }
    s
}

async fn vm_action(ctx: &Ctx, vm: &str, action: &str, what: &str) -> Result<(), ApiError> {
    let path = format!("{}/{action}", item_path(&res::VMS, vm));
    let v = ctx.api.post(&path, &ctx.pq(), &json!({})).await?;
    ctx.done(&v, &format!("vm {vm}: {what}"))
}

// ------------------------------------------------------------------------------ streams

/// One line for an event in table mode.
pub fn event_line(ev: &Value) -> String {
    let s = |k: &str| output::lookup(ev, k).map(output::text).unwrap_or_default();
    let name = s("object.name");
    format!(
        "{:>6}  {:<24} {:<10} {} {}",
        s("revision"),
        s("type"),
        s("project"),
        name,
        s("id")
    )
    .trim_end()
    .to_string()
}

fn print_stream_item(ctx: &Ctx, v: &Value, line: impl Fn(&Value) -> String) {
    let text = match ctx.format {
        Format::Json => serde_json::to_string(v).unwrap_or_default() + "\n",
        Format::Yaml => format!("---\n{}", serde_yaml::to_string(v).unwrap_or_default()),
        Format::Table => line(v) + "\n",
    };
    ctx.print(&text);
}

async fn events(ctx: &Ctx, a: EventsArgs) -> Result<(), ApiError> {
    let mut q = Vec::new();
    if !a.all_projects {
        q.push(("project", ctx.api.project.clone()));
    }
    if let Some(t) = &a.event_type {
        q.push(("type", t.clone()));
    }
    // Without --follow: replay history (from --from-revision, else from the start) up to the
    // revision the API has applied now, then stop. With --follow: the live feed (after
    // --from-revision when given).
    let head = if a.follow {
        None
    } else {
        let page = ctx
            .api
            .get(res::PROJECTS.path, &[("limit", "1".into())])
            .await?;
        Some(page.get("revision").and_then(Value::as_u64).unwrap_or(0))
    };
    let start = if a.follow {
        a.from_revision
    } else {
        Some(a.from_revision.unwrap_or(0))
    };
    if let (Some(h), Some(l)) = (head, start) {
        if h <= l {
            return Ok(());
        }
    }
    let mut cursor = crate::client::EventCursor::after(start);
    if ctx.format == Format::Table {
        ctx.print(&format!(
            "{:>6}  {:<24} {:<10} {} {}\n",
            "REV", "TYPE", "PROJECT", "NAME", "ID"
        ));
    }
    loop {
        let stream = ctx.api.sse("/v1/events", &q, cursor.resume_after()).await?;
        futures::pin_mut!(stream);
        loop {
            let next = match head {
                // The backlog arrives at once; when the filtered stream goes quiet, the events up
                // to `head` that match have all been shown (the head revision itself may carry no
                // matching event, so waiting for it alone could hang).
                Some(_) => {
                    match tokio::time::timeout(std::time::Duration::from_secs(2), stream.next())
                        .await
                    {
                        Ok(n) => n,
                        Err(_) => return Ok(()),
                    }
                }
                None => stream.next().await,
            };
            let Some(item) = next else { break };
            let ev = item?;
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let rev = v.get("revision").and_then(Value::as_u64);
            if let (Some(h), Some(r)) = (head, rev) {
                if r > h {
                    return Ok(());
                }
            }
            if cursor.accept(&v) {
                print_stream_item(ctx, &v, event_line);
            }
        }
        if head.is_some() {
            return Ok(());
        }
    }
}

/// A time for `--since/--until`: RFC 3339, or an age like `30s`, `10m`, `2h`, `7d` before `now`.
pub fn time_ns(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| ApiError::Usage(format!("time {s:?} is out of range")));
    }
    let bad = || {
        ApiError::Usage(format!("invalid time {s:?} (use RFC 3339 like 2026-01-02T15:04:05Z, or an age like 10m, 2h, 7d)"))
    };
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    (now - chrono::Duration::seconds(secs))
        .timestamp_nanos_opt()
        .ok_or_else(bad)
}

pub fn log_line(v: &Value) -> String {
    let s = |k: &str| output::lookup(v, k).map(output::text).unwrap_or_default();
    let time = ["timestamp", "time"]
        .iter()
        .map(|k| s(k))
        .find(|t| !t.is_empty())
        .unwrap_or_else(|| {
            output::lookup(v, "timestamp_ns")
                .and_then(Value::as_i64)
                .and_then(|ns| {
                    chrono::DateTime::from_timestamp(
                        ns / 1_000_000_000,
                        (ns % 1_000_000_000) as u32,
                    )
                })
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default()
        });
    // A log line stands alone (no table to compare ids against): whole ids, greppable.
    let objs = output::lookup(v, "object_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(output::text).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let objs = if objs.is_empty() {
        String::new()
    } else {
        format!(" [{objs}]")
    };
    format!(
        "{time} {:<5} {:<12} {}{objs}",
        s("level").to_uppercase(),
        s("component"),
        s("message")
    )
}

async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<(), ApiError> {
    let mut q: Vec<(&str, String)> = Vec::new();
    let since = a
        .since
        .as_deref()
        .map(|s| time_ns(s, chrono::Utc::now()))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| time_ns(s, chrono::Utc::now()))
        .transpose()?;
    for (k, v) in [
        ("object_id", a.object.clone()),
        ("component", a.component.clone()),
        ("level", a.level.clone()),
        ("since_ns", since.map(|n| n.to_string())),
        ("until_ns", until.map(|n| n.to_string())),
        ("text", a.text.clone()),
        ("limit", a.limit.map(|l| l.to_string())),
        ("order", a.follow.then(|| "oldest".to_string())),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    if !a.follow {
        let v = ctx.api.get("/v1/logs", &q).await?;
        let items = match &v {
            Value::Array(a) => a.clone(),
            other => other
                .get("items")
                .or_else(|| other.get("entries"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        };
        return match ctx.format {
            Format::Table => {
                let text: String = items.iter().map(|i| log_line(i) + "\n").collect();
                ctx.print(&text);
                Ok(())
            }
            _ => ctx.print_list(&items, res::LOGS),
        };
    }
    q.push(("follow", "true".into()));
    let stream = ctx.api.stream_raw("/v1/logs", &q).await?;
    futures::pin_mut!(stream);
    let mut sse = crate::client::SseParser::default();
    let mut lines = Vec::<u8>::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut values = Vec::new();
        if chunk.is_sse {
            for ev in sse.push(&chunk.data) {
                if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                    values.push(v);
                }
            }
        } else {
            // Newline-delimited JSON.
            lines.extend_from_slice(&chunk.data);
            while let Some(pos) = lines.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = lines.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    values.push(v);
                }
            }
        }
        for v in values {
            // A page-shaped chunk carries several entries.
            match v.get("items").and_then(Value::as_array) {
                Some(items) => items
                    .iter()
                    .for_each(|i| print_stream_item(ctx, i, log_line)),
                None => print_stream_item(ctx, &v, log_line),
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------ cluster

async fn cluster(ctx: &Ctx, c: ClusterCmd) -> Result<(), ApiError> {
    match c {
        ClusterCmd::Members => {
            let v = ctx.api.get("/v1/controlplane", &[]).await?;
            if ctx.format != Format::Table {
                return ctx.print_object(&v);
            }
            let members = v
                .get("members")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ctx.print_list(&members, res::MEMBERS)?;
            let s = |k: &str| v.get(k).map(output::text).unwrap_or_default();
            ctx.print(&format!(
                "\nleader {}  term {}  last log index {}  applied index {}\n",
                s("leader_id"),
                s("term"),
                s("last_log_index"),
                s("applied_index")
            ));
            Ok(())
        }
        ClusterCmd::JoinToken { ttl } => {
            let v = ctx
                .api
                .post(
                    "/v1/controlplane/join-tokens",
                    &[],
                    &json!({"ttl_seconds": ttl}),
                )
                .await?;
            match ctx.format {
                Format::Table => {
                    let s = |k: &str| v.get(k).map(output::text).unwrap_or_default();
                    ctx.print(&format!(
                        "{}\n(single use, expires {}; on the new member: mvirt-api --join {} --token <token>)\n",
                        s("token"),
                        v.get("expires_at_ms")
                            .and_then(Value::as_i64)
                            .and_then(chrono::DateTime::from_timestamp_millis)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default(),
                        ctx.api.base
                    ));
                    Ok(())
                }
                _ => ctx.print_object(&v),
            }
        }
        ClusterCmd::Remove { member_id } => {
            let v = ctx
                .api
                .delete(
                    &format!("/v1/controlplane/members/{}", encode(&member_id)),
                    &[],
                )
                .await?;
            ctx.done(&v, &format!("member {member_id} removed"))
        }
    }
}

async fn token(ctx: &Ctx, c: TokenCmd) -> Result<(), ApiError> {
    let r = &res::TOKENS;
    match c {
        TokenCmd::List => ctx.list(r, &ListArgs::default()).await,
        TokenCmd::Create { name, role } => {
            let v = ctx
                .api
                .create(r.path, &json!({"name": name, "role": role}))
                .await?;
            match ctx.format {
                Format::Table => {
                    let s = |k: &str| v.get(k).map(output::text).unwrap_or_default();
                    ctx.print(&format!(
                        "{}\n(token {} created; the secret is shown only now)\n",
                        s("token"),
                        s("id")
                    ));
                    Ok(())
                }
                _ => ctx.print_object(&v),
            }
        }
        TokenCmd::Delete { id } => ctx.delete(r, &id, &[]).await,
    }
}

async fn version(ctx: &Ctx) -> Result<(), ApiError> {
    let client = env!("CARGO_PKG_VERSION");
    let health = ctx.api.get("/v1/health", &[]).await;
    let v = json!({
        "client": {"version": client},
        "api": {"url": ctx.api.base, "health": health.as_ref().ok(), "error": health.as_ref().err().map(|e| e.to_string())},
    });
    match ctx.format {
        Format::Table => {
            let mut s = format!("client: mvirt {client}\napi:    {}\n", ctx.api.base);
            match &health {
                Ok(h) => {
                    let ver = output::lookup(h, "version.version")
                        .or_else(|| h.get("version"))
                        .map(output::text);
                    s.push_str(&format!(
                        "health: {}\n",
                        h.get("status")
                            .map(output::text)
                            .unwrap_or_else(|| "ok".into())
                    ));
                    if let Some(ver) = ver.filter(|v| !v.is_empty()) {
                        s.push_str(&format!("server: {ver}\n"));
                    }
                }
                Err(e) => s.push_str(&format!("health: unreachable ({e})\n")),
            }
            ctx.print(&s);
        }
        _ => ctx.print_object(&v)?,
    }
    health.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn vm_create_body_has_root_volume_nics_keys_and_selector() {
        let cli = Cli::try_parse_from([
            "mvirt",
            "vm",
            "create",
            "web",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--template",
            "t",
            "--disk-size",
            "20G",
            "--network",
            "n",
            "--node-selector",
            "zone=a",
            "--stopped",
            "--nested-virtualization",
        ])
        .unwrap();
        let Command::Vm(VmCmd::Create(a)) = cli.command else {
            panic!("parsed wrong command")
        };
        let ids = VmCreateIds {
            template: Some("tid".into()),
            networks: vec!["nid".into()],
            ssh_keys: vec!["ssh-ed25519 AAA".into()],
            ..Default::default()
        };
        let b = vm_create_body(&a, "default", &ids).unwrap();
        assert_eq!(b["spec"]["vcpus"], 2);
        assert_eq!(b["spec"]["memory_bytes"], 1u64 << 30);
        assert_eq!(
            b["spec"]["root_volume"],
            json!({"template_id":"tid","size_bytes":20u64<<30})
        );
        assert_eq!(b["spec"]["network_interfaces"][0]["network_id"], "nid");
        assert_eq!(b["spec"]["node_selector"], "zone=a");
        assert_eq!(b["spec"]["desired_state"], "stopped");
        assert_eq!(b["spec"]["nested_virtualization"], true);
        assert_eq!(b["spec"]["hugepages"], false);
        assert_eq!(b["spec"]["ssh_authorized_keys"][0], "ssh-ed25519 AAA");
        assert_eq!(b["spec"]["hostname"], "web");
    }

    #[test]
    fn labels_and_ports_parse() {
        let m = parse_labels(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(m.get("b").map(String::as_str), Some("x=y"));
        assert!(parse_labels(&["nope".into()]).is_err());
        assert_eq!(parse_port_range("443").unwrap(), (443, 443));
        assert_eq!(parse_port_range("8000-8100").unwrap(), (8000, 8100));
        assert!(parse_port_range("9-1").is_err());
        assert!(parse_port_range("x").is_err());
    }

    #[test]
    fn routes_are_derived_from_placed_nics() {
        let nics = vec![
            json!({"id":"n1","name":"eth0","vm_id":"v1","spec":{"network_id":"net","ipv4_address":"10.0.0.5","ipv6_address":"fd00::5"}}),
            json!({"id":"n2","name":"loose","vm_id":null,"spec":{"network_id":"net","ipv4_address":"10.0.0.6"}}),
        ];
        let vms = vec![json!({"id":"v1","name":"web","node_id":"node-a"})];
        let nets = vec![json!({"id":"net","name":"lan"})];
        let rows = derive_routes(&nics, &vms, &nets);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            json!({"network":"lan","destination":"10.0.0.5/32","nic":"eth0","vm":"web","node":"node-a"})
        );
        assert_eq!(rows[1]["destination"], "fd00::5/128");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("web-1"), "web-1");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn log_lines_accept_nanosecond_timestamps() {
        let l = log_line(
            &json!({"timestamp_ns": 1_700_000_000_000_000_000i64, "level":"audit","component":"api","message":"vm created","object_ids":["0123456789"]}),
        );
        assert_eq!(
            l,
            "2023-11-14T22:13:20.000Z AUDIT api          vm created [0123456789]"
        );
    }

    #[test]
    fn every_command_has_help_and_the_tree_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
