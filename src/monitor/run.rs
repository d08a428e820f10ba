//! The monitor's event loop: one poll(2) over the container's output, the
//! signalfd (SIGCHLD: the init and any orphan reparented to this subreaper)
//! and the control socket, until the init has exited and its output drained.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::attach::{self, Attach, Input};
use super::config::MonitorConfig;
use super::control::{Control, Request};
use super::create::Created;
use super::exit::{self, Outcome};
use super::log::{CriLog, Stream};
use super::stdin::Stdin;
use crate::runtime::oci::OciRuntime;
use crate::runtime::ContainerInit;

/// After the init exits, how long output is still read: a process left in a
/// shared PID namespace may hold the pipes open for good.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;
const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

#[derive(Clone, Copy)]
enum Source {
    Output(usize),
    Signals,
    Listener,
    Conn(RawFd),
    AttachListener,
    AttachConn(RawFd),
    Stdin,
}

/// Where the monitor's clients reach it: the CRI log file, the control and attach sockets.
pub struct Ends {
    pub log: CriLog,
    pub control: Control,
    pub attach: Attach,
    pub stdin: Stdin,
}

pub struct Monitor {
    cfg: MonitorConfig,
    dir: PathBuf,
    log: CriLog,
    control: Control,
    attach: Attach,
    signals: SignalFd,
    /// Until `start` consumes it.
    init: Option<Box<dyn ContainerInit>>,
    init_pid: i32,
    outputs: [Option<OwnedFd>; 2],
    /// Kept open for attach; closed when the init exits.
    stdin: Stdin,
    runtime: Option<OciRuntime>,
    oom_before: u64,
    started: bool,
    start_error: Option<String>,
    /// The init's wait status and when it was reaped (ns).
    exited: Option<(WaitStatus, i64)>,
    drain_deadline: Option<Instant>,
}

impl Monitor {
    pub fn new(
        cfg: MonitorConfig,
        dir: PathBuf,
        ends: Ends,
        signals: SignalFd,
        created: Created,
        oom_before: u64,
    ) -> Monitor {
        let Ends { log, control, attach, stdin } = ends;
        let init_pid = created.init.pid();
        Monitor {
            cfg,
            dir,
            log,
            control,
            attach,
            signals,
            init: Some(created.init),
            init_pid,
            outputs: [created.streams.stdout, created.streams.stderr],
            stdin,
            runtime: created.runtime,
            oom_before,
            started: false,
            start_error: None,
            exited: None,
            drain_deadline: None,
        }
    }

    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kill_init(&self) {
        let _ = kill(Pid::from_raw(self.init_pid), Signal::SIGKILL);
    }

