//! End-to-end tests of pod sandboxes: the real `cricket serve` running pods
//! through CRI, with Debian's CNI bridge, host-local and portmap plugins on a
//! bridge and subnet of each test's own. Each test checks what it left on the
//! host: mounts, dirs, veths, IP reservations, iptables rules, cgroups, processes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
const NOTREADY: i32 = cri::PodSandboxState::SandboxNotready as i32;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A host port no other test of this process uses (hostPort rules match on the port alone).
fn host_port() -> i32 {
    static NEXT: AtomicI32 = AtomicI32::new(0);
    let _ =
        NEXT.compare_exchange(0, 20000 + i32::from(rand::random::<u16>() % 20000), Ordering::SeqCst, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

const RESOLV: &str = "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";

/// A pod with everything set: hostname `<name>-host`, labels, annotations, a TCP
/// hostPort to port 80, DNS, an IPC and a net sysctl.
fn full_config(name: &str, host_port: i32) -> cri::PodSandboxConfig {
    let mut c = pod_config(name);
    c.hostname = format!("{name}-host");
    c.labels = map(&[("app", "web"), ("tier", "front")]);
    c.annotations = map(&[("example.com/note", "hello pod"), ("example.com/owner", "tests")]);
    c.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port,
        host_ip: String::new(),
    }];
    c.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    c.linux = Some(cri::LinuxPodSandboxConfig {
        sysctls: map(&[("kernel.shm_rmid_forced", "1"), ("net.ipv4.ip_unprivileged_port_start", "0")]),
        ..Default::default()
    });
    c
}

fn with_namespaces(mut c: cri::PodSandboxConfig, options: cri::NamespaceOption) -> cri::PodSandboxConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    linux.security_context =
        Some(cri::LinuxSandboxSecurityContext { namespace_options: Some(options), ..Default::default() });
    c
}

fn pod_ip(status: &cri::PodSandboxStatus) -> String {
    status.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default()
}

/// A process by PID and start time, so a reused PID is not mistaken for it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn of(pid: i32) -> Proc {
        Proc { pid, start: proc_start_time(pid).unwrap_or_else(|| panic!("process {pid} does not exist")) }
    }

    fn running(self) -> bool {
        proc_start_time(self.pid) == Some(self.start) && is_running(self.pid)
    }

    fn zombie(self) -> bool {
        proc_start_time(self.pid) == Some(self.start) && process_state(self.pid) == Some('Z')
    }
}

/// The pod-init of a sandbox, from verbose status.
fn init_of(info: &serde_json::Value) -> Option<Proc> {
    info["init"]["pid"].as_i64().map(|pid| Proc::of(pid as i32))
}

/// Everything on the host this test can attribute to its daemon and network.
#[derive(Debug, PartialEq)]
struct Traces {
    run_mounts: Vec<(PathBuf, String)>,
    root_dirs: BTreeSet<String>,
    run_dirs: BTreeSet<String>,
    veths: BTreeSet<String>,
    ipam_ips: BTreeSet<String>,
    iptables: Vec<String>,
    helpers: Vec<i32>,
}

fn traces(d: &Daemon, net: &TestNet) -> Traces {
    let (root_dirs, run_dirs) = d.sandbox_dirs();
    Traces {
        run_mounts: d.run_mounts(),
        root_dirs,
        run_dirs,
        veths: net.veths(),
        ipam_ips: d.ipam_ips(net),
        iptables: net.iptables_rules(),
        helpers: d.helper_pids(),
    }
}

/// Asserts the sandboxes `ids` left nothing: traces as `before`, no pod cgroup, no CNI
/// chain, their pod-inits dead.
fn assert_clean(d: &Daemon, net: &TestNet, before: &Traces, ids: &[String], inits: &[Proc]) {
    // stop SIGKILLs pod-init without waiting for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while inits.iter().any(|p| p.running()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive: Vec<&Proc> = inits.iter().filter(|p| p.running()).collect();
    assert!(alive.is_empty(), "pod-init processes still running: {alive:?}");
    assert_eq!(&traces(d, net), before, "host traces after removing {} sandboxes", ids.len());
    let cgroups: Vec<PathBuf> = ids.iter().flat_map(|id| pod_cgroup_dirs(id)).collect();
    assert!(cgroups.is_empty(), "pod cgroups left: {cgroups:?}");
    let chains = net.existing_chains(ids);
    assert!(chains.is_empty(), "CNI iptables chains left: {chains:?}");
}

/// Stops the daemon, then checks and cleans the network (bridge, iptables, forwarding).
fn finish(d: Daemon, net: TestNet) {
    drop(d);
    net.finish();
}

