//! CRI RuntimeService. Container RPCs answer UNIMPLEMENTED until the
//! container module exists.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::pod;
use crate::config::{CgroupDriver as Driver, Config};
use crate::network;
use crate::sandbox::Sandboxes;

pub struct RuntimeApi {
    config: Arc<Config>,
    sandboxes: Arc<Sandboxes>,
}

impl RuntimeApi {
    pub fn new(config: Arc<Config>, sandboxes: Arc<Sandboxes>) -> RuntimeApi {
        RuntimeApi { config, sandboxes }
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
        self.config
            .runtimes
            .keys()
            .map(|name| RuntimeHandler {
                // CRI names the default handler with the empty string.
                name: if name == "default" { String::new() } else { name.clone() },
                features: Some(RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
            })
            .collect()
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
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: self.handlers(),
            features: Some(RuntimeFeatures { supplemental_groups_policy: false }),
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
        self.sandboxes.stop(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }
    async fn remove_pod_sandbox(&self, req: Request<RemovePodSandboxRequest>) -> Reply<RemovePodSandboxResponse> {
        self.sandboxes.remove(&req.get_ref().pod_sandbox_id).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }
    async fn pod_sandbox_status(&self, req: Request<PodSandboxStatusRequest>) -> Reply<PodSandboxStatusResponse> {
        let req = req.get_ref();
        Ok(Response::new(pod::status(&self.sandboxes, &req.pod_sandbox_id, req.verbose)?))
    }
    async fn list_pod_sandbox(&self, req: Request<ListPodSandboxRequest>) -> Reply<ListPodSandboxResponse> {
        let items = pod::list(&self.sandboxes, req.get_ref().filter.as_ref());
        Ok(Response::new(ListPodSandboxResponse { items }))
    }
    async fn create_container(&self, _req: Request<CreateContainerRequest>) -> Reply<CreateContainerResponse> {
        Err(not_built("CreateContainer"))
    }
    async fn start_container(&self, _req: Request<StartContainerRequest>) -> Reply<StartContainerResponse> {
        Err(not_built("StartContainer"))
    }
    async fn stop_container(&self, _req: Request<StopContainerRequest>) -> Reply<StopContainerResponse> {
        Err(not_built("StopContainer"))
    }
    async fn remove_container(&self, _req: Request<RemoveContainerRequest>) -> Reply<RemoveContainerResponse> {
        Err(not_built("RemoveContainer"))
    }
    async fn list_containers(&self, _req: Request<ListContainersRequest>) -> Reply<ListContainersResponse> {
        Err(not_built("ListContainers"))
    }
    async fn container_status(&self, _req: Request<ContainerStatusRequest>) -> Reply<ContainerStatusResponse> {
        Err(not_built("ContainerStatus"))
    }
    async fn update_container_resources(
        &self,
        _req: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        Err(not_built("UpdateContainerResources"))
    }
    async fn reopen_container_log(
        &self,
        _req: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        Err(not_built("ReopenContainerLog"))
    }
    async fn exec_sync(&self, _req: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        Err(not_built("ExecSync"))
    }
    async fn exec(&self, _req: Request<ExecRequest>) -> Reply<ExecResponse> {
        Err(not_built("Exec"))
    }
    async fn attach(&self, _req: Request<AttachRequest>) -> Reply<AttachResponse> {
        Err(not_built("Attach"))
    }
    async fn port_forward(&self, _req: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        Err(not_built("PortForward"))
    }
    async fn container_stats(&self, _req: Request<ContainerStatsRequest>) -> Reply<ContainerStatsResponse> {
        Err(not_built("ContainerStats"))
    }
    async fn list_container_stats(
        &self,
        _req: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        Err(not_built("ListContainerStats"))
    }
    async fn pod_sandbox_stats(&self, _req: Request<PodSandboxStatsRequest>) -> Reply<PodSandboxStatsResponse> {
        Err(not_built("PodSandboxStats"))
    }
    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        Err(not_built("ListPodSandboxStats"))
    }
    async fn checkpoint_container(
        &self,
        _req: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(not_built("CheckpointContainer"))
    }

    type GetContainerEventsStream = BoxStream<'static, Result<ContainerEventResponse, Status>>;

    async fn get_container_events(&self, _req: Request<GetEventsRequest>) -> Reply<Self::GetContainerEventsStream> {
        use tokio::sync::broadcast::error::RecvError;
        let events = self.sandboxes.subscribe();
        let stream = futures::stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            match events.recv().await {
                Ok(ev) => Some((Ok(pod::event(&ev)), Some(events))),
                Err(RecvError::Closed) => None,
                // Say so and end: a subscriber that missed events must relist.
                Err(RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!(
                        "{n} events were dropped because this subscriber fell behind; list again and resubscribe"
                    ))),
                    None,
                )),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
    async fn list_metric_descriptors(
        &self,
        _req: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        Err(not_built("ListMetricDescriptors"))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        Err(not_built("ListPodSandboxMetrics"))
    }
}
