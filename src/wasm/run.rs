//! Running a WASI module or component as a container's workload, in three
//! places. The monitor, on the host before it forks the init, finds the
//! program and compiles it unless the cache has it (`Prepared::prepare`).
//! The init loads it on a thread of its own while it sets up the container
//! (`InProcess::begin`): maps the cached code, links it against WASI and,
//! when that runs none of the program's code (no start function), also
//! instantiates it, so the start only has to call it. Once the container's
//! root is in place, the init gives the program its WASI context (`settle`):
//! the container's "/" preopened as "/", its args and environment and the
//! init's stdio; its exit code is the init's. Core modules get WASI
//! preview1 and run their `_start` (or the export named by `path#func`);
//! components get WASI preview 2 and run `wasi:cli/run`, as in the
//! `wasi:cli/command` world.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::Spec;
use std::os::fd::RawFd;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, InstancePre, Store, Trap, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::code::{find_cached, read_all, Compiled, Host, Pre, Prelinked, Preloaded};
use super::{cache, detect};
use crate::image::wasm::BinaryKind;
use crate::runtime::linux::{ExecFailure, InProcess, LoadJob, Loaded};

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
    #[error("preopening the container's / for WASI: {0}")]
    Preopen(String),
    #[error("starting the wasm engine: {0}")]
    Engine(String),
}

/// Where the init gets the compiled program.
enum Source {
    /// The cache's file (the common case): the init maps it. Should that
    /// fail (a file removed meanwhile), it compiles the program (host path) again.
    Cached { code: PathBuf, kind: BinaryKind, early: bool, program: PathBuf },
    /// Compiled by the monitor just now: the init inherits it, and its engine's trap handlers.
    Built(Compiled),
    /// Loaded and linked by the preloading process this monitor was forked
    /// from; the init inherits it, and keeps the code's file `fd` open.
    Preloaded { linked: Prelinked, fd: Option<RawFd> },
}

/// A program found and compiled, ready for the init to load.
pub struct Prepared {
    source: Source,
    /// The core module's export to call.
    func: String,
    /// The program as the container names it, for messages.
    name: String,
}

impl Prepared {
    /// Finds `module` (a path in the rootfs), or else the spec's entrypoint,
    /// in the bundle's rootfs (of the image whose ID is `image`), and
    /// compiles it unless `cache` holds its code for `engine` (the key of
    /// `cache::engine_key`). That code comes from `preloaded` when it is
    /// this program's. Cache trouble only warns.
    pub fn prepare(
        bundle: &Path,
        spec: &Spec,
        cache: &Path,
        engine: &str,
        image: &str,
        module: Option<&Path>,
        preloaded: Option<&Preloaded>,
    ) -> Result<Prepared, LoadError> {
        let rel = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
        let root = bundle.join(&rel);
        let root = std::fs::canonicalize(&root)
            .map_err(|source| LoadError::Root { path: root.display().to_string(), source })?;
        let file = match module {
            Some(m) => crate::rootpath::resolve_in_root(&root, m).ok(),
            None => detect::entrypoint(&root, spec),
        };
        let file = file.ok_or(LoadError::NoModule)?;
        let name = match module {
            Some(m) => m.display().to_string(),
            None => spec.process().as_ref().and_then(|p| p.args().as_ref()?.first().cloned()).unwrap_or_default(),
        };
        let path = file.display().to_string();
        let func = detect::entry_func(spec).map(str::to_string);
        let inside = Path::new("/").join(file.strip_prefix(&root).unwrap_or(&file));
        // Without both keys (a record older than them) nothing is cached: names could collide.
        let keyed = !engine.is_empty() && !image.is_empty();
        if let Some((code, kind, early)) = keyed.then(|| find_cached(cache, engine, image, &inside)).flatten() {
            let source = match preloaded.filter(|p| p.code == code) {
                Some(p) => Source::Preloaded { linked: p.linked.clone(), fd: p.fd },
                None => Source::Cached { code, kind, early, program: file },
            };
            return Prepared::new(source, func, name);
        }
        let bytes = std::fs::read(&file).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let (compiled, serialized) = Compiled::new(&bytes, &path)?;
        if keyed {
            let to = cache::path(cache, image, &inside, engine, compiled.kind(), compiled.early());
            let stored = serialized.map_err(|e| format!("{e:#}")).and_then(|data| cache::store(&data, &to));
            if let Err(e) = stored {
                eprintln!("cricket: warning: caching the compiled {path}: {e}");
            }
        }
        Prepared::new(Source::Built(compiled), func, name)
    }

