//! `mvirt project`: projects.

use serde_json::json;

use crate::cli::{ListArgs, ProjectCmd};
use crate::client::ApiError;
use crate::resources as res;

use super::ctx::{set_given, Ctx};
use super::parse::parse_labels;

pub async fn run(ctx: &Ctx, c: ProjectCmd) -> Result<(), ApiError> {
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
            set_given(&mut body, [("description", description)]);
            ctx.create(r, body).await
        }
        ProjectCmd::Delete { name } => ctx.delete(r, &name, &[]).await,
    }
}
