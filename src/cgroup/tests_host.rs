//! Tests against this machine's real cgroup mounts (v1 hierarchies, and a cgroup2
//! mount if there is one), under a unique top-level path; skipped when not writable.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;

use super::*;

/// A manager for the real mount of `version`, or None with the reason printed.
fn host(version: Version) -> Option<Manager> {
    let roots = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
    let found = roots
        .iter()
        .find_map(|r| Manager::new(CgroupDriver::Cgroupfs, Path::new(r)).ok().filter(|m| m.version() == version));
    let Some(m) = found else {
        eprintln!("skipping: no cgroup {version:?} mount here");
        return None;
    };
    let probe = m.fs_paths(&CgroupPath(format!("/cricket-probe-{:x}", rand::random::<u32>())));
    let writable = probe.iter().all(|p| std::fs::create_dir(p).is_ok());
    probe.iter().for_each(|p| drop(std::fs::remove_dir(p)));
    if !writable {
        eprintln!("skipping: cannot create cgroups under {:?} (not root?)", probe.first());
        return None;
    }
    Some(m)
}

/// Kills the sleepers and removes the test cgroups even when an assertion fails.
struct Cleanup<'a> {
    manager: &'a Manager,
    path: CgroupPath,
    children: Vec<Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for dir in self.manager.fs_paths(&self.path) {
            for d in fs::tree(&dir) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("1000").spawn().expect("spawn sleep")
}

/// A shell that, once in the cgroup and told to go, burns some CPU and memory
/// (so the cgroup is charged for it), then becomes `sleep`.
fn busy_sleeper() -> Child {
    let script = "read go; i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; exec sleep 1000";
    Command::new("sh").args(["-c", script]).stdin(Stdio::piped()).spawn().expect("spawn sh")
}

fn go(child: &mut Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let comm = format!("/proc/{}/comm", child.id());
    for _ in 0..500 {
        if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the busy shell never reached sleep");
}

fn test_path() -> CgroupPath {
    CgroupPath(format!("/cricket-test-{:x}", rand::random::<u64>()))
}

#[tokio::test]
async fn host_v1_lifecycle() {
    let Some(m) = host(Version::V1) else { return };
    let mut guard = Cleanup { manager: &m, path: test_path(), children: Vec::new() };
    let pod = guard.path.clone();
    let ctr = m.child(&pod, "c1");
    let res = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        memory_swap: Some(128 << 20),
        pids_limit: Some(50),
        ..Default::default()
    };
    assert!(m.create(&pod, &Resources::default()).await.unwrap());
    assert!(m.create(&ctr, &res).await.unwrap());
    assert!(!m.create(&ctr, &res).await.unwrap());
    let rel = m.relative_path(&ctr).unwrap();
    for dir in m.fs_paths(&ctr) {
        assert!(dir.is_dir(), "{dir:?}");
    }
    let mem = m.hierarchies().iter().find(|h| h.has("memory")).unwrap().mount.join(rel.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap().trim(), "67108864");

    guard.children.push(busy_sleeper());
    let pid = guard.children[0].id() as i32;
    m.add_process(&ctr, pid).unwrap();
    go(&mut guard.children[0]);
    assert_eq!(m.procs(&ctr).unwrap(), vec![pid]);
    assert_eq!(m.all_procs(&pod).unwrap(), vec![pid]);
    assert!(m.procs(&pod).unwrap().is_empty());
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for h in m.hierarchies() {
        let line = format!(":{}:{rel}", h.controllers.join(","));
        assert!(own.lines().any(|l| l.ends_with(&line)), "{line} not in\n{own}");
    }
    let stats = m.stats(&ctr).unwrap();
    eprintln!("v1 stats: {stats:?}");
    assert_eq!(stats.pids, 1);
    // memory.stat lags (the kernel flushes it lazily), so only the counters are checked.
    assert!(stats.cpu_usage_ns > 0 && stats.memory_usage > 0, "{stats:?}");
    assert!(stats.memory_working_set <= stats.memory_usage);

    m.update(&ctr, &Resources { memory_limit: Some(32 << 20), memory_swap: Some(32 << 20), ..Default::default() })
        .unwrap();
    assert_eq!(std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap().trim(), "33554432");

    // Through the freezer; the parent reaches its child's processes.
    m.kill_all(&pod, Signal::SIGTERM).unwrap();
    let status = guard.children[0].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    let frozen = m.hierarchies().iter().find(|h| h.has("freezer")).map(|h| h.mount.join(rel.trim_start_matches('/')));
    if let Some(f) = frozen {
        assert_eq!(std::fs::read_to_string(f.join("freezer.state")).unwrap().trim(), "THAWED");
    }

    guard.children.push(sleeper());
    m.add_process(&ctr, guard.children[1].id() as i32).unwrap();
    m.kill_all(&ctr, Signal::SIGKILL).unwrap();
    // Removed before the child is reaped: rmdir may see EBUSY and retry.
    m.remove(&pod).await.unwrap();
    assert_eq!(guard.children[1].wait().unwrap().signal(), Some(libc::SIGKILL));
    for dir in m.fs_paths(&pod) {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
    m.remove(&pod).await.unwrap();
    assert!(matches!(m.stats(&pod), Err(CgroupError::NotFound { .. })));
}

#[tokio::test]
async fn host_v2_lifecycle() {
    let Some(m) = host(Version::V2) else { return };
    let mut guard = Cleanup { manager: &m, path: test_path(), children: Vec::new() };
    let pod = guard.path.clone();
    let ctr = m.child(&pod, "c1");
    assert!(m.create(&ctr, &Resources::default()).await.unwrap());
    guard.children.push(busy_sleeper());
    guard.children.push(sleeper());
    for c in &guard.children {
        m.add_process(&ctr, c.id() as i32).unwrap();
    }
    go(&mut guard.children[0]);
    let mut procs = m.all_procs(&pod).unwrap();
    procs.sort();
    let mut want: Vec<i32> = guard.children.iter().map(|c| c.id() as i32).collect();
    want.sort();
    assert_eq!(procs, want);
    let stats = m.stats(&ctr).unwrap();
    eprintln!("v2 stats: {stats:?}");
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");

    // Not SIGKILL: freeze, signal, thaw.
    m.kill_all(&ctr, Signal::SIGTERM).unwrap();
    for c in &mut guard.children {
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
    let dir = &m.fs_paths(&ctr)[0];
    assert_eq!(std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap().trim(), "0");

    guard.children.push(sleeper());
    m.add_process(&ctr, guard.children[2].id() as i32).unwrap();
    m.kill_all(&pod, Signal::SIGKILL).unwrap();
    m.remove(&pod).await.unwrap();
    assert_eq!(guard.children[2].wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(!m.fs_paths(&pod)[0].exists());
}
