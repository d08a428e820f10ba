//! The container's mount namespace: propagation, the rootfs bind, spec
//! mounts, /dev, pivot_root, then (inside) readonly and masked paths and a
//! readonly root. Runs in the container init, before any user switch.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use oci_spec::runtime::{Mount, Spec};

use super::cgroups::Hierarchy;
use super::devices;
use super::mountopts::MountOptions;
use super::step::{fail, Step, StepResult};
use crate::rootpath::resolve_in_root;

const NONE: Option<&str> = None;

/// What the rootfs setup needs besides the spec.
pub struct RootfsContext<'a> {
    /// Relative bind sources are relative to the bundle.
    pub bundle: &'a Path,
    pub root: &'a Path,
    /// The init's own cgroups, bound into a v1 cgroup mount.
    pub cgroups: &'a [Hierarchy],
    /// A terminal container: make its pty and bind the replica at /dev/console.
    pub terminal: bool,
    /// In a new user namespace device nodes can't be made, only bound from the host.
    pub bind_devices: bool,
}

/// Everything before pivot_root; `ctx.root` is the host path of the rootfs.
/// Returns the terminal's pty when `ctx.terminal`.
pub fn prepare(spec: &Spec, ctx: &RootfsContext) -> StepResult<Option<devices::Pty>> {
    let linux = spec.linux().clone().unwrap_or_default();
    // rslave unless rootfsPropagation asks otherwise: bidirectional (rshared)
    // volumes must stay peers of the host's mounts, as with runc.
    let flags = propagation_flags(&linux)?.unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(NONE, "/", NONE, flags, NONE).ctx("setting the propagation of /")?;
    // pivot_root refuses a new root whose parent mount is shared; private also
    // keeps the rootfs bind below from propagating anywhere.
    let parent = containing_mount(ctx.root)?;
    mount(NONE, &parent, NONE, MsFlags::MS_PRIVATE, NONE).with(|| format!("making {} private", parent.display()))?;
    mount(Some(ctx.root), ctx.root, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)
        .with(|| format!("binding rootfs {}", ctx.root.display()))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_entry(ctx, m)?;
    }
    let dev_bound = mounts.iter().any(|m| m.destination() == Path::new("/dev") && is_bind(m));
    if !dev_bound {
        devices::populate(ctx.root, linux.devices().as_deref().unwrap_or_default(), ctx.bind_devices)?;
        devices::links(ctx.root)?;
    }
    if !ctx.terminal {
        return Ok(None);
    }
    let pty = devices::open_pty(ctx.root)?;
    if !dev_bound {
        let replica = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pty.replica)));
        devices::console(ctx.root, &replica)?;
    }
    Ok(Some(pty))
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind") || MountOptions::parse(m.options().as_deref().unwrap_or_default()).is_bind()
}

fn mount_entry(ctx: &RootfsContext, m: &Mount) -> StepResult {
    let dest_name = m.destination().display().to_string();
    let dest = resolve_in_root(ctx.root, m.destination()).with(|| format!("resolving mount {dest_name}"))?;
    let mut opts = MountOptions::parse(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().clone().unwrap_or_default();
    if typ == "bind" {
        opts.flags |= MsFlags::MS_BIND;
    }
    let step = || format!("mount {dest_name}");
    if opts.is_bind() {
        let source = ctx.bundle.join(m.source().clone().unwrap_or_default());
        let is_dir =
            std::fs::metadata(&source).with(|| format!("mount {dest_name}: source {}", source.display()))?.is_dir();
        create_mount_point(&dest, is_dir).with(step)?;
        mount(Some(&source), &dest, NONE, opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC), NONE).with(step)?;
        let remount = opts.remount_flags();
        if !remount.is_empty() {
            remount_bind(&dest, remount).with(|| format!("remount {dest_name}"))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        create_mount_point(&dest, true).with(step)?;
        mount_cgroup(ctx, &dest, &opts).with(step)?;
    } else {
        create_mount_point(&dest, true).with(step)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, opts.data_string().as_deref()).with(step)?;
    }
    for p in &opts.propagation {
        mount(NONE, &dest, NONE, *p, NONE).with(|| format!("propagation of {dest_name}"))?;
    }
    if opts.attr_set != 0 || opts.attr_clr != 0 {
        setattr_recursive(&dest, opts.attr_set, opts.attr_clr).with(|| format!("mount_setattr {dest_name}"))?;
    }
    Ok(())
}

fn create_mount_point(dest: &Path, dir: bool) -> std::io::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    if dir {
        return std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dest);
    }
    if let Some(parent) = dest.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent)?;
    }
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(dest).map(|_| ())
}

