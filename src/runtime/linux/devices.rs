//! /dev inside the container: the default nodes every container gets,
//! the spec's linux.devices, the usual symlinks and the console.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::step::{Step, StepResult};
use crate::rootpath::resolve_in_root;

/// (path, major, minor): what runc and crun create in every container.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

pub fn populate(root: &Path, devices: &[LinuxDevice], bind: bool) -> StepResult {
    for (path, major, minor) in DEFAULT_DEVICES {
        if devices.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        make(root, Path::new(path), SFlag::S_IFCHR, major, minor, 0o666, None, bind)?;
    }
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => continue,
        };
        let owner = Some((d.uid().unwrap_or(0), d.gid().unwrap_or(0)));
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        make(root, d.path(), kind, d.major() as u64, d.minor() as u64, mode, owner, bind)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make(
    root: &Path,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    owner: Option<(u32, u32)>,
    bind: bool,
) -> StepResult {
    let step = || format!("device {}", path.display());
    let dest = resolve_in_root(root, path).with(step)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).with(step)?;
    }
    if bind {
        if !dest.exists() {
            std::fs::File::create(&dest).with(step)?;
        }
        return mount(Some(path), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>).with(step);
    }
    match std::fs::remove_file(&dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with(step),
        _ => {}
    }
    mknod(&dest, kind, Mode::from_bits_truncate(mode), makedev(major, minor)).with(step)?;
    // mknod applies the umask; the spec's mode is meant exactly.
    nix::sys::stat::fchmodat(None, &dest, Mode::from_bits_truncate(mode), nix::sys::stat::FchmodatFlags::FollowSymlink)
        .with(step)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).with(step)?;
    }
    Ok(())
}

pub fn links(root: &Path) -> StepResult {
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ] {
        let dest = resolve_in_root(root, Path::new(link)).with(|| format!("symlink {link}"))?;
        if dest.symlink_metadata().is_ok() {
            if link != "/dev/ptmx" {
                continue;
            }
            std::fs::remove_file(&dest).with(|| format!("replacing {link}"))?;
        }
        std::os::unix::fs::symlink(target, &dest).with(|| format!("symlink {link}"))?;
    }
    Ok(())
}

/// A terminal's pty, made in the container's own devpts so that the
/// workload's `ttyname()` finds it under /dev/pts.
pub struct Pty {
    pub master: std::os::fd::OwnedFd,
    pub replica: std::os::fd::OwnedFd,
}

/// Opens a pty through the rootfs's /dev/ptmx (its devpts instance).
pub fn open_pty(root: &Path) -> StepResult<Pty> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::OpenOptionsExt;
    let ptmx = resolve_in_root(root, Path::new("/dev/ptmx")).ctx("/dev/ptmx")?;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)
        .with(|| format!("opening {} for the terminal", ptmx.display()))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int through a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(nix::errno::Errno::last()).ctx("unlocking the pty");
    }
    // SAFETY: TIOCGPTPEER returns a new fd for the peer of the master we own.
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let replica = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if replica < 0 {
        return Err(nix::errno::Errno::last()).ctx("opening the pty replica");
    }
    // SAFETY: a fresh descriptor from the ioctl, owned by nothing else.
    Ok(Pty { master, replica: unsafe { OwnedFd::from_raw_fd(replica) } })
}

/// Gives the replica to the process's user, as runc does, so it can reopen
/// its terminal by name (devpts makes it root's, mode 0620).
pub fn own_pty(replica: &std::os::fd::OwnedFd, user: &oci_spec::runtime::User) -> StepResult {
    use std::os::fd::AsRawFd;
    let (uid, gid) = (nix::unistd::Uid::from_raw(user.uid()), nix::unistd::Gid::from_raw(user.gid()));
    nix::unistd::fchown(replica.as_raw_fd(), Some(uid), Some(gid)).ctx("giving the terminal to the process's user")
}

/// Binds the terminal's pty replica at /dev/console.
pub fn console(root: &Path, pty: &Path) -> StepResult {
    let dest = resolve_in_root(root, Path::new("/dev/console")).ctx("/dev/console")?;
    if !dest.exists() {
        std::fs::File::create(&dest).ctx("creating /dev/console")?;
    }
    mount(Some(pty), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>).ctx("binding /dev/console")
}
