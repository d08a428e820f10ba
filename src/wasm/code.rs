//! A program's compiled code: compiled from the program, loaded from the
//! cache, linked against WASI; and kept loaded, linked, by a preloading
//! process whose forks start the program's containers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::cache;
use super::detect::runs_code_when_instantiated;
use super::run::LoadError;
use crate::image::wasm::{binary_kind, BinaryKind};

/// The lowest fd a module's code may have: the init puts its stdio and
/// channel on 0-3, and keeps a preloaded module's code open.
const CODE_FD_MIN: RawFd = 10;

#[derive(Clone)]
pub(super) enum Code {
    Module(Module),
    Component(Component),
}

/// A program's compiled code, with the engine it belongs to.
#[derive(Clone)]
pub(super) struct Compiled {
    engine: Engine,
    code: Code,
    /// Instantiating it runs none of its code, so the init does that before the start.
    early: bool,
}

impl Compiled {
    /// Compiles the program `bytes` (binary or text) of the file `path`; its code serialized too.
    pub(super) fn new(bytes: &[u8], path: &str) -> Result<(Compiled, wasmtime::Result<Vec<u8>>), LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: path.to_string(), reason: format!("{e:#}") };
        let binary = match binary_kind(bytes) {
            Some(_) => std::borrow::Cow::Borrowed(bytes),
            None => wat::parse_bytes(bytes).map_err(|e| invalid(e.into()))?,
        };
        let engine = cache::new_engine().map_err(LoadError::Engine)?;
        let (code, serialized) = match binary_kind(&binary) {
            Some(BinaryKind::Component) => {
                let component = Component::new(&engine, &binary).map_err(invalid)?;
                let data = component.serialize();
                (Code::Component(component), data)
            }
            _ => {
                let module = Module::new(&engine, &binary).map_err(invalid)?;
                let data = module.serialize();
                (Code::Module(module), data)
            }
        };
        Ok((Compiled { engine, code, early: !runs_code_when_instantiated(&binary) }, serialized))
    }

    /// Maps (modules; `file` stays open for their memory images) or reads
    /// (components) code from the cache.
    pub(super) fn load(file: std::fs::File, kind: BinaryKind, early: bool) -> wasmtime::Result<Compiled> {
        let engine = cache::new_engine().map_err(wasmtime::Error::msg)?;
        // SAFETY: the cache is written only by cricket, under its root dir, synced before it
        // is renamed into place (never rewritten), and named by this engine's compatibility key.
        // Modules are mapped; wasmtime maps components only by path, which
        // pivot_root may move meanwhile.
        let code = match kind {
            BinaryKind::Module => Code::Module(unsafe { Module::deserialize_open_file(&engine, file) }?),
            BinaryKind::Component => {
                let data = read_all(file)?;
                Code::Component(unsafe { Component::deserialize(&engine, data) }?)
            }
        };
        Ok(Compiled { engine, code, early })
    }

    pub(super) fn early(&self) -> bool {
        self.early
    }

    pub(super) fn kind(&self) -> BinaryKind {
        match self.code {
            Code::Module(_) => BinaryKind::Module,
            Code::Component(_) => BinaryKind::Component,
        }
    }

    /// Links the code against WASI (preview1 for modules, preview 2 for
    /// components); `name` is the program as the container names it.
    pub(super) fn link(self, name: &str) -> Result<Prelinked, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid { path: name.to_string(), reason: format!("{e:#}") };
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let pre = match self.code {
            Code::Module(module) => {
                let mut linker: Linker<WasiP1Ctx> = Linker::new(&self.engine);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx).map_err(engine_err)?;
                Pre::Module(linker.instantiate_pre(&module).map_err(invalid)?)
            }
            Code::Component(component) => {
                let mut linker = wasmtime::component::Linker::<Host>::new(&self.engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
                Pre::Component(linker.instantiate_pre(&component).and_then(CommandPre::new).map_err(invalid)?)
            }
        };
        Ok(Prelinked { engine: self.engine, pre, early: self.early })
    }
}

