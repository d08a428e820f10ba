//! Pod sandboxes: pinned namespaces, a pod cgroup, CNI networking and the
//! per-pod files, persisted so a restarted daemon knows them.
//!
//! Locking: the index (`inner`) is held only for map work; each sandbox has
//! its own async lock for run/stop/remove, so a hung CNI plugin blocks one pod.

pub mod files;
pub mod namespaces;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupDriver, CgroupPath, Resources};
use crate::config::Config;
use crate::ids::{self, Lookup, Names};
use crate::network::{Bandwidth, Cni, Dns, NetworkList, NetworkResult, PodNetwork, PortMapping};
use crate::state;
use files::HostNamespaces;
use namespaces::{NsKind, PinArgs};

const SHM_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid pod sandbox config: {0}")]
    Invalid(String),
    #[error("unknown runtime handler {name:?}; configured handlers: {known}")]
    UnknownHandler { name: String, known: String },
    #[error("pod sandbox name {name:?} is already reserved by sandbox {holder}")]
    NameInUse { name: String, holder: String },
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox ID prefix {0:?} matches {1} sandboxes")]
    Ambiguous(String, usize),
    #[error("pod namespaces: {0}")]
    Namespaces(String),
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io { path: path.display().to_string(), source }
}

/// The pod-init process of a pod with a shared PID namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Init {
    pub pid: i32,
    pub start_time: u64,
}

impl Init {
    pub fn alive(&self) -> bool {
        namespaces::is_running(self.pid, self.start_time)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attached {
    /// The network config ADD used, so DEL uses the same even if the conf dir changed.
    pub list: NetworkList,
    /// None while ADD is running.
    pub result: Option<NetworkResult>,
}

/// Everything known about a sandbox; persisted as `root/sandboxes/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub ready: bool,
    /// Set until RunPodSandbox finishes; a daemon that restarts finds such a
    /// sandbox half-built and tears it down.
    #[serde(default)]
    pub creating: bool,
    /// Pinned namespace files, by kind; absent kinds are the host's.
    pub namespaces: BTreeMap<NsKind, PathBuf>,
    pub init: Option<Init>,
    pub cgroup: Option<CgroupPath>,
    /// Whether cricket created the pod cgroup (and so removes it).
    pub cgroup_created: bool,
    pub network: Option<Attached>,
    /// IPs reported in status; kept after stop, as CRI expects.
    pub ips: Vec<IpAddr>,
    pub shm: Option<PathBuf>,
}

impl SandboxState {
    /// Ready as recorded, and its PID namespace still held: with pod-init gone
    /// no container could join the pod, so kubelet must recreate it.
    pub fn is_ready(&self) -> bool {
        self.ready && self.init.as_ref().is_none_or(Init::alive)
    }
}

/// What happened to a sandbox (and, later, to a container), for
/// GetContainerEvents subscribers such as kubelet's evented PLEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    /// The sandbox (or container) the event is about.
    pub id: String,
    pub kind: EventKind,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The pod as it was right after the change.
    pub sandbox: SandboxState,
}

/// Events kept for subscribers that fall behind; a slower one loses the oldest.
const EVENT_BUFFER: usize = 1024;

pub struct Sandbox {
    op: tokio::sync::Mutex<()>,
    state: Mutex<SandboxState>,
}

impl Sandbox {
    pub fn snapshot(&self) -> SandboxState {
        self.state.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Inner {
    sandboxes: HashMap<String, Arc<Sandbox>>,
    names: Names,
}

pub struct Sandboxes {
    config: Arc<Config>,
    cgroups: Arc<cgroup::Manager>,
    cni: Arc<Cni>,
    inner: RwLock<Inner>,
    events: tokio::sync::broadcast::Sender<LifecycleEvent>,
}

fn name_key(config: &PodSandboxConfig) -> Result<String, SandboxError> {
    let m = config.metadata.as_ref().ok_or_else(|| SandboxError::Invalid("metadata is required".into()))?;
    if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
        return Err(SandboxError::Invalid("metadata needs name, namespace and uid".into()));
    }
    Ok(format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt))
}

fn mode(v: i32) -> NamespaceMode {
    NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod)
}

