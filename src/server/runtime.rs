//! CRI RuntimeService: pod and container RPCs, stats and events.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::{container, metrics_rpc, pod};
use crate::config::{CgroupDriver as Driver, Config};
use crate::container::Containers;
use crate::network;
use crate::sandbox::Sandboxes;
use crate::streaming::StreamingServer;

pub struct RuntimeApi {
    config: Arc<Config>,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    streaming: Arc<StreamingServer>,
}

impl RuntimeApi {
    pub fn new(
        config: Arc<Config>,
        sandboxes: Arc<Sandboxes>,
        containers: Arc<Containers>,
        streaming: Arc<StreamingServer>,
    ) -> RuntimeApi {
        RuntimeApi { config, sandboxes, containers, streaming }
    }

    fn runtime_condition(&self) -> RuntimeCondition {
        let overlay =
            std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
        let problem = if !overlay {
            Some(("OverlayUnavailable", "the kernel has no overlay filesystem (modprobe overlay)".to_string()))
        } else if !self.config.root.is_dir() {
            Some(("RootDirMissing", format!("root dir {} does not exist", self.config.root.display())))
        } else {
            None
        };
        condition("RuntimeReady", problem)
    }

    fn network_condition(&self) -> RuntimeCondition {
        let problem =
            network::find_network(&self.config.cni).err().map(|why| ("NetworkPluginNotReady", format!("cni: {why}")));
        condition("NetworkReady", problem)
    }

    fn handlers(&self) -> Vec<RuntimeHandler> {
        let features = self.containers.handler_features();
        self.config
            .runtimes
            .keys()
            .map(|name| {
                let f = features.get(name).copied().unwrap_or_default();
                RuntimeHandler {
                    // CRI names the default handler with the empty string.
                    name: if name == "default" { String::new() } else { name.clone() },
                    features: Some(RuntimeHandlerFeatures {
                        recursive_read_only_mounts: f.recursive_read_only_mounts,
                        user_namespaces: f.user_namespaces,
                    }),
                }
            })
            .collect()
    }

    /// Verbose Status' view of the handlers: type, binary, features and options.
    fn handlers_info(&self) -> serde_json::Value {
        let features = self.containers.handler_features();
        let handlers: Vec<serde_json::Value> = self
            .config
            .runtimes
            .iter()
            .map(|(name, h)| {
                serde_json::json!({
                    "name": name,
                    "type": h.kind,
                    "path": h.path,
                    "features": features.get(name).copied().unwrap_or_default(),
                    "options": {
                        "privileged_without_host_devices": h.privileged_without_host_devices,
                        "monitor_cgroup": h.monitor_cgroup,
                        "allowed_annotations": h.allowed_annotations,
                    },
                })
            })
            .collect();
        serde_json::Value::Array(handlers)
    }
}

