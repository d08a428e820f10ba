//! The monitor ⇄ init channel: a SOCK_SEQPACKET pair (one message per send,
//! CLOEXEC on both ends). The init's end closing without an error message
//! means its execve succeeded.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, send, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType,
};

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
    /// Init → monitor: the terminal's pty master rides along (SCM_RIGHTS).
    Console,
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
            Msg::Console => (b'C', String::new()),
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
            b'C' => Msg::Console,
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

    /// Sends `msg` with `fd` attached.
    pub fn send_fd(&self, msg: &Msg, fd: BorrowedFd) -> nix::Result<()> {
        let data = msg.encode();
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(self.0.as_raw_fd(), &[IoSlice::new(&data)], &cmsg, MsgFlags::MSG_NOSIGNAL, None).map(|_| ())
    }

    /// `Ok(None)` at EOF: the other side closed its end (exited or exec'd).
    pub fn recv(&self) -> Result<Option<Msg>, String> {
        Ok(self.recv_with_fd()?.map(|(msg, _)| msg))
    }

    /// Like `recv`, with the descriptor a `send_fd` attached.
    pub fn recv_with_fd(&self) -> Result<Option<(Msg, Option<OwnedFd>)>, String> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let received = recvmsg::<()>(self.0.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC);
            let (n, mut fds) = match received {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for cmsg in msg.cmsgs().map_err(|e| e.to_string())? {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            // SAFETY: SCM_RIGHTS installed these descriptors in this process for us.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    (msg.bytes, fds)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Err("timed out".to_string()),
                Err(e) => return Err(e.to_string()),
            };
            if n == 0 {
                return Ok(None);
            }
            let msg = Msg::decode(&buf[..n]).ok_or_else(|| "malformed message".to_string())?;
            return Ok(Some((msg, fds.pop())));
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

    #[test]
    fn a_descriptor_rides_along() {
        let (a, b) = pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        a.send_fd(&Msg::Console, w.as_fd()).unwrap();
        drop(w);
        let (msg, fd) = b.recv_with_fd().unwrap().unwrap();
        assert_eq!(msg, Msg::Console);
        nix::unistd::write(fd.unwrap(), b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap(), 1);
        assert_eq!(&buf, b"x");
    }
}
