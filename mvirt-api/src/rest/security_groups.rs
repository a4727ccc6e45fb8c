//! `/v1/security-groups`: CRUD of security groups and their rules.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::resources::{crud, query, resolve};
use super::JsonBody;
use crate::app::{new_id, now, App};
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::SecurityGroup,
    "security-groups",
    "/v1/security-groups",
    "/v1/security-groups/{id}",
    SecurityGroup,
    SecurityGroupSpec,
    validate::security_group,
    build_security_group
);

fn build_security_group(meta: Meta, mut spec: SecurityGroupSpec) -> Result<Command, ApiError> {
    for rule in &mut spec.rules {
        rule.id.get_or_insert_with(new_id);
    }
    Ok(Command::CreateSecurityGroup {
        security_group: SecurityGroup {
            meta,
            spec,
            status: Status::default(),
        },
    })
}

#[utoipa::path(post, path = "/v1/security-groups/{id}/rules", tag = "security-groups", request_body = SecurityGroupRule, params(("id" = String, Path, description = "id or name"), ProjectQuery),
    responses((status = 201, body = SecurityGroupRule), (status = 400, body = ErrorEnvelope)))]
pub async fn add_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
    JsonBody(mut rule, _): JsonBody<SecurityGroupRule>,
) -> Result<Response, ApiError> {
    validate::rule(&rule)?;
    rule.id.get_or_insert_with(new_id);
    let q = query(q)?;
    let security_group_id = resolve(
        &app.shared.read(),
        Kind::SecurityGroup,
        &id,
        q.project.as_deref(),
    )?;
    let (_, value) = app
        .submit(
            Command::AddRule {
                security_group_id,
                rule,
                now: now(),
            },
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}/rules/{rule_id}", tag = "security-groups", params(("id" = String, Path, description = "id or name"), ("rule_id" = String, Path, description = "rule id"), ProjectQuery),
    responses((status = 204), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_rule(
    State(app): State<Arc<App>>,
    Path((id, rule_id)): Path<(String, String)>,
    q: Result<Query<ProjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let security_group_id = resolve(
        &app.shared.read(),
        Kind::SecurityGroup,
        &id,
        q.project.as_deref(),
    )?;
    app.submit(
        Command::DeleteRule {
            security_group_id,
            rule_id,
            now: now(),
        },
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
