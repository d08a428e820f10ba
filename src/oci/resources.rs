//! linux.resources from the CRI LinuxContainerResources (0 / empty = unset).

use k8s_cri::v1::{ContainerConfig, LinuxContainerResources};
use oci_spec::runtime::{LinuxCpu, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::HostInfo;

fn cri_resources(config: &ContainerConfig) -> Option<&LinuxContainerResources> {
    config.linux.as_ref().and_then(|l| l.resources.as_ref())
}

/// The kernel clamps to -1000..1000; kubelet always sends a value.
pub fn oom_score_adj(config: &ContainerConfig) -> Option<i32> {
    cri_resources(config).map(|r| r.oom_score_adj.clamp(-1000, 1000) as i32)
}

pub fn build(config: &ContainerConfig, host: &HostInfo, devices: Vec<LinuxDeviceCgroup>) -> LinuxResources {
    let mut out = LinuxResources::default();
    out.set_devices(Some(devices));
    let Some(r) = cri_resources(config) else {
        return out;
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }
    if r.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(r.memory_limit_in_bytes));
        // As containerd: without an explicit swap limit, swap is capped at the
        // memory limit so the container cannot swap.
        if host.swap_accounting {
            let swap =
                if r.memory_swap_limit_in_bytes > 0 { r.memory_swap_limit_in_bytes } else { r.memory_limit_in_bytes };
            memory.set_swap(Some(swap));
        }
        out.set_memory(Some(memory));
    }
    if !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                let mut l = LinuxHugepageLimit::default();
                l.set_page_size(h.page_size.clone()).set_limit(h.limit as i64);
                l
            })
            .collect();
        out.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    out
}
