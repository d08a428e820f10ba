//! The two forked stages of a container init. Stage 1 (forked by the
//! monitor) joins the cgroup and the namespaces given by path and creates
//! the rest; since a new or joined pid (and time) namespace only applies to
//! children, it then clones stage 2 with CLONE_PARENT, so the init is the
//! monitor's own child, reports its PID and exits. Stage 2 is the init:
//! rootfs, process settings, seccomp, then it waits for start and execs.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::namespaces::NsPlan;
use super::rootfs::{self, RootfsContext};
use super::step::{fail, Step, StepResult};
use super::sync::{Channel, Msg};
use super::{cgroups, limits, process, InitStdio};

pub struct InitArgs<'a> {
    pub bundle: &'a Path,
    pub spec: &'a Spec,
    pub cgroup_dirs: &'a [PathBuf],
    pub workload: super::Workload<'a>,
}

/// Runs in the monitor's forked child; never returns.
pub fn stage1(args: &InitArgs, stdio: InitStdio, channel: Channel) -> ! {
    let keep: &[libc::c_int] = match args.workload {
        // A program compiled by the monitor comes with its engine, whose trap handlers are installed here already.
        super::Workload::InProcess(_) => &super::signals::FAULT_SIGNALS,
        super::Workload::Spec => &[],
    };
    super::signals::reset_for_workload(keep);
    let kept = match args.workload {
        super::Workload::InProcess(w) => w.kept_fd(),
        super::Workload::Spec => None,
    };
    let channel = match install_stdio(stdio, channel, kept) {
        Ok(c) => c,
        Err(e) => exit_with(None, e.0, 1),
    };
    match stage1_steps(args, &channel) {
        // SAFETY: _exit leaves without running the monitor's exit handlers in this copy of it.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(e) => exit_with(Some(&channel), e.0, 1),
    }
}

fn exit_with(channel: Option<&Channel>, message: String, code: i32) -> ! {
    if let Some(c) = channel {
        let _ = c.send(&Msg::Error(message));
    }
    // SAFETY: _exit skips atexit handlers and stdio flushes that belong to the monitor.
    unsafe { libc::_exit(code) }
}

/// stdio onto 0-2, the channel onto 3, everything else closed but `kept` (>= 10).
fn install_stdio(stdio: InitStdio, channel: Channel, kept: Option<RawFd>) -> StepResult<Channel> {
    // Move all four above the low fds first: the sources may themselves be 0-3.
    let high = |fd: RawFd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).ctx("dup");
    let fds = [high(stdio.stdin.as_raw_fd())?, high(stdio.stdout.as_raw_fd())?, high(stdio.stderr.as_raw_fd())?];
    let chan = high(channel.0.as_raw_fd())?;
    drop((stdio, channel));
    for (target, fd) in fds.iter().enumerate() {
        nix::unistd::dup2(*fd, target as RawFd).ctx("dup2 stdio")?;
    }
    nix::unistd::dup3(chan, 3, nix::fcntl::OFlag::O_CLOEXEC).ctx("dup3 channel")?;
    let ranges = match kept {
        Some(fd) if fd >= 10 => vec![(4, fd as u32 - 1), (fd as u32 + 1, u32::MAX)],
        _ => vec![(4, u32::MAX)],
    };
    for (first, last) in ranges {
        // SAFETY: close_range on fds this process owns; nothing refers to them afterwards.
        if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
            return Err(nix::errno::Errno::last()).ctx("close_range");
        }
    }
    // SAFETY: fd 3 was just made the channel and is owned by nothing else.
    Ok(Channel(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3) }))
}

