//! End-to-end test of the Prometheus endpoint: a real `cricket serve` with
//! `[metrics] address` set pulls an image and runs a pod, then `/metrics` must
//! show the RPCs, the pull, the downloaded bytes, the pod and its CNI runs.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use tonic::Code;

/// GET `path` over HTTP/1.1; returns the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad response: {out}"));
    // Bodies are sent whole (Content-Length), never chunked.
    (status, body.to_string())
}

/// The value of the sample `series` (`name{labels}` exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rpcs_pulls_pods_and_cni() {
    let reg = Registry::start().await;
    let host = reg.host();
    reg.push_image("tests/busybox", "1.0", &Image::new(vec![busybox_layer()])).await;
    let net = TestNet::new();
    let port = free_port();
    let extra = format!("{}[metrics]\naddress = \"127.0.0.1:{port}\"\n", insecure(&host));
    let d = Daemon::start_with_net(&net, &extra).await;

    d.pull(&format!("{host}/tests/busybox:1.0")).await.expect("pull");
    let err = d.pull(&format!("{host}/tests/busybox:missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let id = d.run_pod(pod_config("metrics"), "").await.expect("RunPodSandbox");

    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(get("cricket_grpc_requests_total{code=\"OK\",method=\"PullImage\"}"), 1.0);
    assert_eq!(get("cricket_grpc_requests_total{code=\"NotFound\",method=\"PullImage\"}"), 1.0);
    assert_eq!(get("cricket_grpc_requests_total{code=\"OK\",method=\"RunPodSandbox\"}"), 1.0);
    assert_eq!(get("cricket_grpc_request_duration_seconds_count{method=\"PullImage\"}"), 2.0);
    assert_eq!(get("cricket_image_pulls_total{result=\"success\"}"), 1.0);
    assert_eq!(get("cricket_image_pulls_total{result=\"failure\"}"), 1.0);
    assert_eq!(get("cricket_image_pull_duration_seconds_count"), 2.0);
    assert_eq!(get("cricket_image_pull_bytes_total"), busybox_layer().blob.len() as f64);
    assert_eq!(get("cricket_images"), 1.0);
    assert_eq!(get("cricket_sandboxes{state=\"ready\"}"), 1.0);
    assert_eq!(get("cricket_sandboxes{state=\"notready\"}"), 0.0);
    assert_eq!(get("cricket_cni_operation_duration_seconds_count{command=\"ADD\",plugin=\"bridge\"}"), 1.0);
    assert!(sample(&text, "cricket_cni_operation_errors_total{command=\"ADD\",plugin=\"bridge\"}").is_none(), "{text}");

    // A pull of an image already present downloads nothing.
    d.pull(&format!("{host}/tests/busybox:1.0")).await.expect("second pull");
    d.stop_pod(&id).await.expect("StopPodSandbox");
    let (_, text) = http_get(port, "/metrics");
    let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(get("cricket_image_pulls_total{result=\"success\"}"), 2.0);
    assert_eq!(get("cricket_image_pull_bytes_total"), busybox_layer().blob.len() as f64);
    assert_eq!(get("cricket_sandboxes{state=\"ready\"}"), 0.0);
    assert_eq!(get("cricket_sandboxes{state=\"notready\"}"), 1.0);
    assert!(get("cricket_cni_operation_duration_seconds_count{command=\"DEL\",plugin=\"bridge\"}") >= 1.0);

    for path in ["/", "/metricsx", "/metrics/"] {
        assert_eq!(http_get(port, path).0, 404, "{path}");
    }
    d.remove_pod(&id).await.expect("RemovePodSandbox");
    drop(d);
    net.finish();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "metrics endpoint outlived the daemon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_is_off_by_harness_default_and_port_clash_fails_start() {
    // The harness turns metrics off: two daemons side by side don't clash.
    let _a = Daemon::start(&[], "").await;
    let _b = Daemon::start(&[], "").await;

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let d = tempdir();
    let config = d.path().join("cricket.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{0}/s.sock\"\nroot = \"{0}/root\"\nrun = \"{0}/run\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n",
            d.path().display()
        ),
    )
    .unwrap();
    let out = run(
        cricket().arg("--config").arg(&config).arg("--config-dir").arg(d.path().join("none")).arg("serve"),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "cricket served on a busy metrics port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics endpoint") && stderr.contains(&port.to_string()), "{stderr}");
}
