//! Integration-test harness: a real `docker-registry`, OCI images built in
//! Rust and pushed over the registry HTTP API, and the real `cricket serve`
//! driven through a tonic CRI client on its unix socket.
//!
//! Every child process is killed when its owner drops (and, as a safety net,
//! when the test thread that started it exits: PR_SET_PDEATHSIG).
//!
//! Use `#[tokio::test(flavor = "multi_thread")]`: `Daemon` stops cricket
//! synchronously, and on a current-thread runtime the client's connection
//! tasks could not answer the server's graceful-shutdown handshake meanwhile.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1 as cri;
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::EntryType;
use tonic::transport::Channel;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// GOARCH name of the host, as image configs spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Installs `package` with apt-get when `binary` is missing (the tests run as root in CI).
fn ensure_installed(binaries: &[&str], package: &str) -> PathBuf {
    static APT: Mutex<()> = Mutex::new(());
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    let found = || binaries.iter().map(PathBuf::from).find(|p| p.exists());
    if let Some(p) = found() {
        return p;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let mut status = install();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        // Package lists may be missing on a fresh machine.
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        status = install();
    }
    found().unwrap_or_else(|| panic!("{binaries:?} missing and `apt-get install -y {package}` failed: {status:?}"))
}

pub fn busybox_path() -> PathBuf {
    ensure_installed(&["/bin/busybox", "/usr/bin/busybox"], "busybox-static")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("crk").tempdir().expect("temp dir")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A 127.0.0.1 port that is bound but never listens: connecting is refused,
/// and nothing else can take the port while this lives.
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor we own, with a correctly sized sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(socket.as_raw_fd(), sa, len), 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::getsockname(socket.as_raw_fd(), sa, &mut len), 0);
        ClosedPort { _socket: socket, port: u16::from_be(addr.sin_port) }
    }
}

/// Spawns with PR_SET_PDEATHSIG, so a killed test process leaves nothing behind.
fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

// ---------------------------------------------------------------------------
// Registry

pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Registry {
    /// Starts `docker-registry` on a free 127.0.0.1 port with storage in a temp dir.
    pub async fn start() -> Registry {
        let binary = ensure_installed(&["/usr/bin/docker-registry"], "docker-registry");
        let http = http();
        let mut last_log = String::new();
        // The port is free when picked but may be taken before the registry binds it: retry.
        for _ in 0..3 {
            let dir = tempdir();
            let port = free_port();
            let config = dir.path().join("config.yml");
            let storage = dir.path().join("storage");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: cricket-tests\n",
                    storage.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = spawn(
                Command::new(&binary)
                    .arg("serve")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            )
            .expect("spawn docker-registry");
            let mut reg = Registry { child, port, dir, http: http.clone() };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if reg.child.try_wait().unwrap().is_some() {
                    break;
                }
                let url = format!("http://127.0.0.1:{port}/v2/");
                if reg.http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                    return reg;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last_log = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
        }
        panic!("docker-registry did not start; last log:\n{last_log}");
    }

    /// `127.0.0.1:<port>`, the registry host in image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage_dir().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Uploads a blob (POST an upload, then PUT it whole) and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = self.http.post(self.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 202, "start upload to {repo}: {:?}", resp.text().await);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with('/') { self.url(&location) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .http
            .put(format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "upload {digest} to {repo}: {:?}", resp.text().await);
        digest
    }

    /// Puts a manifest (or index) under a tag or digest; returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let resp = self
            .http
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "push manifest {repo}:{reference}: {:?}", resp.text().await);
        let digest = sha256(body);
        let header = resp.headers().get("docker-content-digest").map(|h| h.to_str().unwrap().to_string());
        assert_eq!(header.as_deref(), Some(digest.as_str()), "registry digest for {repo}:{reference}");
        digest
    }

    /// Pushes layers, config and manifest; the manifest goes under `reference` (a tag or its own digest).
    pub async fn push_image(&self, repo: &str, reference: &str, image: &Image) -> Pushed {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob).await;
        }
        let config = image.config();
        let config_digest = self.push_blob(repo, &config).await;
        let manifest = image.manifest(&config);
        let media_type = if image.docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        let reference = if reference.is_empty() { sha256(&manifest) } else { reference.to_string() };
        let manifest_digest = self.push_manifest(repo, &reference, media_type, &manifest).await;
        Pushed {
            manifest_digest,
            manifest_size: manifest.len(),
            config_digest,
            size: (config.len() + image.layers.iter().map(|l| l.blob.len()).sum::<usize>()) as u64,
            media_type: media_type.to_string(),
            arch: image.arch.clone(),
        }
    }

    /// Pushes an OCI index over already pushed manifests; returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, manifests: &[&Pushed]) -> String {
        let entries: Vec<_> = manifests
            .iter()
            .map(|p| {
                json!({
                    "mediaType": p.media_type,
                    "digest": p.manifest_digest,
                    "size": p.manifest_size,
                    "platform": {"os": "linux", "architecture": p.arch},
                })
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        self.push_manifest(repo, tag, OCI_INDEX, &serde_json::to_vec(&index).unwrap()).await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest_digest: String,
    pub manifest_size: usize,
    /// The image ID cricket must report.
    pub config_digest: String,
    /// Config plus compressed layers: what CRI reports as the image size.
    pub size: u64,
    pub media_type: String,
    pub arch: String,
}

// ---------------------------------------------------------------------------
// Images

/// A tar stream built entry by entry, with fixed owner and mtime so equal
/// content always gives equal digests.
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    pub fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    pub fn dir(self, path: &str, mode: u32) -> Tar {
        self.dir_owned(path, mode, 0)
    }

    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64) -> Tar {
        let mut h = Tar::header(EntryType::Directory, mode, uid);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Tar {
        let mut h = Tar::header(EntryType::Regular, mode, 0);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = Tar::header(EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = Tar::header(EntryType::Link, 0o755, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry with raw name bytes, for hostile names `tar::Builder` refuses ("..").
    pub fn raw(mut self, name: &[u8], kind: EntryType, data: &[u8]) -> Tar {
        let mut h = Tar::header(kind, 0o644, 0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub compression: Compression,
    /// Digest of the blob as stored in the registry.
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Layer {
        let blob = match compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(&tar[..], 1).unwrap(),
        };
        Layer { digest: sha256(&blob), diff_id: sha256(&tar), blob, compression }
    }

    fn media_type(&self, docker: bool) -> &'static str {
        match (docker, self.compression) {
            (false, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (false, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (false, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (true, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (true, Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (true, Compression::Zstd) => panic!("docker schema2 has no zstd layers"),
        }
    }
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\napp:x:1234:\n";

/// The busybox base layer (gzip): /bin/busybox, applets as hard and symbolic
/// links, /etc/passwd and /etc/group with user `app` (1234). Built once per process.
pub fn busybox_layer() -> Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            let busybox = std::fs::read(busybox_path()).unwrap();
            let tar = Tar::new()
                .dir("bin", 0o755)
                .file("bin/busybox", 0o755, &busybox)
                .hardlink("bin/ls", "bin/busybox")
                .hardlink("bin/cat", "bin/busybox")
                .hardlink("bin/sleep", "bin/busybox")
                .hardlink("bin/grep", "bin/busybox")
                .symlink("bin/sh", "busybox")
                .symlink("bin/echo", "busybox")
                .dir("etc", 0o755)
                .file("etc/passwd", 0o644, PASSWD.as_bytes())
                .file("etc/group", 0o644, GROUP.as_bytes())
                .dir("home", 0o755)
                .dir_owned("home/app", 0o750, 1234)
                .dir("tmp", 0o1777)
                .finish();
            Layer::new(tar, Compression::Gzip)
        })
        .clone()
}

/// A small gzip layer holding `/etc/marker` with `text`: a layer of its own for each distinct text.
pub fn marker_layer(text: &str, compression: Compression) -> Layer {
    Layer::new(Tar::new().dir("etc", 0o755).file("etc/marker", 0o644, text.as_bytes()).finish(), compression)
}

#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub user: String,
    pub arch: String,
    /// Docker schema2 manifest and media types instead of OCI.
    pub docker: bool,
    /// Extra keys of the config's `config` object (Entrypoint, StopSignal, Volumes…).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Image {
    pub fn new(layers: Vec<Layer>) -> Image {
        Image { layers, user: String::new(), arch: host_arch().to_string(), docker: false, extra: Default::default() }
    }

    /// Sets `key` in the image config's `config` object.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Image {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn user(mut self, user: &str) -> Image {
        self.user = user.to_string();
        self
    }

    pub fn arch(mut self, arch: &str) -> Image {
        self.arch = arch.to_string();
        self
    }

    pub fn docker(mut self) -> Image {
        self.docker = true;
        self
    }

    pub fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut inner = json!({"User": self.user, "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"});
        inner.as_object_mut().unwrap().extend(self.extra.clone());
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.arch,
            "os": "linux",
            "config": inner,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        serde_json::to_vec(&config).unwrap()
    }

    pub fn manifest(&self, config: &[u8]) -> Vec<u8> {
        let (media_type, config_type) = if self.docker {
            (DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json")
        } else {
            (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json")
        };
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type(self.docker), "digest": l.digest, "size": l.blob.len()}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": sha256(config), "size": config.len()},
            "layers": layers,
        });
        serde_json::to_vec(&manifest).unwrap()
    }
}

// ---------------------------------------------------------------------------
// Daemon

pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub run: PathBuf,
    pub config: PathBuf,
    /// The CNI config dir: empty, or holding the [`TestNet`] given to [`Daemon::start_with_net`].
    pub cni_dir: PathBuf,
    /// host-local's `dataDir` for a [`TestNet`].
    pub ipam_dir: PathBuf,
    env: Vec<(String, String)>,
}

/// TOML marking `host` as a plain-HTTP registry.
pub fn insecure(host: &str) -> String {
    format!("[registries.hosts.\"{host}\"]\ninsecure = true\n")
}

impl Daemon {
    /// Starts `cricket serve` with `insecure_hosts` reachable over plain HTTP and
    /// `extra_toml` (tables only) appended to the config.
    pub async fn start(insecure_hosts: &[&str], extra_toml: &str) -> Daemon {
        Daemon::start_with_env(insecure_hosts, extra_toml, &[]).await
    }

    pub async fn start_with_env(insecure_hosts: &[&str], extra_toml: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full(insecure_hosts, extra_toml, env, None).await
    }

    /// Starts `cricket serve` with `net` as its CNI network: the config in `<dir>/net.d`,
    /// plugins from /usr/lib/cni, host-local's data in `<dir>/cni-ipam`.
    pub async fn start_with_net(net: &TestNet, extra_toml: &str) -> Daemon {
        Daemon::start_full(&[], extra_toml, &[], Some(net)).await
    }

    async fn start_full(
        insecure_hosts: &[&str],
        extra_toml: &str,
        env: &[(&str, &str)],
        net: Option<&TestNet>,
    ) -> Daemon {
        let dir = tempdir();
        let d = dir.path();
        let (socket, root, run, ipam_dir) = (d.join("cricket.sock"), d.join("root"), d.join("run"), d.join("cni-ipam"));
        let (cni_dir, bin_dir) = match net {
            None => (d.join("cni"), d.join("cni-bin")),
            Some(_) => (d.join("net.d"), PathBuf::from(CNI_PLUGINS)),
        };
        for p in [&root, &run, &cni_dir, &d.join("config.d")] {
            std::fs::create_dir_all(p).unwrap();
        }
        if let Some(net) = net {
            std::fs::write(cni_dir.join("10-test.conflist"), net.conflist(&ipam_dir)).unwrap();
        }
        let mut toml = format!(
            "socket = \"{}\"\nroot = \"{}\"\nrun = \"{}\"\n[log]\nlevel = \"info\"\n[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{}\"]\n",
            socket.display(),
            root.display(),
            run.display(),
            cni_dir.display(),
            bin_dir.display(),
        );
        for host in insecure_hosts {
            toml.push_str(&insecure(host));
        }
        toml.push_str(extra_toml);
        // Daemons run side by side: none takes the default metrics port unless a test asks.
        if !extra_toml.contains("[metrics]") {
            toml.push_str("[metrics]\naddress = \"\"\n");
        }
        let config = d.join("cricket.toml");
        std::fs::write(&config, toml).unwrap();
        let mut daemon = Daemon {
            dir,
            child: None,
            socket,
            root,
            run,
            config,
            cni_dir,
            ipam_dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        daemon.spawn().await;
        daemon
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("cricket.log")
    }

    /// Everything the daemon wrote to stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = cricket();
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--config-dir")
            .arg(self.dir.path().join("config.d"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(spawn(&mut cmd).expect("spawn cricket"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cricket exited at start ({status}); log:\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "cricket socket not ready after 30s; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops the daemon cleanly (asserting it exits 0 on SIGTERM) and starts it again on the same dirs.
    pub async fn restart(&mut self) {
        let status = self.stop(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "cricket did not stop cleanly ({status:?}); log:\n{}", self.log());
        assert!(!self.socket.exists(), "socket left behind after a clean stop");
        self.spawn().await;
    }

    pub async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .expect("connect to the cricket socket")
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    // --- CRI shorthands ---

    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest { image: Some(spec(image)), ..Default::default() };
        self.images().await.pull_image(req).await.map(|r| r.into_inner().image_ref)
    }

    pub async fn image_status(&self, image: &str) -> Option<cri::Image> {
        let req = cri::ImageStatusRequest { image: Some(spec(image)), verbose: false };
        self.images().await.image_status(req).await.expect("ImageStatus").into_inner().image
    }

    /// Verbose ImageStatus: the image and the JSON in info["info"].
    pub async fn image_info(&self, image: &str) -> (cri::Image, serde_json::Value) {
        let req = cri::ImageStatusRequest { image: Some(spec(image)), verbose: true };
        let resp = self.images().await.image_status(req).await.expect("ImageStatus").into_inner();
        let info = serde_json::from_str(resp.info.get("info").expect("verbose info[\"info\"]")).expect("info is JSON");
        (resp.image.expect("image present"), info)
    }

    pub async fn list_images(&self) -> Vec<cri::Image> {
        let mut images = self
            .images()
            .await
            .list_images(cri::ListImagesRequest::default())
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        images.sort_by(|a, b| a.id.cmp(&b.id));
        images
    }

    pub async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveImageRequest { image: Some(spec(image)) };
        self.images().await.remove_image(req).await.map(|_| ())
    }

    pub async fn fs_info(&self) -> cri::FilesystemUsage {
        let resp =
            self.images().await.image_fs_info(cri::ImageFsInfoRequest {}).await.expect("ImageFsInfo").into_inner();
        assert_eq!(resp.image_filesystems.len(), 1, "{resp:?}");
        resp.image_filesystems.into_iter().next().unwrap()
    }

    // --- the store on disk ---

    pub fn store(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn index(&self) -> serde_json::Value {
        let data = std::fs::read(self.store().join("index.json")).expect("index.json");
        serde_json::from_slice(&data).expect("index.json is JSON")
    }

    /// The snapshot directory holding a layer, from index.json.
    pub fn snapshot(&self, diff_id: &str) -> Option<PathBuf> {
        let n = self.index()["layers"][diff_id]["snapshot"].as_u64()?;
        Some(self.store().join("snapshots").join(n.to_string()))
    }

    pub fn snapshot_dirs(&self) -> BTreeSet<String> {
        names(&self.store().join("snapshots"))
    }

    pub fn blobs(&self) -> BTreeSet<String> {
        names(&self.store().join("blobs/sha256"))
    }

    pub fn tmp_entries(&self) -> BTreeSet<String> {
        names(&self.store().join("tmp"))
    }

    // --- pods ---

    /// The daemon's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn run_pod(&self, config: cri::PodSandboxConfig, handler: &str) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: handler.to_string() };
        self.runtime().await.run_pod_sandbox(req).await.map(|r| r.into_inner().pod_sandbox_id)
    }

    pub async fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false };
        let resp = self.runtime().await.pod_sandbox_status(req).await?.into_inner();
        Ok(resp.status.expect("PodSandboxStatus has a status"))
    }

    /// Verbose PodSandboxStatus: the status and the JSON in info["info"].
    pub async fn pod_info(&self, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: true };
        let resp = self.runtime().await.pod_sandbox_status(req).await.expect("PodSandboxStatus").into_inner();
        let info = serde_json::from_str(resp.info.get("info").expect("verbose info[\"info\"]")).expect("info is JSON");
        (resp.status.expect("PodSandboxStatus has a status"), info)
    }

    /// The JSON in a verbose ContainerStatus's info["info"].
    pub async fn container_info(&self, id: &str) -> serde_json::Value {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: true };
        let resp = self.runtime().await.container_status(req).await.expect("ContainerStatus").into_inner();
        serde_json::from_str(resp.info.get("info").expect("verbose info[\"info\"]")).expect("info is JSON")
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime().await.stop_pod_sandbox(req).await.map(|_| ())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime().await.remove_pod_sandbox(req).await.map(|_| ())
    }

    pub async fn create_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        self.runtime().await.create_container(req).await.map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest { container_id: id.to_string() };
        self.runtime().await.start_container(req).await.map(|_| ())
    }

    /// ListPodSandbox; IDs in the order cricket answers.
    pub async fn list_pods(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let req = cri::ListPodSandboxRequest { filter };
        self.runtime().await.list_pod_sandbox(req).await.expect("ListPodSandbox").into_inner().items
    }

    /// Mounts under the run dir (pinned namespaces, shm): mount point and filesystem type.
    pub fn run_mounts(&self) -> Vec<(PathBuf, String)> {
        mounts().into_iter().filter(|(m, _)| m.starts_with(&self.run)).collect()
    }

    /// Entries of `<root>/sandboxes` (persistent) and `<run>/sandboxes` (volatile).
    pub fn sandbox_dirs(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        (names(&self.root.join("sandboxes")), names(&self.run.join("sandboxes")))
    }

    /// Live processes other than the daemon whose command line names the daemon's
    /// dir: namespace helpers, and pod-init of pods with a pinned namespace.
    pub fn helper_pids(&self) -> Vec<i32> {
        let dir = self.dir().to_string_lossy().into_owned();
        let me = self.pid().map(|p| p as i32);
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if Some(pid) != me && is_running(pid) && String::from_utf8_lossy(&cmdline).contains(&dir) {
                pids.push(pid);
            }
        }
        pids
    }

    /// This daemon's processes that keep a wasm program loaded (`cricket wasm-preload`).
    pub fn preloader_pids(&self) -> Vec<i32> {
        let preloading = |pid: &i32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"cricket\0wasm-preload\0"))
        };
        self.helper_pids().into_iter().filter(preloading).collect()
    }

    /// Monitors and helpers, without the processes keeping wasm programs loaded.
    pub fn helpers_but_preloaders(&self) -> Vec<i32> {
        let preloaders = self.preloader_pids();
        self.helper_pids().into_iter().filter(|p| !preloaders.contains(p)).collect()
    }

    /// Addresses host-local holds for `net` (one file per address in its dataDir).
    pub fn ipam_ips(&self, net: &TestNet) -> BTreeSet<String> {
        let dir = self.ipam_dir.join(&net.name);
        names(&dir).into_iter().filter(|n| n.parse::<std::net::IpAddr>().is_ok()).collect()
    }

    /// What a failed test may leave: helpers and pod inits are killed, pinned namespaces
    /// and shm unmounted, pod cgroups removed. A no-op when everything was cleaned.
    fn clean_leftovers(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for pid in self.helper_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut cgroups = Vec::new();
        for id in names(&self.root.join("sandboxes")) {
            let state = std::fs::read(self.root.join("sandboxes").join(&id).join("state.json")).unwrap_or_default();
            let state: serde_json::Value = serde_json::from_slice(&state).unwrap_or_default();
            let (pid, start) = (state["init"]["pid"].as_i64(), state["init"]["start_time"].as_u64());
            if let (Some(pid), Some(start)) = (pid, start) {
                if proc_start_time(pid as i32) == Some(start) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            cgroups.extend(pod_cgroup_dirs(&id));
        }
        let mut points: Vec<PathBuf> =
            mounts().into_iter().map(|(m, _)| m).filter(|m| m.starts_with(self.dir())).collect();
        points.sort();
        for m in points.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in cgroups {
            remove_cgroup_tree(&dir);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        self.clean_leftovers();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("---- cricket log ({}) ----\n{}\n----", self.log_path().display(), tail.join("\n"));
        }
    }
}

pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.to_string(), ..Default::default() }
}

/// Entry names of a directory; empty when it does not exist.
pub fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The cricket binary with no CRICKET_* variables inherited from the test environment.
pub fn cricket() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cricket"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CRICKET_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command to completion with a deadline, killing it on timeout.
pub fn run(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped())).expect("spawn");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{cmd:?} still running after {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// An extended attribute of a path (not following symlinks).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer valid for its length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| buf[..rc as usize].to_vec())
}

/// One canned answer of a [`fake_registry`].
#[derive(Clone)]
pub struct Route {
    /// Matches requests whose path ends with this.
    pub path_suffix: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Send only this many body bytes, then stall for `STALL` and hang up.
    pub stall_after: Option<usize>,
}

pub const STALL: Duration = Duration::from_secs(3);

impl Route {
    pub fn new(path_suffix: &str, content_type: &str, body: &[u8]) -> Route {
        Route {
            path_suffix: path_suffix.into(),
            content_type: content_type.into(),
            body: body.to_vec(),
            stall_after: None,
        }
    }
}

/// A fake registry on 127.0.0.1: `GET /v2/` answers 200, a request whose path
/// ends with a route's suffix gets that route's answer, anything else 404.
/// Runs until the test's runtime ends; returns its host.
pub async fn fake_registry(routes: Vec<Route>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request).lines().next().unwrap_or("").to_string();
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let route = routes.iter().find(|r| path.ends_with(&r.path_suffix));
                let (status, content_type, body, stall) = match route {
                    Some(r) => ("200 OK", r.content_type.as_str(), &r.body[..], r.stall_after),
                    None if path == "/v2/" => ("200 OK", "application/json", &b"{}"[..], None),
                    None => ("404 Not Found", "text/plain", &b""[..], None),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                if method != "HEAD" {
                    let _ = conn.write_all(&body[..stall.unwrap_or(body.len()).min(body.len())]).await;
                }
                let _ = conn.flush().await;
                if stall.is_some() {
                    tokio::time::sleep(STALL).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    host
}

/// Mounts of this (the daemon's) mount namespace: mount point and filesystem type.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            // "36 35 98:0 /root /mount/point options [optional fields] - fstype source super-options"
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((PathBuf::from(fields.get(4)?.replace("\\040", " ")), fields.get(sep + 1)?.to_string()))
        })
        .collect()
}

