//! Container RPCs: CRI requests to `container::Containers`, state and stats to CRI types.

use std::collections::HashMap;

use k8s_cri::v1::*;

use super::pod::labels_match;
use crate::container::{ContainerEvent, ContainerState, ContainerStats, Containers, Phase, PodStats};

fn cri_state(st: &ContainerState) -> ContainerState_ {
    match st.phase {
        Phase::Created => ContainerState_::ContainerCreated,
        Phase::Running => ContainerState_::ContainerRunning,
        Phase::Exited => ContainerState_::ContainerExited,
    }
}

type ContainerState_ = k8s_cri::v1::ContainerState;

fn image_spec(st: &ContainerState) -> ImageSpec {
    let mut spec = st.config.image.clone().unwrap_or_default();
    spec.image = st.image_name.clone();
    spec
}

pub fn status(st: &ContainerState) -> ContainerStatus {
    let user = LinuxContainerUser {
        uid: st.user.uid,
        gid: st.user.gid,
        supplemental_groups: st.user.supplemental_groups.clone(),
    };
    ContainerStatus {
        id: st.id.clone(),
        metadata: st.config.metadata.clone(),
        state: cri_state(st) as i32,
        created_at: st.created_at,
        started_at: st.started_at,
        finished_at: st.finished_at,
        exit_code: st.exit_code,
        image: Some(image_spec(st)),
        image_ref: st.image_ref.clone(),
        image_id: st.image_id.clone(),
        reason: st.reason.clone(),
        message: st.message.clone(),
        labels: st.config.labels.clone(),
        annotations: st.config.annotations.clone(),
        mounts: st.config.mounts.clone(),
        log_path: st.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        resources: st.resources.clone().map(|linux| ContainerResources { linux: Some(linux), windows: None }),
        user: Some(ContainerUser { linux: Some(user) }),
    }
}

/// Verbose info as crictl inspect shows it: pid, sandbox, runtime details and the OCI spec.
pub fn info(st: &ContainerState, spec: Option<serde_json::Value>) -> HashMap<String, String> {
    let doc = serde_json::json!({
        "runtimeSpec": spec,
        "pid": st.init.map(|p| p.pid),
        "monitorPid": st.monitor.map(|p| p.pid),
        "sandboxID": st.sandbox_id,
        "runtimeHandler": st.runtime_handler,
        "cgroup": st.cgroup,
        "monitorCgroup": st.monitor_cgroup,
        "stopSignal": st.stop_signal,
        "layers": st.layers,
        "config": st.config,
    });
    HashMap::from([("info".to_string(), doc.to_string())])
}

pub fn list(containers: &Containers, filter: Option<&ContainerFilter>) -> Vec<Container> {
    let mut items: Vec<ContainerState> = containers
        .list()
        .into_iter()
        .filter(|st| {
            let Some(f) = filter else { return true };
            (f.id.is_empty() || st.id.starts_with(&f.id))
                && (f.pod_sandbox_id.is_empty() || st.sandbox_id.starts_with(&f.pod_sandbox_id))
                && f.state.as_ref().is_none_or(|s| s.state == cri_state(st) as i32)
                && labels_match(&f.label_selector, &st.config.labels)
        })
        .collect();
    items.sort_by_key(|st| st.created_at);
    items
        .into_iter()
        .map(|st| Container {
            state: cri_state(&st) as i32,
            image: Some(image_spec(&st)),
            id: st.id,
            pod_sandbox_id: st.sandbox_id,
            metadata: st.config.metadata,
            image_ref: st.image_ref,
            image_id: st.image_id,
            created_at: st.created_at,
            labels: st.config.labels,
            annotations: st.config.annotations,
        })
        .collect()
}

pub fn matches_stats_filter(st: &ContainerState, f: Option<&ContainerStatsFilter>) -> bool {
    let Some(f) = f else { return true };
    (f.id.is_empty() || st.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || st.sandbox_id.starts_with(&f.pod_sandbox_id))
        && labels_match(&f.label_selector, &st.config.labels)
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

pub fn cpu(ts: i64, usage_ns: u64, nano_cores: Option<u64>) -> CpuUsage {
    CpuUsage { timestamp: ts, usage_core_nano_seconds: value(usage_ns), usage_nano_cores: nano_cores.and_then(value) }
}

pub fn memory(ts: i64, s: &crate::cgroup::Stats, limit: Option<u64>) -> MemoryUsage {
    MemoryUsage {
        timestamp: ts,
        working_set_bytes: value(s.memory_working_set),
        available_bytes: limit.map(|l| l.saturating_sub(s.memory_working_set)).and_then(value),
        usage_bytes: value(s.memory_usage),
        rss_bytes: value(s.memory_rss),
        page_faults: value(s.page_faults),
        major_page_faults: value(s.major_page_faults),
    }
}

pub fn stats(st: &ContainerState, s: &ContainerStats) -> k8s_cri::v1::ContainerStats {
    let ts = s.timestamp;
    let limit = st.resources.as_ref().map(|r| r.memory_limit_in_bytes).filter(|l| *l > 0).map(|l| l as u64);
    k8s_cri::v1::ContainerStats {
        attributes: Some(ContainerAttributes {
            id: st.id.clone(),
            metadata: st.config.metadata.clone(),
            labels: st.config.labels.clone(),
            annotations: st.config.annotations.clone(),
        }),
        cpu: Some(cpu(ts, s.cgroup.cpu_usage_ns, s.nano_cores)),
        memory: Some(memory(ts, &s.cgroup, limit)),
        writable_layer: Some(FilesystemUsage {
            timestamp: ts,
            fs_id: Some(FilesystemIdentifier { mountpoint: s.writable_mount.display().to_string() }),
            used_bytes: value(s.writable_bytes),
            inodes_used: value(s.writable_inodes),
        }),
        swap: None,
    }
}

pub fn event(ev: &ContainerEvent, pod: Option<PodSandboxStatus>) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: ev.container.id.clone(),
        container_event_type: super::pod::event_type(ev.kind),
        created_at: ev.at,
        pod_sandbox_status: pod,
        containers_statuses: vec![status(&ev.container)],
    }
}

pub fn pod_stats(sb: &crate::sandbox::SandboxState, s: &PodStats) -> PodSandboxStats {
    let ts = s.timestamp;
    let iface = |i: &crate::network::InterfaceStats| NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    let interfaces: Vec<NetworkInterfaceUsage> = s.interfaces.iter().filter(|i| i.name != "lo").map(iface).collect();
    let limit = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.memory_limit_in_bytes)
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: Some(cpu(ts, s.cgroup.cpu_usage_ns, s.nano_cores)),
            memory: Some(memory(ts, &s.cgroup, limit)),
            network: Some(NetworkUsage {
                timestamp: ts,
                default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
                interfaces,
            }),
            process: Some(ProcessUsage { timestamp: ts, process_count: value(s.cgroup.pids) }),
            containers: s.containers.iter().map(|(st, cs)| stats(st, cs)).collect(),
        }),
        windows: None,
    }
}
