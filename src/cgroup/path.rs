//! Cgroup names as each driver spells them, and where they live in the tree.

use std::path::{Component, Path, PathBuf};

use super::{driver_name, CgroupDriver, CgroupError};

/// A cgroup as the driver names it. cgroupfs: an absolute path like "/kubepods/besteffort/pod123"
/// (the same relative path in every v1 hierarchy, or under the v2 root).
/// systemd: a slice "kubepods-besteffort-pod123.slice" (expands to
/// kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod123.slice), or
/// "slice:prefix:name" for a scope "prefix-name.scope" inside slice (runc's convention).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CgroupPath(pub String);

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parents used when CRI gives none.
pub(super) const DEFAULT_CGROUPFS_PARENT: &str = "/cricket";
pub(super) const DEFAULT_SYSTEMD_PARENT: &str = "cricket.slice";
/// The prefix of scopes `child` names under the systemd driver.
const SCOPE_PREFIX: &str = "cricket";

/// A systemd unit a CgroupPath stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unit {
    Slice { name: String },
    Scope { name: String, slice: String },
}

impl Unit {
    pub(super) fn name(&self) -> &str {
        match self {
            Unit::Slice { name } | Unit::Scope { name, .. } => name,
        }
    }
}

pub(super) fn parse_parent(driver: CgroupDriver, parent: &str) -> Result<CgroupPath, CgroupError> {
    let err = |reason: String| CgroupError::InvalidParent { value: parent.into(), driver: driver_name(driver), reason };
    match driver {
        CgroupDriver::Cgroupfs if parent.is_empty() => Ok(CgroupPath(DEFAULT_CGROUPFS_PARENT.into())),
        CgroupDriver::Systemd if parent.is_empty() => Ok(CgroupPath(DEFAULT_SYSTEMD_PARENT.into())),
        CgroupDriver::Cgroupfs if !parent.starts_with('/') && parent.ends_with(".slice") => Err(err(
            "this is a systemd slice, but cricket uses the cgroupfs driver; kubelet and cricket must agree: \
             set kubelet's cgroupDriver to \"cgroupfs\", or set [cgroup] driver = \"systemd\" in cricket's configuration"
                .into(),
        )),
        CgroupDriver::Cgroupfs => cgroupfs_relative(parent).map(|_| CgroupPath(normalize(parent))).map_err(err),
        CgroupDriver::Systemd if parent.starts_with('/') => Err(err(
            "this is a cgroupfs path, but cricket uses the systemd driver; kubelet and cricket must agree: \
             set kubelet's cgroupDriver to \"systemd\", or set [cgroup] driver = \"cgroupfs\" in cricket's configuration"
                .into(),
        )),
        CgroupDriver::Systemd if !parent.ends_with(".slice") || parent.contains(':') => {
            Err(err("the systemd driver takes a slice name like \"kubepods-besteffort-pod123.slice\"".into()))
        }
        CgroupDriver::Systemd => expand_slice(parent).map(|_| CgroupPath(parent.into())).map_err(err),
    }
}

/// cgroupfs: parent/name. systemd: scope "cricket-<name>.scope" in the parent slice
/// (a scope parent contributes its slice: scopes do not nest).
pub(super) fn child(driver: CgroupDriver, parent: &CgroupPath, name: &str) -> CgroupPath {
    match driver {
        CgroupDriver::Cgroupfs => CgroupPath(format!("{}/{name}", parent.0.trim_end_matches('/'))),
        CgroupDriver::Systemd => {
            let slice = parent.0.split(':').next().unwrap_or_default();
            CgroupPath(format!("{slice}:{SCOPE_PREFIX}:{name}"))
        }
    }
}

/// The cgroup's directory relative to the cgroup root ("" for the root itself).
pub(super) fn relative(driver: CgroupDriver, path: &CgroupPath) -> Result<PathBuf, CgroupError> {
    let err = |reason: String| CgroupError::InvalidPath { value: path.0.clone(), driver: driver_name(driver), reason };
    match driver {
        CgroupDriver::Cgroupfs => cgroupfs_relative(&path.0).map_err(err),
        CgroupDriver::Systemd => {
            let unit = unit(path)?;
            match &unit {
                Unit::Slice { name } => expand_slice(name),
                Unit::Scope { name, slice } => expand_slice(slice).map(|p| p.join(name)),
            }
            .map_err(err)
        }
    }
}

/// The unit a systemd-driver path names.
pub(super) fn unit(path: &CgroupPath) -> Result<Unit, CgroupError> {
    let err =
        |reason: &str| CgroupError::InvalidPath { value: path.0.clone(), driver: "systemd", reason: reason.into() };
    let parts: Vec<&str> = path.0.split(':').collect();
    match parts[..] {
        [slice] if slice.ends_with(".slice") => Ok(Unit::Slice { name: slice.into() }),
        [_, _, name] if name.ends_with(".slice") => Ok(Unit::Slice { name: name.into() }),
        [slice, prefix, name] if !name.is_empty() && !name.contains('/') && !prefix.contains('/') => {
            let slice = if slice.is_empty() { DEFAULT_SYSTEMD_PARENT } else { slice };
            let name = if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") };
            Ok(Unit::Scope { name, slice: slice.into() })
        }
        _ => Err(err("expected \"name.slice\" or \"slice:prefix:name\"")),
    }
}

/// "a-b-c.slice" → "a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root.
pub(super) fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let bad = |why: &str| Err(format!("{slice:?} is not a valid slice name: {why}"));
    let Some(stem) = slice.strip_suffix(".slice") else { return bad("it does not end in \".slice\"") };
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    if stem.is_empty() || stem.contains('/') {
        return bad("empty, or contains '/'");
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return bad("empty part between '-'");
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

fn cgroupfs_relative(p: &str) -> Result<PathBuf, String> {
    if !p.starts_with('/') {
        return Err("the cgroupfs driver takes an absolute path like \"/kubepods/besteffort/pod123\"".into());
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err("it must not contain \"..\"".into()),
        }
    }
    Ok(out)
}

fn normalize(p: &str) -> String {
    let rel = cgroupfs_relative(p).unwrap_or_default();
    format!("/{}", rel.display())
}
