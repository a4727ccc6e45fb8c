//! The context every command runs in (the API client built from config, environment and flags,
//! and the output format) and the shapes the nouns share: list, show, create, delete, a POST or
//! DELETE below an object, a list inside an object, name-to-id resolution and printing. Noun
//! modules use this; it uses no noun module.

use std::io::Write;

use serde_json::Value;

use crate::cli::{GlobalArgs, ListArgs};
use crate::client::{ApiClient, ApiError};
use crate::config::{self, ConfigFile, Overrides};
use crate::output::{self, Format};
use crate::resources::Resource;
use crate::trust::Trust;

/// The config file: `--config`/`MVIRT_CONFIG`, else the default path.
pub fn config_path(g: &GlobalArgs) -> Result<std::path::PathBuf, ApiError> {
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
        project: g.project(),
        ca_file: g.ca_file.clone(),
    };
    let r = config::resolve(&file, &o)?;
    let trust = trust_of(r.ca.as_ref())?;
    let mut api = ApiClient::with_trust(&r.url, r.token, &r.project, trust)?;
    api.if_match = g.if_match;
    api.show_trace = g.show_trace;
    Ok(api)
}

/// The CA an https:// API is verified against, from `--ca-file` or the remote's pin.
pub fn trust_of(ca: Option<&config::CaSource>) -> Result<Option<Trust>, ApiError> {
    Ok(match ca {
        None => None,
        Some(config::CaSource::File(path)) => Some(Trust::from_file(path)?),
        Some(config::CaSource::Pinned { remote, pem }) => Some(Trust::from_pem(
            pem,
            &format!("pinned for remote {remote:?}"),
        )?),
    })
}

/// What a command needs: the API client (URL, token, project, `--if-match`) and how to print.
pub struct Ctx {
    pub api: ApiClient,
    pub format: Format,
}

