//! The built-in executor (runc's role, in-process). `create` forks the
//! container init from the calling, single-threaded monitor:
//!
//! ```text
//! monitor ─fork─▶ stage 1: joins the cgroup dirs, setns(path namespaces),
//!    ▲               unshare(user) + id maps written by the monitor, unshare(the rest)
//!    │               └─clone(CLONE_PARENT)─▶ init: PID 1 of a new pid ns (or a member of a joined one)
//!    └───────────── the init's parent is the monitor ◀──┘
//! ```
//!
//! A new or joined pid namespace only applies to children, hence stage 1.
//! CLONE_PARENT makes the init a direct child of the monitor, so the
//! monitor waitpid()s it without needing PR_SET_CHILD_SUBREAPER; stage 1
//! exits at once and `create` reaps it. The init talks to the monitor over
//! a CLOEXEC SOCK_SEQPACKET pair (see `sync`): its pid, warnings, ready or
//! an error; then it blocks for start, and the channel's EOF after start
//! means its execve succeeded. If the monitor drops the `ContainerInit`
//! (or dies) before start, the init sees EOF and exits with status 1.
//! `cricket exec` (exec_cmd) and `cricket run` (run_cmd) are helper modes
//! built on the same pieces.

mod capabilities;
pub mod cgroups;
pub mod devices;
pub mod exec_cmd;
mod init;
mod limits;
mod mountopts;
mod namespaces;
mod process;
mod rootfs;
pub mod run_cmd;
mod seccomp;
mod signals;
mod step;
mod sync;

use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::Spec;

use super::{ContainerInit, InitStdio};
use sync::{Channel, Msg};

pub use process::ExecFailure;
pub use signals::reset_for_workload;

/// A created container init, and the master of its terminal when the spec asks for one.
pub struct Created {
    pub init: Box<dyn ContainerInit>,
    pub console: Option<OwnedFd>,
}

/// What the init runs once started.
#[derive(Clone, Copy)]
pub enum Workload<'a> {
    /// execve of `process.args`, found through the container's PATH.
    Spec,
    /// Code of this binary, run by the init itself in place of the execve
    /// (every setting, seccomp included, already applied). The container's
    /// filesystem need not hold this binary's dynamic loader and libraries,
    /// which an exec of it after pivot_root would need.
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    InProcess(&'a dyn InProcess),
}

/// A workload of this binary's own code, loaded in steps so that most of
/// the loading overlaps the container's setup. Failures are reported by
/// StartContainer, as a failed exec is.
pub trait InProcess: Sync {
    /// Called by the init before it sets up the rootfs, while the host's
    /// files are still in reach, with `process.args` and `process.env`. The
    /// returned job runs on a second thread of the init during that setup,
    /// as an unprivileged user (or without capabilities): it must not reach
    /// files by path (pivot_root moves "/" under it), and of process-wide
    /// settings only installs its own signal handlers. The thread ends
    /// before the process's user, capabilities and seccomp are set.
    fn begin(&self, args: &[String], env: &[String]) -> LoadJob<'_>;

    /// An fd (>= 10) of the monitor's that the loaded workload uses, which
    /// the init keeps open while it closes every other inherited one.
    fn kept_fd(&self) -> Option<RawFd> {
        None
    }
}

/// The part of loading that runs alongside the container's setup.
pub type LoadJob<'a> = Box<dyn FnOnce() -> Result<Box<dyn Loaded>, ExecFailure> + Send + 'a>;

/// A workload loaded inside the init.
pub trait Loaded: Send {
    /// On the init's only thread, once the container's root is in place
    /// (after pivot_root, before the user, capabilities and seccomp are set);
    /// returns warnings for the monitor's log.
    fn settle(&mut self) -> Result<Vec<String>, ExecFailure>;
    /// After start, with every setting applied: runs to the exit code.
    fn run(self: Box<Self>) -> i32;
}

/// How long setup may take before the monitor gives up on the init.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A setup step in the init failed, e.g. "mount /proc: EPERM: Operation not permitted".
    #[error("{0}")]
    Setup(String),
    #[error("{step}: {source}")]
    Sys { step: &'static str, source: nix::errno::Errno },
    #[error("container init: {0}")]
    Protocol(String),
    #[error("writing {file} for the user namespace: {source}")]
    IdMap { file: String, source: std::io::Error },
}

