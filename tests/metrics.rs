//! End-to-end test of the Prometheus endpoint: a real `cricket serve` with
//! `[metrics] address` set pulls an image and runs a pod with two containers
//! (one the OOM killer ends), then `/metrics` must show the RPCs, the pull, the
//! downloaded bytes, the pod, its CNI runs and the containers; the CRI metrics
//! RPCs must describe and report the running container and the pod's network.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

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

/// Creates and starts a busybox shell running `script` in the pod.
async fn run_container(d: &Daemon, pod: &str, image: &str, name: &str, script: &str, memory_limit: i64) -> String {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.to_string(), ..Default::default() }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: memory_limit, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req =
        cri::CreateContainerRequest { pod_sandbox_id: pod.to_string(), config: Some(config), sandbox_config: None };
    let mut rt = d.runtime().await;
    let id = rt.create_container(req).await.expect("CreateContainer").into_inner().container_id;
    rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    id
}

async fn wait_exit(d: &Daemon, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: false };
        let st = d.runtime().await.container_status(req).await.expect("ContainerStatus").into_inner().status.unwrap();
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "container {id} has not exited after 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let image = format!("{host}/tests/busybox:1.0");
    let sleeper = run_container(&d, &id, &image, "sleeper", "sleep 600", 0).await;
    let fill = "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo survived";
    let hog = run_container(&d, &id, &image, "hog", fill, 32 << 20).await;
    assert_eq!(wait_exit(&d, &hog).await.reason, "OOMKilled");

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
    assert_eq!(get("cricket_containers{state=\"created\"}"), 0.0);
    assert_eq!(get("cricket_containers{state=\"running\"}"), 1.0);
    assert_eq!(get("cricket_containers{state=\"exited\"}"), 1.0);
    assert_eq!(get("cricket_monitors"), 1.0);
    assert_eq!(get("cricket_container_oom_kills_total"), 1.0);
    assert_eq!(get("cricket_container_starts_total{result=\"success\"}"), 2.0);
    assert_eq!(get("cricket_container_starts_total{result=\"failure\"}"), 0.0);

    cri_metrics_report_the_running_container(&d, &id, &sleeper, &image).await;

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
    assert_eq!(get("cricket_containers{state=\"running\"}"), 0.0);
    assert_eq!(get("cricket_containers{state=\"exited\"}"), 2.0);
    assert_eq!(get("cricket_monitors"), 0.0);
    assert_eq!(get("cricket_container_oom_kills_total"), 1.0);

    for path in ["/", "/metricsx", "/metrics/"] {
        assert_eq!(http_get(port, path).0, 404, "{path}");
    }
    d.remove_pod(&id).await.expect("RemovePodSandbox");
    drop(d);
    net.finish();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "metrics endpoint outlived the daemon");
}

/// ListMetricDescriptors and ListPodSandboxMetrics on a pod with one running container.
async fn cri_metrics_report_the_running_container(d: &Daemon, pod: &str, container: &str, image: &str) {
    let mut rt = d.runtime().await;
    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let keys = |name: &str| {
        let d = descriptors.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no {name}: {descriptors:?}"));
        d.label_keys.clone()
    };
    assert_eq!(keys("container_memory_working_set_bytes"), ["id", "name", "image"]);
    assert_eq!(keys("container_network_receive_bytes_total"), ["id", "name", "image", "interface"]);

    let pods = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let [pm] = &pods[..] else { panic!("one pod expected: {pods:#?}") };
    assert_eq!(pm.pod_sandbox_id, pod);
    let rx = pm.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total");
    let rx = rx.unwrap_or_else(|| panic!("no pod network metrics: {:#?}", pm.metrics));
    assert_eq!(rx.label_values, [pod, "POD", "", "eth0"]);
    // The exited container has no metrics; the running one has them all.
    let [cm] = &pm.container_metrics[..] else { panic!("one container expected: {pm:#?}") };
    assert_eq!(cm.container_id, container);
    let value = |name: &str| {
        let m = cm.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}: {cm:#?}"));
        let labels = keys(name);
        assert_eq!(m.label_values.len(), labels.len(), "{m:?}");
        assert_eq!(&m.label_values[..3], [container, "sleeper", image], "{m:?}");
        assert!(m.timestamp > 0, "{m:?}");
        m.value.as_ref().unwrap().value
    };
    assert!(value("container_memory_working_set_bytes") > 0);
    assert!(value("container_memory_usage_bytes") > 0);
    assert!(value("container_processes") >= 1);
    assert_eq!(value("container_oom_events_total"), 0);
    assert_eq!(value("container_spec_memory_limit_bytes"), 0);
    value("container_cpu_usage_seconds_total");
    value("container_fs_usage_bytes");
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
