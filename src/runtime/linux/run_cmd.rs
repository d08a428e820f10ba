//! `cricket run`: create and start a bundle in the foreground with this
//! process's stdio, like `runc run`; an operator's debugging tool.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::signals;
use crate::runtime::InitStdio;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Bundle directory holding config.json.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Names the container in messages.
    #[arg(long, default_value = "container")]
    pub id: String,
    /// A cgroup directory to join (repeat for each v1 hierarchy).
    #[arg(long = "cgroup")]
    pub cgroups: Vec<PathBuf>,
    /// Written with the init's host PID once it is created.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

/// The container's exit code (128 + signal if killed); 1 when it could not run.
pub fn run_main(args: &RunArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cricket run {}: {e}", args.id);
            1
        }
    }
}

fn run(args: &RunArgs) -> Result<i32, String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let config = args.bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let dup = |fd: std::os::fd::BorrowedFd| -> Result<OwnedFd, String> {
        fd.try_clone_to_owned().map_err(|e| format!("dup stdio: {e}"))
    };
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let stdio = if terminal {
        // The init makes its terminal inside the container; we relay to ours.
        let null = || -> Result<OwnedFd, String> {
            std::fs::File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| e.to_string())
        };
        InitStdio { stdin: null()?, stdout: null()?, stderr: null()? }
    } else {
        InitStdio {
            stdin: dup(std::io::stdin().as_fd())?,
            stdout: dup(std::io::stdout().as_fd())?,
            stderr: dup(std::io::stderr().as_fd())?,
        }
    };
    let created =
        super::create(&args.bundle, &spec, stdio, &args.cgroups, super::Workload::Spec).map_err(|e| e.to_string())?;
    let pid = Pid::from_raw(created.init.pid());
    signals::forward_to(pid);
    if let Some(file) = &args.pid_file {
        std::fs::write(file, pid.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let output = created.console.map(relay).transpose()?;
    if let Err(e) = created.init.start() {
        let _ = signals::wait_for(pid);
        return Err(e);
    }
    let code = signals::wait_for(pid);
    if let Some(drained) = output {
        // The master reads EIO once the last holder of the replica is gone; a
        // background process that kept it must not keep us here.
        let _ = drained.recv_timeout(std::time::Duration::from_secs(1));
    }
    Ok(code)
}

/// Copies our stdin to the terminal and the terminal to our stdout, each on
/// a thread; the receiver hears when the output ends.
fn relay(master: OwnedFd) -> Result<std::sync::mpsc::Receiver<()>, String> {
    let mut input = std::fs::File::from(master.try_clone().map_err(|e| format!("dup terminal: {e}"))?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
    });
    let mut output = std::fs::File::from(master);
    let (done, drained) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        let _ = std::io::copy(&mut output, &mut stdout);
        let _ = std::io::Write::flush(&mut stdout);
        let _ = done.send(());
    });
    Ok(drained)
}