    fn new(source: Source, func: Option<String>, name: String) -> Result<Prepared, LoadError> {
        let component = match &source {
            Source::Cached { kind, .. } => *kind == BinaryKind::Component,
            Source::Built(compiled) => compiled.kind() == BinaryKind::Component,
            Source::Preloaded { linked, .. } => matches!(linked.pre, Pre::Component(_)),
        };
        match func {
            Some(func) if component => Err(LoadError::ComponentFunc { path: name, func }),
            func => Ok(Prepared { source, func: func.unwrap_or_else(|| "_start".to_string()), name }),
        }
    }

    /// On the init's loading thread: the code, linked against WASI, and
    /// instantiated when that runs none of it.
    fn load(&self, opened: Opened, args: Vec<String>, env: Vec<String>) -> Result<Program, LoadError> {
        let mut warnings = Vec::new();
        let name = &self.name;
        let linked = match opened {
            Opened::Linked(linked) => linked,
            Opened::Built(compiled) => compiled.link(name)?,
            Opened::Files { code, kind, early, path, program } => {
                match code.and_then(|file| Compiled::load(file, kind, early).map_err(|e| format!("{e:#}"))) {
                    Ok(compiled) => compiled,
                    Err(reason) => {
                        warnings.push(format!("compiled code {path}: {reason}; compiling {name} again"));
                        let bytes = program.and_then(|file| read_all(file).map_err(|e| format!("{e:#}")));
                        let bytes = bytes.map_err(|reason| LoadError::Invalid { path: name.clone(), reason })?;
                        Compiled::new(&bytes, name)?.0
                    }
                }
                .link(name)?
            }
        };
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: name.clone(), reason: format!("{e:#}") };
        // Host calls are async, driven on the program's own thread: no runtime
        // threads (wasmtime-wasi's sync calls would make one per CPU of the node).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LoadError::Engine(format!("starting the WASI runtime: {e}")))?;
        let Prelinked { engine, pre, early } = linked;
        let mut linked = match pre {
            Pre::Module(pre) => {
                let entry = pre.module().get_export(&self.func).and_then(|e| e.func().cloned());
                if !entry.is_some_and(|f| f.params().len() == 0 && f.results().len() == 0) {
                    let reason = format!("no exported function `{}` taking and returning nothing", self.func);
                    return Err(LoadError::Invalid { path: name.clone(), reason });
                }
                // A stand-in context until `settle`: instantiating calls no host function
                // (if it runs a start function, that happens after `settle`).
                let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
                interruptible(&mut store);
                Linked::Module { store, pre, func: self.func.clone(), entry: None }
            }
            Pre::Component(pre) => {
                let host = Host { ctx: WasiCtxBuilder::new().build(), table: ResourceTable::new() };
                let mut store = Store::new(&engine, host);
                interruptible(&mut store);
                Linked::Component { store, pre, command: None }
            }
        };
        if early {
            runtime.block_on(linked.instantiate()).map_err(invalid)?;
        }
        Ok(Program { engine, name: name.clone(), args, env, linked, runtime, warnings })
    }
}

/// What the init's main thread opens for the loading thread, while the host's files are in reach.
enum Opened {
    Files {
        code: Result<std::fs::File, String>,
        kind: BinaryKind,
        early: bool,
        path: String,
        program: Result<std::fs::File, String>,
    },
    Built(Compiled),
    Linked(Prelinked),
}

impl InProcess for Prepared {
    fn begin(&self, args: &[String], env: &[String]) -> LoadJob<'_> {
        let open = |p: &Path| std::fs::File::open(p).map_err(|e| e.to_string());
        let opened = match &self.source {
            Source::Cached { code, kind, early, program } => Opened::Files {
                code: open(code),
                kind: *kind,
                early: *early,
                path: code.display().to_string(),
                program: open(program),
            },
            Source::Built(compiled) => Opened::Built(compiled.clone()),
            Source::Preloaded { linked, .. } => Opened::Linked(linked.clone()),
        };
        let (args, env) = (args.to_vec(), env.to_vec());
        Box::new(move || {
            let loaded = self.load(opened, args, env).map_err(failure)?;
            Ok(Box::new(loaded) as Box<dyn Loaded>)
        })
    }

    fn kept_fd(&self) -> Option<RawFd> {
        match self.source {
            Source::Preloaded { fd, .. } => fd,
            _ => None,
        }
    }
}

/// A load error fails the start as a failed exec does.
fn failure(e: LoadError) -> ExecFailure {
    ExecFailure { code: 126, message: e.to_string() }
}

/// A program loaded in the init, with its arguments.
struct Program {
    engine: Engine,
    /// The program as the container names it, for messages.
    name: String,
    args: Vec<String>,
    env: Vec<String>,
    linked: Linked,
    runtime: tokio::runtime::Runtime,
    warnings: Vec<String>,
}

