//! Running a WASI preview1 module as a container's workload. The built-in
//! executor calls `load` inside the container's init, after every setting
//! (namespaces, pivot_root, user, capabilities, seccomp) and in the
//! container's cwd: the module sees the container's "/" preopened as "/",
//! its args and environment and the init's stdio; its exit code is the init's.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use wasmtime::{Config, Engine, Linker, Module, Store, Trap, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::runtime::linux::ExecFailure;

/// Signals that stop the module; as PID 1 of its namespace the init would otherwise ignore them.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// After a stop signal, how long a module blocked in a host call (wasm code
/// is interrupted at once by the epoch) gets before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no module: process.args is empty")]
    NoModule,
    #[error("reading module {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("module {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("preopening the container's / for WASI: {0}")]
    Preopen(String),
    #[error("starting the wasm engine: {0}")]
    Engine(String),
}

impl LoadError {
    /// As a shell reports a failed exec: 127 for a missing file, else 126.
    fn failure(self) -> ExecFailure {
        let code = match &self {
            LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            _ => 126,
        };
        ExecFailure { code, message: self.to_string() }
    }
}

/// A `runtime::linux::Loader`: compiles and instantiates `args[0]` with `env`
/// ("KEY=VALUE"); the returned closure runs `_start` to the exit code.
pub fn load(args: &[String], env: &[String]) -> Result<Box<dyn FnOnce() -> i32>, ExecFailure> {
    let loaded = Loaded::new(args, env).map_err(LoadError::failure)?;
    Ok(Box::new(move || loaded.run()))
}

struct Loaded {
    path: String,
    engine: Engine,
    store: Store<WasiP1Ctx>,
    start: TypedFunc<(), ()>,
}

impl Loaded {
    fn new(args: &[String], env: &[String]) -> Result<Loaded, LoadError> {
        let path = args.first().ok_or(LoadError::NoModule)?.clone();
        let bytes = std::fs::read(Path::new(&path)).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") };
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        // Module::new takes the binary format, or the text format thanks to the `wat` feature.
        let module = Module::new(&engine, &bytes).map_err(invalid)?;
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut store = Store::new(&engine, wasi_ctx(args, env)?);
        store.set_epoch_deadline(1);
        store.epoch_deadline_trap();
        let instance = linker.instantiate(&mut store, &module).map_err(invalid)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(invalid)?;
        Ok(Loaded { path, engine, store, start })
    }

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
