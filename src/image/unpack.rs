//! Streaming, digest-verifying OCI layer applier producing an overlayfs lower directory.
//!
//! Layers come from registries and are hostile input: every path is normalised, `..` is
//! refused outright, and nothing is ever created through a symlink.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI/Docker layer media type; `None` if it is not a layer we can apply.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let mt = media_type.split(';').next().unwrap_or("").trim();
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    /// Sum of regular file sizes written.
    pub bytes: u64,
    /// Tar entries created (files, dirs, links, devices, whiteouts).
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("layer diff_id mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("unsafe path in layer: {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("unsupported tar entry type {kind} for {path:?}")]
    UnsupportedEntry { path: String, kind: String },
    #[error("layer is not a WebAssembly module or component (its first bytes are {0})")]
    NotWasm(String),
    #[error("unsupported or malformed digest {0:?} (only sha256:<64 hex> is accepted)")]
    UnsupportedDigest(String),
    #[error("reading layer blob: {0}")]
    Read(#[source] io::Error),
    #[error("decompressing layer: {0}")]
    Decompress(#[source] io::Error),
    #[error("malformed layer tar: {0}")]
    Tar(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Applies one layer blob to the empty directory `dest`; see module docs for the safety rules.
/// The sniffed magic bytes win over `compression`, which registries sometimes get wrong.
pub fn apply_layer<R: Read>(
    reader: R,
    compression: Compression,
    digest: &str,
    diff_id: Option<&str>,
    dest: &Path,
) -> Result<UnpackStats, UnpackError> {
    let want_digest = parse_digest(digest)?;
    let want_diff = diff_id.map(parse_digest).transpose()?;
    let mut raw = Hashing::new(reader, Stage::Read);
    let result = extract_stream(&mut raw, compression, dest);
    // Drain what the decoder/tar left so the digest covers the whole blob; a corrupt blob
    // is then reported as a digest mismatch rather than whatever parse error it caused.
    let drained = match &result {
        Err(_) if raw.failed => Ok(0),
        _ => io::copy(&mut raw, &mut io::sink()),
    };
    let actual = raw.hex();
    if !raw.failed && actual != want_digest {
        return Err(UnpackError::DigestMismatch { expected: digest.into(), actual: format!("sha256:{actual}") });
    }
    let (stats, actual_diff) = result?;
    drained.map_err(classify)?;
    match (want_diff, diff_id) {
        (Some(want), Some(expected)) if want != actual_diff => {
            Err(UnpackError::DiffIdMismatch { expected: expected.into(), actual: format!("sha256:{actual_diff}") })
        }
        _ => Ok(stats),
    }
}

fn parse_digest(d: &str) -> Result<String, UnpackError> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h.to_ascii_lowercase()),
        _ => Err(UnpackError::UnsupportedDigest(d.into())),
    }
}

fn extract_stream<R: Read>(
    raw: &mut R,
    _declared: Compression,
    dest: &Path,
) -> Result<(UnpackStats, String), UnpackError> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match raw.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(e)),
        }
    }
    let input = (&head[..n]).chain(raw);
    // 0x184D2A5? is a zstd skippable frame, which may legitimately precede the data frames.
    let decoded: Box<dyn Read + '_> = match head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(input)),
        [0x28, 0xb5, 0x2f, 0xfd] | [0x50..=0x5f, 0x2a, 0x4d, 0x18] => {
            Box::new(zstd::Decoder::new(input).map_err(UnpackError::Decompress)?)
        }
        _ => Box::new(input),
    };
    let mut tar = Hashing::new(decoded, Stage::Decompress);
    let stats = extract(&mut tar, dest)?;
    io::copy(&mut tar, &mut io::sink()).map_err(classify)?;
    Ok((stats, tar.hex()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Read,
    Decompress,
}

/// Marks an io::Error with where it came from, so errors surfacing through `tar` can be told apart.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
struct Tagged(Stage, io::Error);

fn classify(e: io::Error) -> UnpackError {
    if !e.get_ref().is_some_and(|r| r.is::<Tagged>()) {
        return UnpackError::Tar(e);
    }
    let Tagged(stage, inner) = *e.into_inner().and_then(|b| b.downcast::<Tagged>().ok()).expect("checked is::<Tagged>");
    match stage {
        Stage::Read => UnpackError::Read(inner),
        Stage::Decompress => UnpackError::Decompress(inner),
    }
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    stage: Stage,
    failed: bool,
}

impl<R> Hashing<R> {
    fn new(inner: R, stage: Stage) -> Self {
        Hashing { inner, hasher: Sha256::new(), stage, failed: false }
    }
    fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) if e.get_ref().is_some_and(|r| r.is::<Tagged>()) => Err(e),
            Err(e) => {
                self.failed = true;
                Err(io::Error::new(e.kind(), Tagged(self.stage, e)))
            }
        }
    }
}

