//! Clients that trust an mvirt cluster's CA, for tests that talk to a real mvirt-api over TLS.
//!
//! mvirt-api serves TLS with certificates from the cluster CA it creates at bootstrap
//! (`<data-dir>/tls/ca.pem`). Tests verify against exactly that CA, as a pinned client would:
//! never a blanket "accept any certificate".

use std::path::{Path, PathBuf};

/// The cluster CA (PEM) of a member or node data directory: `<data_dir>/tls/ca.pem`.
pub fn read_ca(data_dir: &Path) -> String {
    let path = data_dir.join("tls").join("ca.pem");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the cluster CA {}: {e}", path.display()))
}

/// A reqwest client that accepts only servers whose chain ends in `ca_pem` (no public roots).
pub fn reqwest_client(ca_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("the CA is PEM");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .expect("build the TLS HTTP client")
}

/// A browser profile home whose NSS database (`$HOME/.pki/nssdb`, which Chromium on Linux
/// reads) trusts `ca_pem` as a root for TLS servers, made with NSS's `certutil`
/// (libnss3-tools, installed by scripts/setup.sh). Start the browser with `HOME=<returned
/// dir>`.
pub fn browser_home_trusting(dir: &Path, ca_pem: &str) -> PathBuf {
    let home = dir.join("browser-home");
    let db = home.join(".pki").join("nssdb");
    std::fs::create_dir_all(&db).expect("create the NSS db directory");
    let ca_file = dir.join("cluster-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write the CA file");
    let certutil = |args: &[&str]| {
        let out = std::process::Command::new("certutil")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run certutil ({e}): run scripts/setup.sh (libnss3-tools)")
            });
        assert!(
            out.status.success(),
            "certutil {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let db_arg = format!("sql:{}", db.display());
    certutil(&["-N", "-d", &db_arg, "--empty-password"]);
    certutil(&[
        "-A",
        "-d",
        &db_arg,
        "-n",
        "mvirt cluster CA",
        "-t",
        "C,,",
        "-i",
        ca_file.to_str().expect("UTF-8 path"),
    ]);
    home
}
