//! End-to-end tests of the wasm runtime handler: WASI modules (text and
//! binary) in a pod of `runtime_handler = "wasm"`, next to a busybox
//! container of the same pod that runs as an ordinary Linux process.
#![cfg(feature = "wasm")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

/// Prints its args and environment (one per line), then `data/in.txt` of the
/// preopened "/", then exits with 7 through proc_exit.
const APP_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "data/in.txt")
  (data (i32.const 32) "\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 64) (local.get $ptr))
    (i32.store (i32.const 68) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 80))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func $print_lines (param $ptrs i32) (param $count i32) (local $i i32) (local $s i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.mul (local.get $i) (i32.const 4)))))
      (call $write (local.get $s) (call $strlen (local.get $s)))
      (call $write (i32.const 32) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 8192)))
    (call $print_lines (i32.const 1024) (i32.load (i32.const 0)))
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (call $print_lines (i32.const 1024) (i32.load (i32.const 0)))
    (if (i32.ne (call $path_open (i32.const 3) (i32.const 1) (i32.const 16) (i32.const 11)
                                 (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))
                (i32.const 0))
      (then (call $proc_exit (i32.const 99))))
    (i32.store (i32.const 64) (i32.const 65536))
    (i32.store (i32.const 68) (i32.const 4096))
    (drop (call $fd_read (i32.load (i32.const 8)) (i32.const 64) (i32.const 1) (i32.const 84)))
    (call $write (i32.const 65536) (i32.load (i32.const 84)))
    (call $proc_exit (i32.const 7))))
"#;

/// Parses, but needs an import WASI doesn't have.
const UNLINKABLE_WAT: &str = r#"(module (import "env" "missing" (func)) (func (export "_start")))"#;

/// Spins in wasm code until stopped.
const SPIN_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
"#;

