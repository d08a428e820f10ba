//! End-to-end tests of `cricket monitor` driving runc: a busybox bundle, the
//! handshake, the control socket, the CRI log and the exit record.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde_json::{json, Value};

const RUNC: &str = "/usr/sbin/runc";
const APPLETS: &[&str] = &["sh", "echo", "sleep", "cat", "head", "tr", "printf", "test"];

/// One container under a monitor, in its own temp dir; `Drop` removes
/// whatever a failed test left (runtime state, processes, cgroup).
struct Case {
    tmp: tempfile::TempDir,
    id: String,
    monitor_pid: Option<i32>,
    init_pid: Option<i32>,
}

struct Options {
    tty: bool,
    memory_limit: Option<i64>,
    /// Share the host's PID namespace, so the init's exit does not kill the rest.
    host_pid: bool,
    /// Keep a stdin for attach clients.
    stdin: bool,
}

const PLAIN: Options = Options { tty: false, memory_limit: None, host_pid: false, stdin: false };

impl Case {
    fn new(script: &str, opts: Options) -> Case {
        let tmp = tempfile::Builder::new().prefix("cricket-mon-").tempdir().unwrap();
        let id = format!(
            "cricket-mon-{}",
            tmp.path().file_name().unwrap().to_str().unwrap().trim_start_matches("cricket-mon-")
        );
        let case = Case { tmp, id, monitor_pid: None, init_pid: None };
        let rootfs = case.bundle().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        for dir in ["proc", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        let spec = spec(&["sh", "-c", script], &opts, &case.cgroup_path());
        spec.save(case.bundle().join("config.json")).unwrap();
        let cgroup_dirs = if opts.memory_limit.is_some() { vec![case.memory_cgroup()] } else { vec![] };
        let config = json!({
            "id": case.id,
            "bundle": case.bundle(),
            "log_path": case.log(),
            "exit_file": case.exit_file(),
            "control_socket": case.socket(),
            "cgroup_dirs": cgroup_dirs,
            "stdin": opts.stdin,
            "stdin_once": false,
            "tty": opts.tty,
            "runtime": {"type": "oci", "path": RUNC, "root": case.runc_root()},
        });
        fs::create_dir_all(case.run_dir()).unwrap();
        fs::write(case.config(), serde_json::to_vec(&config).unwrap()).unwrap();
        case
    }

    fn bundle(&self) -> PathBuf {
        self.tmp.path().join("bundle")
    }
    fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }
    fn config(&self) -> PathBuf {
        self.run_dir().join("monitor.json")
    }
    fn socket(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }
    fn exit_file(&self) -> PathBuf {
        self.run_dir().join("exit.json")
    }
    fn log(&self) -> PathBuf {
        self.tmp.path().join("logs/0.log")
    }
    fn runc_root(&self) -> PathBuf {
        self.tmp.path().join("runc")
    }
    fn cgroup_path(&self) -> String {
        format!("/{}", self.id)
    }
    fn memory_cgroup(&self) -> PathBuf {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            PathBuf::from(format!("/sys/fs/cgroup{}", self.cgroup_path()))
        } else {
            PathBuf::from(format!("/sys/fs/cgroup/memory{}", self.cgroup_path()))
        }
    }

    /// Spawns the monitor as the daemon does and reads its handshake line.
    fn spawn(&mut self) -> Value {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cricket"));
        cmd.arg("monitor").arg("--config").arg(self.config());
        self.handshake(cmd)
    }

    fn handshake(&mut self, mut cmd: Command) -> Value {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(child.wait().unwrap().success(), "the spawned process exits at once");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("handshake {line:?}: {e}"));
        self.init_pid = v["pid"].as_i64().map(|p| p as i32);
        self.monitor_pid = v["monitor_pid"].as_i64().map(|p| p as i32);
        v
    }

    fn request(&self, line: &str) -> String {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply.trim_end().to_string()
    }

    fn exit_record(&self) -> Value {
        wait_for("the exit record", Duration::from_secs(30), || self.exit_file().exists());
        serde_json::from_slice(&fs::read(self.exit_file()).unwrap()).unwrap()
    }

    /// Waits for the monitor to exit, then checks that nothing is left.
    fn assert_clean(&self) {
        let monitor = self.monitor_pid.unwrap();
        wait_for("the monitor to exit", Duration::from_secs(10), || gone(monitor));
        assert!(gone(self.init_pid.unwrap()), "init is gone");
        assert!(!self.runc_root().join(&self.id).exists(), "runc state removed");
        assert!(!self.socket().exists(), "control socket removed");
        let list = Command::new(RUNC).arg("--root").arg(self.runc_root()).args(["list", "-q"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "");
        assert!(!self.memory_cgroup().exists(), "cgroup removed");
    }

    fn entries(&self, path: &Path) -> Vec<(String, String, String)> {
        parse_log(&fs::read_to_string(path).unwrap_or_default())
    }

    fn wait_log(&self, text: &str) {
        wait_for(text, Duration::from_secs(10), || self.entries(&self.log()).iter().any(|e| e.2 == text));
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for pid in [self.init_pid, self.monitor_pid].into_iter().flatten() {
            if !gone(pid) {
                // SAFETY: plain kill(2) on a pid this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(self.runc_root())
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir(self.memory_cgroup());
    }
}

/// A minimal runc-runnable config: busybox rootfs, its own pid/ipc/uts/mount
/// namespaces, /proc, /dev (runc adds the default device nodes) and /dev/pts.
fn spec(args: &[&str], opts: &Options, cgroups_path: &str) -> Spec {
    let mount = |dest: &str, typ: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(typ)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    };
    let namespaces =
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
            .into_iter()
            .filter(|&typ| !(opts.host_pid && typ == LinuxNamespaceType::Pid))
            .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().unwrap())
            .collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default().namespaces(namespaces).cgroups_path(PathBuf::from(cgroups_path));
    if let Some(limit) = opts.memory_limit {
        let memory = LinuxMemoryBuilder::default().limit(limit).build().unwrap();
        linux = linux.resources(LinuxResourcesBuilder::default().memory(memory).build().unwrap());
    }
    let process = ProcessBuilder::default()
        .terminal(opts.tty)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .build()
        .unwrap();
    SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path("rootfs").readonly(false).build().unwrap())
        .process(process)
        .hostname("mon")
        .mounts(vec![
            mount("/proc", "proc", &[]),
            mount("/dev", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        ])
        .linux(linux.build().unwrap())
        .build()
        .unwrap()
}