impl Sandboxes {
    /// Loads persisted sandboxes and cleans what an interrupted run left behind.
    pub async fn open(
        config: Arc<Config>,
        cgroups: Arc<cgroup::Manager>,
        cni: Arc<Cni>,
    ) -> Result<Sandboxes, SandboxError> {
        let events = tokio::sync::broadcast::channel(EVENT_BUFFER).0;
        let this = Sandboxes { config, cgroups, cni, inner: RwLock::new(Inner::default()), events };
        let dir = this.state_root();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut known = std::collections::HashSet::new();
        let mut half_built = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path().join("state.json");
            let Some(mut st) = state::read_json::<SandboxState>(&path).map_err(io_err(&path))? else { continue };
            if st.creating {
                known.insert(st.id.clone());
                half_built.push(st);
                continue;
            }
            if st.ready && !this.still_alive(&st) {
                tracing::warn!(sandbox = %st.id, "sandbox lost its namespaces or init (reboot?); marking it NotReady");
                st.ready = false;
                this.persist(&st).map_err(io_err(&path))?;
            }
            let key = name_key(&st.config)?;
            let mut inner = this.inner.write().unwrap();
            let _ = inner.names.reserve(&key, &st.id);
            known.insert(st.id.clone());
            inner.sandboxes.insert(st.id.clone(), Arc::new(Sandbox { op: Default::default(), state: Mutex::new(st) }));
        }
        // Volatile dirs of sandboxes that never got persisted: unpin and delete.
        if let Ok(entries) = std::fs::read_dir(this.run_root()) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                if !known.contains(&id) {
                    tracing::warn!(sandbox = %id, "removing leftovers of an unfinished sandbox");
                    release_volatile(&entry.path());
                }
            }
        }
        for mut st in half_built {
            tracing::warn!(sandbox = %st.id, "tearing down a sandbox the daemon stopped while creating it");
            this.teardown(&mut st).await;
        }
        Ok(this)
    }

    fn state_root(&self) -> PathBuf {
        self.config.root.join("sandboxes")
    }

    fn run_root(&self) -> PathBuf {
        self.config.run.join("sandboxes")
    }

    /// Per-sandbox files containers mount: hostname, hosts, resolv.conf.
    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.state_root().join(id)
    }

    fn still_alive(&self, st: &SandboxState) -> bool {
        let pins_ok = st.namespaces.values().all(|p| namespaces::is_pinned(p));
        let init_ok = st.init.as_ref().is_none_or(Init::alive);
        pins_ok && init_ok
    }

    fn persist(&self, st: &SandboxState) -> std::io::Result<()> {
        let data = serde_json::to_vec(st).map_err(std::io::Error::other)?;
        state::write_atomic(&self.files_dir(&st.id).join("state.json"), &data)
    }

    pub fn get(&self, id_or_prefix: &str) -> Result<Arc<Sandbox>, SandboxError> {
        let inner = self.inner.read().unwrap();
        match ids::resolve(id_or_prefix, inner.sandboxes.keys()) {
            Lookup::Found(id) => Ok(inner.sandboxes[&id].clone()),
            Lookup::NotFound => Err(SandboxError::NotFound(id_or_prefix.to_string())),
            Lookup::Ambiguous(n) => Err(SandboxError::Ambiguous(id_or_prefix.to_string(), n)),
        }
    }

    /// A new subscriber sees every event published from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    fn publish(&self, kind: EventKind, st: &SandboxState) {
        // No subscribers is fine: nobody is listening.
        let _ =
            self.events.send(LifecycleEvent { id: st.id.clone(), kind, at: state::now_nanos(), sandbox: st.clone() });
    }

    /// Whether `sandbox` is still in the index (remove takes it out under its op lock).
    fn is_current(&self, sandbox: &Arc<Sandbox>) -> bool {
        let id = sandbox.state.lock().unwrap().id.clone();
        self.inner.read().unwrap().sandboxes.get(&id).is_some_and(|s| Arc::ptr_eq(s, sandbox))
    }

    pub fn list(&self) -> Vec<SandboxState> {
        self.inner.read().unwrap().sandboxes.values().map(|s| s.snapshot()).collect()
    }

    pub async fn run(&self, config: PodSandboxConfig, handler: &str) -> Result<String, SandboxError> {
        let handler_key = if handler.is_empty() { "default" } else { handler };
        if !self.config.runtimes.contains_key(handler_key) {
            let known = self.config.runtimes.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(SandboxError::UnknownHandler { name: handler.to_string(), known });
        }
        let key = name_key(&config)?;
        let id = ids::new_id();
        self.inner
            .write()
            .unwrap()
            .names
            .reserve(&key, &id)
            .map_err(|holder| SandboxError::NameInUse { name: key.clone(), holder })?;
        let mut st = SandboxState {
            id: id.clone(),
            config,
            runtime_handler: handler.to_string(),
            created_at: state::now_nanos(),
            ready: false,
            creating: true,
            namespaces: BTreeMap::new(),
            init: None,
            cgroup: None,
            cgroup_created: false,
            network: None,
            ips: Vec::new(),
            shm: None,
        };
        let started = std::time::Instant::now();
        match self.setup(&mut st).await {
            Ok(()) => {
                st.ready = true;
                st.creating = false;
                if let Err(e) = self.persist(&st) {
                    self.teardown(&mut st).await;
                    self.inner.write().unwrap().names.release(&key, &id);
                    return Err(io_err(&self.files_dir(&id))(e));
                }
                tracing::info!(sandbox = %id, name = %key, ips = ?st.ips, elapsed_ms = started.elapsed().as_millis() as u64, "pod sandbox ready");
                self.publish(EventKind::Created, &st);
                self.publish(EventKind::Started, &st);
                let sandbox = Arc::new(Sandbox { op: Default::default(), state: Mutex::new(st) });
                self.inner.write().unwrap().sandboxes.insert(id.clone(), sandbox);
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, name = %key, error = %e, "RunPodSandbox failed; undoing");
                self.teardown(&mut st).await;
                self.inner.write().unwrap().names.release(&key, &id);
                Err(e)
            }
        }
    }

    /// Builds the sandbox step by step, recording each step in `st` so a
    /// failure can be undone by `teardown`.
    async fn setup(&self, st: &mut SandboxState) -> Result<(), SandboxError> {
        let linux = st.config.linux.clone().unwrap_or_default();
        let ns_opts = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
        let host_net = mode(ns_opts.network) == NamespaceMode::Node;
        let host_ipc = mode(ns_opts.ipc) == NamespaceMode::Node;
        if mode(ns_opts.pid) == NamespaceMode::Target || mode(ns_opts.network) == NamespaceMode::Target {
            return Err(SandboxError::Invalid("namespace mode TARGET applies to containers, not pods".into()));
        }
        let sysctls = files::check_sysctls(&linux.sysctls, HostNamespaces { network: host_net, ipc: host_ipc })
            .map_err(SandboxError::Invalid)?;
        Bandwidth::from_annotations(&st.config.annotations).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let hostname = self.hostname(st, host_net)?;

        let files = self.files_dir(&st.id);
        std::fs::create_dir_all(&files).map_err(io_err(&files))?;
        let run = self.run_root().join(&st.id);
        std::fs::create_dir_all(&run).map_err(io_err(&run))?;

        let pod_cgroup = self.pod_cgroup_path(&linux.cgroup_parent, &st.id)?;
        st.cgroup = Some(pod_cgroup.clone());
        let mut kinds = Vec::new();
        if !host_net {
            kinds.extend([NsKind::Net, NsKind::Uts]);
        }
        if !host_ipc {
            kinds.push(NsKind::Ipc);
        }
        let want_init = mode(ns_opts.pid) == NamespaceMode::Pod;
        let ns_dir = run.join("ns");
        let mut args = PinArgs {
            dir: ns_dir.clone(),
            kinds: kinds.clone(),
            hostname: Some(hostname.clone()),
            sysctls,
            pod_init: want_init,
            cgroups: Vec::new(),
        };
        // A pod cgroup that exists already is kubelet's, which sized it (overhead
        // included) and keeps it up to date: it is only used, never rewritten.
        let resources = if self.cgroups.exists(&pod_cgroup) { Resources::default() } else { pod_resources(&linux) };
        // The init's own cgroup: cgroup v2 allows no processes in a cgroup with children.
        let init_cgroup = self.cgroups.child(&pod_cgroup, "pod-init");
        // With cgroupfs the init is born in its cgroup (the helper moves itself,
        // cheaply); a systemd scope is made around the running init instead.
        let born_in_cgroup = want_init && self.cgroups.driver() == CgroupDriver::Cgroupfs;
        let (created, pinned) = if born_in_cgroup {
            let created = self.cgroups.create(&pod_cgroup, &resources).await;
            let pinned = match &created {
                Ok(_) => match self.cgroups.create(&init_cgroup, &Resources::default()).await {
                    Ok(_) => {
                        args.cgroups = self.cgroups.fs_paths(&init_cgroup);
                        namespaces::pin(&args).await
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(_) => Ok(None),
            };
            (created, pinned)
        } else {
            // Neither step needs the other: run them together.
            tokio::join!(self.cgroups.create(&pod_cgroup, &resources), async {
                if kinds.is_empty() && !want_init {
                    Ok(None)
                } else {
                    namespaces::pin(&args).await
                }
            })
        };
        // Record whatever exists, even on failure, so teardown undoes it.
        for k in &kinds {
            let file = ns_dir.join(k.name());
            if namespaces::is_pinned(&file) {
                st.namespaces.insert(*k, file);
            }
        }
        if let Ok(Some(pid)) = pinned {
            st.init = Some(Init { pid, start_time: namespaces::start_time(pid).unwrap_or(0) });
        }
        st.cgroup_created = created?;
        pinned.map_err(SandboxError::Namespaces)?;

        if !host_ipc {
            let shm = run.join("shm");
            mount_shm(&shm).map_err(io_err(&shm))?;
            st.shm = Some(shm);
        }

        let place_init = async {
            match &st.init {
                Some(_) if born_in_cgroup => Ok(()),
                Some(init) => {
                    self.cgroups.create_with_pid(&init_cgroup, &Resources::default(), init.pid).await.map(drop)
                }
                None => Ok(()),
            }
        };
        if host_net {
            place_init.await?;
        } else {
            let list = self.cni.network()?;
            // Record what ADD is about to allocate, so a crash mid-ADD can be undone.
            st.network = Some(Attached { list: (*list).clone(), result: None });
            self.persist(st).map_err(io_err(&files))?;
            let pod = self.pod_network(st)?;
            // Moving a process between cgroups can wait on the kernel for many
            // milliseconds; overlap it with the CNI plugins.
            let (placed, added) = tokio::join!(place_init, self.cni.add(&list, &pod));
            match added {
                Ok(result) => {
                    st.ips = result.ips.clone();
                    st.network = Some(Attached { list: (*list).clone(), result: Some(result) });
                }
                Err(e) => {
                    // The invoker already ran DEL for the half-done ADD.
                    st.network = None;
                    return Err(e.into());
                }
            }
            placed?;
        }

        // No fsync: these only matter while the pod's namespaces live.
        let write = |name: &str, data: String| -> Result<(), SandboxError> {
            let p = files.join(name);
            std::fs::write(&p, data).map_err(io_err(&p))
        };
        write("hostname", format!("{hostname}\n"))?;
        write("hosts", files::hosts_file(&hostname, &st.ips))?;
        let resolv = files::resolv_conf(st.config.dns_config.as_ref(), Path::new("/etc/resolv.conf"))
            .map_err(io_err(Path::new("/etc/resolv.conf")))?;
        write("resolv.conf", resolv)?;
        Ok(())
    }

    /// The pod's hostname; the node's when the pod doesn't name one (as
    /// containerd and CRI-O do: a new UTS namespace starts as the host's copy).
    fn hostname(&self, st: &SandboxState, host_net: bool) -> Result<String, SandboxError> {
        let name = &st.config.hostname;
        if host_net || name.is_empty() {
            return nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().to_string())
                .map_err(|e| SandboxError::Namespaces(format!("gethostname: {e}")));
        }
        if name.len() > 64 || name.contains(['/', '\0', '\n', ' ']) {
            return Err(SandboxError::Invalid(format!(
                "hostname {name:?} is not valid (at most 64 characters, no spaces)"
            )));
        }
        Ok(name.clone())
    }

    fn pod_cgroup_path(&self, parent: &str, id: &str) -> Result<CgroupPath, SandboxError> {
        if !parent.is_empty() {
            return Ok(self.cgroups.parse_parent(parent)?);
        }
        let default = match self.cgroups.driver() {
            CgroupDriver::Cgroupfs => format!("/cricket/pod-{id}"),
            CgroupDriver::Systemd => format!("cricket-pod{id}.slice"),
        };
        Ok(self.cgroups.parse_parent(&default)?)
    }

    fn pod_network<'a>(&self, st: &'a SandboxState) -> Result<PodNetwork<'a>, SandboxError> {
        let m = st.config.metadata.as_ref().ok_or_else(|| SandboxError::Invalid("metadata is required".into()))?;
        let netns = st.namespaces.get(&NsKind::Net).map(PathBuf::as_path).unwrap_or(Path::new(""));
        let port_mappings = st
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: match k8s_cri::v1::Protocol::try_from(p.protocol) {
                    Ok(k8s_cri::v1::Protocol::Udp) => "udp",
                    Ok(k8s_cri::v1::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                host_ip: p.host_ip.clone(),
            })
            .collect();
        let bandwidth = Bandwidth::from_annotations(&st.config.annotations)?;
        let dns = st.config.dns_config.as_ref().map(|d| Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
        Ok(PodNetwork {
            sandbox_id: &st.id,
            netns,
            ifname: "eth0",
            pod_name: &m.name,
            pod_namespace: &m.namespace,
            pod_uid: &m.uid,
            port_mappings,
            bandwidth,
            dns,
            cgroup_path: None,
        })
    }

    /// Stops the pod: network down, init killed, shm and namespaces released.
    /// Unknown IDs succeed, as CRI requires.
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = match self.get(id) {
            Ok(s) => s,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = sandbox.op.lock().await;
        if !self.is_current(&sandbox) {
            return Ok(()); // removed while we waited for the lock
        }
        let mut st = sandbox.snapshot();
        if let Some(attached) = &st.network {
            let pod = self.pod_network(&st)?;
            let prev = attached.result.as_ref().map(|r| &r.raw);
            self.cni.del(&attached.list, &pod, prev).await?;
        }
        st.network = None;
        st.ready = false;
        self.release_processes_and_mounts(&mut st);
        self.persist(&st).map_err(io_err(&self.files_dir(&st.id)))?;
        self.publish(EventKind::Stopped, &st);
        *sandbox.state.lock().unwrap() = st;
        Ok(())
    }

    /// Removes every trace of the pod. Unknown IDs succeed.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = match self.get(id) {
            Ok(s) => s,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if sandbox.snapshot().network.is_some() {
            self.stop(id).await?;
        }
        let _op = sandbox.op.lock().await;
        if !self.is_current(&sandbox) {
            return Ok(());
        }
        let mut st = sandbox.snapshot();
        self.teardown(&mut st).await;
        let key = name_key(&st.config)?;
        {
            let mut inner = self.inner.write().unwrap();
            inner.sandboxes.remove(&st.id);
            inner.names.release(&key, &st.id);
        }
        self.publish(EventKind::Deleted, &st);
        Ok(())
    }

    /// Undoes whatever `st` records; best effort, logging what fails.
    async fn teardown(&self, st: &mut SandboxState) {
        if let Some(attached) = st.network.take() {
            match self.pod_network(st) {
                Ok(pod) => {
                    let prev = attached.result.as_ref().map(|r| &r.raw);
                    if let Err(e) = self.cni.del(&attached.list, &pod, prev).await {
                        tracing::warn!(sandbox = %st.id, error = %e, "CNI DEL failed");
                    }
                }
                Err(e) => tracing::warn!(sandbox = %st.id, error = %e, "cannot build CNI DEL request"),
            }
        }
        self.release_processes_and_mounts(st);
        if let (Some(cg), true) = (&st.cgroup, st.creating) {
            // A half-built pod may have an init the state never recorded.
            let _ = self.cgroups.kill_all(&self.cgroups.child(cg, "pod-init"), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(cg) = &st.cgroup {
            // The pod cgroup itself may be kubelet's; the init's child is always ours.
            let ours = if st.cgroup_created { cg.clone() } else { self.cgroups.child(cg, "pod-init") };
            if let Err(e) = self.cgroups.remove(&ours).await {
                tracing::warn!(sandbox = %st.id, error = %e, "removing pod cgroup failed");
            }
        }
        release_volatile(&self.run_root().join(&st.id));
        let files = self.files_dir(&st.id);
        if let Err(e) = state::remove_path(&files) {
            tracing::warn!(sandbox = %st.id, error = %e, "removing sandbox dir failed");
        }
    }

    fn release_processes_and_mounts(&self, st: &mut SandboxState) {
        if let Some(init) = st.init.take() {
            if init.alive() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if let Some(shm) = st.shm.take() {
            if let Err(e) = unmount_and_remove(&shm) {
                tracing::warn!(sandbox = %st.id, error = %e, "unmounting shm failed");
            }
        }
        for (kind, file) in std::mem::take(&mut st.namespaces) {
            if let Err(e) = namespaces::unpin(&file) {
                tracing::warn!(sandbox = %st.id, ns = kind.name(), error = %e, "unpinning namespace failed");
            }
        }
    }
}

/// The CFS period the kernel uses when none is set, in µs.
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// The pod cgroup's limits, sized as kubelet sizes its own pod cgroups:
/// `resources` is the containers' sum without the RuntimeClass overhead, so
/// the overhead is added to the CPU weight and to the limits that exist (an
/// unlimited pod stays unlimited).
fn pod_resources(linux: &k8s_cri::v1::LinuxPodSandboxConfig) -> Resources {
    let mut r = linux.resources.as_ref().map(Resources::from_cri).unwrap_or_default();
    let Some(overhead) = linux.overhead.as_ref().map(Resources::from_cri) else { return r };
    if let Some(extra) = overhead.cpu_shares {
        r.cpu_shares = Some(r.cpu_shares.unwrap_or(0) + extra);
    }
    if let (Some(quota @ 1..), Some(extra @ 1..)) = (r.cpu_quota, overhead.cpu_quota) {
        // Quotas are per period: the overhead's is converted to the pod's period.
        let period = r.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD) as i64;
        let extra_period = overhead.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD) as i64;
        r.cpu_quota = Some(quota + extra * period / extra_period);
    }
    if let (Some(limit @ 1..), Some(extra @ 1..)) = (r.memory_limit, overhead.memory_limit) {
        r.memory_limit = Some(limit + extra);
    }
    r
}

