//! Config discovery and plugin invocation against fake plugins: shell scripts that record
//! their environment and stdin, then print a canned answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

struct Fixture {
    dir: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    log: PathBuf,
}

const RESULT_1: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}"#;
const RESULT_2: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"},{"address":"10.1.0.5/24"}]}"#;

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("cricket-cni-test-{:016x}", rand::random::<u64>()));
        let f = Fixture { conf: dir.join("net.d"), bin: dir.join("bin"), log: dir.join("log"), dir };
        for d in [&f.conf, &f.bin, &f.log] {
            std::fs::create_dir_all(d).unwrap();
        }
        f
    }

    fn cfg(&self) -> CniConfig {
        CniConfig {
            conf_dir: self.conf.clone(),
            bin_dirs: vec![self.dir.join("nowhere"), self.bin.clone()],
            timeout_secs: 60,
        }
    }

    fn cni(&self, timeout: Duration) -> Cni {
        Cni::new(&self.cfg(), timeout)
    }

    /// A plugin that records its call, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let log = self.log.display();
        let script = format!(
            "#!/bin/sh\ncat > {log}/{name}.$CNI_COMMAND.stdin\nenv | grep ^CNI_ | sort > {log}/{name}.$CNI_COMMAND.env\n\
             echo \"{name} $CNI_COMMAND\" >> {log}/calls\n{body}\n"
        );
        let path = self.bin.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn conf_file(&self, name: &str, text: &str) {
        std::fs::write(self.conf.join(name), text).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log.join("calls")).unwrap_or_default();
        let calls = text.lines().map(str::to_string).collect();
        let _ = std::fs::remove_file(self.log.join("calls"));
        calls
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.log.join(format!("{plugin}.{command}.stdin"))).unwrap()).unwrap()
    }

    fn env(&self, plugin: &str, command: &str) -> String {
        std::fs::read_to_string(self.log.join(format!("{plugin}.{command}.env"))).unwrap()
    }

    /// p1 then p2 (which declares portMappings), as a list of `version`.
    fn two_plugins(&self, version: &str) -> Arc<NetworkList> {
        self.plugin("p1", &format!("echo '{RESULT_1}'"));
        self.plugin("p2", &format!("echo '{RESULT_2}'"));
        let list = json!({"cniVersion": version, "name": "net", "plugins": [
            {"type": "p1", "bridge": "br0"},
            {"type": "p2", "capabilities": {"portMappings": true, "bandwidth": true}}]});
        self.conf_file("10-net.conflist", &list.to_string());
        self.cni(Duration::from_secs(10)).network().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod(netns: &Path) -> PodNetwork<'_> {
    PodNetwork {
        sandbox_id: "sb1",
        netns,
        ifname: "eth0",
        pod_name: "web",
        pod_namespace: "default",
        pod_uid: "uid-1",
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: "".into(),
        }],
        bandwidth: None,
        dns: None,
        cgroup_path: None,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn network_config_order_reasons_and_reload() {
    let f = Fixture::new();
    let cni = f.cni(Duration::from_secs(1));
    assert!(cni.network().unwrap_err().to_string().contains("no network config found"));
    f.conf_file("05-bad.conflist", "{not json");
    f.conf_file("10-b.conf", r#"{"cniVersion":"0.4.0","name":"b","type":"p1"}"#);
    f.conf_file("20-a.conflist", r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"p1"},{"type":"p2"}]}"#);
    f.conf_file("README", "not a config");
    let err = cni.network().unwrap_err().to_string();
    assert!(err.contains("05-bad.conflist: invalid JSON"), "{err}");
    assert!(err.contains("10-b.conf: plugin \"p1\" not found in"), "{err}");

    // A plugin installed later makes the .conf usable; it is wrapped into a list.
    f.plugin("p1", "true");
    let b = cni.network().unwrap();
    assert_eq!((b.name.as_str(), b.cni_version.as_str(), b.plugins().len()), ("b", "0.4.0", 1));
    assert!(Arc::ptr_eq(&b, &cni.network().unwrap()), "unchanged dir is served from the cache");
    assert_eq!(find_network(&f.cfg()).unwrap(), (f.conf.join("10-b.conf"), "b".to_string()));

    // Added, changed and removed files are picked up without a restart.
    f.conf_file("01-c.conflist", r#"{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"p1"}]}"#);
    assert_eq!(cni.network().unwrap().name, "c");
    f.conf_file("01-c.conflist", r#"{"cniVersion":"1.0.0","name":"c2","plugins":[{"type":"p1"}]}"#);
    assert_eq!(cni.network().unwrap().name, "c2");
    std::fs::remove_file(f.conf.join("01-c.conflist")).unwrap();
    assert_eq!(cni.network().unwrap().name, "b");
}

#[test]
fn add_chains_prev_result_and_sets_env() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    let ns = f.dir.join("netns");
    std::fs::write(&ns, "").unwrap();
    let result = block_on(f.cni(Duration::from_secs(10)).add(&net, &pod(&ns))).unwrap();
    assert_eq!(f.calls(), ["p1 ADD", "p2 ADD"]);
    assert_eq!(result.ips, ["10.1.0.5".parse::<std::net::IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
    assert_eq!(result.raw, serde_json::from_str::<Value>(RESULT_2).unwrap());

    let first = f.stdin("p1", "ADD");
    assert_eq!(first, json!({"type": "p1", "bridge": "br0", "name": "net", "cniVersion": "1.0.0"}));
    let second = f.stdin("p2", "ADD");
    assert_eq!(second["prevResult"], serde_json::from_str::<Value>(RESULT_1).unwrap());
    assert_eq!(
        second["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );

    let env = f.env("p1", "ADD");
    let want = format!(
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1\n\
         CNI_COMMAND=ADD\nCNI_CONTAINERID=sb1\nCNI_IFNAME=eth0\nCNI_NETNS={}\nCNI_PATH={}:{}\n",
        ns.display(),
        f.dir.join("nowhere").display(),
        f.bin.display()
    );
    assert_eq!(env, want);
}

#[test]
fn del_runs_in_reverse_with_prev_result() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]});
    let gone = f.dir.join("no-such-netns");
    let cni = f.cni(Duration::from_secs(10));
    block_on(cni.del(&net, &pod(&gone), Some(&prev))).unwrap();
    assert_eq!(f.calls(), ["p2 DEL", "p1 DEL"]);
    assert_eq!(f.stdin("p1", "DEL")["prevResult"], prev);
    assert_eq!(f.stdin("p2", "DEL")["prevResult"], prev);
    assert!(f.env("p1", "DEL").contains("CNI_NETNS=\n"), "a missing netns is passed empty");

    // Before 0.4.0 there is no prevResult on DEL.
    let old = f.two_plugins("0.3.1");
    block_on(cni.del(&old, &pod(&gone), Some(&prev))).unwrap();
    assert_eq!(f.calls(), ["p2 DEL", "p1 DEL"]);
    assert!(f.stdin("p1", "DEL").get("prevResult").is_none());
}