/// CRI log lines as (stream, tag, text), checking the timestamp's shape.
fn parse_log(text: &str) -> Vec<(String, String, String)> {
    assert!(text.is_empty() || text.ends_with('\n'), "whole lines only");
    text.lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap();
            let b = ts.as_bytes();
            assert!(ts.len() == 30 && ts.ends_with('Z') && b[10] == b'T' && b[19] == b'.', "timestamp {ts:?}");
            assert!(ts[20..29].bytes().all(|c| c.is_ascii_digit()), "timestamp {ts:?}");
            let (stream, tag, text) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or(""));
            assert!(stream == "stdout" || stream == "stderr", "{l:?}");
            assert!(tag == "F" || tag == "P", "{l:?}");
            (stream.to_string(), tag.to_string(), text.to_string())
        })
        .collect()
}

fn texts(entries: &[(String, String, String)], stream: &str) -> Vec<String> {
    entries.iter().filter(|e| e.0 == stream).map(|e| e.2.clone()).collect()
}

fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn streams_and_exit_code() {
    let mut case = Case::new("echo out1; echo err1 >&2; echo out2; printf 'no newline'; exit 3", PLAIN);
    let hs = case.spawn();
    assert!(hs["pid"].as_i64().unwrap() > 1, "{hs}");
    let mode = fs::metadata(case.socket()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    assert_eq!(case.request("start"), "ok");
    let rec = case.exit_record();
    assert_eq!(rec["exit_code"], 3, "{rec}");
    assert_eq!(rec["signal"], Value::Null);
    assert_eq!(rec["error"], Value::Null);
    assert_eq!(rec["oom_killed"], false);
    assert!(rec["finished_at"].as_i64().unwrap() > 1_700_000_000_000_000_000);
    let entries = case.entries(&case.log());
    assert_eq!(texts(&entries, "stdout"), ["out1", "out2", "no newline"]);
    assert_eq!(texts(&entries, "stderr"), ["err1"]);
    assert!(entries.iter().all(|e| e.1 == "F"));
    let mode = fs::metadata(case.log()).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o640);
    case.assert_clean();
}

