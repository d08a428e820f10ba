//! The process half of container setup, shared by the container init and
//! `cricket exec`: limits, scheduling, AppArmor, user and groups,
//! capabilities, no_new_privileges, seccomp, cwd, and the exec itself.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, IOPriorityClass, LinuxSchedulerPolicy, LinuxSeccomp, Process};

use super::seccomp;
use super::step::{fail, Step, StepResult};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the workload couldn't be executed; `code` as a shell reports it.
#[derive(Debug)]
pub struct ExecFailure {
    pub code: i32,
    pub message: String,
}

/// A process ready to execve: everything resolved while the filesystem
/// and syscalls were still unrestricted.
pub struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    program: Result<CString, ExecFailure>,
}

/// oom_score_adj, rlimits, scheduler and I/O priority. Failures for lack of
/// privilege (lowering oom_score_adj, raising hard limits) are warnings.
pub fn apply_limits(process: &Process, warn: &mut dyn FnMut(String)) -> StepResult {
    if let Some(adj) = process.oom_score_adj() {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => warn(format!("oom_score_adj {adj} not set: {e}")),
                _ => return Err(e).with(|| format!("writing oom_score_adj {adj}")),
            }
        }
    }
    for rl in process.rlimits().iter().flatten() {
        let name = rl.typ().to_string();
        let resource =
            rlimit_resource(&name).ok_or_else(|| super::step::StepError(format!("unknown rlimit {name}")))?;
        let limit = libc::rlimit { rlim_cur: rl.soft(), rlim_max: rl.hard() };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            let err = Errno::last();
            if err == Errno::EPERM {
                warn(format!("rlimit {name} soft={} hard={} not set: {err}", rl.soft(), rl.hard()));
            } else {
                return Err(err).with(|| format!("setrlimit {name}"));
            }
        }
    }
    if let Some(sched) = process.scheduler() {
        set_scheduler(sched)?;
    }
    if let Some(io) = process.io_priority() {
        let class: i64 = match io.class() {
            IOPriorityClass::IoprioClassRt => 1,
            IOPriorityClass::IoprioClassBe => 2,
            IOPriorityClass::IoprioClassIdle => 3,
        };
        let prio = (class << 13) | io.priority();
        // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, prio).
        if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, prio) } != 0 {
            return Err(Errno::last()).ctx("ioprio_set");
        }
    }
    Ok(())
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// struct sched_attr from linux/sched/types.h (first version, 48 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

fn set_scheduler(s: &oci_spec::runtime::Scheduler) -> StepResult {
    use oci_spec::runtime::LinuxSchedulerFlag as F;
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let flags = s.flags().iter().flatten().fold(0u64, |acc, f| {
        acc | match f {
            F::SchedResetOnFork => 0x01,
            F::SchedFlagReclaim => 0x02,
            F::SchedFlagDLOverrun => 0x04,
            F::SchedFlagKeepPolicy => 0x08,
            F::SchedFlagKeepParams => 0x10,
            F::SchedFlagUtilClampMin => 0x20,
            F::SchedFlagUtilClampMax => 0x40,
        }
    });
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice: s.nice().unwrap_or(0),
        priority: s.priority().unwrap_or(0) as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
    };
    // SAFETY: sched_setattr(self, &attr, 0) with a correctly sized struct.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } != 0 {
        return Err(Errno::last()).with(|| format!("sched_setattr {:?}", s.policy()));
    }
    Ok(())
}

pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

/// Everything from AppArmor to seccomp, in the order the kernel's checks need;
/// returns the resolved program. After this, only the exec remains.
pub fn secure(
    process: &Process,
    seccomp_spec: Option<&LinuxSeccomp>,
    apparmor: bool,
    warn: &mut dyn FnMut(String),
) -> StepResult<Prepared> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return fail("process.args is empty");
    }
    let env = process.env().clone().unwrap_or_default();
    if let (Some(profile), true) = (process.apparmor_profile().as_deref().filter(|p| !p.is_empty()), apparmor) {
        apply_apparmor(profile)?;
    }
    let cwd = process.cwd().clone();
    // As root first: the user may lack search permission on the way there,
    // or (root squash) only the user may have it; try again after the switch.
    let cwd_done = nix::unistd::chdir(&cwd).is_ok();
    let caps = process.capabilities().as_ref();
    if let Some(caps) = caps {
        drop_bounding(caps.bounding().as_ref(), warn)?;
    }
    let user = process.user();
    if caps.is_some() {
        nix::sys::prctl::set_keepcaps(true).ctx("PR_SET_KEEPCAPS")?;
    }
    let groups: Vec<Gid> = user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).with(|| format!("setgroups({:?})", user.additional_gids()))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).with(|| format!("setresgid({gid})"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).with(|| format!("setresuid({uid})"))?;
    if let Some(caps) = caps {
        nix::sys::prctl::set_keepcaps(false).ctx("PR_SET_KEEPCAPS")?;
        set_capabilities(caps, warn)?;
    }
    if !cwd_done {
        nix::unistd::chdir(&cwd).with(|| format!("chdir to cwd {:?} set in config.json", cwd.display().to_string()))?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));
    let program = lookup(&args[0], &env);
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().ctx("PR_SET_NO_NEW_PRIVS")?;
    }
    if let Some(spec) = seccomp_spec {
        let filter = seccomp::compile(spec, no_new_privs).ctx("compiling seccomp profile")?;
        filter.load().ctx("loading seccomp filter")?;
    }
    Ok(Prepared { argv: cstrings(&args)?, envp: cstrings(&env)?, program })
}

