//! OCI 1.1 `process.scheduler` and `process.ioPriority` from container
//! annotations, since CRI has no fields for them.

use std::collections::HashMap;
use std::str::FromStr;

use oci_spec::runtime::{
    IOPriorityClass, LinuxIOPriority, LinuxIOPriorityBuilder, LinuxSchedulerFlag, LinuxSchedulerPolicy, Process,
    Scheduler,
};

use super::SpecError;

/// Scheduling policy of the container process (sched_setattr(2)):
/// `POLICY[:key=value,...]` with POLICY one of SCHED_OTHER, SCHED_BATCH,
/// SCHED_IDLE, SCHED_FIFO, SCHED_RR, SCHED_DEADLINE (the `SCHED_` prefix and
/// case are optional) and keys `nice` (-20..19; OTHER/BATCH), `priority`
/// (1..99; FIFO/RR), `runtime`/`deadline`/`period` (nanoseconds; DEADLINE,
/// runtime ≤ deadline ≤ period) and `flags` (`|`-separated, e.g.
/// `SCHED_RESET_ON_FORK`). Examples: `SCHED_BATCH`, `SCHED_OTHER:nice=5`,
/// `SCHED_FIFO:priority=10`.
pub const SCHEDULER_ANNOTATION: &str = "io.cricket.scheduler";

/// I/O priority of the container process (ioprio_set(2)): `CLASS[:LEVEL]`
/// with CLASS one of RT, BE, IDLE (or IOPRIO_CLASS_RT, ...) and LEVEL 0..7
/// (0 is highest; default 4). Examples: `BE:7`, `IDLE`.
pub const IO_PRIORITY_ANNOTATION: &str = "io.cricket.io-priority";

pub fn apply(annotations: &HashMap<String, String>, process: &mut Process) -> Result<(), SpecError> {
    if let Some(value) = annotations.get(SCHEDULER_ANNOTATION) {
        let sched = scheduler(value).map_err(|reason| annotation_error(SCHEDULER_ANNOTATION, value, reason))?;
        process.set_scheduler(Some(sched));
    }
    if let Some(value) = annotations.get(IO_PRIORITY_ANNOTATION) {
        let prio = io_priority(value).map_err(|reason| annotation_error(IO_PRIORITY_ANNOTATION, value, reason))?;
        process.set_io_priority(Some(prio));
    }
    Ok(())
}

fn annotation_error(key: &str, value: &str, reason: String) -> SpecError {
    SpecError::Annotation { key: key.to_string(), value: value.to_string(), reason }
}

fn number<T: FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("{key}={value:?} is not a valid number"))
}

pub fn scheduler(value: &str) -> Result<Scheduler, String> {
    let (policy, params) = value.split_once(':').unwrap_or((value, ""));
    let upper = policy.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SCHED_") { upper } else { format!("SCHED_{upper}") };
    let policy = LinuxSchedulerPolicy::from_str(&name).map_err(|_| format!("unknown policy {policy:?}"))?;
    if policy == LinuxSchedulerPolicy::SchedIso {
        return Err("SCHED_ISO is not supported by Linux".to_string());
    }
    let mut sched = Scheduler::default();
    sched.set_policy(policy);
    for param in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, val) = param.split_once('=').ok_or_else(|| format!("{param:?} is not key=value"))?;
        match key.trim() {
            "nice" => sched.set_nice(Some(number(key, val)?)),
            "priority" => sched.set_priority(Some(number(key, val)?)),
            "runtime" => sched.set_runtime(Some(number(key, val)?)),
            "deadline" => sched.set_deadline(Some(number(key, val)?)),
            "period" => sched.set_period(Some(number(key, val)?)),
            "flags" => {
                let flags = val
                    .split('|')
                    .map(|f| LinuxSchedulerFlag::from_str(f.trim()).map_err(|_| format!("unknown flag {f:?}")))
                    .collect::<Result<Vec<_>, _>>()?;
                sched.set_flags(Some(flags))
            }
            other => return Err(format!("unknown key {other:?}")),
        };
    }
    validate(&sched)?;
    Ok(sched)
}

