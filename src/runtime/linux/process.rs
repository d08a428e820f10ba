//! The process half of container setup, shared by the container init and
//! `cricket exec`: AppArmor, user and groups, capabilities,
//! no_new_privileges, seccomp, cwd, and the exec itself.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, Process};

use super::capabilities::{drop_bounding, set_capabilities};
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

impl Prepared {
    /// Why `process.args[0]` can't be executed, when it is missing or not
    /// executable: the container init reports this at create, as runc and crun do.
    pub fn missing_program(&self) -> Option<&ExecFailure> {
        self.program.as_ref().err()
    }
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
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let filter = match seccomp_spec {
        Some(spec) => Some(seccomp::compile(spec, no_new_privs).ctx("compiling seccomp profile")?),
        None => None,
    };
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the
    // capability drop below may take away: load it first (as runc does).
    if let (Some(filter), false) = (&filter, no_new_privs) {
        filter.load().ctx("loading seccomp filter")?;
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
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().ctx("PR_SET_NO_NEW_PRIVS")?;
        // As late as possible, so the filter sees few setup syscalls.
        if let Some(filter) = &filter {
            filter.load().ctx("loading seccomp filter")?;
        }
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

/// `name` as execvp would find it, with the container's PATH.
fn lookup(name: &str, env: &[String]) -> Result<CString, ExecFailure> {
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| ExecFailure { code: 127, message: format!("exec {name:?}: path contains a NUL byte") })
    };
    if name.contains('/') {
        let path = Path::new(name);
        return match std::fs::metadata(path) {
            Err(e) => {
                let desc = e.raw_os_error().map_or_else(|| e.to_string(), |n| Errno::from_raw(n).desc().to_string());
                Err(ExecFailure { code: 127, message: format!("exec {name:?}: {desc}") })
            }
            Ok(meta) if meta.is_dir() => {
                Err(ExecFailure { code: 126, message: format!("exec {name:?}: is a directory") })
            }
            Ok(_) if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() => {
                Err(ExecFailure { code: 126, message: format!("exec {name:?}: permission denied") })
            }
            Ok(_) => to_c(path),
        };
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
        assert_eq!(lookup(bin.to_str().unwrap(), &env).unwrap().to_str().unwrap(), bin.to_str().unwrap());
        let absent = lookup("/nonexistent/x", &env).unwrap_err();
        assert_eq!(absent.code, 127);
        assert_eq!(absent.message, "exec \"/nonexistent/x\": No such file or directory");
        assert_eq!(lookup(dir.path().to_str().unwrap(), &env).unwrap_err().code, 126);
        let plain = dir.path().join("data");
        std::fs::write(&plain, "x").unwrap();
        let denied = lookup(plain.to_str().unwrap(), &env).unwrap_err();
        assert_eq!((denied.code, denied.message.ends_with("permission denied")), (126, true));
    }
}