/// Mount points of the cgroup v1 hierarchies, controllers and named ones (name=systemd).
pub fn cgroup_v1_mounts() -> Vec<PathBuf> {
    mounts().into_iter().filter(|(_, fstype)| fstype == "cgroup").map(|(m, _)| m).collect()
}

/// The default pod cgroup of sandbox `id` in each hierarchy under /sys/fs/cgroup, where it exists:
/// `/sys/fs/cgroup/<hierarchy>/cricket/pod-<id>`.
pub fn pod_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    cgroup_dirs(&format!("cricket/pod-{id}"))
}

/// `/sys/fs/cgroup/<hierarchy>/<rel>` in each hierarchy where it exists (symlinked aliases skipped).
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Removes a cgroup dir and the cgroups under it, deepest first (best effort: retries
/// while killed processes leave).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state letter in /proc/<pid>/stat (R, S, Z...); None once the process is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Alive and not a zombie.
pub fn is_running(pid: i32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(19)?.parse().ok()
}

/// A namespace's identity as `readlink /proc/<pid>/ns/<kind>` gives it: `net:[4026531840]`.
pub fn ns_link(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).map(|p| p.display().to_string()).unwrap_or_default()
}

/// A RuntimeClass handler the tests run containers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// The built-in executor (the default handler, `""` in CRI).
    Linux,
    Runc,
    Crun,
}

