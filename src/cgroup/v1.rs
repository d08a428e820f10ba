//! cgroup v1: the same relative path in every hierarchy.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use super::fs::{self, read, read_opt, read_u64, write};
use super::resources::page_size_name;
use super::{CgroupError, Hierarchy, Resources, Stats};

fn dir(hs: &[Hierarchy], controller: &str, rel: &Path) -> Option<PathBuf> {
    hs.iter().find(|h| h.has(controller)).map(|h| h.mount.join(rel))
}

fn require(hs: &[Hierarchy], controller: &str, rel: &Path, setting: &str) -> Result<PathBuf, CgroupError> {
    dir(hs, controller, rel).ok_or_else(|| CgroupError::Unsupported {
        setting: setting.into(),
        reason: format!("no cgroup v1 hierarchy has the {controller} controller"),
    })
}

/// The hierarchy whose cgroup.procs stands for all: every process joins every hierarchy.
pub(super) fn primary(hs: &[Hierarchy]) -> Option<&Hierarchy> {
    ["pids", "freezer", "memory", "cpu", "name=systemd"]
        .iter()
        .find_map(|c| hs.iter().find(|h| h.has(c)))
        .or_else(|| hs.first())
}

pub(super) fn create(hs: &[Hierarchy], rel: &Path, res: &Resources) -> Result<bool, CgroupError> {
    check(res)?;
    let mut created = false;
    for h in hs {
        let cpuset = h.has("cpuset");
        created |= fs::mkdir_p(&h.mount, rel, |d| if cpuset { init_cpuset(d) } else { Ok(()) })?;
    }
    apply(hs, rel, res)?;
    Ok(created)
}

/// A new v1 cpuset starts with empty cpus/mems and takes no tasks until they are set.
fn init_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read(dir, file)?.trim().is_empty() {
            write(dir, file, read(parent, file)?.trim())?;
        }
    }
    Ok(())
}

pub(super) fn check(res: &Resources) -> Result<(), CgroupError> {
    if let Some(key) = res.unified.keys().next() {
        return Err(CgroupError::Unsupported {
            setting: format!("unified {key}"),
            reason: "unified settings need cgroup v2, and this host runs cgroup v1".into(),
        });
    }
    Ok(())
}

pub(super) fn apply(hs: &[Hierarchy], rel: &Path, res: &Resources) -> Result<(), CgroupError> {
    check(res)?;
    if res.cpu_shares.is_some() || res.cpu_quota.is_some() || res.cpu_period.is_some() {
        let d = require(hs, "cpu", rel, "cpu limits")?;
        if let Some(shares) = res.cpu_shares {
            write(&d, "cpu.shares", &shares.to_string())?;
        }
        set_cfs(&d, res.cpu_quota, res.cpu_period)?;
    }
    for (file, value) in [("cpuset.cpus", &res.cpuset_cpus), ("cpuset.mems", &res.cpuset_mems)] {
        if let Some(v) = value {
            write(&require(hs, "cpuset", rel, file)?, file, v)?;
        }
    }
    if res.memory_limit.is_some() || res.memory_swap.is_some() {
        set_memory(&require(hs, "memory", rel, "memory limits")?, res.memory_limit, res.memory_swap)?;
    }
    if let Some(p) = res.pids_limit {
        let value = if p < 0 { "max".to_string() } else { p.to_string() };
        write(&require(hs, "pids", rel, "pids.max")?, "pids.max", &value)?;
    }
    if !res.hugepage_limits.is_empty() {
        // kubelet sends a limit for every page size the node has; no controller, nothing to limit.
        match dir(hs, "hugetlb", rel) {
            Some(d) => set_hugetlb(&d, &res.hugepage_limits)?,
            None => tracing::debug!("hugetlb controller not mounted; hugepage limits ignored"),
        }
    }
    Ok(())
}

/// Writes period then quota; a shorter period can be refused (EINVAL) until the
/// quota fits the parent's, so then it is written again after the quota.
fn set_cfs(d: &Path, quota: Option<i64>, period: Option<u64>) -> Result<(), CgroupError> {
    let mut retry_period = false;
    if let Some(p) = period {
        match write(d, "cpu.cfs_period_us", &p.to_string()) {
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && quota.is_some() =>
            {
                retry_period = true;
            }
            r => r?,
        }
    }
    if let Some(q) = quota {
        write(d, "cpu.cfs_quota_us", &q.to_string())?;
        if retry_period {
            write(d, "cpu.cfs_period_us", &period.unwrap_or_default().to_string())?;
        }
    }
    Ok(())
}

