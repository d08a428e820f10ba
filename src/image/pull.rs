//! Pulls an image: resolve the manifest through mirrors then the registry,
//! pick the platform, fetch the config, then stream every layer straight
//! into its snapshot (download, digest check, decompress, untar in one pass,
//! one blocking thread per layer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::auth::{self, Credentials};
use super::reference::ImageName;
use super::store::{ImageRecord, Store};
use super::unpack::{self, Compression, UnpackError};
use super::wasm::{self, ArtifactError};
use super::ImageError;
use crate::config::{parse_endpoint, Config};
use crate::metrics::PullMetrics;
use crate::state::remove_path;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const MAX_CONFIG_BYTES: i64 = 16 << 20;

/// One place a pull may come from.
#[derive(Debug, Clone)]
struct Endpoint {
    /// Host to contact (the registry itself or a mirror).
    host: String,
    plain_http: bool,
    mirror: bool,
}

impl Endpoint {
    fn describe(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        if self.mirror {
            format!("mirror {scheme}://{}", self.host)
        } else {
            format!("{scheme}://{}", self.host)
        }
    }

    fn reference(&self, name: &ImageName, digest: Option<&str>) -> Reference {
        let mut r = match (digest.or(name.digest.as_deref()), &name.tag) {
            (Some(d), _) => Reference::with_digest(name.registry.clone(), name.repository.clone(), d.to_string()),
            (None, Some(t)) => Reference::with_tag(name.registry.clone(), name.repository.clone(), t.clone()),
            (None, None) => Reference::with_tag(name.registry.clone(), name.repository.clone(), "latest".into()),
        };
        if self.mirror {
            r.set_mirror_registry(self.host.clone());
        }
        r
    }
}

/// Why one endpoint failed; the kind picks the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    NotFound,
    Unauthorized,
    Unreachable,
    BadContent,
    Unsupported,
}

struct Failure {
    kind: FailureKind,
    message: String,
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure { kind, message: message.into() }
}

fn classify(e: OciDistributionError) -> Failure {
    use OciDistributionError as E;
    let kind = match &e {
        E::ImageManifestNotFoundError(_) => FailureKind::NotFound,
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => FailureKind::Unauthorized,
        E::RequestError(_) | E::IoError(_) | E::ServerError { .. } => FailureKind::Unreachable,
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            match envelope.errors.first().map(|e| &e.code) {
                Some(C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown) => FailureKind::NotFound,
                Some(C::Unauthorized | C::Denied) => FailureKind::Unauthorized,
                _ => FailureKind::Unreachable,
            }
        }
        E::UnsupportedMediaTypeError(_) | E::UnsupportedSchemaVersionError(_) => FailureKind::Unsupported,
        _ => FailureKind::BadContent,
    };
    // reqwest's Display hides the cause ("error sending request"); show the chain.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    Failure { kind, message }
}

pub struct Puller {
    config: Arc<Config>,
    store: Arc<Store>,
    metrics: PullMetrics,
}

/// What the manifest step found.
struct Resolved {
    /// Digest the name resolved to (an index's digest for multi-arch images).
    top_digest: String,
    manifest: OciImageManifest,
    /// Raw manifest (and index) documents to keep, by digest.
    documents: Vec<(String, Vec<u8>)>,
}

impl Puller {
    pub fn new(config: Arc<Config>, store: Arc<Store>, metrics: PullMetrics) -> Puller {
        Puller { config, store, metrics }
    }

    /// Pulls `name` and returns the image ID.
    pub async fn pull(&self, name: &ImageName, creds: Option<Credentials>) -> Result<String, ImageError> {
        let endpoints = self.endpoints(name)?;
        let client = self.client(&endpoints);
        let mut failures: Vec<(Endpoint, Failure)> = Vec::new();
        for ep in endpoints {
            let attempt = async {
                let auth = self.auth_for(&ep, name, creds.clone()).await?;
                let resolved = self.resolve(&client, &ep, name, &auth).await?;
                self.fetch(&client, &ep, name, resolved).await
            };
            match attempt.await {
                Ok(id) => return Ok(id),
                Err(f) => {
                    tracing::info!(image = %name, endpoint = %ep.describe(), error = %f.message, "pull attempt failed");
                    failures.push((ep, f));
                }
            }
        }
        // The last endpoint tried is the most authoritative (the registry itself).
        let kind = failures.last().map_or(FailureKind::Unreachable, |(_, f)| f.kind);
        let detail =
            failures.iter().map(|(ep, f)| format!("{}: {}", ep.describe(), f.message)).collect::<Vec<_>>().join("; ");
        Err(ImageError::Pull { image: name.to_string(), kind, detail })
    }