fn nsenter(ns: &str, pin: &Path, cmd: &[&str]) -> String {
    let flag = format!("--{ns}={}", pin.display());
    let mut args = vec!["nsenter", flag.as_str()];
    args.extend_from_slice(cmd);
    let (ok, out) = sh(&args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// Listens on `port` inside the network namespace pinned at `pin` (from a thread of its
/// own: setns moves only the calling thread) and answers the first connection with `reply`.
fn serve_in_netns(pin: PathBuf, port: u16, reply: &'static [u8]) -> std::thread::JoinHandle<std::io::Result<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns_file = pin.clone();
    let handle = std::thread::spawn(move || -> std::io::Result<()> {
        let ns = std::fs::File::open(&ns_file)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false)?;
                    return conn.write_all(reply);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        panic!("listener in {} did not start: {:?}", pin.display(), handle.join());
    }
    handle
}

fn fetch(addr: &str) -> std::io::Result<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply)
}

fn sysctl(key: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/"))).unwrap().trim().to_string()
}

fn host_name() -> String {
    nix::unistd::gethostname().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_applies_its_config() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "[runtimes.crk-test]\ntype = \"linux\"\n").await;
    let before = traces(&d, &net);
    let host_shm_rmid = sysctl("kernel.shm_rmid_forced");
    let host_port_start = sysctl("net.ipv4.ip_unprivileged_port_start");
    let port = host_port();
    let mut config = full_config("web-1", port);
    config.metadata.as_mut().unwrap().attempt = 2;

    let id = d.run_pod(config.clone(), "crk-test").await.expect("RunPodSandbox");
    assert_eq!(id.len(), 64, "{id}");
    let (status, info) = d.pod_info(&id).await;
    assert_eq!((status.id.as_str(), status.state), (id.as_str(), READY), "{status:?}");
    assert_eq!(status.metadata, config.metadata);
    assert_eq!(status.labels, config.labels);
    assert_eq!(status.annotations, config.annotations);
    assert_eq!(status.runtime_handler, "crk-test");
    assert!(status.created_at > 0);
    let ip = pod_ip(&status);
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok() && ip.starts_with(&net.prefix), "IP {ip:?} in {}", net.subnet);
    assert_ne!(ip, net.gateway);
    assert!(net.ping(&ip), "ping {ip}");

    // The files containers will mount.
    let files = d.root.join("sandboxes").join(&id);
    assert_eq!(std::fs::read_to_string(files.join("hostname")).unwrap(), "web-1-host\n");
    let hosts = std::fs::read_to_string(files.join("hosts")).unwrap();
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.ends_with(&format!("{ip}\tweb-1-host\n")), "{hosts}");
    assert_eq!(std::fs::read_to_string(files.join("resolv.conf")).unwrap(), RESOLV);

    // Pinned namespaces and shm are mounts under the run dir.
    let run = d.run.join("sandboxes").join(&id);
    let ns = run.join("ns");
    let mounts = d.run_mounts();
    for kind in ["net", "ipc", "uts"] {
        assert!(mounts.contains(&(ns.join(kind), "nsfs".into())), "{kind} pinned: {mounts:?}");
    }
    assert!(mounts.contains(&(run.join("shm"), "tmpfs".into())), "shm mounted: {mounts:?}");

    // Inside the pod's network namespace: lo up, eth0 with the IP, the default route via the bridge.
    let links = nsenter("net", &ns.join("net"), &["ip", "-o", "link", "show"]);
    let lo = links.lines().find(|l| l.contains(": lo:")).unwrap_or_else(|| panic!("no lo: {links}"));
    assert!(lo.contains(",UP") || lo.contains("<UP"), "lo is up: {lo}");
    let addrs = nsenter("net", &ns.join("net"), &["ip", "-o", "-4", "addr", "show"]);
    assert!(addrs.lines().any(|l| l.contains(" eth0 ") && l.contains(&format!("inet {ip}/24"))), "{addrs}");
    assert!(addrs.lines().any(|l| l.contains(" lo ") && l.contains("inet 127.0.0.1/8")), "{addrs}");
    let routes = nsenter("net", &ns.join("net"), &["ip", "-4", "route", "show", "default"]);
    assert!(routes.contains(&format!("via {}", net.gateway)), "{routes}");
    // UTS: the hostname. Sysctls: set in the pod's namespaces, not on the host.
    assert_eq!(nsenter("uts", &ns.join("uts"), &["hostname"]).trim(), "web-1-host");
    assert_eq!(nsenter("ipc", &ns.join("ipc"), &["cat", "/proc/sys/kernel/shm_rmid_forced"]).trim(), "1");
    let port_start = nsenter("net", &ns.join("net"), &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    assert_eq!(port_start.trim(), "0");
    assert_eq!(sysctl("kernel.shm_rmid_forced"), host_shm_rmid, "host value untouched");
    assert_eq!(sysctl("net.ipv4.ip_unprivileged_port_start"), host_port_start, "host value untouched");

    // Verbose info: namespaces, cgroup, init.
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(info["namespaces"][kind], ns.join(kind).display().to_string(), "{info}");
    }
    assert!(info["cgroup"].to_string().contains(&format!("pod-{id}")), "cgroup in {info}");
    assert_eq!(info["cgroupCreated"], true, "{info}");
    let init = init_of(&info).expect("pod-init (pid namespace POD by default)");
    assert!(init.running());

    // The pod cgroup exists in every v1 hierarchy.
    let hierarchies = cgroup_v1_mounts();
    assert!(!hierarchies.is_empty(), "cgroup v1 expected on this machine");
    for h in &hierarchies {
        let dir = h.join("cricket").join(format!("pod-{id}"));
        assert!(dir.is_dir(), "{} missing", dir.display());
    }
    // The init sits in the pod's pod-init cgroup in every hierarchy.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", init.pid)).unwrap();
    for line in cgroups.lines().filter(|l| !l.starts_with("0::")) {
        assert!(line.ends_with(&format!("/cricket/pod-{id}/pod-init")), "{line} in\n{cgroups}");
    }

    // The hostPort: portmap's DNAT, and a real connection through it to a listener in the pod.
    let rules = net.iptables_rules();
    assert!(
        rules.iter().any(|r| r.contains(&format!("--to-destination {ip}:80")) && r.contains(&port.to_string())),
        "DNAT {port} -> {ip}:80 in\n{}",
        rules.join("\n")
    );
    assert_eq!(net.existing_chains(std::slice::from_ref(&id)).len(), 2, "ipMasq and DNAT chains of {id}");
    let server = serve_in_netns(ns.join("net"), 80, b"hello from the pod");
    let reply = fetch(&format!("{}:{port}", net.gateway));
    assert_eq!(reply.as_ref().map(String::as_str).ok(), Some("hello from the pod"), "{reply:?} via hostPort {port}");
    server.join().unwrap().expect("pod listener");

    d.stop_pod(&id).await.expect("StopPodSandbox");
    d.remove_pod(&id).await.expect("RemovePodSandbox");
    assert_clean(&d, &net, &before, &[id], &[init]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_rejected_requests() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let mut a = pod_config("a");
    a.labels = map(&[("app", "web"), ("tier", "front")]);
    let mut b = pod_config("b");
    b.labels = map(&[("app", "web"), ("tier", "back")]);
    let mut c = pod_config("c");
    c.labels = map(&[("app", "db")]);
    let a_id = d.run_pod(a.clone(), "").await.expect("run a");
    let b_id = d.run_pod(b.clone(), "").await.expect("run b");
    let c_id = d.run_pod(c.clone(), "").await.expect("run c");
    d.stop_pod(&c_id).await.expect("stop c");

    let ids = |pods: Vec<cri::PodSandbox>| -> BTreeSet<String> { pods.into_iter().map(|p| p.id).collect() };
    let set = |v: &[&String]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    let filter = |id: &str, state: Option<i32>, labels: &[(&str, &str)]| {
        Some(cri::PodSandboxFilter {
            id: id.to_string(),
            state: state.map(|state| cri::PodSandboxStateValue { state }),
            label_selector: map(labels),
        })
    };

    let all = d.list_pods(None).await;
    assert_eq!(ids(all.clone()), set(&[&a_id, &b_id, &c_id]));
    for pod in &all {
        let (config, state) = if pod.id == a_id {
            (&a, READY)
        } else if pod.id == b_id {
            (&b, READY)
        } else {
            (&c, NOTREADY)
        };
        assert_eq!((&pod.metadata, &pod.labels, pod.state), (&config.metadata, &config.labels, state), "{pod:?}");
        assert!(pod.created_at > 0);
    }
    // By ID: a prefix, or the whole ID.
    assert_eq!(ids(d.list_pods(filter(&a_id[..12], None, &[])).await), set(&[&a_id]));
    assert_eq!(ids(d.list_pods(filter(&b_id, None, &[])).await), set(&[&b_id]));
    assert_eq!(ids(d.list_pods(filter("nothex", None, &[])).await), set(&[]));
    // By state.
    assert_eq!(ids(d.list_pods(filter("", Some(READY), &[])).await), set(&[&a_id, &b_id]));
    assert_eq!(ids(d.list_pods(filter("", Some(NOTREADY), &[])).await), set(&[&c_id]));
    // By labels: every pair must match.
    assert_eq!(ids(d.list_pods(filter("", None, &[("app", "web")])).await), set(&[&a_id, &b_id]));
    assert_eq!(ids(d.list_pods(filter("", None, &[("app", "web"), ("tier", "back")])).await), set(&[&b_id]));
    assert_eq!(ids(d.list_pods(filter("", None, &[("app", "web"), ("tier", "db")])).await), set(&[]));
    assert_eq!(ids(d.list_pods(filter("", None, &[("tier", "")])).await), set(&[]));
    // All together.
    assert_eq!(ids(d.list_pods(filter("", Some(NOTREADY), &[("app", "web")])).await), set(&[]));
    assert_eq!(ids(d.list_pods(filter("", Some(NOTREADY), &[("app", "db")])).await), set(&[&c_id]));
    assert_eq!(ids(d.list_pods(filter(&a_id[..8], Some(READY), &[("tier", "front")])).await), set(&[&a_id]));

    // Rejected requests leave nothing behind.
    let middle = traces(&d, &net);
    let err = d.run_pod(a.clone(), "").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&a_id), "names the holder: {err:?}");
    // Same even when stopped: the name is held until removal.
    let err = d.run_pod(c.clone(), "").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let err = d.run_pod(pod_config("h"), "no-such-handler").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("no-such-handler"), "{err:?}");

    let mut unsafe_sysctl = pod_config("s");
    unsafe_sysctl.linux =
        Some(cri::LinuxPodSandboxConfig { sysctls: map(&[("kernel.pid_max", "4194304")]), ..Default::default() });
    let err = d.run_pod(unsafe_sysctl.clone(), "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kernel.pid_max"), "{err:?}");

    // A failure late in setup (the bandwidth annotation is read just before CNI ADD, after
    // the cgroup, namespaces, pod-init and shm exist): all of it is undone. A cgroup parent
    // of this test's own shows the cgroup going.
    let parent = format!("crktest-{}", &net.bridge[3..]);
    let mut late = pod_config("late");
    late.annotations = map(&[("kubernetes.io/ingress-bandwidth", "10X")]);
    late.linux = Some(cri::LinuxPodSandboxConfig { cgroup_parent: format!("/{parent}"), ..Default::default() });
    let err = d.run_pod(late, "").await.unwrap_err();
    assert!(err.message().contains("kubernetes.io/ingress-bandwidth"), "{err:?}");
    assert!(cgroup_dirs(&parent).is_empty(), "cgroup of the failed pod left: {:?}", cgroup_dirs(&parent));

    assert_eq!(traces(&d, &net), middle, "traces of the rejected requests");
    assert_eq!(ids(d.list_pods(None).await), set(&[&a_id, &b_id, &c_id]));
    // The failed attempts reserved no names.
    unsafe_sysctl.linux = None;
    let s_id = d.run_pod(unsafe_sysctl, "").await.expect("the name of a rejected pod is free");
    // A new attempt of a pod is a new name.
    let mut a1 = a.clone();
    a1.metadata.as_mut().unwrap().attempt = 1;
    let a1_id = d.run_pod(a1, "").await.expect("attempt 1");
    // After removal, the name is free again.
    d.remove_pod(&c_id).await.expect("remove c");
    let c2_id = d.run_pod(c, "").await.expect("c's name is free after removal");

    let all = [a_id, b_id, c_id, s_id, a1_id, c2_id];
    for id in &all {
        d.stop_pod(id).await.expect("stop");
        d.remove_pod(id).await.expect("remove");
    }
    assert!(d.list_pods(None).await.is_empty());
    assert_clean(&d, &net, &before, &all, &[]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_release_everything() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let id = d.run_pod(full_config("stopme", host_port()), "").await.expect("RunPodSandbox");
    let (status, info) = d.pod_info(&id).await;
    let ip = pod_ip(&status);
    let init = init_of(&info).expect("pod-init");
    assert!(net.ping(&ip), "ping {ip}");
    let veths = net.veths();
    assert_eq!(veths.len(), 1, "one veth on {}: {veths:?}", net.bridge);
    assert_eq!(d.ipam_ips(&net), BTreeSet::from([ip.clone()]), "host-local holds {ip}");
    let ip_file = d.ipam_dir.join(&net.name).join(&ip);
    assert!(ip_file.exists());

    // DEL uses the network config ADD used, even when it is gone from the conf dir meanwhile.
    let conflist = d.cni_dir.join("10-test.conflist");
    let saved = std::fs::read(&conflist).unwrap();
    std::fs::remove_file(&conflist).unwrap();
    d.stop_pod(&id).await.expect("StopPodSandbox");
    std::fs::write(&conflist, saved).unwrap();
    let status = d.pod_status(&id).await.expect("status after stop");
    assert_eq!(status.state, NOTREADY);
    assert!(!net.ping(&ip), "{ip} still answers after stop");
    // CNI DEL ran: veth, IP reservation and iptables rules gone.
    assert!(net.veths().is_empty(), "veths after stop: {:?}", net.veths());
    assert!(!ip_file.exists(), "{} after stop", ip_file.display());
    assert!(net.iptables_rules().is_empty(), "{:?}", net.iptables_rules());
    assert!(net.existing_chains(std::slice::from_ref(&id)).is_empty());
    // Namespaces and shm released, pod-init gone; the state stays until removal.
    assert!(d.run_mounts().is_empty(), "mounts after stop: {:?}", d.run_mounts());
    let deadline = Instant::now() + Duration::from_secs(5);
    while init.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!init.running(), "pod-init {} survived stop", init.pid);
    assert!(d.root.join("sandboxes").join(&id).join("state.json").exists());
    assert_eq!(d.list_pods(None).await.len(), 1);

    d.stop_pod(&id).await.expect("second stop");
    assert_eq!(d.pod_status(&id).await.unwrap().state, NOTREADY);
    d.remove_pod(&id).await.expect("RemovePodSandbox");
    let err = d.pod_status(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(d.list_pods(None).await.is_empty());
    d.remove_pod(&id).await.expect("second remove");
    d.stop_pod(&id).await.expect("stop after remove");

    // Unknown IDs: stop and remove succeed, status is NOT_FOUND.
    let unknown = "0123456789abcdef".repeat(4);
    d.stop_pod(&unknown).await.expect("stop of an unknown ID");
    d.remove_pod(&unknown).await.expect("remove of an unknown ID");
    let err = d.pod_status(&unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Removing a ready pod stops it first.
    let id2 = d.run_pod(full_config("rmready", host_port()), "").await.expect("RunPodSandbox");
    let (status, info) = d.pod_info(&id2).await;
    let init2 = init_of(&info).expect("pod-init");
    d.remove_pod(&id2).await.expect("remove without stop");
    assert!(!net.ping(&pod_ip(&status)));
    assert!(d.list_pods(None).await.is_empty());

    assert_clean(&d, &net, &before, &[id, id2], &[init, init2]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let options = cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() };
    let mut config = with_namespaces(pod_config("hostnet"), options);
    config.hostname = "ignored-for-host-network".into();
    let id = d.run_pod(config, "").await.expect("RunPodSandbox");
    let (status, info) = d.pod_info(&id).await;
    assert_eq!(status.state, READY);
    let network = status.network.clone().unwrap_or_default();
    assert_eq!((network.ip.as_str(), network.additional_ips.len()), ("", 0), "{network:?}");

    let ns = d.run.join("sandboxes").join(&id).join("ns");
    assert!(!ns.join("net").exists() && !ns.join("uts").exists(), "no net/uts pins");
    assert!(d.run_mounts().contains(&(ns.join("ipc"), "nsfs".into())), "own IPC namespace pinned");
    assert!(info["namespaces"].get("net").is_none() && info["namespaces"].get("uts").is_none(), "{info}");
    let files = d.root.join("sandboxes").join(&id);
    assert_eq!(std::fs::read_to_string(files.join("hostname")).unwrap(), format!("{}\n", host_name()));
    let hosts = std::fs::read_to_string(files.join("hosts")).unwrap();
    assert!(!hosts.contains(&net.prefix), "{hosts}");
    // No DNS config: the host's resolv.conf.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert_eq!(std::fs::read_to_string(files.join("resolv.conf")).unwrap(), host_resolv);
    // No CNI at all.
    assert!(net.veths().is_empty() && d.ipam_ips(&net).is_empty() && net.iptables_rules().is_empty());

    // pod-init shares the host's network and UTS namespaces, not its PID namespace.
    let init = init_of(&info).expect("pod-init");
    let pid = init.pid.to_string();
    assert_eq!(ns_link(&pid, "net"), ns_link("self", "net"));
    assert_eq!(ns_link(&pid, "uts"), ns_link("self", "uts"));
    assert_ne!(ns_link(&pid, "ipc"), ns_link("self", "ipc"));
    assert_ne!(ns_link(&pid, "pid"), ns_link("self", "pid"));

    d.stop_pod(&id).await.expect("stop");
    assert_eq!(d.pod_status(&id).await.unwrap().state, NOTREADY);
    d.remove_pod(&id).await.expect("remove");
    assert_clean(&d, &net, &before, &[id], &[init]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_runs_pod_init() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let pid_mode = |mode: cri::NamespaceMode| cri::NamespaceOption { pid: mode as i32, ..Default::default() };
    let mut ids = Vec::new();
    let mut inits = Vec::new();

    // POD is the CRI default: no security context at all means the same.
    for (name, config) in [
        ("pid-default", pod_config("pid-default")),
        ("pid-pod", with_namespaces(pod_config("pid-pod"), pid_mode(cri::NamespaceMode::Pod))),
    ] {
        let id = d.run_pod(config, "").await.expect(name);
        let (_, info) = d.pod_info(&id).await;
        let init = init_of(&info).unwrap_or_else(|| panic!("{name}: no init in {info}"));
        assert!(init.running(), "{name}");
        let pid = init.pid.to_string();
        // Its own PID namespace, in which it is PID 1.
        assert_ne!(ns_link(&pid, "pid"), ns_link("self", "pid"), "{name}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap_or("");
        assert!(nspid.ends_with("\t1"), "{name}: {nspid:?}");
        // In the pod's pinned net, ipc and uts namespaces.
        let pins = d.run.join("sandboxes").join(&id).join("ns");
        for kind in ["net", "ipc", "uts"] {
            let ino = std::fs::metadata(pins.join(kind)).unwrap().ino();
            assert_eq!(ns_link(&pid, kind), format!("{kind}:[{ino}]"), "{name}: {kind}");
        }
        // In the pod cgroup (or a child of it), in every v1 hierarchy.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("cricket/pod-{id}");
        let v1: Vec<&str> = cgroups.lines().filter(|l| !l.starts_with("0::")).collect();
        assert_eq!(v1.len(), cgroup_v1_mounts().len(), "{cgroups}");
        assert!(v1.iter().all(|l| l.contains(&want)), "{name}: {want} in\n{cgroups}");

        d.stop_pod(&id).await.expect("stop");
        let deadline = Instant::now() + Duration::from_secs(5);
        while init.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!init.running(), "{name}: pod-init {pid} survived stop");
        if init.zombie() {
            eprintln!("note: pod-init {pid} is a zombie: its parent (PID 1 here) does not reap");
        }
        ids.push(id);
        inits.push(init);
    }

    // CONTAINER and NODE: no pod-init.
    for (name, mode) in [("pid-container", cri::NamespaceMode::Container), ("pid-node", cri::NamespaceMode::Node)] {
        let id = d.run_pod(with_namespaces(pod_config(name), pid_mode(mode)), "").await.expect(name);
        let (status, info) = d.pod_info(&id).await;
        assert_eq!(status.state, READY, "{name}");
        assert!(info["init"].is_null(), "{name}: {info}");
        assert!(d.helper_pids().is_empty(), "{name}: helpers {:?}", d.helper_pids());
        ids.push(id);
    }

    for id in &ids {
        d.stop_pod(id).await.expect("stop");
        d.remove_pod(id).await.expect("remove");
    }
    assert_clean(&d, &net, &before, &ids, &inits);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_daemon_restart() {
    let net = TestNet::new();
    let mut d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let config = full_config("survivor", host_port());
    let id = d.run_pod(config.clone(), "").await.expect("RunPodSandbox");
    let (status, info) = d.pod_info(&id).await;
    let ip = pod_ip(&status);
    let init = init_of(&info).expect("pod-init");
    let mounts = d.run_mounts();

    d.restart().await;

    let (after, info_after) = d.pod_info(&id).await;
    assert_eq!((after.state, pod_ip(&after)), (READY, ip.clone()), "{after:?}");
    assert_eq!((after.metadata, after.labels, after.created_at), (status.metadata, status.labels, status.created_at));
    assert_eq!(info_after["init"], info["init"]);
    assert!(init.running());
    assert_eq!(d.run_mounts(), mounts);
    assert!(net.ping(&ip), "ping {ip} after restart");
    assert_eq!(d.list_pods(None).await.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    // The name is still taken.
    let err = d.run_pod(config, "").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    d.stop_pod(&id).await.expect("stop after restart");
    assert!(!net.ping(&ip));
    d.remove_pod(&id).await.expect("remove after restart");
    assert_clean(&d, &net, &before, &[id], &[init]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stop_remove_cycles_leak_nothing() {
    let cycles: usize = std::env::var("CRICKET_POD_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let fd_dir = format!("/proc/{}/fd", d.pid().unwrap());
    let fds_before = names(Path::new(&fd_dir)).len();
    let port = host_port();
    let mut ids = Vec::new();
    let mut inits = Vec::new();
    let started = Instant::now();
    let mut times = [Duration::ZERO; 3];
    for i in 0..cycles {
        let t = Instant::now();
        let id = d.run_pod(full_config(&format!("cycle-{i}"), port), "").await.expect("RunPodSandbox");
        times[0] += t.elapsed();
        let (status, info) = d.pod_info(&id).await;
        assert!(status.state == READY && pod_ip(&status).starts_with(&net.prefix), "cycle {i}: {status:?}");
        inits.push(init_of(&info).expect("pod-init"));
        let t = Instant::now();
        d.stop_pod(&id).await.expect("StopPodSandbox");
        times[1] += t.elapsed();
        let t = Instant::now();
        d.remove_pod(&id).await.expect("RemovePodSandbox");
        times[2] += t.elapsed();
        ids.push(id);
    }
    let n = cycles.max(1) as u32;
    eprintln!(
        "{cycles} run/stop/remove cycles in {:?}; per cycle: run {:?}, stop {:?}, remove {:?}",
        started.elapsed(),
        times[0] / n,
        times[1] / n,
        times[2] / n
    );

    assert_clean(&d, &net, &before, &ids, &inits);
    assert!(d.list_pods(None).await.is_empty());
    let fds_after = names(Path::new(&fd_dir)).len();
    assert!(fds_after <= fds_before + 4, "daemon fds: {fds_before} before, {fds_after} after {cycles} cycles");
    let zombies = inits.iter().filter(|p| p.zombie()).count();
    if zombies > 0 {
        eprintln!("note: {zombies} of {cycles} pod-inits are zombies: their parent (PID 1 here) does not reap");
    }
    finish(d, net);
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stop_and_remove_leave_no_state() {
    let net = TestNet::new();
    let mut d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = d.run_pod(pod_config(&format!("race-{i}")), "").await.expect("RunPodSandbox");
        d.stop_pod(&id).await.expect("stop");
        // The stop arrives while remove holds the sandbox's lock.
        let delay = Duration::from_micros(500 * (i % 10));
        let late_stop = async {
            tokio::time::sleep(delay).await;
            d.stop_pod(&id).await
        };
        let (removed, stopped) = tokio::join!(d.remove_pod(&id), late_stop);
        removed.expect("remove");
        stopped.expect("stop");
        ids.push(id);
    }
    let (root_dirs, _) = d.sandbox_dirs();
    assert!(root_dirs.is_empty(), "removed sandboxes' state dirs: {root_dirs:?}");
    d.restart().await;
    let ghosts: Vec<String> = d.list_pods(None).await.into_iter().map(|p| p.id).collect();
    for id in &ghosts {
        d.remove_pod(id).await.expect("remove ghost");
    }
    assert!(ghosts.is_empty(), "removed sandboxes back after a restart: {ghosts:?}");
    assert_clean(&d, &net, &before, &ids, &[]);
    finish(d, net);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_is_not_ready_once_pod_init_dies() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let id = d.run_pod(pod_config("fragile"), "").await.expect("RunPodSandbox");
    let (_, info) = d.pod_info(&id).await;
    let init = init_of(&info).expect("pod-init");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while init.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The PID namespace is gone: no container can join it, so kubelet must make a new sandbox.
    let state = d.pod_status(&id).await.expect("status").state;
    let listed = d.list_pods(None).await.first().map(|p| p.state);
    d.stop_pod(&id).await.expect("stop");
    d.remove_pod(&id).await.expect("remove");
    assert_clean(&d, &net, &before, &[id], &[init]);
    finish(d, net);
    assert_eq!((state, listed), (NOTREADY, Some(NOTREADY)), "status and list after pod-init died");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_follow_the_pod_lifecycle() {
    use cri::ContainerEventType as E;
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    // Two subscribers, as kubelet and crictl events might be: each sees everything.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = d.runtime().await.get_container_events(cri::GetEventsRequest {}).await.expect("GetContainerEvents");
        streams.push(s.into_inner());
    }
    let id = d.run_pod(pod_config("events"), "").await.expect("RunPodSandbox");
    d.stop_pod(&id).await.expect("stop");
    d.remove_pod(&id).await.expect("remove");

    for mut stream in streams {
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
            let ev = next.expect("event within 10s").expect("stream ok").expect("stream open");
            seen.push(ev);
        }
        let kinds: Vec<i32> = seen.iter().map(|e| e.container_event_type).collect();
        let want =
            [E::ContainerCreatedEvent, E::ContainerStartedEvent, E::ContainerStoppedEvent, E::ContainerDeletedEvent];
        assert_eq!(kinds, want.map(|k| k as i32), "{seen:?}");
        let states: Vec<i32> = seen.iter().map(|e| e.pod_sandbox_status.as_ref().expect("pod status").state).collect();
        assert_eq!(states, [READY, READY, NOTREADY, NOTREADY]);
        for ev in &seen {
            assert_eq!(ev.container_id, id);
            let status = ev.pod_sandbox_status.as_ref().unwrap();
            assert_eq!(status.id, id);
            assert_eq!(status.metadata.as_ref().unwrap().name, "events");
            assert!(ev.created_at > 0);
        }
        assert!(seen.windows(2).all(|w| w[0].created_at <= w[1].created_at), "events in order");
    }
    finish(d, net);
}

/// A cgroup file's trimmed content in whichever hierarchy (or the v2 tree) of `rel` has it.
fn cgroup_file(rel: &str, names: &[&str]) -> String {
    let dirs = cgroup_dirs(rel);
    let file = dirs
        .iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("none of {names:?} in {dirs:?}"));
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// Memory limit, CPU quota and CPU weight of a cgroup, as v1 files give them (v2 converted).
fn limits(rel: &str) -> (String, String, String) {
    let memory = cgroup_file(rel, &["memory.limit_in_bytes", "memory.max"]);
    let quota = cgroup_file(rel, &["cpu.cfs_quota_us", "cpu.max"]);
    let quota = quota.split(' ').next().unwrap().replace("max", "-1");
    let weight = cgroup_file(rel, &["cpu.shares", "cpu.weight"]);
    (memory, quota, weight)
}

fn resources(shares: i64, quota: i64, memory: i64) -> Option<cri::LinuxContainerResources> {
    Some(cri::LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: 100_000,
        memory_limit_in_bytes: memory,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cgroup_holds_the_pod_resources_plus_overhead() {
    let net = TestNet::new();
    let d = Daemon::start_with_net(&net, "").await;
    let before = traces(&d, &net);
    let v2 = cgroup_v1_mounts().is_empty();
    let unlimited = if v2 { "max" } else { "9223372036854771712" };
    let weight = |shares: u64| if v2 { (1 + (shares - 2) * 9999 / 262_142).to_string() } else { shares.to_string() };
    let host_network = cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() };
    let pod = |name: &str, cgroup_parent: &str, limits, overhead| {
        let mut c = with_namespaces(pod_config(name), host_network.clone());
        let linux = c.linux.as_mut().unwrap();
        (linux.cgroup_parent, linux.resources, linux.overhead) = (cgroup_parent.to_string(), limits, overhead);
        c
    };
    // As kubelet sends them: 500m CPU and 64 MiB limits, 250m and 32 MiB of RuntimeClass overhead.
    let overhead = resources(256, 25_000, 32 << 20);
    let sized = d.run_pod(pod("sized", "", resources(512, 50_000, 64 << 20), overhead.clone()), "").await.unwrap();
    let want = ((96u64 << 20).to_string(), "75000".to_string(), weight(768));
    assert_eq!(limits(&format!("cricket/pod-{sized}")), want);
    // Without limits the overhead adds weight, not limits.
    let open = d.run_pod(pod("open", "", resources(2, 0, 0), overhead.clone()), "").await.unwrap();
    assert_eq!(limits(&format!("cricket/pod-{open}")), (unlimited.to_string(), "-1".to_string(), weight(258)));
    // A pod cgroup that exists is kubelet's, sized by kubelet: cricket leaves its values alone.
    let parent = format!("crktest-kubepods-{}", &net.bridge[3..]);
    let roots = if v2 { vec![PathBuf::from("/sys/fs/cgroup")] } else { cgroup_v1_mounts() };
    for root in &roots {
        let dir = root.join(&parent);
        std::fs::create_dir(&dir).unwrap();
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(root.join(file)) {
                std::fs::write(dir.join(file), value.trim()).unwrap();
            }
        }
    }
    let kubelets = (128u64 << 20).to_string();
    let memory_file = cgroup_dirs(&parent)
        .into_iter()
        .flat_map(|d| [d.join("memory.limit_in_bytes"), d.join("memory.max")])
        .find(|f| f.exists())
        .unwrap();
    std::fs::write(&memory_file, &kubelets).unwrap();
    let as_kubelet_left_it = limits(&parent);
    assert_eq!(as_kubelet_left_it.0, kubelets);
    let owned = d.run_pod(pod("owned", &format!("/{parent}"), resources(512, 50_000, 64 << 20), overhead), "").await;
    let owned = owned.unwrap();
    assert_eq!(limits(&parent), as_kubelet_left_it);
    let ids = [sized, open, owned];
    for id in &ids {
        d.remove_pod(id).await.expect("RemovePodSandbox");
    }
    // kubelet's cgroup stays (cricket removed only what it made inside it).
    let kept = cgroup_dirs(&parent);
    assert_eq!(kept.len(), roots.len(), "{kept:?}");
    assert!(kept.iter().all(|d| !d.join("pod-init").exists()), "{kept:?}");
    for dir in kept {
        remove_cgroup_tree(&dir);
    }
    assert_clean(&d, &net, &before, &ids, &[]);
    finish(d, net);
}
