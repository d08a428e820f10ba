//! cricket: a Kubernetes container runtime speaking CRI over a unix socket.

mod cgroup;
mod check;
mod config;
mod container;
mod ids;
mod image;
mod metrics;
mod monitor;
mod network;
mod oci;
mod resident;
mod rootpath;
mod runtime;
mod sandbox;
mod server;
mod sockpath;
mod state;
mod streaming;
#[cfg(feature = "wasm")]
mod wasm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use config::{Config, LogFormat, Sources, DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_FILE};

#[derive(Parser)]
#[command(name = "cricket", version, about = "A Kubernetes container runtime (CRI)")]
struct Cli {
    /// Main configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in directory; its *.toml files are applied in name order.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
    /// Print the effective configuration as TOML.
    Config,
    /// Check the host for what cricket needs; exits 1 when something is missing.
    Check,
    /// Print version information.
    Version,
    /// Internal: create, configure and pin a pod's namespaces.
    #[command(hide = true)]
    PinNamespaces(sandbox::namespaces::PinArgs),
    /// Internal: run a process in a running container.
    #[command(hide = true)]
    Exec(runtime::linux::exec_cmd::ExecArgs),
    /// Debugging: create and start an OCI bundle in the foreground.
    #[command(hide = true)]
    Run(runtime::linux::run_cmd::RunArgs),
    /// Internal: hold a WebAssembly program loaded and fork its containers' monitors.
    #[cfg(feature = "wasm")]
    #[command(hide = true)]
    WasmPreload(wasm::preload::PreloadArgs),
}

fn main() -> ExitCode {
    // `cricket monitor --config <monitor.json>` runs for every container's
    // life: it skips clap to stay small.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "monitor") {
        return monitor::main(args);
    }
    let cli = Cli::parse();
    match &cli.command {
        Command::Version => {
            println!("cricket {}\nCRI API v1", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::PinNamespaces(args) => return helper_exit(sandbox::namespaces::pin_main(args)),
        Command::Exec(args) => return exit_code(runtime::linux::exec_cmd::exec_main(args)),
        Command::Run(args) => return exit_code(runtime::linux::run_cmd::run_main(args)),
        #[cfg(feature = "wasm")]
        Command::WasmPreload(args) => return wasm::preload::main(args),
        Command::Serve | Command::Config | Command::Check => {}
    }
    let file = cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    let sources = Sources { file: &file, file_required: cli.config.is_some(), dir: &cli.config_dir };
    let config = match Config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cricket: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
        Command::Check => check::main(&config),
        _ => unreachable!("handled above"),
    }
}

/// Exit statuses are 0-255; a child's code passes through unchanged.
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Helper modes report failure on stderr for the daemon to pass on.
fn helper_exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::warn!("a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cricket: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(Arc::new(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
