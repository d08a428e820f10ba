//! Running a WASI module or component as a container's workload. The
//! monitor compiles it and resolves its imports (`Compiled::prepare`); the
//! built-in executor calls `load` inside the container's init, after every setting (namespaces,
//! pivot_root, user, capabilities, seccomp) and in the container's cwd: the
//! program sees the container's "/" preopened as "/", its args and
//! environment and the init's stdio; its exit code is the init's. Core
//! modules get WASI preview1 and run their `_start` (or the export named by
//! `path#func`); components get WASI preview 2 and run `wasi:cli/run`, as in
//! the `wasi:cli/command` world.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::Spec;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::detect;
use crate::image::wasm::{binary_kind, BinaryKind};
use crate::runtime::linux::ExecFailure;

/// Signals that stop the program; as PID 1 of its namespace the init would otherwise ignore them.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
/// After a stop signal, how long a program blocked in a host call (wasm code
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
    #[error("component {path}: it runs wasi:cli/run, so `#{func}` can't name a function to call")]
    ComponentFunc { path: String, func: String },
    #[error("{0}")]
    Unlinked(String),
    #[error("preopening the container's / for WASI: {0}")]
    Preopen(String),
    #[error("starting the wasm engine: {0}")]
    Engine(String),
}

enum Code {
    Module(Module),
    Component(Component),
}

/// A program linked against WASI, ready to instantiate.
enum Pre {
    Module(InstancePre<WasiP1Ctx>),
    Component(CommandPre<Host>),
}

/// A module or component compiled and linked on the host side (by the
/// monitor, before it forks the init, which inherits it), through the cache
/// of compiled code: the init only instantiates it.
pub struct Compiled {
    engine: Engine,
    /// A program that doesn't link fails its start, like a failed exec, with this message.
    pre: Result<Pre, String>,
    /// The core module's export to call.
    func: String,
}

impl Compiled {
    /// Compiles `module` (a path in the rootfs), or else the spec's
    /// entrypoint, found in the bundle's rootfs, or takes it from `cache`
    /// (by the digest of the file), and links it against WASI. Cache trouble only warns.
    pub fn prepare(bundle: &Path, spec: &Spec, cache: &Path, module: Option<&Path>) -> Result<Compiled, LoadError> {
        let rel = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
        let root = bundle.join(&rel);
        let root = std::fs::canonicalize(&root)
            .map_err(|source| LoadError::Root { path: root.display().to_string(), source })?;
        let file = match module {
            Some(m) => crate::rootpath::resolve_in_root(&root, m).ok(),
            None => detect::entrypoint(&root, spec),
        };
        let file = file.ok_or(LoadError::NoModule)?;
        // Named as the container sees it in messages.
        let name = match module {
            Some(m) => m.display().to_string(),
            None => spec.process().as_ref().and_then(|p| p.args().as_ref()?.first().cloned()).unwrap_or_default(),
        };
        let path = file.display().to_string();
        let bytes = std::fs::read(&file).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let func = detect::entry_func(spec).map(str::to_string);
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let cached = |kind| match kind {
            BinaryKind::Module => cache.join(format!("{digest}.cwasm")),
            BinaryKind::Component => cache.join(format!("{digest}.component.cwasm")),
        };
        // A binary says what it is; text may be either until parsed, which a cache hit saves.
        let kinds = match binary_kind(&bytes) {
            Some(kind) => vec![kind],
            None => vec![BinaryKind::Module, BinaryKind::Component],
        };
        for kind in kinds {
            // Read, not mapped (deserialize_file): wasmtime would keep using the file's
            // descriptor for memory images, and the init closes every inherited one.
            let Ok(data) = std::fs::read(cached(kind)) else { continue };
            // SAFETY: the cache is written only by cricket, under its root dir, and
            // keyed by content; wasmtime checks the engine's version and settings.
            let code = match kind {
                BinaryKind::Module => unsafe { Module::deserialize(&engine, &data) }.map(Code::Module),
                BinaryKind::Component => unsafe { Component::deserialize(&engine, &data) }.map(Code::Component),
            };
            if let Ok(code) = code {
                return Compiled::new(engine, code, func, name);
            }
        }
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") };
        let binary = match binary_kind(&bytes) {
            Some(_) => bytes,
            None => wat::parse_bytes(&bytes).map_err(|e| invalid(e.into()))?.into_owned(),
        };
        let (code, serialized) = match binary_kind(&binary) {
            Some(BinaryKind::Component) => {
                let component = Component::new(&engine, &binary).map_err(invalid)?;
                let data = component.serialize();
                (Code::Component(component), data.map(|d| (d, cached(BinaryKind::Component))))
            }
            _ => {
                let module = Module::new(&engine, &binary).map_err(invalid)?;
                let data = module.serialize();
                (Code::Module(module), data.map(|d| (d, cached(BinaryKind::Module))))
            }
        };
        let stored = serialized.map_err(|e| format!("{e:#}")).and_then(|(data, to)| store(&data, &to).map(|()| to));
        if let Err(e) = stored {
            eprintln!("cricket: warning: caching the compiled {path}: {e}");
        }
        Compiled::new(engine, code, func, name)
    }

