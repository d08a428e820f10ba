//! The control socket: one request line per connection, one reply line.
//! Everything is non-blocking with a per-connection deadline, so a client
//! that connects and hangs cannot stall the monitor.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line accepted.
const MAX_REQUEST: usize = 256;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Reopen,
    Unknown,
}

impl Request {
    fn parse(line: &[u8]) -> Request {
        match line.trim_ascii() {
            b"start" => Request::Start,
            b"reopen" => Request::Reopen,
            _ => Request::Unknown,
        }
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

pub struct Control {
    listener: UnixListener,
    path: PathBuf,
    conns: Vec<Conn>,
}

/// A request read from a connection; answer it with `Control::reply`.
pub struct Pending {
    index: usize,
    pub request: Request,
}

impl Control {
    pub fn bind(path: &Path) -> io::Result<Control> {
        let listener = super::sys::bind_private(path)?;
        listener.set_nonblocking(true)?;
        Ok(Control { listener, path: path.to_path_buf(), conns: Vec::new() })
    }

    pub fn listener_fd(&self) -> Option<RawFd> {
        (self.conns.len() < MAX_CONNECTIONS).then(|| self.listener.as_raw_fd())
    }

    pub fn conn_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.conns.iter().map(|c| c.stream.as_raw_fd())
    }

    /// The earliest connection deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|c| c.deadline).min()
    }

    pub fn accept(&mut self) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let deadline = Instant::now() + REQUEST_TIMEOUT;
                        self.conns.push(Conn { stream, buf: Vec::new(), deadline });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        eprintln!("control socket {}: accept: {e}", self.path.display());
                    }
                    return;
                }
            }
        }
    }

    /// Reads from the connection on `fd`; returns its request once the line
    /// is complete (or the client stopped sending). Bad clients are dropped.
    pub fn read(&mut self, fd: RawFd) -> Option<Pending> {
        let index = self.conns.iter().position(|c| c.stream.as_raw_fd() == fd)?;
        let conn = &mut self.conns[index];
        let mut chunk = [0u8; MAX_REQUEST];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.contains(&b'\n') {
                        break;
                    }
                    if conn.buf.len() > MAX_REQUEST {
                        self.reply(Pending { index, request: Request::Unknown }, "error request too long");
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.conns.swap_remove(index);
                    return None;
                }
            }
        }
        let line = conn.buf.split(|&b| b == b'\n').next().unwrap_or_default();
        Some(Pending { index, request: Request::parse(line) })
    }

    /// Sends the one reply line and closes the connection.
    pub fn reply(&mut self, pending: Pending, text: &str) {
        let mut conn = self.conns.swap_remove(pending.index);
        let mut line = text.replace('\n', " ");
        line.push('\n');
        // A fresh socket's buffer holds a short line; a client that left gets nothing.
        let _ = conn.stream.write_all(line.as_bytes());
    }

    /// Drops connections whose deadline passed.
    pub fn expire(&mut self, now: Instant) {
        self.conns.retain(|c| c.deadline > now);
    }

    pub fn remove_socket(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("control socket {}: remove: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(Request::parse(b"start"), Request::Start);
        assert_eq!(Request::parse(b" reopen\r"), Request::Reopen);
        assert_eq!(Request::parse(b"stop"), Request::Unknown);
        assert_eq!(Request::parse(b""), Request::Unknown);
    }

    #[test]
    fn serves_lines_and_drops_idle_clients() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let mut control = Control::bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let idle = UnixStream::connect(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"reo").unwrap();
        control.accept();
        assert_eq!(control.conns.len(), 2);
        let fd = control.conns[1].stream.as_raw_fd();
        assert!(control.read(fd).is_none());
        client.write_all(b"pen\n").unwrap();
        let pending = control.read(fd).unwrap();
        assert_eq!(pending.request, Request::Reopen);
        control.reply(pending, "error no\nnewlines");
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "error no newlines\n");
        assert_eq!(control.next_deadline(), Some(control.conns[0].deadline));
        control.expire(Instant::now() + REQUEST_TIMEOUT);
        assert!(control.conns.is_empty());
        drop(idle);
        control.remove_socket();
        assert!(!path.exists());
    }
}