/// Compiled code linked against WASI: what each instance is made from.
#[derive(Clone)]
pub(super) struct Prelinked {
    pub engine: Engine,
    pub pre: Pre,
    pub early: bool,
}

#[derive(Clone)]
pub(super) enum Pre {
    Module(InstancePre<WasiP1Ctx>),
    Component(CommandPre<Host>),
}

/// A component's store data: WASI preview 2 state.
pub(super) struct Host {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// The cache entry of the program at `program` (its path in the rootfs) of
/// `image`, if there is one: its file, kind and whether it instantiates early.
pub(super) fn find_cached(
    dir: &Path,
    engine: &str,
    image: &str,
    program: &Path,
) -> Option<(PathBuf, BinaryKind, bool)> {
    let entries = [BinaryKind::Module, BinaryKind::Component]
        .into_iter()
        .flat_map(|kind| [true, false].map(|early| (kind, early)));
    entries
        .map(|(kind, early)| (cache::path(dir, image, program, engine, kind, early), kind, early))
        .find(|(path, _, _)| path.is_file())
}

/// `file`'s content in a sealed memfd (at fd CODE_FD_MIN or above), for a
/// preloaded module: mapped once, by the preloading process, it stays open
/// in every container its forks start, and nobody can change it there.
fn sealed_copy(mut file: std::fs::File) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let create = |flags: libc::c_uint| {
        // SAFETY: a NUL-terminated name and flags; returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"cricket-wasm-code".as_ptr(), flags) };
        // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }).ok_or_else(std::io::Error::last_os_error)
    };
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Kernels since 6.3 want a word on exec; older ones refuse the flag.
    let memfd = match create(flags | libc::MFD_NOEXEC_SEAL) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => create(flags)?,
        other => other?,
    };
    let high = fcntl(memfd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(CODE_FD_MIN))?;
    drop(memfd);
    // SAFETY: F_DUPFD_CLOEXEC just returned this descriptor; nothing else owns it.
    let mut copy = unsafe { std::fs::File::from_raw_fd(high) };
    std::io::copy(&mut file, &mut copy)?;
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(copy.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(copy)
}

pub(super) fn read_all(mut file: std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut data)?;
    Ok(data)
}

/// A program's cached code, loaded and linked ahead of its containers.
pub struct Preloaded {
    /// The cache entry it was loaded from.
    pub(super) code: PathBuf,
    /// A module's sealed copy of it, open for its memory images (>= CODE_FD_MIN).
    pub(super) fd: Option<RawFd>,
    pub(super) linked: Prelinked,
}

impl Preloaded {
    /// Loads the cached code of the program at `program` (its path in the
    /// rootfs) of `image`, for the engine whose key is `engine`.
    pub fn load(dir: &Path, engine: &str, image: &str, program: &Path) -> Result<Preloaded, LoadError> {
        let name = program.display().to_string();
        let (code, kind, early) = find_cached(dir, engine, image, program)
            .ok_or_else(|| LoadError::Invalid { path: name.clone(), reason: "no compiled code in the cache".into() })?;
        let read = |source| LoadError::Read { path: code.display().to_string(), source };
        let file = std::fs::File::open(&code).map_err(read)?;
        let (file, fd) = match kind {
            BinaryKind::Module => {
                let sealed = sealed_copy(file).map_err(read)?;
                let fd = sealed.as_raw_fd();
                (sealed, Some(fd))
            }
            // Read whole and closed.
            BinaryKind::Component => (file, None),
        };
        let compiled = Compiled::load(file, kind, early)
            .map_err(|e| LoadError::Invalid { path: code.display().to_string(), reason: format!("{e:#}") })?;
        Ok(Preloaded { linked: compiled.link(&name)?, code, fd })
    }
}
