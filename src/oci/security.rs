//! Seccomp, AppArmor, SELinux and masked/read-only paths, as containerd's
//! CRI plugin applies them.

use std::path::PathBuf;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{LinuxContainerSecurityContext, SecurityProfile};
use oci_spec::runtime::{Capabilities, Linux, Process};

use super::seccomp::{self, Target};
use super::{SpecError, SpecInput};

pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

const APPARMOR_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Unset,
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

/// The profile asked for by the SecurityProfile field, else the deprecated string field.
fn choice(profile: Option<&SecurityProfile>, deprecated: &str, what: &str) -> Result<Choice, SpecError> {
    let bad = |reason: String| match what {
        "seccomp" => SpecError::Seccomp { path: deprecated.to_string(), reason },
        _ => SpecError::AppArmor(reason),
    };
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(ProfileType::Localhost) if p.localhost_ref.is_empty() => {
                Err(bad(format!("{what} Localhost profile without localhost_ref")))
            }
            Ok(ProfileType::Localhost) => Ok(Choice::Localhost(p.localhost_ref.clone())),
            Err(_) => Err(bad(format!("unknown {what} profile type {}", p.profile_type))),
        };
    }
    match deprecated {
        "" => Ok(Choice::Unset),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        "unconfined" => Ok(Choice::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => Ok(Choice::Localhost(name.to_string())),
            _ => Err(bad(format!("unknown {what} profile {other:?}"))),
        },
    }
}

#[allow(deprecated)]
pub fn apply_process(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
    process: &mut Process,
) -> Result<(), SpecError> {
    let apparmor = choice(sc.apparmor.as_ref(), &sc.apparmor_profile, "apparmor")?;
    let host = input.host;
    let profile = if !host.apparmor_enabled {
        if let Choice::Localhost(name) = apparmor {
            return Err(SpecError::AppArmor(format!("profile {name:?} requested but AppArmor is not enabled")));
        }
        None
    } else {
        match apparmor {
            Choice::Unconfined => None,
            Choice::Unset | Choice::RuntimeDefault if sc.privileged => None,
            Choice::Unset | Choice::RuntimeDefault => host.apparmor_default_profile.clone(),
            Choice::Localhost(name) => {
                let loaded = std::fs::read_to_string(APPARMOR_PROFILES)
                    .map_err(|e| SpecError::io(format!("reading {APPARMOR_PROFILES}"), e))?;
                if !loaded.lines().any(|l| l.split(" (").next() == Some(name.as_str())) {
                    return Err(SpecError::AppArmor(format!("profile {name:?} is not loaded")));
                }
                Some(name)
            }
        }
    };
    process.set_apparmor_profile(profile);
    if host.selinux_enabled {
        if let Some(o) = sc.selinux_options.as_ref().filter(|o| !o.r#type.is_empty() || !o.level.is_empty()) {
            let or = |v: &str, d: &str| if v.is_empty() { d.to_string() } else { v.to_string() };
            let label = format!(
                "{}:{}:{}:{}",
                or(&o.user, "system_u"),
                or(&o.role, "system_r"),
                or(&o.r#type, "container_t"),
                or(&o.level, "s0")
            );
            process.set_selinux_label(Some(label));
        }
    }
    Ok(())
}

#[allow(deprecated)]
pub fn apply_linux(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
    bounding: Option<&Capabilities>,
    linux: &mut Linux,
) -> Result<(), SpecError> {
    let empty = Capabilities::new();
    let target = Target { caps: bounding.unwrap_or(&empty), kernel: input.host.kernel };
    let profile = choice(sc.seccomp.as_ref(), &sc.seccomp_profile_path, "seccomp")?;
    // containerd leaves privileged containers without seccomp whatever was asked.
    let seccomp = match profile {
        _ if sc.privileged => None,
        Choice::Unset | Choice::Unconfined => None,
        Choice::RuntimeDefault => Some(
            seccomp::convert(input.seccomp_default, &target)
                .map_err(|reason| SpecError::Seccomp { path: "RuntimeDefault".to_string(), reason })?,
        ),
        Choice::Localhost(path) => Some(seccomp::load_file(&PathBuf::from(path), &target)?),
    };
    linux.set_seccomp(seccomp);

    let (masked, readonly) = if sc.privileged {
        (Vec::new(), Vec::new())
    } else {
        let or_default = |given: &Vec<String>, default: &[&str]| {
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.clone()
            }
        };
        (or_default(&sc.masked_paths, &DEFAULT_MASKED_PATHS), or_default(&sc.readonly_paths, &DEFAULT_READONLY_PATHS))
    };
    linux.set_masked_paths(Some(masked)).set_readonly_paths(Some(readonly));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_choice() {
        let sp = |t: ProfileType, r: &str| SecurityProfile { profile_type: t as i32, localhost_ref: r.to_string() };
        assert_eq!(choice(None, "", "seccomp").unwrap(), Choice::Unset);
        assert_eq!(choice(None, "docker/default", "seccomp").unwrap(), Choice::RuntimeDefault);
        assert_eq!(choice(None, "localhost//p.json", "seccomp").unwrap(), Choice::Localhost("/p.json".to_string()));
        assert!(choice(None, "localhost/", "seccomp").is_err());
        assert!(choice(None, "strict", "apparmor").is_err());
        let unconfined = sp(ProfileType::Unconfined, "");
        assert_eq!(choice(Some(&unconfined), "runtime/default", "seccomp").unwrap(), Choice::Unconfined);
        let local = sp(ProfileType::Localhost, "/x");
        assert_eq!(choice(Some(&local), "", "apparmor").unwrap(), Choice::Localhost("/x".to_string()));
        assert!(choice(Some(&sp(ProfileType::Localhost, "")), "", "seccomp").is_err());
    }
}
