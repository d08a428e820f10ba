//! Cgroup manager for pod sandboxes and containers: cgroup v1 and v2, through
//! plain directories (cgroupfs driver) or systemd transient units (systemd driver).
#![allow(dead_code)] // stats, kill_all and update serve containers, which land next

mod detect;
mod fs;
mod path;
mod resources;
mod systemd;
mod v1;
mod v2;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_host;
#[cfg(test)]
mod tests_systemd;

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

pub use crate::config::CgroupDriver;
pub use detect::Hierarchy;
pub use path::CgroupPath;
pub use resources::Resources;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("cannot write {value:?} to {path}: no such file ({hint})")]
    NoFile { path: PathBuf, value: String, hint: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot send {signal} to pid {pid} of cgroup {path}: {source}")]
    Signal { path: PathBuf, pid: i32, signal: Signal, source: nix::Error },
    #[error("invalid cgroup parent {value:?} for cgroup driver \"{driver}\": {reason}")]
    InvalidParent { value: String, driver: &'static str, reason: String },
    #[error("invalid cgroup path {value:?} for cgroup driver \"{driver}\": {reason}")]
    InvalidPath { value: String, driver: &'static str, reason: String },
    #[error("invalid resource {name} = {value:?}: {reason}")]
    InvalidResource { name: String, value: String, reason: String },
    #[error("cannot set {setting}: {reason}")]
    Unsupported { setting: String, reason: String },
    #[error("cannot find cgroups under {root}: {reason}")]
    Detect { root: PathBuf, reason: String },
    #[error(
        "cgroup driver \"systemd\" needs systemd, but it is not running here ({marker} is missing); \
         set [cgroup] driver = \"cgroupfs\" in cricket's configuration and cgroupDriver: cgroupfs in kubelet's"
    )]
    SystemdUnavailable { marker: PathBuf },
    #[error("systemd {op} {unit}: {message}")]
    Systemd { op: &'static str, unit: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    /// usage - inactive_file, floored at 0 (what kubelet evicts on).
    pub memory_working_set: u64,
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

#[derive(Debug, Clone)]
enum Layout {
    V1(Vec<Hierarchy>),
    V2(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Manager {
    driver: CgroupDriver,
    layout: Layout,
    bus: systemd::Bus,
}

/// Validates a cgroup parent for `driver`: an absolute path (cgroupfs) or a slice (systemd).
pub fn parse_parent(driver: CgroupDriver, parent: &str) -> Result<CgroupPath, CgroupError> {
    path::parse_parent(driver, parent)
}

pub(crate) fn driver_name(driver: CgroupDriver) -> &'static str {
    match driver {
        CgroupDriver::Cgroupfs => "cgroupfs",
        CgroupDriver::Systemd => "systemd",
    }
}

impl Manager {
    /// Detects v1/v2 from the mounts under `root` ("/sys/fs/cgroup" in production).
    pub fn new(driver: CgroupDriver, root: &Path) -> Result<Manager, CgroupError> {
        Ok(Manager { driver, layout: detect::detect(root)?, bus: systemd::Bus::default() })
    }

    /// A cgroup v2 manager rooted at `root`, without detection.
    pub fn v2(driver: CgroupDriver, root: &Path) -> Manager {
        Manager { driver, layout: Layout::V2(root.to_path_buf()), bus: systemd::Bus::default() }
    }

    /// A cgroup v1 manager over the given hierarchies, without detection.
    pub fn v1(driver: CgroupDriver, hierarchies: Vec<Hierarchy>) -> Manager {
        Manager { driver, layout: Layout::V1(hierarchies), bus: systemd::Bus::default() }
    }

    /// Talks to systemd at this D-Bus address instead of the system bus.
    pub fn with_systemd_bus(mut self, address: &str) -> Manager {
        self.bus.address = Some(address.to_string());
        self
    }

    pub fn version(&self) -> Version {
        match self.layout {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
        }
    }

    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// The v1 hierarchies (empty on v2).
    pub fn hierarchies(&self) -> &[Hierarchy] {
        match &self.layout {
            Layout::V1(h) => h,
            Layout::V2(_) => &[],
        }
    }

    /// Validates a CRI cgroup_parent for this driver; empty means cricket's default parent.
    pub fn parse_parent(&self, parent: &str) -> Result<CgroupPath, CgroupError> {
        parse_parent(self.driver, parent)
    }

    /// The path of a pod or container cgroup under `parent`.
    pub fn child(&self, parent: &CgroupPath, name: &str) -> CgroupPath {
        path::child(self.driver, parent, name)
    }

    /// The cgroup's path from the cgroup root ("/kubepods/pod1", "/a.slice/a-b.slice/x.scope"),
    /// as /proc/PID/cgroup shows it and the OCI spec's linux.cgroupsPath takes for cgroupfs.
    pub fn relative_path(&self, path: &CgroupPath) -> Result<String, CgroupError> {
        Ok(format!("/{}", self.rel(path)?.display()))
    }

    fn rel(&self, path: &CgroupPath) -> Result<PathBuf, CgroupError> {
        path::relative(self.driver, path)
    }

    /// Filesystem paths of the cgroup (v1: one per hierarchy; v2: one); empty for an invalid path.
    pub fn fs_paths(&self, path: &CgroupPath) -> Vec<PathBuf> {
        let Ok(rel) = self.rel(path) else { return Vec::new() };
        match &self.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.mount.join(&rel)).collect(),
            Layout::V2(root) => vec![root.join(&rel)],
        }
    }

    /// Whether the cgroup's directory exists (in any v1 hierarchy).
    pub fn exists(&self, path: &CgroupPath) -> bool {
        self.fs_paths(path).iter().any(|p| p.exists())
    }

    /// Creates the cgroup and applies `resources`; true when it did not exist before.
    pub async fn create(&self, path: &CgroupPath, resources: &Resources) -> Result<bool, CgroupError> {
        self.create_inner(path, resources, None).await
    }

    /// Like `create`, then moves `pid` in; a systemd scope needs this form (its unit starts with the pid).
    pub async fn create_with_pid(
        &self,
        path: &CgroupPath,
        resources: &Resources,
        pid: i32,
    ) -> Result<bool, CgroupError> {
        self.create_inner(path, resources, Some(pid)).await
    }

    /// A cgroup this call creates is removed again if setting it up fails, so
    /// an error leaves nothing behind for the caller to clean.
    async fn create_inner(&self, path: &CgroupPath, res: &Resources, pid: Option<i32>) -> Result<bool, CgroupError> {
        let rel = self.rel(path)?;
        res.validate()?;
        match &self.layout {
            Layout::V1(_) => v1::check(res)?,
            Layout::V2(_) => v2::check(res)?,
        }
        if self.driver == CgroupDriver::Systemd {
            systemd::check(path, pid)?;
        }
        let existed = self.exists(path);
        let result = self.setup(path, &rel, res, pid).await;
        if result.is_err() && !existed {
            if let Err(e) = self.remove(path).await {
                tracing::warn!(cgroup = %path, "cannot remove the half-made cgroup: {e}");
            }
        }
        result
    }

    async fn setup(
        &self,
        path: &CgroupPath,
        rel: &Path,
        res: &Resources,
        pid: Option<i32>,
    ) -> Result<bool, CgroupError> {
        let mut created = false;
        if self.driver == CgroupDriver::Systemd {
            created = systemd::start(&self.bus, path, self.version(), res, pid).await?;
        }
        created |= match &self.layout {
            Layout::V1(hs) => v1::create(hs, rel, res)?,
            Layout::V2(root) => v2::create(root, rel, res)?,
        };
        if let Some(pid) = pid {
            self.add_process(path, pid)?;
        }
        Ok(created)
    }

    /// Moves a process into the cgroup (every v1 hierarchy).
    pub fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        self.fs_paths_checked(path)?.iter().try_for_each(|dir| fs::write(dir, "cgroup.procs", &pid))
    }

    /// Applies `resources` to an existing cgroup (files only, also under the systemd driver).
    pub fn update(&self, path: &CgroupPath, resources: &Resources) -> Result<(), CgroupError> {
        let rel = self.rel(path)?;
        resources.validate()?;
        match &self.layout {
            Layout::V1(hs) => {
                fs::ensure_dir(&self.primary_dir(path)?)?;
                v1::apply(hs, &rel, resources)
            }
            Layout::V2(root) => v2::update(root, &rel, resources),
        }
    }

    /// Processes directly in the cgroup.
    pub fn procs(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        fs::procs(&self.primary_dir(path)?)
    }

    /// Processes in the cgroup and all its descendants.
    pub fn all_procs(&self, path: &CgroupPath) -> Result<Vec<i32>, CgroupError> {
        fs::procs_recursive(&self.primary_dir(path)?)
    }

    /// Sends `signal` to every process in the cgroup and its descendants.
    pub fn kill_all(&self, path: &CgroupPath, signal: Signal) -> Result<(), CgroupError> {
        let rel = self.rel(path)?;
        match &self.layout {
            Layout::V1(hs) => v1::kill_all(hs, &rel, signal),
            Layout::V2(root) => v2::kill_all(&root.join(&rel), signal),
        }
    }

    /// Removes the cgroup and its descendants; a missing cgroup is fine.
    pub async fn remove(&self, path: &CgroupPath) -> Result<(), CgroupError> {
        self.rel(path)?;
        if self.driver == CgroupDriver::Systemd {
            systemd::stop(&self.bus, path).await?;
        }
        // systemd leaves what it does not manage (v1 cpuset, sub-cgroups we made).
        let mut first_err = None;
        let mut dirs = self.fs_paths(path);
        // Hybrid hosts: OCI runtimes (runc) also make the cgroup in the controller-less v2 tree.
        if let (Layout::V1(hs), Ok(rel)) = (&self.layout, self.rel(path)) {
            if let Some(root) = hs.first().and_then(|h| h.mount.parent()) {
                dirs.push(root.join("unified").join(rel));
            }
        }
        for dir in dirs.into_iter().filter(|d| d.exists()) {
            if let Err(e) = fs::remove_tree(&dir).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn stats(&self, path: &CgroupPath) -> Result<Stats, CgroupError> {
        let rel = self.rel(path)?;
        match &self.layout {
            Layout::V1(hs) => v1::stats(hs, &rel),
            Layout::V2(root) => v2::stats(&root.join(&rel)),
        }
    }

    fn fs_paths_checked(&self, path: &CgroupPath) -> Result<Vec<PathBuf>, CgroupError> {
        self.rel(path)?;
        Ok(self.fs_paths(path))
    }

    /// The directory whose cgroup.procs is read: v2's one, or a v1 hierarchy every process joins.
    fn primary_dir(&self, path: &CgroupPath) -> Result<PathBuf, CgroupError> {
        let rel = self.rel(path)?;
        match &self.layout {
            Layout::V1(hs) => {
                v1::primary(hs).map(|h| h.mount.join(&rel)).ok_or_else(|| CgroupError::NotFound { path: rel.clone() })
            }
            Layout::V2(root) => Ok(root.join(&rel)),
        }
    }
}
