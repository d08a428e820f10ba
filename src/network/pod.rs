//! What a pod asks of the network: CNI_ARGS and the capability args (`runtimeConfig`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::NetworkError;

pub struct PodNetwork<'a> {
    pub sandbox_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    pub pod_uid: &'a str,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<Dns>,
    pub cgroup_path: Option<String>,
}

/// The `portMappings` capability entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The `bandwidth` capability: rates in bits/s, bursts in bits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

impl Bandwidth {
    /// From `kubernetes.io/{ingress,egress}-bandwidth` ("10M"); None when neither is set.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<Bandwidth>, NetworkError> {
        let rate = |key: &str| annotations.get(key).map(|v| parse_rate(key, v)).transpose();
        let (ingress, egress) = (rate(INGRESS_ANNOTATION)?, rate(EGRESS_ANNOTATION)?);
        if ingress.is_none() && egress.is_none() {
            return Ok(None);
        }
        // Kubernetes gives only rates; like kubelet's own shaping, leave the burst effectively unlimited
        // (the bandwidth plugin rejects a rate without a burst, and a burst of 4 GiB or more).
        let burst = |r: Option<u64>| r.map_or(0, |_| u64::from(u32::MAX));
        Ok(Some(Bandwidth {
            ingress_rate: ingress.unwrap_or(0),
            ingress_burst: burst(ingress),
            egress_rate: egress.unwrap_or(0),
            egress_burst: burst(egress),
        }))
    }
}

/// A Kubernetes quantity in bits/s, within kubelet's accepted 1k..=1P.
fn parse_rate(key: &str, value: &str) -> Result<u64, NetworkError> {
    let bad = |reason: &str| NetworkError::Annotation { key: key.into(), value: value.into(), reason: reason.into() };
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (number, suffix) = v.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return Err(bad("expected a number with an optional suffix (k, M, G, T, P, Ki, Mi, Gi, Ti, Pi)")),
    };
    let n: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let bits = (n * mult).ceil();
    if !(1e3..=1e15).contains(&bits) {
        return Err(bad("must be between 1k and 1P"));
    }
    Ok(bits as u64)
}

impl PodNetwork<'_> {
    /// CNI_ARGS as kubelet-era runtimes set it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.sandbox_id, self.pod_uid
        )
    }

    /// `runtimeConfig` for one plugin: only capabilities it declares and the pod has a value for.
    pub fn runtime_config(&self, plugin: &Value) -> Map<String, Value> {
        let declared = |cap: &str| plugin.get("capabilities").and_then(|c| c.get(cap)) == Some(&Value::Bool(true));
        let mut rc = Map::new();
        // Container ports without a host port are informational only; nothing to map.
        let ports: Vec<PortMapping> = self
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping { protocol: p.protocol.to_ascii_lowercase(), ..p.clone() })
            .collect();
        if declared("portMappings") && !ports.is_empty() {
            rc.insert("portMappings".into(), serde_json::to_value(ports).unwrap_or_default());
        }
        if let Some(bw) = self.bandwidth.as_ref().filter(|_| declared("bandwidth")) {
            rc.insert("bandwidth".into(), serde_json::to_value(bw).unwrap_or_default());
        }
        if let Some(dns) = self.dns.as_ref().filter(|_| declared("dns")) {
            rc.insert("dns".into(), serde_json::to_value(dns).unwrap_or_default());
        }
        if let Some(cg) = self.cgroup_path.as_ref().filter(|_| declared("cgroupPath")) {
            rc.insert("cgroupPath".into(), Value::String(cg.clone()));
        }
        rc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(netns: &Path) -> PodNetwork<'_> {
        PodNetwork {
            sandbox_id: "sb1",
            netns,
            ifname: "eth0",
            pod_name: "web",
            pod_namespace: "default",
            pod_uid: "uid-1",
            port_mappings: vec![
                PortMapping { host_port: 8080, container_port: 80, protocol: "TCP".into(), host_ip: String::new() },
                PortMapping { host_port: 0, container_port: 81, protocol: "tcp".into(), host_ip: String::new() },
            ],
            bandwidth: Some(Bandwidth { ingress_rate: 1000, ingress_burst: 2000, ..Default::default() }),
            dns: None,
            cgroup_path: Some("/kubepods/pod1".into()),
        }
    }

    #[test]
    fn cni_args() {
        assert_eq!(
            pod(Path::new("/x")).cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1"
        );
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let p = pod(Path::new("/x"));
        assert!(p.runtime_config(&json!({"type": "bridge"})).is_empty());
        let caps = json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false, "dns": true}});
        let rc = p.runtime_config(&caps);
        // dns declared but the pod has none; bandwidth available but declared false.
        assert_eq!(
            Value::Object(rc),
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        let all = json!({"capabilities": {"bandwidth": true, "cgroupPath": true}});
        assert_eq!(
            Value::Object(p.runtime_config(&all)),
            json!({"bandwidth": {"ingressRate": 1000, "ingressBurst": 2000, "egressRate": 0, "egressBurst": 0},
                   "cgroupPath": "/kubepods/pod1"})
        );
    }

    #[test]
    fn bandwidth_annotations() {
        let ann = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(Bandwidth::from_annotations(&ann(&[])).unwrap(), None);
        let bw = Bandwidth::from_annotations(&ann(&[(INGRESS_ANNOTATION, "10M"), ("other", "x")])).unwrap().unwrap();
        assert_eq!(
            (bw.ingress_rate, bw.ingress_burst, bw.egress_rate, bw.egress_burst),
            (10_000_000, 4294967295, 0, 0)
        );
        let bw = Bandwidth::from_annotations(&ann(&[(EGRESS_ANNOTATION, "1.5Mi")])).unwrap().unwrap();
        assert_eq!((bw.ingress_rate, bw.egress_rate), (0, 1_572_864));
        assert_eq!(parse_rate("k", "2000").unwrap(), 2000);
        for bad in ["10X", "", "M", "-1M", "10", "2P"] {
            let err = Bandwidth::from_annotations(&ann(&[(INGRESS_ANNOTATION, bad)])).unwrap_err();
            assert!(err.to_string().contains(INGRESS_ANNOTATION), "{bad}: {err}");
        }
    }
}
