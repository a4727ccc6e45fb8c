//! Which cluster CA the CLI trusts for an `https://` API, and trust on first use.
//!
//! mvirt-api serves TLS with a leaf certificate issued by the cluster's own CA (created at
//! bootstrap) and sends the chain `[leaf, CA]`. The CLI never trusts the public web PKI for an
//! mvirt API: it verifies every REST, SSE and WebSocket connection against one pinned CA:
//!
//! 1. `--ca-file` / `MVIRT_CA_FILE` (a PEM file), else
//! 2. the CA stored with the remote in the config file by `mvirt login`.
//!
//! `mvirt login https://...` fetches the CA the server presents ([`presented_ca`]), shows its
//! fingerprint (`sha256:` + hex of SHA-256 over the CA certificate's DER, the same string
//! `mvirt-api` logs at start-up and `mvirt cluster join-token` shows) and pins it once the user
//! confirmed it ([`decide`]: a prompt, `--accept-fingerprint`, or `--yes`). A server that later
//! presents another CA fails every command with both fingerprints named ([`mismatch`]).

use std::path::Path;
use std::sync::Arc;

use crate::client::ApiError;

/// A CA certificate the CLI verifies the API against.
#[derive(Debug, Clone, PartialEq)]
pub struct Trust {
    pub ca_pem: String,
    /// `sha256:<hex>`.
    pub fingerprint: String,
    /// Where it came from, for messages (`remote "lab"`, `--ca-file /x/ca.pem`).
    pub origin: String,
}

impl Trust {
    /// A CA from PEM text; fails when the text holds no certificate.
    pub fn from_pem(ca_pem: &str, origin: &str) -> Result<Trust, ApiError> {
        let fingerprint = mvirt_common::tls::fingerprint_pem(ca_pem)
            .map_err(|e| ApiError::Usage(format!("{origin}: not a PEM CA certificate: {e}")))?;
        Ok(Trust {
            ca_pem: ca_pem.to_string(),
            fingerprint,
            origin: origin.to_string(),
        })
    }

