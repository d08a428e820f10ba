//! Runtime handlers: what creates a container's init process inside a
//! monitor. The built-in executor (`linux`) forks it directly; an external
//! OCI runtime (issue 6) would run `runc create`. The monitor owns whatever
//! this returns and drives it through start.

pub mod features;
pub mod linux;

use std::os::fd::OwnedFd;

/// The container's standard streams as the init process gets them: pipes
/// from the monitor, `/dev/null`, or (for a TTY) the pty's replica end on all three.
pub struct InitStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A created container: its init process exists with every namespace, mount,
/// cgroup and security setting in place, and waits to be released.
pub trait ContainerInit {
    /// The init's PID as the monitor sees it (host PID namespace).
    fn pid(&self) -> i32;
    /// Lets the init exec the workload; returns once the exec succeeded, or
    /// the reason it failed (missing binary, permission) for StartContainer to report.
    fn start(self: Box<Self>) -> Result<(), String>;
}

pub mod oci;
