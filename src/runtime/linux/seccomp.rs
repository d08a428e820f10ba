//! linux.seccomp → a libseccomp filter. Syscall names this kernel or
//! libseccomp doesn't know are skipped (profiles list syscalls of newer
//! kernels); anything else malformed is an error.

use std::collections::HashSet;
use std::str::FromStr;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0} is not supported")]
    UnsupportedAction(String),
    #[error("seccomp architecture {0}: {1}")]
    Arch(String, String),
    #[error("seccomp rule for {name}: {reason}")]
    Rule { name: String, reason: String },
    #[error("seccomp: {0}")]
    Filter(String),
}

/// Builds the filter; `no_new_privileges` decides whether loading it also sets NNP.
pub fn compile(spec: &LinuxSeccomp, no_new_privileges: bool) -> Result<ScmpFilterContext, SeccompError> {
    let default = action(spec.default_action(), spec.default_errno_ret())?;
    let filter_err = |e: libseccomp::error::SeccompError| SeccompError::Filter(e.to_string());
    let mut ctx = ScmpFilterContext::new(default).map_err(filter_err)?;
    ctx.set_ctl_nnp(no_new_privileges).map_err(filter_err)?;
    for flag in spec.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true).map(|_| ()),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true).map(|_| ()),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true).map(|_| ()),
            // A single-threaded init has no other threads to sync.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => Ok(()),
        }
        .map_err(filter_err)?;
    }
    for arch in spec.architectures().iter().flatten() {
        let name = serde_name(arch);
        let scmp = ScmpArch::from_str(&name).map_err(|e| SeccompError::Arch(name.clone(), e.to_string()))?;
        ctx.add_arch(scmp).map_err(|e| SeccompError::Arch(name.clone(), e.to_string()))?;
    }
    for rule in spec.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else { continue };
            let rule_err =
                |e: libseccomp::error::SeccompError| SeccompError::Rule { name: name.clone(), reason: e.to_string() };
            for conditions in condition_sets(&args)? {
                if conditions.is_empty() {
                    ctx.add_rule(act, syscall).map_err(rule_err)?;
                } else {
                    ctx.add_rule_conditional(act, syscall, &conditions).map_err(rule_err)?;
                }
            }
        }
    }
    Ok(ctx)
}

fn action(act: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno_ret.map_or(libc::EPERM, |e| e as i32)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno_ret.map_or(libc::EPERM as u16, |e| e as u16)),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        // A notify filter needs a listener (seccompListenerPath) this runtime doesn't serve.
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::UnsupportedAction(act.to_string())),
    })
}

/// libseccomp rejects two conditions on the same argument in one rule
/// (except as a range), so those become one rule per condition, as runc does.
fn condition_sets(args: &[LinuxSeccompArg]) -> Result<Vec<Vec<ScmpArgCompare>>, SeccompError> {
    let conditions: Vec<ScmpArgCompare> = args.iter().map(condition).collect::<Result<_, _>>()?;
    let mut seen = HashSet::new();
    let repeated = args.iter().any(|a| !seen.insert(a.index()));
    if repeated {
        Ok(conditions.into_iter().map(|c| vec![c]).collect())
    } else {
        Ok(vec![conditions])
    }
}

fn condition(arg: &LinuxSeccompArg) -> Result<ScmpArgCompare, SeccompError> {
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| SeccompError::Filter(format!("syscall argument index {} out of range", arg.index())))?;
    let (op, datum) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        // OCI: value is the mask, valueTwo the value compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (ScmpCompareOp::MaskedEqual(arg.value()), arg.value_two().unwrap_or_default())
        }
    };
    Ok(ScmpArgCompare::new(index, op, datum))
}

fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    fn pfc(ctx: &ScmpFilterContext) -> String {
        let mut file = tempfile::tempfile().unwrap();
        ctx.export_pfc(&file).unwrap();
        use std::io::{Read, Seek};
        file.rewind().unwrap();
        let mut out = String::new();
        file.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn compiles_rules_with_errno_and_skips_unknown_names() {
        let spec = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}, {"index": 0, "value": 0, "op": "SCMP_CMP_NE"}]},
                {"names": ["clone"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }));
        let ctx = compile(&spec, false).unwrap();
        assert!(!ctx.get_ctl_nnp().unwrap());
        let text = pfc(&ctx);
        assert!(text.contains("ERRNO(38)"), "{text}");
        assert!(text.contains("ERRNO(1)"), "{text}");
        assert!(text.contains("KILL_PROCESS"), "{text}");
    }

    #[test]
    fn default_errno_and_nnp() {
        let spec = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]
        }));
        let ctx = compile(&spec, true).unwrap();
        assert!(ctx.get_ctl_nnp().unwrap());
        assert_eq!(ctx.get_act_default().unwrap(), ScmpAction::Errno(13));
    }

    #[test]
    fn notify_is_refused() {
        let spec = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(matches!(compile(&spec, false), Err(SeccompError::UnsupportedAction(_))));
    }

    #[test]
    fn bad_argument_index_is_an_error() {
        let spec = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(matches!(compile(&spec, false), Err(SeccompError::Filter(_))));
    }
}