impl Ctx {
    pub fn print(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`mvirt vm list | head`) is not an error worth reporting.
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }

    pub fn print_list(&self, items: &[Value], columns: &[output::Column]) -> Result<(), ApiError> {
        let s = output::render_list(items, columns, self.format).map_err(ApiError::Other)?;
        self.print(&s);
        Ok(())
    }

    pub fn print_object(&self, v: &Value) -> Result<(), ApiError> {
        let s = output::render_object(v, self.format).map_err(ApiError::Other)?;
        self.print(&s);
        Ok(())
    }

    /// One item of a stream (`events`, `logs --follow`): a JSON line, a YAML document, or
    /// `line(v)` in table mode.
    pub fn print_stream_item(&self, v: &Value, line: impl Fn(&Value) -> String) {
        let text = match self.format {
            Format::Json => serde_json::to_string(v).unwrap_or_default() + "\n",
            Format::Yaml => format!("---\n{}", serde_yaml::to_string(v).unwrap_or_default()),
            Format::Table => line(v) + "\n",
        };
        self.print(&text);
    }

    /// A response shown as the object in `-o json|yaml` and as `text(v)` in table mode.
    pub fn print_text_or_object(
        &self,
        v: &Value,
        text: impl FnOnce(&Value) -> String,
    ) -> Result<(), ApiError> {
        match self.format {
            Format::Table => {
                self.print(&text(v));
                Ok(())
            }
            _ => self.print_object(v),
        }
    }

    /// Result of a mutation: the object in `-o json|yaml`, a one-line confirmation otherwise.
    pub fn done(&self, v: &Value, what: &str) -> Result<(), ApiError> {
        match self.format {
            Format::Table => {
                self.print(&format!("{what}\n"));
                Ok(())
            }
            _ => self.print_object(v),
        }
    }

    pub fn pq(&self) -> Vec<(&'static str, String)> {
        vec![("project", self.api.project.clone())]
    }

    pub fn list_query(&self, r: &Resource, a: &ListArgs) -> Vec<(&'static str, String)> {
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

    pub async fn list(&self, r: &Resource, a: &ListArgs) -> Result<(), ApiError> {
        let items = self.api.list_all(r.path, &self.list_query(r, a)).await?;
        self.print_list(&items, r.columns)
    }

    pub async fn get(&self, r: &Resource, id: &str) -> Result<Value, ApiError> {
        self.api.get(&item_path(r, id), &self.pq()).await
    }

    pub async fn show(&self, r: &Resource, id: &str) -> Result<(), ApiError> {
        let v = self.get(r, id).await?;
        self.print_object(&v)
    }

    /// The id of an object named by id or name.
    pub async fn resolve_id(&self, r: &Resource, id_or_name: &str) -> Result<String, ApiError> {
        let v = self.get(r, id_or_name).await?;
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::BadResponse(format!("{} {id_or_name}: the response has no id", r.name))
            })
    }

    /// The ids of objects named by id or name.
    pub async fn resolve_all(
        &self,
        r: &Resource,
        names: &[String],
    ) -> Result<Vec<String>, ApiError> {
        let mut ids = Vec::new();
        for n in names {
            ids.push(self.resolve_id(r, n).await?);
        }
        Ok(ids)
    }

    /// A POST to `sub` below an object (`resize`, `snapshots`, `rules`, …) in the project.
    pub async fn post_below(
        &self,
        r: &Resource,
        id: &str,
        sub: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let path = format!("{}/{sub}", item_path(r, id));
        self.api.post(&path, &self.pq(), body).await
    }

    /// A DELETE of `sub` below an object (`snapshots/{id}`, `rules/{id}`) in the project.
    pub async fn delete_below(&self, r: &Resource, id: &str, sub: &str) -> Result<Value, ApiError> {
        let path = format!("{}/{sub}", item_path(r, id));
        self.api.delete(&path, &self.pq()).await
    }

    /// The list an object holds at `path` (a security group's rules, a volume's snapshots) as a
    /// table.
    pub async fn list_within(
        &self,
        r: &Resource,
        id: &str,
        path: &str,
        columns: &[output::Column],
    ) -> Result<(), ApiError> {
        let v = self.get(r, id).await?;
        let items = output::lookup(&v, path)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        self.print_list(&items, columns)
    }

    pub async fn create(&self, r: &Resource, body: Value) -> Result<(), ApiError> {
        let v = self.api.create(r.path, &body).await?;
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
        self.done(&v, &format!("{} {name} created ({id})", r.name))
    }

    pub async fn delete(
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

/// An open WebSocket to the API (VM console, pod exec).
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `http(s)://host:port` + `path` + `query` as a `ws(s)://` URL (query values percent-encoded).
pub fn ws_url(base: &str, path: &str, query: &[(&str, String)]) -> String {
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if q.is_empty() {
        format!("{ws}{path}")
    } else {
        format!("{ws}{path}?{}", q.join("&"))
    }
}

/// Opens a WebSocket to `path` on the API, authenticated with the API token (Bearer header);
/// an HTTP error answer to the upgrade becomes the API's error (message, code, exit code).
pub async fn websocket(
    api: &ApiClient,
    path: &str,
    query: &[(&str, String)],
) -> Result<WebSocket, ApiError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = ws_url(&api.base, path, query);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ApiError::Usage(format!("bad WebSocket URL {url}: {e}")))?;
    if let Some(t) = api.token() {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| ApiError::Usage("the token has invalid characters".into()))?;
        req.headers_mut().insert("authorization", v);
    }
    match tokio_tungstenite::connect_async_tls_with_config(req, None, false, api.ws_connector())
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(crate::client::error_from_body(status, &body))
        }
        Err(e) => Err(api.connect_error(&url, e.to_string()).await),
    }
}

/// Sets each `key` of `object` whose value is given (optional flags of a request body).
pub fn set_given(
    object: &mut Value,
    fields: impl IntoIterator<Item = (&'static str, Option<String>)>,
) {
    for (k, v) in fields {
        if let Some(v) = v {
            object[k] = Value::String(v);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("web-1"), "web-1");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn ws_urls_switch_scheme_and_encode_repeated_query_values() {
        assert_eq!(
            ws_url("http://h:8080", "/v1/pods/p/exec", &[]),
            "ws://h:8080/v1/pods/p/exec"
        );
        assert_eq!(
            ws_url(
                "https://h",
                "/v1/pods/p/exec",
                &[
                    ("command", "sh".into()),
                    ("command", "-c".into()),
                    ("command", "echo a;b".into())
                ]
            ),
            "wss://h/v1/pods/p/exec?command=sh&command=-c&command=echo%20a%3Bb"
        );
    }
}
