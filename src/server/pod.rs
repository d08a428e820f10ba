//! Pod sandbox RPCs: CRI requests to `sandbox::Sandboxes`, state to CRI types.

use std::collections::HashMap;

use k8s_cri::v1::*;
use tonic::Status;

use crate::sandbox::{EventKind, LifecycleEvent, SandboxState, Sandboxes};

fn cri_state(st: &SandboxState) -> i32 {
    if st.is_ready() {
        PodSandboxState::SandboxReady as i32
    } else {
        PodSandboxState::SandboxNotready as i32
    }
}

fn network_status(st: &SandboxState) -> PodSandboxNetworkStatus {
    let mut ips = st.ips.iter().map(|ip| ip.to_string());
    PodSandboxNetworkStatus { ip: ips.next().unwrap_or_default(), additional_ips: ips.map(|ip| PodIp { ip }).collect() }
}

/// The CRI status of a sandbox state.
pub fn sandbox_status(st: &SandboxState) -> PodSandboxStatus {
    let options = st
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    PodSandboxStatus {
        id: st.id.clone(),
        metadata: st.config.metadata.clone(),
        state: cri_state(st),
        created_at: st.created_at,
        network: Some(network_status(st)),
        linux: Some(LinuxPodSandboxStatus { namespaces: Some(Namespace { options: Some(options) }) }),
        labels: st.config.labels.clone(),
        annotations: st.config.annotations.clone(),
        runtime_handler: st.runtime_handler.clone(),
    }
}

pub fn status(sandboxes: &Sandboxes, id: &str, verbose: bool) -> Result<PodSandboxStatusResponse, Status> {
    let st = sandboxes.get(id)?.snapshot();
    let status = sandbox_status(&st);
    let mut info = HashMap::new();
    if verbose {
        let doc = serde_json::json!({
            "namespaces": st.namespaces,
            "init": st.init,
            "cgroup": st.cgroup,
            "cgroupCreated": st.cgroup_created,
            "network": st.network,
            "shm": st.shm,
            "filesDir": sandboxes.files_dir(&st.id),
            "config": st.config,
        });
        info.insert("info".to_string(), doc.to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(status),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::state::now_nanos(),
    })
}

pub fn list(sandboxes: &Sandboxes, filter: Option<&PodSandboxFilter>) -> Vec<PodSandbox> {
    let mut items: Vec<SandboxState> = sandboxes
        .list()
        .into_iter()
        .filter(|st| {
            let Some(f) = filter else { return true };
            (f.id.is_empty() || st.id.starts_with(&f.id))
                && f.state.as_ref().is_none_or(|s| s.state == cri_state(st))
                && labels_match(&f.label_selector, &st.config.labels)
        })
        .collect();
    items.sort_by_key(|st| st.created_at);
    items
        .into_iter()
        .map(|st| PodSandbox {
            state: cri_state(&st),
            id: st.id,
            metadata: st.config.metadata,
            created_at: st.created_at,
            labels: st.config.labels,
            annotations: st.config.annotations,
            runtime_handler: st.runtime_handler,
        })
        .collect()
}

/// The CRI event type of a lifecycle change (pods report as containers do).
pub fn event_type(kind: EventKind) -> i32 {
    let t = match kind {
        EventKind::Created => ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    t as i32
}

/// A CRI label selector: every pair must be present.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn event(ev: &LifecycleEvent) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: ev.id.clone(),
        container_event_type: event_type(ev.kind),
        created_at: ev.at,
        pod_sandbox_status: Some(sandbox_status(&ev.sandbox)),
        containers_statuses: Vec::new(),
    }
}
