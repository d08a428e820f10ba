//! Containers: create, start, stop and remove through a per-container
//! monitor, with state persisted so a restarted daemon picks them up again.
//!
//! Locking: the index (`inner`) is held only for map work; each container has
//! its own async lock for lifecycle operations, so a hung monitor blocks one
//! container, never every RPC.

mod exec;
mod lifecycle;
mod monitor_start;
mod process;
mod rootfs;
mod select;
mod spec;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupPath};
use crate::config::Config;
use crate::ids::{self, Lookup, Names};
use crate::image::{store::Lease, ImageError, Images};
use crate::metrics::ContainerCounters;
use crate::monitor::config::MonitorConfig;
use crate::runtime::features::HandlerFeatures;
pub use crate::sandbox::EventKind;
use crate::sandbox::{SandboxError, Sandboxes};
use crate::state;
pub use process::Proc;
pub use stats::{ContainerStats, PodStats};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container config: {0}")]
    Invalid(String),
    #[error("container name {name:?} is already reserved by container {holder}")]
    NameInUse { name: String, holder: String },
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container ID prefix {0:?} matches {1} containers")]
    Ambiguous(String, usize),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("pod sandbox {0} is not ready; containers can only be created in a ready pod")]
    SandboxNotReady(String),
    #[error("image {0:?} is not present; pull it first")]
    ImageNotFound(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("container spec: {0}")]
    Spec(#[from] crate::oci::SpecError),
    #[error("container {id} is {state}: {action} needs it {needed}")]
    WrongState { id: String, state: &'static str, action: &'static str, needed: &'static str },
    #[error("container cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("container rootfs: {0}")]
    Rootfs(std::io::Error),
    #[error("creating container: {0}")]
    Create(String),
    #[error("starting container {id}: {reason}")]
    Start { id: String, reason: String },
    #[error("container {id}: {reason}")]
    Monitor { id: String, reason: String },
    #[error("exec in container {id}: {reason}")]
    Exec { id: String, reason: String },
    #[error("image {image:?} is a Wasm OCI artifact: runtime handler {handler:?} (type {kind:?}) can't run it; use a handler of type \"wasm\"")]
    WasmImage { image: String, handler: String, kind: crate::config::HandlerKind },
    #[error("container {0} runs a WebAssembly module: there is no process to exec commands beside it")]
    NotExecutable(String),
    #[error("command in container {id} did not finish within {secs}s and was killed")]
    ExecTimeout { id: String, secs: i64 },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Created,
    Running,
    Exited,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Exited => "exited",
        }
    }
}

/// The identity the workload runs as, for ContainerStatus.user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub uid: i64,
    pub gid: i64,
    pub supplemental_groups: Vec<i64>,
}

/// Everything known about a container; persisted as `root/containers/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// The image as the request named it, its ID, and the digest reference it was pulled by.
    pub image_name: String,
    pub image_id: String,
    pub image_ref: String,
    /// Layer diff IDs the rootfs is built from (leased while the container exists).
    pub layers: Vec<String>,
    pub runtime_handler: String,
    pub phase: Phase,
    /// Nanoseconds since the epoch; 0 when it hasn't happened.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub monitor: Option<Proc>,
    pub init: Option<Proc>,
    pub cgroup: Option<CgroupPath>,
    /// The monitor's own cgroup, when the handler's `monitor_cgroup` gives one.
    #[serde(default)]
    pub monitor_cgroup: Option<CgroupPath>,
    /// Full path of the CRI log file, if the container has one.
    pub log_path: Option<PathBuf>,
    /// Resources as last applied (create or UpdateContainerResources).
    pub resources: Option<LinuxContainerResources>,
    /// Signal StopContainer sends first (the image's STOPSIGNAL, else SIGTERM).
    pub stop_signal: i32,
    pub user: Identity,
}

impl ContainerState {
    fn name_key(&self) -> String {
        name_key(&self.sandbox_id, &self.config)
    }
}

