//! The per-container monitor (conmon's role): a small single-threaded
//! process, detached from the daemon, that creates the container through a
//! runtime handler, owns its stdio, writes the CRI log and records the exit.
//!
//! Files in the monitor's directory (the control socket's parent):
//! `monitor.log` (its own diagnostics), and for OCI runtimes `runtime.log`
//! (the runtime's JSON log) plus short-lived `init.pid` and `console.sock`.

pub mod attach;
pub mod config;
mod control;
mod create;
mod exit;
pub mod log;
mod run;
mod stdin;
mod sys;

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use config::{Handshake, MonitorConfig};
pub use create::Preloaded;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("usage: cricket monitor --config <monitor.json>")]
    NoConfig,
    #[error("reading {}: {source}", path.display())]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("parsing {}: {source}", path.display())]
    ParseConfig { path: PathBuf, source: serde_json::Error },
    #[error("control socket {} has no parent directory", .0.display())]
    NoDir(PathBuf),
    #[error("detaching from the daemon: {0}")]
    Detach(io::Error),
    #[error("blocking signals: {0}")]
    Signals(io::Error),
    #[error("opening the container log: {0}")]
    Log(io::Error),
    #[error("control socket {}: {source}", path.display())]
    Control { path: PathBuf, source: io::Error },
    #[error("container stdio: {0}")]
    Stdio(io::Error),
    #[error("bundle config {}: {reason}", path.display())]
    Spec { path: PathBuf, reason: String },
    #[error("{0}")]
    Runtime(#[from] crate::runtime::oci::OciError),
    #[error("creating the container: {0}")]
    Create(String),
}

/// `cricket monitor --config <monitor.json>` (`args` follow `monitor`):
/// detaches, creates the container, prints the handshake line, then serves
/// it until it exits.
pub fn main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let config = config_arg(args);
    serve(sys::detach().map_err(MonitorError::Detach).and_then(|()| setup(config.as_deref(), None)))
}

/// The monitor of the container `config` describes, in a fork of the
/// process that preloaded its program: stdio is the daemon's pipes already,
/// and the fork is no child of the daemon's.
#[cfg(feature = "wasm")]
pub fn forked(config: &Path, preloaded: &Preloaded) -> ExitCode {
    serve(sys::own_session().map_err(MonitorError::Detach).and_then(|()| setup(Some(config), Some(preloaded))))
}

/// Reports `monitor` to the daemon and, if it was created, serves the container.
fn serve(monitor: Result<run::Monitor, MonitorError>) -> ExitCode {
    let handshake = match &monitor {
        Ok(m) => Handshake::Created { pid: m.init_pid(), monitor_pid: std::process::id() as i32 },
        Err(e) => Handshake::Failed { error: e.to_string() },
    };
    let delivered = write_handshake(&handshake);
    let Ok(monitor) = monitor else { return ExitCode::FAILURE };
    if let Err(e) = sys::redirect_own_stdio(&monitor.dir().join("monitor.log")) {
        eprintln!("monitor: redirecting stdio: {e}");
    }
    if let Err(e) = delivered {
        // Nobody learned of this container, so nobody will start or remove it.
        eprintln!("monitor: handshake not delivered ({e}); killing the container");
        monitor.kill_init();
    }
    crate::resident::shed_startup_pages();
    monitor.run();
    ExitCode::SUCCESS
}

/// The path in `--config <path>` or `--config=<path>`, the only argument.
fn config_arg(mut args: impl Iterator<Item = OsString>) -> Option<PathBuf> {
    let first = args.next()?;
    let path = if first == "--config" {
        args.next()?
    } else {
        let bytes = first.as_bytes().strip_prefix(b"--config=")?;
        OsString::from_vec(bytes.to_vec())
    };
    args.next().is_none().then(|| PathBuf::from(path))
}

fn write_handshake(handshake: &Handshake) -> io::Result<()> {
    let mut line = serde_json::to_string(handshake).map_err(io::Error::other)?;
    line.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

fn setup(config: Option<&Path>, preloaded: Option<&Preloaded>) -> Result<run::Monitor, MonitorError> {
    let path = config.ok_or(MonitorError::NoConfig)?;
    let data = std::fs::read(path).map_err(|source| MonitorError::ReadConfig { path: path.into(), source })?;
    let cfg: MonitorConfig =
        serde_json::from_slice(&data).map_err(|source| MonitorError::ParseConfig { path: path.into(), source })?;
    drop(data);
    let dir = cfg.control_socket.parent().ok_or_else(|| MonitorError::NoDir(cfg.control_socket.clone()))?.to_path_buf();
    let signals = sys::signal_fd().map_err(MonitorError::Signals)?;
    let log = log::CriLog::open(cfg.log_path.as_deref()).map_err(MonitorError::Log)?;
    let control = control::Control::bind(&cfg.control_socket)
        .map_err(|source| MonitorError::Control { path: cfg.control_socket.clone(), source })?;
    let attach_path = dir.join(attach::SOCKET);
    let attach = match attach::Attach::bind(&attach_path) {
        Ok(a) => a,
        Err(source) => {
            control.remove_socket();
            return Err(MonitorError::Control { path: attach_path, source });
        }
    };
    let mut created = match create::create(&cfg, &dir, preloaded) {
        Ok(c) => c,
        Err(e) => {
            control.remove_socket();
            attach.remove_socket();
            return Err(e);
        }
    };
    let oom_before = exit::oom_kills(&cfg.cgroup_dirs);
    let stdin = stdin::Stdin::new(created.streams.stdin.take());
    Ok(run::Monitor::new(cfg, dir, run::Ends { log, control, attach, stdin }, signals, created, oom_before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<PathBuf> {
        config_arg(args.iter().map(OsString::from))
    }

    #[test]
    fn config_argument() {
        assert_eq!(parse(&["--config", "/r/m.json"]), Some(PathBuf::from("/r/m.json")));
        assert_eq!(parse(&["--config=/r/m.json"]), Some(PathBuf::from("/r/m.json")));
        assert_eq!(parse(&["--config"]), None);
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["--config", "a", "b"]), None);
        assert_eq!(parse(&["--other", "a"]), None);
    }
}
