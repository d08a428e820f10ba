//! `cricket wasm-preload`: a small single-threaded process that holds one
//! program's compiled code, loaded from the cache and linked against WASI,
//! and forks the monitor of each container the daemon starts from it. The
//! fork inherits the loaded program, and so does the container's init: a
//! start neither execs a monitor (a 50 MB binary to map and relocate) nor
//! maps, checks and links the code.
//!
//! Its stdin is a SOCK_SEQPACKET socket to the daemon. It first sends
//! `ready` (or `failed: <reason>`) and then takes requests: the path of a
//! `monitor.json`, with the write ends of the monitor's stdout and stderr
//! pipes. The fork writes [`ACCEPTED`] to that stdout first: without that
//! line the daemon knows no monitor lives and starts one itself. It exits when the daemon's end closes (the daemon stopped, or let
//! the program go) or when no request came for `--idle-secs`.

use std::ffi::OsString;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::{recvmsg, send, ControlMessageOwned, MsgFlags};
use nix::unistd::{dup2, fork, ForkResult};

use super::code::Preloaded;

/// The first line of a preloaded program's reply on the monitor's stdout.
pub const ACCEPTED: &str = "accepted";
/// The largest request: a path.
const MAX_REQUEST: usize = 4096;

#[derive(clap::Args)]
pub struct PreloadArgs {
    /// The compiled-code cache.
    #[arg(long)]
    cache: PathBuf,
    /// The engine key its files are named with.
    #[arg(long)]
    engine: String,
    /// The image ID.
    #[arg(long)]
    image: String,
    /// The program's path in the image's rootfs.
    #[arg(long)]
    program: PathBuf,
    /// Exit after this long without a request.
    #[arg(long)]
    idle_secs: u64,
}

pub fn main(args: &PreloadArgs) -> ExitCode {
    // SAFETY: the daemon's socket is fd 0; nothing else above stderr is ours yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: fd 0 is the daemon's socket, owned by nothing else in this process.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    let preloaded = match Preloaded::load(&args.cache, &args.engine, &args.image, &args.program) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(socket.as_raw_fd(), format!("failed: {e}").as_bytes(), MsgFlags::MSG_NOSIGNAL);
            return ExitCode::FAILURE;
        }
    };
    // Forks are reaped by the kernel; each undoes this for its own children.
    // SAFETY: SIG_IGN installs no handler code.
    if let Err(e) = unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) } {
        let _ = send(socket.as_raw_fd(), format!("failed: SIGCHLD: {e}").as_bytes(), MsgFlags::MSG_NOSIGNAL);
        return ExitCode::FAILURE;
    }
    if send(socket.as_raw_fd(), b"ready", MsgFlags::MSG_NOSIGNAL).is_err() {
        return ExitCode::FAILURE;
    }
    let idle_ms = args.idle_secs.saturating_mul(1000).min(i32::MAX as u64) as i32;
    loop {
        let mut pfd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, idle_ms) } {
            0 => return ExitCode::SUCCESS,
            n if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR => continue,
            n if n < 0 => return ExitCode::FAILURE,
            _ => {}
        }
        match receive(socket.as_fd()) {
            Ok(Some(request)) => serve(request, &socket, &preloaded),
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => eprintln!("cricket wasm-preload: {e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("receiving a request: {0}")]
    Receive(nix::Error),
    #[error("a request needs a config path and two descriptors")]
    Malformed,
}

/// A monitor to fork: its config, and its stdout and stderr.
struct Request {
    config: PathBuf,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// The next request; None once the daemon's end is closed.
fn receive(socket: BorrowedFd) -> Result<Option<Request>, RequestError> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(RequestError::Receive)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(RequestError::Receive)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(len);
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next(), fds.next(), buf.is_empty()) {
        (Some(stdout), Some(stderr), None, false) => {
            Ok(Some(Request { config: PathBuf::from(OsString::from_vec(buf)), stdout, stderr }))
        }
        _ => Err(RequestError::Malformed),
    }
}

