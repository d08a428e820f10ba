//! The content store under `<root>/images`:
//! - `blobs/sha256/<hex>`: manifests, indexes and configs by digest;
//! - `snapshots/<n>/`: one layer's diff in overlayfs form, shared by every image
//!   with that diff ID (short numeric names keep overlay's lowerdir string small);
//! - `tmp/`: in-flight layers, wiped at start;
//! - `index.json`: images and layers, written atomically after every change.
//!
//! The index lock is held only for in-memory work, never across I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::state::{self, remove_path};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Config digest (`sha256:…`), the image ID.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Digests of the manifest (and index, when pulled through one) kept in `blobs/`.
    pub manifests: Vec<String>,
    /// Diff IDs, base layer first.
    pub layers: Vec<String>,
    /// Compressed size as the manifest states it (config + layers).
    pub size: u64,
    /// `User` from the image config.
    pub user: String,
    /// The manifest's annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set for a Wasm OCI artifact, whose one layer is a module or component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<super::wasm::WasmArtifact>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub snapshot: u64,
    /// Compressed blob digest it was unpacked from.
    pub digest: String,
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
    layers: BTreeMap<String, LayerRecord>,
    next_snapshot: u64,
    #[serde(skip)]
    generation: u64,
    /// Diff IDs held by in-flight pulls (and, later, containers): never collected.
    #[serde(skip)]
    leases: HashMap<String, usize>,
}

pub struct Store {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Serialises index writes; holds the last generation written.
    written: tokio::sync::Mutex<u64>,
    layer_locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// Releases its leases when dropped, so a failed or cancelled pull can't pin layers forever.
pub struct Lease {
    store: Arc<Store>,
    diff_ids: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut idx = self.store.index.lock().unwrap();
        for d in &self.diff_ids {
            if let Some(n) = idx.leases.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    idx.leases.remove(d);
                }
            }
        }
    }
}

impl Store {
    /// Opens (creating) the store and repairs what a crash may have left:
    /// temp dirs, snapshots and blobs no index entry refers to, images whose layers vanished.
    pub fn open(dir: &Path) -> io::Result<Store> {
        for sub in ["blobs/sha256", "snapshots", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        remove_dir_contents(&dir.join("tmp"))?;
        let mut index: Index = state::read_json(&dir.join("index.json"))?.unwrap_or_default();

        index.layers.retain(|diff_id, l| {
            let ok = dir.join("snapshots").join(l.snapshot.to_string()).is_dir();
            if !ok {
                tracing::warn!(diff_id, snapshot = l.snapshot, "layer snapshot missing on disk; dropping it");
            }
            ok
        });
        let layers = &index.layers;
        index.images.retain(|id, img| {
            let ok = img.layers.iter().all(|d| layers.contains_key(d));
            if !ok {
                tracing::warn!(image = id, "image lost a layer; dropping it (pull it again)");
            }
            ok
        });
        let used: HashSet<&String> = index.images.values().flat_map(|i| &i.layers).collect();
        index.layers.retain(|d, _| used.contains(d));

        let snapshots: HashSet<String> = index.layers.values().map(|l| l.snapshot.to_string()).collect();
        for entry in std::fs::read_dir(dir.join("snapshots"))? {
            let entry = entry?;
            if !snapshots.contains(&entry.file_name().to_string_lossy().to_string()) {
                remove_path(&entry.path())?;
            }
        }
        let blobs: HashSet<String> =
            index.images.values().flat_map(|i| i.manifests.iter().chain([&i.id])).cloned().collect();
        for entry in std::fs::read_dir(dir.join("blobs/sha256"))? {
            let entry = entry?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !blobs.contains(&digest) {
                std::fs::remove_file(entry.path())?;
            }
        }
        let max = index.layers.values().map(|l| l.snapshot + 1).max().unwrap_or(0);
        index.next_snapshot = index.next_snapshot.max(max);
        let store = Store {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
            written: tokio::sync::Mutex::new(0),
            layer_locks: Mutex::new(HashMap::new()),
        };
        let (_, data) = store.encode();
        state::write_atomic(&dir.join("index.json"), &data)?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs/sha256").join(hex)
    }

    pub fn snapshot_path(&self, snapshot: u64) -> PathBuf {
        self.dir.join("snapshots").join(snapshot.to_string())
    }

    pub fn read_blob(&self, digest: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.blob_path(digest))
    }

