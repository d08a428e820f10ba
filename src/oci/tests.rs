use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_cri::v1::{
    Capability as CriCaps, ContainerConfig, ContainerMetadata, Device, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    Mount as CriMount, MountPropagation, PodSandboxConfig, PodSandboxMetadata, SecurityProfile,
    SupplementalGroupsPolicy,
};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Capability, LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::*;
use crate::config::HandlerKind;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: ContainerConfig,
    pub sandbox: PodSandboxConfig,
    pub image: ImageConfiguration,
    pub host: HostInfo,
    pub namespaces: PodNamespaces,
    pub pod_files: PodFiles,
    pub cgroup_v2: bool,
    pub privileged_host_devices: bool,
    pub image_annotations: BTreeMap<String, String>,
    pub handler: RuntimeHandler,
}

pub fn image(config: serde_json::Value) -> ImageConfiguration {
    let json = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": config,
    });
    serde_json::from_value(json).unwrap()
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("pod")).unwrap();
        std::fs::write(
            dir.path().join("rootfs/etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nweb:x:1000:1001::/home/web:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("rootfs/etc/group"),
            "root:x:0:\nwheel:x:10:root,web\nweb:x:1001:\naudio:x:29:web\nnogroup:x:65534:\n",
        )
        .unwrap();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.path().join("pod").join(f), "x\n").unwrap();
        }
        let pod = dir.path().join("pod");
        Fixture {
            config: ContainerConfig {
                metadata: Some(ContainerMetadata { name: "app".to_string(), attempt: 0 }),
                image: Some(ImageSpec { image: "sha256:abc".to_string(), ..Default::default() }),
                linux: Some(LinuxContainerConfig {
                    resources: Some(LinuxContainerResources { oom_score_adj: 500, ..Default::default() }),
                    security_context: Some(LinuxContainerSecurityContext {
                        seccomp: Some(SecurityProfile { profile_type: 0, localhost_ref: String::new() }),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
            sandbox: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web-0".to_string(),
                    uid: "uid-1".to_string(),
                    namespace: "default".to_string(),
                    attempt: 0,
                }),
                hostname: "web-0".to_string(),
                linux: Some(LinuxPodSandboxConfig {
                    sysctls: HashMap::from([("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            image: image(serde_json::json!({
                "Entrypoint": ["/entry"], "Cmd": ["serve", "--port=80"],
                "Env": ["PATH=/app/bin:/usr/bin", "LANG=C.UTF-8"], "WorkingDir": "/srv",
            })),
            host: HostInfo {
                bounding_caps: host::caps_from_mask(0x1fffeffffff),
                apparmor_enabled: false,
                apparmor_default_profile: None,
                selinux_enabled: false,
                hostname: "node-1".to_string(),
                kernel: (6, 1),
                swap_accounting: true,
            },
            namespaces: PodNamespaces {
                network: Some(PathBuf::from("/run/cricket/ns/net/p1")),
                ipc: Some(PathBuf::from("/run/cricket/ns/ipc/p1")),
                uts: Some(PathBuf::from("/run/cricket/ns/uts/p1")),
                pid: PidNamespace::Container,
            },
            pod_files: PodFiles {
                hostname: Some(pod.join("hostname")),
                hosts: Some(pod.join("hosts")),
                resolv_conf: Some(pod.join("resolv.conf")),
                shm: Some(pod.join("shm")),
            },
            cgroup_v2: false,
            privileged_host_devices: true,
            image_annotations: BTreeMap::new(),
            handler: RuntimeHandler::new(HandlerKind::Linux),
            dir,
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn build(&self) -> Result<Built, SpecError> {
        let rootfs = self.rootfs();
        let volumes = self.dir.path().join("volumes");
        build(&SpecInput {
            sandbox_id: "p1",
            config: &self.config,
            sandbox: &self.sandbox,
            image: &self.image,
            rootfs: &rootfs,
            namespaces: self.namespaces.clone(),
            cgroups_path: "/kubepods/pod1/c1".to_string(),
            pod_files: self.pod_files.clone(),
            cgroup_v2: self.cgroup_v2,
            volumes_dir: &volumes,
            seccomp_default: DEFAULT_SECCOMP_PROFILE,
            host: &self.host,
            privileged_host_devices: self.privileged_host_devices,
            image_annotations: &self.image_annotations,
            handler: &self.handler,
        })
    }

    pub fn sc(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config.linux.as_mut().unwrap().security_context.as_mut().unwrap()
    }

    fn resources(&mut self) -> &mut LinuxContainerResources {
        self.config.linux.as_mut().unwrap().resources.as_mut().unwrap()
    }
}

fn spec(f: &Fixture) -> Spec {
    f.build().unwrap().spec
}

fn args(f: &Fixture) -> Vec<String> {
    spec(f).process().as_ref().unwrap().args().clone().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn args_follow_kubernetes_rules() {
    let mut f = Fixture::new();
    assert_eq!(args(&f), strings(&["/entry", "serve", "--port=80"]));
    f.config.args = strings(&["debug"]);
    assert_eq!(args(&f), strings(&["/entry", "debug"]));
    f.config.command = strings(&["/bin/sh", "-c"]);
    assert_eq!(args(&f), strings(&["/bin/sh", "-c", "debug"]));
    f.config.args.clear();
    assert_eq!(args(&f), strings(&["/bin/sh", "-c"]), "a command drops the image Cmd");
    f.config.command.clear();
    f.image = image(serde_json::json!({"Cmd": ["sh"]}));
    assert_eq!(args(&f), strings(&["sh"]));
    f.image = image(serde_json::json!({}));
    assert!(matches!(f.build(), Err(SpecError::NoCommand)));
}

#[test]
fn env_merges_image_and_cri_by_key() {
    let mut f = Fixture::new();
    f.config.envs = vec![
        KeyValue { key: "LANG".to_string(), value: "de_DE".to_string() },
        KeyValue { key: "EXTRA".to_string(), value: "a=b".to_string() },
    ];
    let env = spec(&f).process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env, strings(&["PATH=/app/bin:/usr/bin", "HOSTNAME=web-0", "LANG=de_DE", "EXTRA=a=b"]));

    f.image = image(serde_json::json!({"Cmd": ["sh"]}));
    f.config.envs = vec![KeyValue { key: "HOSTNAME".to_string(), value: "mine".to_string() }];
    f.namespaces.uts = None;
    let s = spec(&f);
    assert_eq!(
        s.process().as_ref().unwrap().env().clone().unwrap(),
        strings(&[process::DEFAULT_PATH, "HOSTNAME=mine"])
    );
    assert_eq!(s.hostname(), &None, "no hostname without a UTS namespace");
    let env = {
        f.config.envs.clear();
        spec(&f).process().as_ref().unwrap().env().clone().unwrap()
    };
    assert!(env.contains(&"HOSTNAME=node-1".to_string()), "host UTS uses the host's name: {env:?}");
}

#[test]
fn cwd_terminal_and_root() {
    let mut f = Fixture::new();
    let s = spec(&f);
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.terminal(), Some(false));
    assert_eq!(s.root().as_ref().unwrap().path(), &f.rootfs());
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    f.config.working_dir = "/work".to_string();
    f.config.tty = true;
    f.sc().readonly_rootfs = true;
    let s = spec(&f);
    assert_eq!(s.process().as_ref().unwrap().cwd(), Path::new("/work"));
    assert_eq!(s.process().as_ref().unwrap().terminal(), Some(true));
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    f.config.working_dir.clear();
    f.image = image(serde_json::json!({"Cmd": ["sh"]}));
    assert_eq!(spec(&f).process().as_ref().unwrap().cwd(), Path::new("/"));
    f.config.working_dir = "srv".to_string();
    assert!(matches!(f.build(), Err(SpecError::WorkingDir(_))));
}

fn identity(f: &Fixture) -> Result<Identity, SpecError> {
    f.build().map(|b| b.identity)
}

#[test]
fn user_resolution() {
    let mut f = Fixture::new();
    let root = identity(&f).unwrap();
    assert_eq!((root.uid, root.gid, root.additional_gids.clone()), (0, 0, vec![0, 10]));
    assert_eq!(root.username.as_deref(), Some("root"));

    for (user, uid, gid) in [
        ("web", 1000, 1001),
        ("1000", 1000, 1001),
        ("web:audio", 1000, 29),
        ("1000:5", 1000, 5),
        ("4242", 4242, 0),
        ("4242:web", 4242, 1001),
    ] {
        f.image = image(serde_json::json!({"Cmd": ["sh"], "User": user}));
        let id = identity(&f).unwrap();
        assert_eq!((id.uid, id.gid), (uid, gid), "{user}");
    }
    f.image = image(serde_json::json!({"Cmd": ["sh"], "User": "web"}));
    assert_eq!(identity(&f).unwrap().additional_gids, vec![1001, 10, 29]);

    for bad in ["ghost", "web:ghosts", "1000:"] {
        f.image = image(serde_json::json!({"Cmd": ["sh"], "User": bad}));
        match identity(&f) {
            Ok(id) if bad == "1000:" => assert_eq!(id.gid, 1001, "empty group means the user's"),
            Err(e @ SpecError::User { .. }) => assert!(e.is_invalid_argument() && e.to_string().contains(bad)),
            other => panic!("{bad}: {other:?}"),
        }
    }

    f.sc().run_as_user = Some(Int64Value { value: 65534 });
    let id = identity(&f).unwrap();
    assert_eq!(
        (id.uid, id.gid, id.username.as_deref()),
        (65534, 65534, Some("nobody")),
        "security context beats image"
    );
    f.sc().run_as_username = "web".to_string();
    f.sc().run_as_group = Some(Int64Value { value: 3000 });
    let id = identity(&f).unwrap();
    assert_eq!((id.uid, id.gid), (1000, 3000));
    assert_eq!(id.additional_gids, vec![3000, 10, 29]);
    let user = spec(&f).process().as_ref().unwrap().user().clone();
    assert_eq!((user.uid(), user.gid(), user.additional_gids().clone()), (1000, 3000, Some(vec![3000, 10, 29])));

    f.sc().run_as_user = Some(Int64Value { value: -1 });
    f.sc().run_as_username.clear();
    assert!(matches!(identity(&f), Err(SpecError::User { .. })));
}

#[test]
fn user_without_passwd_and_through_symlinks() {
    let mut f = Fixture::new();
    std::fs::remove_file(f.rootfs().join("etc/passwd")).unwrap();
    f.image = image(serde_json::json!({"Cmd": ["sh"], "User": "123"}));
    let id = identity(&f).unwrap();
    assert_eq!((id.uid, id.gid, id.username), (123, 0, None));
    f.image = image(serde_json::json!({"Cmd": ["sh"], "User": "web"}));
    assert!(matches!(identity(&f), Err(SpecError::User { .. })));

    // An absolute symlink resolves inside the rootfs, not to the host's /etc/passwd.
    std::fs::create_dir_all(f.rootfs().join("data")).unwrap();
    std::fs::write(f.rootfs().join("data/passwd"), "web:x:77:88::/:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("/data/passwd", f.rootfs().join("etc/passwd")).unwrap();
    let id = identity(&f).unwrap();
    assert_eq!((id.uid, id.gid), (77, 88));
}

#[test]
fn supplemental_groups_policy() {
    let mut f = Fixture::new();
    f.image = image(serde_json::json!({"Cmd": ["sh"], "User": "web"}));
    f.sc().supplemental_groups = vec![4000, 10];
    assert_eq!(identity(&f).unwrap().additional_gids, vec![1001, 10, 29, 4000]);
    f.sc().supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(identity(&f).unwrap().additional_gids, vec![1001, 4000, 10]);
}

fn caps_of(f: &Fixture) -> oci_spec::runtime::LinuxCapabilities {
    spec(f).process().as_ref().unwrap().capabilities().clone().unwrap()
}

#[test]
fn capabilities_default_add_drop_all() {
    let mut f = Fixture::new();
    let c = caps_of(&f);
    let default: oci_spec::runtime::Capabilities = caps::DEFAULT_CAPS.into_iter().collect();
    assert_eq!(c.bounding().as_ref(), Some(&default));
    assert_eq!(c.effective(), c.bounding());
    assert_eq!(c.permitted(), c.bounding());
    assert!(c.inheritable().as_ref().unwrap().is_empty());
    assert!(c.ambient().as_ref().unwrap().is_empty());

    f.sc().capabilities = Some(CriCaps {
        add_capabilities: strings(&["NET_ADMIN", "CAP_SYS_TIME", "sys_ptrace"]),
        drop_capabilities: strings(&["CAP_CHOWN", "KILL"]),
        add_ambient_capabilities: strings(&["NET_BIND_SERVICE"]),
    });
    let c = caps_of(&f);
    let b = c.bounding().clone().unwrap();
    for cap in [Capability::NetAdmin, Capability::SysTime, Capability::SysPtrace, Capability::NetBindService] {
        assert!(b.contains(&cap), "{cap:?}");
    }
    assert!(!b.contains(&Capability::Chown) && !b.contains(&Capability::Kill));
    let ambient: oci_spec::runtime::Capabilities = [Capability::NetBindService].into_iter().collect();
    assert_eq!(c.ambient().as_ref(), Some(&ambient));
    assert_eq!(c.inheritable().as_ref(), Some(&ambient));

    f.sc().capabilities = Some(CriCaps {
        add_capabilities: strings(&["ALL"]),
        drop_capabilities: strings(&["MKNOD"]),
        ..Default::default()
    });
    let b = caps_of(&f).bounding().clone().unwrap();
    assert!(b.contains(&Capability::SysAdmin) && !b.contains(&Capability::Mknod));
    assert!(!b.contains(&Capability::SysResource), "only what the host's bounding set has");

    f.sc().capabilities = Some(CriCaps {
        add_capabilities: strings(&["NET_RAW"]),
        drop_capabilities: strings(&["all"]),
        ..Default::default()
    });
    assert_eq!(caps_of(&f).bounding().clone().unwrap(), [Capability::NetRaw].into_iter().collect());

    f.sc().capabilities = Some(CriCaps { add_capabilities: strings(&["CAP_FLY"]), ..Default::default() });
    let err = f.build().unwrap_err();
    assert!(matches!(&err, SpecError::Capability(n) if n == "CAP_FLY") && err.is_invalid_argument());
}

#[test]
fn privileged_gets_everything() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    f.sc().capabilities = Some(CriCaps { drop_capabilities: strings(&["ALL"]), ..Default::default() });
    let s = spec(&f);
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.capabilities().as_ref().unwrap().bounding().as_ref(), Some(&f.host.bounding_caps));
    let linux = s.linux().as_ref().unwrap();
    assert_eq!(linux.seccomp(), &None, "privileged ignores the seccomp profile");
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
    let devices = linux.devices().clone().unwrap();
    assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));
    assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts")));
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let m = find_mount(&s, dest);
        assert!(m.options().as_ref().unwrap().contains(&"rw".to_string()), "{dest} is rw");
    }
}

