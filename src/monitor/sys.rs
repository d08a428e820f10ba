//! Process-level plumbing for the monitor: detaching from the daemon,
//! signals, pipes and ptys, and its own stdio after the handshake.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::Winsize;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, dup2, fork, pipe2, setsid, ForkResult};

/// The terminal size a container gets until a client sets its own.
const DEFAULT_WINSIZE: Winsize = Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };

/// Leaves the daemon: the spawned process exits at once (the daemon reaps it
/// right away) and its child goes on in its own session, as a subreaper so
/// that container inits whose parents exit are reparented to it.
pub fn detach() -> io::Result<()> {
    close_inherited_fds();
    // SAFETY: the monitor is single-threaded; the child continues normally.
    match unsafe { fork() }? {
        // SAFETY: _exit skips atexit handlers and buffered stdio the child still owns.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    own_session()
}

/// A session of its own, at "/", as a subreaper (inits whose parents exit
/// are reparented to it).
pub fn own_session() -> io::Result<()> {
    setsid()?;
    chdir("/")?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Closes every fd above stderr: whatever the spawner leaked must not stay
/// open for the container's life. Best effort (close_range needs Linux 5.9).
fn close_inherited_fds() {
    // SAFETY: nothing in this process owns an fd above 2 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Blocks SIGCHLD and SIGHUP and returns a signalfd for them. Children
/// started through `std::process::Command` get an empty mask again.
pub fn signal_fd() -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGHUP);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?)
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe2(OFlag::O_CLOEXEC)?)
}

pub fn set_default_winsize(master: BorrowedFd) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize struct that outlives the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &DEFAULT_WINSIZE) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_nonblocking(fd: BorrowedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

pub fn dev_null() -> io::Result<OwnedFd> {
    Ok(OpenOptions::new().read(true).write(true).open("/dev/null")?.into())
}

/// After the handshake: stdin and stdout to /dev/null (the daemon's pipe is
/// closed), stderr appended to `log` for the monitor's own diagnostics.
pub fn redirect_own_stdio(log: &Path) -> io::Result<()> {
    let null = dev_null()?;
    let log = OpenOptions::new().append(true).create(true).open(log)?;
    dup2(null.as_raw_fd(), 0)?;
    dup2(null.as_raw_fd(), 1)?;
    dup2(log.as_raw_fd(), 2)?;
    Ok(())
}

/// Creates a unix socket file only its owner can use: the umask covers the
/// window between bind and any chmod.
pub fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let short = crate::sockpath::SocketPath::new(path)?;
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(short.as_path());
    nix::sys::stat::umask(old);
    bound
}
