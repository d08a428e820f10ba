//! The daemon's side of a container's processes: spawning its monitor,
//! talking to it over the control socket, and learning of exits through
//! pidfds (no polling; works for monitors a previous daemon started).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::monitor::config::{Handshake, MonitorConfig};
use crate::sandbox::namespaces::{self, helper_command};

/// How long a monitor may take to create the container (mounts, cgroup, seccomp).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a control request may take; start waits for the workload's exec.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// A process identified across PID reuse by its start time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        namespaces::start_time(pid).map(|start_time| Proc { pid, start_time })
    }

    pub fn alive(&self) -> bool {
        namespaces::is_running(self.pid, self.start_time)
    }

    /// A pidfd, if the process is still the one recorded.
    pub fn pidfd(&self) -> Option<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the syscall returned a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening: the fd now pins this exact process.
        self.alive().then_some(fd)
    }

    /// Sends `signal`; a process that is already gone is fine.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        let Some(fd) = self.pidfd() else { return Ok(()) };
        // SAFETY: pidfd_send_signal on a descriptor we own, no siginfo.
        let rc = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
        };
        match rc {
            0 => Ok(()),
            _ => match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Resolves when the process has exited (at once if it already has).
    pub async fn exited(&self) {
        let Some(fd) = self.pidfd() else { return };
        // SAFETY: an OwnedFd stays open and keeps its descriptor for the AsyncFd's life.
        let Ok(fd) = (unsafe { AsyncFd::register(fd) }) else {
            // No reactor registration possible: fall back to a slow check.
            while self.alive() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return;
        };
        let _ = fd.readable().await;
    }
}

pub fn write_config(config: &MonitorConfig, config_path: &Path) -> Result<(), String> {
    let data = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
    crate::state::write_volatile(config_path, &data).map_err(|e| format!("{}: {e}", config_path.display()))
}

/// Starts `cricket monitor` for the `monitor.json` at `config_path`, and waits for its handshake.
pub async fn exec_monitor(config_path: &Path) -> Result<(Proc, Proc), String> {
    let mut child = helper_command()
        .arg("monitor")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the monitor: {e}"))?;
    let stdout = child.stdout.take().ok_or("monitor stdout missing")?;
    let stderr = child.stderr.take().ok_or("monitor stderr missing")?;
    // The spawned process exits once the monitor has forked away; tokio reaps it.
    drop(child);
    handshake(BufReader::new(stdout), stderr).await
}

/// Reads a monitor's handshake line from its `stdout` (its `stderr` when it
/// has none): the monitor and the created init.
pub async fn handshake(
    mut stdout: impl AsyncBufRead + Unpin,
    mut stderr: impl AsyncRead + Unpin,
) -> Result<(Proc, Proc), String> {
    let mut line = String::new();
    match tokio::time::timeout(CREATE_TIMEOUT, stdout.read_line(&mut line)).await {
        Err(_) => return Err(format!("the monitor did not create the container within {CREATE_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the monitor's reply: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.trim().is_empty() {
        let mut err = String::new();
        let read_err = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err);
        let _ = tokio::time::timeout(Duration::from_secs(1), read_err).await;
        return Err(format!("the monitor exited without creating the container: {}", err.trim()));
    }
    match serde_json::from_str::<Handshake>(line.trim()) {
        Ok(Handshake::Created { pid, monitor_pid }) => {
            let monitor = Proc::of(monitor_pid).ok_or("the monitor exited right after creating the container")?;
            match Proc::of(pid) {
                Some(init) => Ok((monitor, init)),
                None => Err(format!("the container init (pid {pid}) exited before it was started")),
            }
        }
        Ok(Handshake::Failed { error }) => Err(error),
        Err(e) => Err(format!("bad monitor reply {line:?}: {e}")),
    }
}

/// Sends one control request (`start`, `reopen`) and returns the monitor's answer.
pub async fn control(socket: &Path, request: &str) -> Result<(), String> {
    let talk = async {
        let unreachable =
            |e: std::io::Error| format!("cannot reach the container's monitor at {}: {e}", socket.display());
        let short = crate::sockpath::SocketPath::new(socket).map_err(unreachable)?;
        let mut stream = tokio::net::UnixStream::connect(short.as_path()).await.map_err(unreachable)?;
        stream.write_all(format!("{request}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.map_err(|e| e.to_string())?;
        match line.trim_end() {
            "ok" => Ok(()),
            reply => Err(reply.strip_prefix("error ").unwrap_or(reply).to_string()),
        }
    };
    tokio::time::timeout(CONTROL_TIMEOUT, talk)
        .await
        .unwrap_or_else(|_| Err(format!("the monitor did not answer {request:?} within {CONTROL_TIMEOUT:?}")))
}
