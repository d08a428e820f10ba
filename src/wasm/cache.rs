//! The cache of compiled code, `root/wasm-cache`: one file per program and
//! engine, `<image>-<path>-<engine>.cwasm` (`.component.cwasm` for
//! components; `.start.cwasm` and `.component.start.cwasm` when
//! instantiating the program runs a start function). `<image>` is the image
//! ID, whose layers fix the content of every file in the rootfs, and
//! `<path>` a hash of the program's path in it: a start finds its code
//! without reading the program. `<engine>` names the wasmtime build and
//! settings that can load it: an upgraded cricket never meets code it can't
//! load, and the daemon drops other engines' files the first time it needs
//! the key. Removing an image removes its code.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, WasmBacktraceDetails};

use crate::image::wasm::BinaryKind;

/// The one engine configuration, shared by the daemon (for the key), the
/// monitor (compiling) and the init (loading).
pub fn engine_config() -> Config {
    let mut config = Config::new();
    // StopContainer ends the program at its next epoch check.
    config.epoch_interruption(true);
    // Pinned: wasmtime would read it from WASMTIME_BACKTRACE_DETAILS, and it changes the code.
    config.wasm_backtrace_details(WasmBacktraceDetails::Disable);
    config
}

pub fn new_engine() -> Result<Engine, String> {
    Engine::new(&engine_config()).map_err(|e| format!("starting the wasm engine: {e:#}"))
}

static KEY: OnceLock<String> = OnceLock::new();

/// This binary's engine key, once `engine_key` has made it.
pub fn known_key() -> Option<&'static str> {
    KEY.get().map(String::as_str)
}

/// This binary's engine key (an engine made and hashed: call it off the async
/// runtime); the first success also removes other engines' files from `dir`.
pub fn engine_key(dir: &Path) -> Result<&'static str, String> {
    if let Some(key) = known_key() {
        return Ok(key);
    }
    let key = compute_key()?;
    prune(dir, &key);
    Ok(KEY.get_or_init(|| key))
}

/// Engines with equal keys load each other's compiled code.
fn compute_key() -> Result<String, String> {
    let engine = new_engine()?;
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Where the code of the program at `program` (its path in the rootfs) of
/// `image` is cached; `early` when instantiating it runs none of its code.
pub fn path(dir: &Path, image: &str, program: &Path, engine: &str, kind: BinaryKind, early: bool) -> PathBuf {
    let digest = Sha256::digest(program.as_os_str().as_encoded_bytes());
    let name = format!("{}-{}-{engine}", image_part(image), hex::encode(&digest[..8]));
    let kind = match kind {
        BinaryKind::Module => "",
        BinaryKind::Component => ".component",
    };
    let start = if early { "" } else { ".start" };
    dir.join(format!("{name}{kind}{start}.cwasm"))
}

/// At the daemon's start: other engines' files and those of images no
/// longer stored (removed while one of their containers was compiling).
pub fn tidy(dir: &Path, images: &[String]) {
    if let Err(e) = engine_key(dir) {
        tracing::warn!(error = %e, "compiled wasm left as it is");
        return;
    }
    let stored: Vec<String> = images.iter().map(|id| format!("{}-", image_part(id))).collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !stored.iter().any(|prefix| name.starts_with(prefix.as_str())) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "removing compiled wasm");
            }
        }
    }
}

/// Removes the compiled code of `image`'s programs.
pub fn forget_image(dir: &Path, image: &str) {
    let prefix = format!("{}-", image_part(image));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "removing compiled wasm");
            }
        }
    }
}

/// The image ID's hex digest, or a digest of it when it is something else.
fn image_part(image: &str) -> String {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex.to_ascii_lowercase()
    } else {
        hex::encode(Sha256::digest(image.as_bytes()))
    }
}

/// Written under a unique name, synced, then renamed: monitors may compile
/// the same program at once, and the init loads the file without checking it.
pub fn store(data: &[u8], to: &Path) -> Result<(), String> {
    let dir = to.parent().ok_or("no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, to));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// Removes compiled code no engine of this binary loads (older cricket
/// builds, or other settings), and leftovers of interrupted writes.
fn prune(dir: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let ours = format!("-{key}.");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.contains(&ours) && name.ends_with(".cwasm")) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "removing stale compiled wasm");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_engines_files_and_leftovers_go() {
        let key = compute_key().unwrap();
        assert_eq!(key.len(), 16);
        assert_eq!(compute_key().unwrap(), key);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let module = path(d, "sha256:aa", Path::new("/app.wasm"), &key, BinaryKind::Module, true);
        let component = path(d, "sha256:bb", Path::new("/app.wasm"), &key, BinaryKind::Component, false);
        store(b"module", &module).unwrap();
        store(b"component", &component).unwrap();
        for stale in ["aa-0123456789abcdef.cwasm", "bb.component.cwasm", ".77.tmp"] {
            std::fs::write(d.join(stale), b"x").unwrap();
        }
        prune(d, &key);
        let mut left: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        left.sort();
        let mut ours = [module.clone(), component.clone()];
        ours.sort();
        assert_eq!(left, ours);
        assert_eq!(std::fs::read(&module).unwrap(), b"module");
        // The missing directory of a fresh root is no error.
        prune(&d.join("none"), &key);
    }

    #[test]
    fn tidying_keeps_only_stored_images_code_of_this_engine() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = compute_key().unwrap();
        let kept = path(d, "sha256:kept", Path::new("/a.wasm"), &key, BinaryKind::Module, true);
        let gone = path(d, "sha256:gone", Path::new("/a.wasm"), &key, BinaryKind::Module, true);
        for p in [&kept, &gone] {
            store(b"x", p).unwrap();
        }
        tidy(d, &["sha256:kept".to_string()]);
        assert!(kept.exists() && !gone.exists(), "{:?}", std::fs::read_dir(d).unwrap().collect::<Vec<_>>());
    }

    #[test]
    fn code_is_named_by_image_and_path_and_goes_with_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let image = format!("sha256:{}", "ab".repeat(32));
        let a = path(d, &image, Path::new("/a.wasm"), "e", BinaryKind::Module, true);
        let b = path(d, &image, Path::new("/b.wasm"), "e", BinaryKind::Component, false);
        let other = path(d, "sha256:other", Path::new("/a.wasm"), "e", BinaryKind::Module, true);
        let late = path(d, &image, Path::new("/a.wasm"), "e", BinaryKind::Module, false);
        assert_ne!(a, late);
        assert!(b.to_str().unwrap().ends_with("-e.component.start.cwasm"), "{b:?}");
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with(&"ab".repeat(32)), "{a:?}");
        assert_ne!(a.file_name(), other.file_name());
        for p in [&a, &b, &other] {
            store(b"x", p).unwrap();
        }
        forget_image(d, &image);
        assert!(!a.exists() && !b.exists() && other.exists());
    }
}
