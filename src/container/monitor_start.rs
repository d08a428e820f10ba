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
    pub(super) async fn start_monitor(
        &self,
        config: &MonitorConfig,
        path: &Path,
        #[cfg_attr(not(feature = "wasm"), allow(unused_variables))] program: Option<&Path>,
    ) -> Result<(Proc, Proc), String> {
        process::write_config(config, path)?;
        #[cfg(feature = "wasm")]
        if let Some(program) = preloadable(config, program) {
            return self.start_preloaded(path, program).await;
        }
        process::exec_monitor(path).await
    }

    /// Through the program's preloading process if it runs; else exec'd,
    /// and the program preloaded for the next time.
    #[cfg(feature = "wasm")]
    async fn start_preloaded(&self, path: &Path, program: crate::wasm::pool::Program) -> Result<(Proc, Proc), String> {
        use crate::wasm::pool::Reply;
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
}

/// The program a wasm container runs, as the cache names it.
#[cfg(feature = "wasm")]
fn preloadable(config: &MonitorConfig, program: Option<&Path>) -> Option<crate::wasm::pool::Program> {
    match (&config.runtime, program) {
        // Without both keys (a record older than them) nothing is cached.
        (crate::monitor::config::RuntimeKind::Wasm { engine, image, .. }, Some(p))
            if !engine.is_empty() && !image.is_empty() =>
        {
            Some(crate::wasm::pool::Program { image: image.clone(), path: p.to_path_buf(), engine: engine.clone() })
        }
        _ => None,
    }
}
