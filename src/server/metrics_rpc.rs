//! ListMetricDescriptors and ListPodSandboxMetrics: the kubelet's CRI stats
//! provider turns these into Prometheus series, so names, label keys and units
//! follow cadvisor as CRI-O exposes them. CRI values are integers and kubelet
//! uses them as they are, so seconds are whole seconds (like CRI-O).

use k8s_cri::v1::{ContainerMetrics, Metric, MetricDescriptor, MetricType, PodSandboxMetrics, UInt64Value};
use MetricType::{Counter, Gauge};

use crate::container::{ContainerState, ContainerStats, PodStats};
use crate::sandbox::SandboxState;

/// Label keys every series starts with: container ID, container name, image.
const BASE: [&str; 3] = ["id", "name", "image"];
/// The `name` label of the pod's own series (its network), as cadvisor names the pause container.
const POD_NAME: &str = "POD";
/// The loopback is not a pod's traffic (cadvisor skips it too).
const LOOPBACK: &str = "lo";

struct Family {
    name: &'static str,
    help: &'static str,
    extra_labels: &'static [&'static str],
    kind: MetricType,
}

const fn family(
    name: &'static str,
    help: &'static str,
    extra_labels: &'static [&'static str],
    kind: MetricType,
) -> Family {
    Family { name, help, extra_labels, kind }
}

const CPU_USAGE: Family =
    family("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", &["cpu"], Counter);
const MEMORY_USAGE: Family = family(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed.",
    &[],
    Gauge,
);
const MEMORY_WORKING_SET: Family =
    family("container_memory_working_set_bytes", "Current working set in bytes.", &[], Gauge);
const MEMORY_RSS: Family = family("container_memory_rss", "Size of RSS in bytes.", &[], Gauge);
const MEMORY_FAILURES: Family = family(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    &["failure_type", "scope"],
    Counter,
);
const SPEC_MEMORY_LIMIT: Family = family(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container in bytes (0 when unlimited).",
    &[],
    Gauge,
);
const SPEC_CPU_SHARES: Family = family("container_spec_cpu_shares", "CPU share of the container.", &[], Gauge);
const SPEC_CPU_QUOTA: Family = family("container_spec_cpu_quota", "CPU quota of the container.", &[], Gauge);
const SPEC_CPU_PERIOD: Family = family("container_spec_cpu_period", "CPU period of the container.", &[], Gauge);
const PROCESSES: Family =
    family("container_processes", "Number of processes running inside the container.", &[], Gauge);
const OOM_EVENTS: Family =
    family("container_oom_events_total", "Count of out of memory events observed for the container.", &[], Counter);
const FS_USAGE: Family =
    family("container_fs_usage_bytes", "Bytes used by the container's writable layer.", &[], Gauge);
const NET_RX_BYTES: Family =
    family("container_network_receive_bytes_total", "Cumulative count of bytes received.", &["interface"], Counter);
const NET_RX_ERRORS: Family = family(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving.",
    &["interface"],
    Counter,
);
const NET_TX_BYTES: Family =
    family("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", &["interface"], Counter);
const NET_TX_ERRORS: Family = family(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting.",
    &["interface"],
    Counter,
);

const FAMILIES: [&Family; 16] = [
    &CPU_USAGE,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_FAILURES,
    &SPEC_MEMORY_LIMIT,
    &SPEC_CPU_SHARES,
    &SPEC_CPU_QUOTA,
    &SPEC_CPU_PERIOD,
    &PROCESSES,
    &OOM_EVENTS,
    &FS_USAGE,
    &NET_RX_BYTES,
    &NET_RX_ERRORS,
    &NET_TX_BYTES,
    &NET_TX_ERRORS,
];

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Every metric ListPodSandboxMetrics can return.
pub fn descriptors() -> Vec<MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| MetricDescriptor {
            name: f.name.into(),
            help: f.help.into(),
            label_keys: BASE.iter().chain(f.extra_labels).map(|k| k.to_string()).collect(),
        })
        .collect()
}

/// Builds series that share the base label values and a timestamp.
struct Series<'a> {
    base: [&'a str; 3],
    timestamp: i64,
    out: Vec<Metric>,
}

