//! Images: names, the content store, pulls, and the queries CRI asks.

pub mod auth;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;
pub mod wasm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use pull::FailureKind;
use reference::ImageName;
use store::{ImageRecord, Store};

use crate::config::Config;
use crate::metrics::PullMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("pulling {image}: {detail}")]
    Pull { image: String, kind: FailureKind, detail: String },
    #[error("pulling {image}: no result within pull.timeout_secs ({secs}s)")]
    Timeout { image: String, secs: u64 },
    #[error("credentials file {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("image reference {reference:?} is ambiguous: it matches {count} image IDs")]
    Ambiguous { reference: String, count: usize },
    #[error("image store: {0}")]
    Store(#[from] std::io::Error),
}

/// What ImageStatus and ListImages report for one image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub pinned: bool,
    /// The image config document.
    pub config: serde_json::Value,
}

pub struct Images {
    config: Arc<Config>,
    store: Arc<Store>,
    puller: Arc<pull::Puller>,
    metrics: PullMetrics,
    /// The images' WebAssembly programs kept loaded.
    #[cfg(feature = "wasm")]
    programs: Arc<crate::wasm::pool::Pool>,
}

impl Images {
    #[allow(dead_code)] // for callers without metrics
    pub fn open(config: Arc<Config>) -> Result<Images, ImageError> {
        Images::open_with_metrics(config, PullMetrics::default())
    }

    /// As [`Images::open`], reporting pulls (count, duration, downloaded bytes) to `metrics`.
    pub fn open_with_metrics(config: Arc<Config>, metrics: PullMetrics) -> Result<Images, ImageError> {
        let store = Arc::new(Store::open(&config.root.join("images"))?);
        let puller = Arc::new(pull::Puller::new(config.clone(), store.clone(), metrics.clone()));
        #[cfg(feature = "wasm")]
        let programs = Arc::new(crate::wasm::pool::Pool::new(config.root.join("wasm-cache"), config.wasm.clone()));
        Ok(Images {
            config,
            store,
            puller,
            metrics,
            #[cfg(feature = "wasm")]
            programs,
        })
    }

    #[cfg(feature = "wasm")]
    pub fn programs(&self) -> &Arc<crate::wasm::pool::Pool> {
        &self.programs
    }

    pub fn parse(&self, reference: &str) -> Result<ImageName, ImageError> {
        ImageName::parse(reference, &self.config.registries.default)
    }

    /// Pulls in a task of its own: a caller that gives up (kubelet's deadline)
    /// doesn't waste the download; the next pull finds the layers done.
    pub async fn pull(&self, reference: &str, creds: Option<auth::Credentials>) -> Result<String, ImageError> {
        let started = std::time::Instant::now();
        let result = self.pull_inner(reference, creds).await;
        self.metrics.finished(result.is_ok(), started.elapsed());
        result
    }

    async fn pull_inner(&self, reference: &str, creds: Option<auth::Credentials>) -> Result<String, ImageError> {
        let name = self.parse(reference)?;
        let puller = self.puller.clone();
        let task_name = name.clone();
        let task = tokio::spawn(async move { puller.pull(&task_name, creds).await });
        let secs = self.config.pull.timeout_secs;
        let joined = if secs == 0 {
            task.await
        } else {
            let abort = task.abort_handle();
            match tokio::time::timeout(Duration::from_secs(secs), task).await {
                Ok(j) => j,
                Err(_) => {
                    abort.abort();
                    return Err(ImageError::Timeout { image: name.to_string(), secs });
                }
            }
        };
        joined.map_err(|e| ImageError::Store(std::io::Error::other(format!("pull task failed: {e}"))))?
    }

