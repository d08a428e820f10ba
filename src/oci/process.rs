//! The container process: argv, environment, working directory and user.

use std::path::PathBuf;

use k8s_cri::v1::{ContainerConfig, LinuxContainerSecurityContext};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, User};

use super::{Identity, SpecError, SpecInput};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn build(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
    identity: &Identity,
    hostname: &str,
) -> Result<Process, SpecError> {
    let mut user = User::default();
    user.set_uid(identity.uid).set_gid(identity.gid).set_additional_gids(Some(identity.additional_gids.clone()));
    let mut process = Process::default();
    process
        .set_terminal(Some(input.config.tty))
        .set_user(user)
        .set_args(Some(args(input.config, input.image)?))
        .set_env(Some(env(input.config, input.image, hostname)))
        .set_cwd(cwd(input.config, input.image)?)
        .set_no_new_privileges(Some(sc.no_new_privs))
        .set_rlimits(None)
        .set_capabilities(None)
        .set_apparmor_profile(None)
        .set_selinux_label(None);
    Ok(process)
}

/// Kubernetes rules: `command` replaces the image Entrypoint, `args` replace
/// its Cmd, and a `command` without `args` drops the image Cmd.
pub fn args(config: &ContainerConfig, image: &ImageConfiguration) -> Result<Vec<String>, SpecError> {
    let img = image.config().as_ref();
    let entrypoint = img.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = img.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut out = if config.command.is_empty() { entrypoint } else { config.command.clone() };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(cmd);
    }
    if out.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(out)
}

/// PATH default and HOSTNAME, overridden by the image's env, overridden by
/// the CRI envs; a later value for a key replaces the earlier one in place.
pub fn env(config: &ContainerConfig, image: &ImageConfiguration, hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
    let image_env = image.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
    let cri_env = config.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value));
    for entry in image_env.into_iter().chain(cri_env) {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k).to_string();
        match out.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
            Some(existing) => *existing = entry,
            None => out.push(entry),
        }
    }
    out
}

pub fn cwd(config: &ContainerConfig, image: &ImageConfiguration) -> Result<PathBuf, SpecError> {
    let image_dir = image.config().as_ref().and_then(|c| c.working_dir().clone()).filter(|d| !d.is_empty());
    let dir = match (config.working_dir.as_str(), image_dir) {
        ("", Some(dir)) => PathBuf::from(dir),
        ("", None) => PathBuf::from("/"),
        (dir, _) => PathBuf::from(dir),
    };
    if !dir.is_absolute() {
        return Err(SpecError::WorkingDir(dir.display().to_string()));
    }
    Ok(dir)
}
