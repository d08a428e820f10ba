//! Unit tests on temp directories laid out like /sys/fs/cgroup (v1 and v2).

use std::path::{Path, PathBuf};

use super::fs::tests_support::{emulate, take_writes, Event};
use super::path::expand_slice;
use super::resources::{page_size_name, shares_to_weight, v2_swap};
use super::*;

pub(super) struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tempdir() -> TempDir {
    let d = std::env::temp_dir().join(format!("cricket-cg-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

pub(super) fn put(dir: &Path, file: &str, value: &str) {
    std::fs::write(dir.join(file), value).unwrap();
}

pub(super) fn get(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
}

fn v2_files(dir: &Path, controller: &str, swap: bool) {
    let files: &[(&str, &str)] = match controller {
        "cpu" => &[("cpu.weight", "100"), ("cpu.max", "max 100000")],
        "memory" => &[
            ("memory.max", "max"),
            ("memory.high", "max"),
            ("memory.current", "0"),
            ("memory.stat", ""),
            ("memory.events", ""),
        ],
        "pids" => &[("pids.max", "max"), ("pids.current", "0")],
        "cpuset" => &[("cpuset.cpus", ""), ("cpuset.mems", "")],
        "hugetlb" => &[("hugetlb.2MB.max", "max"), ("hugetlb.2MB.rsvd.max", "max"), ("hugetlb.1GB.max", "max")],
        "io" => &[("io.max", "")],
        _ => &[],
    };
    for (f, v) in files {
        put(dir, f, v);
    }
    if controller == "memory" && swap {
        put(dir, "memory.swap.max", "max");
    }
}

/// A v2 root offering `controllers`; new cgroups and subtree_control writes behave as in the kernel.
pub(super) fn v2_fixture(controllers: &str, swap: bool) -> (TempDir, PathBuf) {
    let t = tempdir();
    let root = t.0.clone();
    for (f, v) in [("cgroup.controllers", controllers), ("cgroup.subtree_control", ""), ("cgroup.procs", "")] {
        put(&root, f, v);
    }
    emulate(move |e| match e {
        Event::Mkdir(dir) => {
            let enabled = get(dir.parent().unwrap(), "cgroup.subtree_control");
            for (f, v) in [
                ("cgroup.controllers", enabled.as_str()),
                ("cgroup.subtree_control", ""),
                ("cgroup.procs", ""),
                ("cgroup.events", "populated 0\nfrozen 0\n"),
                ("cgroup.freeze", "0"),
                ("cgroup.kill", "0"),
                ("cpu.stat", "usage_usec 0\n"),
            ] {
                put(dir, f, v);
            }
            enabled.split_whitespace().for_each(|c| v2_files(dir, c, swap));
        }
        Event::Write { path, value, before } if path.ends_with("cgroup.subtree_control") => {
            let dir = path.parent().unwrap();
            let c = value.strip_prefix('+').expect("one controller enabled per write");
            assert!(get(dir, "cgroup.controllers").split_whitespace().any(|x| x == c), "{c} unavailable in {dir:?}");
            let mut set: Vec<String> = before.unwrap_or_default().split_whitespace().map(String::from).collect();
            if !set.iter().any(|x| x == c) {
                set.push(c.to_string());
            }
            put(dir, "cgroup.subtree_control", &set.join(" "));
            for child in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().is_dir()) {
                put(&child.path(), "cgroup.controllers", &set.join(" "));
                v2_files(&child.path(), c, swap);
            }
        }
        _ => {}
    });
    (t, root)
}

const V1: &[(&str, &str)] = &[
    ("cpu", "cpu"),
    ("cpuacct", "cpuacct"),
    ("cpuset", "cpuset"),
    ("memory", "memory"),
    ("pids", "pids"),
    ("freezer", "freezer"),
    ("hugetlb", "hugetlb"),
    ("systemd", "name=systemd"),
];

fn v1_files(dir: &Path, controller: &str, memsw: bool) {
    let files: &[(&str, &str)] = match controller {
        "cpu" => &[("cpu.shares", "1024"), ("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000")],
        "cpuacct" => &[("cpuacct.usage", "0")],
        "cpuset" => &[("cpuset.cpus", ""), ("cpuset.mems", "")],
        "memory" => &[
            ("memory.limit_in_bytes", "9223372036854771712"),
            ("memory.usage_in_bytes", "0"),
            ("memory.stat", ""),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
        ],
        "pids" => &[("pids.max", "max"), ("pids.current", "0")],
        "freezer" => &[("freezer.state", "THAWED")],
        "hugetlb" => &[("hugetlb.2MB.limit_in_bytes", "0"), ("hugetlb.1GB.limit_in_bytes", "0")],
        _ => &[],
    };
    for (f, v) in files.iter().chain(&[("cgroup.procs", ""), ("tasks", "")]) {
        put(dir, f, v);
    }
    if controller == "memory" && memsw {
        put(dir, "memory.memsw.limit_in_bytes", "9223372036854771712");
    }
}

/// v1 hierarchies as separate mounts under a temp root, new cgroups filled as the kernel would.
pub(super) fn v1_fixture(memsw: bool, skip: &[&str]) -> (TempDir, Vec<Hierarchy>) {
    let t = tempdir();
    let root = t.0.clone();
    let mut hs = Vec::new();
    for (dir, c) in V1.iter().filter(|(d, _)| !skip.contains(d)) {
        let mount = root.join(dir);
        std::fs::create_dir(&mount).unwrap();
        v1_files(&mount, c, memsw);
        hs.push(Hierarchy::new(&mount, &[c]));
    }
    put(&root.join("cpuset"), "cpuset.cpus", "0-1\n");
    put(&root.join("cpuset"), "cpuset.mems", "0\n");
    emulate(move |e| {
        if let Event::Mkdir(dir) = e {
            let mount = dir.strip_prefix(&root).unwrap().components().next().unwrap();
            let c = V1.iter().find(|(d, _)| Path::new(d) == Path::new(&mount)).unwrap().1;
            v1_files(dir, c, memsw);
        }
    });
    (t, hs)
}

fn res() -> Resources {
    Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
        memory_limit: Some(64 << 20),
        memory_swap: Some(96 << 20),
        pids_limit: Some(100),
        hugepage_limits: vec![("2MB".into(), 4 << 20)],
        ..Default::default()
    }
}

fn cg(p: &str) -> CgroupPath {
    CgroupPath(p.into())
}

#[tokio::test]
async fn v2_create_enables_controllers_and_writes_resources() {
    let (_t, root) = v2_fixture("cpuset cpu io memory hugetlb pids", true);
    let m = Manager::v2(CgroupDriver::Cgroupfs, &root);
    let mut r = res();
    r.unified.insert("memory.high".into(), "50331648".into());
    assert!(m.create(&cg("/kubepods/pod1"), &r).await.unwrap());
    for dir in [root.clone(), root.join("kubepods")] {
        assert_eq!(get(&dir, "cgroup.subtree_control"), "cpu cpuset hugetlb memory pids", "{dir:?}");
    }
    let d = root.join("kubepods/pod1");
    assert_eq!(get(&d, "cgroup.subtree_control"), "");
    for (file, want) in [
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "0"),
        ("memory.max", "67108864"),
        ("memory.swap.max", "33554432"),
        ("pids.max", "100"),
        ("hugetlb.2MB.max", "4194304"),
        ("hugetlb.2MB.rsvd.max", "4194304"),
        ("memory.high", "50331648"),
    ] {
        assert_eq!(get(&d, file), want, "{file}");
    }
    assert!(!m.create(&cg("/kubepods/pod1"), &Resources::default()).await.unwrap());
    assert_eq!(m.fs_paths(&cg("/kubepods/pod1")), vec![d]);
}

