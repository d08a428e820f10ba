//! Containers created by an external OCI runtime following the runc command
//! line (runc, crun): `create` leaves the init waiting, `start` releases it.
//! Runs inside the single-threaded monitor, which is the init's subreaper.

use std::fs::{self, File};
use std::io::{self, IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::{ContainerInit, InitStdio};

/// How long one runtime command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot run {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("{command} failed: {message}")]
    Failed { command: &'static str, message: String },
    #[error("{command} did not finish within {}s", COMMAND_TIMEOUT.as_secs())]
    Timeout { command: &'static str },
    #[error("waiting for {command}: {source}")]
    Wait { command: &'static str, source: io::Error },
    #[error("console socket {}: {source}", path.display())]
    Console { path: PathBuf, source: io::Error },
    #[error("pid file {}: {reason}", path.display())]
    PidFile { path: PathBuf, reason: String },
}

/// An OCI runtime binary and its state directory.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub path: PathBuf,
    pub root: PathBuf,
    /// The runtime's own log (`--log`, JSON), where its error messages are read from.
    pub log: PathBuf,
}

/// What the init's stdio is.
pub enum OciStdio {
    /// Passed to the runtime as its stdio, which it hands on to the init.
    Inherit(InitStdio),
    /// The runtime allocates a pty and sends its master over a console socket at this path.
    Console(PathBuf),
}

pub struct Created {
    pub init: Box<dyn ContainerInit>,
    /// The pty master, when the runtime allocated the terminal.
    pub console: Option<OwnedFd>,
}

impl OciRuntime {
    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&self.log).args(["--log-format", "json", sub]);
        // The init inherits the runtime's signal dispositions through its execs, and
        // glibc's posix_spawn leaves its internal signals (32, 33) ignored in the child.
        // SAFETY: the hook only makes raw signal syscalls, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                super::linux::reset_for_workload(&[]);
                Ok(())
            });
        }
        cmd
    }

    /// `create --bundle B --pid-file F [--console-socket S] ID`; `state_dir` receives the pid file.
    pub fn create(&self, id: &str, bundle: &Path, state_dir: &Path, stdio: OciStdio) -> Result<Created, OciError> {
        let pid_file = state_dir.join("init.pid");
        let mut cmd = self.command("create");
        cmd.arg("--bundle").arg(bundle).arg("--pid-file").arg(&pid_file);
        let mut console = None;
        match stdio {
            OciStdio::Inherit(s) => {
                cmd.stdin(Stdio::from(s.stdin)).stdout(Stdio::from(s.stdout)).stderr(Stdio::from(s.stderr));
            }
            OciStdio::Console(socket) => {
                let _ = fs::remove_file(&socket);
                let listener = UnixListener::bind(&socket)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| OciError::Console { path: socket.clone(), source })?;
                cmd.arg("--console-socket")
                    .arg(&socket)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                console = Some((listener, socket));
            }
        }
        cmd.arg(id);
        let log_start = log_len(&self.log);
        let mut child = cmd.spawn().map_err(|source| OciError::Spawn { path: self.path.clone(), source })?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let master = match &console {
            Some((listener, socket)) => {
                let got = receive_console(&mut child, listener, deadline);
                let _ = fs::remove_file(socket);
                match got {
                    Ok(fd) => Some(fd),
                    Err(ConsoleWait::Exited(status)) => return Err(self.failure("create", status, log_start)),
                    Err(ConsoleWait::Io(source)) => {
                        kill(&mut child);
                        return Err(OciError::Console { path: socket.clone(), source });
                    }
                    Err(ConsoleWait::Timeout) => {
                        kill(&mut child);
                        return Err(OciError::Timeout { command: "create" });
                    }
                }
            }
            None => None,
        };
        let status = wait_until(&mut child, deadline, "create")?;
        if !status.success() {
            return Err(self.failure("create", status, log_start));
        }
        let pid = read_pid_file(&pid_file)?;
        let _ = fs::remove_file(&pid_file);
        let init = OciInit { runtime: self.clone(), id: id.to_string(), pid };
        Ok(Created { init: Box::new(init), console: master })
    }

    /// `delete --force ID`: kills what is left and removes the runtime's state.
    pub fn delete(&self, id: &str) -> Result<(), OciError> {
        let mut cmd = self.command("delete");
        cmd.args(["--force", id]);
        self.run("delete", cmd)
    }

    /// Runs a short command; its stderr goes to the runtime log too, so a
    /// hung runtime cannot block a pipe read past the timeout.
    fn run(&self, command: &'static str, mut cmd: Command) -> Result<(), OciError> {
        let log_start = log_len(&self.log);
        let stderr = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| OciError::Spawn { path: self.path.clone(), source })?;
        let status = wait_until(&mut child, Instant::now() + COMMAND_TIMEOUT, command)?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(command, status, log_start))
        }
    }

    /// The runtime's own words for a failure: what it logged during this
    /// command (error entries, else plain stderr text), else the exit status.
    fn failure(&self, command: &'static str, status: ExitStatus, log_start: u64) -> OciError {
        let logged = logged_errors(&self.log, log_start);
        let message = if logged.is_empty() { format!("{} exited with {status}", self.path.display()) } else { logged };
        OciError::Failed { command, message }
    }
}

