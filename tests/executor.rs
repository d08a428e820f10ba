//! The built-in executor end to end: `cricket run` and `cricket exec` on a
//! busybox rootfs with hand-written OCI configs. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

const APPLETS: &[&str] =
    &["sh", "echo", "cat", "id", "ls", "sleep", "hostname", "grep", "touch", "mkdir", "true", "test"];
const DEFAULT_CAPS: &[&str] = &["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new() -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("marker"), "rootfs\n").unwrap();
        Bundle { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, config: &Value) {
        // Through oci-spec, so the test fails on a config the real builder couldn't produce.
        let spec: Spec = serde_json::from_value(config.clone()).unwrap();
        spec.save(self.path().join("config.json")).unwrap();
    }
}

fn config(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "cricket-test",
        "process": {
            "args": args,
            "cwd": "/",
            "env": ["PATH=/bin", "HOME=/"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS
            },
            "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "oomScoreAdj": 100
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/nonexistent"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn cricket() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cricket"))
}

fn run(bundle: &Bundle, extra: &[&str]) -> Output {
    cricket().arg("run").arg("--bundle").arg(bundle.path()).args(extra).stdin(Stdio::null()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `cricket run` in the background; killed (with its container) on drop.
struct Background {
    child: Child,
    init: i32,
}

impl Background {
    fn start(bundle: &Bundle, extra: &[&str]) -> Background {
        let pid_file = bundle.path().join("init.pid");
        let child = cricket()
            .arg("run")
            .arg("--bundle")
            .arg(bundle.path())
            .arg("--pid-file")
            .arg(&pid_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // From here on, Drop cleans up even if the container never starts.
        let mut bg = Background { child, init: 0 };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()) {
                // Wait for the exec: the init's exe is the workload, not cricket.
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.ends_with("busybox") {
                    bg.init = pid;
                    return bg;
                }
            }
            if let Some(status) = bg.child.try_wait().unwrap() {
                panic!("cricket run ended ({status}) before the container started");
            }
            assert!(Instant::now() < deadline, "container did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> i32 {
        self.kill_init();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }

    fn kill_init(&self) {
        // Never kill(0): that would be this test's own process group.
        if self.init > 0 {
            unsafe { libc::kill(self.init, libc::SIGKILL) };
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill_init();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn output_and_exit_code() {
    let bundle = Bundle::new();
    bundle.write(&config(&["sh", "-c", "echo hello from $(hostname); exit 3"]));
    let out = run(&bundle, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from cricket-test\n");
}

#[test]
fn init_is_pid_1_in_a_new_pid_namespace() {
    let bundle = Bundle::new();
    bundle.write(&config(&["sh", "-c", "echo $$; cat /marker; ls /dev"]));
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("1"));
    assert_eq!(lines.next(), Some("rootfs"));
    let devs: Vec<&str> = lines.collect();
    for dev in ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin", "mqueue"] {
        assert!(devs.contains(&dev), "/dev lacks {dev}: {devs:?}");
    }
}

#[test]
fn user_and_groups() {
    let bundle = Bundle::new();
    let mut cfg = config(&["id"]);
    cfg["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "uid=1000 gid=1000 groups=10,20");
}

#[test]
fn readonly_rootfs() {
    let bundle = Bundle::new();
    let mut cfg = config(&["sh", "-c", "touch /newfile && echo wrote; touch /tmp/ok && echo tmp-ok"]);
    cfg["root"]["readonly"] = json!(true);
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert_eq!(stdout(&out), "tmp-ok\n");
    assert!(stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
    assert!(!bundle.path().join("rootfs/newfile").exists());
}

#[test]
fn masked_and_readonly_paths() {
    let bundle = Bundle::new();
    bundle.write(&config(&[
        "sh",
        "-c",
        "test -s /proc/kcore && echo kcore-visible || echo kcore-masked; ls /proc/acpi | grep -c . ; \
         grep ' /proc/sys ' /proc/self/mountinfo",
    ]));
    let out = run(&bundle, &[]);
    let text = stdout(&out);
    assert!(text.starts_with("kcore-masked\n0\n"), "{text}");
    let sys_mount = text.lines().nth(2).unwrap_or_default();
    assert!(sys_mount.contains(" /proc/sys ro,"), "{text}");
}

#[test]
fn capabilities_are_dropped() {
    let bundle = Bundle::new();
    bundle.write(&config(&["grep", "^Cap", "/proc/self/status"]));
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // CAP_CHOWN (0), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    let expected = "0000000000000421";
    let text = stdout(&out);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(text.contains(&format!("{set}:\t{expected}")), "{set} in {text}");
    }
    assert!(text.contains("CapInh:\t0000000000000000"), "{text}");
}

#[test]
fn seccomp_denies_with_errno() {
    let bundle = Bundle::new();
    let mut cfg = config(&["sh", "-c", "mkdir /tmp/denied; echo rc=$?"]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat", "not_a_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    });
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "rc=1\n");
    assert!(stderr(&out).contains("Function not implemented"), "{}", stderr(&out));
}

#[test]
fn bind_mounts_ro_and_rw() {
    let bundle = Bundle::new();
    let host = tempfile::tempdir().unwrap();
    let (ro, rw) = (host.path().join("ro"), host.path().join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("f"), "from-host\n").unwrap();
    let mut cfg = config(&["sh", "-c", "cat /data/ro/f; echo x > /data/ro/g; echo y > /data/rw/g; cat /etc/hostfile"]);
    let hostfile = host.path().join("hostfile");
    std::fs::write(&hostfile, "single-file\n").unwrap();
    let mounts = cfg["mounts"].as_array_mut().unwrap();
    mounts
        .push(json!({"destination": "/data/ro", "type": "bind", "source": ro, "options": ["rbind", "ro", "rprivate"]}));
    mounts.push(json!({"destination": "/data/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]}));
    mounts
        .push(json!({"destination": "/etc/hostfile", "type": "bind", "source": hostfile, "options": ["bind", "rro"]}));
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert_eq!(stdout(&out), "from-host\nsingle-file\n", "{}", stderr(&out));
    assert!(stderr(&out).contains("Read-only file system"), "{}", stderr(&out));
    assert!(!ro.join("g").exists());
    assert_eq!(std::fs::read_to_string(rw.join("g")).unwrap(), "y\n");
}

/// A named netns with a veth pair, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let name = format!("cricket-exec-test-{}", std::process::id());
        let ns = NetNs(name.clone());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        let ok = Command::new("ip")
            .args(["-n", &name, "link", "add", "crkt0", "type", "veth", "peer", "name", "crkt1"])
            .status()
            .unwrap();
        assert!(ok.success());
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn joins_an_existing_network_namespace() {
    let netns = NetNs::new();
    let bundle = Bundle::new();
    let mut cfg = config(&["cat", "/proc/net/dev"]);
    cfg["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": format!("/var/run/netns/{}", netns.0)}
    ]);
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("crkt0:"), "{}", stdout(&out));
}

/// A pids cgroup (v1) or a v2 cgroup, removed on drop. Named per test: tests
/// run in parallel, and one's drop must not remove the other's cgroup.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(test: &str) -> TestCgroup {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 { Path::new("/sys/fs/cgroup") } else { Path::new("/sys/fs/cgroup/pids") };
        let dir = base.join(format!("cricket-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn joins_the_given_cgroup() {
    let cgroup = TestCgroup::new("joins");
    let bundle = Bundle::new();
    bundle.write(&config(&["sleep", "30"]));
    let bg = Background::start(&bundle, &["--cgroup", cgroup.0.to_str().unwrap()]);
    let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == bg.init.to_string()), "{} not in {procs:?}", bg.init);
    assert_eq!(bg.stop(), 137);
}

#[test]
fn missing_binary_is_a_clear_error() {
    let bundle = Bundle::new();
    bundle.write(&config(&["/bin/nope"]));
    let out = run(&bundle, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exec \"/bin/nope\": No such file or directory"), "{}", stderr(&out));
    bundle.write(&config(&["nope"]));
    let out = run(&bundle, &[]);
    assert!(stderr(&out).contains("exec \"nope\": executable file not found in $PATH"), "{}", stderr(&out));
}

#[test]
fn missing_cwd_is_a_clear_error() {
    let bundle = Bundle::new();
    let mut cfg = config(&["sh"]);
    cfg["process"]["cwd"] = json!("/no/such/dir");
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("chdir to cwd \"/no/such/dir\""), "{}", stderr(&out));
}

fn exec_in(bg: &Background, bundle: &Bundle, args: &[&str]) -> Output {
    let process = json!({
        "args": args, "cwd": "/tmp", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS},
        "noNewPrivileges": true
    });
    let file = bundle.path().join(format!("process-{}.json", args.join("-").len()));
    std::fs::write(&file, process.to_string()).unwrap();
    exec_command(bg, bundle, &file).output().unwrap()
}

