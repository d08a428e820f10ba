//! Streaming for the CRI Exec and PortForward RPCs: an HTTP server handing out single-use URLs
//! that clients upgrade to SPDY/3.1 or WebSocket to talk to a process in a container.

mod attach;
mod exec;
mod http;
mod portforward;
mod protocol;
mod pty;
mod session;
pub mod spdy;
mod tls;
mod tokens;
mod ws;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::StreamingConfig;
use crate::container::{ContainerError, Containers};
use crate::sandbox::namespaces::NsKind;
use crate::sandbox::{SandboxError, Sandboxes};
use tokens::{Pending, Tokens, TooManyPending};

/// How long a URL handed out by Exec stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("pod sandbox {0} is not ready")]
    NotReady(String),
    #[error("port {0} is out of range 1-65535")]
    BadPort(i32),
    #[error(transparent)]
    Busy(#[from] TooManyPending),
}

impl From<StreamingError> for tonic::Status {
    fn from(e: StreamingError) -> tonic::Status {
        match e {
            StreamingError::Invalid(m) => tonic::Status::invalid_argument(m),
            StreamingError::Container(e) => e.into(),
            StreamingError::Sandbox(e) => e.into(),
            StreamingError::NotReady(_) => tonic::Status::failed_precondition(e.to_string()),
            StreamingError::BadPort(_) => tonic::Status::invalid_argument(e.to_string()),
            StreamingError::Busy(e) => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}

/// The running server; dropping it stops the listener and every session.
pub struct StreamingServer {
    addr: SocketAddr,
    /// "https" with TLS configured, else "http".
    scheme: &'static str,
    ctx: Arc<http::Context>,
    task: JoinHandle<()>,
}

impl StreamingServer {
    /// Binds `addr` (port 0: one the OS picks) and serves in a task.
    pub async fn start(
        config: &StreamingConfig,
        containers: Arc<Containers>,
        sandboxes: Arc<Sandboxes>,
    ) -> std::io::Result<StreamingServer> {
        let addr = config.socket_addr().ok_or_else(|| std::io::Error::other("not a socket address"))?;
        let tls = match (config.tls_cert_file.as_str(), config.tls_key_file.as_str()) {
            ("", _) | (_, "") => None,
            (cert, key) => Some(tls::acceptor(Path::new(cert), Path::new(key))?),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(http::Context {
            tokens: Tokens::new(TOKEN_TTL),
            containers,
            sandboxes,
            sessions: Arc::new(tokio::sync::Semaphore::new(http::MAX_SESSIONS)),
        });
        let task = tokio::spawn(http::accept_loop(listener, tls, ctx.clone()));
        Ok(StreamingServer { addr, scheme, ctx, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Validates an Exec request and returns the URL its client connects to.
    pub fn exec(&self, req: ExecRequest) -> Result<String, StreamingError> {
        if req.cmd.is_empty() {
            return Err(StreamingError::Invalid("cmd must not be empty"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(StreamingError::Invalid("one of stdin, stdout, and stderr must be set"));
        }
        if req.tty && req.stderr {
            return Err(StreamingError::Invalid("tty and stderr cannot both be true: a terminal has one output"));
        }
        self.ctx.containers.check_exec(&req.container_id, &req.cmd)?;
        let token = self.ctx.tokens.insert(Pending::Exec(req))?;
        Ok(format!("{}://{}/exec/{token}", self.scheme, self.url_host()))
    }

    /// Validates an Attach request and returns the URL its client connects to.
    pub fn attach(&self, req: AttachRequest) -> Result<String, StreamingError> {
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(StreamingError::Invalid("one of stdin, stdout, and stderr must be set"));
        }
        if req.tty && req.stderr {
            return Err(StreamingError::Invalid("tty and stderr cannot both be true: a terminal has one output"));
        }
        let socket = self.ctx.containers.attach_socket(&req.container_id, req.stdin, req.tty)?;
        let token = self.ctx.tokens.insert(Pending::Attach(req, socket))?;
        Ok(format!("{}://{}/attach/{token}", self.scheme, self.url_host()))
    }

    /// Checks a PortForward request and returns the URL its client connects to.
    pub fn port_forward(&self, req: PortForwardRequest) -> Result<String, StreamingError> {
        if let Some(port) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(StreamingError::BadPort(*port));
        }
        let st = self.ctx.sandboxes.get(&req.pod_sandbox_id)?.snapshot();
        if !st.is_ready() {
            return Err(StreamingError::NotReady(st.id));
        }
        let netns = st.namespaces.get(&NsKind::Net).cloned();
        let token = self.ctx.tokens.insert(Pending::PortForward { sandbox: st.id, netns })?;
        Ok(format!("{}://{}/portforward/{token}", self.scheme, self.url_host()))
    }

    /// The address as clients should dial it: a wildcard bind is reached on loopback.
    fn url_host(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