#[test]
fn check_only_from_0_4_0_and_unless_disabled() {
    let f = Fixture::new();
    let prev: Value = serde_json::from_str(RESULT_2).unwrap();
    let ns = f.dir.join("netns");
    let cni = f.cni(Duration::from_secs(10));
    let net = f.two_plugins("0.4.0");
    block_on(cni.check(&net, &pod(&ns), &prev)).unwrap();
    assert_eq!(f.calls(), ["p1 CHECK", "p2 CHECK"]);
    assert_eq!(f.stdin("p2", "CHECK")["prevResult"], prev);

    let old = f.two_plugins("0.3.1");
    block_on(cni.check(&old, &pod(&ns), &prev)).unwrap();
    assert!(f.calls().is_empty());
    let mut disabled = (*net).clone();
    disabled.raw["disableCheck"] = json!(true);
    block_on(cni.check(&disabled, &pod(&ns), &prev)).unwrap();
    assert!(f.calls().is_empty());
}

#[test]
fn plugin_errors_carry_code_msg_details_stderr() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    f.plugin(
        "p2",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"try later","details":"lock busy"}'; echo oops >&2; exit 1"#,
    );
    let ns = f.dir.join("netns");
    let err = block_on(f.cni(Duration::from_secs(10)).add(&net, &pod(&ns))).unwrap_err();
    match &err {
        NetworkError::Plugin(p) => {
            assert_eq!((p.plugin.as_str(), p.command, p.code), ("p2", "ADD", Some(11)));
            assert_eq!((p.msg.as_str(), p.details.as_str(), p.stderr.as_str()), ("try later", "lock busy", "oops"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.to_string(), "CNI plugin p2 ADD failed: [code 11] try later (lock busy); stderr: oops");
    // The failed ADD is undone, without a prevResult.
    assert_eq!(f.calls(), ["p1 ADD", "p2 ADD", "p2 DEL", "p1 DEL"]);
    assert!(f.stdin("p1", "DEL").get("prevResult").is_none());

    // Not an error object: stdout becomes the message; silence names the exit status.
    f.plugin("p2", "echo boom; exit 2");
    let err = block_on(f.cni(Duration::from_secs(10)).add(&net, &pod(&ns))).unwrap_err();
    assert!(matches!(&err, NetworkError::Plugin(p) if p.code.is_none() && p.msg == "boom"), "{err:?}");
    f.plugin("p2", "exit 3");
    let err = block_on(f.cni(Duration::from_secs(10)).del(&net, &pod(&ns), None)).unwrap_err();
    assert!(err.to_string().contains("exited with exit status: 3"), "{err}");
    // DEL went on to p1 after p2 failed.
    assert!(f.calls().ends_with(&["p2 DEL".to_string(), "p1 DEL".to_string()]));

    // Garbage on success is a bad result for ADD.
    f.plugin("p2", "echo not-json");
    let err = block_on(f.cni(Duration::from_secs(10)).add(&net, &pod(&ns))).unwrap_err();
    assert!(matches!(&err, NetworkError::BadResult { plugin, .. } if plugin == "p2"), "{err:?}");
}

#[test]
fn slow_plugin_times_out_and_is_killed() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    f.plugin("p1", "exec sleep 30");
    let started = Instant::now();
    let cni = f.cni(Duration::from_millis(300));
    let err = block_on(cni.add(&net, &pod(&f.dir.join("netns")))).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(&err, NetworkError::Timeout { plugin, command: "ADD", .. } if plugin == "p1"), "{err:?}");
    assert!(err.to_string().contains("within 300ms"), "{err}");
}

