//! The gRPC server: CRI services on the unix socket, and the Prometheus endpoint beside it.

mod container;
mod error;
mod image;
mod metrics_rpc;
mod pod;
mod runtime;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::cgroup;
use crate::config::Config;
use crate::container::{Containers, Phase};
use crate::image::Images;
use crate::metrics::{self, Metrics};
use crate::network::Cni;
use crate::sandbox::Sandboxes;
use crate::streaming::StreamingServer;

const MAX_MESSAGE: usize = 16 << 20;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("another process is serving on {0}; stop it or choose another `socket`")]
    SocketInUse(String),
    #[error(transparent)]
    Images(#[from] crate::image::ImageError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Sandboxes(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Containers(#[from] crate::container::ContainerError),
    #[error("metrics endpoint {address}: {source}")]
    Metrics { address: String, source: std::io::Error },
    #[error("streaming server {address}: {source}")]
    Streaming { address: String, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot handle SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io { path: path.display().to_string(), source }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: Arc<Config>) -> Result<(), ServeError> {
    // Before anything else: a stop that comes while state loads, or right
    // after the socket is bound, must be a clean shutdown, not the default death.
    let stop_signals = StopSignals::install()?;
    for dir in [&config.root, &config.run] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let metrics = Metrics::new();
    let images = Arc::new(Images::open_with_metrics(config.clone(), metrics.pull())?);
    #[cfg(feature = "wasm")]
    {
        let cache = config.root.join("wasm-cache");
        if cache.is_dir() {
            let ids: Vec<String> = images.list().into_iter().map(|r| r.id).collect();
            tokio::task::spawn_blocking(move || crate::wasm::cache::tidy(&cache, &ids));
        }
    }
    let cgroups = Arc::new(cgroup::Manager::new(config.cgroup.driver, Path::new("/sys/fs/cgroup"))?);
    let cni = Arc::new(Cni::with_metrics(&config.cni, Duration::from_secs(config.cni.timeout_secs), metrics.cni()));
    let sandboxes = Arc::new(Sandboxes::open(config.clone(), cgroups.clone(), cni).await?);
    let containers =
        Containers::open(config.clone(), images.clone(), sandboxes.clone(), cgroups, metrics.containers()).await?;
    let streaming = StreamingServer::start(&config.streaming, containers.clone(), sandboxes.clone())
        .await
        .map_err(|source| ServeError::Streaming { address: config.streaming.address.clone(), source })?;
    tracing::info!(address = %streaming.local_addr(), "streaming server for Exec, Attach and PortForward listening");
    let listener = bind(&config.socket)?;
    let _metrics_server = match serve_metrics(&config, &metrics, &images, &sandboxes, &containers).await {
        Ok(server) => server,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };

    let runtime =
        RuntimeServiceServer::new(runtime::RuntimeApi::new(config.clone(), sandboxes, containers, Arc::new(streaming)))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
    let image = ImageServiceServer::new(image::ImageApi::new(images))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), "cricket serving CRI");
    notify_ready();
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel();
    let signalled = async move {
        stop_signals.recv().await;
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .layer(metrics::layer::GrpcMetricsLayer::new(metrics.clone()))
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signalled);
    // In-flight requests get a grace period; a pull or a stuck client must not hold the exit.
    let grace = async {
        match stopping.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = server => r,
        () = grace => {
            tracing::warn!("requests still running {}s after the stop signal; exiting anyway", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("cricket stopped");
    result.map_err(ServeError::from)
}

/// Starts the `/metrics` endpoint unless `metrics.address` is empty; it stops when
/// the returned server is dropped (when `serve` returns).
async fn serve_metrics(
    config: &Config,
    metrics: &Arc<Metrics>,
    images: &Arc<Images>,
    sandboxes: &Arc<Sandboxes>,
    containers: &Arc<Containers>,
) -> Result<Option<metrics::http::MetricsServer>, ServeError> {
    let Some(addr) = config.metrics.socket_addr() else { return Ok(None) };
    let (images, sandboxes, containers) = (images.clone(), sandboxes.clone(), containers.clone());
    metrics.on_scrape(move |m| {
        let states = sandboxes.list();
        let ready = states.iter().filter(|s| s.is_ready()).count();
        m.set_sandboxes(ready, states.len() - ready);
        m.set_images(images.list().len());
        let all = containers.list();
        let count = |phase| all.iter().filter(|c| c.phase == phase).count();
        m.set_containers(count(Phase::Created), count(Phase::Running), count(Phase::Exited));
        let live = all.iter().filter(|c| c.phase != Phase::Exited && c.monitor.is_some_and(|p| p.alive())).count();
        m.set_monitors(live);
    });
    let server = metrics::http::MetricsServer::start(addr, metrics.clone())
        .await
        .map_err(|source| ServeError::Metrics { address: config.metrics.address.clone(), source })?;
    tracing::info!(address = %server.local_addr(), "serving Prometheus metrics at /metrics");
    Ok(Some(server))
}

/// Binds the socket with mode 0660, replacing a stale one but never a live one.
fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err(path))?;
    Ok(listener)
}

/// Tells systemd (Type=notify) the socket is serving.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound().and_then(|s| s.send_to_addr(b"READY=1", &a)));
    if let Err(e) = sent {
        tracing::warn!(socket = %target, "cannot notify systemd: {e}");
    }
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, ServeError> {
        let term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
        let int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
        Ok(StopSignals { term, int })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
