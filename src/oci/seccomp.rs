//! Seccomp profiles in Docker's format (a superset of OCI `LinuxSeccomp`
//! JSON: rules may carry `includes`/`excludes` on capabilities, arches and
//! kernel version, and `archMap` lists sub-architectures), converted into
//! OCI `linux.seccomp` for one container's capabilities on this host.

use std::path::Path;

use oci_spec::runtime::{
    Arch, Capabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSyscall,
};
use serde::Deserialize;

use super::SpecError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: Option<Vec<Arch>>,
    arch_map: Option<Vec<ArchMap>>,
    flags: Option<Vec<LinuxSeccompFilterFlag>>,
    listener_path: Option<std::path::PathBuf>,
    listener_metadata: Option<String>,
    syscalls: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    name: Option<String>,
    names: Option<Vec<String>>,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

/// What rules are selected against.
pub struct Target<'a> {
    /// The container's bounding capabilities.
    pub caps: &'a Capabilities,
    /// Kernel (major, minor).
    pub kernel: (u32, u32),
}

/// The host architecture as libseccomp and as Docker's `arches` filters name it.
fn native() -> (Arch, &'static str) {
    match std::env::consts::ARCH {
        "x86" => (Arch::ScmpArchX86, "x86"),
        "aarch64" => (Arch::ScmpArchAarch64, "arm64"),
        "arm" => (Arch::ScmpArchArm, "arm"),
        "powerpc64" => (Arch::ScmpArchPpc64le, "ppc64le"),
        "s390x" => (Arch::ScmpArchS390x, "s390x"),
        "riscv64" => (Arch::ScmpArchRiscv64, "riscv64"),
        "loongarch64" => (Arch::ScmpArchLoongarch64, "loong64"),
        _ => (Arch::ScmpArchX86_64, "amd64"),
    }
}

/// Reads a Localhost profile file.
pub fn load_file(path: &Path, target: &Target) -> Result<LinuxSeccomp, SpecError> {
    let err = |reason: String| SpecError::Seccomp { path: path.display().to_string(), reason };
    if !path.is_absolute() {
        return Err(err("a localhost profile must be an absolute path".to_string()));
    }
    let json = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    convert(&json, target).map_err(err)
}

