//! Container and pod resource usage: cgroup counters, the writable layer's
//! size, the pod's network interfaces, and CPU rates from successive samples.

use super::*;
use crate::network::{interface_stats, InterfaceStats};
use crate::sandbox::namespaces::NsKind;

#[derive(Debug, Clone, Default)]
pub struct ContainerStats {
    /// Nanoseconds since the epoch when read.
    pub timestamp: i64,
    pub cgroup: cgroup::Stats,
    /// CPU use since the previous sample, in nanocores; None on the first sample.
    pub nano_cores: Option<u64>,
    /// Bytes and inodes of the container's upper dir.
    pub writable_bytes: u64,
    pub writable_inodes: u64,
    /// Where the writable layer lives (for CRI's FilesystemIdentifier).
    pub writable_mount: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct PodStats {
    pub timestamp: i64,
    pub cgroup: cgroup::Stats,
    pub nano_cores: Option<u64>,
    pub interfaces: Vec<InterfaceStats>,
    pub containers: Vec<(ContainerState, ContainerStats)>,
}

/// Last (timestamp, cumulative CPU ns) per container or pod ID.
#[derive(Default)]
pub(super) struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    fn rate(&self, id: &str, ts: i64, usage: u64) -> Option<u64> {
        let mut samples = self.0.lock().unwrap();
        let prev = samples.insert(id.to_string(), (ts, usage));
        let (pts, pusage) = prev?;
        let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
        let du = usage.checked_sub(pusage)? as u128;
        Some((du * 1_000_000_000 / dt) as u64)
    }

    pub(super) fn forget(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

impl Containers {
    /// Usage of one container; an exited one reports zeros for the cgroup.
    pub async fn stats(&self, id: &str) -> Result<(ContainerState, ContainerStats), ContainerError> {
        let st = self.get(id)?.snapshot();
        let stats = self.stats_of(&st).await;
        Ok((st, stats))
    }

    async fn stats_of(&self, st: &ContainerState) -> ContainerStats {
        let cgroup = match (&st.cgroup, st.phase) {
            (Some(cg), Phase::Created | Phase::Running) => self.cgroups.stats(cg).unwrap_or_default(),
            _ => cgroup::Stats::default(),
        };
        let timestamp = state::now_nanos();
        let nano_cores = self.cpu_samples.rate(&st.id, timestamp, cgroup.cpu_usage_ns);
        let dir = self.state_dir(&st.id).join("upper");
        let (writable_bytes, writable_inodes) =
            tokio::task::spawn_blocking(move || rootfs::usage(&dir)).await.unwrap_or_default();
        ContainerStats {
            timestamp,
            cgroup,
            nano_cores,
            writable_bytes,
            writable_inodes,
            writable_mount: self.config.root.clone(),
        }
    }

    /// Usage of every container matching `keep`.
    pub async fn list_stats(&self, keep: impl Fn(&ContainerState) -> bool) -> Vec<(ContainerState, ContainerStats)> {
        let states: Vec<ContainerState> = self.list().into_iter().filter(|st| keep(st)).collect();
        let all = states.iter().map(|st| self.stats_of(st));
        let stats = futures::future::join_all(all).await;
        states.into_iter().zip(stats).collect()
    }

    /// Usage of a pod: its cgroup, its network interfaces and its containers.
    pub async fn pod_stats(
        &self,
        sandbox_id: &str,
    ) -> Result<(crate::sandbox::SandboxState, PodStats), ContainerError> {
        let sb = self.sandboxes.get(sandbox_id)?.snapshot();
        let cgroup = match (&sb.cgroup, sb.is_ready()) {
            (Some(cg), true) => self.cgroups.stats(cg).unwrap_or_default(),
            _ => cgroup::Stats::default(),
        };
        let timestamp = state::now_nanos();
        let nano_cores = self.cpu_samples.rate(&sb.id, timestamp, cgroup.cpu_usage_ns);
        let interfaces = match sb.namespaces.get(&NsKind::Net) {
            Some(ns) if sb.is_ready() => {
                let ns = ns.clone();
                tokio::task::spawn_blocking(move || interface_stats(&ns)).await.ok().and_then(|r| r.ok())
            }
            _ => None,
        }
        .unwrap_or_default();
        let id = sb.id.clone();
        let containers = self.list_stats(|c| c.sandbox_id == id && c.phase != Phase::Exited).await;
        Ok((sb, PodStats { timestamp, cgroup, nano_cores, interfaces, containers }))
    }
}
