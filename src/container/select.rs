//! Which runtime creates a container: the pod's handler, whether the image
//! is a Wasm OCI artifact, the crun wasm annotations the handler allows, and
//! the entrypoint itself.

use std::collections::HashMap;

use super::*;
use crate::config::{HandlerKind, RuntimeHandler};
use crate::image::store::ImageRecord;
use crate::monitor::config::RuntimeKind;

pub const RUN_OCI_HANDLER: &str = "run.oci.handler";
pub const WASM_VARIANT: &str = "module.wasm.image/variant";

/// What the annotations say about running the entrypoint as WebAssembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmChoice {
    Always,
    /// Only an entrypoint named `*.wasm` or `*.wat` (crun's `-smart` values).
    BySuffix,
    Never,
}

/// crun's rules (src/libcrun/handlers/handler-utils.c): `run.oci.handler`
/// (`wasm`, `wasm-smart`, anything else is another handler) decides before
/// `module.wasm.image/variant` (`compat`, `compat-smart`, anything else is
/// not wasm). `None` when neither is set and allowed: the handler's default applies.
pub fn annotated(annotations: &HashMap<String, String>, handler: &RuntimeHandler) -> Option<WasmChoice> {
    let get = |key| annotations.get(key).filter(|_| handler.allows(key)).map(String::as_str);
    match (get(RUN_OCI_HANDLER), get(WASM_VARIANT)) {
        (Some("wasm"), _) | (None, Some("compat")) => Some(WasmChoice::Always),
        (Some("wasm-smart"), _) | (None, Some("compat-smart")) => Some(WasmChoice::BySuffix),
        (Some(_), _) | (None, Some(_)) => Some(WasmChoice::Never),
        (None, None) => None,
    }
}

/// Whether `process.args[0]` (without a `#func`) is named like a module.
fn wasm_named(spec: &oci_spec::runtime::Spec) -> bool {
    let arg0 = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first());
    let path = arg0.map_or("", |a| a.split_once('#').map_or(a.as_str(), |(p, _)| p));
    path.ends_with(".wasm") || path.ends_with(".wat")
}

/// A pod's handler name as configured: "" is `default`.
pub(super) fn handler_name(name: &str) -> &str {
    if name.is_empty() {
        "default"
    } else {
        name
    }
}

#[cfg(feature = "wasm")]
use crate::wasm::detect::entrypoint;

/// Without WebAssembly support no program is looked for.
#[cfg(not(feature = "wasm"))]
fn entrypoint(_root: &std::path::Path, _spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    None
}

/// How a container is created.
pub(super) struct Chosen {
    pub kind: RuntimeKind,
    /// The WebAssembly program's path in the rootfs, when there is one.
    pub program: Option<PathBuf>,
}

