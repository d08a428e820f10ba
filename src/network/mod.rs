//! Pod networking through CNI: config discovery, plugin invocation, results.
//! Written against the CNI spec (1.1 down to 0.3.x configs; 0.1/0.2 results).

mod cni;
mod conf;
mod pod;
mod result;
mod stats;

#[cfg(test)]
mod bridge_test;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use cni::Cni;
pub use conf::NetworkList;
pub use pod::{Bandwidth, Dns, PodNetwork, PortMapping};
pub use result::NetworkResult;
pub use stats::{interface_stats, InterfaceStats};

use crate::config::CniConfig;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no usable CNI network config: {0}")]
    NoNetwork(String),
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command}: cannot run {path}: {source}")]
    Exec { plugin: String, command: &'static str, path: PathBuf, source: std::io::Error },
    /// The plugin exited non-zero.
    #[error("{0}")]
    Plugin(Box<PluginFailure>),
    #[error("CNI plugin {plugin} {command} did not finish within {limit:?} (killed)")]
    Timeout { plugin: String, command: &'static str, limit: Duration },
    #[error("CNI plugin {plugin} {command}: unusable result: {reason}")]
    BadResult { plugin: String, command: &'static str, reason: String },
    #[error("invalid annotation {key}={value:?}: {reason}")]
    Annotation { key: String, value: String, reason: String },
}

/// A plugin's failure; code/msg/details come from its JSON error on stdout when it printed one.
#[derive(Debug)]
pub struct PluginFailure {
    pub plugin: String,
    pub command: &'static str,
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI plugin {} {} failed: ", self.plugin, self.command)?;
        if let Some(code) = self.code {
            write!(f, "[code {code}] ")?;
        }
        f.write_str(&self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        if !self.stderr.is_empty() {
            write!(f, "; stderr: {}", self.stderr)?;
        }
        Ok(())
    }
}

/// The network config cricket would use (file, network name), or why there is none usable.
/// Uncached: Status calls it; pod setup goes through [`Cni::network`].
pub fn find_network(cni: &CniConfig) -> Result<(PathBuf, String), String> {
    conf::load(cni).map(|list| (list.file, list.name))
}
