//! Per-pod files containers mount (/etc/hostname, /etc/hosts, /etc/resolv.conf)
//! and the rules for which sysctls a pod may set.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::DnsConfig;

const IPC_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
];

/// Which pod namespaces are the host's, for sysctl checks.
#[derive(Debug, Clone, Copy)]
pub struct HostNamespaces {
    pub network: bool,
    pub ipc: bool,
}

/// Accepts only sysctls that live in a namespace the pod owns: IPC ones
/// (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) without host IPC, and
/// net.* without host network. Everything else would change the node.
pub fn check_sysctls(sysctls: &HashMap<String, String>, host: HostNamespaces) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        let value = &sysctls[key];
        let dotted = key.replace('/', ".");
        let ipc = IPC_SYSCTLS.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.");
        let net = dotted.starts_with("net.");
        if key.is_empty() || key.contains("..") || value.contains(['\n', '\0']) {
            return Err(format!("sysctl {key:?}={value:?} is malformed"));
        }
        match (ipc, net) {
            (true, _) if host.ipc => {
                return Err(format!("sysctl {key} needs the pod's own IPC namespace (host IPC is set)"))
            }
            (_, true) if host.network => {
                return Err(format!("sysctl {key} needs the pod's own network namespace (host network is set)"))
            }
            (false, false) => return Err(format!("sysctl {key} is not namespaced: it would change the node")),
            _ => out.push(format!("{key}={value}")),
        }
    }
    Ok(out)
}

pub fn hosts_file(hostname: &str, ips: &[std::net::IpAddr]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// From the pod's DNSConfig; the host's resolv.conf when it gives nothing.
pub fn resolv_conf(dns: Option<&DnsConfig>, host_resolv: &Path) -> std::io::Result<String> {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            Ok(s)
        }
        _ => match std::fs::read_to_string(host_resolv) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sysctl_rules() {
        let own = HostNamespaces { network: false, ipc: false };
        let ok = map(&[("kernel.shm_rmid_forced", "1"), ("fs.mqueue.msg_max", "100"), ("net.ipv4.ip_forward", "1")]);
        assert_eq!(check_sysctls(&ok, own).unwrap().len(), 3);
        assert!(check_sysctls(&map(&[("kernel.pid_max", "1")]), own).unwrap_err().contains("not namespaced"));
        assert!(check_sysctls(&map(&[("vm.swappiness", "1")]), own).is_err());
        let host_net = HostNamespaces { network: true, ipc: false };
        assert!(check_sysctls(&map(&[("net.core.somaxconn", "1")]), host_net).unwrap_err().contains("host network"));
        let host_ipc = HostNamespaces { network: false, ipc: true };
        assert!(check_sysctls(&map(&[("kernel.sem", "1 2 3 4")]), host_ipc).unwrap_err().contains("host IPC"));
        assert!(check_sysctls(&map(&[("net.ipv4.x", "1\n2")]), own).is_err());
    }

    #[test]
    fn resolv() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let s = resolv_conf(Some(&dns), Path::new("/nonexistent")).unwrap();
        assert_eq!(s, "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n");
        assert_eq!(resolv_conf(None, Path::new("/nonexistent")).unwrap(), "");
        assert!(hosts_file("pod", &["10.1.2.3".parse().unwrap()]).ends_with("10.1.2.3\tpod\n"));
    }
}