impl Containers {
    /// How the pod's handler creates this container: `spec` is built, its rootfs mounted.
    pub(super) async fn runtime_kind(
        &self,
        handler: &str,
        record: &ImageRecord,
        spec: &oci_spec::runtime::Spec,
        rootfs: &std::path::Path,
    ) -> Result<Chosen, ContainerError> {
        let (name, h) = (handler_name(handler), self.handler(handler)?);
        if h.kind == HandlerKind::Oci {
            let path = h.path.clone().ok_or_else(|| ContainerError::Create(format!("handler {name:?} has no path")))?;
            let kind = RuntimeKind::Oci { path, root: self.config.run.join("runtimes").join(name) };
            return Ok(Chosen { kind, program: None });
        }
        if record.wasm.is_some() {
            let module = PathBuf::from(crate::image::wasm::MODULE_PATH);
            let kind = self.wasm_kind(record, Some(module.clone())).await?;
            return Ok(Chosen { kind, program: Some(module) });
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        let default = if h.kind == HandlerKind::Wasm { None } else { Some(WasmChoice::Never) };
        let found = |root: &std::path::Path| entrypoint(root, spec);
        let program = match annotated(&annotations, h).or(default) {
            Some(WasmChoice::Always) => Some(found(rootfs)),
            Some(WasmChoice::BySuffix) => wasm_named(spec).then(|| found(rootfs)),
            Some(WasmChoice::Never) => None,
            None => self.entrypoint_module(spec, rootfs).await?.map(Some),
        };
        match program {
            Some(program) => {
                let kind = self.wasm_kind(record, None).await?;
                let program = program.and_then(|p| p.strip_prefix(rootfs).ok().map(|p| Path::new("/").join(p)));
                Ok(Chosen { kind, program })
            }
            None => Ok(Chosen { kind: RuntimeKind::Linux, program: None }),
        }
    }

    #[cfg(feature = "wasm")]
    async fn wasm_kind(&self, record: &ImageRecord, module: Option<PathBuf>) -> Result<RuntimeKind, ContainerError> {
        use crate::wasm::cache;
        let cache = self.config.root.join("wasm-cache");
        let engine = match cache::known_key() {
            Some(key) => key,
            None => {
                let dir = cache.clone();
                tokio::task::spawn_blocking(move || cache::engine_key(&dir))
                    .await
                    .map_err(|e| ContainerError::Create(e.to_string()))?
                    .map_err(ContainerError::Create)?
            }
        };
        Ok(RuntimeKind::Wasm { cache, engine: engine.to_string(), image: record.id.clone(), module })
    }

    #[cfg(not(feature = "wasm"))]
    async fn wasm_kind(&self, _record: &ImageRecord, _module: Option<PathBuf>) -> Result<RuntimeKind, ContainerError> {
        Err(ContainerError::Create("this cricket binary is built without WebAssembly support".into()))
    }

    /// A wasm handler's own choice, by the entrypoint's content: its path when it is a program.
    #[cfg(feature = "wasm")]
    async fn entrypoint_module(
        &self,
        spec: &oci_spec::runtime::Spec,
        rootfs: &std::path::Path,
    ) -> Result<Option<PathBuf>, ContainerError> {
        use crate::wasm::detect::{parses_as_wat, sniff_entrypoint, Sniffed};
        // A few lookups and a 4-byte read in a rootfs just mounted, done here;
        // parsing text is work for the blocking pool.
        match sniff_entrypoint(rootfs, spec) {
            Sniffed::Module(path) => Ok(Some(path)),
            Sniffed::NotModule => Ok(None),
            Sniffed::Text(path) => tokio::task::spawn_blocking(move || parses_as_wat(&path).then_some(path))
                .await
                .map_err(|e| ContainerError::Create(e.to_string())),
        }
    }

    #[cfg(not(feature = "wasm"))]
    async fn entrypoint_module(
        &self,
        _spec: &oci_spec::runtime::Spec,
        _rootfs: &std::path::Path,
    ) -> Result<Option<PathBuf>, ContainerError> {
        Err(ContainerError::Create("this cricket binary is built without WebAssembly support".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(allowed: &[&str]) -> RuntimeHandler {
        let allowed_annotations = allowed.iter().map(|a| a.to_string()).collect();
        RuntimeHandler { allowed_annotations, ..RuntimeHandler::new(HandlerKind::Wasm) }
    }

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn crun_annotation_rules() {
        let all = handler(&["run.oci.", WASM_VARIANT]);
        for (pairs, want) in [
            (&[(RUN_OCI_HANDLER, "wasm")][..], Some(WasmChoice::Always)),
            (&[(RUN_OCI_HANDLER, "wasm-smart")], Some(WasmChoice::BySuffix)),
            (&[(RUN_OCI_HANDLER, "krun"), (WASM_VARIANT, "compat")], Some(WasmChoice::Never)),
            (&[(RUN_OCI_HANDLER, "wasm"), (WASM_VARIANT, "oci")], Some(WasmChoice::Always)),
            (&[(WASM_VARIANT, "compat")], Some(WasmChoice::Always)),
            (&[(WASM_VARIANT, "compat-smart")], Some(WasmChoice::BySuffix)),
            (&[(WASM_VARIANT, "oci")], Some(WasmChoice::Never)),
            (&[("team", "db")], None),
        ] {
            assert_eq!(annotated(&ann(pairs), &all), want, "{pairs:?}");
        }
        let wasm = ann(&[(RUN_OCI_HANDLER, "wasm"), (WASM_VARIANT, "compat-smart")]);
        assert_eq!(annotated(&wasm, &handler(&[])), None, "nothing allowed: no annotation acts");
        assert_eq!(annotated(&wasm, &handler(&[WASM_VARIANT])), Some(WasmChoice::BySuffix));
        assert_eq!(annotated(&wasm, &handler(&["run.oci.handler"])), Some(WasmChoice::Always));
    }

    #[test]
    fn smart_values_go_by_name() {
        let spec = |arg0: &str| {
            let process = oci_spec::runtime::ProcessBuilder::default().args(vec![arg0.to_string()]).build().unwrap();
            oci_spec::runtime::SpecBuilder::default().process(process).build().unwrap()
        };
        assert!(wasm_named(&spec("/app.wasm")) && wasm_named(&spec("x.wat")) && wasm_named(&spec("/a.wasm#run")));
        assert!(!wasm_named(&spec("/bin/sh")) && !wasm_named(&spec("/app.wasm.sh")));
    }
}
