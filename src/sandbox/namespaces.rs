//! Pod namespaces without an infra container: a short-lived helper process
//! (`cricket pin-namespaces`) unshares net/ipc/uts, configures them and
//! bind-mounts them onto files; for a shared PID namespace it then forks the
//! pod's init, which reaps zombies for the pod's life. This runs in its own
//! single-threaded process, never between fork and exec in the daemon.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, setsid, ForkResult, Pid};

const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
}

impl NsKind {
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    fn parse(s: &str) -> Result<NsKind, String> {
        match s {
            "net" => Ok(NsKind::Net),
            "ipc" => Ok(NsKind::Ipc),
            "uts" => Ok(NsKind::Uts),
            other => Err(format!("unknown namespace kind {other:?}")),
        }
    }
}

/// What the pin helper is asked to do; passed on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// Directory receiving one file per pinned namespace (named net, ipc, uts).
    #[arg(long)]
    pub dir: PathBuf,
    /// Namespaces to create: net, ipc, uts.
    #[arg(long = "ns", value_parser = NsKind::parse)]
    pub kinds: Vec<NsKind>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// key=value, applied inside the new namespaces.
    #[arg(long = "sysctl")]
    pub sysctls: Vec<String>,
    /// Also create a PID namespace with an init; its host PID is printed.
    #[arg(long)]
    pub pod_init: bool,
    /// Cgroup directories the init is born in (one per v1 hierarchy).
    #[arg(long = "cgroup")]
    pub cgroups: Vec<PathBuf>,
}

/// Runs in the helper process: create, configure, pin.
pub fn pin_main(args: &PinArgs) -> Result<(), String> {
    let flags = args.kinds.iter().fold(CloneFlags::empty(), |f, k| f | k.flag());
    unshare(flags).map_err(|e| format!("unshare({:?}): {e}", args.kinds))?;
    if let (true, Some(name)) = (args.kinds.contains(&NsKind::Uts), &args.hostname) {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname({name:?}): {e}"))?;
    }
    if args.kinds.contains(&NsKind::Net) {
        loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    }
    for kv in &args.sysctls {
        let (key, value) = kv.split_once('=').ok_or_else(|| format!("sysctl {kv:?} is not key=value"))?;
        let path = sysctl_path(key);
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value} ({}): {e}", path.display()))?;
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    for kind in &args.kinds {
        let target = args.dir.join(kind.name());
        File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        let source = format!("/proc/self/ns/{}", kind.name());
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("pinning {source} at {}: {e}", target.display()))?;
    }
    if args.pod_init {
        // Moving ourselves is cheap (see runtime::linux::cgroups::join); the init inherits it.
        crate::runtime::linux::cgroups::join(&args.cgroups).map_err(|e| e.to_string())?;
        start_init()?;
    }
    Ok(())
}

/// `net.ipv4.ip_forward` and `net/ipv4/conf/eth0.1/forwarding` both name files under /proc/sys.
pub fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    Path::new("/proc/sys").join(rel)
}

fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket + ioctl on a zeroed ifreq that names "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if rc < 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Runs the pin helper and waits for it; called from the daemon. Returns
/// the init's PID when one was asked for.
pub async fn pin(args: &PinArgs) -> Result<Option<i32>, String> {
    let mut cmd = helper("pin-namespaces");
    cmd.arg("--dir").arg(&args.dir);
    for k in &args.kinds {
        cmd.arg("--ns").arg(k.name());
    }
    if let Some(h) = &args.hostname {
        cmd.arg("--hostname").arg(h);
    }
    for s in &args.sysctls {
        cmd.arg("--sysctl").arg(s);
    }
    if args.pod_init {
        cmd.arg("--pod-init");
    }
    for dir in &args.cgroups {
        cmd.arg("--cgroup").arg(dir);
    }
    let out = run_helper(cmd, "pin-namespaces").await?;
    if !args.pod_init {
        return Ok(None);
    }
    out.trim().parse().map(Some).map_err(|_| format!("pin-namespaces printed {out:?}, not the init's PID"))
}

fn helper(mode: &str) -> tokio::process::Command {
    let mut cmd = helper_command();
    cmd.arg(mode).kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd
}

/// Waits for a helper; its stdout on success, its stderr as the error.
async fn run_helper(mut cmd: tokio::process::Command, what: &str) -> Result<String, String> {
    let out = tokio::time::timeout(HELPER_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("{what} timed out after {}s", HELPER_TIMEOUT.as_secs()))?
        .map_err(|e| format!("starting {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unmounts and deletes a pinned namespace file; missing is fine.
pub fn unpin(file: &Path) -> std::io::Result<()> {
    match umount2(file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(std::io::Error::from(e)),
    }
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// True when `file` is a pinned namespace (an nsfs bind mount).
pub fn is_pinned(file: &Path) -> bool {
    nix::sys::statfs::statfs(file).is_ok_and(|s| s.filesystem_type().0 as u64 == 0x6e73_6673)
}

/// Makes a PID namespace and forks its init, which reaps zombies until
/// killed; prints the init's host PID.
fn start_init() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(pid): {e}"))?;
    // SAFETY: this helper is single-threaded; the child only makes syscalls.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            let mut out = std::io::stdout();
            writeln!(out, "{child}").and_then(|_| out.flush()).map_err(|e| e.to_string())
        }
        ForkResult::Child => {
            let _ = setsid();
            let _ = nix::sys::prctl::set_name(c"pod-init");
            crate::resident::shed_startup_pages();
            if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                for fd in 0..3 {
                    let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                }
            }
            reap_forever()
        }
    }
}

fn reap_forever() -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = set.thread_block();
    loop {
        let _ = set.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Process start time (clock ticks since boot), to tell a live PID from a reused one.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// True while `pid` is the process that started at `start` and is not a zombie.
pub fn is_running(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|(state, s)| s == start && state != 'Z')
}

/// State letter and start time from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// A command running this same binary in a helper mode. Through
/// /proc/self/exe, so helpers match the running daemon even after its file
/// was replaced (a package upgrade) or removed; `ps` shows them as `cricket`.
pub fn helper_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("cricket");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), Path::new("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.1/forwarding"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.1/forwarding")
        );
    }

    #[test]
    fn own_start_time_is_known() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_running(me, start));
        assert!(!is_running(me, start + 1));
        assert!(start_time(i32::MAX).is_none());
    }
}