struct OciInit {
    runtime: OciRuntime,
    id: String,
    pid: i32,
}

impl ContainerInit for OciInit {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn start(self: Box<Self>) -> Result<(), String> {
        let mut cmd = self.runtime.command("start");
        cmd.arg(&self.id);
        self.runtime.run("start", cmd).map_err(|e| e.to_string())
    }
}

fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What the runtime wrote to its log after `from`: the messages of its
/// error entries, or when there are none, its plain (non-JSON) stderr lines.
fn logged_errors(log: &Path, from: u64) -> String {
    #[derive(serde::Deserialize)]
    struct Entry {
        level: String,
        msg: String,
    }
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
    }
    let mut errors = Vec::new();
    let mut plain = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Entry>(line) {
            Ok(e) if e.level == "error" || e.level == "fatal" => errors.push(e.msg),
            Ok(_) => {}
            Err(_) => plain.push(line.to_string()),
        }
    }
    if errors.is_empty() { plain } else { errors }.join("; ")
}

fn read_pid_file(path: &Path) -> Result<i32, OciError> {
    let text = fs::read_to_string(path).map_err(|e| OciError::PidFile { path: path.into(), reason: e.to_string() })?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| OciError::PidFile { path: path.into(), reason: format!("not a pid: {text:?}") })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A pollable handle on a child's exit (Linux 5.3+).
fn pidfd(child: &Child) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn poll_timeout(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
}

fn wait_until(child: &mut Child, deadline: Instant, command: &'static str) -> Result<ExitStatus, OciError> {
    let fd = pidfd(child).map_err(|source| OciError::Wait { command, source })?;
    loop {
        if let Some(status) = child.try_wait().map_err(|source| OciError::Wait { command, source })? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill(child);
            return Err(OciError::Timeout { command });
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(OciError::Wait { command, source: e.into() }),
        }
    }
}

enum ConsoleWait {
    Exited(ExitStatus),
    Io(io::Error),
    Timeout,
}

/// Accepts the runtime's connection on the console socket and takes the pty
/// master it sends (SCM_RIGHTS), unless the runtime exits first.
fn receive_console(child: &mut Child, listener: &UnixListener, deadline: Instant) -> Result<OwnedFd, ConsoleWait> {
    let exit = pidfd(child).map_err(ConsoleWait::Io)?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return receive_fd(&stream).map_err(ConsoleWait::Io),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(ConsoleWait::Io(e)),
        }
        if let Some(status) = child.try_wait().map_err(ConsoleWait::Io)? {
            return Err(ConsoleWait::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(ConsoleWait::Timeout);
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(exit.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ConsoleWait::Io(e.into())),
        }
    }
}

/// Receives one descriptor sent with SCM_RIGHTS (waits up to 10 s).
pub fn receive_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: SCM_RIGHTS installed these fds in this process; we own them now.
            received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let mut fds = received.into_iter();
    fds.next().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no file descriptor in the message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_errors_reads_only_new_error_entries() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runtime.log");
        fs::write(&log, "{\"level\":\"error\",\"msg\":\"old\",\"time\":\"t\"}\n").unwrap();
        let from = log_len(&log);
        let mut text = fs::read_to_string(&log).unwrap();
        text.push_str("{\"level\":\"warning\",\"msg\":\"meh\"}\nplain text\n");
        text.push_str("{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n");
        fs::write(&log, text).unwrap();
        assert_eq!(logged_errors(&log, from), "exec: \"nope\": not found");
        assert_eq!(logged_errors(&dir.path().join("missing"), 0), "");
        let from = log_len(&log);
        fs::write(&log, format!("{}usage: runc start <id>\n", fs::read_to_string(&log).unwrap())).unwrap();
        assert_eq!(logged_errors(&log, from), "usage: runc start <id>");
    }

    #[test]
    fn pid_file_must_hold_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pid");
        fs::write(&f, "1234").unwrap();
        assert_eq!(read_pid_file(&f).unwrap(), 1234);
        fs::write(&f, "x").unwrap();
        assert!(read_pid_file(&f).is_err());
        assert!(read_pid_file(&dir.path().join("none")).is_err());
    }
}
