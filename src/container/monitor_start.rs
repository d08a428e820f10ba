//! Starting a container's monitor: forked by its WebAssembly program's
//! preloading process when one runs (`wasm::pool`), else a `cricket
//! monitor` of its own.

use std::path::Path;

use super::process::{self, Proc};
use super::Containers;
use crate::monitor::config::MonitorConfig;

impl Containers {
    /// Writes `monitor.json` to `path`, starts the monitor and waits for the
    /// created init: (monitor, init). `program` is a wasm program's path in the rootfs.
    #[cfg(feature = "wasm")]
    pub(super) async fn start_monitor(
        &self,
        config: &MonitorConfig,
        path: &Path,
        program: Option<&Path>,
    ) -> Result<(Proc, Proc), String> {
        use crate::monitor::config::RuntimeKind;
        use crate::wasm::pool::{Program, Reply};
        process::write_config(config, path)?;
        let program = match (&config.runtime, program) {
            // Without both keys (a record older than them) nothing is cached.
            (RuntimeKind::Wasm { engine, image, .. }, Some(p)) if !engine.is_empty() && !image.is_empty() => {
                Program { image: image.clone(), path: p.to_path_buf(), engine: engine.clone() }
            }
            _ => return process::exec_monitor(path).await,
        };
        let pool = self.images.programs();
        if let Some(preloader) = pool.get(&program) {
            // Any failure lets it go: a broken one must not fail every create of the program.
            match preloader.fork_monitor(path).await {
                Ok(Reply::Forked { stdout, stderr }) => {
                    let created = process::handshake(stdout, stderr).await;
                    if created.is_err() {
                        pool.lost(&program, &preloader);
                    }
                    return created;
                }
                Ok(Reply::Declined { gone: false }) => return process::exec_monitor(path).await,
                Ok(Reply::Declined { gone: true }) => pool.lost(&program, &preloader),
                Err(e) => {
                    pool.lost(&program, &preloader);
                    return Err(e.to_string());
                }
            }
        }
        let started = process::exec_monitor(path).await?;
        pool.preload(program);
        Ok(started)
    }

    #[cfg(not(feature = "wasm"))]
    pub(super) async fn start_monitor(
        &self,
        config: &MonitorConfig,
        path: &Path,
        _program: Option<&Path>,
    ) -> Result<(Proc, Proc), String> {
        process::write_config(config, path)?;
        process::exec_monitor(path).await
    }
}