impl Loaded for Program {
    fn settle(&mut self) -> Result<Vec<String>, ExecFailure> {
        let (args, env) = (&self.args, &self.env);
        match &mut self.linked {
            Linked::Module { store, .. } => *store.data_mut() = wasi_ctx(args, env, false).map_err(failure)?.build_p1(),
            Linked::Component { store, .. } => {
                store.data_mut().ctx = wasi_ctx(args, env, true).map_err(failure)?.build()
            }
        }
        Ok(std::mem::take(&mut self.warnings))
    }

    fn run(self: Box<Self>) -> i32 {
        let Program { engine, name, linked, runtime, .. } = *self;
        exit_code(&name, engine, move || {
            let result = runtime.block_on(linked.run());
            // The init exits next, its memory with it: freeing first would only take time.
            std::mem::forget(runtime);
            result
        })
    }
}

/// A linked program in its store, instantiated (`entry`, `command`) or not yet.
enum Linked {
    Module { store: Store<WasiP1Ctx>, pre: InstancePre<WasiP1Ctx>, func: String, entry: Option<TypedFunc<(), ()>> },
    Component { store: Store<Host>, pre: CommandPre<Host>, command: Option<Command> },
}

impl Linked {
    /// Instantiates the program now.
    async fn instantiate(&mut self) -> wasmtime::Result<()> {
        match self {
            Linked::Module { store, pre, func, entry } => *entry = Some(module_entry(pre, store, func).await?),
            Linked::Component { store, pre, command } => *command = Some(pre.instantiate_async(&mut *store).await?),
        }
        Ok(())
    }

    /// Calls the program's entry, instantiating it first unless done: a
    /// start function is the program's own code, its exit or trap the program's.
    /// The store is left to the process's exit, as in `Program::run`.
    async fn run(self) -> wasmtime::Result<i32> {
        match self {
            Linked::Module { mut store, pre, func, entry } => {
                let entry = match entry {
                    Some(entry) => entry,
                    None => module_entry(&pre, &mut store, &func).await?,
                };
                let result = entry.call_async(&mut store, ()).await.map(|()| 0);
                std::mem::forget(store);
                result
            }
            Linked::Component { mut store, pre, command } => {
                let command = match command {
                    Some(command) => command,
                    None => pre.instantiate_async(&mut store).await?,
                };
                let result = command.wasi_cli_run().call_run(&mut store).await;
                std::mem::forget(store);
                Ok(if result?.is_ok() { 0 } else { 1 })
            }
        }
    }
}

async fn module_entry(
    pre: &InstancePre<WasiP1Ctx>,
    store: &mut Store<WasiP1Ctx>,
    func: &str,
) -> wasmtime::Result<TypedFunc<(), ()>> {
    let instance = pre.instantiate_async(&mut *store).await?;
    instance.get_typed_func::<(), ()>(store, func)
}

/// Wasm code traps at its next epoch check once a stop signal bumps the engine's epoch.
fn interruptible<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
}

