//! Finds which cgroup version is mounted under the cgroup root, and where.

use std::path::{Path, PathBuf};

use super::{CgroupError, Layout};

/// One cgroup v1 hierarchy: its mount point and the controllers bound to it
/// ("cpu", "cpuacct", or "name=systemd" for a named hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn new(mount: impl Into<PathBuf>, controllers: &[&str]) -> Hierarchy {
        Hierarchy { mount: mount.into(), controllers: controllers.iter().map(|c| c.to_string()).collect() }
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

pub(super) fn detect(root: &Path) -> Result<Layout, CgroupError> {
    let err = |reason: String| CgroupError::Detect { root: root.to_path_buf(), reason };
    let fs = nix::sys::statfs::statfs(root).map_err(|e| err(e.to_string()))?;
    if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok(Layout::V2(root.to_path_buf()));
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| err(format!("/proc/self/mountinfo: {e}")))?;
    let hierarchies = v1_hierarchies(&mountinfo, root);
    if hierarchies.is_empty() {
        return Err(err("it is neither a cgroup2 mount nor holds cgroup v1 hierarchies".into()));
    }
    Ok(Layout::V1(hierarchies))
}

/// The cgroup v1 mounts under `root` in a mountinfo text; a hierarchy mounted twice counts once.
pub(super) fn v1_hierarchies(mountinfo: &str, root: &Path) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mount = match left.split(' ').nth(4) {
            Some(m) => PathBuf::from(unescape(m)),
            None => continue,
        };
        let mut right = right.split(' ');
        if right.next() != Some("cgroup") || !mount.starts_with(root) {
            continue;
        }
        let controllers: Vec<String> = right
            .nth(1)
            .unwrap_or("")
            .split(',')
            .filter(|o| o.starts_with("name=") || !(o.contains('=') || MOUNT_OPTIONS.contains(o)))
            .map(str::to_string)
            .collect();
        if !controllers.is_empty() && !out.iter().any(|h| h.controllers == controllers) {
            out.push(Hierarchy { mount, controllers });
        }
    }
    out
}

/// Super options of a cgroup v1 mount that are not controllers.
const MOUNT_OPTIONS: &[&str] = &["rw", "ro", "xattr", "noprefix", "clone_children", "cpuset_v2_mode", "favordynmods"];

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
