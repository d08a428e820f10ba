//! The daemon's end of an exec's terminal: a non-blocking pty master driven by
//! tokio, and window size changes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::unix::AsyncFd;

pub struct Master(AsyncFd<OwnedFd>);

impl Master {
    /// Drives a pty master (the exec helper made the pty inside the container).
    pub fn new(master: OwnedFd) -> std::io::Result<Master> {
        let flags = OFlag::from_bits_retain(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // Other helpers the daemon spawns meanwhile must not inherit it.
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        // SAFETY: the OwnedFd is a valid descriptor that only the AsyncFd owns and closes.
        Ok(Master(unsafe { AsyncFd::register(master)? }))
    }

    /// Reads output; 0 once every holder of the replica has closed it (EIO).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(std::io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            if let Ok(result) = guard.try_io(|fd| nix::unistd::write(fd.get_ref().as_fd(), data).map_err(Into::into)) {
                data = &data[result?..];
            }
        }
        Ok(())
    }

    pub fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_written_to_the_replica_reaches_the_master() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (master, replica) = (Master::new(pty.master).unwrap(), pty.slave);
        master.resize(100, 40).unwrap();
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize.
        assert_eq!(unsafe { libc::ioctl(replica.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        nix::unistd::write(&replica, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).await.unwrap();
        // The line discipline turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
        master.write_all(b"x").await.unwrap();
        drop(replica);
        // Whatever the terminal still echoes, the end is EOF rather than EIO.
        let drained = async { while master.read(&mut buf).await.unwrap() != 0 {} };
        tokio::time::timeout(std::time::Duration::from_secs(5), drained).await.unwrap();
    }
}