pub const RUNC: &str = "/usr/sbin/runc";
pub const CRUN: &str = "/usr/bin/crun";

impl Handler {
    pub const ALL: [Handler; 3] = [Handler::Linux, Handler::Runc, Handler::Crun];

    /// The `runtime_handler` of RunPodSandbox.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Linux => "",
            Handler::Runc => "runc",
            Handler::Crun => "crun",
        }
    }

    /// Config tables declaring the OCI handlers (`runc`, `crun`), installing them when missing.
    pub fn all_toml() -> String {
        let runc = ensure_installed(&[RUNC], "runc");
        let crun = ensure_installed(&[CRUN], "crun");
        format!(
            "[runtimes.runc]\ntype = \"oci\"\npath = \"{}\"\n[runtimes.crun]\ntype = \"oci\"\npath = \"{}\"\n",
            runc.display(),
            crun.display()
        )
    }

    /// Why this handler can't create containers on this host, if it can't.
    /// crun (1.8) refuses hybrid cgroup hosts whose v2 tree has controllers:
    /// "cgroups in hybrid mode not supported, drop all controllers from cgroupv2".
    pub fn unusable(self) -> Option<String> {
        if self != Handler::Crun {
            return None;
        }
        let unified = Path::new("/sys/fs/cgroup/unified");
        let hybrid = mounts().iter().any(|(m, fstype)| m == unified && fstype == "cgroup2");
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
        (hybrid && !controllers.trim().is_empty()).then(|| {
            format!(
                "crun refuses hybrid cgroup hosts whose cgroup v2 tree has controllers \
                 ({}/cgroup.controllers lists {:?}); runs on pure v1 or v2 hosts",
                unified.display(),
                controllers.trim()
            )
        })
    }
}

