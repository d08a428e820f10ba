//! Pod networking through CNI.

use std::path::{Path, PathBuf};

use crate::config::CniConfig;

/// The network config cricket would use, or why there is none usable.
pub fn find_network(cni: &CniConfig) -> Result<(PathBuf, String), String> {
    let dir = &cni.conf_dir;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CNI config dir {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist" || x == "conf" || x == "json"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        match check_file(&file, &cni.bin_dirs) {
            Ok(name) => return Ok((file, name)),
            Err(why) => problems.push(format!("{}: {why}", file.display())),
        }
    }
    if problems.is_empty() {
        Err(format!("no network config found in {}", dir.display()))
    } else {
        Err(problems.join("; "))
    }
}

fn check_file(file: &Path, bin_dirs: &[PathBuf]) -> Result<String, String> {
    let data = std::fs::read(file).map_err(|e| e.to_string())?;
    let doc: serde_json::Value = serde_json::from_slice(&data).map_err(|e| format!("not JSON: {e}"))?;
    let name = doc.get("name").and_then(|v| v.as_str()).ok_or("no \"name\"")?.to_string();
    let plugins: Vec<&serde_json::Value> = match doc.get("plugins").and_then(|v| v.as_array()) {
        Some(list) => list.iter().collect(),
        None => vec![&doc],
    };
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    for plugin in plugins {
        let kind = plugin.get("type").and_then(|v| v.as_str()).ok_or("a plugin has no \"type\"")?;
        if kind.contains('/') || !bin_dirs.iter().any(|d| d.join(kind).is_file()) {
            return Err(format!("plugin {kind:?} not found in {bin_dirs:?}"));
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_usable_config() {
        let d = std::env::temp_dir().join(format!("cricket-cni-{}", rand::random::<u64>()));
        let (conf, bin) = (d.join("net.d"), d.join("bin"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let cni = CniConfig { conf_dir: conf.clone(), bin_dirs: vec![bin.clone()] };
        assert!(find_network(&cni).unwrap_err().contains("no network config"));
        std::fs::write(conf.join("10-a.conflist"), r#"{"name":"a","plugins":[{"type":"bridge"}]}"#).unwrap();
        assert!(find_network(&cni).unwrap_err().contains("bridge"));
        std::fs::write(bin.join("bridge"), "").unwrap();
        assert_eq!(find_network(&cni).unwrap().1, "a");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