/// A bind mount's flags only change with a remount; keep the flags the
/// kernel may have locked (nosuid, nodev…) or the remount fails with EPERM.
pub fn remount_bind(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let current = statvfs(path)?.flags();
    let mut keep = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if current.contains(st) {
            keep |= ms;
        }
    }
    mount(NONE, path, NONE, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep | flags, NONE)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(AT_RECURSIVE): read-only (and friends) for a whole tree, Linux 5.12+.
fn setattr_recursive(path: &Path, set: u64, clr: u64) -> StepResult {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ctx("path")?;
    let attr = MountAttr { attr_set: set, attr_clr: clr, propagation: 0, userns_fd: 0 };
    // SAFETY: valid C string and a properly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return fail("recursive mount attributes (rro…) need Linux 5.12 or later");
        }
        return Err(err).ctx("mount_setattr");
    }
    Ok(())
}

fn mount_cgroup(ctx: &RootfsContext, dest: &Path, opts: &MountOptions) -> nix::Result<()> {
    let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")?.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC;
    if v2 {
        return mount(Some("cgroup2"), dest, Some("cgroup2"), opts.flags, NONE);
    }
    // v1: a tmpfs with one directory per hierarchy, each a bind of the init's own cgroup.
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))?;
    for h in ctx.cgroups {
        let Some(name) = h.mount_point.file_name() else { continue };
        let target = dest.join(name);
        std::fs::create_dir_all(&target).map_err(io_errno)?;
        mount(Some(&h.dir), &target, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)?;
        remount_bind(&target, opts.flags & MsFlags::MS_RDONLY)?;
        let name = name.to_string_lossy();
        // cpu,cpuacct is also reachable as cpu and cpuacct, as on the host.
        if name.contains(',') {
            for part in name.split(',') {
                let link = dest.join(part);
                if !link.exists() {
                    std::os::unix::fs::symlink(name.as_ref(), &link).map_err(io_errno)?;
                }
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        mount(NONE, dest, NONE, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base, Some("mode=755"))?;
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Makes `root` the process's "/" and drops the old root from the namespace.
pub fn pivot(root: &Path) -> StepResult {
    let old_root = std::fs::File::open("/").ctx("opening the old root")?;
    nix::unistd::chdir(root).ctx("chdir to rootfs")?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching
    // it then leaves only the new root, without needing a directory for the old.
    nix::unistd::pivot_root(".", ".").ctx("pivot_root")?;
    // Work on the old root explicitly: "." may still be the new one.
    nix::unistd::fchdir(std::os::fd::AsRawFd::as_raw_fd(&old_root)).ctx("fchdir to the old root")?;
    // With a shared "/", detaching the old root would unmount the host's mounts too.
    mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE).ctx("making the old root rslave")?;
    umount2(".", MntFlags::MNT_DETACH).ctx("detaching the old root")?;
    drop(old_root);
    nix::unistd::chdir("/").ctx("chdir /")?;
    Ok(())
}

/// After pivot_root: sysctls are written by the caller first, since /proc/sys is usually readonly.
pub fn finalize(spec: &Spec) -> StepResult {
    let linux = spec.linux().clone().unwrap_or_default();
    for p in linux.readonly_paths().iter().flatten() {
        readonly_path(Path::new(p))?;
    }
    for p in linux.masked_paths().iter().flatten() {
        mask_path(Path::new(p))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY).ctx("remounting / readonly")?;
    }
    if let Some(flags) = propagation_flags(&linux)? {
        mount(NONE, "/", NONE, flags, NONE).ctx("applying rootfsPropagation")?;
    }
    Ok(())
}

fn propagation_flags(linux: &oci_spec::runtime::Linux) -> StepResult<Option<MsFlags>> {
    let Some(prop) = linux.rootfs_propagation() else { return Ok(None) };
    Ok(Some(match prop.as_str() {
        "shared" | "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" | "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" | "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return fail(format!("rootfsPropagation {other:?} is not a propagation mode")),
    }))
}

/// The mount point of the mount `path` is on (the longest mount point above it).
fn containing_mount(path: &Path) -> StepResult<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ctx("reading /proc/self/mountinfo")?;
    let best = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len());
    Ok(best.unwrap_or_else(|| PathBuf::from("/")))
}

fn readonly_path(path: &Path) -> StepResult {
    if !path.exists() {
        return Ok(());
    }
    let step = || format!("readonly path {}", path.display());
    mount(Some(path), path, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE).with(step)?;
    remount_bind(path, MsFlags::MS_RDONLY).with(step)
}

fn mask_path(path: &Path) -> StepResult {
    let step = || format!("masking {}", path.display());
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with(step),
    };
    if meta.is_dir() {
        mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, NONE).with(step)
    } else {
        mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE).with(step)
    }
}