    fn new(engine: Engine, code: Code, func: Option<String>, name: String) -> Result<Compiled, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let unlinked =
            |e: wasmtime::Error| LoadError::Invalid { path: name.clone(), reason: format!("{e:#}") }.to_string();
        let pre = match (code, func.as_deref()) {
            (Code::Component(_), Some(func)) => {
                return Err(LoadError::ComponentFunc { path: name, func: func.to_string() })
            }
            (Code::Module(module), _) => {
                let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
                wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(engine_err)?;
                linker.instantiate_pre(&module).map(Pre::Module).map_err(unlinked)
            }
            (Code::Component(component), None) => {
                let mut linker = wasmtime::component::Linker::<Host>::new(&engine);
                wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
                linker.instantiate_pre(&component).and_then(CommandPre::new).map(Pre::Component).map_err(unlinked)
            }
        };
        Ok(Compiled { engine, pre, func: func.unwrap_or_else(|| "_start".to_string()) })
    }

    /// A `runtime::linux::Loader`: instantiates the program for `args` and
    /// `env` ("KEY=VALUE"); the returned closure runs it to the exit code.
    pub fn load(&self, args: &[String], env: &[String]) -> Result<Box<dyn FnOnce() -> i32>, ExecFailure> {
        let path = args.first().cloned().unwrap_or_default();
        let run = self.instantiate(args, env).map_err(|e| ExecFailure { code: 126, message: e.to_string() })?;
        let engine = self.engine.clone();
        Ok(Box::new(move || exit_code(&path, engine, run)))
    }

    fn instantiate(&self, args: &[String], env: &[String]) -> Result<Run, LoadError> {
        let path = args.first().ok_or(LoadError::NoModule)?.clone();
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.clone(), reason: format!("{e:#}") };
        match self.pre.as_ref().map_err(|message| LoadError::Unlinked(message.clone()))? {
            Pre::Module(pre) => {
                let mut store = Store::new(&self.engine, wasi_ctx(args, env, false)?.build_p1());
                interruptible(&mut store);
                let instance = pre.instantiate(&mut store).map_err(invalid)?;
                let func = instance.get_typed_func::<(), ()>(&mut store, &self.func).map_err(invalid)?;
                Ok(Box::new(move || func.call(&mut store, ()).map(|()| 0)))
            }
            Pre::Component(pre) => {
                let host = Host { ctx: wasi_ctx(args, env, true)?.build(), table: ResourceTable::new() };
                let mut store = Store::new(&self.engine, host);
                interruptible(&mut store);
                let command = pre.instantiate(&mut store).map_err(invalid)?;
                Ok(Box::new(move || {
                    let ok = command.wasi_cli_run().call_run(&mut store)?;
                    Ok(if ok.is_ok() { 0 } else { 1 })
                }))
            }
        }
    }
}

/// Runs the program's entry to the exit code it returns or passes to exit.
type Run = Box<dyn FnOnce() -> wasmtime::Result<i32>>;

/// A component's store data: WASI preview 2 state.
struct Host {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// Wasm code traps at its next epoch check once a stop signal bumps the engine's epoch.
fn interruptible<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
}

/// Written under a unique name and renamed: monitors may compile the same module at once.
fn store(data: &[u8], to: &Path) -> Result<(), String> {
    let dir = to.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, to)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

fn exit_code(path: &str, engine: Engine, run: Run) -> i32 {
    let stopped = match watch_signals(engine) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cricket: blocking stop signals for the module: {e}");
            return 126;
        }
    };
    let e = match run() {
        Ok(code) => return code,
        Err(e) => e,
    };
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return exit.0;
    }
    match (e.downcast_ref::<Trap>(), stopped.load(Ordering::SeqCst)) {
        (Some(Trap::Interrupt), sig) if sig != 0 => 128 + sig,
        _ => {
            eprintln!("cricket: module {path} failed: {e:?}");
            1
        }
    }
}