/// A minimal pod: metadata (namespace `default`, uid `uid-<name>`, attempt 0), no Linux options.
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Pod networks

pub const CNI_PLUGINS: &str = "/usr/lib/cni";
/// Forwarding switches the bridge plugin turns on (for every network at once).
const FORWARDING: [&str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

/// Host settings shared by every [`TestNet`] of this process: saved when the
/// first one is made, put back when the last one goes.
struct SharedNet {
    users: usize,
    forwarding: Vec<Option<String>>,
    /// portmap's CNI-HOSTPORT-* chains were there before: leave them.
    hostport_chains_existed: bool,
    /// Subnets (second and third octets) taken by live TestNets.
    subnets: BTreeSet<(u8, u8)>,
}

static SHARED_NET: Mutex<SharedNet> = Mutex::new(SharedNet {
    users: 0,
    forwarding: Vec::new(),
    hostport_chains_existed: false,
    subnets: BTreeSet::new(),
});

fn shared_net() -> MutexGuard<'static, SharedNet> {
    SHARED_NET.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a command to completion (30 s limit): success, and stdout followed by stderr.
pub fn sh(args: &[&str]) -> (bool, String) {
    let out = run(Command::new(args[0]).args(&args[1..]), Duration::from_secs(30));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A CNI network of a test's own: bridge `crk<tag>`, a free `10.2xx.N.0/24`, ipMasq
/// and portmap, for [`Daemon::start_with_net`]. [`TestNet::finish`] checks and undoes
/// what it did to the host; dropping it undoes without checking.
pub struct TestNet {
    pub bridge: String,
    /// The CNI network name (also host-local's dir in the dataDir).
    pub name: String,
    pub subnet: String,
    /// `10.2xx.N.`: every address of the subnet starts with it.
    pub prefix: String,
    pub gateway: String,
    octets: (u8, u8),
    done: bool,
}

impl TestNet {
    pub fn new() -> TestNet {
        ensure_installed(&["/usr/lib/cni/bridge"], "containernetworking-plugins");
        ensure_installed(&["/usr/sbin/iptables"], "iptables");
        ensure_installed(&["/usr/bin/ping", "/bin/ping"], "iputils-ping");
        ensure_installed(&["/usr/bin/nsenter"], "util-linux");
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let in_use = format!("{}{}", sh(&["ip", "-4", "addr"]).1, sh(&["ip", "-4", "route", "show", "table", "all"]).1);
        let mut shared = shared_net();
        let (b, c) = (0..1000)
            .map(|_| (200 + rand::random::<u8>() % 50, rand::random::<u8>()))
            .find(|(b, c)| !shared.subnets.contains(&(*b, *c)) && !in_use.contains(&format!("10.{b}.{c}.")))
            .expect("a free 10.2xx.N.0/24");
        if shared.users == 0 {
            shared.forwarding = FORWARDING.iter().map(|p| std::fs::read_to_string(p).ok()).collect();
            shared.hostport_chains_existed = sh(&["iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]).0;
        }
        shared.users += 1;
        shared.subnets.insert((b, c));
        TestNet {
            bridge: format!("crk{tag}"),
            name: format!("crknet-{tag}"),
            subnet: format!("10.{b}.{c}.0/24"),
            prefix: format!("10.{b}.{c}."),
            gateway: format!("10.{b}.{c}.1"),
            octets: (b, c),
            done: false,
        }
    }

    /// The .conflist: bridge (gateway, ipMasq, hairpin) with host-local in `ipam_dir`, then portmap.
    pub fn conflist(&self, ipam_dir: &Path) -> String {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        })
        .to_string()
    }

    /// Interfaces enslaved to the bridge (the pods' host-side veths); empty without the bridge.
    pub fn veths(&self) -> BTreeSet<String> {
        let (ok, out) = sh(&["ip", "-o", "link", "show", "master", &self.bridge]);
        if !ok {
            return BTreeSet::new();
        }
        // "7: veth1a2b3c4d@if2: <BROADCAST,...> ..."
        out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_string()).collect()
    }

    /// iptables rules (all tables) naming this network's subnet or name.
    pub fn iptables_rules(&self) -> Vec<String> {
        let (ok, out) = sh(&["iptables-save"]);
        assert!(ok, "iptables-save: {out}");
        out.lines()
            .filter(|l| l.starts_with("-A ") && (l.contains(&self.prefix) || l.contains(&self.name)))
            .map(str::to_string)
            .collect()
    }

    /// The nat chains the plugins make for a sandbox: bridge's ipMasq chain and portmap's DNAT chain.
    pub fn chains(&self, sandbox_id: &str) -> [String; 2] {
        // containernetworking/plugins pkg/utils: prefix + hex(sha512(network name + container ID)), 28 chars.
        let hash = hex::encode(sha2::Sha512::digest(format!("{}{sandbox_id}", self.name)));
        [format!("CNI-{hash}")[..28].to_string(), format!("CNI-DN-{hash}")[..28].to_string()]
    }

    /// Which of these sandboxes' chains exist in the nat table.
    pub fn existing_chains(&self, sandbox_ids: &[String]) -> Vec<String> {
        let (_, out) = sh(&["iptables", "-t", "nat", "-S"]);
        let declared: BTreeSet<&str> = out.lines().filter_map(|l| l.strip_prefix("-N ")).collect();
        sandbox_ids.iter().flat_map(|id| self.chains(id)).filter(|c| declared.contains(c.as_str())).collect()
    }

    /// `ping -c1 -W2` from the host.
    pub fn ping(&self, ip: &str) -> bool {
        sh(&["ping", "-c1", "-W2", ip]).0
    }

    /// Asserts the host is clean of this network (no iptables rules naming it; its bridge
    /// deleted; when it is the last TestNet, forwarding and portmap's chains as before),
    /// cleaning up first either way.
    pub fn finish(mut self) {
        let rules = self.iptables_rules();
        let last = self.release();
        assert!(
            rules.is_empty(),
            "iptables rules of {} ({}) left behind:
{}",
            self.name,
            self.subnet,
            rules.join(
                "
"
            )
        );
        assert!(!sh(&["ip", "link", "show", "dev", &self.bridge]).0, "bridge {} still exists", self.bridge);
        if let Some((forwarding, hostport_chains_existed)) = last {
            for (path, before) in FORWARDING.iter().zip(&forwarding) {
                assert_eq!(&std::fs::read_to_string(path).ok(), before, "{path} restored");
            }
            if !hostport_chains_existed {
                let (_, nat) = sh(&["iptables", "-t", "nat", "-S"]);
                assert!(
                    !nat.contains("CNI-HOSTPORT-"),
                    "portmap chains left:
{nat}"
                );
            }
        }
    }

    /// Removes rules and chains naming this network, deletes the bridge; the last TestNet
    /// also restores forwarding and removes portmap's shared chains (unless they were there
    /// before). Returns what was restored when it was the last.
    fn release(&mut self) -> Option<(Vec<Option<String>>, bool)> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        let (prefix, name) = (self.prefix.clone(), self.name.clone());
        remove_nat_rules(
            |chain, rules| {
                chain.starts_with("CNI-")
                    && !chain.starts_with("CNI-HOSTPORT-")
                    && rules.iter().any(|r| r.contains(&prefix) || r.contains(&name))
            },
            |rule| rule.contains(&prefix) || rule.contains(&name),
        );
        sh(&["ip", "link", "del", &self.bridge]);
        let mut shared = shared_net();
        shared.users -= 1;
        shared.subnets.remove(&self.octets);
        if shared.users > 0 {
            return None;
        }
        for (path, value) in FORWARDING.iter().zip(&shared.forwarding) {
            if let Some(v) = value {
                let _ = std::fs::write(path, v);
            }
        }
        if !shared.hostport_chains_existed {
            remove_nat_rules(|chain, _| chain.starts_with("CNI-HOSTPORT-"), |_| false);
        }
        Some((shared.forwarding.clone(), shared.hostport_chains_existed))
    }
}

