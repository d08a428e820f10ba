//! End-to-end tests of the wasm runtime handler: WASI modules (text and
//! binary) in a pod of `runtime_handler = "wasm"`, next to a busybox
//! container of the same pod that runs as an ordinary Linux process.
#![cfg(feature = "wasm")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";

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

/// A `wasi:cli/command` component (WASI preview 2): prints its arguments,
/// then its environment as KEY=VALUE, one per line, then exits with 5
/// through `exit-with-code`.
const CLI_COMPONENT_WAT: &str = r#"(component
  (core module $mem
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32) (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
      (global.set $next (i32.add (local.get $p) (local.get $size)))
      (local.get $p)))
  (core instance $mem (instantiate $mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))
  (import "wasi:io/error@0.2.0" (instance $io-error (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $error))
    (type $stream-error (variant (case "last-operation-failed" (own $error)) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (export "output-stream" (type $os (sub resource)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout (export "get-stdout" (func (result (own $output-stream))))))
  (import "wasi:cli/environment@0.2.0" (instance $environment
    (export "get-environment" (func (result (list (tuple string string)))))
    (export "get-arguments" (func (result (list string))))))
  (import "wasi:cli/exit@0.2.0" (instance $exit (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $c-write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core func $c-stdout (canon lower (func $stdout "get-stdout")))
  (core func $c-args (canon lower (func $environment "get-arguments") (memory $memory) (realloc $realloc)))
  (core func $c-env (canon lower (func $environment "get-environment") (memory $memory) (realloc $realloc)))
  (core func $c-exit (canon lower (func $exit "exit-with-code")))
  (core module $main
    (import "mem" "memory" (memory 1))
    (import "wasi" "get-stdout" (func $get-stdout (result i32)))
    (import "wasi" "write" (func $write (param i32 i32 i32 i32)))
    (import "wasi" "get-arguments" (func $get-arguments (param i32)))
    (import "wasi" "get-environment" (func $get-environment (param i32)))
    (import "wasi" "exit" (func $exit (param i32)))
    (data (i32.const 32) "\n=")
    (global $out (mut i32) (i32.const 0))
    (func $print (param $p i32) (param $n i32)
      (call $write (global.get $out) (local.get $p) (local.get $n) (i32.const 48)))
    (func (export "run") (result i32) (local $list i32) (local $n i32) (local $i i32) (local $e i32)
      (global.set $out (call $get-stdout))
      (call $get-arguments (i32.const 0))
      (local.set $list (i32.load (i32.const 0)))
      (local.set $n (i32.load (i32.const 4)))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $e (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 3))))
        (call $print (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)))
        (call $print (i32.const 32) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (call $get-environment (i32.const 0))
      (local.set $list (i32.load (i32.const 0)))
      (local.set $n (i32.load (i32.const 4)))
      (local.set $i (i32.const 0))
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $e (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 4))))
        (call $print (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)))
        (call $print (i32.const 33) (i32.const 1))
        (call $print (i32.load offset=8 (local.get $e)) (i32.load offset=12 (local.get $e)))
        (call $print (i32.const 32) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (call $exit (i32.const 5))
      (i32.const 1)))
  (core instance $main (instantiate $main
    (with "mem" (instance $mem))
    (with "wasi" (instance
      (export "get-stdout" (func $c-stdout))
      (export "write" (func $c-write))
      (export "get-arguments" (func $c-args))
      (export "get-environment" (func $c-env))
      (export "exit" (func $c-exit))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
"#;

/// A core module whose `_start` exits with 1 and whose `greet` exits with 3.
const TWO_ENTRIES_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 1)))
  (func (export "greet") (call $exit (i32.const 3))))
"#;

/// Parses, but needs an import WASI doesn't have.
const UNLINKABLE_WAT: &str = r#"(module (import "env" "missing" (func)) (func (export "_start")))"#;

/// Prints "spinning" (a WASI call), then spins in wasm code until stopped.
const SPIN_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "spinning\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $forever (br $forever))))
"#;

/// Traps: wasmtime's fault handlers must be in place in the init.
const TRAP_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;

