//! A container's root filesystem: an overlay of the image's layer snapshots
//! with a private upper dir, mounted by the daemon before the spec is built.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where a container's rootfs lives: `upper`/`work` under its state dir, the mount point under its run dir.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

impl Rootfs {
    pub fn new(state_dir: &Path, run_dir: &Path) -> Rootfs {
        Rootfs { upper: state_dir.join("upper"), work: state_dir.join("work"), target: run_dir.join("rootfs") }
    }

    /// Mounts the overlay; `layers` base first. An image without layers gets an empty lower dir.
    pub fn mount(&self, layers: &[PathBuf], empty_lower: &Path) -> io::Result<()> {
        for dir in [&self.upper, &self.work, &self.target] {
            std::fs::create_dir_all(dir)?;
        }
        let lower: Vec<String> = if layers.is_empty() {
            std::fs::create_dir_all(empty_lower)?;
            vec![empty_lower.display().to_string()]
        } else {
            layers.iter().rev().map(|l| l.display().to_string()).collect()
        };
        let data =
            format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), self.upper.display(), self.work.display());
        // The kernel takes one page of mount data; snapshot dirs are short numbers to stay under it.
        if data.len() >= 4096 {
            return Err(io::Error::other(format!(
                "overlay options are {} bytes, over the kernel's 4096-byte limit ({} layers)",
                data.len(),
                layers.len()
            )));
        }
        mount(Some("overlay"), &self.target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
            .map_err(|e| io::Error::other(format!("mount overlay on {}: {e}", self.target.display())))
    }

    #[cfg(test)]
    pub fn is_mounted(&self) -> bool {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
        let target = self.target.display().to_string();
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    }

    /// Unmounts (lazily, so a lingering exec can't block removal); not mounted is fine.
    pub fn unmount(&self) -> io::Result<()> {
        match umount2(&self.target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(io::Error::other(format!("unmount {}: {e}", self.target.display()))),
        }
    }
}

/// Bytes and inodes under `dir`, not following symlinks or crossing mounts.
pub fn usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else { return (0, 0) };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_mount_and_usage() {
        let tmp = tempfile::tempdir().unwrap();
        let (l1, l2) = (tmp.path().join("1"), tmp.path().join("2"));
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        std::fs::write(l1.join("etc/a"), "base").unwrap();
        std::fs::create_dir_all(&l2).unwrap();
        std::fs::write(l2.join("b"), "top").unwrap();
        let fs = Rootfs::new(&tmp.path().join("state"), &tmp.path().join("run"));
        fs.mount(&[l1.clone(), l2.clone()], &tmp.path().join("empty")).unwrap();
        assert!(fs.is_mounted());
        assert_eq!(std::fs::read_to_string(fs.target.join("etc/a")).unwrap(), "base");
        std::fs::write(fs.target.join("new"), vec![7u8; 10000]).unwrap();
        let (bytes, inodes) = usage(&fs.upper);
        assert!(bytes >= 10000 && inodes == 1, "{bytes} {inodes}");
        assert!(!l1.join("new").exists() && !l2.join("new").exists());
        fs.unmount().unwrap();
        assert!(!fs.is_mounted());
        fs.unmount().unwrap();
    }
}
