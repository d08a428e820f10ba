//! One SPDY/3.1 connection, server side: a reader task turns frames into
//! streams opened by the client and their data; a writer task owns the
//! outgoing header compression. Flow control is not enforced on sends (as in
//! spdystream, which Kubernetes clients use); received data is acknowledged
//! with WINDOW_UPDATE so peers that do enforce it keep sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::spdy::frame::{RST_CANCEL, RST_PROTOCOL_ERROR};
use super::spdy::{Frame, HeaderCompressor, HeaderDecompressor, Headers, FLAG_FIN};

/// Chunks of received data buffered per stream before the reader waits.
const STREAM_BUFFER: usize = 16;
const READ_CHUNK: usize = 32 << 10;
/// How long the client gets to close the connection after GOAWAY.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Received data; closed when the client half-closes or resets the stream.
    pub data: mpsc::Receiver<Vec<u8>>,
}

enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Reset(u32, u32),
    Pong(u32),
    WindowUpdate(u32, u32),
    GoAway,
}

/// Sends on the connection; cheap to clone.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Out>);

impl Sender {
    /// Sends data on a stream; false once the connection is gone.
    pub async fn data(&self, stream: u32, data: Vec<u8>) -> bool {
        self.0.send(Out::Data(stream, data, false)).await.is_ok()
    }

    /// Half-closes a stream from this side.
    pub async fn finish(&self, stream: u32) {
        let _ = self.0.send(Out::Data(stream, Vec::new(), true)).await;
    }

    /// Says goodbye; the writer flushes what is queued, sends GOAWAY and closes.
    pub async fn go_away(&self) {
        let _ = self.0.send(Out::GoAway).await;
    }
}

pub struct Session {
    /// Streams in the order the client opened them; closed when the connection ends.
    pub streams: mpsc::Receiver<Stream>,
    pub sender: Sender,
    /// Becomes true when the client is gone (EOF, error, GOAWAY, idle timeout).
    pub closed: watch::Receiver<bool>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Runs the connection; frames are exchanged until the peer leaves, nothing
    /// moves for `idle_timeout`, or `go_away` is sent.
    pub fn start<S>(io: S, idle_timeout: Duration) -> Session
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(8);
        let (closed_tx, closed) = watch::channel(false);
        let activity = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_loop(write, out_rx, activity.clone()));
        let reader =
            Reader { out: out_tx.clone(), streams: streams_tx, open: HashMap::new(), activity: activity.clone() };
        let reader = tokio::spawn(async move {
            tokio::select! {
                result = reader.run(read) => {
                    if let Err(e) = result {
                        tracing::debug!("streaming connection: {e}");
                    }
                }
                () = idle(activity, idle_timeout) => tracing::info!(
                    "streaming connection idle for {}s; closing it", idle_timeout.as_secs()
                ),
            }
            let _ = closed_tx.send(true);
        });
        Session { streams, sender: Sender(out_tx), closed, writer, reader }
    }

    /// Waits until everything queued is written and the connection is shut.
    pub async fn finish(self) {
        self.sender.go_away().await;
        drop(self.sender);
        let _ = self.writer.await;
        // The client closes its side on GOAWAY; one that does not is cut off.
        let abort = self.reader.abort_handle();
        if tokio::time::timeout(CLOSE_GRACE, self.reader).await.is_err() {
            abort.abort();
        }
    }
}

/// Returns once `activity` has not moved for `timeout`.
pub(super) async fn idle(activity: Arc<AtomicU64>, timeout: Duration) {
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] super::spdy::frame::FrameError),
    #[error("stream {0}: {1}")]
    Headers(u32, super::spdy::headers::HeaderError),
}

struct Reader {
    out: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
    open: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    activity: Arc<AtomicU64>,
}

