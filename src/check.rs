//! `cricket check`: preflight checks of the host against the configuration,
//! one line per check, and an exit status of 1 when something needed is missing.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cgroup::{self, CgroupDriver, Version};
use crate::config::{CniConfig, Config, HandlerKind, RuntimeHandler};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const SYSTEMD_MARKER: &str = "/run/systemd/system";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub message: String,
}

impl Check {
    fn new(name: impl Into<String>, level: Level, message: impl Into<String>) -> Check {
        Check { name: name.into(), level, message: message.into() }
    }
    fn ok(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Level::Ok, message)
    }
    fn warn(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Level::Warn, message)
    }
    fn fail(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Level::Fail, message)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag:<6}{}: {}", self.name, self.message)
    }
}

/// Runs every check, prints the report, and returns 0 without failures, 1 with.
pub fn main(config: &Config) -> ExitCode {
    let checks = run(config);
    print!("{}", report(&checks));
    exit_code(&checks)
}

pub fn run(config: &Config) -> Vec<Check> {
    let is_root = nix::unistd::geteuid().is_root();
    let mut checks = vec![root_check(is_root)];
    checks.push(overlay_listed(&std::fs::read_to_string("/proc/filesystems").unwrap_or_default()));
    checks.push(overlay_probe(&config.root, is_root));
    checks.extend(cgroup_checks(config.cgroup.driver));
    checks.push(driver_check(config.cgroup.driver, Path::new(SYSTEMD_MARKER).is_dir()));
    checks.push(seccomp_check(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok().as_deref(),
    ));
    checks.push(namespaces_check(Path::new("/proc/self/ns")));
    checks.push(userns_check(std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok().as_deref()));
    checks.extend(cni_checks(&config.cni));
    checks.push(iptables_check(std::env::var_os("PATH").as_deref().map(Path::new)));
    checks.extend(config.runtimes.iter().map(|(name, handler)| handler_check(name, handler)));
    checks.extend(socket_checks(&config.socket));
    checks.push(dir_check("root dir", &config.root));
    checks.push(dir_check("run dir", &config.run));
    checks.extend(root_fs_checks(&config.root, is_root));
    checks
}

/// One line per check, then `N ok, M warnings, K failures`.
pub fn report(checks: &[Check]) -> String {
    let mut out: String = checks.iter().map(|c| format!("{c}\n")).collect();
    out.push_str(&summary(checks));
    out.push('\n');
    out
}

pub fn summary(checks: &[Check]) -> String {
    let count = |level| checks.iter().filter(|c| c.level == level).count();
    let plural = |n: usize, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
    format!(
        "{} ok, {}, {}",
        count(Level::Ok),
        plural(count(Level::Warn), "warning"),
        plural(count(Level::Fail), "failure")
    )
}

pub fn exit_code(checks: &[Check]) -> ExitCode {
    if failed(checks) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

fn root_check(is_root: bool) -> Check {
    if is_root {
        Check::ok("root", "running as root")
    } else {
        Check::fail("root", "not running as root; cricket needs root (mounts, namespaces, cgroups)")
    }
}

fn overlay_listed(filesystems: &str) -> Check {
    if filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        Check::ok("overlay module", "overlay is in /proc/filesystems")
    } else {
        Check::fail("overlay module", "overlay is not in /proc/filesystems; load it with `modprobe overlay`")
    }
}

/// Mounts an overlay with one lower, upper and work dir under `root` (or /tmp
/// when `root` doesn't exist yet), reads through it and unmounts it.
fn overlay_probe(root: &Path, is_root: bool) -> Check {
    const NAME: &str = "overlayfs";
    if !is_root {
        return Check::warn(NAME, "test mount skipped: needs root");
    }
    let base = if root.is_dir() { root } else { Path::new("/tmp") };
    let probe = match ProbeDir::new(base) {
        Ok(p) => p,
        Err(e) => return Check::fail(NAME, format!("cannot create a test dir in {}: {e}", base.display())),
    };
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.path.join(d));
    for d in &dirs {
        if let Err(e) = std::fs::create_dir(d) {
            return Check::fail(NAME, format!("cannot create {}: {e}", d.display()));
        }
    }
    if let Err(e) = std::fs::write(dirs[0].join("file"), b"cricket") {
        return Check::fail(NAME, format!("cannot write in {}: {e}", dirs[0].display()));
    }
    let options =
        format!("lowerdir={},upperdir={},workdir={}", dirs[0].display(), dirs[1].display(), dirs[2].display());
    let merged = &dirs[3];
    let mounted = nix::mount::mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    );
    if let Err(e) = mounted {
        return Check::fail(
            NAME,
            format!(
                "cannot mount a test overlay in {}: {e} (`modprobe overlay`; is the dir itself on overlayfs?)",
                base.display()
            ),
        );
    }
    let read = std::fs::read(merged.join("file"));
    let unmounted = nix::mount::umount2(merged.as_path(), nix::mount::MntFlags::MNT_DETACH);
    match (read, unmounted) {
        (_, Err(e)) => Check::fail(NAME, format!("cannot unmount the test overlay {}: {e}", merged.display())),
        (Ok(data), Ok(())) if data == b"cricket" => Check::ok(NAME, "mounted and unmounted a test overlay"),
        (Ok(_), Ok(())) => Check::fail(NAME, "the test overlay shows the wrong content for a lower file"),
        (Err(e), Ok(())) => Check::fail(NAME, format!("cannot read through the test overlay: {e}")),
    }
}

