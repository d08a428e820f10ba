//! PortForward over SPDY (`portforward.k8s.io`): the client opens a pair of
//! streams per connection, `streamType` error and data, with the same
//! `requestID` and the pod `port`; the data stream is spliced to a TCP
//! connection made inside the pod's network namespace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::exec::STREAM_CREATION_TIMEOUT;
use super::session::{Sender, Session, Stream};

pub const PROTOCOL: &str = "portforward.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Pair {
    opened: Instant,
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves one client: every complete pair becomes a forwarded connection.
pub async fn serve(mut session: Session, netns: Option<PathBuf>, sandbox: String) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut prune = tokio::time::interval(STREAM_CREATION_TIMEOUT / 4);
    loop {
        let stream = tokio::select! {
            s = session.streams.recv() => s,
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
            _ = prune.tick() => {
                // A pair still missing a stream is dropped; its stream's data is then refused.
                pairs.retain(|request, p| {
                    let keep = p.opened.elapsed() < STREAM_CREATION_TIMEOUT;
                    if !keep {
                        tracing::debug!(sandbox = %sandbox, request, "port forward request incomplete; dropped");
                    }
                    keep
                });
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let Some(request) = stream.headers.get("requestid").map(str::to_string) else {
            tracing::debug!(sandbox = %sandbox, stream = stream.id, "port forward stream without requestID; ignored");
            continue;
        };
        let pair =
            pairs.entry(request.clone()).or_insert_with(|| Pair { opened: Instant::now(), error: None, data: None });
        match stream.headers.get("streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                tracing::debug!(sandbox = %sandbox, kind = ?other, "port forward stream of unknown type; ignored");
                continue;
            }
        }
        if pairs.get(&request).is_some_and(|p| p.error.is_some() && p.data.is_some()) {
            if let Some(Pair { error: Some(error), data: Some(data), .. }) = pairs.remove(&request) {
                forwards.spawn(forward(session.sender.clone(), error, data, netns.clone()));
            }
        }
    }
    forwards.abort_all();
    session.finish().await;
}

async fn forward(sender: Sender, error: Stream, data: Stream, netns: Option<PathBuf>) {
    let port = data.headers.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
    let conn = match port {
        Some(port) => connect(netns, port).await.map_err(|e| format!("connecting to port {port} in the pod: {e}")),
        None => Err(format!("invalid port {:?}", data.headers.get("port"))),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(message) => {
            sender.data(error.id, message.into_bytes()).await;
            sender.finish(error.id).await;
            sender.finish(data.id).await;
            return;
        }
    };
    let (mut read, mut write) = conn.into_split();
    let data_id = data.id;
    let mut incoming = data.data;
    let upstream = async move {
        while let Some(chunk) = incoming.recv().await {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client half-closed: so does the connection.
        let _ = write.shutdown().await;
    };
    let out = sender.clone();
    let downstream = async move {
        let mut buf = vec![0u8; 32 << 10];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 || !out.data(data_id, buf[..n].to_vec()).await {
                break;
            }
        }
        out.finish(data_id).await;
    };
    tokio::join!(upstream, downstream);
    sender.finish(error.id).await;
}

/// Connects to localhost:`port` in the namespace pinned at `netns` (the
/// daemon's own for host-network pods). A short-lived thread joins the
/// namespace to make the socket, so no daemon thread changes its own.
async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let Some(netns) = netns else {
        return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)?;
    };
    let ns = std::fs::File::open(&netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result =
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from).and_then(|()| {
                let addrs =
                    [(std::net::Ipv4Addr::LOCALHOST, port).into(), (std::net::Ipv6Addr::LOCALHOST, port).into()];
                let mut last = None;
                for addr in addrs {
                    match std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("two addresses were tried"))
            });
        let _ = tx.send(result);
    });
    let stream = rx.await.map_err(|_| std::io::Error::other("the netns connect thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}
