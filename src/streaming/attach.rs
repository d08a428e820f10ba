//! An attach session over SPDY: the client's streams bridged to the
//! container monitor's attach socket (see `monitor::attach` for its frames).
//! Leaving detaches; the container keeps running.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::AttachRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Mutex;

use super::exec::{gather, read_sizes, Io, Wanted};
use super::protocol::{Exit, Protocol};
use super::session::Session;

const STDIN: u8 = 0;
const RESIZE: u8 = 3;
const STDIN_END: u8 = 4;

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

pub async fn serve(mut session: Session, protocol: Protocol, req: AttachRequest, socket: PathBuf) {
    let want = Wanted { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    let Some(mut streams) = gather(&mut session, want, protocol).await else {
        tracing::info!(container = %req.container_id, "attach: the client did not open its streams; closing");
        return session.finish().await;
    };
    let error = streams.error.as_ref().map(|s| s.id).expect("gathered");
    let sender = session.sender.clone();
    let io = streams.io(&session);
    if let Some(exit) = bridge(io, req.tty, &socket).await {
        if let Some(report) = protocol.exit_report(&exit) {
            sender.data(error, report).await;
        }
        sender.finish(error).await;
    }
    session.finish().await;
}

/// Connects a session's streams to the attach socket until the container
/// exits (`Exit::Code(0)`, the end as kubelet reports it) or the client
/// leaves (None: a detach).
pub async fn bridge(io: Io, tty: bool, socket: &Path) -> Option<Exit> {
    let connected = match crate::sockpath::SocketPath::new(socket) {
        Ok(short) => tokio::net::UnixStream::connect(short.as_path()).await,
        Err(e) => Err(e),
    };
    let conn = match connected {
        Ok(c) => c,
        Err(e) => return Some(Exit::Error(format!("cannot reach the container's monitor: {e}"))),
    };
    let Io { stdin, resize, stdout, stderr, closed } = io;
    let (mut reader, writer) = conn.into_split();
    let writer = Arc::new(Mutex::new(writer));
    let mut inputs = Vec::new();
    if let Some(mut stdin) = stdin {
        let writer = writer.clone();
        inputs.push(tokio::spawn(async move {
            // Marks this client as the stdin user, whose leaving ends a stdin_once container's input.
            if send(&writer, frame(STDIN, b"")).await.is_err() {
                return;
            }
            while let Some(data) = stdin.recv().await {
                if send(&writer, frame(STDIN, &data)).await.is_err() {
                    return;
                }
            }
            let _ = send(&writer, frame(STDIN_END, b"")).await;
        }));
    }
    if let Some(resize) = resize {
        let writer = writer.clone();
        inputs.push(tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let forward = async move {
                while let Some(size) = rx.recv().await {
                    if send(&writer, size).await.is_err() {
                        return;
                    }
                }
            };
            let parse = read_sizes(resize, move |size| {
                let mut payload = size.width.to_be_bytes().to_vec();
                payload.extend_from_slice(&size.height.to_be_bytes());
                let _ = tx.send(frame(RESIZE, &payload));
            });
            tokio::join!(parse, forward);
        }));
    }
    let relay = async {
        // Frames from the monitor until it closes the socket (the container exited).
        let mut header = [0u8; 5];
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                return true;
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut data = vec![0u8; len];
            if reader.read_exact(&mut data).await.is_err() {
                return true;
            }
            // A terminal has one output, which CRI calls stdout.
            let to = if header[0] == crate::monitor::attach::STDERR && !tty { &stderr } else { &stdout };
            if let Some(to) = to {
                if !to.data(data).await {
                    return false;
                }
            }
        }
    };
    let mut closed = closed;
    let container_ended = tokio::select! {
        ended = relay => ended,
        _ = closed.wait_for(|c| *c) => false,
    };
    inputs.iter().for_each(|t| t.abort());
    if !container_ended {
        return None;
    }
    for out in [&stdout, &stderr].into_iter().flatten() {
        out.finish().await;
    }
    Some(Exit::Code(0))
}

async fn send(writer: &Mutex<OwnedWriteHalf>, frame: Vec<u8>) -> std::io::Result<()> {
    writer.lock().await.write_all(&frame).await
}
