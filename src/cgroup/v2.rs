//! cgroup v2: one tree; controllers must be enabled in every ancestor's cgroup.subtree_control.

use std::collections::BTreeSet;
use std::path::Path;

use nix::sys::signal::Signal;

use super::fs::{self, read, read_opt, read_u64, write};
use super::resources::{page_size_name, shares_to_weight, v2_swap};
use super::{CgroupError, Resources, Stats};

/// Enabled whenever available, so stats and later updates find their files.
const BASE: &[&str] = &["cpu", "memory", "pids"];

pub(super) fn create(root: &Path, rel: &Path, res: &Resources) -> Result<bool, CgroupError> {
    let plan = plan(res)?;
    let created = fs::mkdir_p(root, rel, |_| Ok(()))?;
    enable_controllers(root, rel, res)?;
    write_plan(&root.join(rel), &plan)?;
    Ok(created)
}

pub(super) fn update(root: &Path, rel: &Path, res: &Resources) -> Result<(), CgroupError> {
    let plan = plan(res)?;
    fs::ensure_dir(&root.join(rel))?;
    enable_controllers(root, rel, res)?;
    write_plan(&root.join(rel), &plan)
}

/// Rejects what cannot be converted, before anything is made.
pub(super) fn check(res: &Resources) -> Result<(), CgroupError> {
    plan(res).map(drop)
}

/// What a write does when its file is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IfMissing {
    Controller(&'static str),
    /// Swap accounting off: harmless when asking for no swap or unlimited swap.
    Swap,
    /// hugetlb absent: kubelet sends limits for every page size the node has.
    Hugetlb,
    Unified,
}

type Plan = Vec<(String, String, IfMissing)>;

fn plan(res: &Resources) -> Result<Plan, CgroupError> {
    let mut p: Plan = Vec::new();
    let mut add = |file: &str, value: String, m| p.push((file.to_string(), value, m));
    let ctl = IfMissing::Controller;
    if let Some(shares) = res.cpu_shares {
        add("cpu.weight", shares_to_weight(shares).to_string(), ctl("cpu"));
    }
    // As runc: a period without a quota means no quota ("max").
    if res.cpu_quota.is_some() || res.cpu_period.is_some() {
        let quota = res.cpu_quota.filter(|q| *q > 0).map_or("max".to_string(), |q| q.to_string());
        let value = res.cpu_period.map_or(quota.clone(), |p| format!("{quota} {p}"));
        add("cpu.max", value, ctl("cpu"));
    }
    if let Some(v) = &res.cpuset_cpus {
        add("cpuset.cpus", v.clone(), ctl("cpuset"));
    }
    if let Some(v) = &res.cpuset_mems {
        add("cpuset.mems", v.clone(), ctl("cpuset"));
    }
    if let Some(m) = res.memory_limit {
        add("memory.max", if m < 0 { "max".into() } else { m.to_string() }, ctl("memory"));
    }
    if let Some(swap) = v2_swap(res.memory_limit, res.memory_swap)? {
        add("memory.swap.max", swap, IfMissing::Swap);
    }
    if let Some(n) = res.pids_limit {
        add("pids.max", if n < 0 { "max".into() } else { n.to_string() }, ctl("pids"));
    }
    for (size, limit) in &res.hugepage_limits {
        add(&format!("hugetlb.{}.max", page_size_name(size)?), limit.to_string(), IfMissing::Hugetlb);
    }
    for (key, value) in &res.unified {
        add(key, value.clone(), IfMissing::Unified);
    }
    Ok(p)
}

fn write_plan(dir: &Path, plan: &Plan) -> Result<(), CgroupError> {
    let controllers = read(dir, "cgroup.controllers")?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    for (file, value, if_missing) in plan {
        if dir.join(file).exists() {
            write(dir, file, value)?;
            if let Some(size) = file.strip_prefix("hugetlb.").and_then(|f| f.strip_suffix(".max")) {
                let rsvd = format!("hugetlb.{size}.rsvd.max");
                if dir.join(&rsvd).exists() {
                    write(dir, &rsvd, value)?;
                }
            }
            continue;
        }
        let hint = match if_missing {
            IfMissing::Swap if value == "max" || value == "0" => continue,
            IfMissing::Swap => "memory swap accounting is off on this host".to_string(),
            IfMissing::Hugetlb if !has("hugetlb") => continue,
            IfMissing::Hugetlb => "this kernel has no such huge page size".to_string(),
            IfMissing::Unified => "unknown cgroup file, or its controller is not available here".to_string(),
            IfMissing::Controller(c) => format!("the {c} controller is not available to this cgroup"),
        };
        return Err(CgroupError::NoFile { path: dir.join(file), value: value.clone(), hint });
    }
    Ok(())
}