impl Series<'_> {
    fn push(&mut self, f: &Family, extra: &[&str], value: u64) {
        debug_assert_eq!(extra.len(), f.extra_labels.len(), "{}", f.name);
        self.out.push(Metric {
            name: f.name.into(),
            timestamp: self.timestamp,
            metric_type: f.kind as i32,
            label_values: self.base.iter().chain(extra).map(|v| v.to_string()).collect(),
            value: Some(UInt64Value { value }),
        });
    }
}

/// A pod's metrics: its network at pod level, cgroup and spec metrics per container.
pub fn pod_metrics(sb: &SandboxState, s: &PodStats) -> PodSandboxMetrics {
    let mut pod = Series { base: [&sb.id, POD_NAME, ""], timestamp: s.timestamp, out: Vec::new() };
    for i in s.interfaces.iter().filter(|i| i.name != LOOPBACK) {
        let iface = [i.name.as_str()];
        pod.push(&NET_RX_BYTES, &iface, i.rx_bytes);
        pod.push(&NET_RX_ERRORS, &iface, i.rx_errors);
        pod.push(&NET_TX_BYTES, &iface, i.tx_bytes);
        pod.push(&NET_TX_ERRORS, &iface, i.tx_errors);
    }
    PodSandboxMetrics {
        pod_sandbox_id: sb.id.clone(),
        metrics: pod.out,
        container_metrics: s.containers.iter().map(|(st, cs)| container_metrics(st, cs)).collect(),
    }
}