fn condition(kind: &str, problem: Option<(&str, String)>) -> RuntimeCondition {
    match problem {
        None => RuntimeCondition { r#type: kind.into(), status: true, ..Default::default() },
        Some((reason, message)) => {
            RuntimeCondition { r#type: kind.into(), status: false, reason: reason.into(), message }
        }
    }
}

fn not_built(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by cricket yet"))
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(&self, _req: Request<VersionRequest>) -> Reply<VersionResponse> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "cricket".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let conditions = vec![self.runtime_condition(), self.network_condition()];
        let mut info = HashMap::new();
        if req.get_ref().verbose {
            let config = serde_json::to_string(&*self.config).map_err(|e| Status::internal(e.to_string()))?;
            info.insert("config".to_string(), config);
            let network = match network::find_network(&self.config.cni) {
                Ok((file, name)) => serde_json::json!({ "name": name, "file": file }),
                Err(reason) => serde_json::json!({ "error": reason }),
            };
            info.insert("network".to_string(), network.to_string());
            info.insert("runtimeHandlers".to_string(), self.handlers_info().to_string());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: self.handlers(),
            features: Some(RuntimeFeatures { supplemental_groups_policy: true }),
        }))
    }

    async fn runtime_config(&self, _req: Request<RuntimeConfigRequest>) -> Reply<RuntimeConfigResponse> {
        let driver = match self.config.cgroup.driver {
            Driver::Systemd => CgroupDriver::Systemd,
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration { cgroup_driver: driver as i32 }),
        }))
    }

    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Reply<UpdateRuntimeConfigResponse> {
        // Pod CIDRs come from the CNI config, so there is nothing to change; log what kubelet sent.
        let cidr =
            req.get_ref().runtime_config.as_ref().and_then(|c| c.network_config.as_ref()).map(|n| n.pod_cidr.clone());
        tracing::info!(pod_cidr = ?cidr, "UpdateRuntimeConfig: pod CIDR is taken from the CNI config");
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(&self, req: Request<RunPodSandboxRequest>) -> Reply<RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config is required"))?;
        let pod_sandbox_id = self.sandboxes.run(config, &req.runtime_handler).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id }))
    }
    async fn stop_pod_sandbox(&self, req: Request<StopPodSandboxRequest>) -> Reply<StopPodSandboxResponse> {
        self.containers.stop_pod(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }
    async fn remove_pod_sandbox(&self, req: Request<RemovePodSandboxRequest>) -> Reply<RemovePodSandboxResponse> {
        self.containers.remove_pod(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }
    async fn pod_sandbox_status(&self, req: Request<PodSandboxStatusRequest>) -> Reply<PodSandboxStatusResponse> {
        let req = req.get_ref();
        let mut reply = pod::status(&self.sandboxes, &req.pod_sandbox_id, req.verbose)?;
        if let Some(status) = &reply.status {
            let states = self.containers.in_sandbox(&status.id);
            reply.containers_statuses = states.iter().map(container::status).collect();
        }
        Ok(Response::new(reply))
    }
    async fn list_pod_sandbox(&self, req: Request<ListPodSandboxRequest>) -> Reply<ListPodSandboxResponse> {
        let items = pod::list(&self.sandboxes, req.get_ref().filter.as_ref());
        Ok(Response::new(ListPodSandboxResponse { items }))
    }
    async fn create_container(&self, req: Request<CreateContainerRequest>) -> Reply<CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| Status::invalid_argument("config is required"))?;
        let container_id = self.containers.create(&req.pod_sandbox_id, config).await?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }
    async fn start_container(&self, req: Request<StartContainerRequest>) -> Reply<StartContainerResponse> {
        self.containers.start(&req.get_ref().container_id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }
    async fn stop_container(&self, req: Request<StopContainerRequest>) -> Reply<StopContainerResponse> {
        let req = req.get_ref();
        self.containers.stop(&req.container_id, req.timeout).await?;
        Ok(Response::new(StopContainerResponse {}))
    }
    async fn remove_container(&self, req: Request<RemoveContainerRequest>) -> Reply<RemoveContainerResponse> {
        self.containers.remove(&req.get_ref().container_id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }
    async fn list_containers(&self, req: Request<ListContainersRequest>) -> Reply<ListContainersResponse> {
        let containers = container::list(&self.containers, req.get_ref().filter.as_ref());
        Ok(Response::new(ListContainersResponse { containers }))
    }
    async fn container_status(&self, req: Request<ContainerStatusRequest>) -> Reply<ContainerStatusResponse> {
        let req = req.get_ref();
        let st = self.containers.get(&req.container_id)?.snapshot();
        let info = if req.verbose { container::info(&st, self.containers.spec_of(&st.id)) } else { HashMap::new() };
        Ok(Response::new(ContainerStatusResponse { status: Some(container::status(&st)), info }))
    }
    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        let linux = req.linux.ok_or_else(|| Status::invalid_argument("linux resources are required"))?;
        self.containers.update_resources(&req.container_id, linux).await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }
    async fn reopen_container_log(&self, req: Request<ReopenContainerLogRequest>) -> Reply<ReopenContainerLogResponse> {
        self.containers.reopen_log(&req.get_ref().container_id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }
    async fn exec_sync(&self, req: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        let req = req.into_inner();
        let out = self.containers.exec_sync(&req.container_id, req.cmd, req.timeout).await?;
        Ok(Response::new(ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code }))
    }
    async fn exec(&self, req: Request<ExecRequest>) -> Reply<ExecResponse> {
        let url = self.streaming.exec(req.into_inner())?;
        Ok(Response::new(ExecResponse { url }))
    }
    async fn attach(&self, req: Request<AttachRequest>) -> Reply<AttachResponse> {
        let url = self.streaming.attach(req.into_inner())?;
        Ok(Response::new(AttachResponse { url }))
    }
    async fn port_forward(&self, req: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        let url = self.streaming.port_forward(req.into_inner())?;
        Ok(Response::new(PortForwardResponse { url }))
    }
    async fn container_stats(&self, req: Request<ContainerStatsRequest>) -> Reply<ContainerStatsResponse> {
        let (st, stats) = self.containers.stats(&req.get_ref().container_id).await?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(container::stats(&st, &stats)) }))
    }
    async fn list_container_stats(&self, req: Request<ListContainerStatsRequest>) -> Reply<ListContainerStatsResponse> {
        let filter = req.get_ref().filter.as_ref();
        let all = self.containers.list_stats(|st| container::matches_stats_filter(st, filter)).await;
        let stats = all.iter().map(|(st, s)| container::stats(st, s)).collect();
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }
    async fn pod_sandbox_stats(&self, req: Request<PodSandboxStatsRequest>) -> Reply<PodSandboxStatsResponse> {
        let (sb, stats) = self.containers.pod_stats(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(PodSandboxStatsResponse { stats: Some(container::pod_stats(&sb, &stats)) }))
    }
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        let filter = req.get_ref().filter.as_ref();
        let mut stats = Vec::new();
        for sb in self.sandboxes.list() {
            let keep = filter.is_none_or(|f| {
                (f.id.is_empty() || sb.id.starts_with(&f.id)) && pod::labels_match(&f.label_selector, &sb.config.labels)
            });
            if !keep {
                continue;
            }
            match self.containers.pod_stats(&sb.id).await {
                Ok((sb, s)) => stats.push(container::pod_stats(&sb, &s)),
                Err(e) => tracing::debug!(sandbox = %sb.id, error = %e, "no stats for a pod removed meanwhile"),
            }
        }
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }
    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(not_built("CheckpointContainer"))
    }

    type GetContainerEventsStream = BoxStream<'static, Result<ContainerEventResponse, Status>>;

    async fn get_container_events(&self, _req: Request<GetEventsRequest>) -> Reply<Self::GetContainerEventsStream> {
        use futures::StreamExt;
        let pods = events(self.sandboxes.subscribe(), |ev| pod::event(&ev));
        let sandboxes = self.sandboxes.clone();
        let containers = events(self.containers.subscribe(), move |ev| {
            let pod = sandboxes.get(&ev.container.sandbox_id).ok().map(|s| pod::sandbox_status(&s.snapshot()));
            container::event(&ev, pod)
        });
        // One subscriber that fell behind gets the error, then the end of the stream.
        let merged = futures::stream::select(pods, containers).scan(false, |failed, item| {
            let out = (!*failed).then_some(item);
            if let Some(Err(_)) = &out {
                *failed = true;
            }
            futures::future::ready(out)
        });
        Ok(Response::new(Box::pin(merged)))
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        Ok(Response::new(ListMetricDescriptorsResponse { descriptors: metrics_rpc::descriptors() }))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        let mut pod_metrics = Vec::new();
        for sb in self.sandboxes.list() {
            match self.containers.pod_stats(&sb.id).await {
                Ok((sb, s)) => pod_metrics.push(metrics_rpc::pod_metrics(&sb, &s)),
                Err(e) => tracing::debug!(sandbox = %sb.id, error = %e, "no metrics for a pod removed meanwhile"),
            }
        }
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }
}

/// A broadcast subscription as a stream of CRI events; a lagging subscriber
/// gets DATA_LOSS and the stream ends, since it must relist.
fn events<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
    map: impl Fn(T) -> ContainerEventResponse + Send + Sync + 'static,
) -> BoxStream<'static, Result<ContainerEventResponse, Status>> {
    use tokio::sync::broadcast::error::RecvError;
    let map = Arc::new(map);
    Box::pin(futures::stream::unfold(Some(rx), move |rx| {
        let map = map.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(map(ev)), Some(rx))),
                Err(RecvError::Closed) => None,
                Err(RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!(
                        "{n} events were dropped because this subscriber fell behind; list again and resubscribe"
                    ))),
                    None,
                )),
            }
        }
    }))
}