/// Components also get the pod's network through WASI sockets (preview1 has none).
fn wasi_ctx(args: &[String], env: &[String], network: bool) -> Result<WasiCtxBuilder, LoadError> {
    let vars: Vec<(&str, &str)> = env.iter().map(|e| e.split_once('=').unwrap_or((e, ""))).collect();
    let mut builder = WasiCtxBuilder::new();
    builder.inherit_stdio().args(args).envs(&vars);
    if network {
        builder.inherit_network().allow_ip_name_lookup(true);
    }
    builder.preopened_dir("/", "/", FsPerms::ReadWrite).map_err(|e| LoadError::Preopen(format!("{e:#}")))?;
    Ok(builder)
}

/// Blocks the stop signals and waits for them on a thread: the first one
/// ends the program's wasm code at its next epoch check.
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

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, RootBuilder, SpecBuilder};

    /// A `wasi:cli/command` component whose `run` exits with `code`.
    fn component(code: u8) -> String {
        format!(
            r#"(component
  (import "wasi:cli/exit@0.2.0" (instance $exit (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $exit-with-code (canon lower (func $exit "exit-with-code")))
  (core module $m
    (import "wasi" "exit" (func $exit (param i32)))
    (func (export "run") (result i32) (call $exit (i32.const {code})) (i32.const 1)))
  (core instance $i (instantiate $m (with "wasi" (instance (export "exit" (func $exit-with-code))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))"#
        )
    }

    /// `_start` exits 1; `greet` exits 3.
    const TWO_ENTRIES: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 1)))
  (func (export "greet") (call $exit (i32.const 3))))"#;

    fn bundle(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join("rootfs").join(name), data).unwrap();
        }
        dir
    }

    fn spec(bundle: &Path, arg0: &str) -> Spec {
        let process = ProcessBuilder::default().args(vec![arg0.to_string()]).cwd("/").build().unwrap();
        let root = RootBuilder::default().path(bundle.join("rootfs")).build().unwrap();
        SpecBuilder::default().process(process).root(root).build().unwrap()
    }

    fn run(bundle: &Path, arg0: &str, cache: &Path, module: Option<&Path>) -> Result<i32, LoadError> {
        let compiled = Compiled::prepare(bundle, &spec(bundle, arg0), cache, module)?;
        let args = vec![arg0.to_string()];
        Ok(compiled.load(&args, &[]).map_err(|e| LoadError::Engine(e.message))?())
    }

    #[test]
    fn components_run_wasi_cli_run_and_are_cached_by_kind() {
        let other = wat::parse_str(component(4)).unwrap();
        let b = bundle(&[("cli.wat", component(9).as_bytes()), ("other.wasm", &other)]);
        let cache = b.path().join("cache");
        assert_eq!(run(b.path(), "/cli.wat", &cache, None).unwrap(), 9);
        let names: Vec<String> =
            std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(".component.cwasm"), "{names:?}");
        // A hit skips compiling: swap in another compiled component under the same name.
        assert_eq!(run(b.path(), "/other.wasm", &cache, None).unwrap(), 4);
        let other_cached =
            std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| !p.ends_with(&names[0])).unwrap();
        std::fs::copy(&other_cached, cache.join(&names[0])).unwrap();
        assert_eq!(run(b.path(), "/cli.wat", &cache, None).unwrap(), 4);
        // The artifact's binary is run whatever args[0] says.
        assert_eq!(run(b.path(), "prog-name", &cache, Some(Path::new("/other.wasm"))).unwrap(), 4);
        let err = run(b.path(), "/cli.wat#main", &cache, None).err().unwrap();
        assert!(matches!(err, LoadError::ComponentFunc { .. }), "{err}");
    }

    #[test]
    fn path_hash_func_calls_that_export() {
        let b = bundle(&[("two.wat", TWO_ENTRIES.as_bytes())]);
        let cache = b.path().join("cache");
        assert_eq!(run(b.path(), "/two.wat", &cache, None).unwrap(), 1);
        assert_eq!(run(b.path(), "/two.wat#greet", &cache, None).unwrap(), 3);
        assert!(run(b.path(), "/two.wat#missing", &cache, None).is_err());
    }
}
