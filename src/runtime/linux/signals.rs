//! Signal forwarding for the foreground helpers (`cricket run`, `cricket exec`):
//! what the helper receives, its child gets.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

static TARGET: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = TARGET.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set
}

/// Blocks the forwarded signals until `forward_to`: one that comes while the
/// child is being forked then reaches the child instead of killing this
/// helper. The child unblocks them in `reset_for_workload`.
pub fn hold() {
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded()), None);
}

/// Sends what this helper receives to `pid` from now on, including signals held since `hold`.
pub fn forward_to(pid: Pid) {
    TARGET.store(pid.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for sig in FORWARDED {
        // SAFETY: the handler only calls kill.
        let _ = unsafe { sigaction(sig, &action) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&forwarded()), None);
}

/// Reaps children until `pid` exits; its exit code, or 128 + signal.
pub fn wait_for(pid: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The faults wasmtime turns into traps of wasm code, with handlers the engine installs.
pub const FAULT_SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Gives a workload the signal state a fresh process has: nothing blocked and
/// default dispositions, but for `keep` (handlers of this binary's own code
/// that an in-process workload needs). Rust ignores SIGPIPE and the monitor
/// blocks SIGCHLD and SIGHUP; both would otherwise survive execve into the container.
pub fn reset_for_workload(keep: &[libc::c_int]) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The raw syscall, as glibc refuses its own real-time signals (32, 33) in sigaction().
    // All zero is SIG_DFL, no flags, an empty mask, whatever the arch's field order.
    let default = [0u64; 4];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || keep.contains(&sig) {
            continue;
        }
        // SAFETY: rt_sigaction with a valid kernel sigaction, no old-action pointer, an 8-byte sigset.
        unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, default.as_ptr(), std::ptr::null_mut::<u64>(), 8usize) };
    }
}