    fn endpoints(&self, name: &ImageName) -> Result<Vec<Endpoint>, ImageError> {
        let settings = self.config.registry_host(&name.registry);
        let mut out = Vec::new();
        for m in &settings.mirrors {
            let e = parse_endpoint(m)
                .map_err(|message| ImageError::InvalidReference { reference: name.to_string(), reason: message })?;
            let plain_http = e.plain_http || self.config.registry_host(&e.host).insecure;
            out.push(Endpoint { host: e.host, plain_http, mirror: true });
        }
        if !settings.mirrors_only {
            out.push(Endpoint { host: name.registry.clone(), plain_http: settings.insecure, mirror: false });
        }
        Ok(out)
    }

    /// A client per pull: oci-client caches credentials per host, and one
    /// pull's secrets must never serve another pull.
    fn client(&self, endpoints: &[Endpoint]) -> Client {
        let plain: Vec<String> = endpoints
            .iter()
            .filter(|e| e.plain_http)
            .flat_map(|e| {
                let api = if e.host == "docker.io" { vec!["index.docker.io".to_string()] } else { vec![] };
                api.into_iter().chain([e.host.clone()])
            })
            .collect();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: None,
            max_concurrent_download: self.config.pull.max_concurrent_layers,
            connect_timeout: Some(Duration::from_secs(self.config.pull.connect_timeout_secs)),
            read_timeout: Some(Duration::from_secs(self.config.pull.progress_timeout_secs)),
            user_agent: concat!("cricket/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    /// CRI credentials go only to the registry they were given for; mirrors
    /// use what the credentials file holds for them.
    async fn auth_for(
        &self,
        ep: &Endpoint,
        name: &ImageName,
        creds: Option<Credentials>,
    ) -> Result<RegistryAuth, Failure> {
        let configured = || {
            auth::from_file(&self.config.registries.auth_file, &ep.host)
                .map_err(|e| fail(FailureKind::Unauthorized, e.to_string()))
        };
        let chosen = match (ep.mirror, creds) {
            (false, Some(c)) => Some(c),
            _ => configured()?,
        };
        if matches!(chosen, Some(Credentials::Identity { .. })) {
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(self.config.pull.connect_timeout_secs))
                .build()
                .map_err(|e| fail(FailureKind::Unreachable, e.to_string()))?;
            let scheme = if ep.plain_http { "http" } else { "https" };
            return auth::resolve(chosen, scheme, &ep.host, &name.repository, &http)
                .await
                .map_err(|m| fail(FailureKind::Unauthorized, m));
        }
        Ok(match chosen {
            Some(Credentials::Basic { username, password }) => RegistryAuth::Basic(username, password),
            Some(Credentials::Bearer(t)) => RegistryAuth::Bearer(t),
            _ => RegistryAuth::Anonymous,
        })
    }

    async fn resolve(
        &self,
        client: &Client,
        ep: &Endpoint,
        name: &ImageName,
        auth: &RegistryAuth,
    ) -> Result<Resolved, Failure> {
        let reference = ep.reference(name, None);
        let (raw, digest) = client.pull_manifest_raw(&reference, auth, MANIFEST_TYPES).await.map_err(classify)?;
        check_digest(&raw, &digest)?;
        if let Some(wanted) = &name.digest {
            if &digest != wanted {
                return Err(fail(
                    FailureKind::BadContent,
                    format!("manifest digest {digest} does not match requested {wanted}"),
                ));
            }
        }
        let mut documents = vec![(digest.clone(), raw.to_vec())];
        let doc = parse_manifest(&raw)?;
        let manifest = match doc {
            Document::Manifest(m) => *m,
            Document::Index(index) => {
                let chosen = choose_platform(&index)?;
                let (raw, d) = client
                    .pull_manifest_raw(&ep.reference(name, Some(&chosen)), auth, MANIFEST_TYPES)
                    .await
                    .map_err(classify)?;
                check_digest(&raw, &chosen)?;
                documents.push((d, raw.to_vec()));
                match parse_manifest(&raw)? {
                    Document::Manifest(m) => *m,
                    Document::Index(_) => {
                        return Err(fail(FailureKind::Unsupported, "an image index nested in an image index"))
                    }
                }
            }
        };
        Ok(Resolved { top_digest: digest, manifest, documents })
    }

    async fn fetch(&self, client: &Client, ep: &Endpoint, name: &ImageName, r: Resolved) -> Result<String, Failure> {
        let reference = ep.reference(name, Some(&r.top_digest));
        let cfg_desc = &r.manifest.config;
        if cfg_desc.size > MAX_CONFIG_BYTES {
            return Err(fail(
                FailureKind::BadContent,
                format!("image config is {} bytes, over the 16 MiB limit", cfg_desc.size),
            ));
        }
        let mut config_raw = Vec::with_capacity(cfg_desc.size.max(0) as usize);
        client.pull_blob(&reference, cfg_desc, &mut config_raw).await.map_err(classify)?;
        check_digest(&config_raw, &cfg_desc.digest)?;
        let layers = &r.manifest.layers;
        let (diff_ids, content, user, wasm) = if cfg_desc.media_type == wasm::CONFIG_MEDIA_TYPE {
            let artifact = wasm::check(&config_raw, layers).map_err(|e| match e {
                ArtifactError::Malformed(_) => fail(FailureKind::BadContent, e.to_string()),
                ArtifactError::Unsupported(_) => fail(FailureKind::Unsupported, e.to_string()),
            })?;
            // The layer is the binary itself: its digest is its diff ID.
            let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
            (digests, Content::Wasm, String::new(), Some(artifact))
        } else {
            let (diff_ids, user) = image_layers(&config_raw, &cfg_desc.digest, layers)?;
            (diff_ids, Content::Tar, user, None)
        };
        for (layer, diff_id) in layers.iter().zip(&diff_ids) {
            super::reference::validate_digest(&layer.digest)
                .and_then(|_| super::reference::validate_digest(diff_id))
                .map_err(|m| fail(FailureKind::BadContent, format!("layer {}: {m}", layer.digest)))?;
        }

        let _lease = self.store.lease(&diff_ids);
        let jobs: Vec<(OciDescriptor, String)> = layers.iter().cloned().zip(diff_ids.iter().cloned()).collect();
        let reference = &reference;
        futures::stream::iter(jobs)
            .map(|(desc, diff_id)| async move { self.fetch_layer(client, reference, &desc, &diff_id, content).await })
            .buffer_unordered(self.config.pull.max_concurrent_layers)
            .try_collect::<Vec<()>>()
            .await?;

        let io_fail = |e: std::io::Error| fail(FailureKind::Unreachable, format!("writing to the image store: {e}"));
        let mut manifests = Vec::new();
        for (digest, raw) in r.documents {
            self.store.write_blob(&digest, raw).await.map_err(io_fail)?;
            manifests.push(digest);
        }
        self.store.write_blob(&cfg_desc.digest, config_raw).await.map_err(io_fail)?;
        let size = cfg_desc.size.max(0) as u64 + layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
        let record = ImageRecord {
            id: cfg_desc.digest.clone(),
            repo_tags: name.tagged().into_iter().collect(),
            repo_digests: vec![name.with_digest(&r.top_digest)],
            manifests,
            layers: diff_ids,
            size,
            user,
            annotations: r.manifest.annotations.unwrap_or_default(),
            wasm,
        };
        self.store.put_image(record).await.map_err(io_fail)?;
        Ok(cfg_desc.digest.clone())
    }

    async fn fetch_layer(
        &self,
        client: &Client,
        reference: &Reference,
        desc: &OciDescriptor,
        diff_id: &str,
        content: Content,
    ) -> Result<(), Failure> {
        let _guard = self.store.lock_layer(diff_id).await;
        if self.store.layer(diff_id).is_some() {
            return Ok(());
        }
        let compression = match content {
            Content::Wasm => None,
            Content::Tar => Some(
                Compression::from_media_type(&desc.media_type)
                    .ok_or_else(|| fail(FailureKind::Unsupported, format!("layer media type {:?}", desc.media_type)))?,
            ),
        };
        let sized = client.pull_blob_stream(reference, desc).await.map_err(classify)?;
        let tmp = self.store.temp_dir().map_err(|e| fail(FailureKind::Unreachable, format!("image store: {e}")))?;
        // If this future is dropped (pull timeout), the unpack thread stops at
        // its next read and deletes its temp dir.
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = SetOnDrop(cancelled.clone());
        let reader = Cancellable { inner: SyncIoBridge::new(StreamReader::new(sized.stream)), cancelled };
        let (digest, diff, dest) = (desc.digest.clone(), diff_id.to_string(), TempDir(Some(tmp)));
        let started = std::time::Instant::now();
        let (stats, dest) = tokio::task::spawn_blocking(move || {
            let path = dest.0.as_deref().expect("temp dir is set until committed");
            let stats = match compression {
                Some(c) => unpack::apply_layer(reader, c, &digest, Some(&diff), path),
                None => wasm::store_binary(reader, &digest, path),
            };
            stats.map(|stats| (stats, dest))
        })
        .await
        .map_err(|e| fail(FailureKind::Unreachable, format!("layer worker: {e}")))?
        .map_err(|e| layer_failure(&desc.digest, e))?;
        tracing::debug!(layer = %desc.digest, bytes = stats.bytes, elapsed_ms = started.elapsed().as_millis() as u64, "layer unpacked");
        let tmp = dest.0.as_deref().expect("temp dir is set until committed");
        let committed = self.store.commit_layer(diff_id, &desc.digest, tmp, stats.bytes, stats.inodes).await;
        committed.map_err(|e| fail(FailureKind::Unreachable, format!("image store: {e}")))?;
        dest.keep();
        self.metrics.downloaded(desc.size.max(0) as u64);
        Ok(())
    }
}

/// What a manifest's layers hold.
#[derive(Debug, Clone, Copy)]
enum Content {
    /// Tar changesets, compressed as the media type says.
    Tar,
    /// A Wasm OCI artifact's module or component.
    Wasm,
}

/// A container image's diff IDs (checked against the manifest's layers) and user, from its config.
fn image_layers(config_raw: &[u8], digest: &str, layers: &[OciDescriptor]) -> Result<(Vec<String>, String), Failure> {
    let config: serde_json::Value = serde_json::from_slice(config_raw)
        .map_err(|e| fail(FailureKind::BadContent, format!("image config {digest} is not JSON: {e}")))?;
    if let Some(os) = config.get("os").and_then(|v| v.as_str()) {
        if os != "linux" {
            return Err(fail(FailureKind::Unsupported, format!("image is for os {os:?}, not linux")));
        }
    }
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(fail(
            FailureKind::BadContent,
            format!("image config lists {} diff IDs but the manifest has {} layers", diff_ids.len(), layers.len()),
        ));
    }
    if let Some(layer) = layers.iter().find(|l| Compression::from_media_type(&l.media_type).is_none()) {
        let hint = if wasm::LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) {
            format!(" (a Wasm OCI artifact needs config media type {})", wasm::CONFIG_MEDIA_TYPE)
        } else {
            String::new()
        };
        return Err(fail(
            FailureKind::Unsupported,
            format!("layer {} has media type {:?}{hint}", layer.digest, layer.media_type),
        ));
    }
    let user = config.pointer("/config/User").and_then(|v| v.as_str()).unwrap_or("").to_string();
    Ok((diff_ids, user))
}

