//! A real ADD/CHECK/DEL with Debian's bridge, host-local and portmap plugins in a scratch
//! network namespace. Skipped (with a message) unless root with /usr/lib/cni installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

const PLUGINS: &str = "/usr/lib/cni";
/// Forwarding switches the bridge plugin may turn on; restored afterwards.
const FORWARD: [&str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

fn run(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Everything the test creates on the host, undone on drop (also when an assertion fails).
struct Host {
    netns: String,
    bridge: String,
    dir: PathBuf,
    subnet_prefix: String,
    forward: Vec<Option<String>>,
    portmap_chains_existed: bool,
}

impl Drop for Host {
    fn drop(&mut self) {
        run(&["ip", "netns", "del", &self.netns]);
        run(&["ip", "link", "del", &self.bridge]);
        for (path, value) in FORWARD.iter().zip(&self.forward) {
            if let Some(v) = value {
                let _ = std::fs::write(path, v);
            }
        }
        self.remove_nat_chains();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Host {
    /// Per-pod CNI-* chains (left if the test failed before DEL) and, when this test created
    /// them, its shared CNI-HOSTPORT-* chains, with the rules jumping to them.
    fn remove_nat_chains(&self) {
        let (_, rules) = run(&["iptables", "-t", "nat", "-S"]);
        let appended: Vec<(&str, &str)> =
            rules.lines().filter_map(|r| r.strip_prefix("-A ")).filter_map(|r| r.split_once(' ')).collect();
        let mut doomed: Vec<&str> = appended
            .iter()
            .filter(|(chain, rule)| {
                chain.starts_with("CNI-") && !chain.starts_with("CNI-HOSTPORT-") && rule.contains(&self.subnet_prefix)
            })
            .map(|(chain, _)| *chain)
            .collect();
        if !self.portmap_chains_existed {
            doomed
                .extend(rules.lines().filter_map(|r| r.strip_prefix("-N ")).filter(|c| c.starts_with("CNI-HOSTPORT-")));
        }
        // Jumps are deleted by number, highest first, so earlier numbers stay valid.
        let mut jumps: Vec<(&str, usize)> = Vec::new();
        for chain in appended.iter().map(|(c, _)| *c).filter(|c| !doomed.contains(c)) {
            let in_chain = appended.iter().filter(|(c, _)| *c == chain);
            jumps.extend(
                in_chain
                    .enumerate()
                    .filter(|(_, (_, r))| doomed.contains(&jump_target(r)))
                    .map(|(i, _)| (chain, i + 1)),
            );
        }
        jumps.sort();
        jumps.dedup();
        for (chain, n) in jumps.into_iter().rev() {
            run(&["iptables", "-t", "nat", "-D", chain, &n.to_string()]);
        }
        for op in ["-F", "-X"] {
            for chain in &doomed {
                run(&["iptables", "-t", "nat", op, chain]);
            }
        }
    }
}

fn jump_target(rule: &str) -> &str {
    rule.split_once(" -j ").and_then(|(_, t)| t.split_whitespace().next()).unwrap_or("")
}

fn skip_reason() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for p in ["bridge", "host-local", "portmap"] {
        if !Path::new(PLUGINS).join(p).exists() {
            return Some(format!("{PLUGINS}/{p} missing (apt-get install containernetworking-plugins)"));
        }
    }
    (!run(&["iptables", "-t", "nat", "-S"]).0).then(|| "iptables unusable (apt-get install iptables)".into())
}

fn pod<'a>(netns: &'a Path, id: &'a str, host_port: i32) -> PodNetwork<'a> {
    PodNetwork {
        sandbox_id: id,
        netns,
        ifname: "eth0",
        pod_name: "cnitest",
        pod_namespace: "default",
        pod_uid: "uid",
        port_mappings: vec![PortMapping { host_port, container_port: 80, protocol: "tcp".into(), host_ip: "".into() }],
        bandwidth: None,
        dns: None,
        cgroup_path: None,
    }
}

/// The host-side veth named in a result: an interface with no sandbox that is not the bridge.
fn host_veth(result: &Value, bridge: &str) -> String {
    let ifaces = result["interfaces"].as_array().expect("interfaces in result");
    let veth = ifaces.iter().find(|i| i.get("sandbox").is_none() && i["name"] != bridge);
    veth.and_then(|i| i["name"].as_str()).expect("host veth in result").to_string()
}

#[test]
fn bridge_plugin_add_check_del_in_scratch_netns() {
    if let Some(why) = skip_reason() {
        eprintln!("network::bridge_test skipped: {why}");
        return;
    }
    let tag = format!("{:04x}", rand::random::<u16>());
    let third = (0..50).map(|_| rand::random::<u8>()).find(|n| {
        let (_, routes) = run(&["ip", "-4", "route", "show", "table", "all"]);
        !routes.contains(&format!("10.254.{n}.")) && !run(&["ip", "-4", "addr"]).1.contains(&format!("10.254.{n}."))
    });
    let subnet = format!("10.254.{}.0/24", third.expect("a free 10.254.x.0/24"));
    let host = Host {
        netns: format!("cricket-cnitest-{tag}"),
        bridge: format!("crkt{tag}"),
        dir: std::env::temp_dir().join(format!("cricket-cnitest-{tag}")),
        subnet_prefix: subnet.trim_end_matches("0/24").to_string(),
        forward: FORWARD.iter().map(|p| std::fs::read_to_string(p).ok()).collect(),
        portmap_chains_existed: run(&["iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]).0,
    };
    let conf_dir = host.dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let ipam_dir = host.dir.join("ipam");
    let list = json!({"cniVersion": "1.0.0", "name": format!("cnitest-{tag}"), "plugins": [
        {"type": "bridge", "bridge": host.bridge, "isGateway": true, "ipMasq": false,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": ipam_dir}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]});
    std::fs::write(conf_dir.join("10-test.conflist"), list.to_string()).unwrap();
    assert!(run(&["ip", "netns", "add", &host.netns]).0, "ip netns add");
    let netns = PathBuf::from("/run/netns").join(&host.netns);

    let cfg = CniConfig { conf_dir, bin_dirs: vec![PLUGINS.into()], timeout_secs: 60 };
    let cni = Cni::new(&cfg, Duration::from_secs(30));
    let net = cni.network().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let host_port = 20000 + i32::from(rand::random::<u16>() % 10000);
    let id = format!("cnitest{tag}");
    let p = pod(&netns, &id, host_port);

    let result = rt.block_on(cni.add(&net, &p)).unwrap();
    let ip = result.ips.first().copied().expect("an IP");
    assert!(ip.is_ipv4() && ip.to_string().starts_with(&host.subnet_prefix), "{ip} in {subnet}");
    let veth = host_veth(&result.raw, &host.bridge);
    assert!(run(&["ip", "link", "show", "dev", &veth]).0, "veth {veth} exists");
    assert!(run(&["ip", "netns", "exec", &host.netns, "ip", "-4", "addr", "show", "dev", "eth0"])
        .1
        .contains(&ip.to_string()));
    let ip_file = ipam_dir.join(&net.name).join(ip.to_string());
    assert!(ip_file.exists(), "host-local recorded {ip}");
    let dnat = format!("{ip}:80");
    assert!(run(&["iptables-save", "-t", "nat"]).1.contains(&dnat), "portmap DNAT to {dnat}");
    if run(&["ping", "-V"]).0 {
        let ok = (0..3).any(|_| run(&["ping", "-c1", "-W1", &ip.to_string()]).0);
        assert!(ok, "ping {ip}");
    } else {
        eprintln!("network::bridge_test: ping not installed (iputils-ping); skipping the ping");
    }
    // CHECK on the bridge alone: portmap before 1.2 fails CHECK on IPv4-only pods
    // (containernetworking/plugins#819).
    let mut bridge_only = (*net).clone();
    bridge_only.raw["plugins"].as_array_mut().unwrap().truncate(1);
    rt.block_on(cni.check(&bridge_only, &p, &result.raw)).unwrap();

    rt.block_on(cni.del(&net, &p, Some(&result.raw))).unwrap();
    assert!(!run(&["ip", "link", "show", "dev", &veth]).0, "veth {veth} removed");
    assert!(!ip_file.exists(), "{ip} released");
    assert!(!run(&["iptables-save", "-t", "nat"]).1.contains(&dnat), "DNAT removed");
    rt.block_on(cni.del(&net, &p, Some(&result.raw))).expect("DEL is idempotent");

    // With the netns already gone, DEL still releases the address.
    let again = rt.block_on(cni.add(&net, &p)).unwrap();
    let ip_file = ipam_dir.join(&net.name).join(again.ips[0].to_string());
    assert!(ip_file.exists());
    assert!(run(&["ip", "netns", "del", &host.netns]).0);
    rt.block_on(cni.del(&net, &p, Some(&again.raw))).unwrap();
    assert!(!ip_file.exists(), "released without the netns");
    assert!(!run(&["iptables-save", "-t", "nat"]).1.contains(&format!("{}:80", again.ips[0])));
}
