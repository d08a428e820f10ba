//! Daemon configuration: a TOML file, a drop-in directory applied in name
//! order, then `CRICKET_*` environment variables (`CRICKET_LOG__LEVEL=debug`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/cricket/cricket.toml";
pub const DEFAULT_CONFIG_DIR: &str = "/etc/cricket/cricket.d";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment (CRICKET_*): {0}")]
    Env(String),
    #[error("config drop-in directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// CRI gRPC unix socket.
    pub socket: PathBuf,
    /// Persistent state: images, sandboxes, containers.
    pub root: PathBuf,
    /// Volatile state: sockets, pinned namespaces, monitor dirs.
    pub run: PathBuf,
    pub log: LogConfig,
    pub cgroup: CgroupConfig,
    pub registries: RegistriesConfig,
    pub pull: PullConfig,
    pub images: ImagesConfig,
    pub cni: CniConfig,
    pub metrics: MetricsConfig,
    pub streaming: StreamingConfig,
    pub wasm: WasmConfig,
    pub runtimes: BTreeMap<String, RuntimeHandler>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: a level (`info`) or directives (`cricket=debug,info`).
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Must match kubelet's `cgroupDriver`.
    pub driver: CgroupDriver,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Registry that short names (`busybox`) resolve to.
    pub default: String,
    /// Credentials in docker `config.json` format; empty for none.
    pub auth_file: PathBuf,
    /// Per-registry settings, keyed by registry host (`docker.io`, `127.0.0.1:5000`).
    pub hosts: BTreeMap<String, RegistryHost>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryHost {
    /// Endpoints tried in order before the registry itself, e.g. `http://127.0.0.1:5000`.
    pub mirrors: Vec<String>,
    /// Never contact the registry itself: pull only through its mirrors.
    pub mirrors_only: bool,
    /// Talk to this registry over plain HTTP (or HTTPS without verification).
    pub insecure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// Whole-pull limit in seconds; 0 for none.
    pub timeout_secs: u64,
    /// Abort a layer download that receives no bytes for this many seconds.
    pub progress_timeout_secs: u64,
    /// TCP/TLS connect limit per registry request, in seconds.
    pub connect_timeout_secs: u64,
    /// Layers downloaded and unpacked at once per pull.
    pub max_concurrent_layers: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// Images reported as pinned (kubelet never garbage-collects them); a trailing `*` matches a prefix.
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// Limit for one plugin call, in seconds.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving Prometheus `GET /metrics`; empty turns it off.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `host:port` of the server behind Exec's URLs; port 0 lets the OS choose.
    pub address: String,
    /// PEM certificate chain and private key: both set serves HTTPS.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WasmConfig {
    /// How many programs stay loaded, each in a process of its own that
    /// starts their containers' monitors; 0 turns this off.
    pub preloaded: usize,
    /// A preloaded program that starts no container for this many seconds is let go.
    pub preload_idle_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    #[serde(rename = "type")]
    pub kind: HandlerKind,
    /// Runtime binary for `type = "oci"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Privileged containers get only the default devices and those they
    /// request, not every device of the host (for VM-based or shared hosts).
    #[serde(default)]
    pub privileged_without_host_devices: bool,
    /// Where the container monitors of this handler's pods run: "" (the
    /// daemon's cgroup), "pod" (a `monitor-<id>` cgroup inside the pod's), or a
    /// cgroup path (cgroupfs driver) or slice (systemd driver) that holds them.
    #[serde(default)]
    pub monitor_cgroup: String,
    /// Behaviour-changing annotations (of [`GATED_ANNOTATIONS`]) this handler's containers may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_annotations: Vec<String>,
}

/// Where a handler's monitors run, from `monitor_cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorCgroup<'a> {
    Daemon,
    Pod,
    /// A cgroup path ("/system/cricket-monitors") or slice ("cricket-monitors.slice").
    Under(&'a str),
}

/// Annotations that change how a container runs; each works only on handlers
/// listing it in `allowed_annotations` (an entry covers the keys it prefixes,
/// as in CRI-O: `run.oci.` covers every `run.oci.*` key).
pub const GATED_ANNOTATIONS: &[&str] =
    &["run.oci.", "module.wasm.image/variant", "io.cricket.scheduler", "io.cricket.io-priority"];

