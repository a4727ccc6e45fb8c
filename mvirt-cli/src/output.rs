//! Rendering API objects for people (aligned tables) and for programs (`-o json`, `-o yaml`).
//!
//! The CLI keeps responses as `serde_json::Value` so it shows whatever the API sends; each
//! resource names its table columns as JSON paths plus a formatter.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON: an object for `show`, an array for `list`.
    Json,
    /// YAML, same shape as JSON.
    Yaml,
}

/// How a cell is turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Plain,
    /// A byte count shown as KiB/MiB/GiB.
    Bytes,
    /// An RFC 3339 timestamp shown as an age (`5m`, `3h`, `2d`).
    Age,
    /// A UUID shortened to the shortest prefix (at least 8 characters) that still tells apart
    /// every id in the table: ids minted in one millisecond share their first 13 characters.
    ShortId,
    /// A map shown as `k=v,k2=v2`.
    Labels,
    /// The length of an array.
    Count,
    /// A status object's `import_bytes_done`/`import_bytes_total` as a percentage.
    Progress,
    /// The types of the conditions that hold (`status` "true"), e.g. `restart_required`.
    Conditions,
    /// A pod's container statuses as `name:state` each, with the exit code of an exited one
    /// and the restart count when there were restarts: `web:running log:exited(1),restarts=2`.
    Containers,
}

/// One table column: header, JSON path (dot separated; `a|b` takes the first non-empty), format.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub path: &'static str,
    pub fmt: Fmt,
}

pub const fn col(header: &'static str, path: &'static str) -> Column {
    Column {
        header,
        path,
        fmt: Fmt::Plain,
    }
}

pub const fn colf(header: &'static str, path: &'static str, fmt: Fmt) -> Column {
    Column { header, path, fmt }
}

/// Looks a dot-separated path up in a JSON value (array indices allowed).
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Plain text for a JSON value: strings unquoted, arrays comma-joined, null empty.
/// The text of the value at a dot-separated `path` (empty when there is none).
pub fn text_at(v: &Value, path: &str) -> String {
    lookup(v, path).map(text).unwrap_or_default()
}

pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Parses sizes like `512M`, `20G`, `1.5GiB`, `1048576` (bytes) into bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 512M, 20G, 1073741824)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use K, M, G or T)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// An age like `42s`, `5m`, `3h`, `12d` from an RFC 3339 time to `now`.
pub fn age(ts: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return ts.to_string();
    };
    let secs = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// How the cells of one table are rendered: the time ages are measured against and the length of
/// the short ids, chosen so that no two ids in the table look alike.
#[derive(Debug, Clone, Copy)]
pub struct Cells {
    pub now: chrono::DateTime<chrono::Utc>,
    pub id_len: usize,
}

/// Shortest short id shown.
pub const MIN_ID_LEN: usize = 8;

impl Cells {
    /// The rendering of `items` in `columns`, with short ids long enough to tell apart every id
    /// in any `ShortId` column of any item.
    pub fn for_items(items: &[Value], columns: &[Column]) -> Self {
        let mut ids: Vec<String> = Vec::new();
        for it in items {
            for c in columns.iter().filter(|c| c.fmt == Fmt::ShortId) {
                for p in c.path.split('|') {
                    match lookup(it, p) {
                        Some(Value::Array(a)) => ids.extend(a.iter().map(text)),
                        Some(Value::String(s)) if !s.is_empty() => ids.push(s.clone()),
                        _ => {}
                    }
                }
            }
        }
        Self {
            now: chrono::Utc::now(),
            id_len: unique_prefix_len(&mut ids),
        }
    }

    pub fn cell(&self, v: &Value, c: &Column) -> String {
        cell(v, c, self.now, self.id_len)
    }
}

/// The shortest prefix length (at least [`MIN_ID_LEN`]) at which the distinct `ids` differ.
pub fn unique_prefix_len(ids: &mut Vec<String>) -> usize {
    ids.sort();
    ids.dedup();
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    ids.windows(2)
        .map(|w| common(&w[0], &w[1]) + 1)
        .fold(MIN_ID_LEN, usize::max)
}

