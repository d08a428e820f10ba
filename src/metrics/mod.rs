//! Prometheus metrics: one registry per daemon, owned by [`Metrics`] and shared as
//! `Arc<Metrics>`. Other modules get small handles ([`PullMetrics`], [`CniMetrics`], [`ContainerCounters`])
//! or register a scrape-time callback, so they never depend on the server.

pub mod http;
pub mod layer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use prometheus::{Registry, TextEncoder};

/// Seconds; RPCs are mostly fast, but RunPodSandbox and PullImage can take long.
const RPC_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const PULL_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
const CNI_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pull: PullMetrics,
    cni: CniMetrics,
    containers: ContainerCounters,
    sandboxes: IntGaugeVec,
    container_states: IntGaugeVec,
    monitors: IntGauge,
    images: IntGauge,
    /// Run before every gather: gauges read from the daemon's state at scrape time.
    refreshers: Mutex<Vec<Refresh>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let grpc_requests = IntCounterVec::new(
            Opts::new("cricket_grpc_requests_total", "CRI gRPC requests handled, by method and gRPC status code."),
            &["method", "code"],
        )
        .expect("metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "cricket_grpc_request_duration_seconds",
                "CRI gRPC request latency until the response headers.",
            )
            .buckets(RPC_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("metric");
        let pulls = IntCounterVec::new(
            Opts::new("cricket_image_pulls_total", "Image pulls, by result (success or failure)."),
            &["result"],
        )
        .expect("metric");
        let pull_duration = Histogram::with_opts(
            HistogramOpts::new("cricket_image_pull_duration_seconds", "Image pull duration, successful or not.")
                .buckets(PULL_BUCKETS.to_vec()),
        )
        .expect("metric");
        let pull_bytes = IntCounter::new(
            "cricket_image_pull_bytes_total",
            "Compressed layer bytes downloaded (layers already in the store are not counted).",
        )
        .expect("metric");
        let cni_duration = HistogramVec::new(
            HistogramOpts::new(
                "cricket_cni_operation_duration_seconds",
                "CNI plugin run time, by command and plugin type.",
            )
            .buckets(CNI_BUCKETS.to_vec()),
            &["command", "plugin"],
        )
        .expect("metric");
        let cni_errors = IntCounterVec::new(
            Opts::new("cricket_cni_operation_errors_total", "Failed CNI plugin runs, by command and plugin type."),
            &["command", "plugin"],
        )
        .expect("metric");
        let sandboxes = IntGaugeVec::new(
            Opts::new("cricket_sandboxes", "Pod sandboxes, by state (ready or notready)."),
            &["state"],
        )
        .expect("metric");
        let images = IntGauge::new("cricket_images", "Images in the image store.").expect("metric");
        let container_states = IntGaugeVec::new(
            Opts::new("cricket_containers", "Containers, by state (created, running or exited)."),
            &["state"],
        )
        .expect("metric");
        let monitors = IntGauge::new(
            "cricket_monitors",
            "Live container monitor processes (one per container that has not exited).",
        )
        .expect("metric");
        let oom_kills =
            IntCounter::new("cricket_container_oom_kills_total", "Container exits recorded with reason OOMKilled.")
                .expect("metric");
        let starts = IntCounterVec::new(
            Opts::new("cricket_container_starts_total", "StartContainer attempts, by result (success or failure)."),
            &["result"],
        )
        .expect("metric");
        for c in [
            Box::new(grpc_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc_duration.clone()),
            Box::new(pulls.clone()),
            Box::new(pull_duration.clone()),
            Box::new(pull_bytes.clone()),
            Box::new(cni_duration.clone()),
            Box::new(cni_errors.clone()),
            Box::new(sandboxes.clone()),
            Box::new(images.clone()),
            Box::new(container_states.clone()),
            Box::new(monitors.clone()),
            Box::new(oom_kills.clone()),
            Box::new(starts.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both results and states exist from the start, so rates and sums have a zero to start from.
        for result in ["success", "failure"] {
            pulls.with_label_values(&[result]);
            starts.with_label_values(&[result]);
        }
        for state in ["ready", "notready"] {
            sandboxes.with_label_values(&[state]);
        }
        for state in ["created", "running", "exited"] {
            container_states.with_label_values(&[state]);
        }
        Arc::new(Metrics {
            registry,
            grpc_requests,
            grpc_duration,
            pull: PullMetrics(Some(PullInner { pulls, duration: pull_duration, bytes: pull_bytes })),
            cni: CniMetrics(Some(CniInner { duration: cni_duration, errors: cni_errors })),
            containers: ContainerCounters(Some(ContainerInner { oom_kills, starts })),
            sandboxes,
            container_states,
            monitors,
            images,
            refreshers: Mutex::new(Vec::new()),
        })
    }

    /// The handle image pulls report through.
    pub fn pull(&self) -> PullMetrics {
        self.pull.clone()
    }

    /// The handle CNI plugin runs report through.
    pub fn cni(&self) -> CniMetrics {
        self.cni.clone()
    }

    /// The handle container lifecycle events report through.
    pub fn containers(&self) -> ContainerCounters {
        self.containers.clone()
    }

    /// Runs `f` before every scrape; it sets gauges from live state.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refreshers.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
    }

    pub fn set_sandboxes(&self, ready: usize, notready: usize) {
        self.sandboxes.with_label_values(&["ready"]).set(ready as i64);
        self.sandboxes.with_label_values(&["notready"]).set(notready as i64);
    }

    pub fn set_images(&self, count: usize) {
        self.images.set(count as i64);
    }

    pub fn set_containers(&self, created: usize, running: usize, exited: usize) {
        for (state, n) in [("created", created), ("running", running), ("exited", exited)] {
            self.container_states.with_label_values(&[state]).set(n as i64);
        }
    }

    pub fn set_monitors(&self, live: usize) {
        self.monitors.set(live as i64);
    }

    /// Counts one finished RPC.
    pub fn observe_rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.grpc_requests.with_label_values(&[method, code]).inc();
        self.grpc_duration.with_label_values(&[method]).observe(elapsed.as_secs_f64());
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        for refresh in self.refreshers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            refresh(self);
        }
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_else(|e| {
            tracing::warn!("encoding metrics: {e}");
            String::new()
        })
    }
}