/// Whether `key` is one of [`GATED_ANNOTATIONS`].
pub fn is_gated(key: &str) -> bool {
    GATED_ANNOTATIONS.iter().any(|g| key.starts_with(g))
}

impl RuntimeHandler {
    pub fn new(kind: HandlerKind) -> RuntimeHandler {
        RuntimeHandler {
            kind,
            path: None,
            privileged_without_host_devices: false,
            monitor_cgroup: String::new(),
            allowed_annotations: Vec::new(),
        }
    }

    pub fn monitor_cgroup(&self) -> MonitorCgroup<'_> {
        match self.monitor_cgroup.as_str() {
            "" => MonitorCgroup::Daemon,
            "pod" => MonitorCgroup::Pod,
            path => MonitorCgroup::Under(path),
        }
    }

    /// Whether containers of this handler may use the gated annotation `key`.
    pub fn allows(&self, key: &str) -> bool {
        self.allowed_annotations.iter().any(|a| key.starts_with(a.as_str()))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    Linux,
    Oci,
    Wasm,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "/run/cricket/cricket.sock".into(),
            root: "/var/lib/cricket".into(),
            run: "/run/cricket".into(),
            log: LogConfig::default(),
            cgroup: CgroupConfig { driver: CgroupDriver::Cgroupfs },
            registries: RegistriesConfig::default(),
            pull: PullConfig::default(),
            images: ImagesConfig::default(),
            cni: CniConfig::default(),
            metrics: MetricsConfig::default(),
            streaming: StreamingConfig::default(),
            wasm: WasmConfig::default(),
            runtimes: BTreeMap::from([("default".to_string(), RuntimeHandler::new(HandlerKind::Linux))]),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig { driver: CgroupDriver::Cgroupfs }
    }
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        RegistriesConfig { default: "docker.io".into(), auth_file: PathBuf::new(), hosts: BTreeMap::new() }
    }
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig { timeout_secs: 0, progress_timeout_secs: 60, connect_timeout_secs: 10, max_concurrent_layers: 4 }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            timeout_secs: 60,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { address: "127.0.0.1:9537".into() }
    }
}

impl MetricsConfig {
    /// The address to serve on, or None when metrics are off.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.address.parse().ok()
    }
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig { preloaded: 8, preload_idle_secs: 600 }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig { address: "127.0.0.1:0".into(), tls_cert_file: String::new(), tls_key_file: String::new() }
    }
}

impl StreamingConfig {
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.address.parse().ok()
    }
}

/// Where configuration comes from; `file_required` is set when the user named the file.
pub struct Sources<'a> {
    pub file: &'a Path,
    pub file_required: bool,
    pub dir: &'a Path,
}

impl Config {
    /// Loads file, drop-ins and environment, rejecting unknown keys and bad values
    /// with the file (or the environment) that holds them.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut files = Vec::new();
        if sources.file_required || sources.file.exists() {
            files.push(sources.file.to_path_buf());
        }
        files.extend(drop_ins(sources.dir)?);

        let mut builder = config::Config::builder();
        for path in &files {
            // Each file alone must be valid, so the error can name it.
            let single = config::Config::builder()
                .add_source(File::from(path.as_path()).format(FileFormat::Toml))
                .build()
                .and_then(|c| c.try_deserialize::<Config>())
                .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
            single.validate().map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        let env = || {
            Environment::with_prefix("CRICKET")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cni.bin_dirs")
                .with_list_parse_key("images.pinned")
        };
        config::Config::builder()
            .add_source(env())
            .build()
            .and_then(|c| c.try_deserialize::<Config>())
            .map_err(|e| ConfigError::Env(e.to_string()))?;
        let mut merged = builder
            .add_source(env())
            .build()
            .and_then(|c| c.try_deserialize::<Config>())
            .map_err(|e| ConfigError::Env(e.to_string()))?;
        // A table of extra handlers keeps the built-in default unless it names its own.
        merged.runtimes.entry("default".into()).or_insert(RuntimeHandler::new(HandlerKind::Linux));
        merged.validate()?;
        Ok(merged)
    }

