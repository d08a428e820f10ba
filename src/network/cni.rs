//! Running CNI plugins: ADD, CHECK and DEL over a network config list.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use super::conf::{self, NetworkList, Stamp};
use super::result::{self, NetworkResult};
use super::{NetworkError, PluginFailure, PodNetwork};
use crate::config::CniConfig;
use crate::metrics::CniMetrics;

/// Cheap to clone; clones share the config cache.
#[derive(Debug, Clone)]
pub struct Cni(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    cfg: CniConfig,
    timeout: Duration,
    cache: Mutex<Option<(Stamp, Arc<NetworkList>)>>,
    metrics: CniMetrics,
}

/// Stderr kept in errors; plugins can be chatty.
const STDERR_LIMIT: usize = 4096;

impl Cni {
    /// `timeout` bounds each plugin run.
    #[allow(dead_code)] // for callers without metrics (tests)
    pub fn new(cfg: &CniConfig, timeout: Duration) -> Cni {
        Cni::with_metrics(cfg, timeout, CniMetrics::default())
    }

    /// As [`Cni::new`], timing every plugin run (and counting failures) in `metrics`.
    pub fn with_metrics(cfg: &CniConfig, timeout: Duration, metrics: CniMetrics) -> Cni {
        Cni(Arc::new(Inner { cfg: cfg.clone(), timeout, cache: Mutex::new(None), metrics }))
    }

