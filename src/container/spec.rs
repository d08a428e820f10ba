//! The container's OCI spec from its CRI config, its pod and its image.

use std::sync::OnceLock;

use k8s_cri::v1::{ContainerConfig, NamespaceMode};
use oci_spec::image::ImageConfiguration;

use super::lifecycle::pid_mode;
use super::rootfs::Rootfs;
use super::*;
use crate::cgroup::{CgroupDriver, Version};
use crate::image::store::ImageRecord;
use crate::oci::{self, HostInfo, PidNamespace, PodFiles, PodNamespaces, SpecInput};
use crate::sandbox::namespaces::NsKind;
use crate::sandbox::SandboxState;

pub(super) struct BuiltSpec {
    pub spec: oci_spec::runtime::Spec,
    pub user: Identity,
}

/// Host facts the spec depends on (bounding capabilities, AppArmor); read once.
fn host(cgroup_v2: bool) -> Result<&'static HostInfo, ContainerError> {
    static HOST: OnceLock<HostInfo> = OnceLock::new();
    if let Some(host) = HOST.get() {
        return Ok(host);
    }
    let host = HostInfo::detect(cgroup_v2)?;
    Ok(HOST.get_or_init(|| host))
}

impl Containers {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spec(
        &self,
        sandbox: &SandboxState,
        config: &ContainerConfig,
        (image, record): (&ImageConfiguration, &ImageRecord),
        fs: &Rootfs,
        cgroup: &CgroupPath,
        state_dir: &Path,
    ) -> Result<BuiltSpec, ContainerError> {
        let pid = match pid_mode(config) {
            (NamespaceMode::Node, _) => PidNamespace::Host,
            (NamespaceMode::Container, _) => PidNamespace::Container,
            (NamespaceMode::Target, target) => {
                let target = self.get(&target)?.snapshot();
                let init = target.init.filter(|p| p.alive()).ok_or_else(|| {
                    ContainerError::Invalid(format!(
                        "target container {} of the PID namespace is not running",
                        target.id
                    ))
                })?;
                PidNamespace::Pod(PathBuf::from(format!("/proc/{}/ns/pid", init.pid)))
            }
            (NamespaceMode::Pod, _) => match &sandbox.init {
                Some(init) => PidNamespace::Pod(PathBuf::from(format!("/proc/{}/ns/pid", init.pid))),
                // A pod whose own PID mode isn't POD gives each container its own namespace.
                None => PidNamespace::Container,
            },
        };
        let namespaces = PodNamespaces {
            network: sandbox.namespaces.get(&NsKind::Net).cloned(),
            ipc: sandbox.namespaces.get(&NsKind::Ipc).cloned(),
            uts: sandbox.namespaces.get(&NsKind::Uts).cloned(),
            pid,
        };
        let files = self.sandboxes.files_dir(&sandbox.id);
        let pod_files = PodFiles {
            hostname: Some(files.join("hostname")),
            hosts: Some(files.join("hosts")),
            resolv_conf: Some(files.join("resolv.conf")),
            shm: sandbox.shm.clone(),
        };
        let cgroups_path = match self.cgroups.driver() {
            CgroupDriver::Systemd => cgroup.0.clone(),
            CgroupDriver::Cgroupfs => self.cgroups.relative_path(cgroup)?,
        };
        let volumes_dir = state_dir.join("volumes");
        let cgroup_v2 = self.cgroups.version() == Version::V2;
        let input = SpecInput {
            sandbox_id: &sandbox.id,
            config,
            sandbox: &sandbox.config,
            image,
            rootfs: &fs.target,
            namespaces,
            cgroups_path,
            pod_files,
            cgroup_v2,
            volumes_dir: &volumes_dir,
            seccomp_default: oci::DEFAULT_SECCOMP_PROFILE,
            host: host(cgroup_v2)?,
            privileged_host_devices: !self.handler(&sandbox.runtime_handler)?.privileged_without_host_devices,
            image_annotations: &record.annotations,
            handler: self.handler(&sandbox.runtime_handler)?,
        };
        let built = oci::build(&input)?;
        let user = Identity {
            uid: built.identity.uid as i64,
            gid: built.identity.gid as i64,
            supplemental_groups: built.identity.additional_gids.iter().map(|g| *g as i64).collect(),
        };
        Ok(BuiltSpec { spec: built.spec, user })
    }
}
