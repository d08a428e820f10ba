//! Running a WASI preview1 module as a container's workload. The monitor
//! compiles it (`Compiled::prepare`); the built-in executor calls `load`
//! inside the container's init, after every setting
//! (namespaces, pivot_root, user, capabilities, seccomp) and in the
//! container's cwd: the module sees the container's "/" preopened as "/",
//! its args and environment and the init's stdio; its exit code is the init's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, Module, Store, Trap, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::detect;
use crate::runtime::linux::ExecFailure;

/// Signals that stop the module; as PID 1 of its namespace the init would otherwise ignore them.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// After a stop signal, how long a module blocked in a host call (wasm code
/// is interrupted at once by the epoch) gets before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no module: process.args is empty or names no file in the rootfs")]
    NoModule,
    #[error("rootfs {path}: {source}")]
    Root { path: String, source: std::io::Error },
    #[error("reading module {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("module {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("preopening the container's / for WASI: {0}")]
    Preopen(String),
    #[error("starting the wasm engine: {0}")]
    Engine(String),
}

/// A module compiled on the host side (by the monitor, before it forks the
/// init, which inherits it), through the cache of compiled modules.
pub struct Compiled {
    engine: Engine,
    module: Module,
}

impl Compiled {
    /// Compiles the spec's entrypoint, found in the bundle's rootfs, or takes
    /// it from `cache` (by the digest of the module file). Cache trouble only warns.
    pub fn prepare(bundle: &Path, spec: &Spec, cache: &Path) -> Result<Compiled, LoadError> {
        let rel = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
        let root = bundle.join(&rel);
        let root = std::fs::canonicalize(&root)
            .map_err(|source| LoadError::Root { path: root.display().to_string(), source })?;
        let file = detect::entrypoint(&root, spec).ok_or(LoadError::NoModule)?;
        let path = file.display().to_string();
        let bytes = std::fs::read(&file).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cached = cache.join(format!("{}.cwasm", hex::encode(Sha256::digest(&bytes))));
        // Read, not mapped (deserialize_file): wasmtime would keep using the file's
        // descriptor for memory images, and the init closes every inherited one.
        if let Ok(data) = std::fs::read(&cached) {
            // SAFETY: the cache is written only by cricket, under its root dir, and
            // keyed by content; wasmtime checks the engine's version and settings.
            if let Ok(module) = unsafe { Module::deserialize(&engine, &data) } {
                return Ok(Compiled { engine, module });
            }
        }
        // Module::new takes the binary format, or the text format thanks to the `wat` feature.
        let module = Module::new(&engine, &bytes)
            .map_err(|e| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") })?;
        if let Err(e) = store(&module, &cached) {
            eprintln!("cricket: warning: caching compiled module {}: {e}", cached.display());
        }
        Ok(Compiled { engine, module })
    }

    /// A `runtime::linux::Loader`: instantiates the module for `args` and
    /// `env` ("KEY=VALUE"); the returned closure runs `_start` to the exit code.
    pub fn load(&self, args: &[String], env: &[String]) -> Result<Box<dyn FnOnce() -> i32>, ExecFailure> {
        let loaded = self.instantiate(args, env).map_err(|e| ExecFailure { code: 126, message: e.to_string() })?;
        Ok(Box::new(move || loaded.run()))
    }

    fn instantiate(&self, args: &[String], env: &[String]) -> Result<Loaded, LoadError> {
        let path = args.first().ok_or(LoadError::NoModule)?.clone();
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") };
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut store = Store::new(&self.engine, wasi_ctx(args, env)?);
        store.set_epoch_deadline(1);
        store.epoch_deadline_trap();
        let instance = linker.instantiate(&mut store, &self.module).map_err(invalid)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(invalid)?;
        Ok(Loaded { path, engine: self.engine.clone(), store, start })
    }
}

/// Written under a unique name and renamed: monitors may compile the same module at once.
fn store(module: &Module, to: &Path) -> Result<(), String> {
    let dir = to.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let data = module.serialize().map_err(|e| format!("{e:#}"))?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, to)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

struct Loaded {
    path: String,
    engine: Engine,
    store: Store<WasiP1Ctx>,
    start: TypedFunc<(), ()>,
}

impl Loaded {
    fn run(mut self) -> i32 {
        let stopped = match watch_signals(self.engine.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cricket: blocking stop signals for the module: {e}");
                return 126;
            }
        };
        let Err(e) = self.start.call(&mut self.store, ()) else { return 0 };
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return exit.0;
        }
        match (e.downcast_ref::<Trap>(), stopped.load(Ordering::SeqCst)) {
            (Some(Trap::Interrupt), sig) if sig != 0 => 128 + sig,
            _ => {
                eprintln!("cricket: module {} failed: {e:?}", self.path);
                1
            }
        }
    }
}

fn wasi_ctx(args: &[String], env: &[String]) -> Result<WasiP1Ctx, LoadError> {
    let vars: Vec<(&str, &str)> = env.iter().map(|e| e.split_once('=').unwrap_or((e, ""))).collect();
    let mut builder = WasiCtxBuilder::new();
    builder.inherit_stdio().args(args).envs(&vars);
    builder.preopened_dir("/", "/", FsPerms::ReadWrite).map_err(|e| LoadError::Preopen(format!("{e:#}")))?;
    Ok(builder.build_p1())
}

/// Blocks the stop signals and waits for them on a thread: the first one
/// ends the module's wasm code at its next epoch check.
fn watch_signals(engine: Engine) -> nix::Result<Arc<AtomicI32>> {
    let mut set = SigSet::empty();
    for sig in STOP_SIGNALS {
        set.add(sig);
    }
    set.thread_block()?;
    let stopped = Arc::new(AtomicI32::new(0));
    let flag = stopped.clone();
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        flag.store(sig as i32, Ordering::SeqCst);
        engine.increment_epoch();
        std::thread::sleep(STOP_GRACE);
        std::process::exit(128 + sig as i32);
    });
    Ok(stopped)
}
