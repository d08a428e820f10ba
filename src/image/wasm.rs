//! CNCF Wasm OCI artifacts (TAG Runtime's "Wasm OCI Artifact layout"): a
//! manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is a WebAssembly module or component, not a tar. The layer's
//! snapshot holds the binary as [`MODULE_PATH`]; containers of the image run
//! it on a wasm handler, with their own command as its arguments (as runwasi does).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use oci_client::manifest::OciDescriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::unpack::{UnpackError, UnpackStats};

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// `application/wasm` is the spec's; runwasi's images use the bytecodealliance one, for modules too.
pub const LAYER_MEDIA_TYPES: &[&str] =
    &["application/wasm", "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"];
/// Where the binary is in the container's rootfs.
pub const MODULE_PATH: &str = "/app.wasm";
const OS_VALUES: &[&str] = &["wasip1", "wasip2"];

/// What the image record keeps of an artifact's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WasmArtifact {
    /// `wasip1` or `wasip2`.
    pub os: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("wasm artifact config is malformed: {0}")]
    Malformed(String),
    #[error("wasm artifact: {0}")]
    Unsupported(String),
}

/// What a binary's header (its first 8 bytes) says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    Module,
    Component,
}

/// `\0asm`, then a version and a layer field: 1, 0 for core modules; a
/// component has layer 1 (and a pre-release version, 0x0d today).
pub fn binary_kind(header: &[u8]) -> Option<BinaryKind> {
    match header {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Some(BinaryKind::Module),
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Some(BinaryKind::Component),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    architecture: Option<String>,
    os: Option<String>,
    layer_digests: Option<Vec<String>>,
}

/// Checks an artifact's config against its manifest's layers, before anything is fetched or stored.
pub fn check(config: &[u8], layers: &[OciDescriptor]) -> Result<WasmArtifact, ArtifactError> {
    let malformed = |m: String| ArtifactError::Malformed(m);
    let cfg: Config = serde_json::from_slice(config).map_err(|e| malformed(e.to_string()))?;
    match cfg.architecture.as_deref() {
        Some("wasm") => {}
        Some(other) => return Err(malformed(format!("architecture is {other:?}, not \"wasm\""))),
        None => return Err(malformed("no architecture".into())),
    }
    let os = cfg.os.ok_or_else(|| malformed("no os".into()))?;
    if !OS_VALUES.contains(&os.as_str()) {
        return Err(ArtifactError::Unsupported(format!("os {os:?} is not one of {OS_VALUES:?}")));
    }
    let digests: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    if let Some(listed) = &cfg.layer_digests {
        if listed.iter().map(String::as_str).ne(digests.iter().copied()) {
            return Err(malformed(format!("layerDigests {listed:?} are not the manifest's layers {digests:?}")));
        }
    }
    match layers {
        [] => Err(malformed("the manifest has no layer".into())),
        [layer] if LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()) => Ok(WasmArtifact { os }),
        [layer] => Err(ArtifactError::Unsupported(format!(
            "layer {} has media type {:?}, not one of {LAYER_MEDIA_TYPES:?}",
            layer.digest, layer.media_type
        ))),
        more => Err(ArtifactError::Unsupported(format!(
            "{} layers ({}): only artifacts of exactly one module or component can run",
            more.len(),
            digests.join(", ")
        ))),
    }
}

/// The image config containers of the artifact are built from: the binary as entrypoint, nothing Linux.
pub fn image_config(
    artifact: &WasmArtifact,
    layers: &[String],
) -> Result<oci_spec::image::ImageConfiguration, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "architecture": "wasm",
        "os": artifact.os,
        "config": {"Entrypoint": [MODULE_PATH]},
        "rootfs": {"type": "layers", "diff_ids": layers},
    }))
}

/// Writes the layer blob to `dest` (an empty directory) as the binary,
/// checking that it is WebAssembly and that its bytes match `digest`.
pub fn store_binary<R: Read>(mut reader: R, digest: &str, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let path = dest.join(MODULE_PATH.trim_start_matches('/'));
    let io_err = |source| UnpackError::Io { path: path.display().to_string(), source };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut header = Vec::with_capacity(8);
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Read(e)),
        };
        if header.len() < 8 {
            let take = (8 - header.len()).min(n);
            header.extend_from_slice(&buf[..take]);
            if header.len() == 8 && binary_kind(&header).is_none() {
                return Err(UnpackError::NotWasm(hex::encode(&header)));
            }
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err)?;
        bytes += n as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        return Err(UnpackError::DigestMismatch { expected: digest.into(), actual });
    }
    if header.len() < 8 {
        return Err(UnpackError::NotWasm(hex::encode(&header)));
    }
    Ok(UnpackStats { bytes, inodes: 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str, digest: &str) -> OciDescriptor {
        OciDescriptor { media_type: media_type.into(), digest: digest.into(), size: 8, ..Default::default() }
    }

    #[test]
    fn headers() {
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0rest"), Some(BinaryKind::Module));
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0"), Some(BinaryKind::Component));
        assert_eq!(binary_kind(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(binary_kind(b"\0asm"), None);
    }

    #[test]
    fn configs_are_checked_against_the_manifest() {
        let one = [layer("application/wasm", "sha256:aa")];
        let ok = br#"{"architecture":"wasm","os":"wasip2","layerDigests":["sha256:aa"],"component":{}}"#;
        assert_eq!(check(ok, &one).unwrap(), WasmArtifact { os: "wasip2".into() });
        let runwasi = [layer(LAYER_MEDIA_TYPES[1], "sha256:aa")];
        assert!(check(br#"{"architecture":"wasm","os":"wasip1"}"#, &runwasi).is_ok());
        for (config, layers, needle) in [
            (&br#"{"architecture":"amd64","os":"wasip1"}"#[..], &one[..], "architecture"),
            (br#"{"architecture":"wasm"}"#, &one, "no os"),
            (br#"{"architecture":"wasm","os":"linux"}"#, &one, "os \"linux\""),
            (br#"{"architecture":"wasm","os":"wasip1","layerDigests":["sha256:bb"]}"#, &one, "layerDigests"),
            (br#"[1]"#, &one, "malformed"),
            (br#"{"architecture":"wasm","os":"wasip1"}"#, &[], "no layer"),
            (
                br#"{"architecture":"wasm","os":"wasip1"}"#,
                &[layer("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:aa")],
                "media type",
            ),
            (
                br#"{"architecture":"wasm","os":"wasip1"}"#,
                &[layer("application/wasm", "sha256:aa"), layer("application/wasm", "sha256:bb")],
                "2 layers",
            ),
        ] {
            let err = check(config, layers).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn binaries_are_stored_checked() {
        let module = b"\0asm\x01\0\0\0";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(module)));
        let dir = tempfile::tempdir().unwrap();
        let stats = store_binary(&module[..], &digest, dir.path()).unwrap();
        assert_eq!((stats.bytes, stats.inodes), (8, 1));
        assert_eq!(std::fs::read(dir.path().join("app.wasm")).unwrap(), module);

        let tar = b"ustar\0\0\0\0\0\0\0";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(tar)));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(store_binary(&tar[..], &digest, dir.path()), Err(UnpackError::NotWasm(_))));
        let dir = tempfile::tempdir().unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(store_binary(&module[..], &wrong, dir.path()), Err(UnpackError::DigestMismatch { .. })));
    }
}
