//! mvirt-zfs's Prometheus metrics (see `mvirt_common::metrics` and the README's table): the
//! pool's capacity and use (read at scrape time), bytes moved by template imports and imports
//! by outcome.

use std::sync::{Arc, OnceLock, Weak};

use mvirt_common::metrics::prometheus::metrics::counter::Counter;
use mvirt_common::metrics::prometheus::metrics::family::Family;
use mvirt_common::metrics::prometheus::registry::Unit;
use mvirt_common::metrics::{self, Kind, Labels, Sampled, Snapshot};
use mvirt_common::Shutdown;

use crate::storage::Storage;
use crate::store::Phase;

/// The registry name (the binary's).
pub const DAEMON: &str = "mvirt-zfs";

struct ZfsMetrics {
    import_bytes: Family<Labels, Counter>,
    imports: Family<Labels, Counter>,
    sampled: Sampled,
}

fn get() -> &'static ZfsMetrics {
    static METRICS: OnceLock<ZfsMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = ZfsMetrics {
            import_bytes: Family::default(),
            imports: Family::default(),
            sampled: Sampled::default(),
        };
        metrics::register(DAEMON, |r| {
            r.register_with_unit(
                "mvirt_zfs_import",
                "Bytes template imports moved, by phase (downloading: read from the source; converting: written to the volume)",
                Unit::Bytes,
                m.import_bytes.clone(),
            );
            r.register(
                "mvirt_zfs_imports",
                "Template imports that ended, by outcome (completed, failed, cancelled)",
                m.imports.clone(),
            );
            r.register_collector(Box::new(m.sampled.clone()));
        });
        m
    })
}

/// An import job in `phase` moved `bytes` more.
pub fn import_progress(phase: Phase, bytes: u64) {
    if bytes > 0 {
        get()
            .import_bytes
            .get_or_create(&vec![("phase", phase.as_str().to_string())])
            .inc_by(bytes);
    }
}

/// An import job ended in `phase`.
pub fn import_finished(phase: Phase) {
    get()
        .imports
        .get_or_create(&vec![("outcome", phase.as_str().to_string())])
        .inc();
}

/// Reads the pool's capacity on every scrape until `shutdown` fires.
pub fn watch(storage: &Arc<Storage>, shutdown: &Shutdown) {
    let m = get();
    let storage: Weak<Storage> = Arc::downgrade(storage);
    let shutdown = shutdown.clone();
    metrics::on_scrape(
        DAEMON,
        Arc::new(move || {
            let (storage, shutdown) = (storage.upgrade(), shutdown.clone());
            Box::pin(async move {
                let Some(storage) = storage.filter(|_| !shutdown.is_triggered()) else {
                    return false;
                };
                match storage.pool_stats().await {
                    Ok(p) => {
                        let mut s = Snapshot::default();
                        let labels = || vec![("pool", p.pool.clone())];
                        for (name, help, value) in [
                            ("mvirt_zfs_pool_size", "Size of the pool (used + available)", p.size_bytes),
                            ("mvirt_zfs_pool_used", "Bytes used in the pool", p.allocated_bytes),
                            ("mvirt_zfs_pool_free", "Bytes available in the pool", p.free_bytes),
                            ("mvirt_zfs_provisioned", "Sum of the virtual sizes of all volumes and templates (thin provisioning)", p.provisioned_bytes),
                        ] {
                            s.family(Kind::Gauge, name, help, Some(Unit::Bytes))
                                .add(labels(), value as f64);
                        }
                        s.family(
                            Kind::Gauge,
                            "mvirt_zfs_compression_ratio",
                            "Compression ratio of mvirt's datasets",
                            None,
                        )
                        .add(labels(), p.compression_ratio);
                        s.family(
                            Kind::Gauge,
                            "mvirt_zfs_volumes",
                            "Volumes on this host",
                            None,
                        )
                        .add(labels(), p.volume_count as f64);
                        s.family(
                            Kind::Gauge,
                            "mvirt_zfs_templates",
                            "Templates on this host",
                            None,
                        )
                        .add(labels(), p.template_count as f64);
                        m.sampled.replace(s);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot read the pool for metrics"),
                }
                true
            })
        }),
    );
}