    /// A fresh directory under `tmp/` for one layer being unpacked.
    pub fn temp_dir(&self) -> io::Result<PathBuf> {
        let p = self.dir.join("tmp").join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&p)?;
        Ok(p)
    }

    /// One lock per diff ID, so concurrent pulls fetch a shared layer once.
    pub async fn lock_layer(&self, diff_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.layer_locks.lock().unwrap();
            locks.retain(|_, w| w.strong_count() > 0);
            match locks.get(diff_id).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(diff_id.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// Keeps `diff_ids` from being collected until the lease drops.
    pub fn lease(self: &Arc<Self>, diff_ids: &[String]) -> Lease {
        let mut idx = self.index.lock().unwrap();
        for d in diff_ids {
            *idx.leases.entry(d.clone()).or_default() += 1;
        }
        Lease { store: self.clone(), diff_ids: diff_ids.to_vec() }
    }

    pub fn layer(&self, diff_id: &str) -> Option<LayerRecord> {
        self.index.lock().unwrap().layers.get(diff_id).cloned()
    }

    /// Moves an unpacked temp dir into place as the snapshot for `diff_id`.
    pub async fn commit_layer(
        &self,
        diff_id: &str,
        digest: &str,
        tmp: &Path,
        bytes: u64,
        inodes: u64,
    ) -> io::Result<()> {
        let snapshot = {
            let mut idx = self.index.lock().unwrap();
            idx.next_snapshot += 1;
            idx.next_snapshot - 1
        };
        let target = self.snapshot_path(snapshot);
        let src = tmp.to_path_buf();
        let dest = target.clone();
        // The index is fsynced; the files it points at must be on disk first.
        tokio::task::spawn_blocking(move || {
            nix::unistd::syncfs(std::fs::File::open(&src)?.as_raw_fd())?;
            std::fs::rename(src, dest)
        })
        .await
        .map_err(io::Error::other)??;
        self.index
            .lock()
            .unwrap()
            .layers
            .insert(diff_id.to_string(), LayerRecord { snapshot, digest: digest.to_string(), bytes, inodes });
        self.persist().await
    }

    pub async fn write_blob(&self, digest: &str, data: Vec<u8>) -> io::Result<()> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || state::write_atomic(&path, &data)).await.map_err(io::Error::other)?
    }

    /// Records an image; its names move off any image that had them before.
    pub async fn put_image(&self, record: ImageRecord) -> io::Result<()> {
        {
            let mut idx = self.index.lock().unwrap();
            for other in idx.images.values_mut().filter(|i| i.id != record.id) {
                other.repo_tags.retain(|t| !record.repo_tags.contains(t));
                other.repo_digests.retain(|d| !record.repo_digests.contains(d));
            }
            match idx.images.get_mut(&record.id) {
                Some(existing) => {
                    merge(&mut existing.repo_tags, &record.repo_tags);
                    merge(&mut existing.repo_digests, &record.repo_digests);
                    merge(&mut existing.manifests, &record.manifests);
                }
                None => {
                    idx.images.insert(record.id.clone(), record);
                }
            }
        }
        self.persist().await
    }

    /// Removes an image and frees the layers and blobs nothing else uses.
    pub async fn remove_image(&self, id: &str) -> io::Result<bool> {
        let (snapshots, blobs) = {
            let mut idx = self.index.lock().unwrap();
            let Some(removed) = idx.images.remove(id) else { return Ok(false) };
            let used_layers: HashSet<&String> =
                idx.images.values().flat_map(|i| &i.layers).chain(idx.leases.keys()).collect();
            let free: Vec<String> = removed.layers.iter().filter(|d| !used_layers.contains(d)).cloned().collect();
            let used_blobs: HashSet<&String> =
                idx.images.values().flat_map(|i| i.manifests.iter().chain([&i.id])).collect();
            let blobs: Vec<String> =
                removed.manifests.iter().chain([&removed.id]).filter(|b| !used_blobs.contains(b)).cloned().collect();
            let snapshots: Vec<u64> = free.iter().filter_map(|d| idx.layers.remove(d)).map(|l| l.snapshot).collect();
            (snapshots, blobs)
        };
        self.persist().await?;
        let paths: Vec<PathBuf> =
            snapshots.iter().map(|s| self.snapshot_path(*s)).chain(blobs.iter().map(|b| self.blob_path(b))).collect();
        tokio::task::spawn_blocking(move || paths.iter().try_for_each(|p| remove_path(p)))
            .await
            .map_err(io::Error::other)??;
        Ok(true)
    }

    pub fn images(&self) -> Vec<ImageRecord> {
        self.index.lock().unwrap().images.values().cloned().collect()
    }

    /// Bytes and inodes held by snapshots and blobs, as recorded when written.
    pub fn usage(&self) -> (u64, u64) {
        let (mut bytes, mut inodes, blobs) = {
            let idx = self.index.lock().unwrap();
            let (b, i) = idx.layers.values().fold((0, 0), |(b, i), l| (b + l.bytes, i + l.inodes + 1));
            let blobs: HashSet<String> =
                idx.images.values().flat_map(|img| img.manifests.iter().chain([&img.id])).cloned().collect();
            (b, i, blobs)
        };
        // Stat outside the lock: the index lock never covers I/O.
        for blob in blobs {
            if let Ok(m) = std::fs::symlink_metadata(self.blob_path(&blob)) {
                bytes += m.len();
                inodes += 1;
            }
        }
        (bytes, inodes)
    }

    fn encode(&self) -> (u64, Vec<u8>) {
        let mut idx = self.index.lock().unwrap();
        idx.generation += 1;
        (idx.generation, serde_json::to_vec(&*idx).expect("index serializes"))
    }

    /// Writes the index; a newer generation always lands after an older one.
    async fn persist(&self) -> io::Result<()> {
        let (generation, data) = self.encode();
        let mut written = self.written.lock().await;
        if generation <= *written {
            return Ok(());
        }
        let path = self.dir.join("index.json");
        tokio::task::spawn_blocking(move || state::write_atomic(&path, &data)).await.map_err(io::Error::other)??;
        *written = generation;
        Ok(())
    }
}

fn merge(into: &mut Vec<String>, from: &[String]) {
    for s in from {
        if !into.contains(s) {
            into.push(s.clone());
        }
    }
}

fn remove_dir_contents(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        remove_path(&entry?.path())?;
    }
    Ok(())
}
