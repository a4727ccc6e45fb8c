//! Drift detection: the metadata database against the datasets in the pool.
//!
//! Every dataset mvirt creates carries its id in the `mvirt:id` user property. At start (and on
//! `CheckDrift`) the daemon lists the datasets under `volumes/` and `templates/` and reports
//! objects the database knows but the pool lacks (or whose image file is gone), and datasets the
//! database does not know. It reports; it never deletes on its own.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::{self, PROP_ID};
use crate::storage::{Storage, StorageError};
use crate::store::TemplateState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    MissingDataset,
    UnknownDataset,
    MissingImage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftItem {
    pub kind: DriftKind,
    pub object_id: String,
    /// `volume` or `template`.
    pub object_kind: &'static str,
    pub dataset: String,
    pub detail: String,
}

/// Compares metadata and pool; see the module docs.
pub async fn check(storage: &Storage) -> Result<Vec<DriftItem>, StorageError> {
    let layout = &storage.layout;
    let mut items = Vec::new();
    // A volume being made independent of its template is briefly renamed into the staging
    // area (see `Storage::detach_clone`): that is not a missing dataset.
    let staging = layout.staging_dataset();
    let in_staging: BTreeSet<String> = storage
        .zfs
        .get(&staging, &["type"], true)
        .await?
        .into_keys()
        .filter_map(|name| {
            let child = name.strip_prefix(&format!("{staging}/"))?;
            let id = child.strip_suffix(".old").or(child.strip_suffix(".new"))?;
            Some(id.to_string())
        })
        .collect();
    for (object_kind, parent) in [
        ("volume", layout.volumes_dataset()),
        ("template", layout.templates_dataset()),
    ] {
        let datasets = storage.zfs.get(&parent, &[PROP_ID], true).await?;
        // Direct children only (snapshots and the parent itself excluded).
        let prefix = format!("{parent}/");
        let in_pool: BTreeMap<String, String> = datasets
            .into_iter()
            .filter_map(|(name, props)| {
                let child = name.strip_prefix(&prefix)?;
                if child.contains(['/', '@']) {
                    return None;
                }
                let label = props.get(PROP_ID).cloned().unwrap_or_default();
                Some((child.to_string(), label))
            })
            .collect();
        let known: BTreeSet<String> = if object_kind == "volume" {
            storage
                .store
                .list_volumes()?
                .into_iter()
                .map(|v| v.id)
                .collect()
        } else {
            storage
                .store
                .list_templates()?
                .into_iter()
                .filter(|t| t.state == TemplateState::Ready)
                .map(|t| t.id)
                .collect()
        };
        for id in &known {
            let dataset = format!("{prefix}{id}");
            if !in_pool.contains_key(id) {
                if object_kind == "volume" && in_staging.contains(id) {
                    continue;
                }
                items.push(DriftItem {
                    kind: DriftKind::MissingDataset,
                    object_id: id.clone(),
                    object_kind,
                    dataset,
                    detail: format!(
                        "the {object_kind} is in the metadata but its dataset is missing"
                    ),
                });
                continue;
            }
            let dir = if object_kind == "volume" {
                layout.volume_dir(id)
            } else {
                layout.template_dir(id)
            };
            if !dir.join(layout::IMAGE_FILE).exists() {
                items.push(DriftItem {
                    kind: DriftKind::MissingImage,
                    object_id: id.clone(),
                    object_kind,
                    dataset,
                    detail: format!("{} is missing", dir.join(layout::IMAGE_FILE).display()),
                });
            }
        }
        let importing: BTreeSet<String> = storage
            .store
            .list_templates()?
            .into_iter()
            .filter(|t| t.state == TemplateState::Importing)
            .map(|t| t.id)
            .collect();
        for (child, label) in in_pool {
            if known.contains(&child) || (object_kind == "template" && importing.contains(&child)) {
                if label != child {
                    items.push(DriftItem {
                        kind: DriftKind::UnknownDataset,
                        object_id: child.clone(),
                        object_kind,
                        dataset: format!("{prefix}{child}"),
                        detail: format!("dataset is labelled {PROP_ID}={label}, expected {child}"),
                    });
                }
                continue;
            }
            items.push(DriftItem {
                kind: DriftKind::UnknownDataset,
                object_id: if label == "-" {
                    child.clone()
                } else {
                    label.clone()
                },
                object_kind,
                dataset: format!("{prefix}{child}"),
                detail: format!("dataset is not in the metadata ({PROP_ID}={label})"),
            });
        }
    }
    Ok(items)
}