#[test]
fn plugin_removed_after_loading_is_reported() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    std::fs::remove_file(f.bin.join("p2")).unwrap();
    let err = block_on(f.cni(Duration::from_secs(10)).del(&net, &pod(&f.dir.join("netns")), None)).unwrap_err();
    assert!(matches!(&err, NetworkError::PluginNotFound { plugin, .. } if plugin == "p2"), "{err:?}");
    assert_eq!(f.calls(), ["p1 DEL"]);
}

#[test]
fn runtime_config_merges_into_static_one() {
    let f = Fixture::new();
    let net = f.two_plugins("1.0.0");
    let plugin =
        json!({"type": "p2", "capabilities": {"portMappings": true}, "runtimeConfig": {"x": 1}, "prevResult": {}});
    let conf = cni::plugin_config(&net, &plugin, None, &pod(Path::new("/x")));
    assert_eq!(conf["runtimeConfig"]["x"], 1);
    assert_eq!(conf["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(conf.get("prevResult").is_none(), "a static prevResult is not passed on");
}

#[test]
fn shipped_example_config_loads() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cni/10-cricket-bridge.conflist");
    let list = NetworkList::parse(&file, &std::fs::read(&file).unwrap()).unwrap();
    assert_eq!((list.name.as_str(), list.cni_version.as_str()), ("cricket", "1.0.0"));
    let types: Vec<&str> = list.plugins().iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types, ["bridge", "portmap"]);
    assert_eq!(list.plugins()[1]["capabilities"]["portMappings"], true);
    assert_eq!(list.plugins()[0]["bridge"], "cricket0");
}