fn extract<R: Read>(r: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let mut archive = tar::Archive::new(r);
    let mut stats = UnpackStats::default();
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(classify)? {
        apply_entry(&mut entry.map_err(classify)?, dest, &mut stats, &mut dir_times)?;
    }
    // Creating children bumps a directory's mtime, so directory times go on last; walking in
    // reverse and skipping repeats makes the last entry for a path win.
    let mut done = HashSet::new();
    for (path, time) in dir_times.iter().rev() {
        if done.insert(path) {
            set_times(path, time)?;
        }
    }
    Ok(stats)
}

fn unsafe_path(path: &Path, reason: &'static str) -> UnpackError {
    UnpackError::UnsafePath { path: path.display().to_string(), reason }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.display().to_string(), source }
}

/// Strips leading "/" and "./"; any ".." is refused even when it would stay inside.
fn normalise(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(unsafe_path(raw, "contains a \"..\" component")),
        }
    }
    Ok(out)
}

/// lstat-walks the parents of `rel` under `dest` (creating missing ones when `create`),
/// refusing symlinks and non-directories, and returns `dest/rel`.
fn walk_parents(dest: &Path, rel: &Path, raw: &Path, create: bool) -> Result<PathBuf, UnpackError> {
    let mut cur = dest.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(unsafe_path(raw, "traverses a symlink")),
            Ok(m) if !m.is_dir() => return Err(unsafe_path(raw, "a parent is not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Err(unsafe_path(raw, "does not exist")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&cur).map_err(io_err(&cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).map_err(io_err(&cur))?;
            }
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    if let Some(last) = comps.last() {
        cur.push(last);
    }
    Ok(cur)
}

/// Clears the way for a new entry; an existing directory is kept only for a directory entry.
fn remove_existing(path: &Path, new_is_dir: bool) -> Result<bool, UnpackError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
        Ok(m) if m.is_dir() && new_is_dir => Ok(true),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map(|_| false).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map(|_| false).map_err(io_err(path)),
    }
}

