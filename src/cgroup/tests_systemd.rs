//! The systemd driver against a fake systemd Manager on a private dbus-daemon;
//! the cgroup tree is a temp dir laid out like cgroup v2.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};

use super::tests::{get, tempdir, v2_fixture, TempDir};
use super::*;

type Props = Vec<(String, OwnedValue)>;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    UnitExists(String),
    NoSuchUnit(String),
}

#[derive(Default)]
struct FakeSystemd {
    calls: Arc<Mutex<Vec<(String, String, Props)>>>,
    units: Mutex<BTreeSet<String>>,
    jobs: AtomicU32,
}

impl FakeSystemd {
    async fn job(&self, emitter: &SignalEmitter<'_>, unit: &str) -> Result<OwnedObjectPath, SdError> {
        let id = self.jobs.fetch_add(1, Ordering::SeqCst);
        let job = OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap();
        // Another job's end first: the client must wait for its own.
        Self::job_removed(emitter, id + 1000, ObjectPath::from_static_str_unchecked("/other"), unit, "failed").await?;
        Self::job_removed(emitter, id, job.as_ref(), unit, "done").await?;
        Ok(job)
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    async fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        props: Props,
        _aux: Vec<(String, Props)>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SdError> {
        assert_eq!(mode, "replace");
        self.calls.lock().unwrap().push(("start".into(), name.clone(), props));
        if !self.units.lock().unwrap().insert(name.clone()) {
            return Err(SdError::UnitExists(format!("Unit {name} already exists.")));
        }
        self.job(&emitter, &name).await
    }

    async fn stop_unit(
        &self,
        name: String,
        _mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, SdError> {
        self.calls.lock().unwrap().push(("stop".into(), name.clone(), Vec::new()));
        if !self.units.lock().unwrap().remove(&name) {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        self.job(&emitter, &name).await
    }

    async fn subscribe(&self) {}

    async fn reset_failed_unit(&self, _name: String) {}

    #[zbus(signal)]
    async fn job_removed(
        e: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A private bus; the daemon is killed on drop.
struct Bus {
    daemon: Child,
    address: String,
    _dir: TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn private_bus() -> Option<Bus> {
    let dir = tempdir();
    let config = dir.0.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"
 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">
<busconfig><type>session</type><listen>unix:path={}/bus</listen><auth>EXTERNAL</auth>
<policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/></policy>
</busconfig>",
            dir.0.display()
        ),
    )
    .unwrap();
    let spawned = Command::new("dbus-daemon")
        .args(["--nofork", "--print-address", "--config-file"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut daemon) = spawned else {
        eprintln!("skipping: dbus-daemon is not installed (Debian package dbus-daemon)");
        return None;
    };
    let mut address = String::new();
    BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut address).unwrap();
    Some(Bus { daemon, address: address.trim().to_string(), _dir: dir })
}

fn prop<T: TryFrom<OwnedValue>>(props: &Props, name: &str) -> Option<T> {
    props.iter().find(|(n, _)| n == name).and_then(|(_, v)| T::try_from(v.try_clone().unwrap()).ok())
}

#[tokio::test]
async fn systemd_driver_starts_and_stops_units() {
    let Some(bus) = private_bus() else { return };
    let fake = FakeSystemd::default();
    let calls = fake.calls.clone();
    let _server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at("/org/freedesktop/systemd1", fake)
        .unwrap()
        .build()
        .await
        .unwrap();
    let (_t, root) = v2_fixture("cpu memory pids", true);
    let m = Manager::v2(CgroupDriver::Systemd, &root).with_systemd_bus(&bus.address);

    let pod = m.parse_parent("kubepods-besteffort-pod1.slice").unwrap();
    assert!(m.create(&pod, &Resources { memory_limit: Some(1 << 30), ..Default::default() }).await.unwrap());
    let ctr = m.child(&pod, "abc");
    let res = Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        memory_swap: Some(64 << 20),
        pids_limit: Some(-1),
        ..Default::default()
    };
    let err = m.create(&ctr, &res).await.unwrap_err();
    assert!(err.to_string().contains("create_with_pid"), "{err}");
    let pid = std::process::id() as i32;
    assert!(m.create_with_pid(&ctr, &res, pid).await.unwrap());
    assert!(!m.create_with_pid(&ctr, &res, pid).await.unwrap());

    let dir = root.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cricket-abc.scope");
    assert_eq!(m.fs_paths(&ctr), vec![dir.clone()]);
    assert_eq!(get(&dir, "cgroup.procs"), pid.to_string());
    assert_eq!(get(&dir, "cpu.weight"), "39");
    assert_eq!(get(&dir, "memory.swap.max"), "0");

    let calls = calls.lock().unwrap().clone();
    let names: Vec<(&str, &str)> = calls.iter().map(|(op, unit, _)| (op.as_str(), unit.as_str())).collect();
    assert_eq!(
        names,
        [("start", "kubepods-besteffort-pod1.slice"), ("start", "cricket-abc.scope"), ("start", "cricket-abc.scope")]
    );
    let slice = &calls[0].2;
    assert_eq!(prop::<Vec<String>>(slice, "Wants"), Some(vec!["kubepods-besteffort.slice".to_string()]));
    assert_eq!(prop::<u64>(slice, "MemoryMax"), Some(1 << 30));
    assert_eq!(prop::<bool>(slice, "Delegate"), None);
    let scope = &calls[1].2;
    assert_eq!(prop::<String>(scope, "Slice").as_deref(), Some("kubepods-besteffort-pod1.slice"));
    assert_eq!(prop::<bool>(scope, "Delegate"), Some(true));
    assert_eq!(prop::<Vec<u32>>(scope, "PIDs"), Some(vec![pid as u32]));
    assert_eq!(prop::<u64>(scope, "CPUWeight"), Some(39));
    assert_eq!(prop::<u64>(scope, "CPUQuotaPerSecUSec"), Some(500_000));
    assert_eq!(prop::<u64>(scope, "MemorySwapMax"), Some(0));
    assert_eq!(prop::<u64>(scope, "TasksMax"), Some(u64::MAX));
    assert_eq!(prop::<bool>(scope, "MemoryAccounting"), Some(true));

    m.remove(&ctr).await.unwrap();
    assert!(!dir.exists());
    m.remove(&ctr).await.unwrap();
}

#[tokio::test]
async fn systemd_driver_without_systemd_says_what_to_set() {
    let (t, root) = v2_fixture("cpu memory pids", true);
    let mut m = Manager::v2(CgroupDriver::Systemd, &root);
    m.bus.marker = t.0.join("no-systemd");
    let err = m.create(&CgroupPath("x.slice".into()), &Resources::default()).await.unwrap_err().to_string();
    assert!(err.contains("\"systemd\"") && err.contains("driver = \"cgroupfs\""), "{err}");
}
