//! systemd driver: cgroups are transient units started and stopped over D-Bus,
//! so systemd knows them and does not move or reset them. Files are still
//! written directly afterwards (as runc does) for what systemd has no property for.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Connection, MatchRule, MessageStream};

use super::path::{self, Unit};
use super::resources::{shares_to_weight, v2_swap};
use super::{CgroupError, CgroupPath, Resources, Version};

const DEST: &str = "org.freedesktop.systemd1";
const OBJECT: &str = "/org/freedesktop/systemd1";
const IFACE: &str = "org.freedesktop.systemd1.Manager";
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// Where systemd is reached: the system bus, once `marker` shows systemd runs.
#[derive(Debug, Clone)]
pub(super) struct Bus {
    pub address: Option<String>,
    pub marker: PathBuf,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus { address: None, marker: "/run/systemd/system".into() }
    }
}

/// The unit to start for `path`: a scope needs a process, a slice takes none.
pub(super) fn check(path: &CgroupPath, pid: Option<i32>) -> Result<Unit, CgroupError> {
    let unit = path::unit(path)?;
    let invalid =
        |reason: &str| CgroupError::InvalidPath { value: path.0.clone(), driver: "systemd", reason: reason.into() };
    match (&unit, pid) {
        (Unit::Scope { .. }, None) => Err(invalid("a systemd scope starts with a process: use create_with_pid")),
        (Unit::Slice { .. }, Some(_)) => Err(invalid("a systemd slice cannot hold processes; use a scope")),
        _ => Ok(unit),
    }
}

/// Starts the slice or scope; false when the unit already existed.
pub(super) async fn start(
    bus: &Bus,
    path: &CgroupPath,
    version: Version,
    res: &Resources,
    pid: Option<i32>,
) -> Result<bool, CgroupError> {
    let unit = check(path, pid)?;
    let conn = connect(bus).await?;
    let props = properties(&unit, version, res, pid);
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let body = (unit.name(), "replace", props, aux);
    Ok(run_job(&conn, "start", unit.name(), "StartTransientUnit", &body).await? == Outcome::Done)
}

/// Stops the unit; one that does not exist is fine.
pub(super) async fn stop(bus: &Bus, path: &CgroupPath) -> Result<(), CgroupError> {
    let unit = path::unit(path)?;
    let conn = connect(bus).await?;
    run_job(&conn, "stop", unit.name(), "StopUnit", &(unit.name(), "replace")).await?;
    // A failed unit keeps its name taken until reset.
    let _ = conn.call_method(Some(DEST), OBJECT, Some(IFACE), "ResetFailedUnit", &(unit.name(),)).await;
    Ok(())
}

/// The unit's properties: placement, accounting, and the limits systemd itself tracks.
pub(super) fn properties(
    unit: &Unit,
    version: Version,
    res: &Resources,
    pid: Option<i32>,
) -> Vec<(&'static str, Value<'static>)> {
    let mut p: Vec<(&'static str, Value<'static>)> =
        vec![("Description", Value::from(format!("cricket cgroup {}", unit.name())))];
    match unit {
        Unit::Scope { slice, .. } => {
            p.push(("Slice", Value::from(slice.clone())));
            p.push(("Delegate", Value::from(true)));
        }
        Unit::Slice { name } => {
            if let Some(parent) = parent_slice(name) {
                p.push(("Wants", Value::from(vec![parent])));
            }
        }
    }
    if let Some(pid) = pid {
        p.push(("PIDs", Value::from(vec![pid as u32])));
    }
    p.push(("DefaultDependencies", Value::from(false)));
    let io = if version == Version::V2 { "IOAccounting" } else { "BlockIOAccounting" };
    for name in ["CPUAccounting", "MemoryAccounting", "TasksAccounting", io] {
        p.push((name, Value::from(true)));
    }
    let limit = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    if let Some(shares) = res.cpu_shares {
        p.push(match version {
            Version::V1 => ("CPUShares", Value::from(shares)),
            Version::V2 => ("CPUWeight", Value::from(shares_to_weight(shares))),
        });
    }
    if let Some(quota) = res.cpu_quota {
        p.push(("CPUQuotaPerSecUSec", Value::from(quota_per_sec(quota, res.cpu_period))));
    }
    if let Some(period) = res.cpu_period {
        p.push(("CPUQuotaPeriodUSec", Value::from(period)));
    }
    if let Some(m) = res.memory_limit {
        p.push((if version == Version::V1 { "MemoryLimit" } else { "MemoryMax" }, Value::from(limit(m))));
    }
    if version == Version::V2 {
        if let Ok(Some(swap)) = v2_swap(res.memory_limit, res.memory_swap) {
            p.push(("MemorySwapMax", Value::from(swap.parse::<u64>().unwrap_or(u64::MAX))));
        }
    }
    if let Some(n) = res.pids_limit {
        p.push(("TasksMax", Value::from(limit(n))));
    }
    p
}