fn apply_entry<R: Read>(
    e: &mut tar::Entry<R>,
    dest: &Path,
    stats: &mut UnpackStats,
    dir_times: &mut Vec<(PathBuf, TimeSpec)>,
) -> Result<(), UnpackError> {
    use tar::EntryType as T;
    let kind = e.header().entry_type();
    if kind.is_pax_global_extensions() {
        return Ok(()); // archive-wide PAX defaults describe no file
    }
    let raw = e.path().map_err(classify)?.into_owned();
    let rel = normalise(&raw)?;
    let pax = read_pax(e)?;
    if pax.sparse {
        // PAX-format sparse files are not decoded by `tar`; writing them as-is would corrupt them.
        let (path, kind) = (raw.display().to_string(), "PAX GNU.sparse".into());
        return Err(UnpackError::UnsupportedEntry { path, kind });
    }

    if let Some(name) = rel.file_name().and_then(|n| n.as_bytes().strip_prefix(b".wh.")) {
        let dir = walk_parents(dest, &rel, &raw, true)?;
        let dir = dir.parent().unwrap_or(dest);
        if name == b".wh..opq" {
            return set_xattr(dir, "trusted.overlay.opaque", b"y").map_err(io_err(dir));
        }
        if name.starts_with(b".wh.") {
            return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.), meaningless to overlayfs
        }
        if name.is_empty() || name == b"." || name == b".." {
            return Err(unsafe_path(&raw, "invalid whiteout name"));
        }
        let target = dir.join(OsStr::from_bytes(name));
        remove_existing(&target, false)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| io_err(&target)(e.into()))?;
        stats.inodes += 1;
        return Ok(());
    }

    let path = if rel.as_os_str().is_empty() {
        if kind != T::Directory {
            return Err(unsafe_path(&raw, "non-directory entry for the layer root"));
        }
        dest.to_path_buf()
    } else {
        walk_parents(dest, &rel, &raw, true)?
    };

    match kind {
        T::Regular | T::Continuous | T::GNUSparse => {
            remove_existing(&path, false)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err(&path))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match e.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(classify(err)),
                };
                f.write_all(&buf[..n]).map_err(io_err(&path))?;
                stats.bytes += n as u64;
            }
        }
        T::Directory => {
            if !remove_existing(&path, true)? {
                fs::DirBuilder::new().mode(0o700).create(&path).map_err(io_err(&path))?;
            }
        }
        T::Symlink => {
            // The target text is kept verbatim: it is resolved inside the container, never by us.
            let target = e.link_name_bytes().ok_or_else(|| unsafe_path(&raw, "symlink without target"))?.into_owned();
            remove_existing(&path, false)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(io_err(&path))?;
        }
        T::Link => {
            let traw = e.link_name().map_err(classify)?.ok_or_else(|| unsafe_path(&raw, "hardlink without target"))?;
            let traw = traw.into_owned();
            let trel = normalise(&traw)?;
            let tpath = walk_parents(dest, &trel, &traw, false)?;
            match fs::symlink_metadata(&tpath) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(unsafe_path(&traw, "hardlink target does not exist"))
                }
                Err(err) => return Err(io_err(&tpath)(err)),
                Ok(m) if m.is_dir() => return Err(unsafe_path(&traw, "hardlink target is a directory")),
                Ok(_) => {}
            }
            if trel != rel {
                remove_existing(&path, false)?;
                fs::hard_link(&tpath, &path).map_err(io_err(&path))?;
            }
            // The inode's metadata belongs to the target entry; a link header must not rewrite it.
            stats.inodes += 1;
            return Ok(());
        }
        T::Char | T::Block | T::Fifo => {
            let (sflag, dev) = match kind {
                T::Char => (SFlag::S_IFCHR, dev_of(e.header(), &raw)?),
                T::Block => (SFlag::S_IFBLK, dev_of(e.header(), &raw)?),
                _ => (SFlag::S_IFIFO, 0),
            };
            remove_existing(&path, false)?;
            mknod(&path, sflag, Mode::empty(), dev).map_err(|err| io_err(&path)(err.into()))?;
        }
        other => {
            return Err(UnpackError::UnsupportedEntry { path: raw.display().to_string(), kind: format!("{other:?}") })
        }
    }
    stats.inodes += 1;
    apply_metadata(e.header(), pax, &path, dir_times)
}

fn dev_of(h: &tar::Header, raw: &Path) -> Result<libc::dev_t, UnpackError> {
    let (major, minor) = (h.device_major(), h.device_minor());
    match (major.map_err(UnpackError::Tar)?, minor.map_err(UnpackError::Tar)?) {
        (Some(major), Some(minor)) => Ok(makedev(major.into(), minor.into())),
        _ => Err(unsafe_path(raw, "device entry without device numbers")),
    }
}

/// The PAX records we act on; tar itself already applies path, linkpath, size, uid and gid.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: Option<TimeSpec>,
    sparse: bool,
}

