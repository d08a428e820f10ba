//! Runs a built spec with runc: proves the spec is complete and valid, and
//! that namespaces, user, mounts and seccomp take effect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::tests::{image, Fixture};
use super::*;

const RUNC: &str = "/usr/sbin/runc";

/// A process holding fresh net/ipc/uts namespaces, standing in for the pod's pinned ones.
struct PodNamespacesHolder(Child);

impl PodNamespacesHolder {
    fn start() -> PodNamespacesHolder {
        let child = Command::new("unshare")
            .args(["--net", "--ipc", "--uts", "sleep", "300"])
            .spawn()
            .expect("spawning unshare");
        let holder = PodNamespacesHolder(child);
        let own = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let ns = holder.path("uts");
        for _ in 0..200 {
            if std::fs::read_link(&ns).is_ok_and(|l| l != own) {
                return holder;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("unshare did not enter new namespaces");
    }

    fn path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.0.id()))
    }
}

impl Drop for PodNamespacesHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the fixture's spec with runc in a fresh state dir and cgroup; returns stdout and stderr.
fn run(f: &Fixture) -> (String, String) {
    let id = format!(
        "cricket-oci-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    );
    let mut spec = f.build().unwrap().spec;
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
    let bundle = f.dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    spec.save(bundle.join("config.json")).unwrap();

    let state = f.dir.path().join("runc-state");
    let output = Command::new(RUNC)
        .arg("--root")
        .arg(&state)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new(RUNC).arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "runc failed: {:?}\nstdout: {stdout}\nstderr: {stderr}", output.status);
    (stdout, stderr)
}

fn busybox_rootfs(rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "hostname", "cat", "echo", "ls", "mount", "mkdir", "wc", "grep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
}

#[test]
fn runc_runs_the_spec() {
    if !Path::new(RUNC).exists() || !Path::new("/bin/busybox").exists() {
        panic!("this test needs {RUNC} and /bin/busybox");
    }
    let holder = PodNamespacesHolder::start();
    let mut f = Fixture::new();
    busybox_rootfs(&f.rootfs());
    std::fs::write(f.dir.path().join("pod/hostname"), "web-0\n").unwrap();
    std::fs::create_dir_all(f.dir.path().join("pod/shm")).unwrap();
    f.namespaces = PodNamespaces {
        network: Some(holder.path("net")),
        ipc: Some(holder.path("ipc")),
        uts: Some(holder.path("uts")),
        pid: PidNamespace::Container,
    };
    f.image = image(serde_json::json!({
        "User": "web",
        "Env": ["PATH=/bin"],
        "Volumes": {"/vol": {}},
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": [concat!(
            "id; hostname; cat /etc/hostname; echo pid=$$ host=$HOSTNAME; ls -d /vol; ",
            "wc -c < /proc/timer_list; echo x > /proc/sys/kernel/domainname || echo ro-proc-sys; ",
            "mount -t tmpfs none /mnt 2>/dev/null || echo no-mount; ",
            "grep -q '^Seccomp:.2' /proc/self/status && echo seccomp",
        )],
    }));
    let (stdout, stderr) = run(&f);
    // busybox's id lists groups in numeric order.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "uid=1000(web) gid=1001(web) groups=10(wheel),29(audio),1001(web)",
            "web-0",
            "web-0",
            "pid=1 host=web-0",
            "/vol",
            "0",
            "ro-proc-sys",
            "no-mount",
            "seccomp",
        ],
        "stderr: {stderr}"
    );
}

#[test]
fn runc_runs_a_privileged_spec() {
    let holder = PodNamespacesHolder::start();
    let mut f = Fixture::new();
    busybox_rootfs(&f.rootfs());
    std::fs::create_dir_all(f.dir.path().join("pod/shm")).unwrap();
    f.namespaces = PodNamespaces {
        network: Some(holder.path("net")),
        ipc: Some(holder.path("ipc")),
        uts: Some(holder.path("uts")),
        pid: PidNamespace::Container,
    };
    f.sc().privileged = true;
    f.config.command = ["/bin/sh", "-c"].map(String::from).to_vec();
    f.config.args = vec![concat!(
        "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted; ",
        "ls /dev/null /dev/tty > /dev/null && echo devices; grep -q '^sysfs /sys sysfs rw' /proc/mounts && echo sys-rw",
    )
    .to_string()];
    let (stdout, stderr) = run(&f);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec!["mounted", "devices", "sys-rw"], "stderr: {stderr}");
}
