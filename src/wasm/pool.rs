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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe::Receiver;

use super::preload::ACCEPTED;
use crate::config::WasmConfig;
use crate::container::Proc;
use crate::sandbox::namespaces::helper_command;

/// How long a preloading process may take to load its program.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to take a request (it forks one monitor at a time);
/// one that takes longer is stuck (stopped, say) and is killed.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(3);
/// After the kill, how long its last reply may take to show.
const KILLED_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("socketpair: {0}")]
    Socket(nix::Error),
    #[error("cannot start cricket wasm-preload: {0}")]
    Spawn(std::io::Error),
    #[error("cricket wasm-preload: {0}")]
    Load(String),
    #[error("monitor pipe: {0}")]
    Pipe(std::io::Error),
    #[error("reading the reply of cricket wasm-preload: {0}")]
    Read(std::io::Error),
    #[error("bad reply from cricket wasm-preload: {0:?}")]
    BadReply(String),
}

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
    starts: AtomicU64,
}

struct Slot {
    state: State,
    /// Its last request, or when it started, or failed to.
    used: Instant,
}

enum State {
    /// The `n`th start of a preloading process (told apart from a later one
    /// after the slot was forgotten and taken again).
    Starting(u64),
    Ready(Arc<Preloader>),
    /// Not tried again for `preload_idle_secs`.
    Failed,
}

/// A running `cricket wasm-preload`; dropping the last handle kills it
/// (one that works would exit on its socket's EOF anyway).
pub struct Preloader {
    socket: OwnedFd,
    process: Proc,
}

impl Drop for Preloader {
    fn drop(&mut self) {
        let _ = self.process.signal(libc::SIGKILL);
    }
}

/// A preloading process's answer to a request.
pub enum Reply {
    /// The monitor was forked: its stdout (the acknowledgement read) and stderr.
    Forked { stdout: BufReader<Receiver>, stderr: Receiver },
    /// Nothing was forked; `gone` when the process is of no more use.
    Declined { gone: bool },
}