struct Fixture {
    _registry: Registry,
    net: TestNet,
    d: Daemon,
    image: String,
    logs: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_config("").await
    }

    /// With `extra` appended to the daemon's config.
    async fn with_config(extra: &str) -> Fixture {
        let registry = Registry::start().await;
        let host = registry.host();
        let spin = wat::parse_str(SPIN_WAT).unwrap();
        let app = Tar::new()
            .file("app.wat", 0o644, APP_WAT.as_bytes())
            .file("spin.wasm", 0o644, &spin)
            .file("trap.wasm", 0o644, &wat::parse_str(TRAP_WAT).unwrap())
            .file("unlinkable.wat", 0o644, UNLINKABLE_WAT.as_bytes())
            .file("cli.wasm", 0o644, &wat::parse_str(CLI_COMPONENT_WAT).unwrap())
            .file("two.wat", 0o644, TWO_ENTRIES_WAT.as_bytes())
            .file("mod", 0o755, &wat::parse_str(TWO_ENTRIES_WAT).unwrap())
            .finish();
        let image = Image::new(vec![busybox_layer(), Layer::new(app, Compression::Gzip)])
            .with("Entrypoint", serde_json::json!(["/app.wat"]));
        registry.push_image("wasm-app", "1", &image).await;
        // The same files, with the image variant annotation on the manifest (and a config of its own).
        let smart = image.clone().with("Labels", serde_json::json!({"variant": "compat-smart"}));
        let config = smart.config();
        registry.push_blob("wasm-app", &config).await;
        let mut manifest: serde_json::Value = serde_json::from_slice(&smart.manifest(&config)).unwrap();
        manifest["annotations"] = serde_json::json!({"module.wasm.image/variant": "compat-smart"});
        let manifest = serde_json::to_vec(&manifest).unwrap();
        registry.push_manifest("wasm-app", "smart", OCI_MANIFEST_TYPE, &manifest).await;
        let net = TestNet::new();
        let toml = format!(
            "{}[runtimes.wasm]\ntype = \"wasm\"\nallowed_annotations = [\"module.wasm.image/variant\"]\n\
             [runtimes.crunlike]\ntype = \"linux\"\nallowed_annotations = [\"run.oci.\"]\n{extra}",
            insecure(&host)
        );
        let d = Daemon::start_with_net(&net, &toml).await;
        let image = format!("{host}/wasm-app:1");
        d.pull(&image).await.expect("pull");
        Fixture { _registry: registry, net, d, image, logs: tempdir() }
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        self.pod_on(name, "wasm").await
    }

    async fn pod_on(&self, name: &str, handler: &str) -> (String, cri::PodSandboxConfig) {
        let mut config = pod_config(name);
        config.log_directory = self.logs.path().join(name).display().to_string();
        std::fs::create_dir_all(&config.log_directory).unwrap();
        let id = self.d.run_pod(config.clone(), handler).await.expect("RunPodSandbox");
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
        self.try_create(pod, pc, config).await.expect("CreateContainer")
    }

    async fn try_create(
        &self,
        pod: &str,
        pc: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.d.create_container(pod, pc, config).await
    }

    async fn start(&self, id: &str) -> Result<(), tonic::Status> {
        self.d.start_container(id).await
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

    /// The names of the container init's threads.
    async fn init_threads(&self, id: &str) -> Vec<String> {
        let pid = self.d.container_info(id).await["pid"].as_i64().expect("pid");
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks.map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap().trim().to_string()).collect()
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
        let helpers = self.d.helpers_but_preloaders();
        assert!(helpers.is_empty(), "monitors or helpers left: {helpers:?}");
        let mut d = self.d;
        let preloaders = d.preloader_pids();
        // They go with the daemon, on their own.
        d.stop(Duration::from_secs(10));
        wait_gone(&preloaders, 10).await;
        drop(d);
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
    let lines = f.log("wasm", "again");
    assert!(lines[0] == "stdout F /app.wat" && !lines.contains(&"stdout F one".into()), "{lines:#?}");
    assert_eq!(names(&cache), cached);
    f.finish(&[&pod]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_module_refuses_exec_and_stops_on_sigterm() {
    let f = Fixture::new().await;
    let (pod, pc) = f.pod("spin").await;
    let id = f.run(&pod, &pc, f.container("spin", &["/spin.wasm"], &[])).await;
    // Once it made a WASI call: the program's thread (host calls included) and
    // one awaiting stop signals; none per CPU of the node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spin_log = f.logs.path().join("spin").join("spin.log");
    while !std::fs::read_to_string(&spin_log).unwrap_or_default().contains("stdout F spinning") {
        assert!(Instant::now() < deadline, "no output from spin.wasm");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let threads = f.init_threads(&id).await;
    assert_eq!(threads.len(), 2, "{threads:?}");
    let err = f.exec(&id, &["/bin/true"]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("WebAssembly"), "{err:?}");
    // A Linux container of the same pod still takes commands.
    let sleeper = f.run(&pod, &pc, f.container("sleeper", &["/bin/sleep", "1000"], &[])).await;
    let out = f.exec(&sleeper, &["/bin/echo", "hi"]).await.expect("ExecSync in the Linux container");
    assert_eq!((out.exit_code, out.stdout), (0, b"hi\n".to_vec()));
    // Root in a container of the pod (its PID namespace shared) can't reach the
    // wasm init's descriptors (its compiled code's file among them).
    let probe = "for p in /proc/[0-9]*; do case $(tr '\\0' ' ' < $p/cmdline) in cricket*monitor*) \
                 readlink $p/fd/0 >/dev/null 2>&1 && echo open || echo denied;; esac; done";
    let out = f.exec(&sleeper, &["/bin/sh", "-c", probe]).await.expect("ExecSync");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "denied\n", "{out:?}");
    // A module that parses but can't be linked fails the start like a failed exec.
    let bad = f.create(&pod, &pc, f.container("bad", &["/unlinkable.wat"], &[])).await;
    let err = f.start(&bad).await.unwrap_err();
    assert!(err.message().contains("/unlinkable.wat") && err.message().contains("missing"), "{err:?}");
    assert_eq!(f.wait_exit(&bad).await.reason, "StartError");

    // A trap ends the program with 1 and a message, compiled just now or loaded from the cache.
    for name in ["trap1", "trap2"] {
        let trap = f.run(&pod, &pc, f.container(name, &["/trap.wasm"], &[])).await;
        assert_eq!(f.wait_exit(&trap).await.exit_code, 1);
        let lines = f.log("spin", name);
        assert!(lines[0].contains("module /trap.wasm failed"), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("wasm trap: wasm `unreachable`")), "{lines:#?}");
    }

    let started = Instant::now();
    let req = cri::StopContainerRequest { container_id: id.clone(), timeout: 30 };
    f.d.runtime().await.stop_container(req).await.expect("StopContainer");
    // SIGTERM interrupts the wasm loop; the 30s grace would mean it was killed instead.
    assert!(started.elapsed() < Duration::from_secs(10), "stop took {:?}", started.elapsed());
    let st = f.wait_exit(&id).await;
    assert_eq!(st.exit_code, 128 + libc::SIGTERM, "{st:?}");
    f.finish(&[&pod]).await;
}

/// Pushes a Wasm OCI artifact: `config` as its config blob, `layers` as
/// (media type, bytes); returns the config digest (the image ID) and the
/// size CRI reports (config plus layers).
async fn push_artifact(
    registry: &Registry,
    repo: &str,
    config: serde_json::Value,
    layers: &[(&str, Vec<u8>)],
) -> (String, u64) {
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = registry.push_blob(repo, &config).await;
    let mut descriptors = Vec::new();
    for (media_type, data) in layers {
        let digest = registry.push_blob(repo, data).await;
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_TYPE,
        "artifactType": WASM_CONFIG_TYPE,
        "config": {"mediaType": WASM_CONFIG_TYPE, "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    });
    registry.push_manifest(repo, "1", OCI_MANIFEST_TYPE, &serde_json::to_vec(&manifest).unwrap()).await;
    let size = config.len() + layers.iter().map(|(_, d)| d.len()).sum::<usize>();
    (config_digest, size as u64)
}

fn wasm_config(os: &str, layers: &[&[u8]]) -> serde_json::Value {
    let digests: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "wasm",
        "os": os,
        "layerDigests": digests,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_oci_artifacts_are_pulled_listed_and_run() {
    let registry = Registry::start().await;
    let host = registry.host();
    let module = wat::parse_str(APP_WAT).unwrap();
    let component = wat::parse_str(CLI_COMPONENT_WAT).unwrap();
    let (module_id, module_size) = push_artifact(
        &registry,
        "art-module",
        wasm_config("wasip1", &[&module]),
        &[("application/wasm", module.clone())],
    )
    .await;
    let mut cli_config = wasm_config("wasip2", &[&component]);
    cli_config["component"] = serde_json::json!({"exports": ["wasi:cli/run@0.2.0"], "imports": [], "target": null});
    let component_layer = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
    let (cli_id, _) = push_artifact(&registry, "art-cli", cli_config, &[(component_layer, component.clone())]).await;
    // Refused: two modules, a layer that isn't wasm, a config that isn't a wasm one.
    let two = [("application/wasm", module.clone()), ("application/wasm", component.clone())];
    push_artifact(&registry, "bad-two", wasm_config("wasip1", &[&module, &component]), &two).await;
    let tar = Layer::new(Tar::new().file("app.wasm", 0o644, &module).finish(), Compression::Gzip).blob;
    push_artifact(&registry, "bad-tar", wasm_config("wasip1", &[&tar]), &[("application/wasm", tar.clone())]).await;
    let mut amd64 = wasm_config("wasip1", &[&module]);
    amd64["architecture"] = "amd64".into();
    push_artifact(&registry, "bad-config", amd64, &[("application/wasm", module.clone())]).await;

    let net = TestNet::new();
    let toml = format!("{}[runtimes.wasm]\ntype = \"wasm\"\n", insecure(&host));
    let d = Daemon::start_with_net(&net, &toml).await;
    let (snapshots, blobs) = (d.snapshot_dirs(), d.blobs());
    for (repo, code, needle) in [
        ("bad-two", Code::FailedPrecondition, "2 layers"),
        ("bad-tar", Code::DataLoss, "not a WebAssembly module or component"),
        ("bad-config", Code::DataLoss, "architecture is \"amd64\""),
    ] {
        let err = d.pull(&format!("{host}/{repo}:1")).await.unwrap_err();
        assert_eq!(err.code(), code, "{repo}: {err:?}");
        assert!(err.message().contains(needle), "{repo}: {err:?}");
    }
    assert_eq!((d.snapshot_dirs(), d.blobs()), (snapshots, blobs), "refused artifacts left nothing");
    assert!(d.tmp_entries().is_empty());

    assert_eq!(d.pull(&format!("{host}/art-module:1")).await.expect("pull module"), module_id);
    assert_eq!(d.pull(&format!("{host}/art-cli:1")).await.expect("pull component"), cli_id);
    let listed = d.list_images().await;
    let image = listed.iter().find(|i| i.id == module_id).expect("listed");
    assert_eq!(image.repo_tags, [format!("{host}/art-module:1")]);
    assert_eq!((image.size, image.uid, image.username.as_str()), (module_size, None, ""));
    let snapshot = d.snapshot(&sha256(&module)).expect("the module's snapshot");
    assert_eq!(std::fs::read(snapshot.join("app.wasm")).unwrap(), module);

    let logs = tempdir();
    let pod = |name: &str, handler: &str| {
        let mut config = pod_config(name);
        config.log_directory = logs.path().join(name).display().to_string();
        std::fs::create_dir_all(&config.log_directory).unwrap();
        (config, handler.to_string())
    };
    let (wasm_pc, handler) = pod("art", "wasm");
    let wasm_pod = d.run_pod(wasm_pc.clone(), &handler).await.expect("RunPodSandbox");
    let volume = tempdir();
    std::fs::write(volume.path().join("in.txt"), "from the volume\n").unwrap();
    let container = |name: &str, image: &str, command: &[&str], args: &[&str]| cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.to_string(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: vec![cri::KeyValue { key: "GREETING".into(), value: "hello".into() }],
        log_path: format!("{name}.log"),
        ..Default::default()
    };
    let run = |pod: String, pc: cri::PodSandboxConfig, config: cri::ContainerConfig| {
        let d = &d;
        async move {
            let req =
                cri::CreateContainerRequest { pod_sandbox_id: pod, config: Some(config), sandbox_config: Some(pc) };
            let id = d.runtime().await.create_container(req).await?.into_inner().container_id;
            let req = cri::StartContainerRequest { container_id: id.clone() };
            d.runtime().await.start_container(req).await?;
            Ok::<String, tonic::Status>(id)
        }
    };
    let wait_exit = |id: String| {
        let d = &d;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let req = cri::ContainerStatusRequest { container_id: id.clone(), verbose: false };
                let st = d.runtime().await.container_status(req).await.unwrap().into_inner().status.unwrap();
                if st.state == EXITED {
                    return st;
                }
                assert!(Instant::now() < deadline, "container {id} still running after 30s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let log = |name: &str| -> Vec<String> {
        let text = std::fs::read_to_string(logs.path().join("art").join(format!("{name}.log"))).unwrap();
        text.lines().map(|l| l.splitn(4, ' ').skip(1).collect::<Vec<_>>().join(" ")).collect()
    };

    // The module is the entrypoint whatever the command names (runwasi's way); args follow it.
    let mut mod_config = container("mod", &format!("{host}/art-module:1"), &["hello.wasm"], &["a b"]);
    mod_config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    // Compiled by the monitor, then loaded from the cache and instantiated while the
    // container is set up: the same args, environment and volume either way.
    for name in ["mod", "mod-again"] {
        let mut config = mod_config.clone();
        config.metadata = Some(cri::ContainerMetadata { name: name.into(), attempt: 0 });
        config.log_path = format!("{name}.log");
        let id = run(wasm_pod.clone(), wasm_pc.clone(), config).await.expect("module artifact");
        assert_eq!(wait_exit(id).await.exit_code, 7);
        let lines = log(name);
        assert_eq!(lines[..2], ["stdout F hello.wasm", "stdout F a b"], "{lines:#?}");
        assert!(lines.contains(&"stdout F GREETING=hello".to_string()), "{lines:#?}");
        assert_eq!(lines.last().map(String::as_str), Some("stdout F from the volume"));
    }

    // A component runs wasi:cli/run; without a command its argv[0] is the binary's path.
    let id = run(wasm_pod.clone(), wasm_pc.clone(), container("cli", &cli_id, &[], &["x"])).await.expect("component");
    assert_eq!(wait_exit(id).await.exit_code, 5);
    let lines = log("cli");
    assert_eq!(lines[..2], ["stdout F /app.wasm", "stdout F x"], "{lines:#?}");
    assert!(lines.contains(&"stdout F GREETING=hello".to_string()), "{lines:#?}");
    let cached = names(&d.root.join("wasm-cache"));
    assert_eq!(cached.iter().filter(|n| n.ends_with(".component.cwasm")).count(), 1, "{cached:?}");
    assert_eq!(cached.len(), 2, "{cached:?}");

    // Only a wasm handler runs them.
    let (linux_pc, handler) = pod("linux", "");
    let linux_pod = d.run_pod(linux_pc.clone(), &handler).await.expect("RunPodSandbox");
    let err = run(linux_pod.clone(), linux_pc, container("no", &module_id, &[], &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("Wasm OCI artifact") && err.message().contains("\"default\""), "{err:?}");

    for pod in [&wasm_pod, &linux_pod] {
        d.remove_pod(pod).await.expect("RemovePodSandbox");
    }
    // An image's compiled code goes with the image.
    d.remove(&cli_id).await.expect("RemoveImage");
    let left = names(&d.root.join("wasm-cache"));
    let module_code = cached.iter().find(|n| !n.ends_with(".component.cwasm")).unwrap();
    assert_eq!(left.into_iter().collect::<Vec<_>>(), std::slice::from_ref(module_code));
    assert!(d.helpers_but_preloaders().is_empty(), "monitors or helpers left: {:?}", d.helper_pids());
    drop(d);
    net.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn components_and_exports_named_by_path_hash_func() {
    let f = Fixture::new().await;
    let (pod, pc) = f.pod("cli").await;
    let mut cli = f.container("cli", &["/cli.wasm"], &["one"]);
    cli.envs = vec![cri::KeyValue { key: "K".into(), value: "v".into() }];
    let cli = f.run(&pod, &pc, cli).await;
    assert_eq!(f.wait_exit(&cli).await.exit_code, 5);
    let lines = f.log("cli", "cli");
    assert_eq!(lines[..2], ["stdout F /cli.wasm", "stdout F one"], "{lines:#?}");
    assert!(lines.contains(&"stdout F K=v".to_string()), "{lines:#?}");
    let start = f.run(&pod, &pc, f.container("start", &["/two.wat"], &[])).await;
    assert_eq!(f.wait_exit(&start).await.exit_code, 1);
    let greet = f.run(&pod, &pc, f.container("greet", &["/two.wat#greet"], &[])).await;
    assert_eq!(f.wait_exit(&greet).await.exit_code, 3);
    f.finish(&[&pod]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crun_wasm_annotations_act_only_where_allowed() {
    let f = Fixture::new().await;
    let smart = format!("{}:smart", f.image.strip_suffix(":1").unwrap());
    f.d.pull(&smart).await.expect("pull the annotated image");
    let annotated = |name: &str, image: &str, command: &[&str], key: &str, value: &str| {
        let mut c = f.container(name, command, &[]);
        c.image = Some(cri::ImageSpec { image: image.to_string(), ..Default::default() });
        if !key.is_empty() {
            c.annotations.insert(key.to_string(), value.to_string());
        }
        c
    };
    // The wasm handler allows the image variant: compat-smart runs only `*.wasm`/`*.wat`
    // entrypoints as wasm, so the module named /mod is exec'd (and fails) though it is one.
    let (wasm_pod, wasm_pc) = f.pod("smart").await;
    let app = f.run(&wasm_pod, &wasm_pc, annotated("app", &smart, &["/app.wat"], "", "")).await;
    assert_eq!(f.wait_exit(&app).await.exit_code, 99, "ran as wasm (no volume: path_open fails)");
    let exec = f.create(&wasm_pod, &wasm_pc, annotated("mod", &smart, &["/mod"], "", "")).await;
    let err = f.start(&exec).await.unwrap_err();
    assert!(err.message().contains("/mod"), "{err:?}");
    // Without the variant the wasm handler goes by content: the same /mod runs as wasm.
    let plain = f.run(&wasm_pod, &wasm_pc, annotated("plain", &f.image, &["/mod"], "", "")).await;
    assert_eq!(f.wait_exit(&plain).await.exit_code, 1);
    // `run.oci.handler` isn't allowed on the wasm handler: no effect.
    let ignored = annotated("ignored", &smart, &["/mod"], "run.oci.handler", "wasm");
    let ignored = f.create(&wasm_pod, &wasm_pc, ignored).await;
    assert!(f.start(&ignored).await.is_err(), "compat-smart still decides");

    // Status lists what each handler allows.
    let status = f.d.runtime().await.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let handlers: serde_json::Value = serde_json::from_str(&status.info["runtimeHandlers"]).unwrap();
    let allowed = |name: &str| {
        let h = handlers.as_array().unwrap().iter().find(|h| h["name"] == name).unwrap();
        h["options"]["allowed_annotations"].clone()
    };
    assert_eq!(allowed("crunlike"), serde_json::json!(["run.oci."]));
    assert_eq!(allowed("default"), serde_json::json!([]));

    // A linux handler allowing run.oci.*: run.oci.handler=wasm runs the module.
    let (crun_pod, crun_pc) = f.pod_on("crun", "crunlike").await;
    let wasm =
        f.run(&crun_pod, &crun_pc, annotated("wasm", &f.image, &["/mod#greet"], "run.oci.handler", "wasm")).await;
    assert_eq!(f.wait_exit(&wasm).await.exit_code, 3);
    let linux = annotated("linux", &f.image, &["/bin/sh", "-c", "exit 4"], "run.oci.handler", "wasm-smart");
    let linux = f.run(&crun_pod, &crun_pc, linux).await;
    assert_eq!(f.wait_exit(&linux).await.exit_code, 4);

    // The default handler allows nothing: the annotation is in the spec, the module is exec'd.
    let (plain_pod, plain_pc) = f.pod_on("plain", "").await;
    let denied =
        f.create(&plain_pod, &plain_pc, annotated("denied", &f.image, &["/mod"], "run.oci.handler", "wasm")).await;
    let verbose = f.d.container_info(&denied).await;
    assert_eq!(verbose["runtimeSpec"]["annotations"]["run.oci.handler"], "wasm");
    let err = f.start(&denied).await.unwrap_err();
    assert!(err.message().contains("/mod"), "{err:?}");
    f.finish(&[&wasm_pod, &crun_pod, &plain_pod]).await;
}

/// Waits (`secs` at most) until none of `pids` runs.
async fn wait_gone(pids: &[i32], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(pid) = pids.iter().find(|p| is_running(**p)) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (10 s at most) for a process keeping a wasm program loaded, other
/// than those in `known`, to be ready for the program's next start.
async fn wait_preloader(d: &Daemon, known: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log();
        let ready =
            |pid: &i32| log.lines().any(|l| l.contains("wasm program preloaded") && l.contains(&format!("pid={pid}")));
        if let Some(pid) = d.preloader_pids().into_iter().find(|p| !known.contains(p) && ready(p)) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no new cricket wasm-preload (known: {known:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Field `n` (1-based) of /proc/<pid>/stat.
fn stat_field(pid: i32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n - 3).unwrap().to_string()
}

fn parent(pid: i32) -> i32 {
    stat_field(pid, 4).parse().unwrap()
}

fn cmdline(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

impl Fixture {
    /// The pid of the container's monitor (the init's parent).
    async fn monitor(&self, id: &str) -> i32 {
        parent(self.d.container_info(id).await["pid"].as_i64().expect("pid") as i32)
    }

    async fn wait_output(&self, pod: &str, name: &str, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = self.logs.path().join(pod).join(format!("{name}.log"));
        while !std::fs::read_to_string(&log).unwrap_or_default().contains(line) {
            assert!(Instant::now() < deadline, "{name} did not print {line:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn preloaded_programs_fork_monitors_and_go_with_the_daemon_or_the_image() {
    let mut f = Fixture::new().await;
    let (pod, pc) = f.pod("pre").await;
    // The first start of a program runs a monitor of its own; then the program is preloaded.
    let mut app = f.container("app1", &[], &["one", "two words"]);
    app.envs = vec![cri::KeyValue { key: "GREETING".into(), value: "hello".into() }];
    let first = f.create(&pod, &pc, app.clone()).await;
    let own = parent(f.monitor(&first).await);
    assert!(!cmdline(own).contains(&"wasm-preload".to_string()), "{:?}", cmdline(own));
    f.start(&first).await.expect("StartContainer");
    assert_eq!(f.wait_exit(&first).await.exit_code, 99);
    let preloader = wait_preloader(&f.d, &[]).await;
    let threads = stat_field(preloader, 20);
    assert_eq!(threads, "1", "a process that forks must have one thread");
    // The next one's monitor is its fork, and named like any monitor; the program
    // sees the same args and env, and its memory its data (from the mapped code).
    app.metadata.as_mut().unwrap().name = "app2".into();
    app.log_path = "app2.log".into();
    let second = f.create(&pod, &pc, app).await;
    assert_eq!(parent(f.monitor(&second).await), preloader);
    f.start(&second).await.expect("StartContainer");
    assert_eq!(f.wait_exit(&second).await.exit_code, 99);
    assert_eq!(f.log("pre", "app2"), f.log("pre", "app1"));
    // A burst: every monitor is forked, one after the other.
    let burst = |name: &str| {
        let mut c = f.container(name, &["/two.wat"], &[]);
        c.metadata.as_mut().unwrap().name = name.into();
        c
    };
    let two = f.run(&pod, &pc, burst("two")).await;
    assert_eq!(f.wait_exit(&two).await.exit_code, 1);
    let two_preloader = wait_preloader(&f.d, &[preloader]).await;
    let (a, b, c) = tokio::join!(
        f.create(&pod, &pc, burst("b1")),
        f.create(&pod, &pc, burst("b2")),
        f.create(&pod, &pc, burst("b3"))
    );
    for id in [a, b, c] {
        assert_eq!(parent(f.monitor(&id).await), two_preloader);
        f.start(&id).await.expect("StartContainer");
        assert_eq!(f.wait_exit(&id).await.exit_code, 1);
    }

    let spin1 = f.run(&pod, &pc, f.container("spin1", &["/spin.wasm"], &[])).await;
    let spin_preloader = wait_preloader(&f.d, &[preloader, two_preloader]).await;
    let spin2 = f.run(&pod, &pc, f.container("spin2", &["/spin.wasm"], &[])).await;
    let monitor = f.monitor(&spin2).await;
    assert_eq!(parent(monitor), spin_preloader);
    assert_eq!(cmdline(monitor)[..3], ["cricket", "monitor", "--config"]);
    f.wait_output("pre", "spin2", "stdout F spinning").await;
    assert_eq!(f.init_threads(&spin2).await.len(), 2);

    // A restart lets the preloaded programs go; the containers they started live on.
    f.d.restart().await;
    wait_gone(&[preloader, two_preloader, spin_preloader], 10).await;
    for id in [&spin2, &spin1] {
        let req = cri::StopContainerRequest { container_id: id.clone(), timeout: 30 };
        f.d.runtime().await.stop_container(req).await.expect("StopContainer");
        assert_eq!(f.wait_exit(id).await.exit_code, 128 + libc::SIGTERM);
    }
    // Removing the image lets its programs go.
    let again = f.run(&pod, &pc, f.container("spin3", &["/spin.wasm"], &[])).await;
    let preloader = wait_preloader(&f.d, &[]).await;
    f.d.remove(&f.image).await.expect("RemoveImage");
    wait_gone(&[preloader], 10).await;
    let req = cri::StopContainerRequest { container_id: again, timeout: 30 };
    f.d.runtime().await.stop_container(req).await.expect("StopContainer");
    f.finish(&[&pod]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preloaded_programs_go_when_over_the_limit_or_stuck() {
    let f = Fixture::with_config("[wasm]\npreloaded = 2\n").await;
    let (pod, pc) = f.pod("limit").await;
    let run = |name: &str, program: &str, code: i32| {
        let (config, program) = (f.container(name, &[program], &[]), program.to_string());
        let (f, pod, pc) = (&f, &pod, &pc);
        async move {
            let id = f.run(pod, pc, config).await;
            assert_eq!(f.wait_exit(&id).await.exit_code, code, "{program}");
        }
    };
    run("two", "/two.wat", 1).await;
    let two = wait_preloader(&f.d, &[]).await;
    run("trap", "/trap.wasm", 1).await;
    let trap = wait_preloader(&f.d, &[two]).await;
    // Room for two: a third program lets the least recently used go, at once.
    run("two-again", "/two.wat", 1).await;
    run("cli", "/cli.wasm", 5).await;
    wait_gone(&[trap], 2).await;
    assert!(is_running(two), "the program used last is kept");
    let cli = wait_preloader(&f.d, &[two, trap]).await;
    // One that takes no request (stopped) is killed, and the container gets a monitor of its own.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(two), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let again = f.create(&pod, &pc, f.container("stuck", &["/two.wat"], &[])).await;
    assert_ne!(parent(f.monitor(&again).await), two);
    wait_gone(&[two], 10).await;
    f.start(&again).await.expect("StartContainer");
    assert_eq!(f.wait_exit(&again).await.exit_code, 1);
    // And the program is preloaded again.
    wait_preloader(&f.d, &[two, trap, cli]).await;
    f.finish(&[&pod]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preloaded_programs_go_when_idle() {
    let f = Fixture::with_config("[wasm]\npreload_idle_secs = 2\n").await;
    let (pod, pc) = f.pod("idle").await;
    let two = f.run(&pod, &pc, f.container("two", &["/two.wat"], &[])).await;
    assert_eq!(f.wait_exit(&two).await.exit_code, 1);
    let preloader = wait_preloader(&f.d, &[]).await;
    wait_gone(&[preloader], 10).await;
    assert!(f.d.preloader_pids().is_empty());
    // Forgotten by the daemon too: the next start runs a monitor of its own, and preloads again.
    let again = f.create(&pod, &pc, f.container("again", &["/two.wat"], &[])).await;
    assert!(!cmdline(parent(f.monitor(&again).await)).contains(&"wasm-preload".to_string()));
    f.start(&again).await.expect("StartContainer");
    assert_eq!(f.wait_exit(&again).await.exit_code, 1);
    wait_preloader(&f.d, &[preloader]).await;
    f.finish(&[&pod]).await;
}