/// Must be called from a single-threaded process (the monitor). Forks the
/// container init, which joins/creates the namespaces, sets up the rootfs
/// and everything else in `spec`, then blocks until started. The cgroup
/// join (our pid written into `cgroup.procs` of every dir in `cgroup_dirs`)
/// happens in stage 1 before any namespace change, so the init is born in
/// the cgroup. Returns once setup finished or failed; a failed step comes
/// back as `ExecError::Setup("mount /proc: EPERM: Operation not permitted")`.
/// Warnings (oom_score_adj or rlimits refused for lack of privilege, unknown
/// capabilities, ambient caps not raised) go to this process's stderr as
/// `cricket: warning: …` lines.
///
/// With `process.terminal`, the init opens a pty in the container's devpts
/// (so `tty` inside names it), puts its replica on 0-2 and /dev/console, and
/// hands the master back in `Created::console`; `stdio` then only fills 0-2
/// until that point (pass /dev/null).
///
/// The init is a direct child of the caller (CLONE_PARENT): the caller
/// reaps it with waitpid(init.pid()) (or waitpid(-1)). `create` itself
/// waitpid()s the short-lived stage-1 child; a caller reaping with
/// waitpid(-1) concurrently (from a SIGCHLD handler) may collect it
/// instead, which is harmless. On error nothing is left running.
pub fn create(
    bundle: &Path,
    spec: &Spec,
    stdio: InitStdio,
    cgroup_dirs: &[PathBuf],
    workload: Workload,
) -> Result<Created, ExecError> {
    let (parent, child) = sync::pair().map_err(|source| ExecError::Sys { step: "socketpair", source })?;
    let args = init::InitArgs { bundle, spec, cgroup_dirs, workload };
    // SAFETY: the caller is single-threaded (documented contract).
    let stage1 = match unsafe { fork() }.map_err(|source| ExecError::Sys { step: "fork", source })? {
        ForkResult::Child => {
            drop(parent);
            init::stage1(&args, stdio, child)
        }
        ForkResult::Parent { child: pid } => pid,
    };
    drop((child, stdio));
    parent.set_timeout(SETUP_TIMEOUT).map_err(|source| ExecError::Sys { step: "SO_RCVTIMEO", source })?;
    let mut init_pid = None;
    let mut console = None;
    let outcome = drive_setup(&parent, stage1, spec, &mut init_pid, &mut console);
    if outcome.is_err() {
        // It may be stuck (a timeout); it is our child, so the pid can't have been reused.
        let _ = kill(stage1, Signal::SIGKILL);
    }
    // Stage 1 exits right after reporting the init's pid; don't leave a zombie.
    let _ = waitpid(stage1, None);
    match (outcome, init_pid) {
        (Ok(()), Some(pid)) => Ok(Created { init: Box::new(LinuxInit { pid, channel: parent }), console }),
        (Ok(()), None) => Err(ExecError::Protocol("ready without a pid".into())),
        (Err(e), pid) => {
            if let Some(pid) = pid {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            Err(e)
        }
    }
}

fn drive_setup(
    channel: &Channel,
    stage1: Pid,
    spec: &Spec,
    init_pid: &mut Option<Pid>,
    console: &mut Option<OwnedFd>,
) -> Result<(), ExecError> {
    loop {
        let (msg, fd) = channel.recv_with_fd().map_err(ExecError::Protocol)?.unzip();
        match msg {
            Some(Msg::Console) => *console = fd.flatten(),
            Some(Msg::NeedMaps) => {
                write_id_maps(stage1, spec)?;
                channel.send(&Msg::MapsWritten).map_err(|source| ExecError::Sys { step: "sending maps", source })?;
            }
            Some(Msg::InitPid(pid)) => *init_pid = Some(Pid::from_raw(pid)),
            Some(Msg::Warning(w)) => eprintln!("cricket: warning: {w}"),
            Some(Msg::Ready) => return Ok(()),
            Some(Msg::Error(e)) => return Err(ExecError::Setup(e)),
            Some(other) => return Err(ExecError::Protocol(format!("unexpected {other:?}"))),
            None => return Err(ExecError::Protocol("exited during setup without a reason".into())),
        }
    }
}

fn write_id_maps(pid: Pid, spec: &Spec) -> Result<(), ExecError> {
    let linux = spec.linux().clone().unwrap_or_default();
    for (file, maps) in [("uid_map", linux.uid_mappings()), ("gid_map", linux.gid_mappings())] {
        let text: String =
            maps.iter().flatten().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect();
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text).map_err(|source| ExecError::IdMap { file: path, source })?;
    }
    Ok(())
}

struct LinuxInit {
    pid: Pid,
    channel: Channel,
}

impl ContainerInit for LinuxInit {
    fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    fn start(self: Box<Self>) -> Result<(), String> {
        self.channel.send(&Msg::Start).map_err(|e| format!("releasing the container init: {e}"))?;
        match self.channel.recv() {
            // The channel is CLOEXEC: EOF means execve succeeded.
            Ok(None | Some(Msg::Running)) => Ok(()),
            Ok(Some(Msg::Error(e))) => Err(e),
            Ok(Some(other)) => Err(format!("container init: unexpected {other:?}")),
            Err(e) => Err(format!("container init: {e}")),
        }
    }
}
