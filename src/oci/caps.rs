//! Process capabilities as containerd's CRI plugin computes them.

use std::str::FromStr;

use k8s_cri::v1::LinuxContainerSecurityContext;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::SpecError;

/// containerd's default set for unprivileged containers.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Parses "NET_ADMIN", "CAP_NET_ADMIN" or "net_admin".
pub fn parse(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| SpecError::Capability(name.to_string()))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// Bounding, effective and permitted get the same set; inheritable holds
/// only the ambient capabilities (empty otherwise, as containerd ≥ 1.7 leaves
/// it since CVE-2022-24769). Everything is limited to the host's bounding set,
/// which is all a container can get.
pub fn build(sc: &LinuxContainerSecurityContext, host: &Capabilities) -> Result<LinuxCapabilities, SpecError> {
    let requested = sc.capabilities.clone().unwrap_or_default();
    let mut set: Capabilities = if sc.privileged { host.clone() } else { DEFAULT_CAPS.into_iter().collect() };
    if !sc.privileged {
        if requested.add_capabilities.iter().any(|c| is_all(c)) {
            set = host.clone();
        }
        if requested.drop_capabilities.iter().any(|c| is_all(c)) {
            set.clear();
        }
        for name in requested.add_capabilities.iter().filter(|c| !is_all(c)) {
            set.insert(parse(name)?);
        }
        for name in requested.drop_capabilities.iter().filter(|c| !is_all(c)) {
            set.remove(&parse(name)?);
        }
    }
    let ambient: Capabilities =
        requested.add_ambient_capabilities.iter().map(|c| parse(c)).collect::<Result<_, _>>()?;
    set.extend(ambient.iter().copied());
    set.retain(|c| host.contains(c));
    let ambient: Capabilities = ambient.into_iter().filter(|c| host.contains(c)).collect();

    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(caps)
}
