//! `mvirt version`: the client version and the API's health.

use serde_json::json;

use crate::client::ApiError;
use crate::output;

use super::ctx::Ctx;

pub async fn run(ctx: &Ctx) -> Result<(), ApiError> {
    let client = env!("CARGO_PKG_VERSION");
    let health = ctx.api.get("/v1/health", &[]).await;
    let v = json!({
        "client": {"version": client},
        "api": {"url": ctx.api.base, "health": health.as_ref().ok(), "error": health.as_ref().err().map(|e| e.to_string())},
    });
    ctx.print_text_or_object(&v, |_| {
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
        s
    })?;
    health.map(|_| ())
}