pub fn cell(v: &Value, c: &Column, now: chrono::DateTime<chrono::Utc>, id_len: usize) -> String {
    let found = c
        .path
        .split('|')
        .filter_map(|p| lookup(v, p))
        .find(|x| !x.is_null() && x != &&Value::String(String::new()));
    let Some(x) = found else {
        return String::new();
    };
    match c.fmt {
        Fmt::Plain => text(x),
        Fmt::Bytes => x.as_u64().map(human_bytes).unwrap_or_else(|| text(x)),
        Fmt::Age => x.as_str().map(|s| age(s, now)).unwrap_or_default(),
        Fmt::ShortId => match x {
            Value::Array(a) => a
                .iter()
                .map(|i| short_id(&text(i), id_len))
                .collect::<Vec<_>>()
                .join(","),
            _ => short_id(&text(x), id_len),
        },
        Fmt::Count => x
            .as_array()
            .map(|a| a.len().to_string())
            .unwrap_or_default(),
        Fmt::Progress => progress(x),
        Fmt::Conditions => x
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c.get("status").and_then(Value::as_str) == Some("true"))
                    .filter_map(|c| c.get("type").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        Fmt::Containers => x
            .as_array()
            .map(|a| a.iter().map(container_state).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        Fmt::Labels => match x.as_object() {
            Some(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(","),
            None => text(x),
        },
    }
}

/// One container status as `name:state`, `name:exited(1)`, with `,restarts=N` and `,oom`.
pub fn container_state(c: &Value) -> String {
    let field = |k: &str| c.get(k).map(text).unwrap_or_default();
    let mut s = format!("{}:{}", field("name"), field("state"));
    if field("state") == "exited" {
        if let Some(code) = c.get("exit_code").filter(|v| !v.is_null()) {
            s.push_str(&format!("({})", text(code)));
        }
    }
    if let Some(n) = c
        .get("restart_count")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        s.push_str(&format!(",restarts={n}"));
    }
    if c.get("oom_killed").and_then(Value::as_bool) == Some(true) {
        s.push_str(",oom");
    }
    s
}

/// `42%` from a status with import byte counters; empty when there are none.
pub fn progress(status: &Value) -> String {
    let done = status.get("import_bytes_done").and_then(Value::as_u64);
    let total = status.get("import_bytes_total").and_then(Value::as_u64);
    match (done, total) {
        (Some(d), Some(t)) if t > 0 => format!("{}%", (d.min(t) * 100) / t),
        (Some(d), _) => human_bytes(d),
        _ => String::new(),
    }
}

pub fn short_id(s: &str, len: usize) -> String {
    s.chars().take(len).collect()
}

/// Renders rows as an aligned table with upper-case headers.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let n = cells.len();
        let mut l = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            l.push_str(&c);
            if i + 1 < n {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
    out
}

pub fn render_list(items: &[Value], columns: &[Column], format: Format) -> Result<String, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(items)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::to_string(items).map_err(|e| e.to_string()),
        Format::Table => {
            let cells = Cells::for_items(items, columns);
            let headers: Vec<&str> = columns.iter().map(|c| c.header).collect();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|it| columns.iter().map(|c| cells.cell(it, c)).collect())
                .collect();
            Ok(render_table(&headers, &rows))
        }
    }
}