fn cgroup_checks(driver: CgroupDriver) -> Vec<Check> {
    let manager = match cgroup::Manager::new(driver, Path::new(CGROUP_ROOT)) {
        Ok(m) => m,
        Err(e) => return vec![Check::fail("cgroups", e.to_string())],
    };
    let (version, available): (Version, Vec<String>) = match manager.version() {
        Version::V1 => (Version::V1, manager.hierarchies().iter().flat_map(|h| h.controllers.clone()).collect()),
        Version::V2 => {
            let path = Path::new(CGROUP_ROOT).join("cgroup.controllers");
            match std::fs::read_to_string(&path) {
                Ok(s) => (Version::V2, s.split_whitespace().map(str::to_string).collect()),
                Err(e) => return vec![Check::fail("cgroups", format!("v2, but cannot read {}: {e}", path.display()))],
            }
        }
    };
    let described = match version {
        Version::V1 => format!("v1 ({} hierarchies under {CGROUP_ROOT})", manager.hierarchies().len()),
        Version::V2 => format!("v2 (unified, {CGROUP_ROOT})"),
    };
    let mut checks = vec![Check::ok("cgroups", described)];
    let available: Vec<&str> = available.iter().map(String::as_str).collect();
    checks.extend(controller_checks(version, &available));
    checks
}

