//! ExecSync: a command run in a container through the `cricket exec` helper,
//! with its output captured and a deadline that kills it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::*;
use crate::monitor::config::{MonitorConfig, RuntimeKind};
use crate::sandbox::namespaces::helper_command;

/// Output kept per stream; more is dropped (kubelet caps probe output far lower).
const MAX_OUTPUT: usize = 16 << 20;
/// After the command exits, how long to wait for its pipes to reach EOF: a
/// background child that keeps them open must not hang the probe.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// What is read of a pipe after the grace: about what a full pipe holds.
const DRAIN_LAST: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

type Buffer = Arc<Mutex<Vec<u8>>>;

fn keep(into: &Buffer, data: &[u8]) {
    let mut buf = into.lock().unwrap();
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Reads `from` into `into` until EOF, or until `stop` is set: then it takes
/// only what the pipe already holds, with plain non-blocking reads, since on
/// a busy machine the reactor may not have seen the command's last output yet.
async fn collect<R>(mut from: R, into: Buffer, mut stop: tokio::sync::watch::Receiver<bool>)
where
    R: AsyncRead + AsRawFd + Unpin,
{
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            biased;
            read = from.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => keep(&into, &chunk[..n]),
            },
            _ = stop.changed() => break,
        }
    }
    let fd = from.as_raw_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nonblocking)).is_err() {
        return;
    }
    let mut left = DRAIN_LAST;
    while left > 0 {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                keep(&into, &chunk[..n]);
                left = left.saturating_sub(n);
            }
        }
    }
}

/// An exec ready to spawn: `command` runs the `cricket exec` helper (stdio
/// still to be set); the process file it reads is removed on drop.
#[derive(Debug)]
pub struct PreparedExec {
    pub command: tokio::process::Command,
    process_file: PathBuf,
}

impl Drop for PreparedExec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.process_file);
    }
}

impl Containers {
    /// Checks that `id` names a running container and `cmd` is not empty.
    pub fn check_exec(&self, id: &str, cmd: &[String]) -> Result<(), ContainerError> {
        self.running(id, cmd).map(|_| ())
    }

    /// The monitor's attach socket of a running container, after checking
    /// the request fits how the container was made (stdin kept open, TTY or not).
    pub fn attach_socket(&self, id: &str, stdin: bool, tty: bool) -> Result<PathBuf, ContainerError> {
        let st = self.get(id)?.snapshot();
        if st.phase != Phase::Running {
            let (action, needed) = ("attach", "running");
            return Err(ContainerError::WrongState { id: st.id, state: st.phase.name(), action, needed });
        }
        if stdin && !st.config.stdin {
            return Err(ContainerError::Invalid(format!("container {} was not created with stdin open", st.id)));
        }
        if tty != st.config.tty {
            let has = if st.config.tty { "has" } else { "has no" };
            return Err(ContainerError::Invalid(format!(
                "container {} {has} a TTY; attach with tty={}",
                st.id, st.config.tty
            )));
        }
        Ok(self.run_dir(&st.id).join(crate::monitor::attach::SOCKET))
    }

    fn running(&self, id: &str, cmd: &[String]) -> Result<ContainerState, ContainerError> {
        let st = self.get(id)?.snapshot();
        if st.phase != Phase::Running {
            let (action, needed) = ("exec", "running");
            return Err(ContainerError::WrongState { id: st.id, state: st.phase.name(), action, needed });
        }
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec needs a command".into()));
        }
        if self.runs_wasm(&st.id) {
            return Err(ContainerError::NotExecutable(st.id));
        }
        Ok(st)
    }

    /// Writes the exec's process file and builds the helper's command line.
    pub fn prepare_exec(&self, id: &str, cmd: Vec<String>, tty: bool) -> Result<PreparedExec, ContainerError> {
        let st = self.running(id, &cmd)?;
        let init = st.init.ok_or_else(|| ContainerError::Exec { id: st.id.clone(), reason: "no init".into() })?;
        let bundle = self.state_dir(&st.id);
        let process_file = self.run_dir(&st.id).join(format!("exec-{:016x}.json", rand::random::<u64>()));
        write_process(&bundle, &process_file, cmd, tty)?;
        let mut command = helper_command();
        command
            .arg("exec")
            .arg("--pid")
            .arg(init.pid.to_string())
            .arg("--bundle")
            .arg(&bundle)
            .arg("--process")
            .arg(&process_file)
            .kill_on_drop(true);
        if tty {
            command.arg("--console");
        }
        Ok(PreparedExec { command, process_file })
    }

    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout_secs: i64) -> Result<ExecOutput, ContainerError> {
        let prepared = self.prepare_exec(id, cmd, false)?;
        run(id, prepared, timeout_secs).await
    }
}

impl Containers {
    /// The container's workload is a WebAssembly module (its monitor config says so).
    fn runs_wasm(&self, id: &str) -> bool {
        let path = self.run_dir(id).join("monitor.json");
        matches!(
            state::read_json::<MonitorConfig>(&path),
            Ok(Some(MonitorConfig { runtime: RuntimeKind::Wasm { .. }, .. }))
        )
    }
}

/// The exec's OCI process: the container's own (user, caps, env, cwd) with new args.
pub(super) fn write_process(bundle: &Path, to: &Path, args: Vec<String>, tty: bool) -> Result<(), ContainerError> {
    let spec_path = bundle.join("config.json");
    let spec: oci_spec::runtime::Spec = state::read_json(&spec_path)
        .map_err(io_err(&spec_path))?
        .ok_or_else(|| ContainerError::Create(format!("{} is missing", spec_path.display())))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_terminal(Some(tty));
    let data = serde_json::to_vec(&process).map_err(|e| ContainerError::Create(e.to_string()))?;
    state::write_volatile(to, &data).map_err(io_err(to))
}

async fn run(id: &str, mut prepared: PreparedExec, timeout_secs: i64) -> Result<ExecOutput, ContainerError> {
    let err = |reason: String| ContainerError::Exec { id: id.to_string(), reason };
    let mut child = prepared
        .command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start the exec helper: {e}")))?;
    let (out, errs) = (Buffer::default(), Buffer::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    readers.spawn(collect(child.stdout.take().ok_or_else(|| err("no stdout".into()))?, out.clone(), stopped.clone()));
    readers.spawn(collect(child.stderr.take().ok_or_else(|| err("no stderr".into()))?, errs.clone(), stopped));
    let status = if timeout_secs > 0 {
        match tokio::time::timeout(Duration::from_secs(timeout_secs as u64), child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                kill_command(&mut child).await;
                return Err(ContainerError::ExecTimeout { id: id.to_string(), secs: timeout_secs });
            }
        }
    } else {
        child.wait().await
    }
    .map_err(|e| err(format!("waiting for the exec helper: {e}")))?;
    let all_read = async { while readers.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, all_read).await.is_err() {
        let _ = stop.send(true);
        while readers.join_next().await.is_some() {}
        tracing::debug!(container = %id, "exec output still open after the command exited; not waiting for it");
    }
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let take = |b: Buffer| std::mem::take(&mut *b.lock().unwrap());
    Ok(ExecOutput { stdout: take(out), stderr: take(errs), exit_code })
}

/// Kills the command the helper runs, then lets the helper reap it and exit:
/// killing the helper first would leave the command's zombie to the
/// container's init, which may never reap it. A helper still joining the
/// container forks later, so its children are looked up until it is gone.
async fn kill_command(helper: &mut tokio::process::Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Some(pid) = helper.id() {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let _ = helper.kill().await;
            return;
        }
        let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(20)), helper.wait()).await;
    }
}