fn mount_shm(path: &Path) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(path)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let opts = format!("mode=1777,size={SHM_SIZE}");
    mount(Some("shm"), path, Some("tmpfs"), flags, Some(opts.as_str())).map_err(std::io::Error::from)
}

fn unmount_and_remove(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unpins namespaces and unmounts shm under a sandbox's run dir, then deletes it.
fn release_volatile(run: &Path) {
    for kind in [NsKind::Net, NsKind::Ipc, NsKind::Uts] {
        let _ = namespaces::unpin(&run.join("ns").join(kind.name()));
    }
    let _ = unmount_and_remove(&run.join("shm"));
    if let Err(e) = state::remove_path(run) {
        tracing::warn!(dir = %run.display(), error = %e, "removing sandbox run dir failed");
    }
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{LinuxContainerResources, LinuxPodSandboxConfig};

    use super::*;

    fn cri(shares: i64, quota: i64, period: i64, memory: i64) -> Option<LinuxContainerResources> {
        Some(LinuxContainerResources {
            cpu_shares: shares,
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        })
    }

    #[test]
    fn overhead_adds_to_what_the_pod_limits() {
        // 500m CPU and 64 MiB limits, with 250m and 32 MiB of overhead, as kubelet sends them.
        let linux = LinuxPodSandboxConfig {
            resources: cri(512, 50_000, 100_000, 64 << 20),
            overhead: cri(256, 25_000, 100_000, 32 << 20),
            ..Default::default()
        };
        let r = pod_resources(&linux);
        assert_eq!((r.cpu_shares, r.cpu_quota, r.cpu_period), (Some(768), Some(75_000), Some(100_000)));
        assert_eq!(r.memory_limit, Some(96 << 20));
        // The overhead's quota is per its own period.
        let linux = LinuxPodSandboxConfig {
            resources: cri(512, 50_000, 100_000, 0),
            overhead: cri(256, 12_500, 50_000, 0),
            ..Default::default()
        };
        assert_eq!(pod_resources(&linux).cpu_quota, Some(75_000));
    }

    #[test]
    fn overhead_leaves_an_unlimited_pod_unlimited() {
        // No limits (kubelet: quota 0, no memory limit); requests give the weight.
        let linux = LinuxPodSandboxConfig {
            resources: cri(2, 0, 100_000, 0),
            overhead: cri(256, 25_000, 100_000, 32 << 20),
            ..Default::default()
        };
        let r = pod_resources(&linux);
        assert_eq!((r.cpu_shares, r.cpu_quota, r.memory_limit), (Some(258), None, None));
        let only_overhead = LinuxPodSandboxConfig { overhead: cri(256, 0, 0, 0), ..Default::default() };
        assert_eq!(pod_resources(&only_overhead).cpu_shares, Some(256));
        let none = LinuxPodSandboxConfig { resources: cri(512, 0, 0, 1 << 30), ..Default::default() };
        assert_eq!(
            pod_resources(&none),
            Resources { cpu_shares: Some(512), memory_limit: Some(1 << 30), ..Default::default() }
        );
    }
}