#[test]
fn privileged_without_host_devices() {
    let mut f = Fixture::new();
    f.sc().privileged = true;
    f.privileged_host_devices = false;
    f.config.devices = vec![k8s_cri::v1::Device {
        container_path: "/dev/extra".into(),
        host_path: "/dev/zero".into(),
        permissions: "rw".into(),
    }];
    let s = spec(&f);
    let linux = s.linux().as_ref().unwrap();
    let paths: Vec<&Path> = linux.devices().iter().flatten().map(|d| d.path().as_path()).collect();
    assert_eq!(paths, [Path::new("/dev/extra")], "only the requested device");
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A), "deny all first: {rules:?}");
    let last = rules.last().unwrap();
    assert_eq!(
        (last.allow(), last.major(), last.minor(), last.access().as_deref()),
        (true, Some(1), Some(5), Some("rw"))
    );
    // Still privileged otherwise: every capability, writable /sys.
    let caps = s.process().as_ref().unwrap().capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref(), Some(&f.host.bounding_caps));
    assert!(find_mount(&s, "/sys").options().as_ref().unwrap().contains(&"rw".to_string()));
}

#[test]
fn masked_and_readonly_paths() {
    let mut f = Fixture::new();
    let s = spec(&f);
    let linux = s.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().clone().unwrap(), strings(&security::DEFAULT_MASKED_PATHS));
    assert_eq!(linux.readonly_paths().clone().unwrap(), strings(&security::DEFAULT_READONLY_PATHS));
    f.sc().masked_paths = strings(&["/proc/kcore"]);
    f.sc().readonly_paths = strings(&["/proc/sys"]);
    let s = spec(&f);
    assert_eq!(s.linux().as_ref().unwrap().masked_paths().clone().unwrap(), strings(&["/proc/kcore"]));
    assert_eq!(s.linux().as_ref().unwrap().readonly_paths().clone().unwrap(), strings(&["/proc/sys"]));
}

