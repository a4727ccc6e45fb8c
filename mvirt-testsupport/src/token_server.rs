//! A real Docker registry token server (the "token authentication" protocol of distribution)
//! on 127.0.0.1, for registries started with [`crate::registry::Registry::start_with_token_auth`].
//!
//! distribution ships no token server, so the tests run this one. It answers
//! `GET /token?service=<service>&scope=repository:<name>:<actions>` (the scope may repeat or be
//! missing): HTTP basic credentials are checked against its users (wrong or unknown → `401` with
//! a distribution-style JSON error; none → an anonymous token), the requested actions are
//! intersected with what the user is granted (an anonymous caller is granted nothing, as on
//! Docker Hub for a private repository), and the answer is
//! `{"token": <JWT>, "access_token": <JWT>, "expires_in": 300, "issued_at": …}`.
//!
//! The JWT is ES256-signed (`ring`) with a P-256 key generated at start; its self-signed
//! certificate (`rcgen`) is written as the registry's `rootcertbundle` and sent in the token's
//! `x5c` header, so the registry verifies the signature against the bundle and checks `iss`,
//! `aud`, `nbf`/`exp` and `access` itself. Every issued token is recorded ([`TokenServer::issued`])
//! so tests can prove who was authenticated for which scope.
//!
//! The server runs on its own thread with its own Tokio runtime (usable from sync and async
//! tests) and stops on drop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `service` (JWT `aud`) the registry is configured with.
pub const SERVICE: &str = "mvirt-test-registry";
/// The `issuer` (JWT `iss`) the registry is configured with.
pub const ISSUER: &str = "mvirt-test-token-server";
/// Lifetime of an issued token.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// A user of the token server and the actions (`pull`, `push`) it is granted on every
/// repository.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub name: String,
    pub password: String,
    pub actions: Vec<String>,
}

