//! linux.namespaces → what the first child joins (setns on paths) and what
//! it creates (unshare). pid and time only take effect for children, and the
//! cgroup namespace is created by the init itself once it sits in its cgroup.

use std::fs::File;
use std::path::PathBuf;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::step::{fail, Step, StepResult};

pub struct NsPlan {
    /// Opened up front: paths like /proc/PID/ns/net must be opened before
    /// joining a mount namespace changes what they name.
    pub join: Vec<(LinuxNamespaceType, PathBuf, File)>,
    pub create: Vec<LinuxNamespaceType>,
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME, missing from nix's CloneFlags.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(0x80),
    }
}

impl NsPlan {
    pub fn from_spec(spec: &Spec) -> StepResult<NsPlan> {
        let mut plan = NsPlan { join: Vec::new(), create: Vec::new() };
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        for ns in namespaces {
            if plan.create.contains(&ns.typ()) || plan.join.iter().any(|(t, _, _)| *t == ns.typ()) {
                return fail(format!("namespace {} listed twice", ns.typ()));
            }
            match ns.path() {
                Some(path) => {
                    let file =
                        File::open(path).with(|| format!("opening {} namespace {}", ns.typ(), path.display()))?;
                    plan.join.push((ns.typ(), path.clone(), file));
                }
                None => plan.create.push(ns.typ()),
            }
        }
        // Rootfs setup changes propagation and pivots: never in the host's mount namespace or a shared one.
        if !plan.create.contains(&LinuxNamespaceType::Mount) {
            return fail("the container needs a new mount namespace (a mount entry without a path)");
        }
        // The user namespace first: it owns whatever is created or joined after it.
        plan.join.sort_by_key(|(t, _, _)| *t != LinuxNamespaceType::User);
        Ok(plan)
    }

    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.create.contains(&t)
    }

    pub fn join_all(&mut self) -> StepResult {
        for (t, path, file) in self.join.drain(..) {
            setns(&file, flag(t)).with(|| format!("joining {t} namespace {}", path.display()))?;
        }
        Ok(())
    }

    /// Every namespace to create except user (done earlier, with id maps) and cgroup (done by the init).
    pub fn unshare_rest(&self) -> StepResult {
        let flags = self
            .create
            .iter()
            .filter(|t| !matches!(t, LinuxNamespaceType::User | LinuxNamespaceType::Cgroup))
            .fold(CloneFlags::empty(), |f, t| f | flag(*t));
        unshare(flags).with(|| format!("unshare({:?})", self.create))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    #[test]
    fn paths_are_joined_user_first_and_the_rest_created() {
        let plan = NsPlan::from_spec(&spec(serde_json::json!([
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "user", "path": "/proc/self/ns/user"},
            {"type": "mount"}, {"type": "pid"}, {"type": "cgroup"}
        ])))
        .unwrap();
        let joined: Vec<_> = plan.join.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(joined, [LinuxNamespaceType::User, LinuxNamespaceType::Network]);
        assert!(plan.creates(LinuxNamespaceType::Pid) && plan.creates(LinuxNamespaceType::Cgroup));
        assert!(!plan.creates(LinuxNamespaceType::Network));
    }

    #[test]
    fn invalid_plans_are_refused() {
        let twice = NsPlan::from_spec(&spec(serde_json::json!([{"type": "mount"}, {"type": "pid"}, {"type": "pid"}])));
        assert!(twice.is_err_and(|e| e.0.contains("listed twice")));
        let no_mnt = NsPlan::from_spec(&spec(serde_json::json!([{"type": "pid"}])));
        assert!(no_mnt.is_err_and(|e| e.0.contains("mount namespace")));
        let missing = NsPlan::from_spec(&spec(
            serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/nonexistent/ns"}]),
        ));
        assert!(missing.is_err_and(|e| e.0.contains("/nonexistent/ns")));
    }
}
