//! An exec session over SPDY: gather the client's streams, run the command
//! through the `cricket exec` helper (on a pty when asked), pump the streams,
//! and report how it ended on the error stream.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::ExecRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::protocol::{Exit, Protocol};
use super::pty;
use super::session::{Sender, Session, Stream};
use crate::container::Containers;

/// How long the client has to open all the streams it needs.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command exits, how long its output may still drain.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The streams a request asked for.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Default)]
pub struct Streams {
    pub error: Option<Stream>,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, want: Wanted, protocol: Protocol) -> bool {
        let resize = want.tty && protocol >= Protocol::V3;
        self.error.is_some()
            && (!want.stdin || self.stdin.is_some())
            && (!want.stdout || self.stdout.is_some())
            && (!want.stderr || want.tty || self.stderr.is_some())
            && (!resize || self.resize.is_some())
    }

    /// The SPDY streams as a session's Io; stdin and resize are taken out.
    pub fn io(&mut self, session: &Session) -> Io {
        let output = |s: &Option<Stream>| s.as_ref().map(|s| Output::Spdy(session.sender.clone(), s.id));
        Io {
            stdout: output(&self.stdout),
            stderr: output(&self.stderr),
            stdin: self.stdin.take().map(|s| s.data),
            resize: self.resize.take().map(|s| s.data),
            closed: session.closed.clone(),
        }
    }

    pub fn add(&mut self, stream: Stream) {
        let slot = match stream.headers.get("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            other => {
                tracing::debug!(stream = stream.id, kind = ?other, "ignoring a stream of unknown type");
                return;
            }
        };
        *slot = Some(stream);
    }
}

/// Waits for the client to open every stream `want` needs; None if it doesn't in time.
pub async fn gather(session: &mut Session, want: Wanted, protocol: Protocol) -> Option<Streams> {
    let mut streams = Streams::default();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        while !streams.complete(want, protocol) {
            match session.streams.recv().await {
                Some(stream) => streams.add(stream),
                None => return false,
            }
        }
        true
    })
    .await;
    (gathered == Ok(true)).then_some(streams)
}

pub async fn serve(mut session: Session, protocol: Protocol, req: ExecRequest, containers: Arc<Containers>) {
    let want = Wanted { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    let Some(mut streams) = gather(&mut session, want, protocol).await else {
        tracing::info!(container = %req.container_id, "exec: the client did not open its streams; closing");
        return session.finish().await;
    };
    let sender = session.sender.clone();
    let io = streams.io(&session);
    if let Some(exit) = run(io, &req, &containers).await {
        let error = streams.error.as_ref().map(|s| s.id).expect("gathered");
        if let Some(report) = protocol.exit_report(&exit) {
            sender.data(error, report).await;
        }
        sender.finish(error).await;
    }
    session.finish().await;
}

/// Where a command's output goes: a SPDY stream, or a channel of a WebSocket.
#[derive(Clone)]
pub enum Output {
    Spdy(Sender, u32),
    Channel(mpsc::Sender<(u8, Vec<u8>)>, u8),
}

impl Output {
    /// False once the client is gone.
    pub async fn data(&self, data: Vec<u8>) -> bool {
        match self {
            Output::Spdy(sender, id) => sender.data(*id, data).await,
            Output::Channel(sender, channel) => sender.send((*channel, data)).await.is_ok(),
        }
    }

    pub async fn finish(&self) {
        // WebSocket channels end with the connection.
        if let Output::Spdy(sender, id) = self {
            sender.finish(*id).await;
        }
    }
}

/// A session's streams, whatever the transport.
pub struct Io {
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub resize: Option<mpsc::Receiver<Vec<u8>>>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    /// Becomes true when the client is gone.
    pub closed: watch::Receiver<bool>,
}

/// The started command and the tasks moving its streams.
struct Running {
    child: tokio::process::Child,
    /// Output to the client; they end at the command's EOF.
    pumps: Vec<JoinHandle<()>>,
    /// Input from the client; they end when the client closes them.
    inputs: Vec<JoinHandle<()>>,
}

/// Runs the command; None when the client went away (the command is killed).
pub async fn run(mut io: Io, req: &ExecRequest, containers: &Containers) -> Option<Exit> {
    let mut prepared = match containers.prepare_exec(&req.container_id, req.cmd.clone(), req.tty) {
        Ok(p) => p,
        Err(e) => return Some(Exit::Error(e.to_string())),
    };
    let started =
        if req.tty { on_pty(&mut prepared.command, &mut io).await } else { on_pipes(&mut prepared.command, &mut io) };
    let Running { mut child, pumps, inputs } = match started {
        Ok(r) => r,
        Err(e) => return Some(Exit::Error(format!("cannot start the exec helper: {e}"))),
    };
    let mut closed = io.closed.clone();
    let status = tokio::select! {
        status = child.wait() => status,
        () = async { drop(closed.wait_for(|c| *c).await) } => {
            tracing::info!(container = %req.container_id, "exec client went away; killing the command");
            let _ = child.kill().await;
            inputs.iter().chain(&pumps).for_each(|t| t.abort());
            return None;
        }
    };
    inputs.iter().for_each(|t| t.abort());
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, pump).await.is_err() {
            abort.abort();
        }
    }
    for out in [&io.stdout, &io.stderr].into_iter().flatten() {
        out.finish().await;
    }
    Some(match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Exit::Code(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        Err(e) => Exit::Error(format!("waiting for the exec helper: {e}")),
    })
}

