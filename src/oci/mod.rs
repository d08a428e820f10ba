//! Builds the OCI runtime spec (config.json) of a CRI container from its
//! ContainerConfig, the pod's config and namespaces, and the image config,
//! following the containerd CRI plugin's semantics. `build` is pure apart
//! from reading the rootfs' /etc/passwd and /etc/group, stat'ing devices and
//! mount sources, and creating missing bind sources and volume directories.

mod annotations;
mod caps;
mod devices;
mod host;
mod mounts;
mod process;
mod resources;
pub mod sched;
mod seccomp;
mod security;
mod user;

#[cfg(test)]
mod runc_test;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig};
use oci_spec::runtime::{Linux, LinuxNamespace, LinuxNamespaceType, Root, Spec};

use crate::config::RuntimeHandler;

pub use host::HostInfo;
pub use user::Identity;

/// cricket's RuntimeDefault seccomp profile (Docker profile format).
pub const DEFAULT_SECCOMP_PROFILE: &str = include_str!("../../conf/seccomp.json");

/// The pod's PID namespace as a container joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// The host's PID namespace (hostPID).
    Host,
    /// The pod's shared namespace, e.g. `/proc/<pod-init-pid>/ns/pid`.
    Pod(PathBuf),
    /// A new namespace of the container's own.
    Container,
}

/// The namespaces a container joins. `None` means the host's namespace.
#[derive(Debug, Clone)]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: PidNamespace,
}

/// The sandbox's files bind-mounted into each container.
#[derive(Debug, Clone, Default)]
pub struct PodFiles {
    pub hostname: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The pod's /dev/shm; `None` (host IPC) bind-mounts the host's /dev/shm.
    pub shm: Option<PathBuf>,
}

pub struct SpecInput<'a> {
    pub sandbox_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    pub image: &'a oci_spec::image::ImageConfiguration,
    /// Mounted rootfs (spec root.path); /etc/passwd and /etc/group are read
    /// from it, resolving symlinks inside it.
    pub rootfs: &'a Path,
    pub namespaces: PodNamespaces,
    /// Put in linux.cgroupsPath as given.
    pub cgroups_path: String,
    pub pod_files: PodFiles,
    pub cgroup_v2: bool,
    /// Image VOLUMEs get empty directories here, bind-mounted into the container.
    pub volumes_dir: &'a Path,
    /// The RuntimeDefault seccomp profile, Docker or OCI format JSON
    /// (usually [`DEFAULT_SECCOMP_PROFILE`]).
    pub seccomp_default: &'a str,
    pub host: &'a HostInfo,
    /// Privileged containers get every host device (the handler's
    /// `privileged_without_host_devices` turns this off).
    pub privileged_host_devices: bool,
    /// The image manifest's annotations; the container's win over them.
    pub image_annotations: &'a BTreeMap<String, String>,
    /// The pod's runtime handler: which gated annotations act.
    pub handler: &'a RuntimeHandler,
}

/// The spec and the identity its process runs as (for ContainerStatus.user).
#[derive(Debug, Clone)]
pub struct Built {
    pub spec: Spec,
    pub identity: Identity,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: neither the container config nor the image give one")]
    NoCommand,
    #[error("working directory {0:?} is not absolute")]
    WorkingDir(String),
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("capability {0:?} is unknown")]
    Capability(String),
    #[error("seccomp profile {path}: {reason}")]
    Seccomp { path: String, reason: String },
    #[error("apparmor: {0}")]
    AppArmor(String),
    #[error("device {path}: {reason}")]
    Device { path: String, reason: String },
    #[error("mount {path}: {reason}")]
    Mount { path: String, reason: String },
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation { key: String, value: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("assembling the spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

impl SpecError {
    /// Whether the request was at fault (gRPC InvalidArgument) rather than the host (Internal).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(self, SpecError::Io { .. } | SpecError::Oci(_))
    }

    fn io(what: impl Into<String>, source: io::Error) -> SpecError {
        SpecError::Io { what: what.into(), source }
    }
}

fn security_context(config: &ContainerConfig) -> LinuxContainerSecurityContext {
    config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default()
}

pub fn build(input: &SpecInput) -> Result<Built, SpecError> {
    let sc = security_context(input.config);
    let identity = user::resolve(input.rootfs, input.image, &sc)?;
    let caps = caps::build(&sc, &input.host.bounding_caps)?;
    let hostname = pod_hostname(input);
    let mut process = process::build(input, &sc, &identity, &hostname)?;
    process.set_capabilities(Some(caps.clone()));
    security::apply_process(input, &sc, &mut process)?;
    if let Some(adj) = resources::oom_score_adj(input.config) {
        process.set_oom_score_adj(Some(adj));
    }
    let annotations = annotations::build(input);
    sched::apply(&annotations::honoured(&annotations, input.handler), &mut process)?;

    let mut linux = Linux::default();
    linux.set_cgroups_path(Some(PathBuf::from(&input.cgroups_path)));
    linux.set_namespaces(Some(namespaces(input)));
    // Without host devices a privileged container gets the device set and rules of any other.
    let (devices, device_rules) = devices::build(input.config, sc.privileged && input.privileged_host_devices)?;
    linux.set_resources(Some(resources::build(input.config, input.host, device_rules)));
    linux.set_devices(Some(devices));
    let sysctls: HashMap<String, String> = input.sandbox.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default();
    if !sysctls.is_empty() {
        linux.set_sysctl(Some(sysctls));
    }
    security::apply_linux(input, &sc, caps.bounding().as_ref(), &mut linux)?;
    let (mounts, propagation) = mounts::build(input, &sc)?;
    linux.set_rootfs_propagation(propagation);

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_root(Some(
        Root::default().set_path(input.rootfs.to_path_buf()).set_readonly(Some(sc.readonly_rootfs)).clone(),
    ));
    spec.set_process(Some(process));
    spec.set_mounts(Some(mounts));
    spec.set_hostname(input.namespaces.uts.as_ref().map(|_| hostname));
    spec.set_annotations(Some(annotations));
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    Ok(Built { spec, identity })
}

/// The container's hostname: the pod's, or the host's when the pod uses the host UTS namespace.
fn pod_hostname(input: &SpecInput) -> String {
    if input.namespaces.uts.is_some() && !input.sandbox.hostname.is_empty() {
        input.sandbox.hostname.clone()
    } else {
        input.host.hostname.clone()
    }
}

fn namespaces(input: &SpecInput) -> Vec<LinuxNamespace> {
    let ns = |typ: LinuxNamespaceType, path: Option<&PathBuf>| {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path.cloned());
        n
    };
    let mut out = vec![ns(LinuxNamespaceType::Mount, None)];
    let pinned = [
        (LinuxNamespaceType::Network, &input.namespaces.network),
        (LinuxNamespaceType::Ipc, &input.namespaces.ipc),
        (LinuxNamespaceType::Uts, &input.namespaces.uts),
    ];
    for (typ, path) in pinned {
        if let Some(p) = path {
            out.push(ns(typ, Some(p)));
        }
    }
    match &input.namespaces.pid {
        PidNamespace::Host => {}
        PidNamespace::Pod(p) => out.push(ns(LinuxNamespaceType::Pid, Some(p))),
        PidNamespace::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
    }
    if input.cgroup_v2 {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    out
}