fn name_key(sandbox_id: &str, config: &ContainerConfig) -> String {
    let m = config.metadata.clone().unwrap_or_default();
    format!("{}/{}/{}", sandbox_id, m.name, m.attempt)
}

/// A container lifecycle change, for GetContainerEvents.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub kind: EventKind,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The container right after the change.
    pub container: ContainerState,
}

const EVENT_BUFFER: usize = 1024;

pub struct Container {
    op: tokio::sync::Mutex<()>,
    state: Mutex<ContainerState>,
    /// Flips to true once the exit is recorded.
    exited: tokio::sync::watch::Sender<bool>,
    /// Keeps the image layers on disk while the container exists.
    lease: Mutex<Option<Lease>>,
}

impl Container {
    fn new(st: ContainerState, lease: Option<Lease>) -> Arc<Container> {
        let exited = tokio::sync::watch::channel(st.phase == Phase::Exited).0;
        Arc::new(Container { op: Default::default(), state: Mutex::new(st), exited, lease: Mutex::new(lease) })
    }

    pub fn snapshot(&self) -> ContainerState {
        self.state.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Arc<Container>>,
    names: Names,
}

pub struct Containers {
    config: Arc<Config>,
    images: Arc<Images>,
    sandboxes: Arc<Sandboxes>,
    cgroups: Arc<cgroup::Manager>,
    inner: RwLock<Inner>,
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
    cpu_samples: stats::CpuSamples,
    counters: ContainerCounters,
    features: HandlerFeatures,
}

impl Containers {
    /// Loads persisted containers, reconciles them with their monitors, and
    /// starts watching the live ones.
    pub async fn open(
        config: Arc<Config>,
        images: Arc<Images>,
        sandboxes: Arc<Sandboxes>,
        cgroups: Arc<cgroup::Manager>,
        counters: ContainerCounters,
    ) -> Result<Arc<Containers>, ContainerError> {
        let events = tokio::sync::broadcast::channel(EVENT_BUFFER).0;
        let features = crate::runtime::features::probe(&config).await;
        let this = Arc::new(Containers {
            config,
            images,
            sandboxes,
            cgroups,
            inner: Default::default(),
            events,
            cpu_samples: Default::default(),
            counters,
            features,
        });
        this.recover().await?;
        Ok(this)
    }

    /// What each configured handler supports, by handler name (`default` for CRI's `""`).
    pub fn handler_features(&self) -> &HandlerFeatures {
        &self.features
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("containers").join(id)
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.config.run.join("containers").join(id)
    }

    fn persist(&self, st: &ContainerState) -> Result<(), ContainerError> {
        let path = self.state_dir(&st.id).join("state.json");
        let data = serde_json::to_vec(st).map_err(|e| ContainerError::Create(e.to_string()))?;
        state::write_volatile(&path, &data).map_err(io_err(&path))
    }

    pub fn get(&self, id_or_prefix: &str) -> Result<Arc<Container>, ContainerError> {
        let inner = self.inner.read().unwrap();
        match ids::resolve(id_or_prefix, inner.containers.keys()) {
            Lookup::Found(id) => Ok(inner.containers[&id].clone()),
            Lookup::NotFound => Err(ContainerError::NotFound(id_or_prefix.to_string())),
            Lookup::Ambiguous(n) => Err(ContainerError::Ambiguous(id_or_prefix.to_string(), n)),
        }
    }

    /// The container's OCI spec (its bundle's config.json), for verbose status.
    pub fn spec_of(&self, id: &str) -> Option<serde_json::Value> {
        let path = self.state_dir(id).join("config.json");
        state::read_json(&path).ok().flatten()
    }

    pub fn list(&self) -> Vec<ContainerState> {
        self.inner.read().unwrap().containers.values().map(|c| c.snapshot()).collect()
    }

