//! End-to-end tests of containers: the real `cricket serve` driven through
//! CRI as kubelet does, with a busybox image from the local registry, in pods
//! on a CNI bridge of each test's own. Every test runs once per runtime
//! handler (`linux::NAME`, `runc::NAME`, `crun::NAME`): the built-in executor
//! and the OCI runtimes must behave the same.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;

/// Generates one test per handler from `async fn NAME(handler: Handler)`:
/// `linux::NAME`, `runc::NAME` and `crun::NAME`.
macro_rules! per_handler {
    ($($test:ident),* $(,)?) => {
        mod linux {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::Handler::Linux).await
            })*
        }
        mod runc {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::Handler::Runc).await
            })*
        }
        mod crun {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                if let Some(why) = super::Handler::Crun.unusable() {
                    eprintln!("skipping crun::{}: {why}", stringify!($test));
                    return;
                }
                super::$test(super::Handler::Crun).await
            })*
        }
    };
}

per_handler!(
    container_runs_logs_and_exits_with_its_code,
    exec_sync_output_codes_and_timeouts,
    stop_signals_then_kills,
    containers_survive_a_daemon_restart,
    requests_that_must_fail,
    stats_update_and_log_reopen,
    security_settings_apply,
    bidirectional_mounts_reach_the_host,
    pod_pids_limit_caps_forks,
    recursive_read_only_mounts,
);

struct Fixture {
    _registry: Registry,
    net: TestNet,
    d: Daemon,
    image: String,
    logs: tempfile::TempDir,
    handler: Handler,
}

impl Fixture {
    async fn new(handler: Handler) -> Fixture {
        Fixture::with_image(handler, Image::new(vec![busybox_layer()])).await
    }

    async fn with_image(handler: Handler, image: Image) -> Fixture {
        Fixture::with_config(handler, image, "").await
    }

    /// With `extra_toml` (more `[runtimes.NAME]` tables) in the daemon's config.
    async fn with_config(handler: Handler, image: Image, extra_toml: &str) -> Fixture {
        let registry = Registry::start().await;
        let host = registry.host();
        registry.push_image("busybox", "1", &image).await;
        let net = TestNet::new();
        let toml = format!("{}{}{extra_toml}", insecure(&host), Handler::all_toml());
        let d = Daemon::start_with_net(&net, &toml).await;
        let image = format!("{host}/busybox:1");
        d.pull(&image).await.expect("pull busybox");
        Fixture { _registry: registry, net, d, image, logs: tempdir(), handler }
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut c = pod_config(name);
        c.log_directory = self.logs.path().join(name).display().to_string();
        std::fs::create_dir_all(&c.log_directory).unwrap();
        c
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = self.pod_config(name);
        let id = self.d.run_pod(config.clone(), self.handler.name()).await.expect("RunPodSandbox");
        (id, config)
    }

    fn container(&self, name: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.to_string(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            labels: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        }
    }

    async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.d.create_container(pod, pod_config, config).await
    }

    async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        self.d.start_container(id).await
    }

    async fn run(&self, pod: &str, pod_config: &cri::PodSandboxConfig, name: &str, script: &str) -> String {
        let id = self.create(pod, pod_config, self.container(name, script)).await.expect("CreateContainer");
        self.start(&id).await.expect("StartContainer");
        id
    }

    async fn status(&self, id: &str) -> Result<cri::ContainerStatus, tonic::Status> {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        Ok(self.d.runtime().await.container_status(req).await?.into_inner().status.expect("status"))
    }

    async fn info(&self, id: &str) -> serde_json::Value {
        self.d.container_info(id).await
    }

    async fn wait_exit(&self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status(id).await.expect("ContainerStatus");
            if st.state == EXITED {
                return st;
            }
            assert!(Instant::now() < deadline, "container {id} still {} after 20s", st.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(&self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        // A hang guard, not a speed check: ExecSync must return.
        let call = async { self.d.runtime().await.exec_sync(req).await.map(|r| r.into_inner()) };
        tokio::time::timeout(Duration::from_secs(60), call).await.expect("ExecSync hung")
    }

    async fn stop(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let req = cri::StopContainerRequest { container_id: id.to_string(), timeout };
        self.d.runtime().await.stop_container(req).await.map(|_| ())
    }

    async fn remove(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveContainerRequest { container_id: id.to_string() };
        self.d.runtime().await.remove_container(req).await.map(|_| ())
    }

    async fn list(&self, filter: cri::ContainerFilter) -> Vec<cri::Container> {
        let req = cri::ListContainersRequest { filter: Some(filter) };
        self.d.runtime().await.list_containers(req).await.expect("ListContainers").into_inner().containers
    }

    fn log_file(&self, pod: &str, name: &str) -> PathBuf {
        self.logs.path().join(pod).join(format!("{name}.log"))
    }

    /// Mounts under the daemon's run dir (pins, shm, rootfs overlays).
    fn run_mounts(&self) -> Vec<PathBuf> {
        self.d.run_mounts().into_iter().map(|(m, _)| m).collect()
    }

    async fn finish(self, pods: &[&str]) {
        for pod in pods {
            self.d.remove_pod(pod).await.expect("RemovePodSandbox");
        }
        let left = self.run_mounts();
        assert!(left.is_empty(), "mounts left: {left:?}");
        assert!(names(&self.d.root.join("containers")).is_empty(), "container dirs left");
        assert!(names(&self.d.run.join("containers")).is_empty(), "container run dirs left");
        let helpers = self.d.helper_pids();
        assert!(helpers.is_empty(), "monitors or helpers left: {helpers:?}");
        for pod in pods {
            assert!(pod_cgroup_dirs(pod).is_empty(), "cgroups of pod {pod} left");
        }
        drop(self.d);
        self.net.finish();
    }
}

/// Parsed CRI log lines: (stream, tag, text); checks each timestamp. A line
/// the monitor is still writing (no newline yet) is left out.
fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "bad timestamp in {line:?}");
            let (stream, tag) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

