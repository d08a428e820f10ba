//! What the daemon tells a monitor, as `monitor.json` in the container's run dir.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorConfig {
    pub id: String,
    /// OCI bundle: `config.json`, whose `root.path` is the mounted rootfs.
    pub bundle: PathBuf,
    /// CRI log file; `None` discards output.
    pub log_path: Option<PathBuf>,
    /// Written atomically (JSON `ExitRecord`) when the init exits.
    pub exit_file: PathBuf,
    /// Unix socket serving control requests (`start`, `reopen`).
    pub control_socket: PathBuf,
    /// cgroup directories the init joins before it waits (v1: one per
    /// hierarchy); empty when the daemon places it (systemd scopes).
    pub cgroup_dirs: Vec<PathBuf>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// How the container ended, as the monitor saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// Exit status, or 128 + signal when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// The cgroup's OOM-kill count rose while the container ran and it died of SIGKILL.
    pub oom_killed: bool,
    /// Set when the workload never ran (exec failed at start, or killed before start).
    pub error: Option<String>,
}