impl Reader {
    async fn run(mut self, mut read: impl AsyncRead + Unpin) -> Result<(), SessionError> {
        let mut decompressor = HeaderDecompressor::default();
        let mut buf = Vec::with_capacity(READ_CHUNK);
        loop {
            while let Some((frame, used)) = Frame::parse(&buf)? {
                buf.drain(..used);
                if !self.handle(frame, &mut decompressor).await? {
                    return Ok(());
                }
            }
            let mut chunk = vec![0u8; READ_CHUNK];
            let n = read.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            self.activity.fetch_add(1, Ordering::Relaxed);
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Handles one frame; false when the client ended the session.
    async fn handle(&mut self, frame: Frame, decompressor: &mut HeaderDecompressor) -> Result<bool, SessionError> {
        match frame {
            Frame::SynStream { stream_id, flags, header_block, .. } => {
                // Decompress even a refused stream's headers: the zlib state is shared.
                let headers =
                    decompressor.decompress(&header_block).map_err(|e| SessionError::Headers(stream_id, e))?;
                if stream_id == 0 || self.open.contains_key(&stream_id) {
                    let _ = self.out.send(Out::Reset(stream_id, RST_PROTOCOL_ERROR)).await;
                    return Ok(true);
                }
                let (tx, data) = mpsc::channel(STREAM_BUFFER);
                if flags & FLAG_FIN == 0 {
                    self.open.insert(stream_id, tx);
                }
                let _ = self.out.send(Out::Reply(stream_id)).await;
                if self.streams.send(Stream { id: stream_id, headers, data }).await.is_err() {
                    let _ = self.out.send(Out::Reset(stream_id, RST_CANCEL)).await;
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let len = data.len() as u32;
                if let Some(tx) = self.open.get(&stream_id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        self.open.remove(&stream_id);
                    }
                }
                if flags & FLAG_FIN != 0 {
                    self.open.remove(&stream_id);
                }
                if len > 0 {
                    let _ = self.out.send(Out::WindowUpdate(stream_id, len)).await;
                }
            }
            Frame::Headers { header_block, stream_id, .. } | Frame::SynReply { header_block, stream_id, .. } => {
                decompressor.decompress(&header_block).map_err(|e| SessionError::Headers(stream_id, e))?;
            }
            Frame::RstStream { stream_id, .. } => {
                self.open.remove(&stream_id);
            }
            // Client-initiated pings have odd ids; echo them.
            Frame::Ping { id } if id % 2 == 1 => {
                let _ = self.out.send(Out::Pong(id)).await;
            }
            Frame::GoAway { .. } => return Ok(false),
            Frame::Ping { .. } | Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
        Ok(true)
    }
}

async fn write_loop(mut write: impl AsyncWrite + Unpin, mut out: mpsc::Receiver<Out>, activity: Arc<AtomicU64>) {
    let mut compressor = HeaderCompressor::default();
    let mut last_stream = 0;
    while let Some(item) = out.recv().await {
        let (frame, last) = match item {
            Out::Reply(stream_id) => {
                last_stream = last_stream.max(stream_id);
                let header_block = compressor.compress(&Headers::default());
                (Frame::SynReply { stream_id, flags: 0, header_block }, false)
            }
            Out::Data(stream_id, data, fin) => {
                (Frame::Data { stream_id, flags: if fin { FLAG_FIN } else { 0 }, data }, false)
            }
            Out::Reset(stream_id, status) => (Frame::RstStream { stream_id, status }, false),
            Out::Pong(id) => (Frame::Ping { id }, false),
            Out::WindowUpdate(stream_id, delta) => (Frame::WindowUpdate { stream_id, delta }, false),
            Out::GoAway => (Frame::GoAway { last_good_stream_id: last_stream, status: 0 }, true),
        };
        activity.fetch_add(1, Ordering::Relaxed);
        let written = async {
            write.write_all(&frame.encode()).await?;
            write.flush().await
        };
        if written.await.is_err() {
            return;
        }
        if last {
            break;
        }
    }
    let _ = write.shutdown().await;
}
