//! The streaming HTTP server: `/exec/<token>` upgraded to SPDY/3.1 or WebSocket, `/attach/<token>` likewise,
//! `/portforward/<token>` to SPDY/3.1; every
//! other path, and unknown or used tokens, get 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::portforward;
use super::protocol::{Protocol, SUPPORTED};
use super::session::Session;
use super::tokens::{Pending, Tokens};
use super::ws;
use crate::container::Containers;
use crate::sandbox::Sandboxes;

/// Sessions running at once; more get 503 (each holds a helper process).
pub const MAX_SESSIONS: usize = 64;
/// A session in which nothing moves this long is closed (kubelet's default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

pub struct Context {
    pub tokens: Tokens,
    pub containers: Arc<Containers>,
    pub sandboxes: Arc<Sandboxes>,
    pub sessions: Arc<Semaphore>,
}

/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, ctx: Arc<Context>) {
    // Owned here, so aborting this task aborts the connections too.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("streaming server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let result = match tls {
                None => serve_connection(stream, ctx).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, ctx).await,
                    Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                    Err(_) => Err("TLS handshake timed out".into()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "streaming connection: {e}");
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

async fn serve_connection<S>(stream: S, ctx: Arc<Context>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(&ctx, req)) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
        .map_err(|e| e.to_string())
}

fn respond(ctx: &Arc<Context>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (kind, token) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((kind @ ("exec" | "attach" | "portforward"), t)) if !t.is_empty() && !t.contains('/') => (kind, t),
        _ => return text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    if !matches!(*req.method(), Method::GET | Method::POST) {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    let Ok(permit) = ctx.sessions.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_SESSIONS} streaming sessions are running\n"));
    };
    let target = match (kind, ctx.tokens.take(token)) {
        ("exec", Some(Pending::Exec(exec))) => Target::Exec(exec),
        ("attach", Some(Pending::Attach(attach, socket))) => Target::Attach(attach, socket),
        ("portforward", Some(Pending::PortForward { sandbox, netns })) => {
            return port_forward(req, sandbox, netns, permit)
        }
        _ => return text(StatusCode::NOT_FOUND, "unknown or expired streaming token\n".into()),
    };
    let upgrade = |name: &str| upgrades_to(&req, name);
    if upgrade("websocket") {
        let target = match target {
            Target::Exec(exec) => ws::Target::Exec(exec, ctx.containers.clone()),
            Target::Attach(attach, socket) => ws::Target::Attach(attach, socket),
        };
        return websocket(req, target, permit);
    }
    if !upgrade("SPDY/3.1") {
        return text(
            StatusCode::BAD_REQUEST,
            "this endpoint needs `Upgrade: SPDY/3.1` or `Upgrade: websocket`\n".into(),
        );
    }
    let offered = req.headers().get_all(PROTOCOL_HEADER).iter().filter_map(|v| v.to_str().ok());
    let Some(protocol) = Protocol::negotiate(offered) else {
        let ours: Vec<&str> = SUPPORTED.iter().map(|(n, _)| *n).collect();
        return text(
            StatusCode::FORBIDDEN,
            format!("no common stream protocol; this server speaks {}\n", ours.join(", ")),
        );
    };
    tokio::spawn(upgraded(req, protocol, target, ctx.containers.clone(), permit));
    switching("SPDY/3.1", header::HeaderName::from_static(PROTOCOL_HEADER), protocol.name(), None)
}

/// What a SPDY session serves.
enum Target {
    Exec(k8s_cri::v1::ExecRequest),
    Attach(k8s_cri::v1::AttachRequest, std::path::PathBuf),
}

async fn upgraded(
    req: Request<Incoming>,
    protocol: Protocol,
    target: Target,
    containers: Arc<Containers>,
    _permit: OwnedSemaphorePermit,
) {
    let io = match hyper::upgrade::on(req).await {
        Ok(io) => TokioIo::new(io),
        Err(e) => return tracing::debug!("streaming upgrade failed: {e}"),
    };
    let session = Session::start(io, IDLE_TIMEOUT);
    match target {
        Target::Exec(exec) => {
            tracing::debug!(container = %exec.container_id, protocol = protocol.name(), "exec session started");
            super::exec::serve(session, protocol, exec, containers).await;
        }
        Target::Attach(attach, socket) => {
            tracing::debug!(container = %attach.container_id, protocol = protocol.name(), "attach session started");
            super::attach::serve(session, protocol, attach, socket).await;
        }
    }
}

