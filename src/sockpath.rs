//! Unix socket paths longer than `sun_path` (108 bytes) — deep run dirs with
//! 64-hex container IDs get there — reached through the parent directory's
//! `/proc/self/fd` entry, which is always short.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Longest path bind/connect take (sun_path minus its terminating NUL).
const MAX: usize = 107;

pub struct SocketPath {
    /// Held open while the short path is in use.
    _dir: Option<File>,
    path: PathBuf,
}

impl SocketPath {
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= MAX {
            return Ok(SocketPath { _dir: None, path: path.to_path_buf() });
        }
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d, n),
            _ => return Err(io::Error::other(format!("{}: not a socket path", path.display()))),
        };
        let dir = File::open(dir)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(SocketPath { _dir: Some(dir), path: short })
    }

    pub fn as_path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_bind_and_connect() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("ctl.sock");
        assert!(path.as_os_str().len() > MAX);
        let bind = SocketPath::new(&path).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(bind.as_path()).unwrap();
        assert!(path.exists());
        let connect = SocketPath::new(&path).unwrap();
        std::os::unix::net::UnixStream::connect(connect.as_path()).unwrap();
        listener.accept().unwrap();
        let short = SocketPath::new(Path::new("/run/x.sock")).unwrap();
        assert_eq!(short.as_path(), Path::new("/run/x.sock"));
    }
}