/// A layer failure: a broken connection is retryable, content that fails
/// its checks is not.
fn layer_failure(digest: &str, e: UnpackError) -> Failure {
    let kind = match &e {
        UnpackError::Read(io) if io.get_ref().is_none_or(|inner| !inner.is::<DigestError>()) => {
            FailureKind::Unreachable
        }
        _ => FailureKind::BadContent,
    };
    fail(kind, format!("layer {digest}: {e}"))
}

/// An unpack temp dir, deleted on drop unless kept.
struct TempDir(Option<std::path::PathBuf>);

impl TempDir {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = remove_path(&p) {
                tracing::warn!(dir = %p.display(), error = %e, "removing unpack temp dir failed");
            }
        }
    }
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A reader that fails once its pull has been given up.
struct Cancellable<R> {
    inner: R,
    cancelled: Arc<AtomicBool>,
}

impl<R: std::io::Read> std::io::Read for Cancellable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: readers retry that, forever.
            return Err(std::io::Error::other("pull cancelled"));
        }
        self.inner.read(buf)
    }
}

enum Document {
    Index(OciImageIndex),
    Manifest(Box<OciImageManifest>),
}

fn parse_manifest(raw: &[u8]) -> Result<Document, Failure> {
    let value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| fail(FailureKind::BadContent, format!("manifest is not JSON: {e}")))?;
    if value.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1) {
        return Err(fail(FailureKind::Unsupported, "docker schema 1 manifests are deprecated and not supported"));
    }
    let media = value.get("mediaType").and_then(|v| v.as_str()).unwrap_or("");
    let is_index = media.contains("index") || media.contains("manifest.list") || value.get("manifests").is_some();
    let bad = |e: serde_json::Error| fail(FailureKind::BadContent, format!("malformed manifest: {e}"));
    if is_index {
        serde_json::from_value(value).map(Document::Index).map_err(bad)
    } else {
        serde_json::from_value(value).map(|m| Document::Manifest(Box::new(m))).map_err(bad)
    }
}

