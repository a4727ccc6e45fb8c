//! Statistics of the pool and of mvirt's datasets on it.

use super::{PoolStats, Storage, StorageError};

impl Storage {
    pub async fn pool_stats(&self) -> Result<PoolStats, StorageError> {
        let pool = self
            .layout
            .root
            .split('/')
            .next()
            .unwrap_or(&self.layout.root)
            .to_string();
        let pool_props = self
            .zfs
            .get(&pool, &["used", "available"], false)
            .await?
            .remove(&pool)
            .unwrap_or_default();
        let ratio = self
            .zfs
            .get(&self.layout.root, &["compressratio"], false)
            .await?
            .remove(&self.layout.root)
            .and_then(|p| {
                p.get("compressratio")
                    .and_then(|v| crate::zfs::parse_ratio(v))
            })
            .unwrap_or(1.0);
        let num = |k: &str| {
            pool_props
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let volumes = self.store.list_volumes()?;
        let templates = self.store.list_templates()?;
        let provisioned = volumes.iter().map(|v| v.size_bytes).sum::<u64>()
            + templates.iter().map(|t| t.size_bytes).sum::<u64>();
        Ok(PoolStats {
            dataset: self.layout.root.clone(),
            pool,
            size_bytes: num("used") + num("available"),
            allocated_bytes: num("used"),
            free_bytes: num("available"),
            provisioned_bytes: provisioned,
            compression_ratio: ratio,
            volume_count: volumes.len() as u32,
            template_count: templates.len() as u32,
        })
    }
}