/// Required controllers fail when missing; optional ones warn with what is lost.
fn controller_checks(version: Version, available: &[&str]) -> Vec<Check> {
    let (required, optional): (&[&str], &[(&str, &str)]) = match version {
        Version::V1 => (
            &["cpu", "cpuacct", "memory", "pids"],
            &[
                ("cpuset", "CPU pinning"),
                ("hugetlb", "hugepage limits"),
                ("freezer", "pausing containers"),
                ("devices", "device access rules"),
                ("blkio", "block I/O limits and stats"),
            ],
        ),
        Version::V2 => (
            &["cpu", "memory", "pids"],
            &[("cpuset", "CPU pinning"), ("hugetlb", "hugepage limits"), ("io", "block I/O limits and stats")],
        ),
    };
    let missing: Vec<&str> = required.iter().copied().filter(|c| !available.contains(c)).collect();
    let mut checks = vec![if missing.is_empty() {
        Check::ok("cgroup controllers", required.join(", "))
    } else {
        Check::fail("cgroup controllers", format!("missing {} (needed for pod limits and stats)", missing.join(", ")))
    }];
    let lost: Vec<String> =
        optional.iter().filter(|(c, _)| !available.contains(c)).map(|(c, what)| format!("{c} ({what})")).collect();
    checks.push(if lost.is_empty() {
        Check::ok("optional controllers", optional.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "))
    } else {
        Check::warn("optional controllers", format!("missing {}", lost.join(", ")))
    });
    checks
}

/// The configured driver against the host: systemd needs systemd running; cgroupfs
/// on a systemd host works, but kubelet must be told (kubeadm configures systemd).
fn driver_check(driver: CgroupDriver, systemd_running: bool) -> Check {
    const NAME: &str = "cgroup driver";
    match (driver, systemd_running) {
        (CgroupDriver::Systemd, true) => Check::ok(NAME, "\"systemd\", and systemd is running; kubelet must use systemd too"),
        (CgroupDriver::Systemd, false) => Check::fail(
            NAME,
            format!("\"systemd\" needs systemd (no {SYSTEMD_MARKER}); set [cgroup] driver = \"cgroupfs\""),
        ),
        (CgroupDriver::Cgroupfs, true) => Check::warn(
            NAME,
            "\"cgroupfs\" on a systemd host: kubelet must also use cgroupDriver: cgroupfs (kubeadm's default is systemd), \
             or set [cgroup] driver = \"systemd\"",
        ),
        (CgroupDriver::Cgroupfs, false) => Check::ok(NAME, "\"cgroupfs\" (no systemd here); kubelet must use cgroupfs too"),
    }
}

/// `status` is /proc/self/status; `actions` /proc/sys/kernel/seccomp/actions_avail when present.
fn seccomp_check(status: &str, actions: Option<&str>) -> Check {
    const NAME: &str = "seccomp";
    if !status.lines().any(|l| l.starts_with("Seccomp:")) {
        return Check::fail(NAME, "the kernel has no seccomp (CONFIG_SECCOMP); RuntimeDefault profiles cannot apply");
    }
    let Some(actions) = actions else {
        return Check::warn(
            NAME,
            "supported, but filter support is unconfirmed (no /proc/sys/kernel/seccomp/actions_avail)",
        );
    };
    let actions: Vec<&str> = actions.split_whitespace().collect();
    let missing: Vec<&str> = ["allow", "errno"].into_iter().filter(|a| !actions.contains(a)).collect();
    if missing.is_empty() {
        Check::ok(NAME, format!("supported (filter actions: {})", actions.join(" ")))
    } else {
        Check::fail(
            NAME,
            format!("filter actions {} are missing; RuntimeDefault profiles need them", missing.join(", ")),
        )
    }
}

/// `dir` is /proc/self/ns.
fn namespaces_check(dir: &Path) -> Check {
    const KINDS: [&str; 6] = ["net", "ipc", "uts", "pid", "mnt", "cgroup"];
    let missing: Vec<&str> = KINDS.into_iter().filter(|k| dir.join(k).symlink_metadata().is_err()).collect();
    if missing.is_empty() {
        Check::ok("namespaces", KINDS.join(", "))
    } else {
        Check::fail(
            "namespaces",
            format!("the kernel lacks {} namespaces (no {}/…)", missing.join(", "), dir.display()),
        )
    }
}

/// `max` is /proc/sys/user/max_user_namespaces.
fn userns_check(max: Option<&str>) -> Check {
    const NAME: &str = "user namespaces";
    match max.map(|s| s.trim().parse::<u64>()) {
        Some(Ok(n)) if n > 0 => Check::ok(NAME, format!("available (max_user_namespaces = {n})")),
        Some(Ok(_)) => Check::warn(NAME, "disabled (max_user_namespaces = 0); pods with user namespaces cannot run"),
        _ => Check::warn(
            NAME,
            "not available (no /proc/sys/user/max_user_namespaces); pods with user namespaces cannot run",
        ),
    }
}

fn cni_checks(cni: &CniConfig) -> Vec<Check> {
    let network = match crate::network::find_network(cni) {
        Ok((file, name)) => Check::ok("cni", format!("network {name:?} from {}", file.display())),
        Err(why) => Check::warn("cni", format!("{why} (pods wait for NetworkReady)")),
    };
    let (present, absent): (Vec<&PathBuf>, Vec<&PathBuf>) = cni.bin_dirs.iter().partition(|d| d.is_dir());
    let show = |dirs: &[&PathBuf]| dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let plugins = if present.is_empty() {
        Check::warn("cni plugins", format!("none of the plugin dirs exists ({})", show(&absent)))
    } else if absent.is_empty() {
        Check::ok("cni plugins", show(&present))
    } else {
        Check::ok("cni plugins", format!("{} ({} absent)", show(&present), show(&absent)))
    };
    vec![network, plugins]
}

/// Looks in `path` (PATH) and the sbin dirs, which a non-login PATH may lack.
fn iptables_check(path: Option<&Path>) -> Check {
    let mut dirs: Vec<PathBuf> = path.map(|p| std::env::split_paths(p.as_os_str()).collect()).unwrap_or_default();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    match dirs.iter().map(|d| d.join("iptables")).find(|p| executable(p).is_ok()) {
        Some(p) => Check::ok("iptables", p.display().to_string()),
        None => Check::warn("iptables", "not found; the bridge and portmap CNI plugins need it"),
    }
}

fn handler_check(name: &str, handler: &RuntimeHandler) -> Check {
    let check = format!("handler {name:?}");
    match (handler.kind, &handler.path) {
        (HandlerKind::Linux, _) => Check::ok(check, "linux (built in)"),
        (HandlerKind::Oci, None) => Check::fail(check, "type \"oci\" needs `path`"),
        (HandlerKind::Oci, Some(path)) => match executable(path) {
            Ok(()) => Check::ok(check, format!("oci runtime {}", path.display())),
            Err(why) => Check::fail(check, format!("oci runtime {} {why}", path.display())),
        },
        (HandlerKind::Wasm, _) if cfg!(feature = "wasm") => Check::ok(
            check,
            "wasm (built in: WASI preview1 modules, preview 2 components; other entrypoints run as linux)",
        ),
        (HandlerKind::Wasm, _) => Check::fail(
            check,
            format!(
                "type \"wasm\" is not built into this cricket binary; remove [runtimes.{name}] from the configuration"
            ),
        ),
    }
}

/// Ok for an existing regular file with an execute bit; otherwise why not.
fn executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".into()),
        Err(e) => Err(format!("cannot be read: {e}")),
        Ok(m) if !m.is_file() => Err("is not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("is not executable".into()),
        Ok(_) => Ok(()),
    }
}

