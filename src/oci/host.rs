//! Facts about the host that shape every spec; detected once by the daemon.

use std::fs;
use std::path::Path;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability};

use super::SpecError;

#[derive(Debug, Clone)]
pub struct HostInfo {
    /// The daemon's bounding set: what "ALL" and privileged containers get.
    pub bounding_caps: Capabilities,
    /// `/sys/module/apparmor/parameters/enabled` is `Y`.
    pub apparmor_enabled: bool,
    /// Loaded AppArmor profile applied for RuntimeDefault; `None` leaves such containers unconfined.
    pub apparmor_default_profile: Option<String>,
    pub selinux_enabled: bool,
    /// Used as the container hostname (and $HOSTNAME) when the pod shares the host's UTS namespace.
    pub hostname: String,
    /// Kernel (major, minor), for seccomp rules with `minKernel`.
    pub kernel: (u32, u32),
    /// Whether the host's memory cgroup accounts swap (memory.memsw on v1, memory.swap.max on v2).
    pub swap_accounting: bool,
}

impl HostInfo {
    pub fn detect(cgroup_v2: bool) -> Result<HostInfo, SpecError> {
        let status = read("/proc/self/status")?;
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(str::trim)
            .ok_or_else(|| SpecError::io("/proc/self/status", std::io::Error::other("no CapBnd line")))?;
        let mask = u64::from_str_radix(hex, 16)
            .map_err(|e| SpecError::io("/proc/self/status CapBnd", std::io::Error::other(e)))?;
        let release = read("/proc/sys/kernel/osrelease")?;
        let swap = if cgroup_v2 {
            // The root cgroup has no memory.swap.max; the daemon's own cgroup does when swap is accounted.
            let own = read("/proc/self/cgroup")?;
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
            Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.swap.max").exists()
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        Ok(HostInfo {
            bounding_caps: caps_from_mask(mask),
            apparmor_enabled: fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .map(|s| s.trim() == "Y")
                .unwrap_or(false),
            apparmor_default_profile: None,
            selinux_enabled: fs::read_to_string("/sys/fs/selinux/enforce").is_ok(),
            hostname: read("/proc/sys/kernel/hostname")?.trim().to_string(),
            kernel: parse_kernel(&release),
            swap_accounting: swap,
        })
    }
}

fn read(path: &str) -> Result<String, SpecError> {
    fs::read_to_string(path).map_err(|e| SpecError::io(path, e))
}

/// The capabilities whose bits are set in a /proc CapBnd-style mask; bits
/// the oci-spec crate does not know are left out.
pub fn caps_from_mask(mask: u64) -> Capabilities {
    caps::all()
        .into_iter()
        .filter(|c| c.index() < 64 && mask & (1u64 << c.index()) != 0)
        .filter_map(|c| Capability::from_str(c.to_string().trim_start_matches("CAP_")).ok())
        .collect()
}

fn parse_kernel(release: &str) -> (u32, u32) {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_maps_to_capabilities() {
        let caps = caps_from_mask(0x000001fffeffffff);
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(caps.contains(&Capability::Chown));
        assert!(!caps.contains(&Capability::SysResource), "bit 24 is clear");
        assert_eq!(caps_from_mask(0b101), [Capability::Chown, Capability::DacReadSearch].into_iter().collect());
    }

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_kernel("6.18.44-fc-v669\n"), (6, 18));
        assert_eq!(parse_kernel("4.8"), (4, 8));
    }

    #[test]
    fn detect_reads_this_host() {
        let h = HostInfo::detect(false).unwrap();
        assert!(h.bounding_caps.contains(&Capability::Kill));
        assert!(h.kernel.0 >= 4);
        assert!(!h.hostname.is_empty());
    }
}
