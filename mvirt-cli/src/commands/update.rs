//! Read-modify-write of an object's spec at the revision that was read (`If-Match`), shared by
//! the nouns that change one field of a spec (`vm resize`, `vm attach`, `backup retention`, …).

use serde_json::{json, Value};

use crate::client::{ApiClient, ApiError};
use crate::resources::Resource;

use super::ctx::item_path;

/// Reads an object, lets `edit` change its spec, and writes the spec back only while the object
/// is still at the revision that was read (`If-Match`): a change someone made to the spec in
/// between is refused with a message that says so, never overwritten. A revision that moved on
/// without a spec change (the platform recording status or placement) is read again and the
/// edit re-applied, a few times; a global `--if-match` is never retried.
pub async fn update_spec(
    api: &ApiClient,
    r: &Resource,
    name: &str,
    edit: impl Fn(&mut Value) -> Result<(), ApiError>,
) -> Result<Value, ApiError> {
    const ATTEMPTS: usize = 5;
    let what = r.name;
    let q = vec![("project", api.project.clone())];
    let mut current = api.get(&item_path(r, name), &q).await?;
    let first_spec = current.get("spec").cloned();
    for attempt in 1..=ATTEMPTS {
        let field = |k: &str| {
            current.get(k).cloned().ok_or_else(|| {
                ApiError::BadResponse(format!("{what} {name}: the response has no {k}"))
            })
        };
        let revision = field("revision")?.as_u64().unwrap_or_default();
        let id = field("id")?.as_str().unwrap_or(name).to_string();
        let mut spec = field("spec")?;
        edit(&mut spec)?;
        // By id from here on: a rename in between must not make the write hit another object.
        let path = item_path(r, &id);
        match api
            .put_at_revision(&path, &q, &json!({"spec": spec}), revision)
            .await
        {
            Err(ApiError::Api { status: 412, .. })
                if api.if_match.is_none() && attempt < ATTEMPTS =>
            {
                let fresh = api.get(&path, &q).await?;
                if fresh.get("spec").cloned() != first_spec {
                    return Err(stale_revision(what, name, revision, &fresh));
                }
                current = fresh;
            }
            Err(ApiError::Api { status: 412, .. }) => {
                let fresh = api.get(&path, &q).await?;
                let read = api.if_match.unwrap_or(revision);
                return Err(stale_revision(what, name, read, &fresh));
            }
            other => return other,
        }
    }
    Err(ApiError::Other(format!(
        "{what} {name}: the update did not go through after {ATTEMPTS} attempts"
    )))
}

/// A refused `If-Match` of a read-modify-write, told as what happened (exit code 4).
fn stale_revision(what: &str, name: &str, read: u64, fresh: &Value) -> ApiError {
    let now = fresh
        .get("revision")
        .and_then(Value::as_u64)
        .map(|r| format!(", it is now at revision {r}"))
        .unwrap_or_default();
    ApiError::Api {
        status: 412,
        code: "precondition_failed".into(),
        message: format!(
            "{what} {name} was changed by someone else after it was read at revision {read}{now}; nothing was changed, run the command again"
        ),
        details: Value::Null,
    }
}