/// memsw (memory+swap) must never be below the memory limit, so when both are set
/// the order depends on whether the limits go up or down. Without swap accounting
/// there is no memsw file and the swap limit is moot.
fn set_memory(d: &Path, memory: Option<i64>, swap: Option<i64>) -> Result<(), CgroupError> {
    const MEM: &str = "memory.limit_in_bytes";
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    let swap = swap.filter(|_| d.join(MEMSW).exists());
    match (memory, swap) {
        (Some(m), Some(s)) => {
            let current: u64 = read(d, MEM)?.trim().parse().unwrap_or(u64::MAX);
            if s == -1 || current < s as u64 {
                write(d, MEMSW, &s.to_string())?;
                write(d, MEM, &m.to_string())
            } else {
                write(d, MEM, &m.to_string())?;
                write(d, MEMSW, &s.to_string())
            }
        }
        (Some(m), None) => write(d, MEM, &m.to_string()),
        (None, Some(s)) => write(d, MEMSW, &s.to_string()),
        (None, None) => Ok(()),
    }
}

fn set_hugetlb(d: &Path, limits: &[(String, u64)]) -> Result<(), CgroupError> {
    for (size, limit) in limits {
        let name = page_size_name(size)?;
        let file = format!("hugetlb.{name}.limit_in_bytes");
        if !d.join(&file).exists() {
            return Err(CgroupError::NoFile {
                path: d.join(&file),
                value: limit.to_string(),
                hint: format!("this kernel has no {name} huge pages"),
            });
        }
        write(d, &file, &limit.to_string())?;
        let rsvd = format!("hugetlb.{name}.rsvd.limit_in_bytes");
        if d.join(&rsvd).exists() {
            write(d, &rsvd, &limit.to_string())?;
        }
    }
    Ok(())
}

pub(super) fn stats(hs: &[Hierarchy], rel: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    fs::ensure_dir(&primary(hs).map(|h| h.mount.join(rel)).unwrap_or_default())?;
    if let Some(d) = dir(hs, "cpuacct", rel) {
        s.cpu_usage_ns = read_u64(&d, "cpuacct.usage")?;
    }
    if let Some(d) = dir(hs, "memory", rel) {
        s.memory_usage = read_u64(&d, "memory.usage_in_bytes")?;
        let stat = read_opt(&d, "memory.stat")?.unwrap_or_default();
        s.memory_working_set = s.memory_usage.saturating_sub(fs::keyed(&stat, "total_inactive_file"));
        s.memory_rss = fs::keyed(&stat, "total_rss");
        s.page_faults = fs::keyed(&stat, "total_pgfault");
        s.major_page_faults = fs::keyed(&stat, "total_pgmajfault");
        s.oom_kills = fs::keyed(&read_opt(&d, "memory.oom_control")?.unwrap_or_default(), "oom_kill");
    }
    if let Some(d) = dir(hs, "pids", rel) {
        s.pids = read_u64(&d, "pids.current")?;
    }
    Ok(s)
}

/// Freezes so nothing forks between listing and signalling, signals, thaws.
/// A cgroup that was already frozen (paused) stays so, unless killed.
pub(super) fn kill_all(hs: &[Hierarchy], rel: &Path, signal: Signal) -> Result<(), CgroupError> {
    let Some(fz) = dir(hs, "freezer", rel) else {
        let d = primary(hs).map(|h| h.mount.join(rel)).unwrap_or_default();
        return fs::signal_all(&d, signal);
    };
    let was_frozen = read(&fz, "freezer.state")?.trim() == "FROZEN";
    if !was_frozen {
        let frozen = fs::wait_until(|| {
            // Re-writing FROZEN nudges tasks that forked while freezing.
            write(&fz, "freezer.state", "FROZEN")?;
            Ok(read(&fz, "freezer.state")?.trim() == "FROZEN")
        })?;
        if !frozen {
            tracing::warn!(cgroup = %fz.display(), "cgroup did not freeze; signalling anyway");
        }
    }
    let result = fs::signal_all(&fz, signal);
    if !was_frozen || signal == Signal::SIGKILL {
        write(&fz, "freezer.state", "THAWED")?;
    }
    result
}