/// Converts profile JSON; `Err` is the reason it is malformed.
pub fn convert(json: &str, target: &Target) -> Result<LinuxSeccomp, String> {
    let profile: Profile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let (arch, arch_name) = native();
    let architectures = match profile.arch_map.filter(|m| !m.is_empty()) {
        Some(map) => map
            .into_iter()
            .find(|m| m.architecture == arch)
            .map(|m| std::iter::once(arch).chain(m.sub_architectures.unwrap_or_default()).collect())
            .unwrap_or_default(),
        None => profile.architectures.unwrap_or_default(),
    };
    let has_cap = |name: &String| {
        let bare = name.trim().to_ascii_uppercase();
        let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_string();
        target.caps.iter().any(|c| c.to_string() == bare)
    };
    let kernel_at_least = |v: &String| -> Result<bool, String> {
        let mut parts = v.split('.').map(|p| p.trim().parse::<u32>());
        match (parts.next(), parts.next().unwrap_or(Ok(0))) {
            (Some(Ok(major)), Ok(minor)) => Ok(target.kernel >= (major, minor)),
            _ => Err(format!("minKernel {v:?} is not MAJOR.MINOR")),
        }
    };
    let mut syscalls = Vec::new();
    for (i, rule) in profile.syscalls.unwrap_or_default().into_iter().enumerate() {
        let names: Vec<String> = rule.name.into_iter().chain(rule.names.unwrap_or_default()).collect();
        if names.is_empty() || names.iter().any(|n| n.is_empty()) {
            return Err(format!("syscall rule {i} has no or empty names"));
        }
        let inc = &rule.includes;
        let exc = &rule.excludes;
        let included = inc.caps.iter().flatten().all(has_cap)
            && inc.arches.as_ref().is_none_or(|a| a.is_empty() || a.iter().any(|x| x == arch_name))
            && inc.min_kernel.as_ref().map_or(Ok(true), kernel_at_least)?;
        let excluded = exc.caps.iter().flatten().any(has_cap)
            || exc.arches.iter().flatten().any(|x| x == arch_name)
            || exc.min_kernel.as_ref().map_or(Ok(false), kernel_at_least)?;
        if !included || excluded {
            continue;
        }
        let mut s = LinuxSyscall::default();
        s.set_names(names).set_action(rule.action).set_errno_ret(rule.errno_ret).set_args(rule.args);
        syscalls.push(s);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(profile.default_action)
        .set_default_errno_ret(profile.default_errno_ret)
        .set_architectures(Some(architectures).filter(|a: &Vec<Arch>| !a.is_empty()))
        .set_flags(profile.flags)
        .set_listener_path(profile.listener_path)
        .set_listener_metadata(profile.listener_metadata)
        .set_syscalls(Some(syscalls));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    fn allowed(s: &LinuxSeccomp) -> Vec<String> {
        s.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
            .flat_map(|r| r.names().clone())
            .collect()
    }

    fn target(caps: &[Capability]) -> Capabilities {
        caps.iter().copied().collect()
    }

    #[test]
    fn default_profile_depends_on_capabilities() {
        let plain = target(&[Capability::Chown, Capability::Kill]);
        let s = convert(crate::oci::DEFAULT_SECCOMP_PROFILE, &Target { caps: &plain, kernel: (6, 1) }).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(1));
        let names = allowed(&s);
        for n in ["read", "openat", "execve", "ptrace", "rseq", "wait4"] {
            assert!(names.iter().any(|x| x == n), "{n} not allowed");
        }
        for n in ["mount", "unshare", "reboot", "chroot", "bpf"] {
            assert!(!names.iter().any(|x| x == n), "{n} allowed without its capability");
        }
        let clone3 = s.syscalls().iter().flatten().find(|r| r.names().contains(&"clone3".to_string())).unwrap();
        assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
        let clone = s.syscalls().iter().flatten().find(|r| r.names() == &["clone".to_string()]).unwrap();
        assert_eq!(clone.args().as_ref().unwrap()[0].value(), 0x7E020000);
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                s.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
            assert!(names.iter().any(|x| x == "arch_prctl"));
            assert!(!names.iter().any(|x| x == "s390_runtime_instr"));
        }

        let admin = target(&[Capability::SysAdmin, Capability::SysChroot]);
        let s = convert(crate::oci::DEFAULT_SECCOMP_PROFILE, &Target { caps: &admin, kernel: (6, 1) }).unwrap();
        let names = allowed(&s);
        for n in ["mount", "unshare", "clone", "clone3", "chroot"] {
            assert!(names.iter().any(|x| x == n), "{n} not allowed with its capability");
        }
        assert!(!s.syscalls().iter().flatten().any(|r| r.action() == LinuxSeccompAction::ScmpActErrno));

        let old = convert(crate::oci::DEFAULT_SECCOMP_PROFILE, &Target { caps: &plain, kernel: (4, 4) }).unwrap();
        assert!(!allowed(&old).iter().any(|x| x == "ptrace"), "ptrace needs 4.8 without CAP_SYS_PTRACE");
    }

    #[test]
    fn default_profile_names_are_known_to_libseccomp() {
        let all = target(&[Capability::SysAdmin]);
        let s = convert(crate::oci::DEFAULT_SECCOMP_PROFILE, &Target { caps: &all, kernel: (6, 1) }).unwrap();
        let known = s
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|r| r.names().clone())
            .filter(|n| libseccomp::ScmpSyscall::from_name(n).is_ok())
            .count();
        assert!(known > 300, "only {known} names resolve");
    }

    #[test]
    fn oci_format_passes_through() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
            "flags":["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
              "args":[{"index":1,"value":448,"valueTwo":0,"op":"SCMP_CMP_EQ"}]}]}"#;
        let s = convert(json, &Target { caps: &Capabilities::new(), kernel: (6, 1) }).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(s.architectures().as_deref(), Some(&[Arch::ScmpArchX86_64][..]));
        assert_eq!(s.flags().as_deref(), Some(&[LinuxSeccompFilterFlag::SeccompFilterFlagLog][..]));
        let rule = &s.syscalls().as_ref().unwrap()[0];
        assert_eq!((rule.errno_ret(), rule.args().as_ref().unwrap()[0].value()), (Some(13), 448));
    }

    #[test]
    fn malformed_profiles_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let caps = Capabilities::new();
        let t = Target { caps: &caps, kernel: (6, 1) };
        for (name, body) in [
            ("garbage.json", "{not json"),
            ("action.json", r#"{"defaultAction":"SCMP_ACT_MAYBE"}"#),
            ("names.json", r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO"}]}"#),
            (
                "kernel.json",
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"new"}}]}"#,
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            let err = load_file(&path, &t).unwrap_err();
            assert!(matches!(err, SpecError::Seccomp { .. }));
            assert!(err.to_string().contains(name), "{err}");
        }
        let missing = dir.path().join("missing.json");
        assert!(load_file(&missing, &t).unwrap_err().to_string().contains("missing.json"));
        assert!(load_file(Path::new("relative.json"), &t).is_err());
    }
}
