//! linux.devices and the device cgroup rules.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1::ContainerConfig;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::SpecError;

/// Directories under /dev that hold no devices a privileged container should get.
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// What every container may use, as runc allows by default: mknod of any
/// device, the standard character devices, ptys and /dev/net/tun.
const DEFAULT_RULES: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 11] = [
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),    // null
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),    // zero
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),    // full
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),    // random
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),    // urandom
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),    // tty
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),    // ptmx
    (LinuxDeviceType::C, Some(136), None, "rwm"),     // pts
    (LinuxDeviceType::C, Some(10), Some(200), "rwm"), // net/tun
];

fn rule(allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow).set_typ(Some(typ)).set_major(major).set_minor(minor).set_access(Some(access.to_string()));
    r
}

/// The devices to create and the cgroup rules: deny all, allow the defaults
/// and each requested device; privileged containers get every host device and no restriction.
pub fn build(
    config: &ContainerConfig,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut devices: Vec<LinuxDevice> = Vec::new();
    let mut rules = if privileged {
        vec![rule(true, LinuxDeviceType::A, None, None, "rwm")]
    } else {
        let mut r = vec![rule(false, LinuxDeviceType::A, None, None, "rwm")];
        r.extend(DEFAULT_RULES.iter().map(|(t, ma, mi, a)| rule(true, *t, *ma, *mi, a)));
        r
    };
    if privileged {
        let mut host = Vec::new();
        walk(Path::new("/dev"), Path::new("/dev"), &mut host, true)
            .map_err(|e| SpecError::io("listing host devices in /dev", e))?;
        devices.extend(host.into_iter().filter(|d| d.path() != Path::new("/dev/console")));
    }
    for d in &config.devices {
        let access = permissions(&d.permissions).map_err(|reason| device_error(&d.host_path, reason))?;
        let host_path = Path::new(&d.host_path);
        let container_path = Path::new(if d.container_path.is_empty() { &d.host_path } else { &d.container_path });
        if !host_path.is_absolute() || !container_path.is_absolute() {
            return Err(device_error(&d.host_path, "host and container paths must be absolute".to_string()));
        }
        let meta = host_path.metadata().map_err(|e| device_error(&d.host_path, e.to_string()))?;
        let mut found = Vec::new();
        if meta.is_dir() {
            walk(host_path, container_path, &mut found, false)
                .map_err(|e| device_error(&d.host_path, e.to_string()))?;
        } else {
            let dev = device(container_path, &meta)
                .ok_or_else(|| device_error(&d.host_path, "not a character or block device".to_string()))?;
            found.push(dev);
        }
        for dev in found {
            if !privileged {
                rules.push(rule(true, dev.typ(), Some(dev.major()), Some(dev.minor()), &access));
            }
            devices.retain(|existing| existing.path() != dev.path());
            devices.push(dev);
        }
    }
    Ok((devices, rules))
}

fn device_error(path: &str, reason: String) -> SpecError {
    SpecError::Device { path: path.to_string(), reason }
}

/// CRI permissions are a subset of "rwm"; empty means all.
fn permissions(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Ok("rwm".to_string());
    }
    if p.chars().all(|c| "rwm".contains(c)) {
        Ok(p.to_string())
    } else {
        Err(format!("permissions {p:?} are not a subset of \"rwm\""))
    }
}

fn device(path: &Path, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(path.to_path_buf())
        .set_typ(typ)
        .set_major(libc::major(rdev) as i64)
        .set_minor(libc::minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Some(d)
}

/// Devices under `dir` (not following symlinks), placed under `target`.
fn walk(dir: &Path, target: &Path, out: &mut Vec<LinuxDevice>, skip_special: bool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let meta = entry.path().symlink_metadata()?;
        let dest: PathBuf = target.join(&name);
        if meta.is_dir() {
            if skip_special && SKIPPED_DEV_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            walk(&entry.path(), &dest, out, skip_special)?;
        } else if let Some(d) = device(&dest, &meta) {
            out.push(d);
        }
    }
    Ok(())
}