struct Fixture {
    _registry: Registry,
    net: TestNet,
    d: Daemon,
    image: String,
    logs: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let registry = Registry::start().await;
        let host = registry.host();
        let spin = wat::parse_str(SPIN_WAT).unwrap();
        let app = Tar::new()
            .file("app.wat", 0o644, APP_WAT.as_bytes())
            .file("spin.wasm", 0o644, &spin)
            .file("unlinkable.wat", 0o644, UNLINKABLE_WAT.as_bytes())
            .finish();
        let image = Image::new(vec![busybox_layer(), Layer::new(app, Compression::Gzip)])
            .with("Entrypoint", serde_json::json!(["/app.wat"]));
        registry.push_image("wasm-app", "1", &image).await;
        let net = TestNet::new();
        let toml = format!("{}[runtimes.wasm]\ntype = \"wasm\"\n", insecure(&host));
        let d = Daemon::start_with_net(&net, &toml).await;
        let image = format!("{host}/wasm-app:1");
        d.pull(&image).await.expect("pull");
        Fixture { _registry: registry, net, d, image, logs: tempdir() }
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let mut config = pod_config(name);
        config.log_directory = self.logs.path().join(name).display().to_string();
        std::fs::create_dir_all(&config.log_directory).unwrap();
        let id = self.d.run_pod(config.clone(), "wasm").await.expect("RunPodSandbox");
        (id, config)
    }

    fn container(&self, name: &str, command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.to_string(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    async fn create(&self, pod: &str, pc: &cri::PodSandboxConfig, config: cri::ContainerConfig) -> String {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pc.clone()),
        };
        self.d.runtime().await.create_container(req).await.expect("CreateContainer").into_inner().container_id
    }

    async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest { container_id: id.to_string() };
        self.d.runtime().await.start_container(req).await.map(|_| ())
    }

    async fn run(&self, pod: &str, pc: &cri::PodSandboxConfig, config: cri::ContainerConfig) -> String {
        let id = self.create(pod, pc, config).await;
        self.start(&id).await.expect("StartContainer");
        id
    }

    async fn exec(&self, id: &str, cmd: &[&str]) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        };
        self.d.runtime().await.exec_sync(req).await.map(|r| r.into_inner())
    }

    async fn status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        self.d.runtime().await.container_status(req).await.expect("ContainerStatus").into_inner().status.unwrap()
    }

    async fn wait_exit(&self, id: &str) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status(id).await;
            if st.state == EXITED {
                return st;
            }
            assert!(Instant::now() < deadline, "container {id} still {} after 30s", st.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self, pod: &str, name: &str) -> Vec<String> {
        let path = self.logs.path().join(pod).join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // "<time> <stream> <tag> <text>"
        text.lines().map(|l| l.splitn(4, ' ').skip(1).collect::<Vec<_>>().join(" ")).collect()
    }

    async fn finish(self, pods: &[&str]) {
        for pod in pods {
            self.d.remove_pod(pod).await.expect("RemovePodSandbox");
        }
        let helpers = self.d.helper_pids();
        assert!(helpers.is_empty(), "monitors or helpers left: {helpers:?}");
        drop(self.d);
        self.net.finish();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wasi_module_and_linux_binary_share_a_wasm_pod() {
    let f = Fixture::new().await;
    let (pod, pc) = f.pod("wasm").await;
    let volume = tempdir();
    std::fs::write(volume.path().join("in.txt"), "from the volume\n").unwrap();
    let mut app = f.container("app", &[], &["one", "two words"]);
    app.envs = vec![cri::KeyValue { key: "GREETING".into(), value: "hello".into() }];
    app.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let app_id = f.run(&pod, &pc, app).await;
    let linux_id = f.run(&pod, &pc, f.container("sh", &["/bin/sh", "-c", "echo linux $(uname -s)"], &[])).await;

    let st = f.wait_exit(&app_id).await;
    assert_eq!(st.exit_code, 7, "{st:?}");
    let lines = f.log("wasm", "app");
    assert_eq!(lines[..3], ["stdout F /app.wat", "stdout F one", "stdout F two words"], "{lines:#?}");
    assert!(lines.iter().any(|l| l == "stdout F GREETING=hello"), "{lines:#?}");
    assert_eq!(lines.last().map(String::as_str), Some("stdout F from the volume"), "{lines:#?}");

    let st = f.wait_exit(&linux_id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(f.log("wasm", "sh"), ["stdout F linux Linux"]);

    // Compiled once: the second run loads the cached module.
    let cache = f.d.root.join("wasm-cache");
    let cached = names(&cache);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let again = f.run(&pod, &pc, f.container("again", &[], &[])).await;
    assert_eq!(f.wait_exit(&again).await.exit_code, 99, "no volume this time: path_open fails");
    assert_eq!(names(&cache), cached);
    f.finish(&[&pod]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_module_refuses_exec_and_stops_on_sigterm() {
    let f = Fixture::new().await;
    let (pod, pc) = f.pod("spin").await;
    let id = f.run(&pod, &pc, f.container("spin", &["/spin.wasm"], &[])).await;
    let err = f.exec(&id, &["/bin/true"]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("WebAssembly"), "{err:?}");
    // A Linux container of the same pod still takes commands.
    let sleeper = f.run(&pod, &pc, f.container("sleeper", &["/bin/sleep", "1000"], &[])).await;
    let out = f.exec(&sleeper, &["/bin/echo", "hi"]).await.expect("ExecSync in the Linux container");
    assert_eq!((out.exit_code, out.stdout), (0, b"hi\n".to_vec()));
    // A module that parses but can't be linked fails the start like a failed exec.
    let bad = f.create(&pod, &pc, f.container("bad", &["/unlinkable.wat"], &[])).await;
    let err = f.start(&bad).await.unwrap_err();
    assert!(err.message().contains("/unlinkable.wat") && err.message().contains("missing"), "{err:?}");
    assert_eq!(f.wait_exit(&bad).await.reason, "StartError");

    let started = Instant::now();
    let req = cri::StopContainerRequest { container_id: id.clone(), timeout: 30 };
    f.d.runtime().await.stop_container(req).await.expect("StopContainer");
    // SIGTERM interrupts the wasm loop; the 30s grace would mean it was killed instead.
    assert!(started.elapsed() < Duration::from_secs(10), "stop took {:?}", started.elapsed());
    let st = f.wait_exit(&id).await;
    assert_eq!(st.exit_code, 128 + libc::SIGTERM, "{st:?}");
    f.finish(&[&pod]).await;
}