fn check_digest(data: &[u8], digest: &str) -> Result<(), Failure> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    if actual != digest {
        return Err(fail(FailureKind::BadContent, format!("digest mismatch: expected {digest}, got {actual}")));
    }
    Ok(())
}

/// GOARCH-style name and variant of the host.
pub fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

fn choose_platform(index: &OciImageIndex) -> Result<String, Failure> {
    let (arch, variant) = host_platform();
    let candidates: Vec<_> = index
        .manifests
        .iter()
        .filter(|m| {
            m.platform.as_ref().is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
        })
        .collect();
    let exact = candidates.iter().find(|m| {
        let v = m.platform.as_ref().and_then(|p| p.variant.as_deref());
        v.is_none() || v == variant
    });
    // A Wasm artifact runs on any host: the fallback when no linux/<arch> image is offered.
    let wasm =
        || index.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.architecture.to_string() == "wasm"));
    exact.or(candidates.first()).copied().or_else(wasm).map(|m| m.digest.clone()).ok_or_else(|| {
        let offered: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|m| m.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
            .collect();
        fail(FailureKind::Unsupported, format!("no linux/{arch} image in the index (it has: {})", offered.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `data` 512 bytes a read, and cancels once half of it is out.
    struct CancelHalfway {
        data: Vec<u8>,
        at: usize,
        cancelled: Arc<AtomicBool>,
    }

    impl std::io::Read for CancelHalfway {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(512).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            if self.at >= self.data.len() / 2 {
                self.cancelled.store(true, Ordering::Relaxed);
            }
            Ok(n)
        }
    }

    #[test]
    fn a_cancelled_unpack_fails_instead_of_retrying() {
        let mut tar = tar::Builder::new(Vec::new());
        let content: Vec<u8> = (0..64 << 10).map(|i| (i * 7 % 251) as u8).collect();
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "file", &content[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        let data = gz.finish().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let cancelled = Arc::new(AtomicBool::new(false));
        let reader = Cancellable { inner: CancelHalfway { data, at: 0, cancelled: cancelled.clone() }, cancelled };
        let path = dest.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        // On its own thread: a reader that retries the cancellation spins forever.
        std::thread::spawn(move || {
            let digest = format!("sha256:{}", "0".repeat(64));
            let _ = tx.send(unpack::apply_layer(reader, Compression::Gzip, &digest, None, &path).map(|_| ()));
        });
        let result = rx.recv_timeout(Duration::from_secs(20)).expect("the unpack kept reading a cancelled pull");
        let err = result.expect_err("a cancelled pull unpacked");
        assert!(format!("{err}").contains("pull cancelled"), "{err}");
    }

    #[test]
    fn manifests_parse_and_reject() {
        assert!(matches!(parse_manifest(b"<html>"), Err(Failure { kind: FailureKind::BadContent, .. })));
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1}"#),
            Err(Failure { kind: FailureKind::Unsupported, .. })
        ));
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"s390x"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        let Ok(Document::Index(index)) = parse_manifest(idx) else { panic!("index not parsed") };
        let want = match host_platform().0 {
            "amd64" => "sha256:bb",
            "arm64" => "sha256:cc",
            _ => return,
        };
        assert_eq!(choose_platform(&index).ok().as_deref(), Some(want));
        let wasm = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"s390x"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:dd","size":1,"platform":{"os":"wasip1","architecture":"wasm"}}]}"#;
        let Ok(Document::Index(index)) = parse_manifest(wasm) else { panic!("index not parsed") };
        if host_platform().0 != "s390x" {
            assert_eq!(choose_platform(&index).ok().as_deref(), Some("sha256:dd"));
        }
    }

    #[test]
    fn digest_check() {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(b"x")));
        assert!(check_digest(b"x", &d).is_ok());
        assert!(check_digest(b"y", &d).is_err());
    }
}