fn find_mount<'a>(s: &'a Spec, dest: &str) -> &'a Mount {
    s.mounts().iter().flatten().find(|m| m.destination() == Path::new(dest)).unwrap_or_else(|| panic!("no {dest}"))
}

fn destinations(s: &Spec) -> Vec<String> {
    s.mounts().iter().flatten().map(|m| m.destination().display().to_string()).collect()
}

#[test]
fn mounts_order_and_options() {
    let mut f = Fixture::new();
    let host = f.dir.path().join("host");
    std::fs::create_dir_all(host.join("data")).unwrap();
    let cri = |c: &str, h: &Path, ro: bool, p: MountPropagation| CriMount {
        container_path: c.to_string(),
        host_path: h.display().to_string(),
        readonly: ro,
        propagation: p as i32,
        ..Default::default()
    };
    f.image = image(serde_json::json!({"Cmd": ["sh"], "Volumes": {"/var/lib/db": {}, "/cache": {}}}));
    f.config.mounts = vec![
        cri("/data/sub", &host.join("data"), true, MountPropagation::PropagationHostToContainer),
        cri("/data", &host, false, MountPropagation::PropagationPrivate),
        cri("/etc/hosts", &host.join("hosts-missing"), false, MountPropagation::PropagationPrivate),
        cri("/cache", &host.join("cache"), false, MountPropagation::PropagationPrivate),
    ];
    let s = spec(&f);
    let dests = destinations(&s);
    assert_eq!(
        dests,
        strings(&[
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/var/lib/db",
            "/data",
            "/cache",
            "/data/sub",
            "/etc/hosts",
        ])
    );
    assert!(host.join("hosts-missing").is_dir(), "a missing host path is created as a directory");
    let opts = |d: &str| find_mount(&s, d).options().clone().unwrap();
    assert_eq!(opts("/data/sub"), strings(&["rbind", "rslave", "ro"]));
    assert_eq!(opts("/data"), strings(&["rbind", "rprivate", "rw"]));
    assert_eq!(opts("/dev/pts"), strings(&["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]));
    assert!(opts("/sys").contains(&"ro".to_string()));
    assert_eq!(find_mount(&s, "/sys/fs/cgroup").typ().as_deref(), Some("cgroup"));
    assert_eq!(find_mount(&s, "/dev/shm").source().as_deref(), Some(f.dir.path().join("pod/shm").as_path()));
    assert_eq!(find_mount(&s, "/etc/hostname").source().as_deref(), Some(f.dir.path().join("pod/hostname").as_path()));
    let volume = find_mount(&s, "/var/lib/db").source().clone().unwrap();
    assert!(volume.starts_with(f.dir.path().join("volumes")) && volume.is_dir());
    assert_eq!(s.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rslave"));

    f.config.mounts = vec![cri("/shared", &host, false, MountPropagation::PropagationBidirectional)];
    f.cgroup_v2 = true;
    f.sc().readonly_rootfs = true;
    f.pod_files.shm = None;
    let s = spec(&f);
    assert_eq!(find_mount(&s, "/shared").options().clone().unwrap(), strings(&["rbind", "rshared", "rw"]));
    assert_eq!(s.linux().as_ref().unwrap().rootfs_propagation().as_deref(), Some("rshared"));
    assert_eq!(find_mount(&s, "/sys/fs/cgroup").typ().as_deref(), Some("cgroup2"));
    assert_eq!(find_mount(&s, "/dev/shm").source().as_deref(), Some(Path::new("/dev/shm")), "host IPC");
    assert!(find_mount(&s, "/etc/hosts").options().as_ref().unwrap().contains(&"ro".to_string()));
}

#[test]
fn recursive_read_only_and_bad_mounts() {
    let mut f = Fixture::new();
    let host = f.dir.path().to_path_buf();
    let mut m = CriMount {
        container_path: "/ro".to_string(),
        host_path: host.display().to_string(),
        readonly: true,
        recursive_read_only: true,
        ..Default::default()
    };
    f.config.mounts = vec![m.clone()];
    assert_eq!(find_mount(&spec(&f), "/ro").options().clone().unwrap(), strings(&["rbind", "rprivate", "ro", "rro"]));
    m.readonly = false;
    f.config.mounts = vec![m.clone()];
    assert!(matches!(f.build(), Err(SpecError::Mount { .. })));
    m.readonly = true;
    m.propagation = MountPropagation::PropagationHostToContainer as i32;
    f.config.mounts = vec![m.clone()];
    assert!(matches!(f.build(), Err(SpecError::Mount { .. })));
    m.recursive_read_only = false;
    m.container_path = "relative".to_string();
    f.config.mounts = vec![m.clone()];
    assert!(matches!(f.build(), Err(SpecError::Mount { .. })));
    m.container_path = "/img".to_string();
    m.host_path.clear();
    m.image = Some(ImageSpec { image: "busybox".to_string(), ..Default::default() });
    f.config.mounts = vec![m];
    let err = f.build().unwrap_err();
    assert!(err.to_string().contains("image volume"), "{err}");
}

#[test]
fn devices_from_cri_and_rules() {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let mut f = Fixture::new();
    let devdir = f.dir.path().join("devs");
    std::fs::create_dir_all(devdir.join("sub")).unwrap();
    mknod(&devdir.join("a"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o660), makedev(1, 3)).unwrap();
    mknod(&devdir.join("sub/b"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(7, 0)).unwrap();
    std::fs::write(devdir.join("plain"), "").unwrap();
    f.config.devices = vec![
        Device {
            container_path: "/dev/mynull".to_string(),
            host_path: "/dev/null".to_string(),
            permissions: "rw".to_string(),
        },
        Device {
            container_path: "/dev/group".to_string(),
            host_path: devdir.display().to_string(),
            permissions: String::new(),
        },
    ];
    let s = spec(&f);
    let linux = s.linux().as_ref().unwrap();
    let mut devices: Vec<(String, LinuxDeviceType, i64, i64)> = linux
        .devices()
        .iter()
        .flatten()
        .map(|d| (d.path().display().to_string(), d.typ(), d.major(), d.minor()))
        .collect();
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        devices,
        vec![
            ("/dev/group/a".to_string(), LinuxDeviceType::C, 1, 3),
            ("/dev/group/sub/b".to_string(), LinuxDeviceType::B, 7, 0),
            ("/dev/mynull".to_string(), LinuxDeviceType::C, 1, 3),
        ]
    );
    let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
    assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A), "deny all first");
    let rendered: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    assert!(rendered.iter().any(|r| r.contains("c 1:3 rw")), "{rendered:?}");
    assert!(rendered.iter().any(|r| r.contains("b 7:0 rwm")), "{rendered:?}");
    assert!(rendered.iter().any(|r| r.contains("c 136:* rwm")), "ptys allowed: {rendered:?}");

    f.config.devices = vec![Device {
        container_path: "/dev/x".to_string(),
        host_path: devdir.join("plain").display().to_string(),
        permissions: "rw".to_string(),
    }];
    assert!(matches!(f.build(), Err(SpecError::Device { .. })));
    f.config.devices[0].host_path = "/dev/null".to_string();
    f.config.devices[0].permissions = "rwx".to_string();
    assert!(matches!(f.build(), Err(SpecError::Device { .. })));
    f.config.devices[0].host_path = "/dev/does-not-exist".to_string();
    f.config.devices[0].permissions = "r".to_string();
    assert!(f.build().unwrap_err().is_invalid_argument());
}

#[test]
fn seccomp_profiles() {
    let mut f = Fixture::new();
    let s = spec(&f);
    let seccomp = s.linux().as_ref().unwrap().seccomp().clone().expect("RuntimeDefault applied");
    assert!(seccomp.syscalls().iter().flatten().any(|r| r.names().contains(&"openat".to_string())));

    f.sc().seccomp = None;
    assert_eq!(spec(&f).linux().as_ref().unwrap().seccomp(), &None, "unset is unconfined, as containerd");
    #[allow(deprecated)]
    {
        f.sc().seccomp_profile_path = "runtime/default".to_string();
    }
    assert!(spec(&f).linux().as_ref().unwrap().seccomp().is_some());

    let path = f.dir.path().join("profile.json");
    std::fs::write(&path, r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[]}"#).unwrap();
    f.sc().seccomp = Some(SecurityProfile { profile_type: 2, localhost_ref: path.display().to_string() });
    let s = spec(&f);
    let seccomp = s.linux().as_ref().unwrap().seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActLog);

    std::fs::write(&path, "{]").unwrap();
    let err = f.build().unwrap_err();
    assert!(err.is_invalid_argument() && err.to_string().contains("profile.json"), "{err}");
    f.sc().seccomp = Some(SecurityProfile { profile_type: 1, localhost_ref: String::new() });
    assert_eq!(spec(&f).linux().as_ref().unwrap().seccomp(), &None);
}

#[test]
fn apparmor_without_apparmor() {
    let mut f = Fixture::new();
    f.sc().apparmor = Some(SecurityProfile { profile_type: 0, localhost_ref: String::new() });
    assert_eq!(spec(&f).process().as_ref().unwrap().apparmor_profile(), &None);
    f.sc().apparmor = Some(SecurityProfile { profile_type: 2, localhost_ref: "my-profile".to_string() });
    let err = f.build().unwrap_err();
    assert!(matches!(err, SpecError::AppArmor(_)) && err.to_string().contains("my-profile"));
    f.host.apparmor_enabled = true;
    f.host.apparmor_default_profile = Some("cricket-default".to_string());
    f.sc().apparmor = None;
    assert_eq!(spec(&f).process().as_ref().unwrap().apparmor_profile().as_deref(), Some("cricket-default"));
    f.sc().privileged = true;
    assert_eq!(spec(&f).process().as_ref().unwrap().apparmor_profile(), &None);
}

#[test]
fn namespaces_per_mode() {
    let mut f = Fixture::new();
    let kinds = |s: &Spec| -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        s.linux().as_ref().unwrap().namespaces().iter().flatten().map(|n| (n.typ(), n.path().clone())).collect()
    };
    let s = spec(&f);
    assert_eq!(
        kinds(&s),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, Some(PathBuf::from("/run/cricket/ns/net/p1"))),
            (LinuxNamespaceType::Ipc, Some(PathBuf::from("/run/cricket/ns/ipc/p1"))),
            (LinuxNamespaceType::Uts, Some(PathBuf::from("/run/cricket/ns/uts/p1"))),
            (LinuxNamespaceType::Pid, None),
        ]
    );
    assert_eq!(s.hostname().as_deref(), Some("web-0"));
    f.namespaces =
        PodNamespaces { network: None, ipc: None, uts: None, pid: PidNamespace::Pod("/proc/42/ns/pid".into()) };
    f.cgroup_v2 = true;
    assert_eq!(
        kinds(&spec(&f)),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Pid, Some(PathBuf::from("/proc/42/ns/pid"))),
            (LinuxNamespaceType::Cgroup, None),
        ]
    );
    f.namespaces.pid = PidNamespace::Host;
    f.cgroup_v2 = false;
    assert_eq!(kinds(&spec(&f)), vec![(LinuxNamespaceType::Mount, None)]);
}

