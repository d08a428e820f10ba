//! `cricket wasm-run -- MODULE ARGS...`: the workload of a wasm container.
//! The built-in executor starts it as the container's process (namespaces,
//! cgroup, seccomp and user already applied), so this only runs the module:
//! WASI preview1, the container's "/" preopened as "/", stdio and the
//! environment inherited, the module's exit code as ours.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use wasmtime::{Config, Engine, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// Signals that stop the module; as PID 1 of its namespace the process would otherwise ignore them.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// After a stop signal, how long a module blocked in a host call (not wasm code, which the
/// epoch interrupts at once) gets before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct WasmRunArgs {
    /// The module (binary `.wasm` or text `.wat`), as a path in the container.
    module: std::path::PathBuf,
    /// Its arguments (argv[1..]; argv[0] is the module path).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WasmRunError {
    #[error("setting up the wasm engine: {0}")]
    Engine(String),
    #[error("loading module {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("{what} is not valid UTF-8, which WASI requires")]
    NotUtf8 { what: String },
    #[error("preparing WASI for {path}: {reason}")]
    Wasi { path: String, reason: String },
    #[error("blocking stop signals: {0}")]
    Signals(nix::errno::Errno),
    #[error("module {path} failed: {reason}")]
    Trap { path: String, reason: String },
}

/// The process's exit code: the module's, 128 + signal when stopped, 1 on any other failure.
pub fn main(args: &WasmRunArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cricket wasm-run: {e}");
            1
        }
    }
}

fn run(args: &WasmRunArgs) -> Result<i32, WasmRunError> {
    let path = args.module.display().to_string();
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).map_err(|e| WasmRunError::Engine(e.to_string()))?;
    let module = Module::from_file(&engine, &args.module)
        .map_err(|e| WasmRunError::Load { path: path.clone(), reason: e.to_string() })?;
    let wasi = wasi_ctx(&path, &args.args)?;
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    let wasi_err = |e: wasmtime::Error| WasmRunError::Wasi { path: path.clone(), reason: e.to_string() };
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(wasi_err)?;
    let mut store = Store::new(&engine, wasi);
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    let stopped = watch_signals(engine.clone())?;
    let instance = linker.instantiate(&mut store, &module).map_err(wasi_err)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(wasi_err)?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                return Ok(exit.0);
            }
            match (e.downcast_ref::<Trap>(), stopped.load(Ordering::SeqCst)) {
                (Some(Trap::Interrupt), sig) if sig != 0 => Ok(128 + sig),
                _ => Err(WasmRunError::Trap { path, reason: format!("{e:?}") }),
            }
        }
    }
}

fn wasi_ctx(module: &str, args: &[String]) -> Result<WasiP1Ctx, WasmRunError> {
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => env.push((k, v)),
            (Ok(k), Err(_)) | (Err(_), Ok(k)) => return Err(WasmRunError::NotUtf8 { what: format!("variable {k}") }),
            (Err(k), Err(_)) => {
                return Err(WasmRunError::NotUtf8 { what: format!("variable {}", k.to_string_lossy()) })
            }
        }
    }
    let mut argv = vec![module.to_string()];
    argv.extend(args.iter().cloned());
    let mut builder = WasiCtxBuilder::new();
    builder.inherit_stdio().args(&argv).envs(&env);
    builder
        .preopened_dir("/", "/", FsPerms::ReadWrite)
        .map_err(|e| WasmRunError::Wasi { path: module.to_string(), reason: e.to_string() })?;
    Ok(builder.build_p1())
}

/// Blocks the stop signals and waits for them on a thread: the first one
/// ends the module's wasm code at its next epoch check.
fn watch_signals(engine: Engine) -> Result<Arc<AtomicI32>, WasmRunError> {
    let mut set = SigSet::empty();
    for sig in STOP_SIGNALS {
        set.add(sig);
    }
    set.thread_block().map_err(WasmRunError::Signals)?;
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