impl TokenUser {
    pub fn new(name: &str, password: &str, actions: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            password: password.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// One answered token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The authenticated user; `None` for an anonymous request.
    pub user: Option<String>,
    /// The requested scopes, as sent.
    pub scopes: Vec<String>,
    /// Granted access: `(repository, actions)`.
    pub granted: Vec<(String, Vec<String>)>,
    pub token: String,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

struct State {
    signer: Signer,
    users: HashMap<String, TokenUser>,
    issued: Mutex<Vec<IssuedToken>>,
    refused: Mutex<u32>,
}

/// A running token server, stopped on drop.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

impl Signer {
    fn generate() -> Self {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate P-256 signing key");
        let mut params = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
            .expect("token certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ISSUER);
        let cert = params
            .self_signed(&key_pair)
            .expect("self-sign the token certificate");
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .expect("load the signing key into ring");
        Self {
            key,
            cert_der: cert.der().to_vec(),
            rng,
        }
    }

    fn cert_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// A compact JWS (ES256) over `claims`, with the certificate in `x5c`.
    fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign token");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }
}

impl TokenServer {
    /// Starts a token server on a free loopback port with `users`.
    pub fn start(users: Vec<TokenUser>) -> Self {
        let signer = Signer::generate();
        let cert_pem = signer.cert_pem();
        let state = Arc::new(State {
            signer,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            issued: Mutex::new(Vec::new()),
            refused: Mutex::new(0),
        });
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token server on loopback");
        listener
            .set_nonblocking(true)
            .expect("non-blocking token listener");
        let addr = listener.local_addr().expect("token server address");
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("token listener into tokio");
                    loop {
                        let (stream, _) = tokio::select! {
                            _ = &mut stop => break,
                            accepted = listener.accept() => match accepted {
                                Ok(a) => a,
                                Err(_) => continue,
                            },
                        };
                        let state = served.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(handle(&state, req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            })
            .expect("spawn token server thread");
        Self {
            addr,
            cert_pem,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The realm URL for the registry's config: `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the signing certificate (the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the certificate bundle to `path`.
    pub fn write_cert_bundle(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).expect("write token root cert bundle");
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.state.issued.lock().expect("issued lock").clone()
    }

    /// How many requests were refused for bad credentials.
    pub fn refused(&self) -> u32 {
        *self.state.refused.lock().expect("refused lock")
    }

    /// Issues a token for `user` (checked like an HTTP request) and `scopes` directly, as a
    /// caller that talks to the token server itself would get it (e.g. to hand a pre-fetched
    /// bearer token to the code under test).
    pub fn token_for(&self, user: &str, password: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        match issue(&self.state, Some((user, password)), SERVICE, &scopes) {
            Ok(issued) => issued.token,
            Err(reason) => panic!("token server refused {user}: {reason}"),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `user:password` from a `Basic` authorization header.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_reply(
        status,
        serde_json::json!({"errors": [{"code": code, "message": message}]}),
    )
}

fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET || req.uri().path() != "/token" {
        return error_reply(StatusCode::NOT_FOUND, "NOT_FOUND", "only GET /token");
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => service = Some(percent_decode(v)),
            // A scope parameter may hold several space-separated scopes.
            "scope" => scopes.extend(percent_decode(v).split(' ').map(str::to_string)),
            _ => {}
        }
    }
    let Some(service) = service else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "missing service parameter",
        );
    };
    let credentials = match req.headers().get(hyper::header::AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(basic_credentials) {
            Some(c) => Some(c),
            None => {
                return error_reply(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "only HTTP basic credentials are accepted",
                )
            }
        },
    };
    let credentials = credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    match issue(state, credentials, &service, &scopes) {
        Ok(issued) => json_reply(
            StatusCode::OK,
            serde_json::json!({
                "token": issued.token,
                "access_token": issued.token,
                "expires_in": TOKEN_LIFETIME_SECS,
                "issued_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
        ),
        Err(IssueError::UnknownService) => error_reply(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("unknown service {service:?}"),
        ),
        Err(IssueError::MalformedScope(scope)) => error_reply(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("malformed scope {scope:?}"),
        ),
        Err(IssueError::WrongCredentials) => error_reply(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid username or password",
        ),
    }
}

#[derive(Debug)]
enum IssueError {
    UnknownService,
    MalformedScope(String),
    WrongCredentials,
}

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueError::UnknownService => write!(f, "unknown service"),
            IssueError::MalformedScope(s) => write!(f, "malformed scope {s:?}"),
            IssueError::WrongCredentials => write!(f, "invalid username or password"),
        }
    }
}

fn issue(
    state: &State,
    credentials: Option<(&str, &str)>,
    service: &str,
    scopes: &[String],
) -> Result<IssuedToken, IssueError> {
    if service != SERVICE {
        return Err(IssueError::UnknownService);
    }
    let user = match credentials {
        None => None,
        Some((name, password)) => match state.users.get(name) {
            Some(u) if u.password == password => Some(u),
            _ => {
                *state.refused.lock().expect("refused lock") += 1;
                return Err(IssueError::WrongCredentials);
            }
        },
    };
    let mut granted: Vec<(String, Vec<String>)> = Vec::new();
    for scope in scopes.iter().filter(|s| !s.is_empty()) {
        // repository:<name>:<action>[,<action>]; the name itself may contain ':' only in the
        // (unused here) `repository(plugin)` form, so split from both ends.
        let (kind, rest) = scope
            .split_once(':')
            .ok_or_else(|| IssueError::MalformedScope(scope.clone()))?;
        let (name, actions) = rest
            .rsplit_once(':')
            .ok_or_else(|| IssueError::MalformedScope(scope.clone()))?;
        if kind != "repository" || name.is_empty() {
            return Err(IssueError::MalformedScope(scope.clone()));
        }
        let allowed: Vec<String> = actions
            .split(',')
            .filter(|a| user.is_some_and(|u| u.actions.iter().any(|g| g == a)))
            .map(str::to_string)
            .collect();
        granted.push((name.to_string(), allowed));
    }
    let now = now_secs();
    let access: Vec<serde_json::Value> = granted
        .iter()
        .map(|(name, actions)| {
            serde_json::json!({"type": "repository", "name": name, "actions": actions})
        })
        .collect();
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&state.signer.rng, &mut jti).expect("random jti");
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.map(|u| u.name.as_str()).unwrap_or(""),
        "aud": SERVICE,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now - 10,
        "iat": now,
        "jti": hex::encode(jti),
        "access": access,
    });
    let token = state.signer.sign(&claims);
    let issued = IssuedToken {
        user: user.map(|u| u.name.clone()),
        scopes: scopes.to_vec(),
        granted,
        token,
    };
    state
        .issued
        .lock()
        .expect("issued lock")
        .push(issued.clone());
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull%2Cpush"),
            "repository:a/b:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            basic_credentials("Basic dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
