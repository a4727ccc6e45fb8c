//! `mvirt template`: templates and following their import.

use serde_json::{json, Value};

use crate::cli::TemplateCmd;
use crate::client::ApiError;
use crate::output::Format;
use crate::resources as res;

use super::ctx::{set_given, Ctx};

pub async fn run(ctx: &Ctx, c: TemplateCmd) -> Result<(), ApiError> {
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
            set_given(
                &mut spec,
                [
                    ("sha256", sha256),
                    ("kernel_url", kernel),
                    ("initramfs_url", initramfs),
                    ("kernel_sha256", kernel_sha256),
                    ("initramfs_sha256", initramfs_sha256),
                    ("cmdline", cmdline),
                ],
            );
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
            let v = ctx.post_below(r, &template, "cancel", &json!({})).await?;
            ctx.done(&v, &format!("import of template {template} cancelled"))
        }
    }
}
