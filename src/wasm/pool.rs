//! The daemon's preloaded programs (`[wasm] preloaded`): a `cricket
//! wasm-preload` process (see `preload`) per program whose containers
//! started recently, which forks the monitors of its next containers. A
//! program is preloaded once a container of it was created the usual way
//! (its code is in the cache by then). It is let go when it starts nothing
//! for `preload_idle_secs`, when more programs want preloading than
//! `preloaded` allows (the least recently used goes first), or when its
//! image is removed. None outlives the daemon: each exits when the daemon's
//! end of its socket closes.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe::Receiver;

use super::preload::ACCEPTED;
use crate::config::WasmConfig;
use crate::sandbox::namespaces::helper_command;

/// How long a preloading process may take to load its program.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to take a request (it forks one monitor at a time).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A program as the cache knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Program {
    pub image: String,
    /// Its path in the image's rootfs.
    pub path: PathBuf,
    pub engine: String,
}

pub struct Pool {
    cache: PathBuf,
    config: WasmConfig,
    slots: Mutex<HashMap<Program, Slot>>,
}

struct Slot {
    state: State,
    /// Its last request, or when it started, or failed to.
    used: Instant,
}

enum State {
    Starting,
    Ready(Arc<Preloader>),
    /// Not tried again for `preload_idle_secs`.
    Failed,
}

/// A running `cricket wasm-preload`; dropping the last handle lets it go.
pub struct Preloader {
    socket: OwnedFd,
    pid: u32,
}

/// The pipes of a monitor a preloading process forked: its stdout (the
/// acknowledgement read) and its stderr.
pub struct Forked {
    pub stdout: BufReader<Receiver>,
    pub stderr: Receiver,
}

impl Pool {
    pub fn new(cache: PathBuf, config: WasmConfig) -> Pool {
        Pool { cache, config, slots: Mutex::default() }
    }

    /// The program's preloading process, if it is running.
    pub fn get(&self, program: &Program) -> Option<Arc<Preloader>> {
        let mut slots = self.slots.lock().unwrap();
        let slot = slots.get_mut(program)?;
        let State::Ready(p) = &slot.state else { return None };
        slot.used = Instant::now();
        Some(p.clone())
    }

