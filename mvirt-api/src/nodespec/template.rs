//! The templates the node holds: every imported one, and those promoted from a snapshot on it.

use super::Desired;
use crate::model::{ImageFormat, Template};
use crate::proto;

/// Templates are imported on every node, so a clone anywhere is O(1); a template promoted from
/// a snapshot exists only on its volume's node.
pub(super) fn templates(cx: &mut Desired) -> Vec<proto::TemplateSpec> {
    let (state, node_id) = (cx.state, cx.node_id);
    let mut templates = Vec::new();
    for t in state
        .templates
        .values()
        .filter(|t| t.node_id.as_deref().is_none_or(|n| n == node_id))
    {
        cx.bump(t.meta.spec_revision);
        templates.push(template_spec(t));
    }
    templates
}

fn template_spec(t: &Template) -> proto::TemplateSpec {
    let source = t.spec.source_snapshot.as_ref();
    proto::TemplateSpec {
        id: t.meta.id.clone(),
        trace_id: t.meta.trace_id.clone().unwrap_or_default(),
        name: t.meta.name.clone(),
        source_url: t.spec.source_url.clone(),
        format: match t.spec.format {
            ImageFormat::Raw => proto::ImageFormat::Raw,
            ImageFormat::Qcow2 => proto::ImageFormat::Qcow2,
        } as i32,
        sha256: t.spec.sha256.clone().unwrap_or_default(),
        kernel_url: t.spec.kernel_url.clone().unwrap_or_default(),
        initramfs_url: t.spec.initramfs_url.clone().unwrap_or_default(),
        kernel_sha256: t.spec.kernel_sha256.clone().unwrap_or_default(),
        initramfs_sha256: t.spec.initramfs_sha256.clone().unwrap_or_default(),
        cmdline: t.spec.cmdline.clone().unwrap_or_default(),
        import_cancelled: t.import_cancelled,
        source_volume_id: source.map(|s| s.volume_id.clone()).unwrap_or_default(),
        source_snapshot_id: source.map(|s| s.snapshot_id.clone()).unwrap_or_default(),
    }
}
