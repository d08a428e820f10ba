//! The WebAssembly (WASI preview1) runtime handler. A wasm container is an
//! ordinary container of the built-in executor whose init, instead of an
//! execve, runs the module with wasmtime in place: namespaces, cgroups,
//! seccomp, user, mounts, logs, stop and stats work unchanged.

pub mod cache;
pub mod code;
pub mod detect;
pub mod pool;
pub mod preload;
pub mod run;
