//! Crash-safe persistence helpers: every state file is written to a
//! temporary sibling, fsynced and renamed, so readers see old or new, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// Like `write_atomic` without the fsyncs: old or new survives a daemon
/// crash, not a power loss. For records of processes a reboot ends anyway
/// (containers, their specs), where an fsync would cost milliseconds per call.
pub fn write_volatile(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

fn replace(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a JSON state file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a file or a whole tree; missing is fine.
pub fn remove_path(p: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Nanoseconds since the Unix epoch, the unit CRI timestamps use.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("cricket-state-{}", rand::random::<u64>()));
        let path = dir.join("a.json");
        write_atomic(&path, b"[1,2,3]").unwrap();
        write_volatile(&path, b"[4]").unwrap();
        let back: Option<Vec<i32>> = read_json(&path).unwrap();
        assert_eq!(back, Some(vec![4]));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert!(read_json::<Vec<i32>>(&dir.join("missing")).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