/// The log's lines once it has at least `n`: a workload runs at its own pace.
async fn wait_lines(path: &Path, n: usize) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = if path.exists() { log_lines(path) } else { Vec::new() };
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{}: {} lines after 20s, {n} awaited", path.display(), lines.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn line(stream: &str, text: &str) -> (String, String, String) {
    (stream.to_string(), "F".to_string(), text.to_string())
}

async fn container_runs_logs_and_exits_with_its_code(handler: Handler) {
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("life").await;
    let mut c = f.container("main", "echo out; echo err >&2; echo $$; exit 3");
    // Its own PID namespace (the pod's shared one would make pod-init PID 1).
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = f.create(&pod, &pc, c).await.unwrap();
    let st = f.status(&id).await.unwrap();
    assert_eq!(st.state, CREATED);
    assert!(st.created_at > 0 && st.started_at == 0);
    f.start(&id).await.unwrap();
    let st = f.wait_exit(&id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    assert_eq!(st.image.as_ref().unwrap().image, f.image);
    assert!(st.image_ref.contains("@sha256:"), "{}", st.image_ref);
    assert_eq!(st.log_path, f.log_file("life", "main").display().to_string());
    // Order holds within a stream; the workload is PID 1 of its own PID namespace.
    let lines = log_lines(&f.log_file("life", "main"));
    let stream = |name: &str| lines.iter().filter(|l| l.0 == name).cloned().collect::<Vec<_>>();
    assert_eq!(stream("stdout"), vec![line("stdout", "out"), line("stdout", "1")]);
    assert_eq!(stream("stderr"), vec![line("stderr", "err")]);
    let exits =
        f.list(cri::ContainerFilter { state: Some(cri::ContainerStateValue { state: EXITED }), ..Default::default() });
    assert_eq!(exits.await.len(), 1);
    f.remove(&id).await.unwrap();
    assert_eq!(f.status(&id).await.unwrap_err().code(), Code::NotFound);
    f.remove(&id).await.unwrap();
    f.stop(&id, 0).await.unwrap();

    let id = f.run(&pod, &pc, "ok", "true").await;
    let st = f.wait_exit(&id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    f.finish(&[&pod]).await;
}

async fn exec_sync_output_codes_and_timeouts(handler: Handler) {
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("exec").await;
    let id = f.run(&pod, &pc, "sleeper", "echo ready > /tmp/ready; echo ready; exec sleep 1000").await;
    wait_lines(&f.log_file("exec", "sleeper"), 1).await;
    let r = f.exec(&id, &["/bin/sh", "-c", "echo hello; echo oops >&2; exit 7"], 10).await.unwrap();
    assert_eq!((r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code), (&b"hello\n"[..], &b"oops\n"[..], 7));
    // Same mount namespace as the container: it sees the file the workload wrote.
    let r = f.exec(&id, &["cat", "/tmp/ready"], 10).await.unwrap();
    assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"ready\n"[..], 0));
    // Same PID namespace: the pod's, with pod-init as PID 1 and the workload in it.
    let r = f.exec(&id, &["/bin/sh", "-c", "ps -o pid,args"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&r.stdout);
    assert!(ps.lines().any(|l| l.trim().starts_with("1 ") && l.contains("pod-init")), "{ps}");
    assert!(ps.contains("sleep 1000"), "{ps}");
    // A background child that keeps the pipes open must not hold the reply.
    let r = f.exec(&id, &["/bin/sh", "-c", "sleep 300 & echo started"], 10).await.unwrap();
    assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"started\n"[..], 0));
    let r = f.exec(&id, &["/no/such/binary"], 10).await.unwrap();
    assert_eq!(r.exit_code, 127, "stderr: {}", String::from_utf8_lossy(&r.stderr));
    // A timed-out command is killed and reaped, even where PID 1 reaps nothing.
    let mut c = f.container("lone", "");
    c.command = vec!["sleep".into(), "1000".into()];
    security(
        &mut c,
        cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let lone = f.create(&pod, &pc, c).await.unwrap();
    f.start(&lone).await.unwrap();
    let err = f.exec(&lone, &["sleep", "60"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let r = f.exec(&lone, &["/bin/sh", "-c", "ps -o pid,stat,comm"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&r.stdout);
    let sleeps: Vec<&str> = ps.lines().filter(|l| l.contains("sleep")).collect();
    assert_eq!(sleeps.len(), 1, "{ps}");
    let stopped = f.run(&pod, &pc, "done", "true").await;
    f.wait_exit(&stopped).await;
    let err = f.exec(&stopped, &["true"], 10).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    f.finish(&[&pod]).await;
}

async fn stop_signals_then_kills(handler: Handler) {
    let image = Image::new(vec![busybox_layer()]).with("StopSignal", serde_json::json!("SIGUSR1"));
    let f = Fixture::with_image(handler, image).await;
    let (pod, pc) = f.pod("stop").await;
    // Exits 42 on the image's stop signal.
    let polite = f.run(&pod, &pc, "polite", "trap 'exit 42' USR1; echo armed; while true; do sleep 0.1; done").await;
    let stubborn = f.run(&pod, &pc, "stubborn", "trap '' USR1 TERM; echo armed; while true; do sleep 0.1; done").await;
    wait_lines(&f.log_file("stop", "polite"), 1).await;
    wait_lines(&f.log_file("stop", "stubborn"), 1).await;
    f.stop(&polite, 30).await.unwrap();
    let st = f.status(&polite).await.unwrap();
    assert_eq!((st.state, st.exit_code), (EXITED, 42));
    f.stop(&stubborn, 1).await.unwrap();
    let st = f.status(&stubborn).await.unwrap();
    assert_eq!((st.state, st.exit_code), (EXITED, 137));
    f.stop(&stubborn, 1).await.unwrap();
    // Stopping the pod stops what still runs.
    let third = f.run(&pod, &pc, "third", "exec sleep 1000").await;
    f.d.stop_pod(&pod).await.unwrap();
    assert_eq!(f.status(&third).await.unwrap().state, EXITED);
    f.finish(&[&pod]).await;
}

async fn containers_survive_a_daemon_restart(handler: Handler) {
    let mut f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("restart").await;
    let long = f.run(&pod, &pc, "long", "echo before; exec sleep 1000").await;
    let short = f.run(&pod, &pc, "short", "sleep 1; exit 5").await;
    let created = f.create(&pod, &pc, f.container("later", "echo later")).await.unwrap();
    let pid = f.info(&long).await["pid"].as_i64().unwrap();
    f.d.restart().await;
    // `short` exits while the daemon restarts or after: either way its code is kept.
    assert_eq!(f.wait_exit(&short).await.exit_code, 5);
    let st = f.status(&long).await.unwrap();
    assert_eq!(st.state, RUNNING);
    assert_eq!(f.info(&long).await["pid"].as_i64().unwrap(), pid);
    let r = f.exec(&long, &["echo", "alive"], 10).await.unwrap();
    assert_eq!(r.stdout, b"alive\n");
    assert_eq!(f.status(&created).await.unwrap().state, CREATED);
    f.start(&created).await.unwrap();
    assert_eq!(f.wait_exit(&created).await.exit_code, 0);
    assert_eq!(log_lines(&f.log_file("restart", "later")), vec![line("stdout", "later")]);
    f.stop(&long, 0).await.unwrap();
    assert_eq!(f.status(&long).await.unwrap().exit_code, 137);
    f.finish(&[&pod]).await;
}

async fn requests_that_must_fail(handler: Handler) {
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("bad").await;
    let mut c = f.container("x", "true");
    c.image = Some(cri::ImageSpec { image: "127.0.0.1:1/nope:1".into(), ..Default::default() });
    assert_eq!(f.create(&pod, &pc, c).await.unwrap_err().code(), Code::NotFound);
    let err = f.create("0000", &pc, f.container("x", "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut c = f.container("x", "true");
    c.metadata = None;
    assert_eq!(f.create(&pod, &pc, c).await.unwrap_err().code(), Code::InvalidArgument);
    let id = f.create(&pod, &pc, f.container("dup", "sleep 100")).await.unwrap();
    let err = f.create(&pod, &pc, f.container("dup", "true")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // A command that doesn't exist fails CreateContainer with the reason (as
    // runc and crun check it at create), leaving the name free.
    for command in ["/bin/not-there", "not-there"] {
        let mut c = f.container("missing", "");
        c.command = vec![command.into()];
        let err = f.create(&pod, &pc, c).await.unwrap_err();
        assert!(err.message().contains(command), "{err:?}");
    }
    let mut c = f.container("missing", "");
    c.command = vec!["/etc/passwd".into()];
    let err = f.create(&pod, &pc, c).await.unwrap_err();
    // crun doesn't name the file here.
    assert!(err.message().contains("ermission denied"), "{err:?}");
    let ok = f.create(&pod, &pc, f.container("missing", "true")).await.unwrap();
    f.remove(&ok).await.unwrap();
    f.start(&id).await.unwrap();
    assert_eq!(f.start(&id).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(f.status("ffffffff").await.unwrap_err().code(), Code::NotFound);
    // Removing a running container kills it first.
    f.remove(&id).await.unwrap();
    f.finish(&[&pod]).await;
}

async fn stats_update_and_log_reopen(handler: Handler) {
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("stats").await;
    let script = "i=0; while true; do i=$((i+1)); echo line$i; sleep 0.05; done";
    let id = f.run(&pod, &pc, "busy", script).await;
    let log = f.log_file("stats", "busy");
    wait_lines(&log, 3).await;
    let mut rt = f.d.runtime().await;
    let req = cri::ContainerStatsRequest { container_id: id.clone() };
    let s = rt.container_stats(req).await.unwrap().into_inner().stats.unwrap();
    assert!(s.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(s.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(s.writable_layer.unwrap().fs_id.is_some());
    assert_eq!(s.attributes.unwrap().id, id);
    let list = rt.list_container_stats(cri::ListContainerStatsRequest { filter: None }).await.unwrap().into_inner();
    assert_eq!(list.stats.len(), 1);
    let req = cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() };
    let ps = rt.pod_sandbox_stats(req).await.unwrap().into_inner().stats.unwrap();
    let linux = ps.linux.unwrap();
    assert_eq!(linux.containers.len(), 1);
    let net = linux.network.unwrap();
    assert!(net.default_interface.is_some_and(|i| i.name == "eth0"), "{:?}", net.interfaces);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);

    let limit = 64 << 20;
    let res = cri::LinuxContainerResources { memory_limit_in_bytes: limit, cpu_shares: 512, ..Default::default() };
    let req = cri::UpdateContainerResourcesRequest { container_id: id.clone(), linux: Some(res), ..Default::default() };
    rt.update_container_resources(req).await.unwrap();
    let st = f.status(&id).await.unwrap();
    assert_eq!(st.resources.unwrap().linux.unwrap().memory_limit_in_bytes, limit);
    let cgroup = f.info(&id).await["cgroup"].as_str().unwrap().trim_start_matches('/').to_string();
    let mem = cgroup_dirs(&cgroup)
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists());
    let mem = mem.expect("memory cgroup of the container");
    let file = if mem.join("memory.max").exists() { "memory.max" } else { "memory.limit_in_bytes" };
    assert_eq!(std::fs::read_to_string(mem.join(file)).unwrap().trim(), limit.to_string());

    // Rotation as kubelet does it: rename, reopen; no line is lost or duplicated.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await.unwrap();
    wait_lines(&log, 3).await;
    f.stop(&id, 0).await.unwrap();
    let numbers: Vec<u64> = [rotated, log]
        .iter()
        .flat_map(|p| log_lines(p))
        .map(|(_, _, text)| text.trim_start_matches("line").parse().unwrap())
        .collect();
    assert!(numbers.len() > 5, "{numbers:?}");
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
    let err = rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    f.finish(&[&pod]).await;
}

fn security(c: &mut cri::ContainerConfig, sc: cri::LinuxContainerSecurityContext) {
    c.linux = Some(cri::LinuxContainerConfig { security_context: Some(sc), ..Default::default() });
}

async fn security_settings_apply(handler: Handler) {
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("sec").await;
    let mut c = f.container("seccomp", "grep Seccomp: /proc/self/status; chmod 400 /tmp && echo chmod-ok");
    let profile = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    };
    security(&mut c, cri::LinuxContainerSecurityContext { seccomp: Some(profile), ..Default::default() });
    let id = f.create(&pod, &pc, c).await.unwrap();
    f.start(&id).await.unwrap();
    assert_eq!(f.wait_exit(&id).await.exit_code, 0);
    let text: Vec<String> = log_lines(&f.log_file("sec", "seccomp")).into_iter().map(|l| l.2).collect();
    assert_eq!(text, ["Seccomp:\t2", "chmod-ok"]);

    let mut c = f.container("user", "id -u; id -g; touch /x 2>/dev/null || echo read-only");
    security(
        &mut c,
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            readonly_rootfs: true,
            ..Default::default()
        },
    );
    let id = f.create(&pod, &pc, c).await.unwrap();
    f.start(&id).await.unwrap();
    f.wait_exit(&id).await;
    let text: Vec<String> = log_lines(&f.log_file("sec", "user")).into_iter().map(|l| l.2).collect();
    assert_eq!(text, ["1234", "1234", "read-only"]);
    let st = f.status(&id).await.unwrap();
    let user = st.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (1234, 1234));

    // Capabilities: all dropped but one added back; RuntimeDefault seccomp refuses unshare.
    let mut c =
        f.container("caps", "grep CapEff /proc/self/status; unshare -n true 2>/dev/null || echo unshare-refused");
    let profile = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    };
    security(
        &mut c,
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            seccomp: Some(profile),
            ..Default::default()
        },
    );
    let id = f.create(&pod, &pc, c).await.unwrap();
    f.start(&id).await.unwrap();
    f.wait_exit(&id).await;
    let text: Vec<String> = log_lines(&f.log_file("sec", "caps")).into_iter().map(|l| l.2).collect();
    assert_eq!(text, ["CapEff:\t0000000000000001", "unshare-refused"]);

    // Hostile configs are refused with a clear error and leave nothing behind.
    let mut c = f.container("bad-profile", "true");
    let missing = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/profile.json".into(),
    };
    security(&mut c, cri::LinuxContainerSecurityContext { seccomp: Some(missing), ..Default::default() });
    let err = f.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/nonexistent/profile.json"), "{err:?}");
    let mut c = f.container("bad-mount", "true");
    c.mounts =
        vec![cri::Mount { container_path: "/data".into(), host_path: "relative/dir".into(), ..Default::default() }];
    let err = f.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/data"), "{err:?}");

    // Workloads and exec'd commands start with no signal blocked or ignored.
    let id = f.run(&pod, &pc, "signals", "grep -E '^Sig(Blk|Ign)' /proc/self/status; exec sleep 1000").await;
    let r = f.exec(&id, &["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
    let text: Vec<String> = wait_lines(&f.log_file("sec", "signals"), 2).await.into_iter().map(|l| l.2).collect();
    assert_eq!(text, ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]);

    let mut c = f.container("group-only", "true");
    security(
        &mut c,
        cri::LinuxContainerSecurityContext { run_as_group: Some(cri::Int64Value { value: 5 }), ..Default::default() },
    );
    assert_eq!(f.create(&pod, &pc, c).await.unwrap_err().code(), Code::InvalidArgument);
    f.finish(&[&pod]).await;
}

async fn bidirectional_mounts_reach_the_host(handler: Handler) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("prop").await;
    let host = tempdir();
    let src = host.path().join("mnt");
    std::fs::create_dir_all(src.join("inner")).unwrap();
    mount(Some(&src), &src, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).unwrap();
    mount(None::<&str>, &src, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>).unwrap();
    let mut c = f.container("prop", "exec sleep 1000");
    c.mounts = vec![cri::Mount {
        container_path: "/vol".into(),
        host_path: src.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    security(&mut c, cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
    let id = f.create(&pod, &pc, c).await.unwrap();
    f.start(&id).await.unwrap();
    let r = f.exec(&id, &["/bin/sh", "-c", "mount --bind /etc /vol/inner"], 10).await.unwrap();
    let seen = std::fs::read_dir(src.join("inner")).unwrap().count();
    let info = f.exec(&id, &["cat", "/proc/self/mountinfo"], 10).await.unwrap();
    let _ = umount2(&src.join("inner"), MntFlags::MNT_DETACH);
    let _ = umount2(&src, MntFlags::MNT_DETACH);
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    assert!(seen > 0, "the container's mount did not reach the host:\n{}", String::from_utf8_lossy(&info.stdout));
    f.finish(&[&pod]).await;
}

/// Kubelet caps a pod's processes (podPidsLimit) through the pids.max of the
/// pod cgroup it passes as cgroup_parent: a container under it can't fork past it.
async fn pod_pids_limit_caps_forks(handler: Handler) {
    const LIMIT: u32 = 12;
    let f = Fixture::new(handler).await;
    let rel = format!("cricket-test-pids-{:x}", rand::random::<u32>());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let pids_dir =
        if v2 { Path::new("/sys/fs/cgroup").join(&rel) } else { Path::new("/sys/fs/cgroup/pids").join(&rel) };
    std::fs::create_dir(&pids_dir).unwrap();
    std::fs::write(pids_dir.join("pids.max"), LIMIT.to_string()).unwrap();

    let mut pc = f.pod_config("pids");
    pc.linux = Some(cri::LinuxPodSandboxConfig { cgroup_parent: format!("/{rel}"), ..Default::default() });
    let pod = f.d.run_pod(pc.clone(), handler.name()).await.expect("RunPodSandbox");
    let script = "i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); done; echo all-started";
    let id = f.run(&pod, &pc, "forker", script).await;
    let st = f.wait_exit(&id).await;
    let current: u32 = std::fs::read_to_string(pids_dir.join("pids.current")).unwrap().trim().parse().unwrap();
    assert!(current <= LIMIT, "{current} processes under a limit of {LIMIT}");
    let lines = log_lines(&f.log_file("pids", "forker"));
    assert!(lines.iter().any(|(_, _, text)| text.contains("can't fork")), "{lines:?}");
    assert!(!lines.iter().any(|(_, _, text)| text == "all-started"), "{lines:?}");
    assert_ne!(st.exit_code, 0);

    f.d.remove_pod(&pod).await.expect("RemovePodSandbox");
    for dir in cgroup_dirs(&rel) {
        remove_cgroup_tree(&dir);
    }
    f.finish(&[]).await;
}

/// What a handler made of the comparison container, with what differs by
/// nature (IDs, pod paths, timestamps) left out.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    log: Vec<(String, String, String)>,
    exit_code: i32,
    state: i32,
    reason: String,
    message: String,
    image: Option<cri::ImageSpec>,
    image_ref: String,
    image_id: String,
    labels: std::collections::HashMap<String, String>,
    annotations: std::collections::HashMap<String, String>,
    mounts: Vec<cri::Mount>,
    user: Option<cri::ContainerUser>,
    log_file: PathBuf,
    info_keys: Vec<String>,
    process: serde_json::Value,
    spec_mounts: Vec<serde_json::Value>,
    namespaces: Vec<serde_json::Value>,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_handler_gives_the_same_logs_exit_and_status() {
    let f = Fixture::new(Handler::Linux).await;
    let volume = tempdir();
    std::fs::write(volume.path().join("in.txt"), "from the volume\n").unwrap();
    // The long line becomes P + F; the last stderr text has no newline and
    // ends with the stream. Only the order within each stream is compared:
    // the monitor reads the two pipes as they come.
    let long = 20_000;
    let script = format!(
        "echo out1; echo err1 >&2; cat /data/in.txt; \
         head -c {long} /dev/zero | tr '\\0' x; echo; printf tail >&2; exit 42"
    );
    let mut observed = Vec::new();
    for handler in Handler::ALL {
        if let Some(why) = handler.unusable() {
            eprintln!("comparing without {handler:?}: {why}");
            continue;
        }
        let mut pc = pod_config("cmp");
        pc.metadata.as_mut().unwrap().uid = format!("uid-cmp-{handler:?}");
        let log_dir = f.logs.path().join(format!("cmp-{handler:?}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        pc.log_directory = log_dir.display().to_string();
        let pod = f.d.run_pod(pc.clone(), handler.name()).await.expect("RunPodSandbox");
        let mut c = f.container("main", &script);
        c.annotations = [("note".to_string(), "same everywhere".to_string())].into();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: volume.path().display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        let id = f.create(&pod, &pc, c).await.expect("CreateContainer");
        f.start(&id).await.expect("StartContainer");
        let st = f.wait_exit(&id).await;
        let info = f.info(&id).await;
        assert_eq!(info["runtimeHandler"], handler.name(), "{info}");
        assert!(info["pid"].as_i64().is_some_and(|p| p > 0), "{info}");
        let spec = &info["runtimeSpec"];
        let mut info_keys: Vec<String> = info.as_object().unwrap().keys().cloned().collect();
        info_keys.sort();
        let spec_mounts = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| serde_json::json!({"destination": m["destination"], "type": m["type"], "options": m["options"]}))
            .collect();
        observed.push((
            handler,
            Observed {
                log: log_lines(&log_dir.join("main.log")),
                exit_code: st.exit_code,
                state: st.state,
                reason: st.reason,
                message: st.message,
                image: st.image,
                image_ref: st.image_ref,
                image_id: st.image_id,
                labels: st.labels,
                annotations: st.annotations,
                mounts: st.mounts,
                user: st.user,
                log_file: Path::new(&st.log_path).strip_prefix(&log_dir).unwrap().to_path_buf(),
                info_keys,
                process: sorted_capabilities(&spec["process"]),
                spec_mounts,
                namespaces: spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].clone()).collect(),
            },
        ));
        f.d.remove_pod(&pod).await.expect("RemovePodSandbox");
    }
    assert!(observed.len() >= 2, "at least the built-in executor and runc");
    let (first, reference) = &observed[0];
    let x = "x".repeat(long);
    let expected = vec![
        line("stdout", "out1"),
        line("stderr", "err1"),
        line("stdout", "from the volume"),
        ("stdout".to_string(), "P".to_string(), x[..16 * 1024].to_string()),
        line("stdout", &x[16 * 1024..]),
        line("stderr", "tail"),
    ];
    assert!(by_stream(&reference.log) == by_stream(&expected), "{first:?}'s log: {:?}", summary(&reference.log));
    assert_eq!((reference.exit_code, reference.reason.as_str(), reference.state), (42, "Error", EXITED));
    assert_eq!(reference.log_file, Path::new("main.log"));
    for (handler, other) in &observed[1..] {
        assert!(by_stream(&other.log) == by_stream(&reference.log), "{handler:?}'s log: {:?}", summary(&other.log));
        let (a, b) = (Observed { log: Vec::new(), ..other.clone() }, Observed { log: Vec::new(), ..reference.clone() });
        assert_eq!(a, b, "{handler:?} differs from {first:?}");
    }
    f.finish(&[]).await;
}

/// Log lines split by stream, in order within each.
fn by_stream(log: &[(String, String, String)]) -> [Vec<&(String, String, String)>; 2] {
    ["stdout", "stderr"].map(|stream| log.iter().filter(|l| l.0 == stream).collect())
}

/// Log lines with long texts shortened, for messages.
fn summary(log: &[(String, String, String)]) -> Vec<(String, String, String)> {
    let short = |t: &str| if t.len() > 40 { format!("{}… ({} bytes)", &t[..20], t.len()) } else { t.to_string() };
    log.iter().map(|(s, tag, t)| (s.clone(), tag.clone(), short(t))).collect()
}

/// The spec's process with its capability sets sorted (the spec holds sets).
fn sorted_capabilities(process: &serde_json::Value) -> serde_json::Value {
    let mut process = process.clone();
    if let Some(caps) = process["capabilities"].as_object_mut() {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by_key(|c| c.as_str().unwrap_or_default().to_string());
            }
        }
    }
    process
}

