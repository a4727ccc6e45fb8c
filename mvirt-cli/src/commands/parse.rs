//! Parsing of command-line values the API takes in another form: labels, sizes, port ranges,
//! SSH keys and times.

use std::collections::BTreeMap;

use crate::client::ApiError;
use crate::output;

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

pub fn size(s: &str) -> Result<u64, ApiError> {
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
pub fn ssh_key(s: &str) -> Result<String, ApiError> {
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
#[cfg(test)]
mod tests {
    use super::*;

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
}