/// `cricket exec` of the process file into the background container.
fn exec_command(bg: &Background, bundle: &Bundle, process: &Path) -> std::process::Command {
    let mut cmd = cricket();
    cmd.arg("exec")
        .arg("--pid")
        .arg(bg.init.to_string())
        .arg("--bundle")
        .arg(bundle.path())
        .arg("--process")
        .arg(process)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn exec_into_a_running_container() {
    let bundle = Bundle::new();
    bundle.write(&config(&["sleep", "30"]));
    let bg = Background::start(&bundle, &[]);
    let out =
        exec_in(&bg, &bundle, &["sh", "-c", "echo $$; cat /proc/1/cmdline; echo; cat /marker; hostname; pwd; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines[0].parse().unwrap();
    assert!(pid > 1 && pid < 100, "not in the container's pid namespace: {pid}");
    assert_eq!(lines[1], "sleep\u{0}30\u{0}");
    assert_eq!(&lines[2..], ["rootfs", "cricket-test", "/tmp"]);

    let out = exec_in(&bg, &bundle, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("executable file not found in $PATH"), "{}", stderr(&out));

    let out = exec_in(&bg, &bundle, &["grep", "CapEff", "/proc/self/status"]);
    assert_eq!(stdout(&out), "CapEff:\t0000000000000421\n", "{}", stderr(&out));
    assert_eq!(bg.stop(), 137);
}

#[test]
fn user_namespace_with_id_maps() {
    let bundle = Bundle::new();
    // The mapped root must be able to reach the rootfs.
    std::fs::set_permissions(bundle.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cfg = config(&["sh", "-c", "cat /proc/self/uid_map; id; echo > /dev/null && echo devnull-ok"]);
    cfg["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    cfg["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    cfg["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let map: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"]);
    assert!(text.contains("uid=0 gid=0"), "{text}");
    assert!(text.contains("devnull-ok"), "{text}");
}

#[test]
fn setup_errors_name_the_step() {
    let bundle = Bundle::new();
    let mut cfg = config(&["true"]);
    cfg["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/cricket-source", "options": ["rbind"]
    }));
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("mount /data: source /nonexistent/cricket-source: No such file or directory"), "{err}");
}

#[test]
fn unprivileged_limits_are_warnings() {
    let bundle = Bundle::new();
    let mut cfg = config(&["cat", "/proc/self/oom_score_adj"]);
    cfg["process"]["oomScoreAdj"] = json!(-1000);
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Either this host lets root lower it, or the init warned and went on.
    let applied = stdout(&out).trim() == "-1000";
    assert!(applied || stderr(&out).contains("warning: oom_score_adj -1000 not set"), "{}", stderr(&out));
}

/// A pty pair: (controller, replica), close-on-exec, so that commands other
/// tests start meanwhile don't hold the replica open.
fn openpty() -> (std::fs::File, std::fs::File) {
    let (mut controller, mut replica) = (0, 0);
    let rc = unsafe {
        libc::openpty(&mut controller, &mut replica, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0);
    for fd in [controller, replica] {
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }, 0);
    }
    use std::os::fd::FromRawFd;
    unsafe { (std::fs::File::from_raw_fd(controller), std::fs::File::from_raw_fd(replica)) }
}