/// Forks the request's monitor. The fork first acknowledges the request on
/// its stdout: the daemon reads "accepted" only when a monitor is alive, and
/// without it (EOF) knows that none is.
fn serve(request: Request, socket: &OwnedFd, preloaded: &Preloaded) {
    // SAFETY: this process is single-threaded; the child goes on as the monitor.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => {}
        Ok(ForkResult::Child) => {
            let mut out = std::fs::File::from(request.stdout);
            if writeln!(out, "{ACCEPTED}").is_err() {
                // The daemon gave up on this request.
                // SAFETY: _exit skips the exit handlers of the preloading process this copies.
                unsafe { libc::_exit(1) };
            }
            retitle(&request.config);
            let code = match become_monitor(out, request.stderr, socket) {
                Ok(()) => crate::monitor::forked(&request.config, preloaded),
                Err(e) => {
                    eprintln!("cricket wasm-preload: {e}");
                    ExitCode::FAILURE
                }
            };
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        Err(e) => {
            let _ = writeln!(std::fs::File::from(request.stderr), "cricket wasm-preload: fork: {e}");
        }
    }
}

/// Makes the fork look like any monitor in ps and /proc/<pid>/cmdline,
/// `cricket monitor --config <path>`: written over this process's
/// arguments, cut to their length.
fn retitle(config: &std::path::Path) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields 48 and 49 (arg_start, arg_end); the rest follows the comm's ")".
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let bound = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (bound(48), bound(49)) else { return };
    if end <= start {
        return;
    }
    let mut title = b"cricket\0monitor\0--config\0".to_vec();
    title.extend_from_slice(config.as_os_str().as_bytes());
    title.resize(end - start, 0);
    title[end - start - 1] = 0;
    // SAFETY: [arg_start, arg_end) is this process's argument strings, on its
    // writable stack; nothing reads them after this (clap parsed them already).
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len()) };
}

/// In the fork: the request's pipes as stdout and stderr (their other fds
/// closed), /dev/null as stdin in place of the daemon's socket, and children
/// reaped again.
fn become_monitor(stdout: std::fs::File, stderr: OwnedFd, socket: &OwnedFd) -> nix::Result<()> {
    // SAFETY: SIG_DFL installs no handler code.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }?;
    let null = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, nix::sys::stat::Mode::empty())?;
    dup2(null, socket.as_raw_fd())?;
    nix::unistd::close(null)?;
    dup2(stdout.as_raw_fd(), 1)?;
    dup2(stderr.as_raw_fd(), 2)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, SockFlag, SockType};

    fn send_request(socket: &OwnedFd, path: &[u8], fds: &[RawFd]) {
        let iov = [std::io::IoSlice::new(path)];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs = if fds.is_empty() { &[][..] } else { &cmsgs[..] };
        sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    #[test]
    fn a_request_is_a_path_and_two_descriptors() {
        let (daemon, ours) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_request(&daemon, b"/run/c/monitor.json", &[]);
        assert!(receive(ours.as_fd()).is_err(), "no descriptors");
        send_request(&daemon, b"", &[r.as_raw_fd(), w.as_raw_fd()]);
        assert!(receive(ours.as_fd()).is_err(), "no path");
        send_request(&daemon, b"/run/c/monitor.json", &[r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()]);
        assert!(receive(ours.as_fd()).is_err(), "three descriptors");
        send_request(&daemon, b"/run/c/monitor.json", &[r.as_raw_fd(), w.as_raw_fd()]);
        let request = receive(ours.as_fd()).unwrap().expect("a request");
        assert_eq!(request.config, PathBuf::from("/run/c/monitor.json"));
        // The descriptors are new ones for the same pipe.
        assert_ne!(request.stdout.as_raw_fd(), r.as_raw_fd());
        let mut out = std::fs::File::from(request.stderr);
        writeln!(out, "through").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(std::fs::File::from(r)), &mut line).unwrap();
        assert_eq!(line, "through\n");
        drop(daemon);
        assert!(receive(ours.as_fd()).unwrap().is_none(), "the daemon's end closed");
    }
}
