//! Plugin output: ADD results (0.1.0 to 1.1.0 formats) and error objects.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::conf::version_at_least;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkResult {
    /// The pod's addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The final plugin's result as printed: prevResult for CHECK and DEL.
    pub raw: Value,
}

impl NetworkResult {
    /// `version` (the list's) applies when the result names none.
    pub fn parse(raw: Value, version: &str) -> Result<NetworkResult, String> {
        let version = raw.get("cniVersion").and_then(Value::as_str).unwrap_or(version);
        let mut ips = Vec::new();
        if let Some(list) = raw.get("ips") {
            for ip in list.as_array().ok_or("\"ips\" is not a list")? {
                let address = ip.get("address").and_then(Value::as_str).ok_or("an ip has no \"address\"")?;
                if !on_host_side(&raw, ip) {
                    ips.push(parse_cidr(address)?);
                }
            }
        } else if !version_at_least(version, (0, 3, 0)) {
            // 0.1/0.2: {"ip4": {"ip": "10.1.2.3/24"}, "ip6": {...}}
            for family in ["ip4", "ip6"] {
                if let Some(address) = raw.get(family).and_then(|f| f.get("ip")).and_then(Value::as_str) {
                    ips.push(parse_cidr(address)?);
                }
            }
        }
        let mut ordered: Vec<IpAddr> = Vec::new();
        for ip in ips.iter().filter(|ip| ip.is_ipv4()).chain(ips.iter().filter(|ip| ip.is_ipv6())) {
            if !ordered.contains(ip) {
                ordered.push(*ip);
            }
        }
        Ok(NetworkResult { ips: ordered, raw })
    }
}

/// True for an address on a host-side interface (one without a sandbox), e.g. a bridge gateway.
fn on_host_side(result: &Value, ip: &Value) -> bool {
    let Some(index) = ip.get("interface").and_then(Value::as_u64) else { return false };
    let Some(iface) = result.get("interfaces").and_then(|l| l.get(index as usize)) else { return false };
    iface.get("sandbox").and_then(Value::as_str).unwrap_or("").is_empty()
}

fn parse_cidr(s: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("address {s:?} has no prefix length"))?;
    let ip: IpAddr = addr.parse().map_err(|_| format!("invalid address {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => Ok(ip),
        _ => Err(format!("invalid prefix length in {s:?}")),
    }
}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, PartialEq)]
pub(super) struct PluginError {
    pub code: Option<u64>,
    pub msg: String,
    pub details: String,
}

pub(super) fn parse_error(stdout: &[u8]) -> Option<PluginError> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    if v.get("code").is_none() && v.get("msg").is_none() {
        return None;
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some(PluginError { code: v.get("code").and_then(Value::as_u64), msg: text("msg"), details: text("details") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_1_0_0_result_skipping_host_side_ips() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
                {"address": "10.88.0.1/16", "interface": 0},
                {"address": "10.9.9.9/32"}
            ],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let r = NetworkResult::parse(raw.clone(), "1.0.0").unwrap();
        let want: Vec<IpAddr> =
            vec!["10.88.0.5".parse().unwrap(), "10.9.9.9".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(r.ips, want);
        assert_eq!(r.raw, raw);
    }

    #[test]
    fn parses_0_4_0_and_0_2_0_results() {
        let r = NetworkResult::parse(
            json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.2.3/24"}]}),
            "0.4.0",
        );
        assert_eq!(r.unwrap().ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        let old = json!({"cniVersion": "0.2.0", "ip6": {"ip": "fd00::2/64"}, "ip4": {"ip": "10.1.2.3/24"}});
        assert_eq!(NetworkResult::parse(old, "0.2.0").unwrap().ips.len(), 2);
        assert!(NetworkResult::parse(json!({"ips": [{"address": "10.1.2.3"}]}), "1.0.0").is_err());
        assert!(NetworkResult::parse(json!({"ips": [{"address": "10.1.2.3/33"}]}), "1.0.0").is_err());
        assert!(NetworkResult::parse(json!({"cniVersion": "1.0.0"}), "1.0.0").unwrap().ips.is_empty());
    }

    #[test]
    fn parses_error_objects() {
        let e = parse_error(br#"{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no subnet"}"#);
        assert_eq!(e, Some(PluginError { code: Some(7), msg: "bad config".into(), details: "no subnet".into() }));
        assert_eq!(parse_error(b"panic: boom"), None);
        assert_eq!(parse_error(br#"{"ips":[]}"#), None);
    }
}
