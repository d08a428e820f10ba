//! End-to-end tests of the Exec streaming server: `cricket serve` with a
//! busybox container, driven by a small SPDY/3.1 client built on the
//! daemon's own framing module, and by crictl when it is installed.

mod common;

#[path = "../src/streaming/spdy/mod.rs"]
#[allow(dead_code)]
mod spdy;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use spdy::{Frame, HeaderCompressor, HeaderDecompressor, Headers, FLAG_FIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const CRICTL: &str = "/usr/local/bin/crictl";

struct Fixture {
    _registry: Registry,
    net: TestNet,
    d: Daemon,
    pod: String,
    pod_config: cri::PodSandboxConfig,
    image: String,
    id: String,
    _logs: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_config("").await
    }

    /// With more daemon configuration (TOML).
    async fn with_config(extra: &str) -> Fixture {
        let registry = Registry::start().await;
        let host = registry.host();
        registry.push_image("busybox", "1", &Image::new(vec![busybox_layer()])).await;
        let net = TestNet::new();
        let d = Daemon::start_with_net(&net, &format!("{}{extra}", insecure(&host))).await;
        let image = format!("{host}/busybox:1");
        d.pull(&image).await.expect("pull busybox");
        let logs = tempdir();
        let mut pc = pod_config("streaming");
        pc.log_directory = logs.path().display().to_string();
        let pod = d.run_pod(pc.clone(), "").await.expect("RunPodSandbox");
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: image.clone(), ..Default::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 1000".into()],
            log_path: "main.log".into(),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pc.clone()),
        };
        let id = d.runtime().await.create_container(req).await.expect("CreateContainer").into_inner().container_id;
        let req = cri::StartContainerRequest { container_id: id.clone() };
        d.runtime().await.start_container(req).await.expect("StartContainer");
        Fixture { _registry: registry, net, d, pod, pod_config: pc, image, id, _logs: logs }
    }

    /// Runs another container in the pod; its id.
    async fn run(&self, name: &str, script: &str) -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: self.pod.clone(),
            config: Some(config),
            sandbox_config: Some(self.pod_config.clone()),
        };
        let mut rt = self.d.runtime().await;
        let id = rt.create_container(req).await.expect("CreateContainer").into_inner().container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
        id
    }

    async fn exec_url(&self, req: cri::ExecRequest) -> Result<String, tonic::Status> {
        self.d.runtime().await.exec(req).await.map(|r| r.into_inner().url)
    }

    fn request(&self, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
        cri::ExecRequest {
            container_id: self.id.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        }
    }

    async fn finish(self) {
        self.d.remove_pod(&self.pod).await.expect("RemovePodSandbox");
        let helpers = self.d.helper_pids();
        assert!(helpers.is_empty(), "monitors or helpers left: {helpers:?}");
        drop(self.d);
        self.net.finish();
    }
}

/// Sends the upgrade request; the HTTP status and the connection.
async fn upgrade(url: &str, protocols: &[&str]) -> (u16, String, TcpStream) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = TcpStream::connect(host).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "connection closed in the response head");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, conn)
}

#[derive(Debug, Default)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
    replies: usize,
    go_away: bool,
    /// Streams the server half-closed, in order.
    fins: Vec<&'static str>,
}

impl Outcome {
    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.error)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.error)))
    }
}

/// A client in the way client-go's remotecommand v4 is: error stream first,
/// then stdin, stdout, stderr (resize with a terminal); stdin is sent then
/// half-closed; frames are read until the server closes.
struct Client {
    conn: TcpStream,
    compressor: HeaderCompressor,
    /// The server's header compression runs over the whole connection, as does what was read.
    decompressor: HeaderDecompressor,
    buf: Vec<u8>,
    next_id: u32,
    ids: HashMap<&'static str, u32>,
}

