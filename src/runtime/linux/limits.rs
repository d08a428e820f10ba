//! Per-process limits shared by the init and `cricket exec`: oom_score_adj,
//! rlimits, scheduler and I/O priority.

use nix::errno::Errno;
use oci_spec::runtime::{IOPriorityClass, LinuxSchedulerPolicy, Process};

use super::step::{Step, StepError, StepResult};

/// oom_score_adj, rlimits, scheduler and I/O priority. Failures for lack of
/// privilege (lowering oom_score_adj, raising hard limits) are warnings.
pub fn apply(process: &Process, warn: &mut dyn FnMut(String)) -> StepResult {
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
        let resource = rlimit_resource(&name).ok_or_else(|| StepError(format!("unknown rlimit {name}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_names_map() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
    }
}