#[tokio::test]
async fn v2_update_and_cpu_max_forms() {
    let (_t, root) = v2_fixture("cpu memory pids", false);
    let m = Manager::v2(CgroupDriver::Cgroupfs, &root);
    let p = cg("/a");
    m.create(&p, &Resources::default()).await.unwrap();
    let d = root.join("a");
    for (quota, period, want) in [(Some(-1), Some(50_000), "max 50000"), (Some(20_000), None, "20000")] {
        m.update(&p, &Resources { cpu_quota: quota, cpu_period: period, ..Default::default() }).unwrap();
        assert_eq!(get(&d, "cpu.max"), want);
    }
    // Swap accounting off: asking for no swap is fine, asking for some is an error.
    m.update(&p, &Resources { memory_limit: Some(1 << 20), memory_swap: Some(1 << 20), ..Default::default() }).unwrap();
    let err =
        m.update(&p, &Resources { memory_limit: Some(1 << 20), memory_swap: Some(2 << 20), ..Default::default() });
    assert!(matches!(err, Err(CgroupError::NoFile { .. })), "{err:?}");
    // No hugetlb controller: kubelet's routine limits are skipped.
    m.update(&p, &Resources { hugepage_limits: vec![("1GB".into(), 0)], ..Default::default() }).unwrap();
    assert!(!d.join("hugetlb.1GB.max").exists());
    let err = m.update(&p, &Resources { cpuset_cpus: Some("0".into()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("cpuset.cpus") && err.to_string().contains("cpuset controller"), "{err}");
    assert!(matches!(m.update(&cg("/missing"), &res()), Err(CgroupError::NotFound { .. })));
}

#[tokio::test]
async fn v2_unified_keys_are_checked() {
    let (_t, root) = v2_fixture("cpu memory pids io", true);
    let m = Manager::v2(CgroupDriver::Cgroupfs, &root);
    let p = cg("/u");
    m.create(&p, &Resources::default()).await.unwrap();
    for key in ["../cgroup.procs", "a/b", ".."] {
        let r = Resources { unified: [(key.to_string(), "1".to_string())].into(), ..Default::default() };
        assert!(matches!(m.update(&p, &r), Err(CgroupError::InvalidResource { .. })), "{key}");
    }
    let r = Resources { unified: [("memory.bogus".to_string(), "7".to_string())].into(), ..Default::default() };
    let err = m.update(&p, &r).unwrap_err().to_string();
    assert!(err.contains("memory.bogus") && err.contains("\"7\"") && err.contains("unknown cgroup file"), "{err}");
    // A cgroup made by a failing create is removed again; an existing one is kept.
    assert!(m.create(&cg("/new/leaf"), &r).await.is_err());
    assert!(!root.join("new/leaf").exists());
    assert!(m.create(&p, &r).await.is_err());
    assert!(root.join("u").exists());
    // A unified key's controller is enabled for it.
    let r = Resources { unified: [("io.max".to_string(), "8:0 rbps=1024".to_string())].into(), ..Default::default() };
    m.update(&p, &r).unwrap();
    assert_eq!(get(&root.join("u"), "io.max"), "8:0 rbps=1024");
}

#[tokio::test]
async fn v2_stats_kill_and_remove() {
    let (_t, root) = v2_fixture("cpu memory pids", true);
    let m = Manager::v2(CgroupDriver::Cgroupfs, &root);
    let p = cg("/pod/c1");
    m.create(&p, &Resources::default()).await.unwrap();
    m.create(&cg("/pod/c1/sub/deeper"), &Resources::default()).await.unwrap();
    let d = root.join("pod/c1");
    put(&d, "cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
    put(&d, "memory.current", "1000\n");
    put(&d, "memory.stat", "anon 300\nfile 600\ninactive_file 1200\npgfault 7\npgmajfault 2\n");
    put(&d, "memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n");
    put(&d, "pids.current", "3\n");
    let s = m.stats(&p).unwrap();
    let want = Stats {
        cpu_usage_ns: 1_500_000,
        memory_usage: 1000,
        memory_working_set: 0,
        memory_rss: 300,
        page_faults: 7,
        major_page_faults: 2,
        pids: 3,
        oom_kills: 1,
    };
    assert_eq!(s, want);
    take_writes();
    m.kill_all(&p, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(take_writes(), vec![(d.join("cgroup.kill"), "1".to_string())]);
    m.remove(&cg("/pod")).await.unwrap();
    assert!(!root.join("pod").exists());
    m.remove(&cg("/pod")).await.unwrap();
    assert!(matches!(m.stats(&p), Err(CgroupError::NotFound { .. })));
}

#[tokio::test]
async fn v1_create_writes_every_hierarchy() {
    let (t, hs) = v1_fixture(true, &[]);
    let m = Manager::v1(CgroupDriver::Cgroupfs, hs);
    assert!(m.create(&cg("/kubepods/pod1"), &res()).await.unwrap());
    for (dir, _) in V1 {
        assert!(t.0.join(dir).join("kubepods/pod1").is_dir(), "{dir}");
    }
    let cpuset = t.0.join("cpuset");
    assert_eq!(get(&cpuset.join("kubepods"), "cpuset.cpus"), "0-1");
    assert_eq!(get(&cpuset.join("kubepods"), "cpuset.mems"), "0");
    let at = |c: &str| t.0.join(c).join("kubepods/pod1");
    for (c, file, want) in [
        ("cpu", "cpu.shares", "1024"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpuset", "cpuset.cpus", "0"),
        ("memory", "memory.limit_in_bytes", "67108864"),
        ("memory", "memory.memsw.limit_in_bytes", "100663296"),
        ("pids", "pids.max", "100"),
        ("hugetlb", "hugetlb.2MB.limit_in_bytes", "4194304"),
    ] {
        assert_eq!(get(&at(c), file), want, "{file}");
    }
    let paths = m.fs_paths(&cg("/kubepods/pod1"));
    assert_eq!(paths.len(), V1.len());
    assert_eq!(m.relative_path(&cg("/kubepods/pod1")).unwrap(), "/kubepods/pod1");
    let r = Resources { unified: [("memory.high".into(), "1".into())].into(), ..Default::default() };
    let err = m.update(&cg("/kubepods/pod1"), &r).unwrap_err().to_string();
    assert!(err.contains("memory.high") && err.contains("cgroup v2"), "{err}");
    assert!(m.create(&cg("/other"), &r).await.is_err());
    assert!(m.fs_paths(&cg("/other")).iter().all(|p| !p.exists()));
    m.update(&cg("/kubepods/pod1"), &Resources { pids_limit: Some(-1), ..Default::default() }).unwrap();
    assert_eq!(get(&at("pids"), "pids.max"), "max");
    m.remove(&cg("/kubepods")).await.unwrap();
    assert!(m.fs_paths(&cg("/kubepods")).iter().all(|p| !p.exists()));
}

#[tokio::test]
async fn v1_memory_and_swap_order() {
    let (t, hs) = v1_fixture(true, &[]);
    let m = Manager::v1(CgroupDriver::Cgroupfs, hs);
    let p = cg("/m");
    let small = Resources { memory_limit: Some(100 << 20), memory_swap: Some(200 << 20), ..Default::default() };
    m.create(&p, &small).await.unwrap();
    let big = Resources { memory_limit: Some(300 << 20), memory_swap: Some(400 << 20), ..Default::default() };
    take_writes();
    m.update(&p, &big).unwrap();
    let files = |w: Vec<(PathBuf, String)>| {
        w.into_iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>()
    };
    assert_eq!(files(take_writes()), ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"], "raising");
    m.update(&p, &small).unwrap();
    assert_eq!(files(take_writes()), ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"], "lowering");
    assert_eq!(get(&t.0.join("memory/m"), "memory.memsw.limit_in_bytes"), (200u64 << 20).to_string());
}

#[tokio::test]
async fn v1_without_swap_accounting_or_hugetlb() {
    let (t, hs) = v1_fixture(false, &["hugetlb"]);
    let m = Manager::v1(CgroupDriver::Cgroupfs, hs);
    m.create(&cg("/n"), &res()).await.unwrap();
    let d = t.0.join("memory/n");
    assert_eq!(get(&d, "memory.limit_in_bytes"), "67108864");
    assert!(!d.join("memory.memsw.limit_in_bytes").exists());
}

#[tokio::test]
async fn v1_stats_and_kill() {
    let (t, hs) = v1_fixture(true, &[]);
    let m = Manager::v1(CgroupDriver::Cgroupfs, hs);
    let p = cg("/s");
    m.create(&p, &Resources::default()).await.unwrap();
    put(&t.0.join("cpuacct/s"), "cpuacct.usage", "123456\n");
    let mem = t.0.join("memory/s");
    put(&mem, "memory.usage_in_bytes", "5000\n");
    put(
        &mem,
        "memory.stat",
        "cache 10\nrss 1\ntotal_rss 2000\ntotal_inactive_file 1000\ntotal_pgfault 9\ntotal_pgmajfault 1\n",
    );
    put(&mem, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    put(&t.0.join("pids/s"), "pids.current", "4\n");
    let s = m.stats(&p).unwrap();
    assert_eq!((s.cpu_usage_ns, s.memory_usage, s.memory_working_set, s.memory_rss), (123456, 5000, 4000, 2000));
    assert_eq!((s.page_faults, s.major_page_faults, s.pids, s.oom_kills), (9, 1, 4, 2));
    // No processes: freeze, nothing to signal, thaw.
    take_writes();
    m.kill_all(&p, nix::sys::signal::Signal::SIGTERM).unwrap();
    let states: Vec<String> = take_writes().into_iter().map(|(_, v)| v).collect();
    assert_eq!(states, ["FROZEN", "THAWED"]);
    // Paused stays paused for a non-fatal signal.
    put(&t.0.join("freezer/s"), "freezer.state", "FROZEN");
    m.kill_all(&p, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(take_writes().is_empty());
}

#[test]
fn parse_parent_per_driver() {
    let fs = Manager::v2(CgroupDriver::Cgroupfs, Path::new("/x"));
    let sd = Manager::v2(CgroupDriver::Systemd, Path::new("/x"));
    assert_eq!(fs.parse_parent("/kubepods//besteffort/pod1/").unwrap(), cg("/kubepods/besteffort/pod1"));
    assert_eq!(fs.parse_parent("").unwrap(), cg("/cricket"));
    assert_eq!(sd.parse_parent("kubepods-besteffort.slice").unwrap(), cg("kubepods-besteffort.slice"));
    assert_eq!(sd.parse_parent("").unwrap(), cg("cricket.slice"));
    let err = |m: &Manager, v: &str| m.parse_parent(v).unwrap_err().to_string();
    let e = err(&fs, "kubepods-besteffort-pod1.slice");
    assert!(
        e.contains("kubepods-besteffort-pod1.slice") && e.contains("cgroupDriver") && e.contains("cgroupfs"),
        "{e}"
    );
    let e = err(&sd, "/kubepods/pod1");
    assert!(e.contains("/kubepods/pod1") && e.contains("\"systemd\"") && e.contains("cgroupDriver"), "{e}");
    assert!(err(&fs, "/kubepods/../etc").contains(".."));
    assert!(err(&fs, "kubepods").contains("absolute"));
    assert!(err(&sd, "kubepods").contains("slice"));
    assert!(err(&sd, "a--b.slice").contains("not a valid slice"));
    assert!(err(&sd, "a/b.slice").contains("a/b.slice"));
}

#[test]
fn children_and_systemd_paths() {
    let fs = Manager::v2(CgroupDriver::Cgroupfs, Path::new("/sys/fs/cgroup"));
    assert_eq!(fs.child(&cg("/kubepods/pod1"), "abc"), cg("/kubepods/pod1/abc"));
    assert_eq!(fs.child(&cg("/"), "abc"), cg("/abc"));
    let sd = Manager::v2(CgroupDriver::Systemd, Path::new("/sys/fs/cgroup"));
    let pod = cg("kubepods-besteffort-pod1.slice");
    let c = sd.child(&pod, "abc");
    assert_eq!(c, cg("kubepods-besteffort-pod1.slice:cricket:abc"));
    assert_eq!(sd.child(&c, "def"), cg("kubepods-besteffort-pod1.slice:cricket:def"));
    assert_eq!(
        sd.fs_paths(&c),
        vec![PathBuf::from(
            "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cricket-abc.scope"
        )]
    );
    assert_eq!(
        sd.relative_path(&pod).unwrap(),
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
    );
    assert_eq!(sd.relative_path(&cg(":crio:x")).unwrap(), "/cricket.slice/crio-x.scope");
    assert!(sd.relative_path(&cg("/not/systemd")).is_err());
    assert!(sd.fs_paths(&cg("a:b")).is_empty());
    assert_eq!(expand_slice("a-b-c.slice").unwrap(), PathBuf::from("a.slice/a-b.slice/a-b-c.slice"));
    assert_eq!(expand_slice("-.slice").unwrap(), PathBuf::new());
    for bad in ["a-.slice", "-a.slice", "a", ".slice", "a/b.slice"] {
        assert!(expand_slice(bad).is_err(), "{bad}");
    }
}

#[test]
fn conversions() {
    assert_eq!([2, 1024, 262_144, 0, 1 << 30].map(shares_to_weight), [1, 39, 10000, 1, 10000]);
    for (given, want) in
        [("2MB", "2MB"), ("1GB", "1GB"), ("2048kB", "2MB"), ("2Mi", "2MB"), ("64KB", "64KB"), ("1024MB", "1GB")]
    {
        assert_eq!(page_size_name(given).unwrap(), want, "{given}");
    }
    for bad in ["", "MB", "2XB", "1B", "2 MB"] {
        assert!(page_size_name(bad).is_err(), "{bad}");
    }
    assert_eq!(v2_swap(Some(100), Some(150)).unwrap().as_deref(), Some("50"));
    assert_eq!(v2_swap(Some(100), Some(-1)).unwrap().as_deref(), Some("max"));
    assert_eq!(v2_swap(Some(-1), None).unwrap().as_deref(), Some("max"));
    assert_eq!(v2_swap(Some(100), None).unwrap(), None);
    assert!(v2_swap(None, Some(100)).is_err());
    assert!(v2_swap(Some(200), Some(100)).is_err());
    assert_eq!(systemd::quota_per_sec(50_000, Some(100_000)), 500_000);
    assert_eq!(systemd::quota_per_sec(12_345, None), 130_000);
    assert_eq!(systemd::quota_per_sec(-1, None), u64::MAX);
}

#[test]
fn from_cri_and_validation() {
    let cri = k8s_cri::v1::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 1 << 20,
        hugepage_limits: vec![k8s_cri::v1::HugepageLimit { page_size: "2MB".into(), limit: 0 }],
        ..Default::default()
    };
    let r = Resources::from_cri(&cri);
    assert_eq!(r.cpu_shares, Some(512));
    assert_eq!(r.memory_limit, Some(1 << 20));
    assert_eq!((r.cpu_quota, r.cpu_period, r.memory_swap, r.cpuset_cpus.as_deref()), (None, None, None, None));
    assert_eq!(r.hugepage_limits, vec![("2MB".to_string(), 0)]);
    assert!(Resources::from_cri(&Default::default()).is_empty());
    for bad in [
        Resources { cpu_quota: Some(10), ..Default::default() },
        Resources { memory_limit: Some(-5), ..Default::default() },
        Resources { memory_limit: Some(100), memory_swap: Some(50), ..Default::default() },
        Resources { pids_limit: Some(0), ..Default::default() },
        Resources { cpuset_cpus: Some("0;1".into()), ..Default::default() },
    ] {
        assert!(matches!(bad.validate(), Err(CgroupError::InvalidResource { .. })), "{bad:?}");
    }
}

#[test]
fn mountinfo_v1_hierarchies() {
    let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:29 / /mnt/other\\040dir rw,relatime - cgroup cgroup rw,memory
43 31 0:29 / /sys/fs/cgroup/cpu2 rw,relatime - cgroup cgroup rw,cpu,cpuacct
";
    let hs = detect::v1_hierarchies(text, Path::new("/sys/fs/cgroup"));
    assert_eq!(
        hs,
        vec![
            Hierarchy::new("/sys/fs/cgroup/cpu,cpuacct", &["cpu", "cpuacct"]),
            Hierarchy::new("/sys/fs/cgroup/cpuset", &["cpuset"]),
            Hierarchy::new("/sys/fs/cgroup/systemd", &["name=systemd"]),
        ]
    );
    let other = detect::v1_hierarchies(text, Path::new("/mnt"));
    assert_eq!(other, vec![Hierarchy::new("/mnt/other dir", &["memory"])]);
}

#[test]
fn systemd_properties_per_version() {
    let unit = path::Unit::Scope { name: "cricket-x.scope".into(), slice: "a-b.slice".into() };
    let r =
        Resources { cpu_shares: Some(1024), memory_limit: Some(1 << 20), memory_swap: Some(-1), ..Default::default() };
    let names = |v| systemd::properties(&unit, v, &r, Some(1)).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let v1 = names(Version::V1);
    assert!(
        ["CPUShares", "MemoryLimit", "BlockIOAccounting", "Delegate", "PIDs"].iter().all(|n| v1.contains(n)),
        "{v1:?}"
    );
    assert!(!v1.contains(&"MemorySwapMax"));
    let v2 = names(Version::V2);
    assert!(["CPUWeight", "MemoryMax", "MemorySwapMax", "IOAccounting"].iter().all(|n| v2.contains(n)), "{v2:?}");
    let slice = path::Unit::Slice { name: "a.slice".into() };
    let top = systemd::properties(&slice, Version::V2, &Resources::default(), None);
    assert!(!top.iter().any(|(n, _)| *n == "Wants" || *n == "Delegate" || *n == "PIDs"));
}