impl Client {
    async fn open(conn: TcpStream, kinds: &[&'static str]) -> Client {
        let mut c = Client {
            conn,
            compressor: HeaderCompressor::default(),
            decompressor: HeaderDecompressor::default(),
            buf: Vec::new(),
            next_id: 1,
            ids: HashMap::new(),
        };
        for kind in kinds {
            c.syn(kind, &[]).await;
        }
        c
    }

    /// Opens a stream of `kind` with more headers; a later one of the same kind replaces it here.
    async fn syn(&mut self, kind: &'static str, extra: &[(&str, &str)]) {
        let mut headers = vec![("streamType".to_string(), kind.to_string())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let header_block = self.compressor.compress(&Headers(headers));
        let frame = Frame::SynStream { stream_id: self.next_id, associated_to: 0, priority: 0, flags: 0, header_block };
        self.send(frame).await;
        self.ids.insert(kind, self.next_id);
        self.next_id += 2;
    }

    async fn send(&mut self, frame: Frame) {
        self.conn.write_all(&frame.encode()).await.unwrap();
    }

    async fn write(&mut self, kind: &str, data: &[u8], fin: bool) {
        let stream_id = self.ids[kind];
        self.send(Frame::Data { stream_id, flags: if fin { FLAG_FIN } else { 0 }, data: data.to_vec() }).await;
    }

    async fn collect(self) -> Outcome {
        self.collect_until(|_| false).await.0
    }

    /// Reads frames until the server closes or `done` holds.
    async fn collect_until(mut self, done: impl Fn(&Outcome) -> bool) -> (Outcome, Client) {
        let mut out = Outcome::default();
        let by_id: HashMap<u32, &str> = self.ids.iter().map(|(k, v)| (*v, *k)).collect();
        let read_all = async {
            loop {
                while let Some((frame, used)) = Frame::parse(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    match frame {
                        Frame::SynReply { header_block, .. } => {
                            self.decompressor.decompress(&header_block).unwrap();
                            out.replies += 1;
                        }
                        Frame::Data { stream_id, data, flags } => {
                            match by_id.get(&stream_id).copied().unwrap_or("stale") {
                                // Streams of an earlier port forward attempt.
                                "stale" => {}
                                kind if flags & FLAG_FIN != 0 && data.is_empty() => out.fins.push(kind),
                                "stdout" | "data" => out.stdout.extend(data),
                                "stderr" => out.stderr.extend(data),
                                "error" => out.error.extend(data),
                                other => panic!("data on the {other} stream"),
                            }
                        }
                        Frame::GoAway { .. } => out.go_away = true,
                        Frame::WindowUpdate { .. } => {}
                        other => panic!("unexpected frame {other:?}"),
                    }
                    if done(&out) {
                        return;
                    }
                }
                let mut chunk = [0u8; 4096];
                match self.conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read_all).await.expect("the session did not end");
        (out, self)
    }
}

async fn run_exec(f: &Fixture, cmd: &[&str], stdin: Option<&[u8]>) -> Outcome {
    let url = f.exec_url(f.request(cmd, stdin.is_some(), false)).await.expect("Exec");
    let (status, head, conn) = upgrade(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
    let kinds: &[&str] =
        if stdin.is_some() { &["error", "stdin", "stdout", "stderr"] } else { &["error", "stdout", "stderr"] };
    let mut client = Client::open(conn, kinds).await;
    if let Some(input) = stdin {
        client.write("stdin", input, true).await;
    }
    let out = client.collect().await;
    assert_eq!(out.replies, kinds.len(), "every stream gets a SYN_REPLY");
    assert!(out.go_away, "the server says GOAWAY");
    out
}

fn crictl(socket: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(CRICTL)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_output_input_and_exit_status() {
    let f = Fixture::new().await;

    let out = run_exec(&f, &["sh", "-c", "echo out; echo err >&2"], None).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status(), serde_json::json!({"metadata": {}, "status": "Success"}));

    let out = run_exec(&f, &["sh", "-c", "echo bye; exit 3"], None).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    let status = out.status();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));

    let out = run_exec(&f, &["no-such-command"], None).await;
    assert_eq!(out.status()["details"]["causes"][0]["message"], "127");

    // Input reaches the command and its half-close is the command's EOF.
    let input = b"hello\nworld\n".repeat(5000);
    let out = run_exec(&f, &["cat"], Some(&input)).await;
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "cat echoed something else");
    assert_eq!(out.status()["status"], "Success");

    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_on_a_terminal_applies_resizes() {
    let f = Fixture::new().await;
    let url = f.exec_url(f.request(&["sh", "-c", "read x; stty size; echo got $x; tty"], true, true)).await.unwrap();
    let (status, head, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    let mut client = Client::open(conn, &["error", "stdin", "stdout", "resize"]).await;
    client.write("resize", br#"{"Width":100,"Height":40}"#, false).await;
    // The resize is applied before the line that makes the shell look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.write("stdin", b"line\n", false).await;
    let out = client.collect().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40 100\r\n"), "{text:?}");
    assert!(text.contains("got line\r\n"), "{text:?}");
    // The terminal is made in the container's devpts, where tty(1) finds it.
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(out.status()["status"], "Success");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_are_single_use_and_requests_are_checked() {
    let f = Fixture::new().await;
    let url = f.exec_url(f.request(&["sh", "-c", "true"], false, false)).await.unwrap();
    let (status, _, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101);
    let out = Client::open(conn, &["error", "stdout", "stderr"]).await.collect().await;
    assert_eq!(out.status()["status"], "Success");
    let (status, _, _) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 404, "a used token is refused");

    let base = &url[..url.rfind('/').unwrap()];
    assert_eq!(upgrade(&format!("{base}/bm9uc2Vuc2U"), &[]).await.0, 404, "unknown token");
    let root = &url[..url.find("/exec/").unwrap()];
    assert_eq!(upgrade(&format!("{root}/attach/x"), &[]).await.0, 404);

    // No protocol in common: refused.
    let url = f.exec_url(f.request(&["sh", "-c", "true"], false, false)).await.unwrap();
    assert_eq!(upgrade(&url, &["v9.example.com"]).await.0, 403);

    let mut bad = f.request(&["sh"], false, false);
    bad.cmd.clear();
    assert_eq!(f.exec_url(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = f.request(&["sh"], false, true);
    bad.stderr = true;
    assert_eq!(f.exec_url(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = f.request(&["sh"], false, false);
    (bad.stdout, bad.stderr) = (false, false);
    assert_eq!(f.exec_url(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = f.request(&["sh"], false, false);
    bad.container_id = "nonexistent".into();
    assert_eq!(f.exec_url(bad).await.unwrap_err().code(), Code::NotFound);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_takes_its_command_along() {
    let f = Fixture::new().await;
    let url = f.exec_url(f.request(&["sh", "-c", "sleep 997"], false, false)).await.unwrap();
    let (status, _, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101);
    let client = Client::open(conn, &["error", "stdout", "stderr"]).await;
    let running = || async {
        let req = cri::ExecSyncRequest {
            container_id: f.id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "ps".into()],
            timeout: 10,
        };
        let out = f.d.runtime().await.exec_sync(req).await.unwrap().into_inner();
        String::from_utf8_lossy(&out.stdout).contains("sleep 997")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running().await {
        assert!(std::time::Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running().await {
        assert!(std::time::Instant::now() < deadline, "the command outlived its client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_works() {
    if !Path::new(CRICTL).exists() {
        eprintln!("skipping: {CRICTL} is not installed");
        return;
    }
    let f = Fixture::new().await;
    let socket = f.d.socket.clone();
    let id = f.id.clone();
    let out = tokio::task::spawn_blocking(move || {
        let echo = crictl(&socket, &["exec", &id, "sh", "-c", "echo hi; echo oops >&2"], b"");
        let cat = crictl(&socket, &["exec", "-i", &id, "cat"], b"from stdin\n");
        let failed = crictl(&socket, &["exec", &id, "sh", "-c", "exit 4"], b"");
        (echo, cat, failed)
    })
    .await
    .unwrap();
    let (echo, cat, failed) = out;
    let why = String::from_utf8_lossy(&failed.stderr);
    assert!(echo.status.success(), "{}", String::from_utf8_lossy(&echo.stderr));
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "hi\n");
    assert!(String::from_utf8_lossy(&echo.stderr).contains("oops"));
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "from stdin\n", "{}", String::from_utf8_lossy(&cat.stderr));
    assert_eq!(failed.status.code(), Some(1), "{why}");
    assert!(why.contains("command terminated with exit code 4"), "{why}");

    // A terminal: `script` gives crictl one, so `-t` is honoured.
    let cmd = format!(
        "{CRICTL} --runtime-endpoint unix://{} exec -it {} sh -c 'test -t 0 && test -t 1 && echo on-a-terminal'",
        f.d.socket.display(),
        f.id
    );
    let tty = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text} {}", String::from_utf8_lossy(&tty.stderr));
    assert!(text.contains("on-a-terminal"), "{text}");

    f.run("echo", "nc -ll -p 8080 -e cat").await;
    // SPDY, and SPDY tunnelled in WebSocket.
    for transport in ["spdy", "websocket"] {
        let port = free_port();
        let mut forward = std::process::Command::new(CRICTL)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", f.d.socket.display()))
            .args(["port-forward", "--transport", transport, &f.pod, &format!("{port}:8080")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut echoed = String::new();
        for _ in 0..50 {
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)).await {
                conn.write_all(b"via crictl\n").await.unwrap();
                let mut buf = [0u8; 64];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
                    echoed = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if !echoed.is_empty() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = forward.kill();
        let _ = forward.wait();
        assert_eq!(echoed, "via crictl\n", "crictl port-forward --transport {transport}");
    }
    f.finish().await;
}

/// Runs an exec over WebSocket: sends `stdin` on channel 0 (then, in v5, the
/// close of channel 0) and collects the messages per channel until the close.
async fn ws_exec(url: &str, subprotocol: &str, stdin: Option<&[u8]>) -> HashMap<u8, Vec<u8>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let rest = url.strip_prefix("http://").unwrap();
    let host = &rest[..rest.find('/').unwrap()];
    let mut request = format!("ws://{rest}").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", subprotocol.parse().unwrap());
    let tcp = TcpStream::connect(host).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp).await.expect("WebSocket handshake");
    assert_eq!(resp.headers()["sec-websocket-protocol"], subprotocol);
    if let Some(input) = stdin {
        let mut message = vec![0u8];
        message.extend_from_slice(input);
        ws.send(Message::Binary(message.into())).await.unwrap();
        ws.send(Message::Binary(vec![255u8, 0].into())).await.unwrap();
    }
    let mut channels: HashMap<u8, Vec<u8>> = HashMap::new();
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Binary(data) = message {
                channels.entry(data[0]).or_default().extend_from_slice(&data[1..]);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the WebSocket session did not end");
    channels
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket() {
    let f = Fixture::new().await;
    let url = f.exec_url(f.request(&["cat"], true, false)).await.unwrap();
    let got = ws_exec(&url, "v5.channel.k8s.io", Some(b"over websocket\n")).await;
    assert_eq!(String::from_utf8_lossy(&got[&1]), "over websocket\n");
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["status"], "Success");

    let url = f.exec_url(f.request(&["sh", "-c", "echo err >&2; exit 2"], false, false)).await.unwrap();
    let got = ws_exec(&url, "v4.channel.k8s.io", None).await;
    assert_eq!(String::from_utf8_lossy(&got[&2]), "err\n");
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "2");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_reaches_a_port_in_the_pod() {
    let f = Fixture::new().await;
    f.run("echo", "nc -ll -p 8080 -e cat").await;
    let rt = f.d.runtime().await;
    let forward = |port: i32| {
        let mut rt = rt.clone();
        let pod = f.pod.clone();
        async move {
            let req = cri::PortForwardRequest { pod_sandbox_id: pod, port: vec![port] };
            rt.port_forward(req).await.map(|r| r.into_inner().url)
        }
    };
    let url = forward(8080).await.expect("PortForward");
    assert!(url.contains("/portforward/"), "{url}");
    let (status, head, conn) = upgrade(&url, &["portforward.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    let mut client = Client::open(conn, &[]).await;
    // nc may not listen yet: each attempt is a request of its own on one connection.
    let mut echoed = false;
    for attempt in 0..50 {
        let request = attempt.to_string();
        let headers = [("port", "8080"), ("requestID", request.as_str())];
        client.syn("error", &headers).await;
        client.syn("data", &headers).await;
        client.write("data", b"ping\n", false).await;
        let (out, back) = client.collect_until(|o| o.stdout.ends_with(b"ping\n") || !o.error.is_empty()).await;
        client = back;
        if out.stdout.ends_with(b"ping\n") {
            client.write("data", b"", true).await;
            let (out, _) = client.collect_until(|o| o.fins.contains(&"data") && o.fins.contains(&"error")).await;
            assert!(out.error.is_empty(), "{}", String::from_utf8_lossy(&out.error));
            echoed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(echoed, "the echo server in the pod never answered");

    let url = forward(1).await.unwrap();
    let (_, _, conn) = upgrade(&url, &["portforward.k8s.io"]).await;
    let mut client = Client::open(conn, &[]).await;
    client.syn("error", &[("port", "1"), ("requestID", "0")]).await;
    client.syn("data", &[("port", "1"), ("requestID", "0")]).await;
    let (out, _) = client.collect_until(|o| o.fins.contains(&"error")).await;
    assert!(String::from_utf8_lossy(&out.error).contains("connecting to port 1 in the pod"), "{out:?}");

    let bad = cri::PortForwardRequest { pod_sandbox_id: f.pod.clone(), port: vec![70000] };
    assert_eq!(rt.clone().port_forward(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let missing = cri::PortForwardRequest { pod_sandbox_id: "nonexistent".into(), port: vec![80] };
    assert_eq!(rt.clone().port_forward(missing).await.unwrap_err().code(), Code::NotFound);
    f.finish().await;
}

/// Starts a shell reading commands from its stdin, kept open for attach (stdin_once).
async fn shell(f: &Fixture, name: &str) -> String {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: f.image.clone(), ..Default::default() }),
        command: vec!["/bin/sh".into()],
        log_path: format!("{name}.log"),
        stdin: true,
        stdin_once: true,
        ..Default::default()
    };
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: f.pod.clone(),
        config: Some(config),
        sandbox_config: Some(f.pod_config.clone()),
    };
    let mut rt = f.d.runtime().await;
    let id = rt.create_container(req).await.unwrap().into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_relays_stdin_and_output_and_detaches() {
    let f = Fixture::new().await;
    let mut rt = f.d.runtime().await;
    let id = shell(&f, "shell").await;
    let attach = |stdin: bool, tty: bool| cri::AttachRequest {
        container_id: id.clone(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    };
    // Requests that don't fit the container are refused.
    let err = rt.attach(attach(true, true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = rt.attach(attach(true, false)).await.map(|_| ());
    assert!(err.is_ok());
    let err = rt.attach(cri::AttachRequest { container_id: f.id.clone(), ..attach(true, false) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "the sleeper has no stdin: {err:?}");

    // A first client only watches, then leaves: the container goes on.
    let url = rt.attach(attach(false, false)).await.unwrap().into_inner().url;
    let (status, head, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    let watcher = Client::open(conn, &["error", "stdout", "stderr"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(watcher);

    // A second one types; closing its stdin ends the shell (stdin_once), and the session with it.
    let url = rt.attach(attach(true, false)).await.unwrap().into_inner().url;
    let (status, head, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 101, "{head}");
    let mut client = Client::open(conn, &["error", "stdin", "stdout", "stderr"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.write("stdin", b"echo hello; echo oops >&2\n", false).await;
    let (out, mut client) = client.collect_until(|o| !o.stdout.is_empty() && !o.stderr.is_empty()).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    client.write("stdin", b"", true).await;
    let out = client.collect().await;
    assert_eq!(out.status()["status"], "Success");
    let req = cri::ContainerStatusRequest { container_id: id.clone(), verbose: false };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = rt.container_status(req.clone()).await.unwrap().into_inner().status.unwrap();
        if st.state == cri::ContainerState::ContainerExited as i32 {
            assert_eq!(st.exit_code, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the shell did not exit after its stdin closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = rt.attach(attach(false, false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // The same over WebSocket (v5: stdin is closed with [255, 0]).
    let ws_id = shell(&f, "ws-shell").await;
    let req = cri::AttachRequest { container_id: ws_id, ..attach(true, false) };
    let url = rt.attach(req).await.unwrap().into_inner().url;
    let channels = ws_exec(&url, "v5.channel.k8s.io", Some(b"echo ws-hello\n")).await;
    assert_eq!(String::from_utf8_lossy(&channels[&1]), "ws-hello\n");
    let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
    assert_eq!(status["status"], "Success");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_urls_over_tls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let dir = tempdir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let extra = format!(
        "[streaming]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let f = Fixture::with_config(&extra).await;
    let url = f.exec_url(f.request(&["sh", "-c", "echo secure"], false, false)).await.unwrap();
    let rest = url.strip_prefix("https://").unwrap_or_else(|| panic!("not an https URL: {url}"));
    let (host, path) = rest.split_at(rest.find('/').unwrap());

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(host).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = connector.connect(name, tcp).await.expect("TLS handshake with the streaming server");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "connection closed in the response head");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(conn);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(host).await.unwrap();
    plain.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), plain.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP/1.1"), "plain HTTP was served on the TLS port");
    f.finish().await;
}