fn container_metrics(st: &ContainerState, s: &ContainerStats) -> ContainerMetrics {
    let name = st.config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
    let mut c = Series { base: [&st.id, name, &st.image_name], timestamp: s.timestamp, out: Vec::new() };
    let cg = &s.cgroup;
    c.push(&CPU_USAGE, &["total"], cg.cpu_usage_ns / NANOS_PER_SECOND);
    c.push(&MEMORY_USAGE, &[], cg.memory_usage);
    c.push(&MEMORY_WORKING_SET, &[], cg.memory_working_set);
    c.push(&MEMORY_RSS, &[], cg.memory_rss);
    c.push(&MEMORY_FAILURES, &["pgfault", "container"], cg.page_faults);
    c.push(&MEMORY_FAILURES, &["pgmajfault", "container"], cg.major_page_faults);
    let resources = st.resources.clone().unwrap_or_default();
    let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    c.push(&SPEC_MEMORY_LIMIT, &[], positive(resources.memory_limit_in_bytes).unwrap_or(0));
    // Unset CPU settings have no value to report (cadvisor omits an unlimited quota too).
    for (f, v) in [
        (&SPEC_CPU_SHARES, resources.cpu_shares),
        (&SPEC_CPU_QUOTA, resources.cpu_quota),
        (&SPEC_CPU_PERIOD, resources.cpu_period),
    ] {
        if let Some(v) = positive(v) {
            c.push(f, &[], v);
        }
    }
    c.push(&PROCESSES, &[], cg.pids);
    c.push(&OOM_EVENTS, &[], cg.oom_kills);
    c.push(&FS_USAGE, &[], s.writable_bytes);
    ContainerMetrics { container_id: st.id.clone(), metrics: c.out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup;
    use crate::network::InterfaceStats;
    use k8s_cri::v1::{ContainerMetadata, LinuxContainerResources};

    fn find<'a>(metrics: &'a [Metric], name: &str, labels: &[&str]) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name && m.label_values == labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in {metrics:#?}"))
    }

    fn value(m: &Metric) -> u64 {
        m.value.as_ref().expect("value").value
    }

    #[test]
    fn descriptors_are_unique_and_cover_every_series() {
        let descs = descriptors();
        let names: std::collections::HashSet<_> = descs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), descs.len());
        let cpu = descs.iter().find(|d| d.name == "container_cpu_usage_seconds_total").unwrap();
        assert_eq!(cpu.label_keys, ["id", "name", "image", "cpu"]);
        let rx = descs.iter().find(|d| d.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!(rx.label_keys, ["id", "name", "image", "interface"]);
        assert!(descs.iter().all(|d| !d.help.is_empty() && d.name.starts_with("container_")));

        let (sb, stats) = sample();
        let pm = pod_metrics(&sb, &stats);
        let all = pm.metrics.iter().chain(pm.container_metrics.iter().flat_map(|c| &c.metrics));
        for m in all {
            let d = descs.iter().find(|d| d.name == m.name).unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
    }

    fn sample() -> (SandboxState, PodStats) {
        let sb = SandboxState {
            id: "pod1".into(),
            config: Default::default(),
            runtime_handler: String::new(),
            created_at: 1,
            ready: true,
            creating: false,
            namespaces: Default::default(),
            init: None,
            cgroup: None,
            cgroup_created: false,
            network: None,
            ips: Vec::new(),
            shm: None,
        };
        let st = ContainerState {
            id: "c1".into(),
            sandbox_id: "pod1".into(),
            config: k8s_cri::v1::ContainerConfig {
                metadata: Some(ContainerMetadata { name: "web".into(), attempt: 0 }),
                ..Default::default()
            },
            image_name: "busybox:1".into(),
            image_id: String::new(),
            image_ref: String::new(),
            layers: Vec::new(),
            runtime_handler: String::new(),
            phase: crate::container::Phase::Running,
            created_at: 1,
            started_at: 2,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            monitor: None,
            init: None,
            cgroup: None,
            monitor_cgroup: None,
            log_path: None,
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_shares: 512,
                cpu_quota: -1,
                ..Default::default()
            }),
            stop_signal: libc::SIGTERM,
            user: Default::default(),
        };
        let cs = ContainerStats {
            timestamp: 42,
            cgroup: cgroup::Stats {
                cpu_usage_ns: 3_700_000_000,
                memory_usage: 1000,
                memory_working_set: 800,
                memory_rss: 600,
                page_faults: 50,
                major_page_faults: 2,
                pids: 3,
                oom_kills: 1,
            },
            nano_cores: None,
            writable_bytes: 4096,
            writable_inodes: 7,
            writable_mount: "/var/lib/cricket".into(),
        };
        let iface = |name: &str, rx| InterfaceStats {
            name: name.into(),
            rx_bytes: rx,
            rx_errors: 1,
            tx_bytes: 20,
            tx_errors: 0,
        };
        let stats = PodStats {
            timestamp: 41,
            cgroup: Default::default(),
            nano_cores: None,
            interfaces: vec![iface("lo", 5), iface("eth0", 10)],
            containers: vec![(st, cs)],
        };
        (sb, stats)
    }

    #[test]
    fn pod_and_container_series() {
        let (sb, stats) = sample();
        let pm = pod_metrics(&sb, &stats);
        assert_eq!(pm.pod_sandbox_id, "pod1");
        let rx = find(&pm.metrics, "container_network_receive_bytes_total", &["pod1", "POD", "", "eth0"]);
        assert_eq!((value(rx), rx.timestamp, rx.metric_type), (10, 41, MetricType::Counter as i32));
        assert!(pm.metrics.iter().all(|m| m.label_values[3] != "lo"), "{:#?}", pm.metrics);
        assert_eq!(pm.metrics.len(), 4);

        let [c] = &pm.container_metrics[..] else { panic!("{pm:#?}") };
        assert_eq!(c.container_id, "c1");
        let m = &c.metrics;
        let base = ["c1", "web", "busybox:1"];
        let with = |extra: &[&'static str]| base.iter().chain(extra).copied().collect::<Vec<_>>();
        let cpu = find(m, "container_cpu_usage_seconds_total", &with(&["total"]));
        assert_eq!((value(cpu), cpu.timestamp, cpu.metric_type), (3, 42, MetricType::Counter as i32));
        let ws = find(m, "container_memory_working_set_bytes", &base);
        assert_eq!((value(ws), ws.metric_type), (800, MetricType::Gauge as i32));
        assert_eq!(value(find(m, "container_memory_usage_bytes", &base)), 1000);
        assert_eq!(value(find(m, "container_memory_rss", &base)), 600);
        assert_eq!(value(find(m, "container_memory_failures_total", &with(&["pgfault", "container"]))), 50);
        assert_eq!(value(find(m, "container_memory_failures_total", &with(&["pgmajfault", "container"]))), 2);
        assert_eq!(value(find(m, "container_spec_memory_limit_bytes", &base)), 64 << 20);
        assert_eq!(value(find(m, "container_spec_cpu_shares", &base)), 512);
        assert!(!m.iter().any(|x| x.name == "container_spec_cpu_quota" || x.name == "container_spec_cpu_period"));
        assert_eq!(value(find(m, "container_processes", &base)), 3);
        assert_eq!(value(find(m, "container_oom_events_total", &base)), 1);
        assert_eq!(value(find(m, "container_fs_usage_bytes", &base)), 4096);
    }
}
