//! Create, start, stop and remove, and the exit watcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources, NamespaceMode};

use super::process::{self, Proc};
use super::rootfs::Rootfs;
use super::select::handler_name;
use super::*;
use crate::cgroup::{CgroupDriver, Resources};
use crate::config::{HandlerKind, MonitorCgroup, RuntimeHandler};
use crate::monitor::config::{ExitRecord, MonitorConfig};
use crate::sandbox::SandboxState;

/// After SIGKILL, how long the exit may take to be recorded before StopContainer gives up.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// The reason recorded when StartContainer fails (the workload never ran).
const START_ERROR: &str = "StartError";

/// What a failed create has made so far, undone in reverse on error.
#[derive(Default)]
struct Undo {
    rootfs: Option<Rootfs>,
    cgroup: Option<CgroupPath>,
    init: Option<Proc>,
    monitor: Option<Proc>,
    monitor_cgroup: Option<CgroupPath>,
    dirs: Vec<PathBuf>,
}

impl Containers {
    pub async fn create(self: &Arc<Self>, sandbox_id: &str, config: ContainerConfig) -> Result<String, ContainerError> {
        let sandbox = self.sandboxes.get(sandbox_id)?.snapshot();
        if !sandbox.is_ready() {
            return Err(ContainerError::SandboxNotReady(sandbox.id));
        }
        let meta = config.metadata.as_ref().ok_or_else(|| ContainerError::Invalid("metadata is required".into()))?;
        if meta.name.is_empty() {
            return Err(ContainerError::Invalid("metadata.name is required".into()));
        }
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(ContainerError::Invalid("image is required".into()));
        }
        self.check_features(&sandbox.runtime_handler, &config)?;
        let record = self.images.find(&image_name)?.ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
        let kind = self.handler(&sandbox.runtime_handler)?.kind;
        if record.wasm.is_some() && kind != HandlerKind::Wasm {
            let handler = handler_name(&sandbox.runtime_handler).to_string();
            return Err(ContainerError::WasmImage { image: image_name, handler, kind });
        }
        let id = ids::new_id();
        let key = name_key(&sandbox.id, &config);
        self.inner
            .write()
            .unwrap()
            .names
            .reserve(&key, &id)
            .map_err(|holder| ContainerError::NameInUse { name: key.clone(), holder })?;
        let mut undo = Undo::default();
        match self.build(&id, &sandbox, config, &image_name, record, &mut undo).await {
            Ok(c) => {
                let st = c.snapshot();
                self.inner.write().unwrap().containers.insert(id.clone(), c.clone());
                self.publish(EventKind::Created, &st);
                self.clone().watch(c);
                tracing::info!(container = %id, sandbox = %st.sandbox_id, image = %image_name, "container created");
                Ok(id)
            }
            Err(e) => {
                self.undo(undo).await;
                self.inner.write().unwrap().names.release(&key, &id);
                Err(e)
            }
        }
    }

    async fn build(
        self: &Arc<Self>,
        id: &str,
        sandbox: &SandboxState,
        config: ContainerConfig,
        image_name: &str,
        record: crate::image::store::ImageRecord,
        undo: &mut Undo,
    ) -> Result<Arc<Container>, ContainerError> {
        let (state_dir, run_dir) = (self.state_dir(id), self.run_dir(id));
        undo.dirs = vec![state_dir.clone(), run_dir.clone()];
        let (lease, layer_dirs) = self.images.checkout(&record)?;
        let image_config = self.images.image_config(&record)?;
        let fs = Rootfs::new(&state_dir, &run_dir);
        let empty = state_dir.join("empty");
        let mounted = fs.clone();
        tokio::task::spawn_blocking(move || mounted.mount(&layer_dirs, &empty))
            .await
            .map_err(|e| ContainerError::Create(e.to_string()))?
            .map_err(ContainerError::Rootfs)?;
        undo.rootfs = Some(fs.clone());

        let pod_cgroup =
            sandbox.cgroup.clone().ok_or_else(|| ContainerError::Create("the pod has no cgroup".into()))?;
        let cgroup = self.cgroups.child(&pod_cgroup, id);
        let resources = config.linux.as_ref().and_then(|l| l.resources.clone());
        let built = self.spec(sandbox, &config, (&image_config, &record), &fs, &cgroup, &state_dir)?;
        let bundle = state_dir.clone();
        let spec_json = serde_json::to_vec_pretty(&built.spec).map_err(|e| ContainerError::Create(e.to_string()))?;
        let spec_path = bundle.join("config.json");
        state::write_volatile(&spec_path, &spec_json).map_err(io_err(&spec_path))?;

        let chosen = self.runtime_kind(&sandbox.runtime_handler, &record, &built.spec, &fs.target).await?;
        let log_path = log_path(sandbox, &config);
        let systemd = self.cgroups.driver() == CgroupDriver::Systemd;
        let monitor_config = MonitorConfig {
            id: id.to_string(),
            bundle,
            log_path: log_path.clone(),
            exit_file: run_dir.join("exit.json"),
            control_socket: run_dir.join("ctl.sock"),
            cgroup_dirs: if systemd { Vec::new() } else { self.cgroups.fs_paths(&cgroup) },
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            runtime: chosen.kind,
        };
        let monitor_json = run_dir.join("monitor.json");
        let cg_resources = resources.as_ref().map(Resources::from_cri).unwrap_or_default();
        if !systemd {
            self.cgroups.create(&cgroup, &cg_resources).await?;
            undo.cgroup = Some(cgroup.clone());
        }
        let (monitor, init) = self
            .start_monitor(&monitor_config, &monitor_json, chosen.program.as_deref())
            .await
            .map_err(|reason| ContainerError::Monitor { id: id.to_string(), reason })?;
        undo.init = Some(init);
        undo.monitor = Some(monitor);
        if systemd {
            undo.cgroup = Some(cgroup.clone());
            self.cgroups.create_with_pid(&cgroup, &cg_resources, init.pid).await?;
        }
        let monitor_cgroup = self.monitor_cgroup(&sandbox.runtime_handler, &pod_cgroup, id)?;
        if let Some(cg) = &monitor_cgroup {
            undo.monitor_cgroup = Some(cg.clone());
            self.cgroups.create_with_pid(cg, &Resources::default(), monitor.pid).await?;
        }
        let st = ContainerState {
            id: id.to_string(),
            sandbox_id: sandbox.id.clone(),
            image_name: image_name.to_string(),
            image_id: record.id.clone(),
            image_ref: record.repo_digests.first().cloned().unwrap_or_else(|| record.id.clone()),
            layers: record.layers.clone(),
            runtime_handler: sandbox.runtime_handler.clone(),
            phase: Phase::Created,
            created_at: state::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            monitor: Some(monitor),
            init: Some(init),
            cgroup: Some(cgroup),
            monitor_cgroup,
            log_path,
            resources,
            stop_signal: stop_signal(image_config.config().as_ref().and_then(|c| c.stop_signal().clone()))?,
            user: built.user,
            config,
        };
        self.persist(&st)?;
        Ok(Container::new(st, Some(lease)))
    }

    /// Refuses what the pod's handler can't do rather than let it do less:
    /// a runtime that ignored `rro` would leave submounts writable.
    fn check_features(&self, handler: &str, config: &ContainerConfig) -> Result<(), ContainerError> {
        let name = if handler.is_empty() { "default" } else { handler };
        let features = self.features.get(name).copied().unwrap_or_default();
        match config.mounts.iter().find(|m| m.recursive_read_only) {
            Some(m) if !features.recursive_read_only_mounts => Err(ContainerError::Invalid(format!(
                "mount {}: runtime handler {name:?} does not support recursive read-only mounts",
                m.container_path
            ))),
            _ => Ok(()),
        }
    }

    /// The configuration of a pod's runtime handler ("" is the default one).
    pub(super) fn handler(&self, name: &str) -> Result<&RuntimeHandler, ContainerError> {
        let name = if name.is_empty() { "default" } else { name };
        self.config.runtimes.get(name).ok_or_else(|| {
            ContainerError::Create(format!("runtime handler {name:?} of the pod is no longer configured"))
        })
    }

    /// Where the handler wants this container's monitor: a `monitor-<id>`
    /// cgroup in the pod's or in the configured parent; None leaves it in the daemon's.
    fn monitor_cgroup(&self, handler: &str, pod: &CgroupPath, id: &str) -> Result<Option<CgroupPath>, ContainerError> {
        let parent = match self.handler(handler)?.monitor_cgroup() {
            MonitorCgroup::Daemon => return Ok(None),
            MonitorCgroup::Pod => pod.clone(),
            MonitorCgroup::Under(parent) => self.cgroups.parse_parent(parent)?,
        };
        Ok(Some(self.cgroups.child(&parent, &format!("monitor-{id}"))))
    }

    async fn undo(&self, undo: Undo) {
        if let Some(init) = undo.init {
            let _ = init.signal(libc::SIGKILL);
            init.exited().await;
        }
        if let Some(cg) = undo.monitor_cgroup {
            // The monitor leaves once its init is gone; its cgroup can go after it.
            if let Some(monitor) = undo.monitor {
                let _ = tokio::time::timeout(KILL_GRACE, monitor.exited()).await;
            }
            if let Err(e) = self.cgroups.remove(&cg).await {
                tracing::warn!(cgroup = %cg, error = %e, "cannot remove the monitor cgroup of a failed create");
            }
        }
        if let Some(cg) = undo.cgroup {
            let _ = self.cgroups.kill_all(&cg, nix::sys::signal::Signal::SIGKILL);
            if let Err(e) = self.cgroups.remove(&cg).await {
                tracing::warn!(cgroup = %cg, error = %e, "cannot remove the cgroup of a failed create");
            }
        }
        if let Some(fs) = undo.rootfs {
            if let Err(e) = fs.unmount() {
                tracing::warn!(error = %e, "cannot unmount the rootfs of a failed create");
            }
        }
        for dir in undo.dirs {
            if let Err(e) = state::remove_path(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove files of a failed create");
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        let st = c.snapshot();
        if st.phase != Phase::Created {
            let (action, needed) = ("start", "created");
            return Err(ContainerError::WrongState { id: st.id, state: st.phase.name(), action, needed });
        }
        let socket = self.run_dir(&st.id).join("ctl.sock");
        // Taken before the request: a workload that exits at once must not finish before it started.
        let started_at = state::now_nanos();
        match process::control(&socket, "start").await {
            Ok(()) => {
                let st = self.change(&c, |s| {
                    // The watcher may already have seen a workload that exited at once.
                    if s.phase == Phase::Created {
                        s.phase = Phase::Running;
                    }
                    s.started_at = started_at;
                })?;
                self.publish(EventKind::Started, &st);
                self.counters.started(true);
                tracing::info!(container = %st.id, "container started");
                Ok(())
            }
            Err(reason) => {
                self.counters.started(false);
                // The init is gone or will be: record the failure like kubelet expects.
                if let Some(init) = st.init {
                    let _ = init.signal(libc::SIGKILL);
                }
                let st = self.change(&c, |s| {
                    s.reason = START_ERROR.into();
                    s.message = reason.clone();
                    s.exit_code = 128;
                })?;
                Err(ContainerError::Start { id: st.id, reason })
            }
        }
    }

    /// Sends the stop signal, waits `timeout` seconds, then kills the whole
    /// cgroup. Stopping a stopped (or unknown) container succeeds.
    pub async fn stop(&self, id: &str, timeout: i64) -> Result<(), ContainerError> {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = c.op.lock().await;
        self.stop_locked(&c, timeout).await
    }

    async fn stop_locked(&self, c: &Arc<Container>, timeout: i64) -> Result<(), ContainerError> {
        let st = c.snapshot();
        if st.phase == Phase::Exited {
            return Ok(());
        }
        let Some(init) = st.init else { return Ok(()) };
        let mut exited = c.exited.subscribe();
        if timeout > 0 && st.phase == Phase::Running {
            if let Err(e) = init.signal(st.stop_signal) {
                tracing::warn!(container = %st.id, error = %e, "sending the stop signal failed");
            }
            let wait = exited.wait_for(|done| *done);
            if tokio::time::timeout(Duration::from_secs(timeout as u64), wait).await.is_ok() {
                return Ok(());
            }
            tracing::info!(container = %st.id, timeout, "container ignored its stop signal; killing it");
        }
        if let Some(cg) = &st.cgroup {
            if let Err(e) = self.cgroups.kill_all(cg, nix::sys::signal::Signal::SIGKILL) {
                tracing::warn!(container = %st.id, error = %e, "killing the container's cgroup failed");
            }
        }
        let _ = init.signal(libc::SIGKILL);
        let done = tokio::time::timeout(KILL_GRACE, exited.wait_for(|done| *done)).await.is_ok();
        if !done {
            let reason = format!("killed, but its monitor did not report the exit within {KILL_GRACE:?}");
            return Err(ContainerError::Monitor { id: st.id, reason });
        }
        Ok(())
    }

    /// Stops (at once) and deletes the container with its rootfs, cgroup,
    /// state and log. Unknown IDs succeed.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _op = c.op.lock().await;
        if !self.is_current(&c) {
            return Ok(());
        }
        self.stop_locked(&c, 0).await?;
        let st = c.snapshot();
        if let Some(cg) = &st.cgroup {
            // The init is gone, but its orphans may live on in a pod-wide PID namespace.
            if let Err(e) = self.cgroups.kill_all(cg, nix::sys::signal::Signal::SIGKILL) {
                tracing::warn!(container = %st.id, error = %e, "killing what is left in the container's cgroup failed");
            }
        }
        // The exit is recorded once the monitor has exited, so its cgroup is empty too.
        for cg in st.cgroup.iter().chain(&st.monitor_cgroup) {
            if let Err(e) = self.cgroups.remove(cg).await {
                tracing::warn!(container = %st.id, cgroup = %cg, error = %e, "removing a container cgroup failed");
            }
        }
        let (state_dir, run_dir) = (self.state_dir(&st.id), self.run_dir(&st.id));
        Rootfs::new(&state_dir, &run_dir).unmount().map_err(ContainerError::Rootfs)?;
        state::remove_path(&run_dir).map_err(io_err(&run_dir))?;
        state::remove_path(&state_dir).map_err(io_err(&state_dir))?;
        if let Some(log) = &st.log_path {
            if let Err(e) = std::fs::remove_file(log) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(container = %st.id, error = %e, "removing the container log failed");
                }
            }
        }
        {
            let mut inner = self.inner.write().unwrap();
            inner.containers.remove(&st.id);
            inner.names.release(&st.name_key(), &st.id);
        }
        c.lease.lock().unwrap().take();
        self.cpu_samples.forget(&st.id);
        self.publish(EventKind::Deleted, &st);
        tracing::info!(container = %st.id, "container removed");
        Ok(())
    }

    /// StopPodSandbox: kills the pod's containers, then stops the pod. Unknown IDs succeed.
    pub async fn stop_pod(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        let id = match self.sandboxes.get(sandbox_id) {
            Ok(s) => s.snapshot().id,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let ids: Vec<String> = self.in_sandbox(&id).into_iter().map(|c| c.id).collect();
        futures::future::try_join_all(ids.iter().map(|c| self.stop(c, 0))).await?;
        Ok(self.sandboxes.stop(&id).await?)
    }

    /// RemovePodSandbox: removes the pod's containers, then the pod. Unknown IDs succeed.
    pub async fn remove_pod(&self, sandbox_id: &str) -> Result<(), ContainerError> {
        let id = match self.sandboxes.get(sandbox_id) {
            Ok(s) => s.snapshot().id,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let ids: Vec<String> = self.in_sandbox(&id).into_iter().map(|c| c.id).collect();
        futures::future::try_join_all(ids.iter().map(|c| self.remove(c))).await?;
        Ok(self.sandboxes.remove(&id).await?)
    }

    /// Applies new limits to the container's cgroup and records them.
    pub async fn update_resources(&self, id: &str, resources: LinuxContainerResources) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        let st = c.snapshot();
        if st.phase == Phase::Exited {
            let (action, needed) = ("UpdateContainerResources", "created or running");
            return Err(ContainerError::WrongState { id: st.id, state: st.phase.name(), action, needed });
        }
        if let Some(cg) = &st.cgroup {
            self.cgroups.update(cg, &Resources::from_cri(&resources))?;
        }
        self.change(&c, |s| s.resources = Some(resources)).map(|_| ())
    }

    /// Has the monitor reopen the log file (after kubelet rotated it).
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let st = c.snapshot();
        if st.phase != Phase::Running {
            let (action, needed) = ("ReopenContainerLog", "running");
            return Err(ContainerError::WrongState { id: st.id, state: st.phase.name(), action, needed });
        }
        let socket = self.run_dir(&st.id).join("ctl.sock");
        process::control(&socket, "reopen").await.map_err(|reason| ContainerError::Monitor { id: st.id, reason })
    }

    /// Waits for the monitor to exit, then records the exit it wrote.
    pub(super) fn watch(self: Arc<Self>, c: Arc<Container>) {
        tokio::spawn(async move {
            let st = c.snapshot();
            if let Some(monitor) = st.monitor {
                monitor.exited().await;
            }
            self.record_exit(&c);
        });
    }

    fn record_exit(&self, c: &Arc<Container>) {
        if c.snapshot().phase == Phase::Exited {
            c.exited.send_replace(true);
            return;
        }
        let exit_file = self.run_dir(&c.snapshot().id).join("exit.json");
        let record = state::read_json::<ExitRecord>(&exit_file);
        // Counted only by the call that records the exit, so a race never counts twice.
        let mut recorded = false;
        let result = self.change(c, |st| {
            if st.phase == Phase::Exited {
                return;
            }
            recorded = true;
            st.phase = Phase::Exited;
            if st.reason == START_ERROR {
                st.finished_at = state::now_nanos();
                return;
            }
            match &record {
                Ok(Some(rec)) => {
                    st.exit_code = rec.exit_code;
                    st.finished_at = rec.finished_at;
                    st.reason = exit_reason(rec.exit_code, rec.oom_killed).into();
                    if let Some(error) = &rec.error {
                        st.reason = "ContainerCannotRun".into();
                        st.message = error.clone();
                    }
                }
                other => {
                    // The monitor died without a record (killed, or the host rebooted).
                    if let Some(init) = st.init {
                        let _ = init.signal(libc::SIGKILL);
                    }
                    st.exit_code = 255;
                    st.finished_at = state::now_nanos();
                    st.reason = "Error".into();
                    st.message = match other {
                        Err(e) => format!("the container's exit record is unreadable: {e}"),
                        _ => "the container's monitor exited without recording the container's exit".into(),
                    };
                }
            }
        });
        let st = match result {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist a container's exit");
                c.snapshot()
            }
        };
        c.exited.send_replace(true);
        if recorded && st.reason == OOM_KILLED {
            self.counters.oom_killed();
        }
        if self.is_current(c) {
            self.publish(EventKind::Stopped, &st);
        }
        tracing::info!(container = %st.id, exit_code = st.exit_code, reason = %st.reason, "container exited");
    }

    /// Changes a container's state and persists it under its state lock, so
    /// concurrent changes (start vs. the exit watcher) are written in order.
    fn change(&self, c: &Container, f: impl FnOnce(&mut ContainerState)) -> Result<ContainerState, ContainerError> {
        let mut guard = c.state.lock().unwrap();
        let mut next = guard.clone();
        f(&mut next);
        self.persist(&next)?;
        *guard = next.clone();
        Ok(next)
    }
}

