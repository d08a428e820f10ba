//! Capability sets from process.capabilities: the bounding set is dropped
//! while still root; effective, permitted and inheritable are set in one
//! capset after the user switch (PR_SET_KEEPCAPS kept them); ambient last.

use nix::errno::Errno;
use oci_spec::runtime::Capabilities;

use super::step::{Step, StepResult};

fn cap_indices(set: Option<&Capabilities>, warn: &mut dyn FnMut(String)) -> u64 {
    let mut mask = 0u64;
    for cap in set.into_iter().flatten() {
        let name = serde_json::to_value(cap).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match name.parse::<caps::Capability>() {
            Ok(c) => mask |= c.bitmask(),
            Err(_) => warn(format!("unknown capability {name} skipped")),
        }
    }
    mask
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

pub fn drop_bounding(bounding: Option<&Capabilities>, warn: &mut dyn FnMut(String)) -> StepResult {
    let keep = cap_indices(bounding, warn);
    for cap in 0..=last_cap() {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let err = Errno::last();
            if err != Errno::EINVAL {
                return Err(err).with(|| format!("dropping capability {cap} from the bounding set"));
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

pub fn set_capabilities(caps: &oci_spec::runtime::LinuxCapabilities, warn: &mut dyn FnMut(String)) -> StepResult {
    let effective = cap_indices(caps.effective().as_ref(), warn);
    let permitted = cap_indices(caps.permitted().as_ref(), warn);
    let inheritable = cap_indices(caps.inheritable().as_ref(), warn);
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [0, 32].map(|shift| CapData {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    });
    // SAFETY: capset with a v3 header and two data elements, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(Errno::last()).ctx("capset");
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    let ambient = cap_indices(caps.ambient().as_ref(), warn);
    for cap in (0..64u64).filter(|c| ambient & (1 << c) != 0) {
        // SAFETY: as above.
        let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) };
        if rc != 0 {
            warn(format!("ambient capability {cap} not raised: {}", Errno::last()));
        }
    }
    Ok(())
}