fn read_pax<R: Read>(e: &mut tar::Entry<R>) -> Result<Pax, UnpackError> {
    let mut pax = Pax::default();
    for ext in e.pax_extensions().map_err(classify)?.into_iter().flatten() {
        let ext = ext.map_err(classify)?;
        let value = ext.value_bytes();
        match ext.key() {
            Ok("mtime") => pax.mtime = std::str::from_utf8(value).ok().and_then(parse_pax_time),
            Ok(k) if k.starts_with("GNU.sparse.") => pax.sparse = true,
            Ok(k) if k.starts_with("SCHILY.xattr.") => {
                pax.xattrs.push((k["SCHILY.xattr.".len()..].to_string(), value.to_vec()))
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// security.capability), then times.
fn apply_metadata(
    h: &tar::Header,
    pax: Pax,
    path: &Path,
    dir_times: &mut Vec<(PathBuf, TimeSpec)>,
) -> Result<(), UnpackError> {
    let kind = h.entry_type();
    let id = |v: io::Result<u64>| -> Result<u32, UnpackError> {
        let v = v.map_err(UnpackError::Tar)?;
        u32::try_from(v).map_err(|_| UnpackError::Tar(io::Error::other(format!("uid/gid {v} out of range"))))
    };
    std::os::unix::fs::lchown(path, Some(id(h.uid())?), Some(id(h.gid())?)).map_err(io_err(path))?;
    if kind != tar::EntryType::Symlink {
        let mode = h.mode().map_err(UnpackError::Tar)? & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    }
    for (name, value) in pax.xattrs {
        // Overlay metadata (redirect, metacopy, ...) must only come from our whiteout conversion.
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Err(err) = set_xattr(path, &name, &value) {
            let privileged = name.starts_with("trusted.") || name.starts_with("security.");
            let skippable = matches!(err.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM));
            if !(privileged && skippable) {
                return Err(UnpackError::Io { path: format!("{} (xattr {name})", path.display()), source: err });
            }
        }
    }
    let mtime = match pax.mtime {
        Some(t) => t,
        None => TimeSpec::new(i64::try_from(h.mtime().map_err(UnpackError::Tar)?).unwrap_or(i64::MAX), 0),
    };
    if kind == tar::EntryType::Directory {
        dir_times.push((path.to_path_buf(), mtime));
        Ok(())
    } else {
        set_times(path, &mtime)
    }
}

/// PAX times are decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut secs: i64 = sec.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = format!("{frac:0<9}")[..9].parse().ok()?;
    if sec.starts_with('-') && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(TimeSpec::new(secs, nanos))
}

fn set_times(path: &Path, mtime: &TimeSpec) -> Result<(), UnpackError> {
    utimensat(None, path, mtime, mtime, UtimensatFlags::NoFollowSymlink).map_err(|e| io_err(path)(e.into()))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for `value.len()` bytes.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tar::{Builder, EntryType as T, Header};

    struct Tmp(PathBuf);
    impl Tmp {
        fn new() -> Tmp {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!("cricket-unpack-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Header with raw name bytes, so hostile names the Builder would refuse can be written.
    fn hdr(name: &[u8], kind: T, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        h
    }
    fn add(b: &mut Builder<Vec<u8>>, mut h: Header, link: &[u8], data: &[u8]) {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }
    fn apply(tar: &[u8], dest: &Path) -> Result<UnpackStats, UnpackError> {
        apply_layer(tar, Compression::None, &sha(tar), Some(&sha(tar)), dest)
    }
    fn one(name: &[u8], kind: T, link: &[u8]) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(name, kind, 0o644), link, b"x");
        b.into_inner().unwrap()
    }
    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
        let mut buf = [0u8; 256];
        let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (rc >= 0).then(|| buf[..rc as usize].to_vec())
    }
    fn is_unsafe(r: Result<UnpackStats, UnpackError>) -> bool {
        matches!(r, Err(UnpackError::UnsafePath { .. }))
    }

    #[test]
    fn tree_with_metadata() {
        let t = Tmp::new();
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(b"./etc/", T::Directory, 0o750), b"", b"");
        add(&mut b, hdr(b"etc/passwd", T::Regular, 0o640), b"", b"root:x:0:0\n");
        add(&mut b, hdr(b"usr/bin/su", T::Regular, 0o4755), b"", b"elf");
        add(&mut b, hdr(b"etc/link", T::Symlink, 0o777), b"/etc/passwd", b"");
        add(&mut b, hdr(b"etc/hard", T::Link, 0o640), b"./etc/passwd", b"");
        let tar = b.into_inner().unwrap();
        let st = apply(&tar, &t.0).unwrap();
        assert_eq!((st.bytes, st.inodes), (14, 5));
        let d = fs::symlink_metadata(t.0.join("etc")).unwrap();
        assert!(d.is_dir());
        assert_eq!((d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()), (0o750, 1000, 1001, 1_600_000_000));
        let f = fs::symlink_metadata(t.0.join("etc/passwd")).unwrap();
        assert_eq!((f.mode() & 0o7777, f.uid(), f.gid(), f.mtime()), (0o640, 1000, 1001, 1_600_000_000));
        assert_eq!(fs::read(t.0.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
        let su = fs::symlink_metadata(t.0.join("usr/bin/su")).unwrap();
        assert_eq!((su.mode() & 0o7777, su.uid()), (0o4755, 1000));
        let usr = fs::symlink_metadata(t.0.join("usr")).unwrap();
        assert_eq!((usr.mode() & 0o7777, usr.uid()), (0o755, 0));
        let l = fs::symlink_metadata(t.0.join("etc/link")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!((l.uid(), l.mtime()), (1000, 1_600_000_000));
        assert_eq!(fs::read_link(t.0.join("etc/link")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(fs::symlink_metadata(t.0.join("etc/hard")).unwrap().ino(), f.ino());
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        let t = Tmp::new();
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(b"dir/.wh.gone", T::Regular, 0o644), b"", b"");
        add(&mut b, hdr(b"opq/.wh..wh..opq", T::Regular, 0o644), b"", b"");
        add(&mut b, hdr(b".wh..wh.plnk", T::Directory, 0o700), b"", b"");
        apply(&b.into_inner().unwrap(), &t.0).unwrap();
        let w = fs::symlink_metadata(t.0.join("dir/gone")).unwrap();
        assert!(w.file_type().is_char_device());
        assert_eq!((w.rdev(), w.mode() & 0o7777), (0, 0));
        assert_eq!(xattr(&t.0.join("opq"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
        assert!(!t.0.join(".wh..wh.plnk").exists() && !t.0.join("dir/.wh.gone").exists());
        assert!(is_unsafe(apply(&one(b"a/.wh...", T::Regular, b""), &t.0)));
    }

    #[test]
    fn dotdot_rejected() {
        for name in [&b"../escape"[..], b"a/../b", b"/.."] {
            let t = Tmp::new();
            assert!(is_unsafe(apply(&one(name, T::Regular, b""), &t.0)), "{name:?}");
        }
    }

    #[test]
    fn absolute_path_stripped() {
        let t = Tmp::new();
        apply(&one(b"/etc/x", T::Regular, b""), &t.0).unwrap();
        assert_eq!(fs::read(t.0.join("etc/x")).unwrap(), b"x");
    }

    #[test]
    fn no_writes_through_symlinks() {
        let t = Tmp::new();
        let outside = Tmp::new();
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(b"a", T::Symlink, 0o777), outside.0.as_os_str().as_bytes(), b"");
        add(&mut b, hdr(b"a/evil", T::Regular, 0o644), b"", b"pwned");
        assert!(is_unsafe(apply(&b.into_inner().unwrap(), &t.0)));
        assert!(!outside.0.join("evil").exists());
    }

    #[test]
    fn hardlink_targets_checked() {
        let t = Tmp::new();
        assert!(is_unsafe(apply(&one(b"x", T::Link, b"../../etc/passwd"), &t.0)));
        assert!(is_unsafe(apply(&one(b"x", T::Link, b"missing"), &t.0)));
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(b"d", T::Directory, 0o755), b"", b"");
        add(&mut b, hdr(b"x", T::Link, 0o644), b"d", b"");
        assert!(is_unsafe(apply(&b.into_inner().unwrap(), &t.0)));
    }

    #[test]
    fn compressed_inputs_and_magic_sniffing() {
        let tar = one(b"f", T::Regular, b"");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        // Declared compression deliberately wrong: the magic bytes decide.
        for (blob, declared) in [(&gz, Compression::None), (&zst, Compression::Gzip), (&tar, Compression::Zstd)] {
            let t = Tmp::new();
            let st = apply_layer(&blob[..], declared, &sha(blob), Some(&sha(&tar)), &t.0).unwrap();
            assert_eq!(st.bytes, 1);
            assert_eq!(fs::read(t.0.join("f")).unwrap(), b"x");
        }
    }

    #[test]
    fn digest_and_diff_id_verified() {
        let tar = one(b"f", T::Regular, b"");
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let t = Tmp::new();
        let r = apply_layer(&zst[..], Compression::Zstd, &sha(b"other"), None, &t.0);
        assert!(matches!(r, Err(UnpackError::DigestMismatch { .. })), "{r:?}");
        let r = apply_layer(&zst[..], Compression::Zstd, &sha(&zst), Some(&sha(&zst)), &t.0);
        assert!(matches!(r, Err(UnpackError::DiffIdMismatch { .. })), "{r:?}");
        let r = apply_layer(&zst[..], Compression::Zstd, "md5:abc", None, &t.0);
        assert!(matches!(r, Err(UnpackError::UnsupportedDigest(_))), "{r:?}");
        // Corrupt blob: reported as a digest mismatch, not as the decompression error it causes.
        let mut bad = zst.clone();
        bad[10] ^= 0xff;
        let r = apply_layer(&bad[..], Compression::Zstd, &sha(&zst), None, &t.0);
        assert!(matches!(r, Err(UnpackError::DigestMismatch { .. })), "{r:?}");
        // Bytes after the end-of-archive blocks are still hashed.
        let mut padded = tar.clone();
        padded.extend_from_slice(&[0u8; 10_000]);
        apply_layer(&padded[..], Compression::None, &sha(&padded), Some(&sha(&padded)), &Tmp::new().0).unwrap();
    }

    #[test]
    fn device_nodes() {
        let t = Tmp::new();
        let mut b = Builder::new(Vec::new());
        let mut h = hdr(b"dev/null", T::Char, 0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        add(&mut b, h, b"", b"");
        add(&mut b, hdr(b"dev/fifo", T::Fifo, 0o600), b"", b"");
        apply(&b.into_inner().unwrap(), &t.0).unwrap();
        let m = fs::symlink_metadata(t.0.join("dev/null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!((m.rdev(), m.mode() & 0o7777, m.uid()), (makedev(1, 3), 0o666, 1000));
        assert!(fs::symlink_metadata(t.0.join("dev/fifo")).unwrap().file_type().is_fifo());
    }

    #[test]
    fn pax_xattrs_and_long_names() {
        let t = Tmp::new();
        let mut b = Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.user.foo", &b"bar"[..]),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("mtime", b"1500000000.25"),
        ])
        .unwrap();
        add(&mut b, hdr(b"f", T::Regular, 0o644), b"", b"");
        let long = format!("{}/file", "d".repeat(150));
        let mut h = hdr(b"", T::Regular, 0o644);
        h.set_size(2);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
        apply(&b.into_inner().unwrap(), &t.0).unwrap();
        let f = t.0.join("f");
        assert_eq!(xattr(&f, "user.foo").as_deref(), Some(&b"bar"[..]));
        assert_eq!(xattr(&f, "trusted.overlay.redirect"), None);
        let m = fs::metadata(&f).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 250_000_000));
        assert_eq!(fs::read(t.0.join(long)).unwrap(), b"hi");
    }

    #[test]
    fn pax_sparse_rejected() {
        let mut b = Builder::new(Vec::new());
        b.append_pax_extensions([("GNU.sparse.major", &b"1"[..])]).unwrap();
        add(&mut b, hdr(b"GNUSparseFile.0/f", T::Regular, 0o644), b"", b"");
        let r = apply(&b.into_inner().unwrap(), &Tmp::new().0);
        assert!(matches!(r, Err(UnpackError::UnsupportedEntry { .. })), "{r:?}");
    }

    #[test]
    fn later_entries_replace_earlier_and_root_entry() {
        let t = Tmp::new();
        let mut b = Builder::new(Vec::new());
        add(&mut b, hdr(b"./", T::Directory, 0o711), b"", b"");
        add(&mut b, hdr(b"p", T::Regular, 0o644), b"", b"old");
        add(&mut b, hdr(b"p", T::Directory, 0o755), b"", b"");
        add(&mut b, hdr(b"p/child", T::Regular, 0o644), b"", b"c");
        add(&mut b, hdr(b"q", T::Directory, 0o755), b"", b"");
        add(&mut b, hdr(b"q/inner", T::Regular, 0o644), b"", b"c");
        add(&mut b, hdr(b"q", T::Symlink, 0o777), b"p", b"");
        apply(&b.into_inner().unwrap(), &t.0).unwrap();
        assert_eq!(fs::read(t.0.join("p/child")).unwrap(), b"c");
        assert!(fs::symlink_metadata(t.0.join("q")).unwrap().file_type().is_symlink());
        let root = fs::metadata(&t.0).unwrap();
        assert_eq!((root.mode() & 0o7777, root.uid(), root.mtime()), (0o711, 1000, 1_600_000_000));
        assert!(is_unsafe(apply(&one(b".", T::Regular, b""), &Tmp::new().0)));
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.config.v1+json"), None);
    }
}