    /// Finds an image by ID, unique ID prefix, `repo:tag` or `repo@digest`.
    pub fn find(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = self.store.images();
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = images.iter().filter(|i| i.id["sha256:".len()..].starts_with(hex)).collect();
            match hits.len() {
                1 => return Ok(Some(hits[0].clone())),
                0 if reference.starts_with("sha256:") => return Ok(None),
                0 => {}
                count => return Err(ImageError::Ambiguous { reference: reference.into(), count }),
            }
        }
        let name = self.parse(reference)?;
        let found = match &name.digest {
            Some(d) => {
                let by_digest = name.with_digest(d);
                images.into_iter().find(|i| i.repo_digests.contains(&by_digest))
            }
            None => {
                let tagged = name.tagged().unwrap_or_default();
                images.into_iter().find(|i| i.repo_tags.contains(&tagged))
            }
        };
        Ok(found)
    }

    pub fn info(&self, record: ImageRecord) -> ImageInfo {
        let config = self
            .store
            .read_blob(&record.id)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let pinned = self.is_pinned(&record);
        ImageInfo { record, pinned, config }
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.store.images()
    }

    pub fn is_pinned(&self, record: &ImageRecord) -> bool {
        let names = record.repo_tags.iter().chain(&record.repo_digests);
        names.into_iter().any(|n| {
            self.config.images.pinned.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => n.starts_with(prefix),
                None => n == p || self.parse(p).ok().and_then(|pn| pn.tagged()).as_deref() == Some(n.as_str()),
            })
        })
    }

    /// Removes the image and every name it has; absent images are not an error (CRI).
    pub async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        if let Some(record) = self.find(reference)? {
            self.store.remove_image(&record.id).await?;
            #[cfg(feature = "wasm")]
            {
                self.programs.forget_image(&record.id);
                let (cache, id) = (self.config.root.join("wasm-cache"), record.id.clone());
                let _ = tokio::task::spawn_blocking(move || crate::wasm::cache::forget_image(&cache, &id)).await;
            }
            tracing::info!(image = %record.id, tags = ?record.repo_tags, "image removed");
        }
        Ok(())
    }

    /// Holds the image's layers for a container: their snapshot dirs, base
    /// first, which stay on disk (even if the image is removed) until the lease drops.
    pub fn checkout(&self, record: &ImageRecord) -> Result<(store::Lease, Vec<PathBuf>), ImageError> {
        let lease = self.store.lease(&record.layers);
        let dirs = record
            .layers
            .iter()
            .map(|diff_id| {
                let layer = self.store.layer(diff_id).ok_or_else(|| {
                    std::io::Error::other(format!("layer {diff_id} of image {} is missing from the store", record.id))
                })?;
                Ok(self.store.snapshot_path(layer.snapshot))
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        Ok((lease, dirs))
    }

    /// Re-takes the lease a container held before a daemon restart.
    pub fn lease(&self, diff_ids: &[String]) -> store::Lease {
        self.store.lease(diff_ids)
    }

    /// The image's config document (entrypoint, env, user, stop signal, volumes).
    /// A Wasm OCI artifact's is made up: its binary as entrypoint, nothing else.
    pub fn image_config(&self, record: &ImageRecord) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
        if let Some(artifact) = &record.wasm {
            return wasm::image_config(artifact, &record.layers)
                .map_err(|e| ImageError::Store(std::io::Error::other(e)));
        }
        let blob = self.store.read_blob(&record.id)?;
        serde_json::from_slice(&blob).map_err(|e| {
            ImageError::Store(std::io::Error::other(format!("config {} of the image is malformed: {e}", record.id)))
        })
    }

    /// Mount point of the image filesystem and the bytes and inodes it uses.
    pub fn usage(&self) -> (PathBuf, u64, u64) {
        let (bytes, inodes) = self.store.usage();
        (self.store.dir().to_path_buf(), bytes, inodes)
    }
}

/// `uid` or `username` from an image config's `User` (`1000`, `www-data:1004`).
pub fn image_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::image_user;

    #[test]
    fn users() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("1003:1004"), (Some(1003), String::new()));
        assert_eq!(image_user("www-data:1004"), (None, "www-data".into()));
        assert_eq!(image_user("0"), (Some(0), String::new()));
    }
}