fn stage1_steps(args: &InitArgs, channel: &Channel) -> StepResult {
    let mut plan = NsPlan::from_spec(args.spec)?;
    // Before any namespace change: cgroupfs is the host's, and the init is born inside the cgroup.
    cgroups::join(args.cgroup_dirs)?;
    plan.join_all()?;
    if plan.creates(LinuxNamespaceType::User) {
        unshare(CloneFlags::CLONE_NEWUSER).ctx("unshare(user)")?;
        channel.send(&Msg::NeedMaps).ctx("asking for id maps")?;
        match channel.recv() {
            Ok(Some(Msg::MapsWritten)) => {}
            other => return fail(format!("waiting for id maps: {other:?}")),
        }
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).ctx("setresgid(0) in userns")?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).ctx("setresuid(0) in userns")?;
    }
    plan.unshare_rest()?;
    if plan.creates(LinuxNamespaceType::Time) {
        write_time_offsets(args.spec)?;
    }
    // SAFETY: raw clone without CLONE_VM behaves like fork; this process is single-threaded.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        -1 => Err(nix::errno::Errno::last()).ctx("clone(CLONE_PARENT)"),
        0 => {
            let result = stage2(args, &plan, channel);
            let (msg, code) = match result {
                Ok(failure) => (failure.message, failure.code),
                Err(e) => (e.0, 1),
            };
            exit_with(Some(channel), msg, code)
        }
        pid => channel.send(&Msg::InitPid(pid as i32)).ctx("reporting the init's pid"),
    }
}

fn write_time_offsets(spec: &Spec) -> StepResult {
    let offsets = spec.linux().as_ref().and_then(|l| l.time_offsets().clone()).unwrap_or_default();
    for (clock, off) in offsets {
        let line = format!("{clock} {} {}\n", off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0));
        std::fs::write("/proc/self/timens_offsets", line).with(|| format!("time offset {clock}"))?;
    }
    Ok(())
}

/// The container init. Returns only when the exec failed (or setup did).
fn stage2(args: &InitArgs, plan: &NsPlan, channel: &Channel) -> StepResult<process::ExecFailure> {
    let spec = args.spec;
    let proc_spec = spec.process().clone().ok_or_else(|| super::step::StepError("spec has no process".into()))?;
    let mut warnings = Vec::new();
    let mut warn = |w: String| warnings.push(w);
    let apparmor = process::apparmor_enabled();
    let own_cgroups = cgroups::of_process("self")?;
    if plan.creates(LinuxNamespaceType::Cgroup) {
        unshare(CloneFlags::CLONE_NEWCGROUP).ctx("unshare(cgroup)")?;
    }
    let terminal = proc_spec.terminal().unwrap_or(false);
    let argv = proc_spec.args().clone().unwrap_or_default();
    let env = proc_spec.env().clone().unwrap_or_default();
    // An in-process workload loads on a thread of its own while the rootfs is set up.
    let load_failure = |message: String| process::ExecFailure { code: 126, message };
    let loaded = std::thread::scope(|s| {
        let loading = match args.workload {
            super::Workload::InProcess(w) => {
                let job = w.begin(&argv, &env);
                let thread = std::thread::Builder::new().name("load".into());
                Some(thread.spawn_scoped(s, || unprivileged_thread().map_err(load_failure).and_then(|()| job())))
            }
            super::Workload::Spec => None,
        };
        let setup = set_up_root(args, plan, channel, &proc_spec, &own_cgroups);
        let loaded = loading.map(|spawned| match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|panic| {
                let why = panic.downcast_ref::<&str>().copied().or(panic.downcast_ref::<String>().map(String::as_str));
                Err(load_failure(format!("loading the workload panicked: {}", why.unwrap_or("?"))))
            }),
            Err(e) => Err(load_failure(format!("starting a thread to load the workload: {e}"))),
        });
        setup.map(|()| loaded)
    })?;
    let loaded = match loaded {
        Some(Ok(mut l)) => match l.settle() {
            Ok(settled) => {
                settled.into_iter().for_each(&mut warn);
                Some(Ok(l))
            }
            Err(failure) => Some(Err(failure)),
        },
        other => other,
    };
    limits::apply(&proc_spec, &mut warn)?;
    nix::unistd::setsid().ctx("setsid")?;
    if terminal {
        // SAFETY: TIOCSCTTY on fd 0, the pty replica.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(nix::errno::Errno::last()).ctx("TIOCSCTTY");
        }
    }
    if loaded.is_some() {
        // An exec'd workload gets its own process image; this one keeps the
        // loader's host files open (compiled code), which root in a pod
        // sharing the PID namespace could otherwise reopen through /proc/<pid>/fd.
        nix::sys::prctl::set_dumpable(false).ctx("PR_SET_DUMPABLE")?;
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let prepared = process::secure(&proc_spec, linux.seccomp().as_ref(), apparmor, &mut warn)?;
    if let (None, Some(failure)) = (&loaded, prepared.missing_program()) {
        return fail(failure.message.clone());
    }
    for w in warnings {
        channel.send(&Msg::Warning(w)).ctx("sending a warning")?;
    }
    channel.send(&Msg::Ready).ctx("reporting ready")?;
    match channel.recv() {
        Ok(Some(Msg::Start)) => {}
        // The monitor gave up on this container (or died); nothing to report to.
        // SAFETY: as in stage1, _exit without exit handlers.
        _ => unsafe { libc::_exit(1) },
    }
    let loaded = match loaded {
        None => return Ok(process::exec(prepared)),
        Some(Err(failure)) => return Ok(failure),
        Some(Ok(loaded)) => loaded,
    };
    channel.send(&Msg::Running).ctx("reporting the start")?;
    // Keep it from the workload; this process never returns to drop it.
    let _ = nix::unistd::close(channel.0.as_raw_fd());
    let code = loaded.run();
    // SAFETY: as above, _exit without the monitor's exit handlers.
    unsafe { libc::_exit(code) }
}