    /// Starts preloading `program` in the background, unless that is off,
    /// running, or failed lately.
    pub fn preload(self: &Arc<Self>, program: Program) {
        if self.config.preloaded == 0 {
            return;
        }
        let idle = Duration::from_secs(self.config.preload_idle_secs);
        {
            let mut slots = self.slots.lock().unwrap();
            match slots.get(&program) {
                Some(Slot { state: State::Failed, used }) if used.elapsed() >= idle => {}
                Some(_) => return,
                None => {}
            }
            slots.remove(&program);
            while slots.len() >= self.config.preloaded {
                let oldest = slots
                    .iter()
                    .filter(|(_, s)| !matches!(s.state, State::Starting))
                    .min_by_key(|(_, s)| s.used)
                    .map(|(p, _)| p.clone());
                match oldest {
                    Some(p) => slots.remove(&p),
                    None => return,
                };
            }
            slots.insert(program.clone(), Slot { state: State::Starting, used: Instant::now() });
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let started = pool.start(&program).await;
            let mut slots = pool.slots.lock().unwrap();
            // Forgotten meanwhile (its image removed): dropping it lets it go.
            let Some(slot) = slots.get_mut(&program).filter(|s| matches!(s.state, State::Starting)) else { return };
            slot.used = Instant::now();
            match started {
                Ok(p) => {
                    tracing::info!(image = %program.image, program = %program.path.display(), pid = p.pid, "wasm program preloaded");
                    slot.state = State::Ready(p);
                }
                Err(e) => {
                    tracing::warn!(image = %program.image, program = %program.path.display(), error = %e, "preloading a wasm program");
                    slot.state = State::Failed;
                }
            }
        });
    }

    /// Lets `preloader` go after it failed to take a request.
    pub fn lost(&self, program: &Program, preloader: &Preloader) {
        let mut slots = self.slots.lock().unwrap();
        if slots.get(program).is_some_and(|s| matches!(&s.state, State::Ready(p) if p.pid == preloader.pid)) {
            slots.remove(program);
        }
    }

    /// Lets the programs of a removed image go.
    pub fn forget_image(&self, image: &str) {
        self.slots.lock().unwrap().retain(|p, _| p.image != image);
    }

    /// Runs a preloading process for `program` until it reports ready.
    async fn start(self: &Arc<Self>, program: &Program) -> Result<Arc<Preloader>, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        // Its end blocks: the process waits in poll and recvmsg.
        nix::fcntl::fcntl(theirs.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
            .map_err(|e| format!("socket flags: {e}"))?;
        let mut child = helper_command()
            .arg("wasm-preload")
            .arg("--cache")
            .arg(&self.cache)
            .arg("--engine")
            .arg(&program.engine)
            .arg("--image")
            .arg(&program.image)
            .arg("--program")
            .arg(&program.path)
            .arg("--idle-secs")
            .arg(self.config.preload_idle_secs.to_string())
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start cricket wasm-preload: {e}"))?;
        let pid = child.id().ok_or("cricket wasm-preload exited at once")?;
        let watched = program.clone();
        let pool = Arc::downgrade(self);
        // Reaps it, and forgets it when it exits on its own (idle, or killed).
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(pool) = pool.upgrade() {
                let mut slots = pool.slots.lock().unwrap();
                if slots.get(&watched).is_some_and(|s| matches!(&s.state, State::Ready(p) if p.pid == pid)) {
                    slots.remove(&watched);
                }
            }
        });
        // SAFETY: an OwnedFd stays open and keeps its descriptor for the AsyncFd's life.
        let socket = unsafe { AsyncFd::register(ours) }.map_err(|e| format!("watching the socket: {e}"))?;
        let reply = tokio::time::timeout(LOAD_TIMEOUT, async {
            loop {
                let mut ready = socket.readable().await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; 4096];
                match ready.try_io(|s| Ok(nix::sys::socket::recv(s.as_raw_fd(), &mut buf, MsgFlags::empty())?)) {
                    Ok(Ok(n)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_would_block) => continue,
                }
            }
        })
        .await
        .map_err(|_| format!("it did not load the program within {LOAD_TIMEOUT:?}"))??;
        match reply.as_str() {
            "ready" => Ok(Arc::new(Preloader { socket: socket.into_inner(), pid })),
            "" => Err("it exited while loading the program".into()),
            other => Err(other.strip_prefix("failed: ").unwrap_or(other).to_string()),
        }
    }
}

impl Preloader {
    /// Asks for the monitor of the container whose `monitor.json` is at
    /// `config`. None when the process took no request (it exited, or its
    /// queue is full): nothing was forked, the caller starts the monitor itself.
    pub async fn fork_monitor(&self, config: &Path) -> Result<Option<Forked>, String> {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let ((out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?);
        let fds = [out_w.as_raw_fd(), err_w.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(config.as_os_str().as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        drop((out_w, err_w));
        if sent.is_err() {
            return Ok(None);
        }
        let receiver = |fd: OwnedFd| Receiver::from_owned_fd(fd).map_err(|e| format!("monitor pipe: {e}"));
        let mut stdout = BufReader::new(receiver(out_r)?);
        let stderr = receiver(err_r)?;
        let mut line = String::new();
        // On a timeout the pipes close: a late acknowledgement fails, and nothing is forked.
        match tokio::time::timeout(ACCEPT_TIMEOUT, stdout.read_line(&mut line)).await {
            Err(_) => Err(format!("the wasm program's preloading process took no request within {ACCEPT_TIMEOUT:?}")),
            Ok(Err(e)) => Err(format!("reading the preloading process's reply: {e}")),
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(_)) if line.trim_end() == ACCEPTED => Ok(Some(Forked { stdout, stderr })),
            Ok(Ok(_)) => Err(format!("bad reply from the preloading process: {line:?}")),
        }
    }
}