fn websocket(req: Request<Incoming>, target: ws::Target, permit: OwnedSemaphorePermit) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let version_13 = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let (Some(accept), true) = (key, version_13) else {
        return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade needs Sec-WebSocket-Key and version 13\n".into());
    };
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
    let Some(subprotocol) = ws::negotiate(offered) else {
        let ours = ws::SUBPROTOCOLS.join(", ");
        return text(StatusCode::FORBIDDEN, format!("no common WebSocket subprotocol; this server speaks {ours}\n"));
    };
    tokio::spawn(async move {
        let _permit = permit;
        match hyper::upgrade::on(req).await {
            Ok(io) => ws::serve(io, subprotocol, target).await,
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
    });
    switching("websocket", header::SEC_WEBSOCKET_PROTOCOL, subprotocol, Some(&accept))
}

fn port_forward(
    req: Request<Incoming>,
    sandbox: String,
    netns: Option<std::path::PathBuf>,
    permit: OwnedSemaphorePermit,
) -> Response<Full<Bytes>> {
    if !upgrades_to(&req, "SPDY/3.1") {
        return port_forward_tunnel(req, sandbox, netns, permit);
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.is_empty() && !offered.contains(&portforward::PROTOCOL) {
        let message = format!("no common stream protocol; this server speaks {}\n", portforward::PROTOCOL);
        return text(StatusCode::FORBIDDEN, message);
    }
    tokio::spawn(async move {
        let _permit = permit;
        match hyper::upgrade::on(req).await {
            Ok(io) => portforward::serve(Session::start(TokioIo::new(io), IDLE_TIMEOUT), netns, sandbox).await,
            Err(e) => tracing::debug!("port forward upgrade failed: {e}"),
        }
    });
    switching("SPDY/3.1", header::HeaderName::from_static(PROTOCOL_HEADER), portforward::PROTOCOL, None)
}

/// Port forwarding as client-go's SPDY-over-WebSocket dialer does it
/// (`crictl port-forward --transport websocket`): the SPDY session's bytes
/// travel in binary WebSocket messages, under subprotocol
/// `SPDY/3.1+portforward.k8s.io`.
fn port_forward_tunnel(
    req: Request<Incoming>,
    sandbox: String,
    netns: Option<std::path::PathBuf>,
    permit: OwnedSemaphorePermit,
) -> Response<Full<Bytes>> {
    const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
    let websocket = upgrades_to(&req, "websocket");
    let headers = req.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == TUNNEL);
    let (true, Some(accept)) = (websocket, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "port forwarding needs `Upgrade: SPDY/3.1` or a WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`)\n".into(),
        );
    };
    if !offered {
        return text(StatusCode::FORBIDDEN, format!("no common WebSocket subprotocol; this server speaks {TUNNEL}\n"));
    }
    tokio::spawn(async move {
        let _permit = permit;
        match hyper::upgrade::on(req).await {
            Ok(io) => {
                let tunnel = ws::tunnel(io).await;
                portforward::serve(Session::start(tunnel, IDLE_TIMEOUT), netns, sandbox).await
            }
            Err(e) => tracing::debug!("port forward upgrade failed: {e}"),
        }
    });
    switching("websocket", header::SEC_WEBSOCKET_PROTOCOL, TUNNEL, Some(&accept))
}

/// Whether the request asks to upgrade to `name`.
fn upgrades_to(req: &Request<Incoming>, name: &str) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(name)))
}

/// The 101 answer: the upgraded protocol, the negotiated (sub)protocol, and
/// for WebSocket the Sec-WebSocket-Accept value.
fn switching(
    upgrade: &'static str,
    protocol_header: header::HeaderName,
    protocol: &'static str,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    headers.insert(protocol_header, HeaderValue::from_static(protocol));
    if let Some(accept) = accept {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(accept).expect("base64 is a valid header"));
    }
    resp
}