fn socket_checks(socket: &Path) -> Vec<Check> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let dir_check = dir_check("socket dir", dir);
    let serving = if !socket.exists() {
        Check::ok("socket", format!("{} is free", socket.display()))
    } else if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        Check::warn("socket", format!("a daemon is already serving on {}", socket.display()))
    } else {
        Check::ok("socket", format!("{} is stale; serve replaces it", socket.display()))
    };
    vec![dir_check, serving]
}

/// A dir cricket writes: writable if it exists, else creatable under its nearest existing ancestor.
fn dir_check(name: &str, dir: &Path) -> Check {
    if dir.is_dir() {
        return match ProbeDir::new(dir) {
            Ok(_) => Check::ok(name, format!("{} is writable", dir.display())),
            Err(e) => Check::fail(name, format!("{} is not writable: {e}", dir.display())),
        };
    }
    if dir.exists() {
        return Check::fail(name, format!("{} exists but is not a directory", dir.display()));
    }
    let ancestor = existing_ancestor(dir);
    match nix::unistd::access(ancestor, nix::unistd::AccessFlags::W_OK) {
        Ok(()) => Check::ok(name, format!("{} will be created (in writable {})", dir.display(), ancestor.display())),
        Err(e) => {
            Check::fail(name, format!("cannot create {}: {} is not writable ({e})", dir.display(), ancestor.display()))
        }
    }
}

fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|p| p.is_dir()).unwrap_or(Path::new("/"))
}

/// d_type and trusted.* xattrs on the filesystem of `root` (its nearest existing
/// ancestor until it is created): overlay needs both for whiteouts and opaque dirs.
fn root_fs_checks(root: &Path, is_root: bool) -> Vec<Check> {
    let base = existing_ancestor(root);
    let probe = match ProbeDir::new(base) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot create a test dir in {}: {e}", base.display());
            return vec![Check::fail("root d_type", why.clone()), Check::fail("root xattrs", why)];
        }
    };
    let d_type = match dirent_type_known(&probe.path) {
        Ok(true) => Check::ok("root d_type", format!("the filesystem of {} reports file types", base.display())),
        Ok(false) => Check::fail(
            "root d_type",
            format!(
                "the filesystem of {} does not report d_type (xfs with ftype=0?); overlay needs it",
                base.display()
            ),
        ),
        Err(e) => Check::fail("root d_type", format!("cannot list {}: {e}", probe.path.display())),
    };
    let xattrs = if !is_root {
        Check::warn("root xattrs", "trusted.* xattr test skipped: needs root")
    } else {
        match set_xattr(&probe.path, "trusted.overlay.opaque", b"y") {
            Ok(()) => Check::ok("root xattrs", format!("the filesystem of {} takes trusted.* xattrs", base.display())),
            Err(e) => Check::fail(
                "root xattrs",
                format!(
                    "cannot set trusted.overlay.opaque in {}: {e}; overlay whiteouts need trusted.* xattrs",
                    base.display()
                ),
            ),
        }
    };
    vec![d_type, xattrs]
}

