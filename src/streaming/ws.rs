//! Exec and Attach over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary
//! messages whose first byte names the channel: 0 stdin, 1 stdout, 2 stderr,
//! 3 error (the v4 status), 4 resize; v5 adds 255, the client closing one of
//! its channels ([255, 0] ends stdin).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::attach;
use super::exec::{self, Io, Output};
use super::http::IDLE_TIMEOUT;
use super::protocol::Protocol;
use super::session::idle;
use crate::container::Containers;

pub const SUBPROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// How long the client gets to answer our close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The client's first subprotocol this server speaks.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|o| SUBPROTOCOLS.into_iter().find(|s| *s == o))
}

/// What a WebSocket session serves.
pub enum Target {
    Exec(ExecRequest, Arc<Containers>),
    Attach(AttachRequest, PathBuf),
}

pub async fn serve(upgraded: hyper::upgrade::Upgraded, subprotocol: &str, target: Target) {
    let (stdin, stdout, stderr, tty) = match &target {
        Target::Exec(r, _) => (r.stdin, r.stdout, r.stderr, r.tty),
        Target::Attach(r, _) => (r.stdin, r.stdout, r.stderr, r.tty),
    };
    let v5 = subprotocol == SUBPROTOCOLS[0];
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(16);
    let (closed_tx, closed) = watch::channel(false);
    let activity = Arc::new(AtomicU64::new(0));
    let (read_activity, write_activity) = (activity.clone(), activity.clone());
    let read = async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(message)) = source.next().await {
            read_activity.fetch_add(1, Ordering::Relaxed);
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            match channel {
                STDIN if !payload.is_empty() => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(payload.to_vec()).await;
                    }
                }
                RESIZE => {
                    let _ = resize_tx.send(payload.to_vec()).await;
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    };
    let reader = tokio::spawn(async move {
        tokio::select! {
            () = read => {}
            () = idle(activity, IDLE_TIMEOUT) => tracing::info!(
                "WebSocket exec idle for {}s; closing it", IDLE_TIMEOUT.as_secs()
            ),
        }
        let _ = closed_tx.send(true);
    });
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = out_rx.recv().await {
            let mut message = Vec::with_capacity(1 + data.len());
            message.push(channel);
            message.extend_from_slice(&data);
            write_activity.fetch_add(1, Ordering::Relaxed);
            if sink.send(Message::Binary(message.into())).await.is_err() {
                return;
            }
        }
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });
    let output = |on: bool, channel: u8| on.then(|| Output::Channel(out_tx.clone(), channel));
    let io = Io {
        stdin: stdin.then_some(stdin_rx),
        resize: tty.then_some(resize_rx),
        stdout: output(stdout, STDOUT),
        stderr: output(stderr && !tty, STDERR),
        closed,
    };
    let exit = match &target {
        Target::Exec(req, containers) => exec::run(io, req, containers).await,
        Target::Attach(_, socket) => attach::bridge(io, tty, socket).await,
    };
    if let Some(exit) = exit {
        if let Some(report) = Protocol::V4.exit_report(&exit) {
            let _ = out_tx.send((ERROR, report)).await;
        }
    }
    drop(out_tx);
    let _ = writer.await;
    let abort = reader.abort_handle();
    if tokio::time::timeout(CLOSE_GRACE, reader).await.is_err() {
        abort.abort();
    }
}

/// A byte stream carried in binary WebSocket messages, both ways: the other
/// end of the returned pipe sees the tunnelled bytes.
pub async fn tunnel(upgraded: hyper::upgrade::Upgraded) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut read_half, mut write_half) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) if write_half.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = write_half.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
        let _ = sink.close().await;
    });
    theirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocols_follow_the_clients_order() {
        assert_eq!(negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(["base64.channel.k8s.io", "v5.channel.k8s.io"]), Some("v5.channel.k8s.io"));
        assert_eq!(negotiate(["channel.k8s.io"]), None);
    }
}
