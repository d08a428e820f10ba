//! What each runtime handler supports, in the terms of CRI's
//! `RuntimeHandlerFeatures`: learned once at start, from the built-in
//! executor's own abilities or an OCI runtime's `features` subcommand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, HandlerKind};

/// How long `<runtime> features` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// Honours the `rro` mount option (mount_setattr with AT_RECURSIVE).
    pub recursive_read_only_mounts: bool,
    /// Runs pods in user namespaces; no handler of cricket does yet.
    pub user_namespaces: bool,
}

/// Features by handler name (as configured: `default` for CRI's `""`).
pub type HandlerFeatures = BTreeMap<String, Features>;

/// Asks every OCI runtime what it supports; the built-in executor (and the
/// Linux containers of wasm pods) makes recursive read-only mounts itself.
pub async fn probe(config: &Config) -> HandlerFeatures {
    let mut all = HandlerFeatures::new();
    for (name, handler) in &config.runtimes {
        let features = match (handler.kind, &handler.path) {
            (HandlerKind::Oci, Some(path)) => match oci_mount_options(path).await {
                Ok(options) => {
                    Features { recursive_read_only_mounts: options.iter().any(|o| o == "rro"), ..Default::default() }
                }
                Err(reason) => {
                    tracing::warn!(handler = %name, runtime = %path.display(), %reason, "cannot learn the runtime's features; assuming none");
                    Features::default()
                }
            },
            (HandlerKind::Oci, None) => Features::default(),
            (HandlerKind::Linux | HandlerKind::Wasm, _) => {
                Features { recursive_read_only_mounts: true, ..Default::default() }
            }
        };
        tracing::info!(handler = %name, recursive_read_only_mounts = features.recursive_read_only_mounts, "runtime handler features");
        all.insert(name.clone(), features);
    }
    all
}

/// The `mountOptions` of `<runtime> features` (runc 1.1+; older runtimes and
/// crun before 1.8.6 don't have the subcommand).
async fn oci_mount_options(path: &Path) -> Result<Vec<String>, String> {
    let run = tokio::process::Command::new(path)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| format!("`features` did not answer within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run it: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`features` failed ({}): {}", out.status, stderr.trim()));
    }
    parse_mount_options(&out.stdout)
}

fn parse_mount_options(json: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Report {
        #[serde(default)]
        mount_options: Vec<String>,
    }
    serde_json::from_slice::<Report>(json)
        .map(|r| r.mount_options)
        .map_err(|e| format!("`features` printed no features document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuntimeHandler;

    #[test]
    fn mount_options_from_a_features_document() {
        let doc = br#"{"ociVersionMin":"1.0.0","mountOptions":["bind","ro","rro"],"linux":{}}"#;
        assert_eq!(parse_mount_options(doc).unwrap(), ["bind", "ro", "rro"]);
        assert_eq!(parse_mount_options(b"{}").unwrap(), Vec::<String>::new());
        assert!(parse_mount_options(b"unknown command features").is_err());
    }

    #[tokio::test]
    async fn probing_handlers() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            RuntimeHandler { path: Some(path), ..RuntimeHandler::new(HandlerKind::Oci) }
        };
        let mut config = Config::default();
        config.runtimes.insert("new".into(), script("new", r#"echo '{"mountOptions":["rbind","rro"]}'"#));
        config.runtimes.insert("old".into(), script("old", "echo 'unknown command features' >&2; exit 1"));
        config.runtimes.insert("plain".into(), script("plain", r#"echo '{"mountOptions":["rbind","ro"]}'"#));
        config.runtimes.insert("wasm".into(), RuntimeHandler::new(HandlerKind::Wasm));
        let features = probe(&config).await;
        let rro = |name: &str| features[name].recursive_read_only_mounts;
        assert!(rro("default") && rro("wasm") && rro("new"));
        assert!(!rro("old") && !rro("plain"));
        assert!(features.values().all(|f| !f.user_namespaces));
    }
}
