//! Resource limits in CRI terms, their checks, and the conversions v2 and systemd need.

use std::collections::BTreeMap;

use super::CgroupError;

/// Limits for a cgroup; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    /// Microseconds per period; -1 for no limit.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Bytes; -1 for no limit.
    pub memory_limit: Option<i64>,
    /// Memory plus swap in bytes, as CRI's memory_swap_limit_in_bytes; -1 for no limit.
    pub memory_swap: Option<i64>,
    /// -1 for no limit.
    pub pids_limit: Option<i64>,
    /// (page size as CRI gives it, "2MB"; limit in bytes).
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 file -> value, written verbatim last.
    pub unified: BTreeMap<String, String>,
}

impl Resources {
    /// CRI integers use 0 for "not set".
    pub fn from_cri(r: &k8s_cri::v1::LinuxContainerResources) -> Resources {
        let pos = |v: i64| (v != 0).then_some(v);
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Resources {
            cpu_shares: (r.cpu_shares > 0).then_some(r.cpu_shares as u64),
            cpu_quota: pos(r.cpu_quota),
            cpu_period: (r.cpu_period > 0).then_some(r.cpu_period as u64),
            cpuset_cpus: text(&r.cpuset_cpus),
            cpuset_mems: text(&r.cpuset_mems),
            memory_limit: pos(r.memory_limit_in_bytes),
            memory_swap: pos(r.memory_swap_limit_in_bytes),
            pids_limit: None,
            hugepage_limits: r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
            unified: r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// Rejects values no cgroup version accepts, before anything is written.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let bad = |name: &str, value: String, reason: &str| {
            Err(CgroupError::InvalidResource { name: name.into(), value, reason: reason.into() })
        };
        let limit_ok = |v: Option<i64>| v.is_none_or(|v| v > 0 || v == -1);
        if self.cpu_quota.is_some_and(|q| q < -1 || (0..1000).contains(&q)) {
            return bad("cpu_quota", format!("{:?}", self.cpu_quota), "must be -1 or at least 1000 (µs)");
        }
        if self.cpu_period.is_some_and(|p| !(1000..=1_000_000).contains(&p)) {
            return bad("cpu_period", format!("{:?}", self.cpu_period), "must be between 1000 and 1000000 (µs)");
        }
        if !limit_ok(self.memory_limit) {
            return bad("memory_limit", format!("{:?}", self.memory_limit), "must be positive or -1");
        }
        if !limit_ok(self.memory_swap) {
            return bad("memory_swap", format!("{:?}", self.memory_swap), "must be positive or -1");
        }
        if let (Some(m), Some(s)) = (self.memory_limit, self.memory_swap) {
            if m > 0 && s > 0 && s < m {
                return bad("memory_swap", s.to_string(), "memory+swap limit must not be below the memory limit");
            }
        }
        if self.pids_limit.is_some_and(|p| p == 0 || p < -1) {
            return bad("pids_limit", format!("{:?}", self.pids_limit), "must be positive or -1");
        }
        for (name, v) in [("cpuset_cpus", &self.cpuset_cpus), ("cpuset_mems", &self.cpuset_mems)] {
            if let Some(v) = v {
                if !v.chars().all(|c| c.is_ascii_digit() || c == ',' || c == '-') {
                    return bad(name, v.clone(), "must be a list like \"0-3,6\"");
                }
            }
        }
        for (size, _) in &self.hugepage_limits {
            page_size_name(size)?;
        }
        for key in self.unified.keys() {
            if key.is_empty() || key.contains('/') || key.contains("..") || key.starts_with('.') {
                return bad("unified", key.clone(), "a key must be a cgroup file name, like \"memory.high\"");
            }
        }
        Ok(())
    }
}

/// cpu.shares (2..262144) → cpu.weight (1..10000), the linear map runc and kubelet use.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// CRI's memory+swap limit → v2 memory.swap.max (swap alone); None leaves it unset.
pub(super) fn v2_swap(memory: Option<i64>, swap: Option<i64>) -> Result<Option<String>, CgroupError> {
    let bad = |reason: &str| CgroupError::InvalidResource {
        name: "memory_swap".into(),
        value: format!("{swap:?} with memory_limit {memory:?}"),
        reason: reason.into(),
    };
    match (memory, swap) {
        // An unlimited memory with swap unset means both unlimited, as on v1.
        (Some(-1), None) => Ok(Some("max".into())),
        (_, None) => Ok(None),
        (_, Some(-1)) => Ok(Some("max".into())),
        (None | Some(-1), Some(_)) => Err(bad("a swap limit on cgroup v2 needs a memory limit")),
        (Some(m), Some(s)) if s < m => Err(bad("memory+swap limit must not be below the memory limit")),
        (Some(m), Some(s)) => Ok(Some((s - m).to_string())),
    }
}

/// Page size as the kernel names hugetlb files: "2MB", "1GB", "64KB". CRI gives
/// "<n><unit>B" in base 1024; "2M", "2Mi", "2048kB" and plain bytes are accepted too.
pub fn page_size_name(size: &str) -> Result<String, CgroupError> {
    let bad = || CgroupError::InvalidResource {
        name: "hugepage page_size".into(),
        value: size.into(),
        reason: "expected a size like \"2MB\" or \"1GB\"".into(),
    };
    let split = size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len());
    let (num, unit) = size.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_shl(shift).filter(|b| *b >= 1024 && b >> shift == n).ok_or_else(bad)?;
    // The kernel's format: the largest unit not above the size, integer division.
    Ok(match bytes {
        b if b >= 1 << 30 => format!("{}GB", b >> 30),
        b if b >= 1 << 20 => format!("{}MB", b >> 20),
        b => format!("{}KB", b >> 10),
    })
}