fn validate(s: &Scheduler) -> Result<(), String> {
    use LinuxSchedulerPolicy::*;
    let policy = *s.policy();
    if let Some(nice) = s.nice() {
        if !(-20..=19).contains(nice) {
            return Err(format!("nice {nice} is outside -20..19"));
        }
    }
    match (policy, s.priority()) {
        (SchedFifo | SchedRr, Some(p)) if !(1..=99).contains(p) => {
            return Err(format!("priority {p} is outside 1..99"))
        }
        (SchedFifo | SchedRr, None) => return Err(format!("{policy} needs priority=1..99")),
        (SchedFifo | SchedRr, Some(_)) | (_, None) | (_, Some(0)) => {}
        (_, Some(p)) => return Err(format!("priority {p} needs SCHED_FIFO or SCHED_RR")),
    }
    let deadline_params = [s.runtime(), s.deadline(), s.period()];
    if policy == SchedDeadline {
        let [Some(runtime), Some(deadline), Some(period)] = deadline_params else {
            return Err("SCHED_DEADLINE needs runtime, deadline and period".to_string());
        };
        if !(runtime <= deadline && deadline <= period && *runtime > 0) {
            return Err("SCHED_DEADLINE needs 0 < runtime <= deadline <= period".to_string());
        }
    } else if deadline_params.iter().any(|p| p.is_some()) {
        return Err("runtime, deadline and period need SCHED_DEADLINE".to_string());
    }
    Ok(())
}

pub fn io_priority(value: &str) -> Result<LinuxIOPriority, String> {
    let (class, level) = value.split_once(':').unwrap_or((value, "4"));
    let upper = class.trim().to_ascii_uppercase();
    let name = if upper.starts_with("IOPRIO_CLASS_") { upper } else { format!("IOPRIO_CLASS_{upper}") };
    let class = IOPriorityClass::from_str(&name).map_err(|_| format!("unknown class {class:?}"))?;
    let level: i64 = number("level", level)?;
    if !(0..=7).contains(&level) {
        return Err(format!("level {level} is outside 0..7"));
    }
    LinuxIOPriorityBuilder::default().class(class).priority(level).build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_values() {
        let s = scheduler("SCHED_BATCH").unwrap();
        assert_eq!(*s.policy(), LinuxSchedulerPolicy::SchedBatch);
        let s = scheduler("other:nice=5").unwrap();
        assert_eq!((*s.policy(), *s.nice()), (LinuxSchedulerPolicy::SchedOther, Some(5)));
        let s = scheduler("SCHED_FIFO:priority=10,flags=SCHED_RESET_ON_FORK").unwrap();
        assert_eq!(*s.priority(), Some(10));
        assert_eq!(s.flags().as_deref(), Some(&[LinuxSchedulerFlag::SchedResetOnFork][..]));
        let s = scheduler("SCHED_DEADLINE:runtime=1000,deadline=2000,period=3000").unwrap();
        assert_eq!(*s.period(), Some(3000));
    }

    #[test]
    fn scheduler_rejects_bad_values() {
        for bad in [
            "SCHED_FAST",
            "SCHED_OTHER:nice=25",
            "SCHED_FIFO",
            "SCHED_RR:priority=100",
            "SCHED_OTHER:priority=5",
            "SCHED_OTHER:nice",
            "SCHED_OTHER:color=red",
            "SCHED_DEADLINE:runtime=5",
            "SCHED_DEADLINE:runtime=5000,deadline=2000,period=3000",
            "SCHED_BATCH:period=10",
            "SCHED_ISO",
        ] {
            assert!(scheduler(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn io_priority_values() {
        let p = io_priority("BE:7").unwrap();
        assert_eq!((p.class(), p.priority()), (IOPriorityClass::IoprioClassBe, 7));
        let p = io_priority("IOPRIO_CLASS_IDLE").unwrap();
        assert_eq!((p.class(), p.priority()), (IOPriorityClass::IoprioClassIdle, 4));
        assert!(io_priority("BE:8").is_err());
        assert!(io_priority("FAST").is_err());
    }

    #[test]
    fn annotations_set_process_fields() {
        let mut process = Process::default();
        let ann = HashMap::from([
            (SCHEDULER_ANNOTATION.to_string(), "SCHED_IDLE".to_string()),
            (IO_PRIORITY_ANNOTATION.to_string(), "rt:0".to_string()),
        ]);
        apply(&ann, &mut process).unwrap();
        assert_eq!(*process.scheduler().as_ref().unwrap().policy(), LinuxSchedulerPolicy::SchedIdle);
        assert_eq!(process.io_priority().unwrap().class(), IOPriorityClass::IoprioClassRt);
        let bad = HashMap::from([(SCHEDULER_ANNOTATION.to_string(), "nope".to_string())]);
        assert!(matches!(apply(&bad, &mut process), Err(SpecError::Annotation { .. })));
    }
}
