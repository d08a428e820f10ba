//! Whether a container's entrypoint is a WebAssembly module. Decided per
//! container from the file in its mounted rootfs, so ELF binaries and
//! scripts in a pod of a wasm handler still run as Linux processes.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::rootpath::resolve_in_root;

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Text modules larger than this are not parsed to decide.
const MAX_WAT: u64 = 64 << 20;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The spec's entrypoint is a binary module or component (`\0asm`) or a `.wat` file that parses.
#[cfg(test)]
pub fn entrypoint_is_module(root: &Path, spec: &Spec) -> bool {
    match sniff_entrypoint(root, spec) {
        Sniffed::Module(_) => true,
        Sniffed::NotModule => false,
        Sniffed::Text(path) => parses_as_wat(&path),
    }
}

/// What the entrypoint's first bytes tell.
pub enum Sniffed {
    /// A binary module or component, at this path.
    Module(PathBuf),
    NotModule,
    /// A `.wat` file: a module or component only if it parses.
    Text(PathBuf),
}

/// Opens the entrypoint and reads its magic; cheap, unlike parsing text.
pub fn sniff_entrypoint(root: &Path, spec: &Spec) -> Sniffed {
    let Some(path) = entrypoint(root, spec) else { return Sniffed::NotModule };
    let Ok(mut file) = std::fs::File::open(&path) else { return Sniffed::NotModule };
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && &magic == WASM_MAGIC {
        return Sniffed::Module(path);
    }
    if path.extension().is_none_or(|e| e != "wat") || file.metadata().map_or(true, |m| m.len() > MAX_WAT) {
        return Sniffed::NotModule;
    }
    Sniffed::Text(path)
}

pub fn parses_as_wat(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| wat::parse_str(text).is_ok())
}

/// `process.args[0]` split as runwasi and crun read it: `path#func` names the
/// core module's export to call instead of `_start`.
pub fn split_entry(arg0: &str) -> (&str, Option<&str>) {
    match arg0.split_once('#') {
        Some((path, func)) if !func.is_empty() => (path, Some(func)),
        Some((path, _)) => (path, None),
        None => (arg0, None),
    }
}

/// The export `process.args[0]` names after a `#`, if any.
pub fn entry_func(spec: &Spec) -> Option<&str> {
    let arg0 = spec.process().as_ref()?.args().as_ref()?.first()?;
    split_entry(arg0).1
}

/// The host path of `process.args[0]` (without `#func`) as the exec would
/// find it: relative to the cwd when it has a slash, else through the container's PATH.
pub fn entrypoint(root: &Path, spec: &Spec) -> Option<PathBuf> {
    let process = spec.process().as_ref()?;
    let (name, _) = split_entry(process.args().as_ref()?.first()?);
    if name.contains('/') {
        return resolve_in_root(root, &process.cwd().join(name)).ok();
    }
    let env = process.env().clone().unwrap_or_default();
    let path = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    path.split(':').filter_map(|dir| resolve_in_root(root, &Path::new(dir).join(name)).ok()).find(|p| p.is_file())
}

/// Whether instantiating the binary `wasm` runs any of its code: a start
/// function in the module, or in a component or any module nested in it.
/// What doesn't parse counts as running code.
pub fn runs_code_when_instantiated(mut wasm: &[u8]) -> bool {
    use wasmparser::{Chunk, Parser, Payload};
    let mut parser = Parser::new(0);
    // The parsers of the enclosing components while a nested one is read.
    let mut outer = Vec::new();
    loop {
        let payload = match parser.parse(wasm, true) {
            Ok(Chunk::Parsed { consumed, payload }) => {
                wasm = &wasm[consumed..];
                payload
            }
            Ok(Chunk::NeedMoreData(_)) | Err(_) => return true,
        };
        match payload {
            Payload::StartSection { .. } | Payload::ComponentStartSection { .. } => return true,
            Payload::CodeSectionStart { size, .. } => {
                parser.skip_section();
                match wasm.get(size as usize..) {
                    Some(rest) => wasm = rest,
                    None => return true,
                }
            }
            Payload::ModuleSection { parser: nested, .. } | Payload::ComponentSection { parser: nested, .. } => {
                outer.push(std::mem::replace(&mut parser, nested));
            }
            Payload::End(_) => match outer.pop() {
                Some(p) => parser = p,
                None => return false,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{ProcessBuilder, SpecBuilder};

    fn spec(args: &[&str], env: &[&str]) -> Spec {
        let process = ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .cwd("/work")
            .build()
            .unwrap();
        SpecBuilder::default().process(process).build().unwrap()
    }

    #[test]
    fn decides_by_content_not_name() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("work")).unwrap();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("app.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
        std::fs::write(r.join("work/app.wat"), "(module (memory 1))").unwrap();
        std::fs::write(r.join("broken.wat"), "(module (oops))").unwrap();
        std::fs::write(r.join("bin/tool"), b"\x7fELF\x02\x01\x01").unwrap();
        std::fs::write(r.join("bin/mod"), wat::parse_str("(module)").unwrap()).unwrap();
        std::os::unix::fs::symlink("/app.wasm", r.join("link")).unwrap();

        assert!(entrypoint_is_module(r, &spec(&["/app.wasm", "x"], &[])));
        assert!(entrypoint_is_module(r, &spec(&["./app.wat"], &[])));
        assert!(entrypoint_is_module(r, &spec(&["/link"], &[])));
        assert!(entrypoint_is_module(r, &spec(&["mod"], &["PATH=/nowhere:/bin"])));
        assert!(!entrypoint_is_module(r, &spec(&["/broken.wat"], &[])));
        assert!(!entrypoint_is_module(r, &spec(&["tool"], &["PATH=/bin"])));
        assert!(!entrypoint_is_module(r, &spec(&["/missing"], &[])));
        assert!(entrypoint_is_module(r, &spec(&["/app.wasm#main", "x"], &[])));
        assert_eq!(entry_func(&spec(&["/app.wasm#main"], &[])), Some("main"));
        assert_eq!(entry_func(&spec(&["/app.wasm#"], &[])), None);
        assert_eq!(entry_func(&spec(&["/app.wasm"], &[])), None);
        std::fs::write(r.join("cli.wat"), "(component)").unwrap();
        assert!(entrypoint_is_module(r, &spec(&["/cli.wat"], &[])));
    }

    #[test]
    fn start_functions_are_found_at_any_depth() {
        let runs = |text: &str| runs_code_when_instantiated(&wat::parse_str(text).unwrap());
        assert!(!runs("(module (memory 1) (data (i32.const 0) \"hi\") (func (export \"_start\")))"));
        assert!(runs("(module (func $f) (start $f))"));
        // The code section is skipped, not misread.
        assert!(runs("(module (func $f (drop (i32.const 1))) (func (export \"g\")) (start $f))"));
        assert!(!runs("(component (core module (func (export \"f\"))))"));
        assert!(runs("(component (core module (func $f) (start $f)))"));
        assert!(runs("(component (component (core module (func $f) (start $f))))"));
        assert!(!runs("(component (component (core module)) (core module (func)))"));
        assert!(runs_code_when_instantiated(b"\0asm\x01\0\0\0\x0a\xff"));
        assert!(runs_code_when_instantiated(b"not wasm"));
    }
}
