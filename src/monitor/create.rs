//! Creating the container's init through the configured runtime, with the
//! stdio the monitor will serve: pipes (or /dev/null for stdin), or a pty.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::config::{MonitorConfig, RuntimeKind};
use super::{sys, MonitorError};
use crate::runtime::linux::{InProcess, Workload};
use crate::runtime::oci::{OciRuntime, OciStdio};
use crate::runtime::{ContainerInit, InitStdio};

/// The monitor's ends of the container's streams. With a TTY, `stdout` is
/// the pty master (all output), `stdin` a second handle on it, `stderr` none.
pub struct Streams {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub struct Created {
    pub init: Box<dyn ContainerInit>,
    pub streams: Streams,
    /// Set for OCI runtimes, whose state must be deleted after the exit.
    pub runtime: Option<OciRuntime>,
}

/// A program loaded ahead of its containers by the process this monitor was forked from.
#[cfg(feature = "wasm")]
pub use crate::wasm::code::Preloaded;
/// Without WebAssembly support nothing is preloaded.
#[cfg(not(feature = "wasm"))]
pub enum Preloaded {}

pub fn create(cfg: &MonitorConfig, dir: &Path, preloaded: Option<&Preloaded>) -> Result<Created, MonitorError> {
    match &cfg.runtime {
        RuntimeKind::Linux | RuntimeKind::Wasm { .. } => {
            let config = cfg.bundle.join("config.json");
            let spec = oci_spec::runtime::Spec::load(&config)
                .map_err(|e| MonitorError::Spec { path: config, reason: e.to_string() })?;
            // A terminal is made by the init itself, inside the container.
            let (stdio, streams) = if cfg.tty {
                (null_stdio().map_err(MonitorError::Stdio)?, None)
            } else {
                local_stdio(cfg).map(|(stdio, streams)| (stdio, Some(streams))).map_err(MonitorError::Stdio)?
            };
            // Found and compiled here, on the host and before the fork; the init loads it.
            let loader = wasm_loader(cfg, &spec, preloaded)?;
            let workload = loader.as_deref().map_or(Workload::Spec, Workload::InProcess);
            let created = crate::runtime::linux::create(&cfg.bundle, &spec, stdio, &cfg.cgroup_dirs, workload)
                .map_err(|e| MonitorError::Create(e.to_string()))?;
            let streams = match streams {
                Some(streams) => streams,
                None => created
                    .console
                    .ok_or_else(|| std::io::Error::other("the init made no terminal"))
                    .and_then(|master| {
                        sys::set_default_winsize(master.as_fd())?;
                        tty_streams(cfg, master)
                    })
                    .map_err(MonitorError::Stdio)?,
            };
            Ok(Created { init: created.init, streams, runtime: None })
        }
        RuntimeKind::Oci { path, root } => {
            let runtime = OciRuntime { path: path.clone(), root: root.clone(), log: dir.join("runtime.log") };
            if cfg.tty {
                let created = runtime.create(&cfg.id, &cfg.bundle, dir, OciStdio::Console(dir.join("console.sock")))?;
                let init = created.init;
                let streams = created
                    .console
                    .ok_or_else(|| std::io::Error::other("the runtime sent no console"))
                    .and_then(|master| {
                        sys::set_default_winsize(master.as_fd())?;
                        tty_streams(cfg, master)
                    });
                match streams {
                    Ok(streams) => Ok(Created { init, streams, runtime: Some(runtime) }),
                    Err(e) => {
                        abandon(init.pid(), &runtime, &cfg.id);
                        Err(MonitorError::Stdio(e))
                    }
                }
            } else {
                let (stdio, streams) = local_stdio(cfg).map_err(MonitorError::Stdio)?;
                let created = runtime.create(&cfg.id, &cfg.bundle, dir, OciStdio::Inherit(stdio))?;
                Ok(Created { init: created.init, streams, runtime: Some(runtime) })
            }
        }
    }
}

#[cfg(feature = "wasm")]
fn wasm_loader(
    cfg: &MonitorConfig,
    spec: &oci_spec::runtime::Spec,
    preloaded: Option<&Preloaded>,
) -> Result<Option<Box<dyn InProcess>>, MonitorError> {
    let RuntimeKind::Wasm { cache, engine, image, module } = &cfg.runtime else { return Ok(None) };
    let prepared =
        crate::wasm::run::Prepared::prepare(&cfg.bundle, spec, cache, engine, image, module.as_deref(), preloaded)
            .map_err(|e| MonitorError::Create(e.to_string()))?;
    Ok(Some(Box::new(prepared)))
}

#[cfg(not(feature = "wasm"))]
fn wasm_loader(
    cfg: &MonitorConfig,
    _spec: &oci_spec::runtime::Spec,
    _preloaded: Option<&Preloaded>,
) -> Result<Option<Box<dyn InProcess>>, MonitorError> {
    match cfg.runtime {
        RuntimeKind::Wasm { .. } => {
            Err(MonitorError::Create("this cricket binary is built without WebAssembly support".into()))
        }
        _ => Ok(None),
    }
}

/// A created container whose stdio could not be set up: kill it and drop its runtime state.
fn abandon(pid: i32, runtime: &OciRuntime, id: &str) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    if let Err(e) = runtime.delete(id) {
        eprintln!("monitor: {e}");
    }
}

/// /dev/null on all three, for an init that makes its own terminal.
fn null_stdio() -> std::io::Result<InitStdio> {
    Ok(InitStdio { stdin: sys::dev_null()?, stdout: sys::dev_null()?, stderr: sys::dev_null()? })
}

/// Pipes made by the monitor itself (stdin is /dev/null unless asked for).
fn local_stdio(cfg: &MonitorConfig) -> std::io::Result<(InitStdio, Streams)> {
    let (stdin, stdin_writer) = if cfg.stdin {
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(w.as_fd())?;
        (r, Some(w))
    } else {
        (sys::dev_null()?, None)
    };
    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    sys::set_nonblocking(out_r.as_fd())?;
    sys::set_nonblocking(err_r.as_fd())?;
    let stdio = InitStdio { stdin, stdout: out_w, stderr: err_w };
    Ok((stdio, Streams { stdin: stdin_writer, stdout: Some(out_r), stderr: Some(err_r) }))
}

fn tty_streams(cfg: &MonitorConfig, master: OwnedFd) -> std::io::Result<Streams> {
    sys::set_nonblocking(master.as_fd())?;
    let stdin = if cfg.stdin { Some(master.try_clone()?) } else { None };
    Ok(Streams { stdin, stdout: Some(master), stderr: None })
}
