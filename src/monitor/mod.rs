//! The per-container monitor (conmon's role): a small single-threaded
//! process, detached from the daemon, that creates the container through a
//! runtime handler, owns its stdio, writes the CRI log and records the exit.

pub mod config;