/// Starts the command on a terminal the helper makes inside the container
/// and sends back over its stdin; the master carries stdout, stdin and window
/// sizes. The helper's own errors (stderr) go to the client's stdout too.
async fn on_pty(command: &mut tokio::process::Command, io: &mut Io) -> std::io::Result<Running> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let child =
        command.stdin(std::os::fd::OwnedFd::from(theirs)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    // The Command keeps its stdin open; drop our copy so a helper that fails early reads as EOF.
    command.stdin(Stdio::null());
    let mut running = Running { child, pumps: Vec::new(), inputs: Vec::new() };
    if let (Some(to), Some(from)) = (io.stdout.clone(), running.child.stderr.take()) {
        running.pumps.push(tokio::spawn(pump(from, to)));
    }
    let received = tokio::task::spawn_blocking(move || crate::runtime::oci::receive_fd(&ours)).await;
    // No terminal: the helper failed first; its message and exit code tell why.
    let Ok(Ok(master)) = received else { return Ok(running) };
    let master = Arc::new(pty::Master::new(master)?);
    if let Some(out) = io.stdout.clone() {
        let m = master.clone();
        running.pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n) = m.read(&mut buf).await {
                if n == 0 || !out.data(buf[..n].to_vec()).await {
                    break;
                }
            }
        }));
    }
    if let Some(mut data) = io.stdin.take() {
        let m = master.clone();
        running.inputs.push(tokio::spawn(async move {
            while let Some(chunk) = data.recv().await {
                if m.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        }));
    }
    if let Some(resize) = io.resize.take() {
        running.inputs.push(tokio::spawn(resize_loop(resize, master)));
    }
    Ok(running)
}

fn on_pipes(command: &mut tokio::process::Command, io: &mut Io) -> std::io::Result<Running> {
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let child = command
        .stdin(piped(io.stdin.is_some()))
        .stdout(piped(io.stdout.is_some()))
        .stderr(piped(io.stderr.is_some()))
        .spawn()?;
    let mut running = Running { child, pumps: Vec::new(), inputs: Vec::new() };
    if let (Some(to), Some(from)) = (io.stdout.clone(), running.child.stdout.take()) {
        running.pumps.push(tokio::spawn(pump(from, to)));
    }
    if let (Some(to), Some(from)) = (io.stderr.clone(), running.child.stderr.take()) {
        running.pumps.push(tokio::spawn(pump(from, to)));
    }
    if let (Some(mut data), Some(mut to)) = (io.stdin.take(), running.child.stdin.take()) {
        running.inputs.push(tokio::spawn(async move {
            while let Some(chunk) = data.recv().await {
                if to.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            // Dropping `to` closes the command's stdin: the client half-closed.
        }));
    }
    Ok(running)
}

async fn pump(mut from: impl AsyncRead + Unpin, to: Output) {
    let mut buf = vec![0u8; 32 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || !to.data(buf[..n].to_vec()).await {
            break;
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

async fn resize_loop(data: mpsc::Receiver<Vec<u8>>, master: Arc<pty::Master>) {
    read_sizes(data, |size| {
        if let Err(e) = master.resize(size.width, size.height) {
            tracing::debug!("exec terminal resize: {e}");
        }
    })
    .await
}

/// The resize stream carries a sequence of JSON objects: {"Width":80,"Height":24}.
pub async fn read_sizes(mut data: mpsc::Receiver<Vec<u8>>, mut apply: impl FnMut(TerminalSize)) {
    let mut buf = Vec::new();
    while let Some(chunk) = data.recv().await {
        buf.extend_from_slice(&chunk);
        let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        let mut used = 0;
        while let Some(size) = sizes.next() {
            match size {
                Ok(size) => {
                    used = sizes.byte_offset();
                    apply(size);
                }
                Err(e) if e.is_eof() => break,
                Err(e) => {
                    tracing::debug!("exec resize stream: {e}; ignoring the rest");
                    return;
                }
            }
        }
        buf.drain(..used);
    }
}