#[test]
fn resources_sysctls_and_oom() {
    let mut f = Fixture::new();
    *f.resources() = LinuxContainerResources {
        cpu_period: 100000,
        cpu_quota: 50000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        oom_score_adj: 2000,
        cpuset_cpus: "0-1".to_string(),
        hugepage_limits: vec![k8s_cri::v1::HugepageLimit { page_size: "2MB".to_string(), limit: 4 << 20 }],
        unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
        ..Default::default()
    };
    let s = spec(&f);
    assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(1000));
    let linux = s.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/kubepods/pod1/c1")));
    assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"], "0");
    let r = linux.resources().as_ref().unwrap();
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!((cpu.shares(), cpu.quota(), cpu.period()), (Some(512), Some(50000), Some(100000)));
    assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
    assert_eq!(cpu.mems(), &None);
    let mem = r.memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(64 << 20)), "no swap beyond the limit");
    assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
    assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "1000000");
    assert_eq!(r.pids(), &None);
    f.resources().memory_swap_limit_in_bytes = 128 << 20;
    let s = spec(&f);
    let swap = s.linux().as_ref().unwrap().resources().as_ref().unwrap().memory().as_ref().unwrap().swap();
    assert_eq!(swap, Some(128 << 20));
    *f.resources() = LinuxContainerResources::default();
    let s = spec(&f);
    let r = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!((r.cpu(), r.memory()), (&None, &None), "zero means unset");
}

