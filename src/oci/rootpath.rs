//! Resolves a path inside a container rootfs as the container would see it:
//! symlinks (absolute or relative) and `..` never leave the rootfs.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// The host path of `path` (absolute, as seen inside the container) under `root`.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    // Components still to walk, in reverse so pop() yields the next one.
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&part);
        match candidate.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            Ok(_) => resolved.push(part),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                resolved.push(part);
                pending.reverse();
                resolved.extend(pending.drain(..).filter(|p| p != ".."));
                return Ok(join(root, &resolved));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &resolved))
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        std::fs::write(root.join("real/etc/passwd"), "x").unwrap();
        symlink("/real/etc", root.join("etc")).unwrap();
        symlink("../../../../real/etc/passwd", root.join("real/up")).unwrap();
        symlink("/../../etc/shadow", root.join("abs")).unwrap();

        assert_eq!(resolve(root, Path::new("/etc/passwd")).unwrap(), root.join("real/etc/passwd"));
        assert_eq!(resolve(root, Path::new("/real/up")).unwrap(), root.join("real/etc/passwd"));
        assert_eq!(resolve(root, Path::new("/abs")).unwrap(), root.join("real/etc/shadow"));
        assert_eq!(resolve(root, Path::new("/../../etc/group")).unwrap(), root.join("real/etc/group"));
    }

    #[test]
    fn symlink_loops_fail() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/b", dir.path().join("a")).unwrap();
        symlink("/a", dir.path().join("b")).unwrap();
        let err = resolve(dir.path(), Path::new("/a/x")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
