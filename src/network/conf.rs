//! Network config discovery: the first valid config in the conf dir, by file name.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::CniConfig;

/// Spec versions cricket speaks; a 1.1 `cniVersions` list is narrowed to these.
const KNOWN_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network config list as loaded (a single-plugin `.conf` wrapped into a list).
/// Persisted with the sandbox so DEL runs what ADD ran, even if the dir changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub file: PathBuf,
    pub raw: Value,
}

impl NetworkList {
    pub fn plugins(&self) -> &[Value] {
        self.raw.get("plugins").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    pub fn disable_check(&self) -> bool {
        matches!(self.raw.get("disableCheck"), Some(Value::Bool(true))) || self.raw["disableCheck"] == "true"
    }

    /// Parses one config file; `.conf`/`.json` files without `plugins` are single-plugin configs.
    pub fn parse(file: &Path, data: &[u8]) -> Result<NetworkList, String> {
        let doc: Value = serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
        if !doc.is_object() {
            return Err("not a JSON object".into());
        }
        let name = match doc.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err("no \"name\"".into()),
        };
        let cni_version = pick_version(&doc)?;
        let is_list = file.extension().is_some_and(|x| x == "conflist") || doc.get("plugins").is_some();
        let raw = if is_list {
            match doc.get("plugins") {
                Some(Value::Array(p)) if !p.is_empty() => doc.clone(),
                Some(Value::Array(_)) => return Err("\"plugins\" is empty".into()),
                _ => return Err("no \"plugins\" list".into()),
            }
        } else {
            json!({ "cniVersion": cni_version, "name": name, "plugins": [doc] })
        };
        for plugin in raw["plugins"].as_array().into_iter().flatten() {
            plugin_type(plugin)?;
        }
        Ok(NetworkList { name, cni_version, file: file.to_path_buf(), raw })
    }
}

/// `cniVersion`, or the highest known entry of a 1.1 `cniVersions` list.
fn pick_version(doc: &Value) -> Result<String, String> {
    let single = match doc.get("cniVersion") {
        None => None,
        Some(Value::String(v)) if parse_version(v).is_some() => Some(v.clone()),
        Some(v) => return Err(format!("invalid cniVersion {v}")),
    };
    let listed = doc.get("cniVersions").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
    let best = listed.filter(|v| KNOWN_VERSIONS.contains(v)).max_by_key(|v| parse_version(v));
    match (best, single) {
        (Some(b), Some(s)) if parse_version(&s) > parse_version(b) && KNOWN_VERSIONS.contains(&s.as_str()) => Ok(s),
        (Some(b), _) => Ok(b.to_string()),
        (None, Some(s)) => Ok(s),
        (None, None) => Err("no \"cniVersion\"".into()),
    }
}

/// "1.0.0" → (1, 0, 0); missing parts count as 0.
pub(super) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    parts.next().is_none().then_some((major, minor, patch))
}

pub(super) fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    parse_version(v).is_some_and(|v| v >= min)
}

pub(super) fn plugin_type(plugin: &Value) -> Result<&str, String> {
    match plugin.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => Ok(t),
        Some(t) => Err(format!("invalid plugin \"type\" {t}")),
        None => Err("a plugin has no \"type\"".into()),
    }
}

/// The plugin binary: the first bin dir holding an executable file of that name.
pub(super) fn find_plugin(bin_dirs: &[PathBuf], kind: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    bin_dirs
        .iter()
        .map(|d| d.join(kind))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

pub(super) fn bin_dirs_display(bin_dirs: &[PathBuf]) -> String {
    bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
}

/// Dir entry names, mtimes and sizes: a config change changes this.
pub(super) type Stamp = Vec<(OsString, Option<SystemTime>, u64)>;

pub(super) fn stamp(dir: &Path) -> Result<Stamp, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?;
    let mut stamp: Stamp = entries
        .filter_map(Result::ok)
        .map(|e| {
            let meta = std::fs::metadata(e.path()).ok();
            (e.file_name(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len()))
        })
        .collect();
    stamp.sort();
    Ok(stamp)
}

/// The first usable config by file name, or every file's reason for being skipped.
pub(super) fn load(cfg: &CniConfig) -> Result<NetworkList, String> {
    let dir = &cfg.conf_dir;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        match load_file(&file, &cfg.bin_dirs) {
            Ok(list) => return Ok(list),
            Err(why) => problems.push(format!("{}: {why}", file.display())),
        }
    }
    if problems.is_empty() {
        Err(format!("no network config found in {}", dir.display()))
    } else {
        Err(problems.join("; "))
    }
}

fn load_file(file: &Path, bin_dirs: &[PathBuf]) -> Result<NetworkList, String> {
    let data = std::fs::read(file).map_err(|e| e.to_string())?;
    let list = NetworkList::parse(file, &data)?;
    for plugin in list.plugins() {
        let kind = plugin_type(plugin)?;
        if find_plugin(bin_dirs, kind).is_none() {
            return Err(format!("plugin {kind:?} not found in {}", bin_dirs_display(bin_dirs)));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<NetworkList, String> {
        NetworkList::parse(Path::new(name), text.as_bytes())
    }

    #[test]
    fn conf_is_wrapped_into_a_list() {
        let l = parse("10-a.conf", r#"{"cniVersion":"0.4.0","name":"a","type":"bridge","bridge":"b0"}"#).unwrap();
        assert_eq!((l.name.as_str(), l.cni_version.as_str()), ("a", "0.4.0"));
        assert_eq!(l.plugins().len(), 1);
        assert_eq!(l.plugins()[0]["bridge"], "b0");
        assert_eq!(l.raw["cniVersion"], "0.4.0");
    }

    #[test]
    fn invalid_configs_have_reasons() {
        assert!(parse("a.conflist", "{nope").unwrap_err().contains("invalid JSON"));
        assert!(parse("a.conflist", r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#)
            .unwrap_err()
            .contains("name"));
        assert!(parse("a.conflist", r#"{"cniVersion":"1.0.0","name":"a","plugins":[]}"#)
            .unwrap_err()
            .contains("empty"));
        assert!(parse("a.conflist", r#"{"cniVersion":"1.0.0","name":"a"}"#).unwrap_err().contains("plugins"));
        assert!(parse("a.conflist", r#"{"name":"a","plugins":[{"type":"x"}]}"#).unwrap_err().contains("cniVersion"));
        let bad_type = r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"../x"}]}"#;
        assert!(parse("a.conflist", bad_type).unwrap_err().contains("type"));
        assert!(parse("a.conf", r#"{"cniVersion":"1.0.0","name":"a"}"#).unwrap_err().contains("type"));
    }

    #[test]
    fn cni_versions_picks_highest_known() {
        let l = parse(
            "a.conflist",
            r#"{"cniVersion":"0.4.0","cniVersions":["0.3.1","1.0.0","9.9.9"],"name":"a","plugins":[{"type":"x"}]}"#,
        );
        assert_eq!(l.unwrap().cni_version, "1.0.0");
        assert!(version_at_least("1.0.0", (0, 4, 0)) && !version_at_least("0.3.1", (0, 4, 0)));
        assert_eq!(parse_version("0.3"), Some((0, 3, 0)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn disable_check_accepts_bool_or_string() {
        let l =
            parse("a.conflist", r#"{"cniVersion":"1.0.0","name":"a","disableCheck":"true","plugins":[{"type":"x"}]}"#);
        assert!(l.unwrap().disable_check());
        let l = parse("a.conflist", r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"x"}]}"#);
        assert!(!l.unwrap().disable_check());
    }
}
