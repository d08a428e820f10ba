//! The monitor ⇄ init channel: a SOCK_SEQPACKET pair (one message per send,
//! CLOEXEC on both ends). The init's end closing without an error message
//! means its execve succeeded.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// What travels on the channel; the first byte is the tag.
#[derive(Debug, PartialEq)]
pub enum Msg {
    /// Child → monitor: a new user namespace waits for its id maps.
    NeedMaps,
    /// Monitor → child: the maps are written.
    MapsWritten,
    /// Child → monitor: the container init's host PID.
    InitPid(i32),
    /// Child → monitor: something was skipped but setup goes on.
    Warning(String),
    /// Init → monitor: set up, waiting for start.
    Ready,
    /// Monitor → init: exec the workload.
    Start,
    /// Init → monitor: an in-process workload was loaded and runs (an exec reports by EOF).
    Running,
    /// Child → monitor: a step failed; the child exits.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            Msg::NeedMaps => (b'U', String::new()),
            Msg::MapsWritten => (b'M', String::new()),
            Msg::InitPid(pid) => (b'P', pid.to_string()),
            Msg::Warning(w) => (b'W', w.clone()),
            Msg::Ready => (b'R', String::new()),
            Msg::Start => (b'S', String::new()),
            Msg::Running => (b'X', String::new()),
            Msg::Error(e) => (b'E', e.clone()),
        };
        let mut out = vec![tag];
        out.extend_from_slice(body.as_bytes());
        out
    }

    fn decode(buf: &[u8]) -> Option<Msg> {
        let (&tag, body) = buf.split_first()?;
        let body = String::from_utf8_lossy(body).into_owned();
        Some(match tag {
            b'U' => Msg::NeedMaps,
            b'M' => Msg::MapsWritten,
            b'P' => Msg::InitPid(body.parse().ok()?),
            b'W' => Msg::Warning(body),
            b'R' => Msg::Ready,
            b'S' => Msg::Start,
            b'X' => Msg::Running,
            b'E' => Msg::Error(body),
            _ => return None,
        })
    }
}

pub struct Channel(pub OwnedFd);

pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> nix::Result<()> {
        send(self.0.as_raw_fd(), &msg.encode(), MsgFlags::MSG_NOSIGNAL).map(|_| ())
    }

    /// `Ok(None)` at EOF: the other side closed its end (exited or exec'd).
    pub fn recv(&self) -> Result<Option<Msg>, String> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Ok(None),
                Ok(n) => return Msg::decode(&buf[..n]).map(Some).ok_or_else(|| "malformed message".to_string()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Err("timed out".to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Bounds how long the monitor waits on a stuck child.
    pub fn set_timeout(&self, timeout: Duration) -> nix::Result<()> {
        let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&self.0.as_fd(), nix::sys::socket::sockopt::ReceiveTimeout, &tv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (a, b) = pair().unwrap();
        for msg in [
            Msg::InitPid(42),
            Msg::Warning("w".into()),
            Msg::Error("mount /proc: EPERM".into()),
            Msg::Ready,
            Msg::Running,
        ] {
            a.send(&msg).unwrap();
            assert_eq!(b.recv().unwrap(), Some(msg));
        }
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }
}