/// The cgroup of `pid` in the v1 hierarchy of `controller` (or the v2 one, `""`).
fn cgroup_of(pid: i64, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == controller).then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller:?} line in /proc/{pid}/cgroup:\n{text}"))
}

/// The controller whose hierarchy holds every process: memory on v1, the one v2 tree otherwise.
fn main_controller() -> &'static str {
    if cgroup_v1_mounts().is_empty() {
        ""
    } else {
        "memory"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_options_place_monitors_and_withhold_host_devices() {
    let parent = format!("/crk-monitors-{:08x}", rand::random::<u32>());
    let toml = format!(
        "[runtimes.runc-pod]\ntype = \"oci\"\npath = \"{RUNC}\"\nmonitor_cgroup = \"pod\"\n\
         privileged_without_host_devices = true\n\
         [runtimes.linux-under]\ntype = \"linux\"\nmonitor_cgroup = \"{parent}\"\n"
    );
    let f = Fixture::with_config(Handler::Linux, Image::new(vec![busybox_layer()]), &toml).await;
    let ctl = main_controller();
    let daemon_cgroup = cgroup_of(f.d.pid().unwrap() as i64, ctl);
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.d.pid().unwrap())).unwrap();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).unwrap().to_string();
    let mut pods = Vec::new();
    let mut removed = Vec::new();
    let probe = "test -e /dev/kmsg && echo host-devices || echo no-host-devices; grep CapEff /proc/self/status; \
                 exec sleep 1000";
    for (handler, monitors_in) in [("", "daemon"), ("runc-pod", "pod"), ("linux-under", "parent")] {
        let mut pc = f.pod_config(&format!("opt-{monitors_in}"));
        pc.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext { privileged: true, ..Default::default() }),
            ..Default::default()
        });
        let pod = f.d.run_pod(pc.clone(), handler).await.expect("RunPodSandbox");
        let mut c = f.container("probe", probe);
        security(&mut c, cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() });
        let id = f.create(&pod, &pc, c).await.expect("CreateContainer");
        f.start(&id).await.expect("StartContainer");
        let info = f.info(&id).await;
        let monitor = info["monitorPid"].as_i64().unwrap();
        let init = info["pid"].as_i64().unwrap();
        let want = match monitors_in {
            "daemon" => daemon_cgroup.clone(),
            "pod" => format!("/cricket/pod-{pod}/monitor-{id}"),
            _ => format!("{parent}/monitor-{id}"),
        };
        assert_eq!(cgroup_of(monitor, ctl), want, "monitor of handler {handler:?}");
        assert_eq!(info["monitorCgroup"].is_null(), monitors_in == "daemon", "{info}");
        // The container itself stays in its own cgroup, whatever the monitor's.
        assert_eq!(cgroup_of(init, ctl), format!("/cricket/pod-{pod}/{id}"));
        let log = f.log_file(&format!("opt-{monitors_in}"), "probe");
        let text: Vec<String> = wait_lines(&log, 2).await.into_iter().map(|l| l.2).collect();
        let devices = if handler == "runc-pod" { "no-host-devices" } else { "host-devices" };
        assert_eq!(text[0], devices, "handler {handler:?}");
        // Privileged all the same: every capability the daemon may grant.
        assert_eq!(text[1].trim_start_matches("CapEff:\t"), bounding, "handler {handler:?}");
        f.remove(&id).await.unwrap();
        if monitors_in != "daemon" {
            removed.push(want.trim_start_matches('/').to_string());
        }
        pods.push(pod);
    }
    for rel in &removed {
        assert!(cgroup_dirs(rel).is_empty(), "monitor cgroup {rel} left after RemoveContainer");
    }
    // The configured parent is shared by the handler's monitors: it stays.
    let parent_dirs = cgroup_dirs(parent.trim_start_matches('/'));
    assert!(!parent_dirs.is_empty(), "{parent} was created");
    for dir in parent_dirs {
        remove_cgroup_tree(&dir);
    }
    // Status lists every handler with its features, and verbose info their options.
    let req = cri::StatusRequest { verbose: true };
    let status = f.d.runtime().await.status(req).await.unwrap().into_inner();
    let mut names: Vec<&str> = status.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["", "crun", "linux-under", "runc", "runc-pod"]);
    for h in &status.runtime_handlers {
        let features = h.features.unwrap();
        let rro = match h.name.as_str() {
            "" | "linux-under" => true,
            "runc" | "runc-pod" => advertises_rro(RUNC),
            _ => advertises_rro(CRUN),
        };
        assert_eq!((features.recursive_read_only_mounts, features.user_namespaces), (rro, false), "{h:?}");
    }
    let info: serde_json::Value = serde_json::from_str(&status.info["runtimeHandlers"]).unwrap();
    let runc_pod = info.as_array().unwrap().iter().find(|h| h["name"] == "runc-pod").expect("runc-pod in {info}");
    assert_eq!(runc_pod["type"], "oci");
    assert_eq!(runc_pod["path"], RUNC);
    assert_eq!(runc_pod["options"]["monitor_cgroup"], "pod");
    assert_eq!(runc_pod["options"]["privileged_without_host_devices"], true);
    assert_eq!(runc_pod["features"]["recursiveReadOnlyMounts"], advertises_rro(RUNC));
    let default = info.as_array().unwrap().iter().find(|h| h["name"] == "default").expect("default in {info}");
    assert_eq!((&default["type"], &default["options"]["monitor_cgroup"]), (&"linux".into(), &"".into()));
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    f.finish(&pods).await;
}