/// Takes root's powers from the calling thread alone (raw syscalls: glibc's
/// wrappers would change every thread): the overflow user and group without
/// supplementary groups, which empties its capabilities too; where those
/// aren't mapped (a user namespace), just no capabilities.
fn unprivileged_thread() -> Result<(), String> {
    const NOBODY: libc::c_long = 65534;
    // SAFETY: plain syscalls on the calling thread's credentials; setgroups gets an empty list.
    let dropped = unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) == 0
            && libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) == 0
    };
    if dropped {
        return Ok(());
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable, caps::CapSet::Ambient] {
        caps::clear(None, set).map_err(|e| format!("dropping the loading thread's capabilities: {e}"))?;
    }
    Ok(())
}

/// The container's filesystem and names: rootfs and terminal, pivot_root,
/// hostname, sysctls, then the read-only and masked paths.
fn set_up_root(
    args: &InitArgs,
    plan: &NsPlan,
    channel: &Channel,
    proc_spec: &oci_spec::runtime::Process,
    own_cgroups: &[cgroups::Hierarchy],
) -> StepResult {
    let spec = args.spec;
    let root_rel = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
    let root = std::fs::canonicalize(args.bundle.join(&root_rel)).with(|| format!("rootfs {}", root_rel.display()))?;
    let ctx = RootfsContext {
        bundle: args.bundle,
        root: &root,
        cgroups: own_cgroups,
        terminal: proc_spec.terminal().unwrap_or(false),
        bind_devices: plan.creates(LinuxNamespaceType::User),
    };
    if let Some(pty) = rootfs::prepare(spec, &ctx)? {
        super::devices::own_pty(&pty.replica, proc_spec.user())?;
        for fd in 0..3 {
            nix::unistd::dup2(pty.replica.as_raw_fd(), fd).ctx("dup2 terminal")?;
        }
        channel.send_fd(&Msg::Console, pty.master.as_fd()).ctx("sending the terminal")?;
    }
    rootfs::pivot(&root)?;
    if plan.creates(LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            nix::unistd::sethostname(h).with(|| format!("sethostname({h:?})"))?;
        }
        if let Some(d) = spec.domainname() {
            // SAFETY: pointer and length of a live string.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                return Err(nix::errno::Errno::last()).with(|| format!("setdomainname({d:?})"));
            }
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = crate::sandbox::namespaces::sysctl_path(key);
        std::fs::write(&path, value).with(|| format!("sysctl {key}={value}"))?;
    }
    rootfs::finalize(spec)
}