/// Image pull counters; `PullMetrics::default()` counts nothing.
#[derive(Clone, Default)]
pub struct PullMetrics(Option<PullInner>);

#[derive(Clone)]
struct PullInner {
    pulls: IntCounterVec,
    duration: Histogram,
    bytes: IntCounter,
}

impl PullMetrics {
    pub fn finished(&self, success: bool, elapsed: Duration) {
        if let Some(m) = &self.0 {
            m.pulls.with_label_values(&[if success { "success" } else { "failure" }]).inc();
            m.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// A layer's compressed bytes, once it has been downloaded.
    pub fn downloaded(&self, bytes: u64) {
        if let Some(m) = &self.0 {
            m.bytes.inc_by(bytes);
        }
    }
}

impl std::fmt::Debug for PullMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PullMetrics")
    }
}

/// CNI plugin run metrics; `CniMetrics::default()` counts nothing.
#[derive(Clone, Default)]
pub struct CniMetrics(Option<CniInner>);

#[derive(Clone)]
struct CniInner {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl CniMetrics {
    pub fn plugin_ran(&self, command: &str, plugin: &str, elapsed: Duration, ok: bool) {
        if let Some(m) = &self.0 {
            m.duration.with_label_values(&[command, plugin]).observe(elapsed.as_secs_f64());
            if !ok {
                m.errors.with_label_values(&[command, plugin]).inc();
            }
        }
    }
}

impl std::fmt::Debug for CniMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CniMetrics")
    }
}

/// Container lifecycle counters; `ContainerCounters::default()` counts nothing.
#[derive(Clone, Default)]
pub struct ContainerCounters(Option<ContainerInner>);

#[derive(Clone)]
struct ContainerInner {
    oom_kills: IntCounter,
    starts: IntCounterVec,
}

impl ContainerCounters {
    pub fn oom_killed(&self) {
        if let Some(m) = &self.0 {
            m.oom_kills.inc();
        }
    }

    pub fn started(&self, success: bool) {
        if let Some(m) = &self.0 {
            m.starts.with_label_values(&[if success { "success" } else { "failure" }]).inc();
        }
    }
}

impl std::fmt::Debug for ContainerCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContainerCounters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric() {
        let m = Metrics::new();
        m.observe_rpc("PullImage", "OK", Duration::from_millis(30));
        m.pull().finished(true, Duration::from_secs(2));
        m.pull().downloaded(1234);
        m.cni().plugin_ran("ADD", "bridge", Duration::from_millis(40), false);
        m.containers().oom_killed();
        m.containers().started(true);
        m.containers().started(true);
        m.on_scrape(|m| {
            m.set_sandboxes(2, 1);
            m.set_images(3);
            m.set_containers(4, 5, 6);
            m.set_monitors(9);
        });
        let text = m.render();
        for needle in [
            "cricket_grpc_requests_total{code=\"OK\",method=\"PullImage\"} 1",
            "cricket_grpc_request_duration_seconds_bucket{method=\"PullImage\",le=\"0.05\"} 1",
            "cricket_image_pulls_total{result=\"success\"} 1",
            "cricket_image_pulls_total{result=\"failure\"} 0",
            "cricket_image_pull_duration_seconds_count 1",
            "cricket_image_pull_bytes_total 1234",
            "cricket_cni_operation_duration_seconds_count{command=\"ADD\",plugin=\"bridge\"} 1",
            "cricket_cni_operation_errors_total{command=\"ADD\",plugin=\"bridge\"} 1",
            "cricket_sandboxes{state=\"ready\"} 2",
            "cricket_sandboxes{state=\"notready\"} 1",
            "cricket_images 3",
            "cricket_containers{state=\"created\"} 4",
            "cricket_containers{state=\"running\"} 5",
            "cricket_containers{state=\"exited\"} 6",
            "cricket_monitors 9",
            "cricket_container_oom_kills_total 1",
            "cricket_container_starts_total{result=\"success\"} 2",
            "cricket_container_starts_total{result=\"failure\"} 0",
            "# TYPE cricket_container_oom_kills_total counter",
            "# TYPE cricket_image_pull_duration_seconds histogram",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn disabled_handles_count_nothing() {
        PullMetrics::default().finished(false, Duration::ZERO);
        PullMetrics::default().downloaded(5);
        CniMetrics::default().plugin_ran("DEL", "x", Duration::ZERO, false);
        ContainerCounters::default().oom_killed();
        ContainerCounters::default().started(false);
    }
}
