//! What the daemon tells a monitor, as `monitor.json` in the container's run
//! dir, and what the monitor answers: the handshake line and the exit record.

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
    /// Unix socket serving control requests (`start`, `reopen`). Its
    /// directory is the monitor's own: `monitor.log` and runtime files go there.
    pub control_socket: PathBuf,
    /// cgroup directories the init joins before it waits (v1: one per
    /// hierarchy); empty when the daemon places it (systemd scopes). The
    /// monitor reads the OOM-kill counter from them. OCI runtimes place the
    /// init by the spec's `cgroupsPath`; these dirs should name the same cgroup.
    pub cgroup_dirs: Vec<PathBuf>,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// Which runtime creates the init; the built-in executor when absent.
    #[serde(default)]
    pub runtime: RuntimeKind,
}

/// The runtime handler that creates the container's init.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RuntimeKind {
    /// cricket's built-in executor (`runtime::linux`).
    #[default]
    Linux,
    /// An OCI runtime binary following the runc command line (runc, crun).
    Oci {
        path: PathBuf,
        /// The runtime's state directory (`--root`).
        root: PathBuf,
    },
    /// The built-in executor whose init runs `process.args[0]` (or `module`)
    /// as a WebAssembly module or component in place of an execve.
    Wasm {
        /// Compiled code by digest of the program file (host side, root's; see `wasm::cache`).
        cache: PathBuf,
        /// The daemon's engine key, naming the compiled code it loads.
        #[serde(default)]
        engine: String,
        /// The container's image ID, naming the compiled code of its programs.
        #[serde(default)]
        image: String,
        /// The binary's path in the rootfs when it isn't `process.args[0]`
        /// (a Wasm OCI artifact's, whatever the command says).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        module: Option<PathBuf>,
    },
}

/// The one line the monitor writes to its stdout once the init exists (or
/// creating it failed); the daemon reads it and waits for the monitor's parent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Handshake {
    Created {
        /// The container init's host PID.
        pid: i32,
        /// The monitor's own PID (it has detached from the process the daemon spawned).
        monitor_pid: i32,
    },
    Failed {
        error: String,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_defaults_to_linux_and_oci_round_trips() {
        let base = r#"{"id":"c","bundle":"/b","log_path":null,"exit_file":"/e","control_socket":"/s",
            "cgroup_dirs":[],"stdin":false,"stdin_once":false,"tty":false"#;
        let cfg: MonitorConfig = serde_json::from_str(&format!("{base}}}")).unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Linux);
        let oci = format!(r#"{base},"runtime":{{"type":"oci","path":"/usr/sbin/runc","root":"/r"}}}}"#);
        let cfg: MonitorConfig = serde_json::from_str(&oci).unwrap();
        assert_eq!(cfg.runtime, RuntimeKind::Oci { path: "/usr/sbin/runc".into(), root: "/r".into() });
        let wasm = format!(r#"{base},"runtime":{{"type":"wasm","cache":"/c"}}}}"#);
        let wasm: MonitorConfig = serde_json::from_str(&wasm).unwrap();
        // Records written before the engine key existed still read.
        assert_eq!(
            wasm.runtime,
            RuntimeKind::Wasm { cache: "/c".into(), engine: String::new(), image: String::new(), module: None }
        );
        let artifact = format!(
            r#"{base},"runtime":{{"type":"wasm","cache":"/c","engine":"e","image":"i","module":"/app.wasm"}}}}"#
        );
        let artifact: MonitorConfig = serde_json::from_str(&artifact).unwrap();
        let expected = RuntimeKind::Wasm {
            cache: "/c".into(),
            engine: "e".into(),
            image: "i".into(),
            module: Some("/app.wasm".into()),
        };
        assert_eq!(artifact.runtime, expected);
    }

    #[test]
    fn handshake_lines() {
        let ok = Handshake::Created { pid: 12, monitor_pid: 11 };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"pid":12,"monitor_pid":11}"#);
        let back: Handshake = serde_json::from_str(r#"{"error":"boom"}"#).unwrap();
        assert_eq!(back, Handshake::Failed { error: "boom".into() });
    }
}