fn cstrings(items: &[String]) -> StepResult<Vec<CString>> {
    items.iter().map(|s| CString::new(s.as_bytes()).with(|| format!("{s:?}"))).collect()
}

fn apply_apparmor(profile: &str) -> StepResult {
    let value = format!("exec {profile}");
    let modern = Path::new("/proc/self/attr/apparmor/exec");
    let path = if modern.exists() { modern } else { Path::new("/proc/self/attr/exec") };
    std::fs::write(path, value).with(|| format!("setting AppArmor profile {profile:?}"))
}

fn cap_indices(set: Option<&Capabilities>, warn: &mut dyn FnMut(String)) -> u64 {
    let mut mask = 0u64;
    for cap in set.into_iter().flatten() {
        let name = serde_json::to_value(cap).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        match name.parse::<caps::Capability>() {
            Ok(c) => mask |= c.bitmask(),
            Err(_) => warn(format!("unknown capability {name} skipped")),
        }
    }
    mask
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

fn drop_bounding(bounding: Option<&Capabilities>, warn: &mut dyn FnMut(String)) -> StepResult {
    let keep = cap_indices(bounding, warn);
    for cap in 0..=last_cap() {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let err = Errno::last();
            if err != Errno::EINVAL {
                return Err(err).with(|| format!("dropping capability {cap} from the bounding set"));
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_capabilities(caps: &oci_spec::runtime::LinuxCapabilities, warn: &mut dyn FnMut(String)) -> StepResult {
    let effective = cap_indices(caps.effective().as_ref(), warn);
    let permitted = cap_indices(caps.permitted().as_ref(), warn);
    let inheritable = cap_indices(caps.inheritable().as_ref(), warn);
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [0, 32].map(|shift| CapData {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    });
    // SAFETY: capset with a v3 header and two data elements, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(Errno::last()).ctx("capset");
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    let ambient = cap_indices(caps.ambient().as_ref(), warn);
    for cap in (0..64u64).filter(|c| ambient & (1 << c) != 0) {
        // SAFETY: as above.
        let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) };
        if rc != 0 {
            warn(format!("ambient capability {cap} not raised: {}", Errno::last()));
        }
    }
    Ok(())
}

/// `name` as execvp would find it, with the container's PATH.
fn lookup(name: &str, env: &[String]) -> Result<CString, ExecFailure> {
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| ExecFailure { code: 127, message: format!("exec {name:?}: path contains a NUL byte") })
    };
    if name.contains('/') {
        return to_c(Path::new(name));
    }
    let path = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    let mut denied: Option<PathBuf> = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        let Ok(meta) = std::fs::metadata(&candidate) else { continue };
        if !meta.is_file() {
            continue;
        }
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
            return to_c(&candidate);
        }
        denied.get_or_insert(candidate);
    }
    match denied {
        Some(p) => {
            Err(ExecFailure { code: 126, message: format!("exec {:?}: permission denied", p.display().to_string()) })
        }
        None => Err(ExecFailure { code: 127, message: format!("exec {name:?}: executable file not found in $PATH") }),
    }
}

/// Replaces the process; returns only on failure.
pub fn exec(prepared: Prepared) -> ExecFailure {
    let program = match prepared.program {
        Ok(p) => p,
        Err(f) => return f,
    };
    let err = match nix::unistd::execve(&program, &prepared.argv, &prepared.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = if err == Errno::ENOENT { 127 } else { 126 };
    ExecFailure { code, message: format!("exec {:?}: {}", program.to_string_lossy(), err.desc()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_uses_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let env = vec![format!("PATH=/nonexistent:{}", dir.path().display())];
        assert_eq!(lookup("tool", &env).unwrap().to_str().unwrap(), bin.to_str().unwrap());
        let missing = lookup("no-such-tool", &env).unwrap_err();
        assert_eq!(missing.code, 127);
        assert_eq!(missing.message, "exec \"no-such-tool\": executable file not found in $PATH");
        assert_eq!(lookup("/abs/x", &env).unwrap().to_str().unwrap(), "/abs/x");
    }

    #[test]
    fn rlimit_names_map() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
    }
}
