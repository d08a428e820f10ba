//! `cricket exec`: run a new process in a running container. The helper
//! joins the container's cgroups and namespaces, forks (the child lands in
//! the container's pid namespace), and stays the parent: it forwards
//! signals and exits with the child's code. Exit codes: the process's own,
//! 128 + signal, 126 (not executable), 127 (not found), 125 when the helper
//! itself failed (bad arguments, a setup step).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{Process, Spec};

use super::step::{Step, StepResult};
use super::{cgroups, limits, process, signals};

const SETUP_FAILED: i32 = 125;

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Host PID of the container's init.
    #[arg(long)]
    pub pid: i32,
    /// The container's bundle (config.json supplies the seccomp profile).
    #[arg(long)]
    pub bundle: PathBuf,
    /// A file holding the OCI Process (JSON) to run.
    #[arg(long)]
    pub process: PathBuf,
    /// For a terminal process: stdin is a unix socket; the pty is made in the
    /// container's devpts and its master sent over that socket (SCM_RIGHTS).
    #[arg(long)]
    pub console: bool,
}

/// (name in /proc/PID/ns, flag); the user namespace first, mnt last.
const NAMESPACES: [(&str, CloneFlags); 8] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("time", CloneFlags::from_bits_retain(0x80)),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub fn exec_main(args: &ExecArgs) -> i32 {
    match exec(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cricket exec: {e}");
            SETUP_FAILED
        }
    }
}

fn exec(args: &ExecArgs) -> StepResult<i32> {
    // The daemon may die; the exec'd process must not outlive it unnoticed.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx("PR_SET_PDEATHSIG")?;
    let text = std::fs::read_to_string(&args.process).with(|| format!("reading {}", args.process.display()))?;
    let proc_spec: Process = serde_json::from_str(&text).with(|| format!("parsing {}", args.process.display()))?;
    let config = args.bundle.join("config.json");
    let spec = Spec::load(&config).with(|| format!("loading {}", config.display()))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let apparmor = process::apparmor_enabled();
    let pid = args.pid;
    // Hierarchies we already share (hybrid's unified one, usually) need no move, which would cost a lock.
    let own = cgroups::of_process("self")?;
    let dirs: Vec<PathBuf> = cgroups::of_process(&pid.to_string())?
        .into_iter()
        .map(|h| h.dir)
        .filter(|dir| !own.iter().any(|o| &o.dir == dir))
        .collect();
    let namespaces = open_namespaces(pid)?;
    let root = File::open(format!("/proc/{pid}/root")).with(|| format!("opening /proc/{pid}/root"))?;
    cgroups::join(&dirs)?;
    for (name, flag, file) in &namespaces {
        setns(file, *flag).with(|| format!("joining {name} namespace of {pid}"))?;
    }
    // setns(mnt) puts us at the namespace's root mount; the container's root is its pivot_root.
    nix::unistd::fchdir(root.as_raw_fd()).ctx("fchdir to the container root")?;
    nix::unistd::chroot(".").ctx("chroot")?;
    nix::unistd::chdir("/").ctx("chdir /")?;
    drop((namespaces, root));
    let pty = if args.console { Some(send_terminal(proc_spec.user())?) } else { None };
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe")?;
    signals::hold();
    // SAFETY: this helper is single-threaded.
    match unsafe { fork() }.ctx("fork")? {
        ForkResult::Child => {
            drop(read_end);
            let on_terminal = || -> StepResult {
                if let Some(replica) = &pty {
                    for fd in 0..3 {
                        nix::unistd::dup2(replica.as_raw_fd(), fd).ctx("dup2 terminal")?;
                    }
                }
                Ok(())
            };
            let run = on_terminal().and_then(|()| child(&proc_spec, seccomp.as_ref(), apparmor));
            let (code, message) = match run {
                Ok(failure) => (failure.code, failure.message),
                Err(e) => (SETUP_FAILED, e.0),
            };
            let mut pipe = File::from(write_end);
            let _ = write!(pipe, "{code} {message}");
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            // Only the command may hold the replica: the master sees EOF when it is done.
            drop(pty);
            Ok(parent(child, read_end, write_end))
        }
    }
}

/// Makes the terminal in the container's devpts (we are chrooted into it),
/// sends its master over stdin, and returns the replica.
fn send_terminal(user: &oci_spec::runtime::User) -> StepResult<OwnedFd> {
    let pty = super::devices::open_pty(std::path::Path::new("/"))?;
    super::devices::own_pty(&pty.replica, user)?;
    let fds = [pty.master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let data = [std::io::IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(0, &data, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .ctx("sending the terminal over stdin")?;
    Ok(pty.replica)
}

fn open_namespaces(pid: i32) -> StepResult<Vec<(&'static str, CloneFlags, File)>> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{pid}/ns/{name}");
        let file = match File::open(&path) {
            Ok(f) => f,
            // Kernels without time namespaces.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "time" => continue,
            Err(e) => return Err(e).with(|| format!("opening {path}")),
        };
        let theirs = file.metadata().with(|| format!("stat {path}"))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).with(|| format!("stat own {name} namespace"))?;
        // Joining one's own user namespace is EINVAL; the others would be no-ops.
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            out.push((name, flag, file));
        }
    }
    Ok(out)
}

fn child(
    proc_spec: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    apparmor: bool,
) -> StepResult<process::ExecFailure> {
    signals::reset_for_workload(&[]);
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx("PR_SET_PDEATHSIG")?;
    nix::unistd::setsid().ctx("setsid")?;
    if proc_spec.terminal().unwrap_or(false) {
        // SAFETY: TIOCSCTTY on fd 0, which the daemon made a pty replica.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(nix::errno::Errno::last()).ctx("TIOCSCTTY");
        }
    }
    let mut warn = |w: String| eprintln!("cricket exec: warning: {w}");
    limits::apply(proc_spec, &mut warn)?;
    let prepared = process::secure(proc_spec, seccomp, apparmor, &mut warn)?;
    Ok(process::exec(prepared))
}

fn parent(child: Pid, read_end: OwnedFd, write_end: OwnedFd) -> i32 {
    drop(write_end);
    signals::forward_to(child);
    let mut report = String::new();
    let mut pipe = File::from(read_end);
    // EOF with nothing read: the exec succeeded.
    while let Err(e) = pipe.read_to_string(&mut report) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let status = signals::wait_for(child);
    if let Some((code, message)) = report.split_once(' ') {
        eprintln!("cricket exec: {message}");
        return code.parse().unwrap_or(SETUP_FAILED);
    }
    status
}