    /// The config list in use: the first valid one by file name, re-read when the dir changed.
    pub fn network(&self) -> Result<Arc<NetworkList>, NetworkError> {
        let stamp = conf::stamp(&self.0.cfg.conf_dir).map_err(NetworkError::NoNetwork)?;
        let mut cache = self.0.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, list)) = cache.as_ref() {
            if *cached == stamp {
                return Ok(list.clone());
            }
        }
        // Failures are not cached: a plugin binary installed later must be noticed too.
        *cache = None;
        let list = Arc::new(conf::load(&self.0.cfg).map_err(NetworkError::NoNetwork)?);
        tracing::info!(network = %list.name, file = %list.file.display(), "using CNI network config");
        *cache = Some((stamp, list.clone()));
        Ok(list)
    }

    /// Runs the list's plugins in order, chaining each result into the next one's prevResult.
    /// On failure the plugins are DELeted (best effort) so nothing is left half set up.
    pub async fn add(&self, net: &NetworkList, pod: &PodNetwork<'_>) -> Result<NetworkResult, NetworkError> {
        let netns = pod.netns.to_string_lossy();
        let mut prev: Option<Value> = None;
        let mut last = String::new();
        for plugin in net.plugins() {
            let step = async {
                let out = self.run("ADD", net, plugin, pod, &netns, prev.as_ref()).await?;
                let bad = |reason: String| bad_result(plugin, "ADD", reason);
                if out.iter().all(u8::is_ascii_whitespace) {
                    return Err(bad("empty result".into()));
                }
                serde_json::from_slice::<Value>(&out).map_err(|e| bad(format!("invalid JSON: {e}")))
            };
            match step.await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    if let Err(del) = self.del(net, pod, None).await {
                        tracing::warn!(sandbox = pod.sandbox_id, error = %del, "CNI DEL after failed ADD");
                    }
                    return Err(e);
                }
            }
            last = conf::plugin_type(plugin).unwrap_or_default().to_string();
        }
        let Some(raw) = prev else { return Err(NetworkError::NoNetwork(format!("{}: no plugins", net.name))) };
        NetworkResult::parse(raw, &net.cni_version).map_err(|reason| NetworkError::BadResult {
            plugin: last,
            command: "ADD",
            reason,
        })
    }

    /// Runs every plugin in reverse order, even after one fails (so IPAM still releases the
    /// address), and returns the first error. A missing netns is passed as an empty CNI_NETNS.
    pub async fn del(&self, net: &NetworkList, pod: &PodNetwork<'_>, prev: Option<&Value>) -> Result<(), NetworkError> {
        let netns = if pod.netns.as_os_str().is_empty() || !pod.netns.exists() {
            String::new()
        } else {
            pod.netns.to_string_lossy().into_owned()
        };
        // prevResult on DEL arrived with 0.4.0; older plugins don't expect it.
        let prev = prev.filter(|_| conf::version_at_least(&net.cni_version, (0, 4, 0)));
        let mut first = None;
        for plugin in net.plugins().iter().rev() {
            if let Err(e) = self.run("DEL", net, plugin, pod, &netns, prev).await {
                tracing::warn!(sandbox = pod.sandbox_id, error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK, for lists of cniVersion 0.4.0 or later that don't set disableCheck.
    #[allow(dead_code)] // CNI CHECK: not on the hot path, and Debian's portmap fails it (plugins#819)
    pub async fn check(&self, net: &NetworkList, pod: &PodNetwork<'_>, prev: &Value) -> Result<(), NetworkError> {
        if !conf::version_at_least(&net.cni_version, (0, 4, 0)) || net.disable_check() {
            return Ok(());
        }
        let netns = pod.netns.to_string_lossy();
        for plugin in net.plugins() {
            self.run("CHECK", net, plugin, pod, &netns, Some(prev)).await?;
        }
        Ok(())
    }

    /// One plugin run, timed (and counted when it fails) by command and plugin type.
    async fn run(
        &self,
        command: &'static str,
        net: &NetworkList,
        plugin: &Value,
        pod: &PodNetwork<'_>,
        netns: &str,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, NetworkError> {
        let started = Instant::now();
        let result = self.run_plugin(command, net, plugin, pod, netns, prev).await;
        let kind = conf::plugin_type(plugin).unwrap_or("unknown");
        self.0.metrics.plugin_ran(command, kind, started.elapsed(), result.is_ok());
        result
    }

    /// One plugin run: config on stdin, result (or error object) on stdout.
    async fn run_plugin(
        &self,
        command: &'static str,
        net: &NetworkList,
        plugin: &Value,
        pod: &PodNetwork<'_>,
        netns: &str,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, NetworkError> {
        let kind = conf::plugin_type(plugin).map_err(|why| NetworkError::NoNetwork(format!("{}: {why}", net.name)))?;
        let bin_dirs = &self.0.cfg.bin_dirs;
        let path = conf::find_plugin(bin_dirs, kind).ok_or_else(|| NetworkError::PluginNotFound {
            plugin: kind.to_string(),
            dirs: conf::bin_dirs_display(bin_dirs),
        })?;
        let input = serde_json::to_vec(&plugin_config(net, plugin, prev, pod)).unwrap_or_default();
        let mut cmd = Command::new(&path);
        cmd.envs(self.plugin_env(command, pod, netns))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let exec_err = |source| NetworkError::Exec { plugin: kind.to_string(), command, path: path.clone(), source };
        let mut child = spawn(&mut cmd).await.map_err(exec_err)?;
        let stdin = child.stdin.take();
        let write = async move {
            if let Some(mut w) = stdin {
                // A plugin that exits without reading is judged by its exit status, not EPIPE here.
                let _ = w.write_all(&input).await;
            }
        };
        let started = Instant::now();
        // On timeout the child future is dropped, and kill_on_drop kills the plugin.
        let out = tokio::time::timeout(self.0.timeout, async { tokio::join!(write, child.wait_with_output()).1 })
            .await
            .map_err(|_| NetworkError::Timeout { plugin: kind.to_string(), command, limit: self.0.timeout })?
            .map_err(exec_err)?;
        let stderr = truncate(String::from_utf8_lossy(&out.stderr).trim());
        tracing::debug!(plugin = kind, command, sandbox = pod.sandbox_id, elapsed = ?started.elapsed(), %stderr, "CNI plugin ran");
        if out.status.success() {
            return Ok(out.stdout);
        }
        let (code, msg, details) = match result::parse_error(&out.stdout) {
            Some(e) => (e.code, e.msg, e.details),
            None => (None, truncate(String::from_utf8_lossy(&out.stdout).trim()), String::new()),
        };
        let msg = if msg.is_empty() { format!("exited with {}", out.status) } else { msg };
        Err(NetworkError::Plugin(Box::new(PluginFailure {
            plugin: kind.to_string(),
            command,
            code,
            msg,
            details,
            stderr,
        })))
    }

    pub(super) fn plugin_env(&self, command: &str, pod: &PodNetwork<'_>, netns: &str) -> Vec<(&'static str, String)> {
        let path = self.0.cfg.bin_dirs.iter().map(|d| d.to_string_lossy()).collect::<Vec<_>>().join(":");
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", pod.sandbox_id.to_string()),
            ("CNI_NETNS", netns.to_string()),
            ("CNI_IFNAME", pod.ifname.to_string()),
            ("CNI_ARGS", pod.cni_args()),
            ("CNI_PATH", path),
        ]
    }
}

/// The plugin's stdin: its own config plus the list's name and version, prevResult and runtimeConfig.
pub(super) fn plugin_config(net: &NetworkList, plugin: &Value, prev: Option<&Value>, pod: &PodNetwork<'_>) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    conf.remove("prevResult");
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let injected = pod.runtime_config(plugin);
    if !injected.is_empty() {
        let mut rc = conf.get("runtimeConfig").and_then(Value::as_object).cloned().unwrap_or_default();
        rc.extend(injected);
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

fn bad_result(plugin: &Value, command: &'static str, reason: String) -> NetworkError {
    NetworkError::BadResult { plugin: conf::plugin_type(plugin).unwrap_or_default().to_string(), command, reason }
}

/// Spawns, retrying ETXTBSY: another thread's fork can briefly hold a just-written plugin file open.
async fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => tries += 1,
            other => return other,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= STDERR_LIMIT {
        return s.to_string();
    }
    let mut end = STDERR_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