/// The CRI log file: the pod's log directory joined with the container's log path.
fn log_path(sandbox: &SandboxState, config: &ContainerConfig) -> Option<PathBuf> {
    if config.log_path.is_empty() {
        return None;
    }
    let path = PathBuf::from(&sandbox.config.log_directory).join(&config.log_path);
    Some(path)
}

/// The image's STOPSIGNAL ("SIGQUIT", "QUIT", "3"); SIGTERM when unset.
fn stop_signal(name: Option<String>) -> Result<i32, ContainerError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return Ok(libc::SIGTERM) };
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| ContainerError::Invalid(format!("the image's StopSignal {name:?} is not a signal")))
}

/// Which PID namespace the container gets.
pub(super) fn pid_mode(config: &ContainerConfig) -> (NamespaceMode, String) {
    let opts =
        config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref());
    match opts {
        Some(o) => (NamespaceMode::try_from(o.pid).unwrap_or(NamespaceMode::Pod), o.target_id.clone()),
        None => (NamespaceMode::Pod, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal(None).unwrap(), libc::SIGTERM);
        assert_eq!(stop_signal(Some("SIGQUIT".into())).unwrap(), libc::SIGQUIT);
        assert_eq!(stop_signal(Some("winch".into())).unwrap(), libc::SIGWINCH);
        assert_eq!(stop_signal(Some("9".into())).unwrap(), 9);
        assert!(stop_signal(Some("SIGNOPE".into())).is_err());
    }
}