    /// A CA from a PEM file (`--ca-file`, `MVIRT_CA_FILE`).
    pub fn from_file(path: &Path) -> Result<Trust, ApiError> {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            ApiError::Usage(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        Trust::from_pem(&pem, &format!("--ca-file {}", path.display()))
    }

    /// The rustls configuration of an HTTP/1.1 client (REST, SSE, WebSocket) that accepts
    /// only servers whose chain ends in this CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ApiError> {
        let config = mvirt_common::tls::client_config(&self.ca_pem, None).map_err(|e| {
            ApiError::Usage(format!(
                "{}: cannot use the CA certificate: {e}",
                self.origin
            ))
        })?;
        let mut config = (*config).clone();
        // reqwest and tungstenite speak HTTP/1.1 here; never let the server pick h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CA certificate an `https://` API presents (the last certificate of its chain, which
/// signed the leaf), with its fingerprint. Nothing is trusted by fetching it.
pub async fn presented_ca(url: &str) -> Result<Trust, ApiError> {
    let (ca_pem, fingerprint) =
        mvirt_common::tls::fetch_server_ca(url)
            .await
            .map_err(|e| ApiError::Unreachable {
                url: url.to_string(),
                reason: format!("cannot fetch the server's CA certificate: {e}"),
            })?;
    Ok(Trust {
        ca_pem,
        fingerprint,
        origin: format!("the server at {url}"),
    })
}

/// `sha256:ABCD…`, `ab:cd:…` and `abcd…` all name the same fingerprint.
pub fn normalize_fingerprint(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let hex = s.strip_prefix("sha256:").unwrap_or(&s);
    format!("sha256:{}", hex.replace(':', ""))
}

/// What `mvirt login` does with the CA a server presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pin it.
    Accept,
    /// Ask the user (only on a terminal).
    Ask,
    /// Refuse, with the message to show.
    Refuse(String),
}

/// Decides on a presented CA: a fingerprint given with `--accept-fingerprint` must match
/// exactly; a CA pinned for this remote before must match too (`--yes` never replaces a pinned
/// CA: a changed CA may be an attacker); otherwise `--yes` accepts and without it the user is
/// asked.
pub fn decide(
    url: &str,
    presented: &str,
    pinned: Option<&Trust>,
    accept_fingerprint: Option<&str>,
    yes: bool,
) -> Decision {
    let presented = normalize_fingerprint(presented);
    if let Some(accept) = accept_fingerprint {
        let accept = normalize_fingerprint(accept);
        return if accept == presented {
            Decision::Accept
        } else {
            Decision::Refuse(format!(
                "the API at {url} presents a CA with fingerprint {presented}, not the {accept} \
                 given with --accept-fingerprint; nothing was saved"
            ))
        };
    }
    if let Some(pinned) = pinned {
        let old = normalize_fingerprint(&pinned.fingerprint);
        return if old == presented {
            Decision::Accept
        } else {
            Decision::Refuse(changed_ca_message(url, pinned, &presented))
        };
    }
    if yes {
        Decision::Accept
    } else {
        Decision::Ask
    }
}

fn changed_ca_message(url: &str, pinned: &Trust, presented: &str) -> String {
    format!(
        "the API at {url} presents a different cluster CA than the one trusted ({}):\n  \
         trusted:   {}\n  presented: {presented}\n\
         This happens when the cluster was created anew, or when someone is intercepting the \
         connection. If you expected it, check the new fingerprint with the cluster's operator \
         (mvirt-api logs it at start-up) and run `mvirt login {url} --accept-fingerprint \
         {presented}`.",
        pinned.origin, pinned.fingerprint
    )
}

/// After a failed TLS handshake: if the server presents another CA than `trusted`, the message
/// naming both fingerprints; `None` when it presents the trusted CA (the failure is something
/// else, e.g. a certificate without this host name) or cannot be reached.
pub async fn mismatch(url: &str, trusted: &Trust) -> Option<String> {
    let presented = presented_ca(url).await.ok()?;
    let presented = normalize_fingerprint(&presented.fingerprint);
    (presented != normalize_fingerprint(&trusted.fingerprint))
        .then(|| changed_ca_message(url, trusted, &presented))
}

/// Whether an error chain's text is a failed certificate verification (rustls's
/// "invalid peer certificate").
pub fn is_certificate_error(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("invalid peer certificate") || r.contains("unknownissuer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(fp: &str) -> Trust {
        Trust {
            ca_pem: String::new(),
            fingerprint: fp.into(),
            origin: "remote \"lab\"".into(),
        }
    }

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";

    #[test]
    fn fingerprints_compare_in_any_spelling() {
        assert_eq!(normalize_fingerprint("SHA256:AB:CD"), "sha256:abcd");
        assert_eq!(normalize_fingerprint(" abcd "), "sha256:abcd");
    }

    #[test]
    fn a_new_remote_is_asked_about_unless_yes_or_the_fingerprint_is_given() {
        assert_eq!(decide("https://x", A, None, None, false), Decision::Ask);
        assert_eq!(decide("https://x", A, None, None, true), Decision::Accept);
        assert_eq!(
            decide("https://x", A, None, Some("SHA256:AAAA"), false),
            Decision::Accept
        );
        let Decision::Refuse(msg) = decide("https://x", A, None, Some(B), true) else {
            panic!("a different accepted fingerprint must refuse")
        };
        assert!(msg.contains(A) && msg.contains(B), "{msg}");
    }

    #[test]
    fn a_pinned_ca_is_kept_and_a_changed_one_refused_even_with_yes() {
        assert_eq!(
            decide("https://x", A, Some(&pinned(A)), None, false),
            Decision::Accept
        );
        let Decision::Refuse(msg) = decide("https://x", B, Some(&pinned(A)), None, true) else {
            panic!("a changed CA must be refused")
        };
        assert!(msg.contains(A) && msg.contains(B), "{msg}");
        assert!(msg.contains("--accept-fingerprint sha256:bbbb"), "{msg}");
        // Explicitly accepting the new fingerprint replaces the pin.
        assert_eq!(
            decide("https://x", B, Some(&pinned(A)), Some(B), false),
            Decision::Accept
        );
    }

    #[test]
    fn certificate_errors_are_recognised() {
        assert!(is_certificate_error(
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error("Connection refused (os error 111)"));
    }
}