    /// Checks values serde can't: paths, hosts, URLs, filters, handler options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| Err(ConfigError::Invalid { key: key.into(), message });
        for (key, path) in
            [("socket", &self.socket), ("root", &self.root), ("run", &self.run), ("cni.conf_dir", &self.cni.conf_dir)]
        {
            if !path.is_absolute() {
                return invalid(key, format!("{} is not an absolute path", path.display()));
            }
        }
        if self.cni.bin_dirs.iter().any(|p| !p.is_absolute()) {
            return invalid("cni.bin_dirs", "every entry must be an absolute path".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", format!("{:?} is not a level or filter: {e}", self.log.level));
        }
        if !valid_host(&self.registries.default) {
            return invalid("registries.default", format!("{:?} is not a registry host", self.registries.default));
        }
        for (host, settings) in &self.registries.hosts {
            let key = format!("registries.hosts.\"{host}\"");
            if !valid_host(host) {
                return invalid(&key, format!("{host:?} is not a registry host"));
            }
            for mirror in &settings.mirrors {
                if let Err(message) = parse_endpoint(mirror) {
                    return invalid(&format!("{key}.mirrors"), message);
                }
            }
            if settings.mirrors_only && settings.mirrors.is_empty() {
                return invalid(&format!("{key}.mirrors_only"), "set, but no mirrors are listed".into());
            }
        }
        if self.cni.timeout_secs == 0 {
            return invalid("cni.timeout_secs", "must be at least 1".into());
        }
        if self.wasm.preload_idle_secs == 0 {
            return invalid("wasm.preload_idle_secs", "must be at least 1".into());
        }
        if self.pull.max_concurrent_layers == 0 {
            return invalid("pull.max_concurrent_layers", "must be at least 1".into());
        }
        if self.pull.progress_timeout_secs == 0 || self.pull.connect_timeout_secs == 0 {
            return invalid("pull", "progress_timeout_secs and connect_timeout_secs must be at least 1".into());
        }
        if !self.metrics.address.is_empty() && self.metrics.socket_addr().is_none() {
            return invalid(
                "metrics.address",
                format!(
                    "{:?} is not a socket address (\"127.0.0.1:9537\", \"[::1]:9537\"), or \"\" for off",
                    self.metrics.address
                ),
            );
        }
        if self.streaming.socket_addr().is_none() {
            return invalid(
                "streaming.address",
                format!("{:?} is not a socket address (\"127.0.0.1:0\", \"[::1]:10010\")", self.streaming.address),
            );
        }
        if self.streaming.tls_cert_file.is_empty() != self.streaming.tls_key_file.is_empty() {
            let key = if self.streaming.tls_cert_file.is_empty() {
                "streaming.tls_cert_file"
            } else {
                "streaming.tls_key_file"
            };
            return invalid(key, "TLS needs both streaming.tls_cert_file and streaming.tls_key_file".into());
        }
        for (name, handler) in &self.runtimes {
            let key = format!("runtimes.{name}");
            match (handler.kind, &handler.path) {
                (HandlerKind::Oci, None) => {
                    return invalid(&key, "type \"oci\" needs `path` to the runtime binary".into())
                }
                (HandlerKind::Oci, Some(p)) if !p.is_absolute() => {
                    return invalid(&format!("{key}.path"), format!("{} is not an absolute path", p.display()))
                }
                (HandlerKind::Linux | HandlerKind::Wasm, Some(_)) => {
                    return invalid(&format!("{key}.path"), "only handlers of type \"oci\" take a path".into())
                }
                _ => {}
            }
            if let MonitorCgroup::Under(path) = handler.monitor_cgroup() {
                if let Err(e) = crate::cgroup::parse_parent(self.cgroup.driver, path) {
                    let example = match self.cgroup.driver {
                        CgroupDriver::Cgroupfs => "\"/system/cricket-monitors\"",
                        CgroupDriver::Systemd => "\"cricket-monitors.slice\"",
                    };
                    return invalid(
                        &format!("{key}.monitor_cgroup"),
                        format!("must be \"\", \"pod\" or a cgroup like {example}: {e}"),
                    );
                }
            }
            if let Some(a) = handler
                .allowed_annotations
                .iter()
                .find(|a| !GATED_ANNOTATIONS.contains(&a.as_str()) && !a.starts_with("run.oci."))
            {
                return invalid(
                    &format!("{key}.allowed_annotations"),
                    format!(
                        "{a:?} is not an annotation cricket gates (one of {GATED_ANNOTATIONS:?}, or a run.oci.* key)"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The settings for a registry host, or the defaults.
    pub fn registry_host(&self, host: &str) -> RegistryHost {
        self.registries.hosts.get(host).cloned().unwrap_or_default()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Dir { path: dir.into(), source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn valid_host(host: &str) -> bool {
    !host.is_empty() && !host.contains('/') && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// A mirror endpoint: `http://host[:port]` or `https://host[:port]` (scheme optional, https assumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
}

pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (plain_http, rest) = match s.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("{s:?}: scheme {scheme:?} is not http or https")),
        None => (false, s),
    };
    let host = rest.trim_end_matches('/');
    if !valid_host(host) {
        return Err(format!("{s:?} is not a registry endpoint (scheme://host[:port])"));
    }
    Ok(Endpoint { host: host.to_string(), plain_http })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &Path, dir: &Path) -> Result<Config, ConfigError> {
        Config::load(&Sources { file, file_required: true, dir })
    }

    #[test]
    fn shipped_config_is_the_default() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cricket.toml");
        let cfg = load(&shipped, Path::new("/nonexistent")).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn drop_ins_apply_in_name_order_and_hosts_keep_dots() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let main = d.join("main.toml");
        std::fs::write(&main, "root = \"/srv/a\"\n").unwrap();
        let dd = d.join("d");
        std::fs::create_dir(&dd).unwrap();
        std::fs::write(dd.join("20-b.toml"), "root = \"/srv/c\"\n").unwrap();
        std::fs::write(dd.join("10-a.toml"), "root = \"/srv/b\"\n[registries.hosts.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\nmirrors_only = true\n").unwrap();
        std::fs::write(dd.join("30-runc.toml"), "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/bin/runc\"\n").unwrap();
        std::fs::write(dd.join("ignored.txt"), "garbage").unwrap();
        let cfg = load(&main, &dd).unwrap();
        assert_eq!(cfg.runtimes.keys().collect::<Vec<_>>(), ["default", "runc"]);
        assert_eq!(cfg.root, PathBuf::from("/srv/c"));
        let host = cfg.registry_host("docker.io");
        assert_eq!(host.mirrors, vec!["http://127.0.0.1:5000".to_string()]);
        assert!(host.mirrors_only);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let main = d.join("main.toml");
        std::fs::write(&main, "[pull]\nmax_concurent_layers = 3\n").unwrap();
        let err = load(&main, &d.join("none")).unwrap_err().to_string();
        assert!(err.contains("main.toml") && err.contains("max_concurent_layers"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected_with_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let f = d.join("bad.toml");
        for (text, needle) in [
            ("[cgroup]\ndriver = \"cgroupfs2\"\n", "cgroupfs2"),
            ("root = \"relative/dir\"\n", "root"),
            ("[registries.hosts.\"docker.io\"]\nmirrors = [\"ftp://x\"]\n", "ftp"),
            ("[runtimes.runc]\ntype = \"oci\"\n", "runtimes.runc"),
            ("[runtimes.wasm]\ntype = \"wasm\"\npath = \"/x\"\n", "runtimes.wasm.path"),
            ("[wasm]\npreload_idle_secs = 0\n", "wasm.preload_idle_secs"),
            ("[wasm]\npreloaded = -1\n", "preloaded"),
            ("[runtimes.x]\ntype = \"linux\"\nmonitor_cgroup = \"relative/dir\"\n", "runtimes.x.monitor_cgroup"),
            ("[runtimes.x]\ntype = \"linux\"\nmonitor_cgroup = \"/a/../b\"\n", "runtimes.x.monitor_cgroup"),
            ("[runtimes.x]\ntype = \"linux\"\nmonitor_cgroup = \"mon.slice\"\n", "runtimes.x.monitor_cgroup"),
            (
                "[cgroup]\ndriver = \"systemd\"\n[runtimes.x]\ntype = \"linux\"\nmonitor_cgroup = \"/mon\"\n",
                "runtimes.x.monitor_cgroup",
            ),
            (
                "[runtimes.x]\ntype = \"linux\"\nprivileged_without_host_devices = \"maybe\"\n",
                "privileged_without_host_devices",
            ),
            (
                "[runtimes.wasm]\ntype = \"wasm\"\nallowed_annotations = [\"io.kubernetes.cri\"]\n",
                "runtimes.wasm.allowed_annotations",
            ),
            ("[runtimes.wasm]\ntype = \"wasm\"\nallowed_annotations = \"run.oci.handler\"\n", "allowed_annotations"),
            ("[log]\nlevel = \"loud=[\"\n", "log.level"),
            ("[pull]\nmax_concurrent_layers = -1\n", "max_concurrent_layers"),
            ("[metrics]\naddress = \"localhost:9537\"\n", "metrics.address"),
            ("[metrics]\naddress = \"127.0.0.1\"\n", "metrics.address"),
            ("[streaming]\naddress = \"\"\n", "streaming.address"),
            ("[streaming]\naddress = \"localhost:1\"\n", "streaming.address"),
            ("[streaming]\ntls_cert_file = \"/c.pem\"\n", "streaming.tls_key_file"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = load(&f, &d.join("none")).unwrap_err().to_string();
            assert!(err.contains("bad.toml") && err.contains(needle), "{text}: {err}");
        }
        let missing = load(&d.join("missing.toml"), &d).unwrap_err().to_string();
        assert!(missing.contains("missing.toml"), "{missing}");
    }

    #[test]
    fn handler_options() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let f = d.join("h.toml");
        let text = "[runtimes.runc]\ntype = \"oci\"\npath = \"/usr/sbin/runc\"\nprivileged_without_host_devices = true\n\
                    monitor_cgroup = \"pod\"\n[runtimes.kata]\ntype = \"oci\"\npath = \"/k\"\nmonitor_cgroup = \"/system/mon\"\n";
        std::fs::write(&f, text).unwrap();
        let cfg = load(&f, &d.join("none")).unwrap();
        let runc = &cfg.runtimes["runc"];
        assert!(runc.privileged_without_host_devices);
        assert_eq!(runc.monitor_cgroup(), MonitorCgroup::Pod);
        assert_eq!(cfg.runtimes["kata"].monitor_cgroup(), MonitorCgroup::Under("/system/mon"));
        assert_eq!(cfg.runtimes["default"].monitor_cgroup(), MonitorCgroup::Daemon);
        assert!(!cfg.runtimes["default"].privileged_without_host_devices);
        std::fs::write(
            &f,
            "[cgroup]\ndriver = \"systemd\"\n[runtimes.x]\ntype = \"linux\"\nmonitor_cgroup = \"mon.slice\"\n",
        )
        .unwrap();
        assert_eq!(
            load(&f, &d.join("none")).unwrap().runtimes["x"].monitor_cgroup(),
            MonitorCgroup::Under("mon.slice")
        );
    }

    #[test]
    fn allowed_annotations_cover_keys_they_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let f = d.join("a.toml");
        std::fs::write(
            &f,
            "[runtimes.crun]\ntype = \"linux\"\nallowed_annotations = [\"run.oci.\", \"io.cricket.scheduler\"]\n",
        )
        .unwrap();
        let cfg = load(&f, &d.join("none")).unwrap();
        let crun = &cfg.runtimes["crun"];
        assert!(crun.allows("run.oci.handler") && crun.allows("io.cricket.scheduler"));
        assert!(!crun.allows("module.wasm.image/variant") && !crun.allows("io.cricket.io-priority"));
        assert!(!cfg.runtimes["default"].allows("run.oci.handler"), "opt-in: nothing allowed by default");
        assert!(is_gated("run.oci.handler") && is_gated(crate::oci::sched::SCHEDULER_ANNOTATION));
        assert!(is_gated(crate::oci::sched::IO_PRIORITY_ANNOTATION) && !is_gated("io.kubernetes.cri.sandbox-id"));
    }

    #[test]
    fn metrics_address() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let f = d.join("m.toml");
        std::fs::write(&f, "[metrics]\naddress = \"\"\n").unwrap();
        assert_eq!(load(&f, &d.join("none")).unwrap().metrics.socket_addr(), None);
        std::fs::write(&f, "[metrics]\naddress = \"[::1]:9100\"\n").unwrap();
        assert_eq!(load(&f, &d.join("none")).unwrap().metrics.socket_addr(), Some("[::1]:9100".parse().unwrap()));
        assert_eq!(Config::default().metrics.socket_addr(), Some("127.0.0.1:9537".parse().unwrap()));
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:5000/").unwrap(),
            Endpoint { host: "127.0.0.1:5000".into(), plain_http: true }
        );
        assert_eq!(
            parse_endpoint("mirror.example.com").unwrap(),
            Endpoint { host: "mirror.example.com".into(), plain_http: false }
        );
        assert!(parse_endpoint("http://a/b").is_err());
    }
}