#[test]
fn annotations_and_scheduler() {
    let mut f = Fixture::new();
    f.config.annotations = HashMap::from([
        ("team".to_string(), "db".to_string()),
        (sched::SCHEDULER_ANNOTATION.to_string(), "SCHED_BATCH".to_string()),
    ]);
    let s = spec(&f);
    let a = s.annotations().as_ref().unwrap();
    for (k, v) in [
        ("team", "db"),
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", "p1"),
        ("io.kubernetes.cri.container-name", "app"),
        ("io.kubernetes.cri.image-name", "sha256:abc"),
        ("io.kubernetes.cri.sandbox-name", "web-0"),
        ("io.kubernetes.cri.sandbox-namespace", "default"),
        ("io.kubernetes.cri.sandbox-uid", "uid-1"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k}");
    }
    // Gated: passed through, but no scheduler until the handler allows it.
    assert_eq!(a.get(sched::SCHEDULER_ANNOTATION).map(String::as_str), Some("SCHED_BATCH"));
    assert!(s.process().as_ref().unwrap().scheduler().is_none());
    f.handler.allowed_annotations =
        vec![sched::SCHEDULER_ANNOTATION.to_string(), sched::IO_PRIORITY_ANNOTATION.to_string()];
    assert!(spec(&f).process().as_ref().unwrap().scheduler().is_some());
    f.config.annotations.insert(sched::IO_PRIORITY_ANNOTATION.to_string(), "BE:9".to_string());
    let err = f.build().unwrap_err();
    assert!(err.is_invalid_argument() && err.to_string().contains(sched::IO_PRIORITY_ANNOTATION));
}