#[test]
fn terminal_gets_a_controlling_tty_and_console() {
    let bundle = Bundle::new();
    // Run as a user, who must be able to reopen its terminal by name.
    let script = "test -t 0 && echo is-a-tty; test -c /dev/console && echo console; echo $$; tty; \
                  echo reopened > \"$(tty)\"";
    let mut cfg = config(&["sh", "-c", script]);
    cfg["process"]["terminal"] = json!(true);
    cfg["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    bundle.write(&cfg);
    let (controller, replica) = openpty();
    let status = cricket()
        .arg("run")
        .arg("--bundle")
        .arg(bundle.path())
        .stdin(replica.try_clone().unwrap())
        .stdout(replica.try_clone().unwrap())
        .stderr(replica)
        .status()
        .unwrap();
    assert!(status.success());
    // Everything written, up to EIO once no replica is left open.
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &controller, &mut buf);
    let text = String::from_utf8_lossy(&buf).replace('\r', "");
    // The pty lives in the container's own devpts, so tty(1) can name it.
    assert_eq!(text, "is-a-tty\nconsole\n1\n/dev/pts/0\nreopened\n");
}

#[test]
fn exec_joins_the_containers_cgroup() {
    let cgroup = TestCgroup::new("exec-joins");
    let bundle = Bundle::new();
    bundle.write(&config(&["sleep", "30"]));
    let bg = Background::start(&bundle, &["--cgroup", cgroup.0.to_str().unwrap()]);
    // Inside the container's cgroup namespace, its own cgroup is the root.
    let out = exec_in(&bg, &bundle, &["grep", ":pids:", "/proc/self/cgroup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(stdout(&out).trim().ends_with(":pids:/"), "{}", stdout(&out));
    }
    assert_eq!(bg.stop(), 137);
}

#[test]
fn scheduling_io_priority_sysctls_and_fds() {
    let bundle = Bundle::new();
    let mut cfg = config(&[
        "sh",
        "-c",
        "grep -E '^(policy|prio) ' /proc/self/sched; ionice -p $$; cat /proc/sys/net/ipv4/ip_forward; ls /proc/self/fd",
    ]);
    cfg["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5});
    cfg["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    cfg["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    bundle.write(&cfg);
    let out = run(&bundle, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<String> = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(lines[0], "policy : 3", "{text}");
    assert_eq!(lines[1], "prio : 125", "{text}");
    assert!(lines[2].starts_with("idle"), "{text}");
    assert_eq!(lines[3], "1", "{text}");
    // ls's own directory fd is 3: nothing of the monitor leaked in.
    assert_eq!(&lines[4..], ["0", "1", "2", "3"], "{text}");
}

#[test]
fn exec_applies_seccomp_and_forwards_signals() {
    let bundle = Bundle::new();
    let mut cfg = config(&["sleep", "30"]);
    cfg["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    });
    bundle.write(&cfg);
    let bg = Background::start(&bundle, &[]);
    let out = exec_in(&bg, &bundle, &["mkdir", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Function not implemented"), "{}", stderr(&out));

    let process = json!({"args": ["sleep", "30"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let file = bundle.path().join("sleep.json");
    std::fs::write(&file, process.to_string()).unwrap();
    let mut helper = exec_command(&bg, &bundle, &file).spawn().unwrap();
    // Signal only once the helper's child runs the workload.
    let children = format!("/proc/{0}/task/{0}/children", helper.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&children)
        .unwrap_or_default()
        .split_whitespace()
        .any(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("busybox")))
    {
        assert!(Instant::now() < deadline, "exec'd process did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(helper.id() as i32, libc::SIGTERM) };
    let status = helper.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(bg.stop(), 137);
}
