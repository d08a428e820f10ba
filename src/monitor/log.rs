//! The CRI log writer: every line of the container's output becomes
//! `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n`, written with a single
//! write(2) on an O_APPEND file so readers never see a torn line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest text in one log entry; longer lines are cut into `P` entries.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub struct CriLog {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Per stream, output not yet ended by a newline.
    pending: [Vec<u8>; 2],
    /// Reused to assemble one entry.
    entry: Vec<u8>,
    /// Entries lost since writes started failing; reported once writes work again.
    dropped: u64,
}

impl CriLog {
    /// Opens (creating it and its directory) the log at `path`; `None` discards output.
    pub fn open(path: Option<&Path>) -> io::Result<CriLog> {
        let file = path.map(open_log).transpose()?;
        Ok(CriLog {
            path: path.map(Path::to_path_buf),
            file,
            pending: [Vec::new(), Vec::new()],
            entry: Vec::with_capacity(64),
            dropped: 0,
        })
    }

    /// Takes a chunk of a stream's output; complete lines are written at once.
    pub fn feed(&mut self, stream: Stream, data: &[u8]) {
        if self.file.is_none() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &pending[start..];
            let window = &rest[..rest.len().min(MAX_LINE + 1)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                self.write_entry(stream, b'F', &rest[..nl]);
                start += nl + 1;
            } else if rest.len() > MAX_LINE {
                self.write_entry(stream, b'P', &rest[..MAX_LINE]);
                start += MAX_LINE;
            } else {
                break;
            }
        }
        pending.drain(..start);
        if pending.capacity() > 4 * MAX_LINE {
            pending.shrink_to(2 * MAX_LINE);
        }
        self.pending[stream.index()] = pending;
    }

    /// The stream ended: a pending partial line is written as a full one.
    pub fn finish(&mut self, stream: Stream) {
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        let mut chunks = pending.chunks(MAX_LINE).peekable();
        while let Some(chunk) = chunks.next() {
            let tag = if chunks.peek().is_some() { b'P' } else { b'F' };
            self.write_entry(stream, tag, chunk);
        }
        pending.clear();
        pending.shrink_to_fit();
        self.pending[stream.index()] = pending;
    }

    /// Opens the path anew (kubelet renamed the old file when rotating) and
    /// switches to it; on failure the old file stays in use. Pending partial
    /// lines are kept, so they land in the new file.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.file = Some(open_log(path)?);
        }
        Ok(())
    }

    fn write_entry(&mut self, stream: Stream, tag: u8, text: &[u8]) {
        let Some(file) = &self.file else { return };
        self.entry.clear();
        write_timestamp(SystemTime::now(), &mut self.entry);
        self.entry.push(b' ');
        self.entry.extend_from_slice(stream.name());
        self.entry.extend_from_slice(&[b' ', tag, b' ']);
        self.entry.extend_from_slice(text);
        self.entry.push(b'\n');
        let result = match (&*file).write(&self.entry) {
            Ok(n) if n == self.entry.len() => Ok(()),
            Ok(n) => {
                Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write, {n} of {} bytes", self.entry.len())))
            }
            Err(e) => Err(e),
        };
        let path = self.path.as_deref().unwrap_or(Path::new("")).display();
        match result {
            Ok(()) if self.dropped > 0 => {
                eprintln!("log {path}: writes work again after {} lost entries", self.dropped);
                self.dropped = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if self.dropped == 0 {
                    eprintln!("log {path}: {e}; entries are lost until writes work again");
                }
                self.dropped += 1;
            }
        }
        if self.entry.capacity() > 2 * MAX_LINE {
            self.entry = Vec::with_capacity(64);
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Appends `t` as `2026-01-02T15:04:05.123456789Z` (UTC, always nine fraction digits).
pub fn write_timestamp(t: SystemTime, out: &mut Vec<u8>) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    push_digits(out, year as u64, 4);
    out.push(b'-');
    push_digits(out, month as u64, 2);
    out.push(b'-');
    push_digits(out, day as u64, 2);
    out.push(b'T');
    push_digits(out, (tod / 3600) as u64, 2);
    out.push(b':');
    push_digits(out, (tod / 60 % 60) as u64, 2);
    out.push(b':');
    push_digits(out, (tod % 60) as u64, 2);
    out.push(b'.');
    push_digits(out, nanos as u64, 9);
    out.push(b'Z');
}

fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Entry {
        stream: String,
        tag: String,
        text: String,
    }

    fn entries(path: &Path) -> Vec<Entry> {
        let data = fs::read_to_string(path).unwrap();
        assert!(data.is_empty() || data.ends_with('\n'));
        data.lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert_eq!(ts.len(), 30, "{ts}");
                assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                Entry {
                    stream: parts.next().unwrap().into(),
                    tag: parts.next().unwrap().into(),
                    text: parts.next().unwrap().into(),
                }
            })
            .collect()
    }

    fn summary(path: &Path) -> Vec<(String, String, usize)> {
        entries(path).into_iter().map(|e| (e.stream, e.tag, e.text.len())).collect()
    }

    #[test]
    fn timestamps_match_rfc3339_nano() {
        for (secs, nanos) in [(0, 0), (1_767_366_245, 123_456_789), (951_782_400, 5), (4_102_444_799, 999_999_999)] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let mut out = Vec::new();
            write_timestamp(t, &mut out);
            let want = chrono::DateTime::from_timestamp(secs as i64, nanos).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string());
        }
        let mut out = Vec::new();
        write_timestamp(UNIX_EPOCH + Duration::new(1_767_366_245, 123_456_789), &mut out);
        assert_eq!(out, b"2026-01-02T15:04:05.123456789Z");
    }

    #[test]
    fn lines_are_tagged_full_and_buffered_until_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.log");
        let mut log = CriLog::open(Some(&path)).unwrap();
        log.feed(Stream::Stdout, b"hello\nwor");
        log.feed(Stream::Stderr, b"oops\n");
        assert_eq!(entries(&path).len(), 2);
        log.feed(Stream::Stdout, b"ld\n\n");
        let got = entries(&path);
        let got: Vec<_> = got.iter().map(|e| (e.stream.as_str(), e.tag.as_str(), e.text.as_str())).collect();
        assert_eq!(
            got,
            [("stdout", "F", "hello"), ("stderr", "F", "oops"), ("stdout", "F", "world"), ("stdout", "F", "")]
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640 & !umask());
    }

    /// Read, not set: umask is process-wide and tests run in parallel.
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
        u32::from_str_radix(line.trim(), 8).unwrap()
    }

    #[test]
    fn long_lines_split_into_partial_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = CriLog::open(Some(&path)).unwrap();
        let mut long = vec![b'a'; 2 * MAX_LINE + 100];
        long.push(b'\n');
        for piece in long.chunks(4096) {
            log.feed(Stream::Stdout, piece);
        }
        let mut exact = vec![b'b'; MAX_LINE];
        exact.push(b'\n');
        log.feed(Stream::Stderr, &exact);
        let s = |a: &str, b: &str, n| (a.to_string(), b.to_string(), n);
        assert_eq!(
            summary(&path),
            [s("stdout", "P", MAX_LINE), s("stdout", "P", MAX_LINE), s("stdout", "F", 100), s("stderr", "F", MAX_LINE)]
        );
        assert!(entries(&path)[0].text.bytes().all(|b| b == b'a'));
    }

    #[test]
    fn partial_line_at_eof_is_written_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = CriLog::open(Some(&path)).unwrap();
        log.feed(Stream::Stdout, b"no newline");
        log.feed(Stream::Stderr, &vec![b'x'; 40 * 1024]);
        log.finish(Stream::Stdout);
        log.finish(Stream::Stderr);
        log.finish(Stream::Stderr);
        let s = |a: &str, b: &str, n| (a.to_string(), b.to_string(), n);
        assert_eq!(
            summary(&path),
            [
                s("stderr", "P", MAX_LINE),
                s("stderr", "P", MAX_LINE),
                s("stdout", "F", 10),
                s("stderr", "F", 40 * 1024 - 2 * MAX_LINE)
            ]
        );
    }

    #[test]
    fn reopen_after_rotation_keeps_pending_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let rotated = dir.path().join("c.log.1");
        let mut log = CriLog::open(Some(&path)).unwrap();
        log.feed(Stream::Stdout, b"one\ntw");
        fs::rename(&path, &rotated).unwrap();
        log.feed(Stream::Stdout, b"o\nthr");
        log.reopen().unwrap();
        log.feed(Stream::Stdout, b"ee\n");
        let texts = |p: &Path| entries(p).into_iter().map(|e| e.text).collect::<Vec<_>>();
        assert_eq!(texts(&rotated), ["one", "two"]);
        assert_eq!(texts(&path), ["three"]);
    }

    #[test]
    fn failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/c.log");
        let mut log = CriLog::open(Some(&path)).unwrap();
        fs::rename(dir.path().join("d"), dir.path().join("gone")).unwrap();
        fs::write(dir.path().join("d"), b"a file where the dir was").unwrap();
        assert!(log.reopen().is_err());
        log.feed(Stream::Stdout, b"still here\n");
        assert_eq!(entries(&dir.path().join("gone/c.log")).len(), 1);
    }

    #[test]
    fn full_disk_losses_are_counted() {
        let mut log = CriLog::open(Some(Path::new("/dev/full"))).unwrap();
        log.feed(Stream::Stdout, b"a\nb\n");
        assert_eq!(log.dropped, 2);
    }

    #[test]
    fn no_path_discards() {
        let mut log = CriLog::open(None).unwrap();
        log.feed(Stream::Stdout, b"x\ny");
        log.finish(Stream::Stdout);
        log.reopen().unwrap();
        assert!(log.pending[0].is_empty());
    }
}
