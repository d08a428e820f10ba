//! Resolving container paths on the host side: `root` acts as "/", so a
//! symlink in an image (absolute, or with enough "..") can't point a mount
//! or a device node outside the rootfs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// The host path of `path` inside `root`, following symlinks within root.
/// Missing components are kept as named (they will be created).
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let host = root.join(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for part in components(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_missing_paths_stay_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/etc/hosts")).unwrap(), root.join("etc/hosts"));
        assert_eq!(resolve_in_root(root, Path::new("/a/./b/../c")).unwrap(), root.join("a/c"));
        assert_eq!(resolve_in_root(root, Path::new("/../../x")).unwrap(), root.join("x"));
    }

    #[test]
    fn symlinks_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("real/rel")).unwrap();
        symlink("dir", root.join("real/inner")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("/real/rel/shadow")).unwrap(), root.join("etc/shadow"));
        assert_eq!(resolve_in_root(root, Path::new("/real/inner/f")).unwrap(), root.join("real/dir/f"));
    }

    #[test]
    fn symlink_loops_fail() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let err = resolve_in_root(root, Path::new("/a/x")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
