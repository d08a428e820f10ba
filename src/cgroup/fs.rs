//! Reading and writing cgroup files, walking and removing cgroup trees, signalling members.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::CgroupError;

/// Writes `value` to an existing control file in one write(2); never creates files.
pub(super) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    #[cfg(test)]
    let before = std::fs::read_to_string(&path).ok();
    let result = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    #[cfg(test)]
    if result.is_ok() {
        tests_support::wrote(&path, value, before);
    }
    result.map_err(|source| match source.kind() {
        ErrorKind::NotFound if !dir.is_dir() => CgroupError::NotFound { path: dir.to_path_buf() },
        _ => CgroupError::Write { path, value: value.into(), source },
    })
}

pub(super) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| match source.kind() {
        ErrorKind::NotFound if !dir.is_dir() => CgroupError::NotFound { path: dir.to_path_buf() },
        _ => CgroupError::Read { path, source },
    })
}

/// A file's contents, or None when it does not exist (controller absent or not enabled).
pub(super) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    match read(dir, file) {
        Ok(s) => Ok(Some(s)),
        Err(CgroupError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A single-number file; a missing file reads as 0.
pub(super) fn read_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    Ok(read_opt(dir, file)?.and_then(|s| s.trim().parse().ok()).unwrap_or(0))
}

/// The value of `key` in a "key value" file (memory.stat, cpu.stat, memory.events); 0 when absent.
pub(super) fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

pub(super) fn ensure_dir(dir: &Path) -> Result<(), CgroupError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(CgroupError::NotFound { path: dir.to_path_buf() })
    }
}

/// Creates root/rel and its missing ancestors, calling `each` on every level below
/// root, top-down (existing ones too); true when the last level was created here.
pub(super) fn mkdir_p(
    root: &Path,
    rel: &Path,
    mut each: impl FnMut(&Path) -> Result<(), CgroupError>,
) -> Result<bool, CgroupError> {
    ensure_dir(root)?;
    let mut dir = root.to_path_buf();
    let mut created = false;
    for part in rel.components() {
        dir.push(part);
        created = match std::fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        };
        #[cfg(test)]
        if created {
            tests_support::created(&dir);
        }
        each(&dir)?;
    }
    Ok(created)
}

pub(super) fn procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read(dir, "cgroup.procs")?.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Sub-cgroups of `dir`, deepest first, `dir` itself last.
pub(super) fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

pub(super) fn procs_recursive(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    ensure_dir(dir)?;
    let mut all = Vec::new();
    for d in tree(dir) {
        match procs(&d) {
            Ok(p) => all.extend(p),
            Err(CgroupError::NotFound { .. }) => {} // removed meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// Signals every process in `dir` and below; processes already gone are fine.
pub(super) fn signal_all(dir: &Path, signal: Signal) -> Result<(), CgroupError> {
    for pid in procs_recursive(dir)? {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(source) => return Err(CgroupError::Signal { path: dir.to_path_buf(), pid, signal, source }),
        }
    }
    Ok(())
}

/// Polls `done` up to about a second; false on timeout.
pub(super) fn wait_until(mut done: impl FnMut() -> Result<bool, CgroupError>) -> Result<bool, CgroupError> {
    for i in 0..100u64 {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(1 + i.min(19)));
    }
    Ok(false)
}

/// Removes `dir` and its sub-cgroups, deepest first. rmdir fails with EBUSY
/// while exiting processes are still charged, so that is retried for a few seconds.
pub(super) async fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for d in tree(dir) {
        let mut delay = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            #[cfg(test)]
            tests_support::depopulate(&d);
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && waited < Duration::from_secs(5) => {
                    tokio::time::sleep(delay).await;
                    waited += delay;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(source) => return Err(CgroupError::Remove { path: d, source }),
            }
        }
    }
    Ok(())
}

/// For temp-dir tests: an emulator on the test's thread sees each new
/// directory and each write, to do what the kernel would (add control files,
/// keep cgroup.subtree_control a set); rmdir ignores regular files; writes are logged.
#[cfg(test)]
pub(super) mod tests_support {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    pub enum Event<'a> {
        Mkdir(&'a Path),
        Write { path: &'a Path, value: &'a str, before: Option<String> },
    }

    type Emulator = Box<dyn Fn(Event)>;

    thread_local! {
        static KERNEL: RefCell<Option<Emulator>> = const { RefCell::new(None) };
        static WRITES: RefCell<Vec<(PathBuf, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn emulate(f: impl Fn(Event) + 'static) {
        KERNEL.with(|k| *k.borrow_mut() = Some(Box::new(f)));
    }

    fn emit(e: Event) {
        KERNEL.with(|k| {
            if let Some(f) = &*k.borrow() {
                f(e)
            }
        });
    }

    pub fn created(dir: &Path) {
        emit(Event::Mkdir(dir));
    }

    pub fn wrote(path: &Path, value: &str, before: Option<String>) {
        WRITES.with(|w| w.borrow_mut().push((path.to_path_buf(), value.to_string())));
        emit(Event::Write { path, value, before });
    }

    pub fn depopulate(dir: &Path) {
        if KERNEL.with(|k| k.borrow().is_none()) {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The writes made on this thread since the last call: (path, value).
    pub fn take_writes() -> Vec<(PathBuf, String)> {
        WRITES.with(|w| std::mem::take(&mut *w.borrow_mut()))
    }
}