    pub fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(8);
        let mut sources: Vec<Source> = Vec::with_capacity(8);
        loop {
            let now = Instant::now();
            self.control.expire(now);
            if let Some(deadline) = self.drain_deadline {
                if self.outputs.iter().all(Option::is_none) || now >= deadline {
                    break;
                }
            }
            fds.clear();
            sources.clear();
            let mut watch_for = |fd: RawFd, events: libc::c_short, source: Source| {
                fds.push(libc::pollfd { fd, events, revents: 0 });
                sources.push(source);
            };
            if let Some(fd) = self.stdin.waiting_fd() {
                watch_for(fd, libc::POLLOUT, Source::Stdin);
            }
            let mut watch = |fd: RawFd, source: Source| watch_for(fd, libc::POLLIN, source);
            for (i, out) in self.outputs.iter().enumerate() {
                if let Some(fd) = out {
                    watch(fd.as_raw_fd(), Source::Output(i));
                }
            }
            watch(self.signals.as_raw_fd(), Source::Signals);
            if let Some(fd) = self.control.listener_fd() {
                watch(fd, Source::Listener);
            }
            for fd in self.control.conn_fds() {
                watch(fd, Source::Conn(fd));
            }
            watch(self.attach.listener_fd(), Source::AttachListener);
            // Backpressure: what clients send waits in their sockets until the container reads.
            if !self.stdin.is_full() {
                for fd in self.attach.client_fds() {
                    watch(fd, Source::AttachConn(fd));
                }
            }
            let deadline = [self.drain_deadline, self.control.next_deadline()].into_iter().flatten().min();
            let timeout = deadline.map_or(-1, |d| d.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1);
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    eprintln!("monitor: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for (pfd, source) in fds.iter().zip(sources.iter()) {
                if pfd.revents == 0 {
                    continue;
                }
                match *source {
                    Source::Output(i) => self.read_output(i),
                    Source::Signals => self.on_signals(),
                    Source::Listener => self.control.accept(),
                    Source::Conn(fd) => {
                        if let Some(pending) = self.control.read(fd) {
                            let starting = matches!(pending.request, Request::Start) && !self.started;
                            let reply = self.handle(pending.request);
                            self.control.reply(pending, &reply);
                            if starting && self.started {
                                // The start path ran once; shed it after the reply, off StartContainer's time.
                                crate::resident::shed_startup_pages();
                            }
                        }
                    }
                    Source::AttachListener => self.attach.accept(),
                    Source::AttachConn(fd) => {
                        for input in self.attach.read(fd) {
                            self.on_attach_input(input);
                        }
                    }
                    Source::Stdin => self.stdin.flush(),
                }
            }
        }
        self.finish();
    }

    fn read_output(&mut self, i: usize) {
        let Some(fd) = &self.outputs[i] else { return };
        let mut buf = [0u8; READ_CHUNK];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => self.close_output(i),
            Ok(n) => {
                self.log.feed(STREAMS[i], &buf[..n]);
                self.attach.broadcast([attach::STDOUT, attach::STDERR][i], &buf[..n]);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // A pty master reads EIO once every replica is closed: its end of file.
            Err(Errno::EIO) => self.close_output(i),
            Err(e) => {
                eprintln!("monitor: reading container {:?}: {e}", STREAMS[i]);
                self.close_output(i);
            }
        }
    }

    fn on_attach_input(&mut self, input: Input) {
        match input {
            Input::Stdin(data) => self.stdin.write(&data),
            Input::Resize { cols, rows } => {
                if let (true, Some(master)) = (self.cfg.tty, &self.outputs[0]) {
                    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ on the pty master we own, with a valid winsize.
                    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                }
            }
            // stdin_once: the first client to finish with stdin closes it for good.
            Input::StdinEnd if self.cfg.stdin_once && !self.cfg.tty => self.stdin.end(),
            Input::StdinEnd => {}
        }
    }

    fn close_output(&mut self, i: usize) {
        self.outputs[i] = None;
        self.log.finish(STREAMS[i]);
    }

    fn on_signals(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if status.pid() == Some(Pid::from_raw(self.init_pid)) && self.exited.is_none() {
                        self.on_init_exit(status);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("monitor: waitpid: {e}");
                    return;
                }
            }
        }
    }

    /// Collects whatever exited meanwhile (processes the runtime just killed
    /// were reparented here); anything later goes to the monitor's own reaper.
    fn reap_orphans(&self) {
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }

    fn on_init_exit(&mut self, status: WaitStatus) {
        self.exited = Some((status, crate::state::now_nanos()));
        self.drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        self.init = None;
        self.stdin.close();
    }

    fn handle(&mut self, request: Request) -> String {
        match request {
            Request::Start => self.start(),
            Request::Reopen => match self.log.reopen() {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            Request::Unknown => "error unknown request".into(),
        }
    }

    fn start(&mut self) -> String {
        if self.exited.is_some() {
            return "error container has exited".into();
        }
        if let Some(e) = &self.start_error {
            return format!("error start already failed: {e}");
        }
        let Some(init) = self.init.take() else { return "error container already started".into() };
        match init.start() {
            Ok(()) => {
                self.started = true;
                "ok".into()
            }
            Err(e) => {
                // The workload never ran; make sure the init goes away so the exit gets recorded.
                self.kill_init();
                let reply = format!("error {e}");
                self.start_error = Some(e);
                reply
            }
        }
    }

    /// Flushes the log, removes runtime state and the control socket, then
    /// writes the exit record: once it exists, nothing else is left to clean up.
    fn finish(mut self) {
        for (i, stream) in STREAMS.into_iter().enumerate() {
            if self.outputs[i].take().is_some() {
                eprintln!(
                    "monitor: container {stream:?} still open {}s after exit; stopped reading",
                    DRAIN_TIMEOUT.as_secs()
                );
            }
            self.log.finish(stream);
        }
        let Some((status, finished_at)) = self.exited else { return };
        let outcome = Outcome {
            status,
            finished_at,
            started: self.started,
            start_error: self.start_error.take(),
            oom_before: self.oom_before,
            oom_after: exit::oom_kills(&self.cfg.cgroup_dirs),
        };
        if let Some(runtime) = &self.runtime {
            if let Err(e) = runtime.delete(&self.cfg.id) {
                eprintln!("monitor: {e}");
            }
        }
        self.reap_orphans();
        self.control.remove_socket();
        self.attach.remove_socket();
        let record = outcome.record();
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|data| crate::state::write_volatile(&self.cfg.exit_file, &data));
        if let Err(e) = written {
            eprintln!("monitor: writing exit record {}: {e}", self.cfg.exit_file.display());
        }
    }
}