impl Default for TestNet {
    fn default() -> Self {
        TestNet::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.release();
    }
}

/// Deletes the nat chains `doomed(chain, its rules)` picks, with every rule jumping to them,
/// and the rules of other chains that `also(rule)` picks.
fn remove_nat_rules(doomed: impl Fn(&str, &[&str]) -> bool, also: impl Fn(&str) -> bool) {
    let (_, out) = sh(&["iptables", "-t", "nat", "-S"]);
    let chains: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("-N ").or_else(|| l.strip_prefix("-P ")?.split(' ').next()))
        .collect();
    let appended: Vec<(&str, &str)> =
        out.lines().filter_map(|l| l.strip_prefix("-A ")).filter_map(|r| r.split_once(' ')).collect();
    let rules_of =
        |chain: &str| -> Vec<&str> { appended.iter().filter(|(c, _)| *c == chain).map(|(_, r)| *r).collect() };
    let gone: Vec<&str> = chains.iter().copied().filter(|c| doomed(c, &rules_of(c))).collect();
    for chain in chains.iter().filter(|c| !gone.contains(c)) {
        for rule in rules_of(chain) {
            let target = rule.split_once(" -j ").and_then(|(_, t)| t.split_whitespace().next()).unwrap_or("");
            if gone.contains(&target) || also(rule) {
                // By spec, not number: other tests change these chains meanwhile. `-S` quotes
                // its output for a shell.
                sh(&["sh", "-c", &format!("iptables -t nat -D {chain} {rule}")]);
            }
        }
    }
    for op in ["-F", "-X"] {
        for chain in &gone {
            sh(&["iptables", "-t", "nat", op, chain]);
        }
    }
}
