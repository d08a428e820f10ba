//! How the container ended: its wait status, the cgroup's OOM kills, and the
//! exit record the daemon reads.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::config::ExitRecord;

/// Sum of the `oom_kill` counters in `cgroup_dirs`: `memory.events` (v2) or
/// `memory.oom_control` (v1, only in the memory hierarchy's dir).
pub fn oom_kills(cgroup_dirs: &[PathBuf]) -> u64 {
    cgroup_dirs
        .iter()
        .filter_map(|dir| {
            counter(&dir.join("memory.events"), "oom_kill")
                .or_else(|| counter(&dir.join("memory.oom_control"), "oom_kill"))
        })
        .sum()
}

fn counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    parse_counter(&text, key)
}

fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

pub struct Outcome {
    pub status: WaitStatus,
    pub finished_at: i64,
    /// Whether `start` released the workload.
    pub started: bool,
    /// Why `start` failed, when it did.
    pub start_error: Option<String>,
    pub oom_before: u64,
    pub oom_after: u64,
}

impl Outcome {
    pub fn record(&self) -> ExitRecord {
        let (exit_code, signal) = match self.status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let error = match (&self.start_error, self.started) {
            (Some(e), _) => Some(e.clone()),
            (None, true) => None,
            (None, false) => Some(match signal {
                Some(s) => format!("container init was killed by signal {s} before it was started"),
                None => format!("container init exited with code {exit_code} before it was started"),
            }),
        };
        ExitRecord {
            exit_code,
            signal,
            finished_at: self.finished_at,
            oom_killed: signal == Some(Signal::SIGKILL as i32) && self.oom_after > self.oom_before,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    fn outcome(status: WaitStatus, started: bool) -> Outcome {
        Outcome { status, finished_at: 5, started, start_error: None, oom_before: 1, oom_after: 1 }
    }

    #[test]
    fn counters_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_counter(v1, "oom_kill"), Some(3));
        assert_eq!(parse_counter(v2, "oom_kill"), Some(2));
        assert_eq!(parse_counter("oom 1\n", "oom_kill"), None);
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("memory"), dir.path().join("unified"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("memory.oom_control"), v1).unwrap();
        fs::write(b.join("memory.events"), v2).unwrap();
        assert_eq!(oom_kills(&[a, b, dir.path().join("cpu")]), 5);
    }

    #[test]
    fn records() {
        let pid = Pid::from_raw(9);
        let r = outcome(WaitStatus::Exited(pid, 3), true).record();
        assert_eq!((r.exit_code, r.signal, r.oom_killed, r.error), (3, None, false, None));
        let mut o = outcome(WaitStatus::Signaled(pid, Signal::SIGKILL, false), true);
        o.oom_after = 2;
        let r = o.record();
        assert_eq!((r.exit_code, r.signal, r.oom_killed), (137, Some(9), true));
        let r = outcome(WaitStatus::Signaled(pid, Signal::SIGKILL, false), false).record();
        assert!(r.error.unwrap().contains("killed by signal 9 before it was started"));
        let mut o = outcome(WaitStatus::Exited(pid, 1), true);
        o.start_error = Some("exec: not found".into());
        assert_eq!(o.record().error.as_deref(), Some("exec: not found"));
    }
}