#[test]
fn sigkill_is_137() {
    let mut case = Case::new("echo ready; sleep 100", PLAIN);
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    case.wait_log("ready");
    // SAFETY: kill(2) on the container's init.
    unsafe { libc::kill(case.init_pid.unwrap(), libc::SIGKILL) };
    let rec = case.exit_record();
    assert_eq!((rec["exit_code"].as_i64(), rec["signal"].as_i64()), (Some(137), Some(9)), "{rec}");
    assert_eq!(rec["error"], Value::Null);
    case.assert_clean();
}

#[test]
fn long_line_is_split() {
    let mut case = Case::new("head -c 40960 /dev/zero | tr '\\0' a", PLAIN);
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    assert_eq!(case.exit_record()["exit_code"], 0);
    let entries = case.entries(&case.log());
    let shape: Vec<(&str, &str, usize)> = entries.iter().map(|e| (e.0.as_str(), e.1.as_str(), e.2.len())).collect();
    assert_eq!(shape, [("stdout", "P", 16384), ("stdout", "P", 16384), ("stdout", "F", 8192)]);
    assert!(entries.iter().all(|e| e.2.bytes().all(|b| b == b'a')));
    case.assert_clean();
}

#[test]
fn reopen_after_rotation() {
    let mut case = Case::new("echo before; printf par; cat /fifo; echo tial; echo after", PLAIN);
    let fifo = case.bundle().join("rootfs/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    case.wait_log("before");
    let rotated = case.log().with_extension("log.1");
    fs::rename(case.log(), &rotated).unwrap();
    assert_eq!(case.request("reopen"), "ok");
    assert!(case.log().exists(), "reopen creates the new file");
    // Opening for writing waits for the container's `cat`; closing lets it go on.
    fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    assert_eq!(case.exit_record()["exit_code"], 0);
    assert_eq!(texts(&case.entries(&rotated), "stdout"), ["before"]);
    assert_eq!(texts(&case.entries(&case.log()), "stdout"), ["partial", "after"]);
    case.assert_clean();
}

#[test]
fn killed_before_start() {
    let mut case = Case::new("echo never", PLAIN);
    case.spawn();
    // SAFETY: kill(2) on the container's init, waiting for start.
    unsafe { libc::kill(case.init_pid.unwrap(), libc::SIGKILL) };
    let rec = case.exit_record();
    assert_eq!((rec["exit_code"].as_i64(), rec["signal"].as_i64()), (Some(137), Some(9)), "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("before it was started"), "{rec}");
    assert!(case.entries(&case.log()).is_empty());
    case.assert_clean();
}

#[test]
fn survives_parent_and_serves_despite_idle_clients() {
    let mut case = Case::new("cat /fifo; echo done", PLAIN);
    let fifo = case.bundle().join("rootfs/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(format!("'{}' monitor --config '{}' &", env!("CARGO_BIN_EXE_cricket"), case.config().display()));
    case.handshake(sh);
    let idle = UnixStream::connect(case.socket()).unwrap();
    let mut partial = UnixStream::connect(case.socket()).unwrap();
    partial.write_all(b"sta").unwrap();
    assert_eq!(case.request("bogus"), "error unknown request");
    assert_eq!(case.request("start"), "ok");
    assert!(case.request("start").starts_with("error"), "a second start fails");
    let stat = fs::read_to_string(format!("/proc/{}/stat", case.monitor_pid.unwrap())).unwrap();
    let ppid: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(ppid, std::process::id() as i32);
    fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    assert_eq!(case.exit_record()["exit_code"], 0);
    assert_eq!(texts(&case.entries(&case.log()), "stdout"), ["done"]);
    drop((idle, partial));
    case.assert_clean();
}

#[test]
fn tty_output_is_stdout() {
    let mut case =
        Case::new("echo on tty; echo to stderr >&2; test -t 1 && echo is a tty; tty", Options { tty: true, ..PLAIN });
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    assert_eq!(case.exit_record()["exit_code"], 0);
    let entries = case.entries(&case.log());
    assert!(entries.iter().all(|e| e.0 == "stdout"), "{entries:?}");
    let lines: Vec<String> = entries.iter().map(|e| e.2.trim_end_matches('\r').to_string()).collect();
    // Made in the container's devpts, the terminal has a name there.
    assert_eq!(lines, ["on tty", "to stderr", "is a tty", "/dev/pts/0"]);
    case.assert_clean();
}

#[test]
fn create_failure_is_reported() {
    let mut case = Case::new("true", PLAIN);
    let mut spec = Spec::load(case.bundle().join("config.json")).unwrap();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(vec!["/no/such/binary".into()]));
    spec.set_process(Some(process));
    spec.save(case.bundle().join("config.json")).unwrap();
    let hs = case.spawn();
    let error = hs["error"].as_str().unwrap_or_else(|| panic!("{hs}"));
    assert!(error.contains("/no/such/binary"), "{error}");
    assert!(!case.socket().exists());
    assert!(!case.exit_file().exists());
}

#[test]
fn oom_kill_is_recorded() {
    let opts = Options { memory_limit: Some(32 << 20), ..PLAIN };
    let mut case = Case::new("echo filling; x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo survived", opts);
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    let rec = case.exit_record();
    assert_eq!((rec["exit_code"].as_i64(), rec["oom_killed"].as_bool()), (Some(137), Some(true)), "{rec}");
    case.assert_clean();
}

#[test]
fn drain_is_bounded_when_a_leftover_holds_the_pipes() {
    let opts = Options { host_pid: true, ..PLAIN };
    let mut case = Case::new("sleep 60 & echo $!", opts);
    case.spawn();
    let t = Instant::now();
    assert_eq!(case.request("start"), "ok");
    assert_eq!(case.exit_record()["exit_code"], 0);
    // Bounded: far below the sleeper's 60 s, with room for a slow machine.
    assert!(t.elapsed() < Duration::from_secs(20), "drained for {:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_secs(2), "the sleeper held stdout: the monitor waited");
    let diagnostics = fs::read_to_string(case.run_dir().join("monitor.log")).unwrap();
    assert!(diagnostics.contains("still open"), "{diagnostics}");
    let sleeper: i32 = texts(&case.entries(&case.log()), "stdout")[0].parse().unwrap();
    // `delete --force` killed the sleeper with the rest of the container's cgroup.
    wait_for("the leftover to die", Duration::from_secs(5), || gone(sleeper));
    case.assert_clean();
}

#[test]
fn stdin_nobody_reads_stalls_nothing() {
    let mut case = Case::new("echo ready; sleep 100", Options { stdin: true, ..PLAIN });
    case.spawn();
    assert_eq!(case.request("start"), "ok");
    case.wait_log("ready");
    // An attach client pours 8 MiB into a stdin the container never reads.
    let mut client = UnixStream::connect(case.run_dir().join("attach.sock")).unwrap();
    let writer = std::thread::spawn(move || {
        let mut frame = vec![0u8, 0, 1, 0, 0];
        frame.resize(5 + (64 << 10), b'x');
        for _ in 0..128 {
            if client.write_all(&frame).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // The monitor still answers (a blocking write to the pipe would hang it).
    let mut s = UnixStream::connect(case.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"reopen\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("the monitor answers while stdin is full");
    assert_eq!(reply.trim_end(), "ok");
    // SAFETY: kill(2) on the container's init.
    unsafe { libc::kill(case.init_pid.unwrap(), libc::SIGKILL) };
    assert_eq!(case.exit_record()["exit_code"].as_i64(), Some(137));
    writer.join().unwrap();
    case.assert_clean();
}