/// systemd keeps CPU quota as a whole percentage, so the per-second quota is
/// rounded up to 10ms or the cgroup could not be given the exact quota.
pub(super) fn quota_per_sec(quota: i64, period: Option<u64>) -> u64 {
    if quota < 0 {
        return u64::MAX;
    }
    let per_sec = quota as u64 * 1_000_000 / period.unwrap_or(100_000).max(1);
    per_sec.div_ceil(10_000) * 10_000
}

/// "a-b-c.slice" → "a-b.slice"; a top-level slice's parent is the root, left implicit.
fn parent_slice(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".slice")?;
    stem.rsplit_once('-').map(|(parent, _)| format!("{parent}.slice"))
}

async fn connect(bus: &Bus) -> Result<Connection, CgroupError> {
    let builder = match &bus.address {
        Some(addr) => zbus::connection::Builder::address(addr.as_str()),
        None if !bus.marker.exists() => return Err(CgroupError::SystemdUnavailable { marker: bus.marker.clone() }),
        None => zbus::connection::Builder::system(),
    };
    let fail = |e: zbus::Error| CgroupError::Systemd { op: "connect", unit: "(D-Bus)".into(), message: e.to_string() };
    builder.map_err(fail)?.build().await.map_err(fail)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    AlreadyThere,
}

/// Calls a Manager method that queues a job and waits for the job to finish.
async fn run_job<B>(
    conn: &Connection,
    op: &'static str,
    unit: &str,
    method: &str,
    body: &B,
) -> Result<Outcome, CgroupError>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let fail = |message: String| CgroupError::Systemd { op, unit: unit.into(), message };
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(IFACE)
        .and_then(|b| b.member("JobRemoved"))
        .and_then(|b| b.path(OBJECT))
        .map_err(|e| fail(e.to_string()))?
        .build();
    // Subscribed before the call, so the job's end cannot be missed.
    let mut signals = MessageStream::for_match_rule(rule, conn, Some(1024)).await.map_err(|e| fail(e.to_string()))?;
    let _ = conn.call_method(Some(DEST), OBJECT, Some(IFACE), "Subscribe", &()).await;
    let reply = match conn.call_method(Some(DEST), OBJECT, Some(IFACE), method, body).await {
        Ok(reply) => reply,
        Err(zbus::Error::MethodError(name, ..))
            if name.as_str() == "org.freedesktop.systemd1.UnitExists"
                || name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            return Ok(Outcome::AlreadyThere)
        }
        Err(zbus::Error::MethodError(name, detail, _)) => {
            return Err(fail(format!("{name}: {}", detail.unwrap_or_default())))
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let job: OwnedObjectPath = reply.body().deserialize().map_err(|e| fail(e.to_string()))?;
    let wait = async {
        while let Some(msg) = signals.next().await {
            let msg = msg.map_err(|e| fail(e.to_string()))?;
            if let Ok((_, path, _, result)) = msg.body().deserialize::<(u32, OwnedObjectPath, String, String)>() {
                if path == job {
                    return Ok(result);
                }
            }
        }
        Err(fail("D-Bus connection closed while waiting for the job".into()))
    };
    match tokio::time::timeout(JOB_TIMEOUT, wait).await {
        Ok(Ok(result)) if result == "done" => Ok(Outcome::Done),
        Ok(Ok(result)) => Err(fail(format!("job {} ended with result \"{result}\"", job.as_str()))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(fail(format!("job {} did not finish within {}s", job.as_str(), JOB_TIMEOUT.as_secs()))),
    }
}
