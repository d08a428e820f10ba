//! Where a process's cgroups live on the host: its /proc/PID/cgroup lines
//! matched to the cgroup mounts in /proc/self/mountinfo. Used to join a
//! running container's cgroups (exec) and to bind them into the container
//! (cgroup v1 mounts).

use std::path::{Path, PathBuf};

use super::step::{Step, StepResult};

/// One mounted cgroup hierarchy and the process's directory in it.
#[derive(Debug, PartialEq)]
pub struct Hierarchy {
    /// Where the hierarchy is mounted on the host, e.g. /sys/fs/cgroup/cpu,cpuacct.
    pub mount_point: PathBuf,
    /// The process's cgroup directory on the host.
    pub dir: PathBuf,
}

#[derive(Debug, PartialEq)]
pub struct MountInfo {
    pub root: String,
    pub mount_point: String,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

/// Parses /proc/PID/mountinfo (octal escapes in paths decoded).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fs_type = post.next()?.to_string();
            let _source = post.next()?;
            let super_options = post.next().unwrap_or("").split(',').map(str::to_string).collect();
            Some(MountInfo { root: unescape(pre.get(3)?), mount_point: unescape(pre.get(4)?), fs_type, super_options })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Matches /proc/PID/cgroup lines ("id:controllers:path") to cgroup mounts.
pub fn hierarchies(mountinfo: &[MountInfo], proc_cgroup: &str) -> Vec<Hierarchy> {
    let lines: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let mut out = Vec::new();
    for m in mountinfo {
        let path = match m.fs_type.as_str() {
            "cgroup2" => lines.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p),
            "cgroup" => lines
                .iter()
                .find(|(c, _)| !c.is_empty() && c.split(',').all(|ctl| m.super_options.iter().any(|o| o == ctl)))
                .map(|(_, p)| *p),
            _ => None,
        };
        let Some(path) = path else { continue };
        let rel = Path::new(path).strip_prefix(&m.root).unwrap_or(Path::new(path));
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        out.push(Hierarchy { mount_point: PathBuf::from(&m.mount_point), dir: Path::new(&m.mount_point).join(rel) });
    }
    out
}

/// The host cgroup directories of `pid` (or "self").
pub fn of_process(pid: &str) -> StepResult<Vec<Hierarchy>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ctx("reading /proc/self/mountinfo")?;
    let cgroup_file = format!("/proc/{pid}/cgroup");
    let cgroup = std::fs::read_to_string(&cgroup_file).with(|| format!("reading {cgroup_file}"))?;
    Ok(hierarchies(&parse_mountinfo(&mountinfo), &cgroup))
}

/// Moves the calling process, which must be single-threaded, into each
/// directory. On v1 it writes "0" (this thread) to `tasks`: moving one's own
/// thread skips the kernel's global threadgroup lock, whose write side waits
/// for an RCU grace period (10-20 ms) on every `cgroup.procs` write.
pub fn join(dirs: &[PathBuf]) -> StepResult {
    let pid = std::process::id().to_string();
    for dir in dirs {
        let joined = match std::fs::OpenOptions::new().write(true).open(dir.join("tasks")) {
            Ok(mut tasks) => std::io::Write::write_all(&mut tasks, b"0"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(dir.join("cgroup.procs"), &pid),
            Err(e) => Err(e),
        };
        joined.with(|| format!("joining cgroup {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
34 25 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 34 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
41 34 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
42 34 0:37 /kubepods /mnt/my\\040cg rw,relatime shared:18 - cgroup cgroup rw,pids
";

    const PROC_CGROUP: &str = "\
12:pids:/kubepods/pod1/c1
5:memory:/kubepods/pod1/c1
3:cpu,cpuacct:/kubepods/pod1/c1
1:name=systemd:/system.slice/x.service
0::/system.slice/x.service
";

    #[test]
    fn v1_hybrid_hierarchies() {
        let h = hierarchies(&parse_mountinfo(MOUNTINFO), PROC_CGROUP);
        let dirs: Vec<_> = h.iter().map(|h| h.dir.to_str().unwrap().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/system.slice/x.service",
                "/sys/fs/cgroup/systemd/system.slice/x.service",
                "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1",
                "/sys/fs/cgroup/memory/kubepods/pod1/c1",
                "/mnt/my cg/pod1/c1",
            ]
        );
        assert_eq!(h[2].mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn v2_only() {
        let mi = "35 25 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = hierarchies(&parse_mountinfo(mi), "0::/kubepods.slice/c.scope\n");
        assert_eq!(
            h,
            vec![Hierarchy {
                mount_point: "/sys/fs/cgroup".into(),
                dir: "/sys/fs/cgroup/kubepods.slice/c.scope".into()
            }]
        );
    }
}