/// Controllers `res` needs, plus BASE, that the root offers.
fn wanted(root: &Path, res: &Resources) -> Result<Vec<String>, CgroupError> {
    let available: BTreeSet<String> =
        read(root, "cgroup.controllers")?.split_whitespace().map(str::to_string).collect();
    let mut want: BTreeSet<&str> = BASE.iter().copied().collect();
    if res.cpu_shares.is_some() || res.cpu_quota.is_some() || res.cpu_period.is_some() {
        want.insert("cpu");
    }
    if res.cpuset_cpus.is_some() || res.cpuset_mems.is_some() {
        want.insert("cpuset");
    }
    if !res.hugepage_limits.is_empty() {
        want.insert("hugetlb");
    }
    // "io.max" needs io; "cgroup.*" files need no controller and are not in `available`.
    want.extend(res.unified.keys().filter_map(|k| k.split('.').next()));
    Ok(want.into_iter().filter(|c| available.contains(*c)).map(str::to_string).collect())
}

/// Enables the wanted controllers from the root down to the cgroup's parent,
/// one at a time so an error names the one refused.
fn enable_controllers(root: &Path, rel: &Path, res: &Resources) -> Result<(), CgroupError> {
    let want = wanted(root, res)?;
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        let enabled = read(&dir, "cgroup.subtree_control")?;
        for c in want.iter().filter(|c| !enabled.split_whitespace().any(|e| e == c.as_str())) {
            write(&dir, "cgroup.subtree_control", &format!("+{c}"))?;
        }
        dir.push(part);
    }
    Ok(())
}

pub(super) fn stats(dir: &Path) -> Result<Stats, CgroupError> {
    fs::ensure_dir(dir)?;
    let text = |f| Ok::<_, CgroupError>(read_opt(dir, f)?.unwrap_or_default());
    let mem_stat = text("memory.stat")?;
    let memory_usage = read_u64(dir, "memory.current")?;
    Ok(Stats {
        cpu_usage_ns: fs::keyed(&text("cpu.stat")?, "usage_usec").saturating_mul(1000),
        memory_usage,
        memory_working_set: memory_usage.saturating_sub(fs::keyed(&mem_stat, "inactive_file")),
        memory_rss: fs::keyed(&mem_stat, "anon"),
        page_faults: fs::keyed(&mem_stat, "pgfault"),
        major_page_faults: fs::keyed(&mem_stat, "pgmajfault"),
        pids: read_u64(dir, "pids.current")?,
        oom_kills: fs::keyed(&text("memory.events")?, "oom_kill"),
    })
}

/// SIGKILL through cgroup.kill (5.14+) is atomic; otherwise freeze, signal, thaw.
/// A cgroup that was already frozen (paused) stays so, unless killed.
pub(super) fn kill_all(dir: &Path, signal: Signal) -> Result<(), CgroupError> {
    fs::ensure_dir(dir)?;
    if signal == Signal::SIGKILL && dir.join("cgroup.kill").exists() {
        return write(dir, "cgroup.kill", "1");
    }
    if !dir.join("cgroup.freeze").exists() {
        return fs::signal_all(dir, signal);
    }
    let was_frozen = read(dir, "cgroup.freeze")?.trim() == "1";
    if !was_frozen {
        write(dir, "cgroup.freeze", "1")?;
        let frozen = fs::wait_until(|| Ok(fs::keyed(&read(dir, "cgroup.events")?, "frozen") == 1))?;
        if !frozen {
            tracing::warn!(cgroup = %dir.display(), "cgroup did not freeze; signalling anyway");
        }
    }
    let result = fs::signal_all(dir, signal);
    if !was_frozen || signal == Signal::SIGKILL {
        write(dir, "cgroup.freeze", "0")?;
    }
    result
}