/// A single object: JSON/YAML as is, or in table mode one `field  value` line per leaf.
pub fn render_object(v: &Value, format: Format) -> Result<String, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml::to_string(v).map_err(|e| e.to_string()),
        Format::Table => {
            let mut rows = Vec::new();
            flatten("", v, &mut rows);
            Ok(render_table(&["field", "value"], &rows))
        }
    }
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, rows);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), x, rows);
            }
        }
        Value::Object(_) => {}
        other => rows.push(vec![prefix.to_string(), text(other)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_columns_are_aligned_and_headers_upper_case() {
        let t = render_table(
            &["name", "state"],
            &[
                vec!["web-1".into(), "running".into()],
                vec!["db".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME   STATE\nweb-1  running\ndb\n");
    }

    #[test]
    fn list_renders_paths_bytes_fallbacks_and_labels() {
        let items = vec![
            json!({"id":"0123456789ab","name":"vm1","spec":{"memory_bytes":536870912u64},
            "status":{"phase":""},"scheduling":{"state":"pending"},"labels":{"a":"1","b":"2"}}),
        ];
        let cols = [
            colf("id", "id", Fmt::ShortId),
            col("name", "name"),
            colf("memory", "spec.memory_bytes", Fmt::Bytes),
            col("phase", "status.phase|scheduling.state"),
            colf("labels", "labels", Fmt::Labels),
        ];
        let out = render_list(&items, &cols, Format::Table).unwrap();
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "01234567  vm1   512MiB  pending  a=1,b=2"
        );
    }

    #[test]
    fn short_ids_grow_until_ids_of_one_millisecond_differ() {
        // UUIDv7: the first 13 characters are the millisecond.
        let items = vec![
            json!({"id":"0190f3a2-7c41-7a6b-9c1d-7e5a3b2c1d0f","name":"a","spec":{"network_id":"0190f3a2-7c41-7a6b-9c1d-000000000001"}}),
            json!({"id":"0190f3a2-7c41-7b00-9c1d-7e5a3b2c1d0f","name":"b","spec":{"network_id":"0190f3a2-7c41-7a6b-9c1d-000000000001"}}),
        ];
        let cols = [
            colf("id", "id", Fmt::ShortId),
            col("name", "name"),
            colf("network", "spec.network_id", Fmt::ShortId),
        ];
        let out = render_list(&items, &cols, Format::Table).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        // The network's id shares 20 characters with the first VM's: 21 tell them apart.
        assert_eq!(
            lines[1].split_whitespace().next(),
            Some("0190f3a2-7c41-7a6b-9c1d-7")
        );
        assert_eq!(
            lines[2].split_whitespace().next(),
            Some("0190f3a2-7c41-7b00-9c1d-7")
        );
        let firsts: std::collections::HashSet<&str> = lines[1..]
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(firsts.len(), 2, "{out}");
        // Ids of different days stay at 8 characters.
        let mut far = vec!["0190f3a2-0000".to_string(), "0191aaaa-0000".to_string()];
        assert_eq!(unique_prefix_len(&mut far), MIN_ID_LEN);
    }

    #[test]
    fn conditions_show_the_types_that_hold() {
        let items = vec![json!({"status":{"conditions":[
            {"type":"restart_required","status":"true","message":"m"},
            {"type":"devices_pending","status":"false"}]}})];
        let cols = [colf("conditions", "status.conditions", Fmt::Conditions)];
        let out = render_list(&items, &cols, Format::Table).unwrap();
        assert_eq!(out.lines().nth(1), Some("restart_required"));
    }

    #[test]
    fn json_and_yaml_lists_are_arrays() {
        let items = vec![json!({"name":"a"})];
        let j: Value =
            serde_json::from_str(&render_list(&items, &[], Format::Json).unwrap()).unwrap();
        assert_eq!(j, json!([{"name":"a"}]));
        let y: Value =
            serde_yaml::from_str(&render_list(&items, &[], Format::Yaml).unwrap()).unwrap();
        assert_eq!(y, json!([{"name":"a"}]));
    }

    #[test]
    fn object_table_flattens_leaves() {
        let out = render_object(
            &json!({"name":"n","spec":{"dns":["1.1.1.1","8.8.8.8"],"rules":[{"p":"tcp"}]}}),
            Format::Table,
        )
        .unwrap();
        let row = |k: &str| {
            out.lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_string())
        };
        assert_eq!(
            row("spec.dns ").as_deref(),
            Some("1.1.1.1,8.8.8.8"),
            "{out}"
        );
        assert_eq!(row("spec.rules.0.p ").as_deref(), Some("tcp"), "{out}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("abc").is_err());
        assert_eq!(human_bytes(1 << 30), "1GiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(12), "12B");
    }

    #[test]
    fn ages_are_compact() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(age("2026-01-01T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-01T23:00:00Z", now), "60m");
        assert_eq!(age("2025-12-30T00:00:00Z", now), "3d");
    }
}
