//! The container's stdin as attach clients feed it. Never written blocking:
//! a container that doesn't read its stdin must not stall the monitor (its
//! logs, control socket and other clients). Unread input waits here; past a
//! bound the monitor stops reading its clients until the container catches up.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Buffered input beyond which clients' input is left unread.
const HIGH_WATER: usize = 1 << 20;

pub struct Stdin {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Close once `pending` is written (the stdin_once client finished).
    closing: bool,
}

impl Stdin {
    /// `fd` must be non-blocking.
    pub fn new(fd: Option<OwnedFd>) -> Stdin {
        Stdin { fd, pending: Vec::new(), closing: false }
    }

    pub fn write(&mut self, data: &[u8]) {
        if self.fd.is_some() && !self.closing {
            self.pending.extend_from_slice(data);
            self.flush();
        }
    }

    /// Closes it once what is buffered has been written.
    pub fn end(&mut self) {
        self.closing = true;
        self.flush();
    }

    /// Closes it now, dropping what is buffered (the container is gone).
    pub fn close(&mut self) {
        self.fd = None;
        self.pending = Vec::new();
    }

    /// Writes what it can without blocking.
    pub fn flush(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut written = 0;
        while written < self.pending.len() {
            match nix::unistd::write(fd, &self.pending[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    eprintln!("monitor: writing the container's stdin: {e}");
                    self.close();
                    return;
                }
            }
        }
        self.pending.drain(..written);
        if self.closing && self.pending.is_empty() {
            self.fd = None;
        }
    }

    /// The fd to poll for POLLOUT while input waits.
    pub fn waiting_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().filter(|_| !self.pending.is_empty()).map(|fd| fd.as_raw_fd())
    }

    /// Enough waits: stop reading clients.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= HIGH_WATER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_never_reads_blocks_nothing() {
        let (r, w) = nix::unistd::pipe().unwrap();
        crate::monitor::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&w)).unwrap();
        let mut stdin = Stdin::new(Some(w));
        let chunk = vec![b'x'; 256 << 10];
        for _ in 0..5 {
            stdin.write(&chunk);
        }
        // The pipe holds 64 KiB; the rest waits here and the writes returned.
        assert!(stdin.is_full());
        assert!(stdin.waiting_fd().is_some());
        stdin.end();
        let mut total = 0;
        let mut buf = vec![0u8; 64 << 10];
        while stdin.waiting_fd().is_some() || total < 5 * chunk.len() {
            match nix::unistd::read(r.as_raw_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("{e}"),
            }
            stdin.flush();
        }
        assert_eq!(total, 5 * chunk.len());
        // Ended and drained: closed, so the reader sees EOF.
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_reader_that_left_closes_it() {
        let (r, w) = nix::unistd::pipe().unwrap();
        crate::monitor::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&w)).unwrap();
        let mut stdin = Stdin::new(Some(w));
        drop(r);
        stdin.write(b"x");
        assert!(stdin.waiting_fd().is_none());
        assert!(!stdin.is_full());
    }
}