/// Creates a regular file in `dir` and reads it back through readdir: false when
/// the filesystem leaves d_type DT_UNKNOWN.
fn dirent_type_known(dir: &Path) -> std::io::Result<bool> {
    std::fs::write(dir.join("f"), b"")?;
    let c = cstring(dir)?;
    // SAFETY: opendir/readdir/closedir on a stream this function owns; entries
    // are read before the next readdir call and the stream is closed once.
    unsafe {
        let stream = libc::opendir(c.as_ptr());
        if stream.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let mut known = None;
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            if name.to_bytes() == b"f" {
                known = Some((*entry).d_type == libc::DT_REG);
                break;
            }
        }
        libc::closedir(stream);
        known.ok_or_else(|| std::io::Error::other("the test file is not listed"))
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = cstring(path)?;
    let n = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// A scratch dir `.cricket-check-*` in a given dir, removed on drop.
struct ProbeDir {
    path: PathBuf,
}

impl ProbeDir {
    fn new(base: &Path) -> std::io::Result<ProbeDir> {
        let path = base.join(format!(".cricket-check-{}-{:x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&path)?;
        Ok(ProbeDir { path })
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(checks: &[Check]) -> Vec<Level> {
        checks.iter().map(|c| c.level).collect()
    }

    fn scratch() -> ProbeDir {
        ProbeDir::new(&std::env::temp_dir()).unwrap()
    }

    #[test]
    fn lines_are_aligned_and_summary_counts_levels() {
        let checks = vec![
            Check::ok("overlayfs", "mounted and unmounted a test overlay"),
            Check::warn("cni", "no network (pods wait for NetworkReady)"),
            Check::fail("cgroup driver", "nope"),
            Check::ok("root", "running as root"),
        ];
        assert_eq!(
            report(&checks),
            "ok    overlayfs: mounted and unmounted a test overlay\n\
             warn  cni: no network (pods wait for NetworkReady)\n\
             FAIL  cgroup driver: nope\n\
             ok    root: running as root\n\
             2 ok, 1 warning, 1 failure\n"
        );
        assert_eq!(summary(&[]), "0 ok, 0 warnings, 0 failures");
        assert_eq!(summary(&[Check::fail("a", ""), Check::fail("b", "")]), "0 ok, 0 warnings, 2 failures");
    }

    #[test]
    fn only_failures_fail() {
        let warn_only = [Check::ok("a", ""), Check::warn("b", "")];
        assert!(!failed(&warn_only));
        assert_eq!(exit_code(&warn_only), ExitCode::SUCCESS);
        let with_fail = [Check::ok("a", ""), Check::fail("b", ""), Check::warn("c", "")];
        assert!(failed(&with_fail));
        assert_eq!(exit_code(&with_fail), ExitCode::FAILURE);
    }

    #[test]
    fn handlers() {
        let d = scratch();
        let exe = d.path.join("runc");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = d.path.join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let oci = |p: &Path| RuntimeHandler { path: Some(p.to_path_buf()), ..RuntimeHandler::new(HandlerKind::Oci) };

        let c = handler_check("runc", &oci(&exe));
        assert_eq!(c.level, Level::Ok, "{c}");
        let c = handler_check("bad", &oci(&plain));
        assert_eq!(c.level, Level::Fail);
        assert!(c.to_string().contains("handler \"bad\"") && c.message.contains("is not executable"), "{c}");
        let c = handler_check("gone", &oci(Path::new("/nonexistent/runc")));
        assert_eq!(c.level, Level::Fail);
        assert!(c.message.contains("/nonexistent/runc does not exist"), "{c}");
        let c = handler_check("dir", &oci(&d.path));
        assert!(c.level == Level::Fail && c.message.contains("is not a file"), "{c}");

        assert_eq!(handler_check("default", &RuntimeHandler::new(HandlerKind::Linux)).level, Level::Ok);
        let c = handler_check("w", &RuntimeHandler::new(HandlerKind::Wasm));
        if cfg!(feature = "wasm") {
            assert!(c.level == Level::Ok && c.message.starts_with("wasm (built in"), "{c}");
        } else {
            assert!(
                c.level == Level::Fail && c.message.contains("not built into") && c.message.contains("[runtimes.w]")
            );
        }
    }

    #[test]
    fn driver_against_host() {
        assert_eq!(driver_check(CgroupDriver::Systemd, true).level, Level::Ok);
        let c = driver_check(CgroupDriver::Systemd, false);
        assert_eq!(c.level, Level::Fail);
        assert_eq!(
            c.to_string(),
            "FAIL  cgroup driver: \"systemd\" needs systemd (no /run/systemd/system); set [cgroup] driver = \"cgroupfs\""
        );
        let c = driver_check(CgroupDriver::Cgroupfs, true);
        assert!(c.level == Level::Warn && c.message.contains("kubelet must also use cgroupDriver: cgroupfs"), "{c}");
        assert_eq!(driver_check(CgroupDriver::Cgroupfs, false).level, Level::Ok);
    }

    #[test]
    fn controllers() {
        let v1_all = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "hugetlb"];
        assert_eq!(levels(&controller_checks(Version::V1, &v1_all)), [Level::Ok, Level::Ok]);
        let c = controller_checks(Version::V1, &["cpu", "cpuacct", "memory", "pids", "cpuset"]);
        assert_eq!(levels(&c), [Level::Ok, Level::Warn]);
        assert!(c[1].message.contains("hugetlb (hugepage limits)") && !c[1].message.contains("cpuset"), "{}", c[1]);
        let c = controller_checks(Version::V1, &["cpu", "memory"]);
        assert_eq!(c[0].level, Level::Fail);
        assert!(c[0].message.contains("missing cpuacct, pids"), "{}", c[0]);
        // v2 has no cpuacct controller: cpu accounts.
        let c = controller_checks(Version::V2, &["cpuset", "cpu", "io", "memory", "hugetlb", "pids"]);
        assert_eq!(levels(&c), [Level::Ok, Level::Ok]);
    }

    #[test]
    fn overlay_in_proc_filesystems() {
        assert_eq!(overlay_listed("nodev\tproc\n\text4\nnodev\toverlay\n").level, Level::Ok);
        let c = overlay_listed("nodev\tproc\n\text4\n");
        assert!(c.level == Level::Fail && c.message.contains("modprobe overlay"));
    }

    #[test]
    fn seccomp() {
        let status = "Name:\tx\nSeccomp:\t0\nSeccomp_filters:\t0\n";
        assert_eq!(seccomp_check(status, Some("kill_process kill_thread trap errno log allow\n")).level, Level::Ok);
        assert_eq!(seccomp_check(status, None).level, Level::Warn);
        assert_eq!(seccomp_check(status, Some("kill_thread trap\n")).level, Level::Fail);
        assert_eq!(seccomp_check("Name:\tx\n", None).level, Level::Fail);
    }

    #[test]
    fn namespaces_and_userns() {
        let d = scratch();
        for k in ["net", "ipc", "uts", "pid", "mnt"] {
            std::os::unix::fs::symlink("x:[1]", d.path.join(k)).unwrap();
        }
        let c = namespaces_check(&d.path);
        assert!(c.level == Level::Fail && c.message.contains("lacks cgroup namespaces"), "{c}");
        std::os::unix::fs::symlink("x:[1]", d.path.join("cgroup")).unwrap();
        assert_eq!(namespaces_check(&d.path).level, Level::Ok);

        assert_eq!(userns_check(Some("15000\n")).level, Level::Ok);
        assert_eq!(userns_check(Some("0\n")).level, Level::Warn);
        assert_eq!(userns_check(None).level, Level::Warn);
    }

    #[test]
    fn dirs_and_cni_plugin_dirs() {
        let d = scratch();
        assert_eq!(dir_check("root dir", &d.path).level, Level::Ok);
        let c = dir_check("root dir", &d.path.join("a/b"));
        assert!(c.level == Level::Ok && c.message.contains("will be created"), "{c}");
        let file = d.path.join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(dir_check("run dir", &file).level, Level::Fail);

        let conf_dir = d.path.join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        let cni = |bin_dirs: Vec<PathBuf>| CniConfig { conf_dir: conf_dir.clone(), bin_dirs, timeout_secs: 1 };
        let c = cni_checks(&cni(vec![d.path.clone(), d.path.join("nope")]));
        assert_eq!(levels(&c), [Level::Warn, Level::Ok]);
        assert!(c[0].message.ends_with("(pods wait for NetworkReady)"), "{}", c[0]);
        assert!(c[1].message.contains("nope absent"), "{}", c[1]);
        assert_eq!(cni_checks(&cni(vec![d.path.join("nope")]))[1].level, Level::Warn);
    }

    #[test]
    fn iptables_found_through_path() {
        let d = scratch();
        let exe = d.path.join("iptables");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = iptables_check(Some(&d.path));
        assert_eq!(c.message, exe.display().to_string());
    }
}