impl Pool {
    pub fn new(cache: PathBuf, config: WasmConfig) -> Pool {
        Pool { cache, config, slots: Mutex::default(), starts: AtomicU64::new(0) }
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
        let start = self.starts.fetch_add(1, Ordering::Relaxed);
        // Dropped (killed) once the lock is released.
        let mut evicted = Vec::new();
        {
            let mut slots = self.slots.lock().unwrap();
            match slots.get(&program) {
                Some(Slot { state: State::Failed, used }) if used.elapsed() >= idle => {}
                Some(_) => return,
                None => {}
            }
            evicted.extend(slots.remove(&program));
            while slots.len() >= self.config.preloaded {
                let oldest = slots
                    .iter()
                    .filter(|(_, s)| !matches!(s.state, State::Starting(_)))
                    .min_by_key(|(_, s)| s.used)
                    .map(|(p, _)| p.clone());
                match oldest {
                    Some(p) => evicted.extend(slots.remove(&p)),
                    None => return,
                }
            }
            slots.insert(program.clone(), Slot { state: State::Starting(start), used: Instant::now() });
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let started = pool.start(&program).await;
            let mut slots = pool.slots.lock().unwrap();
            // Forgotten meanwhile (its image removed, maybe pulled again): dropping it lets it go.
            let ours = |s: &&mut Slot| matches!(s.state, State::Starting(n) if n == start);
            let Some(slot) = slots.get_mut(&program).filter(ours) else { return };
            slot.used = Instant::now();
            match started {
                Ok(p) => {
                    let pid = p.process.pid;
                    tracing::info!(image = %program.image, program = %program.path.display(), pid, "wasm program preloaded");
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
    pub fn lost(&self, program: &Program, preloader: &Arc<Preloader>) {
        let mut slots = self.slots.lock().unwrap();
        if slots.get(program).is_some_and(|s| matches!(&s.state, State::Ready(p) if Arc::ptr_eq(p, preloader))) {
            // The caller's handle outlives the lock: the kill happens when it drops.
            slots.remove(program);
        }
    }

    /// Lets the programs of a removed image go.
    pub fn forget_image(&self, image: &str) {
        let gone: Vec<(Program, Slot)> = self.slots.lock().unwrap().extract_if(|p, _| p.image == image).collect();
        // Killed here, once the lock is released.
        drop(gone);
    }

    /// Runs a preloading process for `program` until it reports ready.
    async fn start(self: &Arc<Self>, program: &Program) -> Result<Arc<Preloader>, PoolError> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).map_err(PoolError::Socket)?;
        // Its end blocks: the process waits in poll and recvmsg.
        nix::fcntl::fcntl(theirs.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
            .map_err(PoolError::Socket)?;
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
            .map_err(PoolError::Spawn)?;
        // Not reaped before the wait below: the pid is this process's.
        let process = child.id().and_then(|pid| Proc::of(pid as i32));
        let watched = program.clone();
        let pool = Arc::downgrade(self);
        // Reaps it, and forgets it when it exits on its own (idle, or killed).
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let (Some(pool), Some(process)) = (pool.upgrade(), process) {
                let exited = |s: &Slot| matches!(&s.state, State::Ready(p) if p.process == process);
                let gone = {
                    let mut slots = pool.slots.lock().unwrap();
                    slots.get(&watched).is_some_and(exited).then(|| slots.remove(&watched))
                };
                drop(gone);
            }
        });
        let process = process.ok_or_else(|| PoolError::Load("it exited at once".into()))?;
        let preloader = Preloader { socket: ours, process };
        let reply = tokio::time::timeout(LOAD_TIMEOUT, preloader.first_message())
            .await
            .map_err(|_| PoolError::Load(format!("it did not load the program within {LOAD_TIMEOUT:?}")))?
            .map_err(PoolError::Read)?;
        match reply.as_str() {
            "ready" => Ok(Arc::new(preloader)),
            "" => Err(PoolError::Load("it exited while loading the program".into())),
            other => Err(PoolError::Load(other.strip_prefix("failed: ").unwrap_or(other).to_string())),
        }
    }
}

impl Preloader {
    /// Its first message: "ready" or "failed: <reason>" ("" at EOF).
    async fn first_message(&self) -> std::io::Result<String> {
        // SAFETY: the socket stays open, and keeps its descriptor, for the AsyncFd's life.
        let socket = unsafe { AsyncFd::register(self.socket.as_fd()) }?;
        loop {
            let mut ready = socket.readable().await?;
            let mut buf = [0u8; 4096];
            match ready.try_io(|s| Ok(nix::sys::socket::recv(s.as_raw_fd(), &mut buf, MsgFlags::empty())?)) {
                Ok(read) => return read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Asks for the monitor of the container whose `monitor.json` is at
    /// `config`. One that doesn't take the request within ACCEPT_TIMEOUT is
    /// killed, and its reply read again: it may have forked just before.
    pub async fn fork_monitor(&self, config: &Path) -> Result<Reply, PoolError> {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| PoolError::Pipe(e.into()));
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
        match sent {
            Ok(_) => {}
            // Busy with a burst of requests: this one starts its monitor itself.
            Err(nix::errno::Errno::EAGAIN) => return Ok(Reply::Declined { gone: false }),
            Err(_) => return Ok(Reply::Declined { gone: true }),
        }
        let mut stdout = BufReader::new(Receiver::from_owned_fd(out_r).map_err(PoolError::Pipe)?);
        let stderr = Receiver::from_owned_fd(err_r).map_err(PoolError::Pipe)?;
        let mut line = String::new();
        let read = match tokio::time::timeout(ACCEPT_TIMEOUT, stdout.read_line(&mut line)).await {
            Ok(read) => read,
            Err(_) => {
                tracing::warn!(
                    pid = self.process.pid,
                    "cricket wasm-preload took no request in {ACCEPT_TIMEOUT:?}: killed"
                );
                let _ = self.process.signal(libc::SIGKILL);
                tokio::time::timeout(KILLED_TIMEOUT, stdout.read_line(&mut line))
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("no end of output after the kill")))
            }
        };
        match read.map_err(PoolError::Read)? {
            0 => Ok(Reply::Declined { gone: true }),
            _ if line.trim_end() == ACCEPTED => Ok(Reply::Forked { stdout, stderr }),
            _ => Err(PoolError::BadReply(line)),
        }
    }
}
