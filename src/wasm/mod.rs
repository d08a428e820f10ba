//! The WebAssembly (WASI preview1) runtime handler. A wasm container is an
//! ordinary container of the built-in executor whose workload is this binary
//! in `wasm-run` mode (exec'd from a descriptor opened before pivot_root), so
//! namespaces, cgroups, seccomp, logs, stop and stats work unchanged.

pub mod detect;
pub mod run;

/// The argv the executor puts before the container's `process.args`.
pub const RUN_PREFIX: &[&str] = &["cricket", "wasm-run", "--"];