    pub fn in_sandbox(&self, sandbox_id: &str) -> Vec<ContainerState> {
        self.list().into_iter().filter(|c| c.sandbox_id == sandbox_id).collect()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    fn publish(&self, kind: EventKind, st: &ContainerState) {
        let _ = self.events.send(ContainerEvent { kind, at: state::now_nanos(), container: st.clone() });
    }

    fn is_current(&self, c: &Arc<Container>) -> bool {
        let id = c.state.lock().unwrap().id.clone();
        self.inner.read().unwrap().containers.get(&id).is_some_and(|x| Arc::ptr_eq(x, c))
    }

    /// Rebuilds the index from disk: running containers get their exit
    /// watchers back; those whose monitor died meanwhile take its exit record.
    async fn recover(self: &Arc<Self>) -> Result<(), ContainerError> {
        let root = self.config.root.join("containers");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let mut known = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let dir = entry.map_err(io_err(&root))?.path();
            let path = dir.join("state.json");
            let st = match state::read_json::<ContainerState>(&path) {
                Ok(Some(st)) => st,
                Ok(None) => {
                    // Never persisted: a create the daemon died in.
                    tracing::warn!(dir = %dir.display(), "removing an unfinished container");
                    self.cleanup_unfinished(&dir).await;
                    continue;
                }
                Err(e) => {
                    // Torn by a power loss (records aren't fsynced): with its run dir gone
                    // too, nothing of it runs, so it goes like an unfinished create.
                    let id = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    if e.kind() == std::io::ErrorKind::InvalidData && !self.run_dir(&id).exists() {
                        tracing::warn!(file = %path.display(), error = %e, "removing a container whose state is torn");
                        self.cleanup_unfinished(&dir).await;
                    } else {
                        tracing::error!(file = %path.display(), error = %e, "unreadable container state; leaving it alone");
                    }
                    continue;
                }
            };
            known.insert(st.id.clone());
            let lease = self.images.lease(&st.layers);
            let key = st.name_key();
            let live = st.phase != Phase::Exited;
            let c = Container::new(st.clone(), Some(lease));
            {
                let mut inner = self.inner.write().unwrap();
                let _ = inner.names.reserve(&key, &st.id);
                inner.containers.insert(st.id.clone(), c.clone());
            }
            if live {
                self.clone().watch(c);
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.config.run.join("containers")) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                if !known.contains(&id) {
                    let r = rootfs::Rootfs::new(&self.state_dir(&id), &entry.path());
                    let _ = r.unmount();
                    let _ = state::remove_path(&entry.path());
                }
            }
        }
        Ok(())
    }

    /// Undoes a create the daemon died in: monitor.json (written before the
    /// cgroup is made) says which cgroup its processes are in.
    async fn cleanup_unfinished(&self, state_dir: &Path) {
        let id = state_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let run = self.run_dir(&id);
        if let Ok(Some(mc)) = state::read_json::<MonitorConfig>(&run.join("monitor.json")) {
            for dir in &mc.cgroup_dirs {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            for dir in &mc.cgroup_dirs {
                if let Err(e) = std::fs::remove_dir(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove an unfinished container's cgroup");
                    }
                }
            }
        }
        if let Err(e) = rootfs::Rootfs::new(state_dir, &run).unmount() {
            tracing::warn!(container = %id, error = %e, "cannot unmount an unfinished container's rootfs");
        }
        for dir in [&run, &state_dir.to_path_buf()] {
            if let Err(e) = state::remove_path(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an unfinished container's files");
            }
        }
    }
}

/// The status reason of a container the kernel's OOM killer ended.
const OOM_KILLED: &str = "OOMKilled";

/// The container's status reason for an exit, as kubelet understands it.
fn exit_reason(code: i32, oom: bool) -> &'static str {
    match (oom, code) {
        (true, _) => OOM_KILLED,
        (false, 0) => "Completed",
        _ => "Error",
    }
}