/// Whether the OCI runtime at `path` lists `rro` in `features` (runc 1.1+, crun 1.8.6+).
fn advertises_rro(path: &str) -> bool {
    let out = std::process::Command::new(path).arg("features").output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    out.status.success() && doc["mountOptions"].as_array().is_some_and(|o| o.iter().any(|v| v == "rro"))
}

async fn recursive_read_only_mounts(handler: Handler) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let f = Fixture::new(handler).await;
    let (pod, pc) = f.pod("rro").await;
    let host = tempdir();
    let sub = host.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    mount(Some("tmpfs"), &sub, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).unwrap();
    let status = f.d.runtime().await.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let reported = status.runtime_handlers.iter().find(|h| h.name == handler.name()).expect("handler in Status");
    let rro = reported.features.unwrap().recursive_read_only_mounts;
    let mut ids = Vec::new();
    for (name, recursive) in [("plain", false), ("recursive", true)] {
        let mut c = f.container(name, "touch /vol/sub/x 2>/dev/null && echo sub-writable || echo sub-read-only");
        c.mounts = vec![cri::Mount {
            container_path: "/vol".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            recursive_read_only: recursive,
            ..Default::default()
        }];
        let id = f.create(&pod, &pc, c).await;
        ids.push(id.map(|id| (name, id)));
    }
    if !rro {
        // What the handler doesn't report it supports is refused, not done halfway.
        let err = ids.pop().unwrap().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("/vol") && err.message().contains("recursive read-only"), "{err:?}");
    }
    let mut seen = Vec::new();
    for created in &ids {
        let (name, id) = created.as_ref().expect("CreateContainer");
        f.start(id).await.unwrap();
        f.wait_exit(id).await;
        seen.push(log_lines(&f.log_file("rro", name)).into_iter().map(|l| l.2).collect::<Vec<_>>());
    }
    let _ = umount2(&sub, MntFlags::MNT_DETACH);
    // A plain read-only bind leaves the mounts under it writable; rro doesn't.
    let expected: &[&[&str]] = if rro { &[&["sub-writable"], &["sub-read-only"]] } else { &[&["sub-writable"]] };
    assert_eq!(seen, expected);
    f.finish(&[&pod]).await;
}

/// A record torn by a power loss (records are replaced without fsync) and no
/// run dir (tmpfs, gone with the reboot): the container is cleaned up at
/// start like an unfinished create, not left behind unlisted.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_record_after_a_reboot_is_cleaned_up() {
    let mut f = Fixture::new(Handler::Linux).await;
    let (pod, pc) = f.pod("torn").await;
    let id = f.run(&pod, &pc, "done", "exit 3").await;
    assert_eq!(f.wait_exit(&id).await.exit_code, 3);
    let record = f.d.root.join("containers").join(&id).join("state.json");
    let text = std::fs::read(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap();
    // What the reboot took: the rootfs mount and the run dir.
    let run = f.d.run.join("containers").join(&id);
    nix::mount::umount2(&run.join("rootfs"), nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir_all(&run).unwrap();
    f.d.restart().await;
    assert_eq!(f.status(&id).await.unwrap_err().code(), Code::NotFound);
    assert!(!record.exists(), "the torn container's files are left");
    f.finish(&[&pod]).await;
}