/// Runs the program (`run`) to the exit code it returns or passes to exit, or its trap's.
fn exit_code(path: &str, engine: Engine, run: impl FnOnce() -> wasmtime::Result<i32>) -> i32 {
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
    // A container runs one program on one thread: its file I/O may block that thread.
    builder.inherit_stdio().args(args).envs(&vars).allow_blocking_current_thread(true);
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

    fn spec(bundle: &Path, args: &[&str]) -> Spec {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let process = ProcessBuilder::default().args(args).cwd("/").build().unwrap();
        let root = RootBuilder::default().path(bundle.join("rootfs")).build().unwrap();
        SpecBuilder::default().process(process).root(root).build().unwrap()
    }

    type Warned = (Box<dyn Loaded>, Vec<String>);

    /// What the monitor and then the init do before the start, in this process, and the warnings.
    fn load(bundle: &Path, args: &[&str], cache: &Path, module: Option<&Path>) -> Result<Warned, String> {
        let spec = spec(bundle, args);
        let prepared =
            Prepared::prepare(bundle, &spec, cache, "test", "sha256:img", module, None).map_err(|e| e.to_string())?;
        let args: Vec<String> = spec.process().as_ref().unwrap().args().clone().unwrap();
        let mut loaded = prepared.begin(&args, &[])().map_err(|f| f.message)?;
        let warnings = loaded.settle().map_err(|f| f.message)?;
        Ok((loaded, warnings))
    }

    /// The exit code, or what failed before the start.
    fn run_args(bundle: &Path, args: &[&str], cache: &Path, module: Option<&Path>) -> Result<i32, String> {
        Ok(load(bundle, args, cache, module)?.0.run())
    }

    fn run(bundle: &Path, arg0: &str, cache: &Path, module: Option<&Path>) -> Result<i32, String> {
        run_args(bundle, &[arg0], cache, module)
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
        assert!(names[0].ends_with("-test.component.cwasm"), "{names:?}");
        // A hit skips compiling: swap in another compiled component under the same name.
        assert_eq!(run(b.path(), "/other.wasm", &cache, None).unwrap(), 4);
        let other_cached =
            std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| !p.ends_with(&names[0])).unwrap();
        std::fs::copy(&other_cached, cache.join(&names[0])).unwrap();
        assert_eq!(run(b.path(), "/cli.wat", &cache, None).unwrap(), 4);
        // The artifact's binary is run whatever args[0] says.
        assert_eq!(run(b.path(), "prog-name", &cache, Some(Path::new("/other.wasm"))).unwrap(), 4);
        let err = run(b.path(), "/cli.wat#main", &cache, None).unwrap_err();
        assert!(err.contains("can't name a function"), "{err}");
        // Code that doesn't load (or went meanwhile) is compiled again, with a warning.
        std::fs::write(cache.join(&names[0]), b"junk").unwrap();
        let (loaded, warnings) = load(b.path(), &["/cli.wat"], &cache, None).unwrap();
        assert!(warnings.len() == 1 && warnings[0].contains(&names[0]), "{warnings:?}");
        assert!(warnings[0].contains("compiling /cli.wat again"), "{warnings:?}");
        assert_eq!(loaded.run(), 9);
    }

    #[test]
    fn path_hash_func_calls_that_export() {
        let b = bundle(&[("two.wat", TWO_ENTRIES.as_bytes())]);
        let cache = b.path().join("cache");
        assert_eq!(run(b.path(), "/two.wat", &cache, None).unwrap(), 1);
        assert_eq!(run(b.path(), "/two.wat#greet", &cache, None).unwrap(), 3);
        let err = run(b.path(), "/two.wat#missing", &cache, None).unwrap_err();
        assert!(err.contains("no exported function `missing`"), "{err}");
    }

    /// Exits with its argument count, from the WASI context it runs with.
    const ARGC: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $sizes (i32.const 0) (i32.const 4))) (call $exit (i32.load (i32.const 0)))))"#;

    /// Its start function exits 6 before `_start` could exit 1.
    const STARTS: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $early (call $exit (i32.const 6)))
  (start $early)
  (func (export "_start") (call $exit (i32.const 1))))"#;

    /// Its data doesn't fit its memory: instantiation fails, with `start` after the start section.
    fn misfit(start: &str) -> String {
        format!(
            r#"(module (memory (export "memory") 1) (data (i32.const 65535) "ab") (func $f) {start}
  (func (export "_start")))"#
        )
    }

    #[test]
    fn instantiated_early_only_without_a_start_function() {
        let (misfit_wat, misfit_start) = (misfit(""), wat::parse_str(misfit("(start $f)")).unwrap());
        let argc = wat::parse_str(ARGC).unwrap();
        let files: [(&str, &[u8]); 6] = [
            ("argc.wasm", &argc),
            ("starts.wasm", &wat::parse_str(STARTS).unwrap()),
            ("misfit.wasm", &wat::parse_str(&misfit_wat).unwrap()),
            ("misfit.wat", misfit_wat.as_bytes()),
            ("misfit-start.wasm", &misfit_start),
            ("argc.wat", ARGC.as_bytes()),
        ];
        let b = bundle(&files);
        let cache = b.path().join("cache");
        let early_failure = |arg0: &str| load(b.path(), &[arg0], &cache, None).err();
        let entries = || std::fs::read_dir(&cache).map_or(0, |d| d.count());
        // Instantiated while the container is set up (a failure shows before the start),
        // when compiled and when cached.
        for _ in 0..2 {
            let err = early_failure("/misfit.wasm").expect("instantiated early");
            assert!(err.contains("/misfit.wasm") && err.contains("out of bounds"), "{err}");
            // And the program sees the context `settle` gave it.
            assert_eq!(run_args(b.path(), &["/argc.wasm", "x", "y"], &cache, None).unwrap(), 3);
        }
        // Text too: what its compiling found is in the cache entry's name.
        for _ in 0..2 {
            assert!(early_failure("/misfit.wat").is_some());
            assert_eq!(run_args(b.path(), &["/argc.wat", "x"], &cache, None).unwrap(), 2);
        }
        assert_eq!(entries(), 4, "misfit and argc, binary and text: the second rounds were cache hits");
        // A start function is the program's code: it runs after the start, its exit or trap the program's.
        for _ in 0..2 {
            assert!(early_failure("/misfit-start.wasm").is_none());
            assert_eq!(run(b.path(), "/misfit-start.wasm", &cache, None).unwrap(), 1);
            assert_eq!(run(b.path(), "/starts.wasm", &cache, None).unwrap(), 6);
        }
    }
}
