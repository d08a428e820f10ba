//! The attach socket: clients (the daemon's streaming server) receive the
//! container's output as it is logged and send stdin and terminal resizes.
//!
//! Frames both ways: one kind byte, a big-endian u32 length, the payload.
//! Monitor → client: 1 stdout, 2 stderr. Client → monitor: 0 stdin data,
//! 3 resize (u16 columns, u16 rows), 4 end of stdin.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's name in the monitor's directory.
pub const SOCKET: &str = "attach.sock";
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
const STDIN: u8 = 0;
const RESIZE: u8 = 3;
const STDIN_END: u8 = 4;
/// Clients at once; more are turned away.
const MAX_CLIENTS: usize = 16;
/// A client that can't take output this long is dropped, so it can't stall the log.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_FRAME: usize = 1 << 20;

/// What a client asked for.
#[derive(Debug, PartialEq)]
pub enum Input {
    Stdin(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The client closed its stdin, or left.
    StdinEnd,
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    /// It has written to stdin (a stdin client announces itself with an empty frame).
    stdin: bool,
}

pub struct Attach {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
}

impl Attach {
    pub fn bind(path: &Path) -> io::Result<Attach> {
        let listener = super::sys::bind_private(path)?;
        listener.set_nonblocking(true)?;
        Ok(Attach { listener, path: path.to_path_buf(), clients: Vec::new() })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn client_fds(&self) -> Vec<RawFd> {
        self.clients.iter().map(|c| c.stream.as_raw_fd()).collect()
    }

    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients.len() >= MAX_CLIENTS {
                continue;
            }
            let ok = stream.set_nonblocking(false).is_ok() && stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok();
            if ok {
                self.clients.push(Client { stream, buf: Vec::new(), stdin: false });
            }
        }
    }

    /// Reads what the client sent; a client that left is dropped and ends its stdin.
    pub fn read(&mut self, fd: RawFd) -> Vec<Input> {
        let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) else { return Vec::new() };
        let mut chunk = [0u8; 16 * 1024];
        let client = &mut self.clients[i];
        // Readable: one read doesn't block.
        let n = match client.stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Vec::new(),
            Err(_) => 0,
        };
        // Only a client that used stdin ends it by leaving; watchers come and go.
        let gone = |client: Client| if client.stdin { vec![Input::StdinEnd] } else { Vec::new() };
        if n == 0 {
            return gone(self.clients.remove(i));
        }
        client.buf.extend_from_slice(&chunk[..n]);
        match parse(&mut client.buf) {
            Ok(inputs) => {
                client.stdin |= inputs.iter().any(|i| matches!(i, Input::Stdin(_) | Input::StdinEnd));
                inputs
            }
            Err(()) => gone(self.clients.remove(i)),
        }
    }

    /// Sends output to every client; one that can't keep up is dropped.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let mut frame = Vec::with_capacity(5 + data.len());
        frame.push(kind);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.clients.retain_mut(|c| c.stream.write_all(&frame).is_ok());
    }

    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes every complete frame out of `buf`; Err on a frame no client sends.
fn parse(buf: &mut Vec<u8>) -> Result<Vec<Input>, ()> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let kind = buf[at];
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > MAX_FRAME {
            return Err(());
        }
        if buf.len() - at - 5 < len {
            break;
        }
        let payload = &buf[at + 5..at + 5 + len];
        out.push(match (kind, payload.len()) {
            (STDIN, _) => Input::Stdin(payload.to_vec()),
            (RESIZE, 4) => Input::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            },
            (STDIN_END, _) => Input::StdinEnd,
            _ => return Err(()),
        });
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn frames_parse_across_reads() {
        let mut all = frame(STDIN, b"echo hi\n");
        all.extend(frame(RESIZE, &[0, 80, 0, 24]));
        all.extend(frame(STDIN_END, b""));
        let mut buf = all[..7].to_vec();
        assert_eq!(parse(&mut buf), Ok(vec![]));
        buf.extend_from_slice(&all[7..]);
        assert_eq!(
            parse(&mut buf),
            Ok(vec![Input::Stdin(b"echo hi\n".to_vec()), Input::Resize { cols: 80, rows: 24 }, Input::StdinEnd])
        );
        assert!(buf.is_empty());
        assert_eq!(parse(&mut frame(9, b"x")), Err(()));
    }

    #[test]
    fn output_reaches_clients_and_input_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attach.sock");
        let mut attach = Attach::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        attach.accept();
        attach.broadcast(STDOUT, b"hello\n");
        let mut got = [0u8; 11];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got.to_vec(), frame(STDOUT, b"hello\n"));
        client.write_all(&frame(STDIN, b"x")).unwrap();
        let fd = attach.client_fds()[0];
        assert_eq!(attach.read(fd), vec![Input::Stdin(b"x".to_vec())]);
        drop(client);
        assert_eq!(attach.read(fd), vec![Input::StdinEnd]);
        assert!(attach.client_fds().is_empty());
        // A client that never wrote to stdin leaves without closing it.
        let watcher = UnixStream::connect(&path).unwrap();
        attach.accept();
        let fd = attach.client_fds()[0];
        drop(watcher);
        assert_eq!(attach.read(fd), vec![]);
    }
}