#[test]
fn image_annotations_and_oci_runtimes() {
    let mut f = Fixture::new();
    f.config.annotations =
        HashMap::from([("run.oci.handler".to_string(), "krun".to_string()), ("team".to_string(), "db".to_string())]);
    f.image_annotations = BTreeMap::from([
        ("module.wasm.image/variant".to_string(), "compat".to_string()),
        ("team".to_string(), "image".to_string()),
        ("org.opencontainers.image.title".to_string(), "app".to_string()),
    ]);
    let s = spec(&f);
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a["team"], "db", "the container's win");
    assert_eq!(a["org.opencontainers.image.title"], "app");
    assert_eq!(a["module.wasm.image/variant"], "compat");
    assert_eq!(a["run.oci.handler"], "krun", "built-in executor: passed through, acted on by nobody");
    // An OCI runtime would act on them itself: only the allowed ones reach it.
    f.handler = RuntimeHandler {
        path: Some("/usr/bin/crun".into()),
        allowed_annotations: vec!["module.wasm.image/variant".to_string()],
        ..RuntimeHandler::new(HandlerKind::Oci)
    };
    let s = spec(&f);
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a.get("module.wasm.image/variant").map(String::as_str), Some("compat"));
    assert!(!a.contains_key("run.oci.handler"), "{a:?}");
    assert_eq!(a["team"], "db");
}

#[test]
fn spec_serialises_as_valid_json() {
    let f = Fixture::new();
    let s = spec(&f);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["ociVersion"], oci_spec::runtime::VERSION);
    assert!(json["process"]["capabilities"]["bounding"].as_array().unwrap().contains(&"CAP_KILL".into()));
    assert!(json.get("hooks").is_none());
    let back: Spec = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}
