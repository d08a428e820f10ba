//! The mount list: the standard filesystems, the pod's files, image
//! VOLUMEs and the CRI mounts, in the order the runtime must mount them.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{LinuxContainerSecurityContext, MountPropagation};
use oci_spec::runtime::Mount;
use sha2::{Digest, Sha256};

use super::{SpecError, SpecInput};

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn bind(dest: &Path, source: &Path, readonly: bool) -> Mount {
    let mut m = mount("", "bind", source, &["rbind", "rprivate", if readonly { "ro" } else { "rw" }]);
    m.set_destination(dest.to_path_buf());
    m
}

/// The cleaned absolute form of a container path, for comparing destinations.
fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The mounts, and linux.rootfsPropagation when a CRI mount propagates.
pub fn build(input: &SpecInput, sc: &LinuxContainerSecurityContext) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let (sys_ro, cgroup_ro) = if sc.privileged { ("rw", "rw") } else { ("ro", "ro") };
    let (cgroup_type, cgroup_source) = if input.cgroup_v2 { ("cgroup2", "cgroup2") } else { ("cgroup", "cgroup") };
    let shm = input.pod_files.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let mut out = vec![
        mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", Path::new("tmpfs"), &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/shm", "bind", &shm, &["rbind", "rprivate", "nosuid", "nodev", "noexec"]),
        mount("/dev/mqueue", "mqueue", Path::new("mqueue"), &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys_ro]),
        mount(
            "/sys/fs/cgroup",
            cgroup_type,
            Path::new(cgroup_source),
            &["nosuid", "noexec", "nodev", "relatime", cgroup_ro],
        ),
    ];
    let cri_dests: Vec<PathBuf> = input.config.mounts.iter().map(|m| clean(&m.container_path)).collect();
    let files = &input.pod_files;
    for (dest, file) in
        [("/etc/hostname", &files.hostname), ("/etc/hosts", &files.hosts), ("/etc/resolv.conf", &files.resolv_conf)]
    {
        if let Some(source) = file {
            if !cri_dests.iter().any(|d| d == Path::new(dest)) {
                out.push(bind(Path::new(dest), source, sc.readonly_rootfs));
            }
        }
    }
    let volumes = input.image.config().as_ref().and_then(|c| c.volumes().clone()).unwrap_or_default();
    for volume in volumes {
        let dest = clean(&volume);
        if dest == Path::new("/") || cri_dests.contains(&dest) {
            continue;
        }
        let name = hex::encode(&Sha256::digest(dest.as_os_str().as_encoded_bytes())[..16]);
        let source = input.volumes_dir.join(name);
        std::fs::create_dir_all(&source)
            .map_err(|e| SpecError::io(format!("creating volume directory {}", source.display()), e))?;
        out.push(bind(&dest, &source, false));
    }

    let mut cri: Vec<(PathBuf, &k8s_cri::v1::Mount)> =
        input.config.mounts.iter().map(|m| (clean(&m.container_path), m)).collect();
    // Parents before children; stable, so equal depths keep the request's order.
    cri.sort_by_key(|(dest, _)| dest.components().count());
    let mut propagation = None;
    for (dest, m) in cri {
        let (built, prop) = cri_mount(&dest, m)?;
        out.retain(|existing| existing.destination() != &dest);
        out.push(built);
        propagation = match (propagation, prop) {
            (_, "rshared") | (Some("rshared"), _) => Some("rshared"),
            (_, "rslave") | (Some("rslave"), _) => Some("rslave"),
            (p, _) => p,
        };
    }
    Ok((out, propagation.map(str::to_string)))
}

/// A CRI mount as an rbind. A missing host path is created as a directory,
/// as kubelet and containerd do for hostPath volumes of type "" (the host
/// path may not exist yet when the pod is scheduled).
fn cri_mount(dest: &Path, m: &k8s_cri::v1::Mount) -> Result<(Mount, &'static str), SpecError> {
    let err = |reason: &str| SpecError::Mount { path: m.container_path.clone(), reason: reason.to_string() };
    if !Path::new(&m.container_path).is_absolute() {
        return Err(err("the container path must be absolute"));
    }
    if m.host_path.is_empty() {
        return Err(err(if m.image.is_some() { "image volume mounts are not supported" } else { "no host path" }));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(err("ID-mapped mounts need user namespaces, which are not supported"));
    }
    let host = Path::new(&m.host_path);
    if !host.is_absolute() {
        return Err(err("the host path must be absolute"));
    }
    if !host.exists() {
        std::fs::create_dir_all(host)
            .map_err(|e| SpecError::io(format!("creating mount source {}", host.display()), e))?;
    }
    let source =
        host.canonicalize().map_err(|e| SpecError::io(format!("resolving mount source {}", host.display()), e))?;
    let propagation = match MountPropagation::try_from(m.propagation) {
        Ok(MountPropagation::PropagationPrivate) => "rprivate",
        Ok(MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => return Err(err("unknown propagation")),
    };
    let mut options = vec!["rbind", propagation, if m.readonly { "ro" } else { "rw" }];
    if m.recursive_read_only {
        if !m.readonly {
            return Err(err("recursive read-only needs a read-only mount"));
        }
        if propagation != "rprivate" {
            return Err(err("recursive read-only needs private propagation"));
        }
        options.push("rro");
    }
    let mut out = mount("", "bind", &source, &options);
    out.set_destination(dest.to_path_buf());
    Ok((out, propagation))
}
