//! OCI mount options → mount(2) flags, propagation changes, recursive
//! mount_setattr(2) attributes and the filesystem data string.

use nix::mount::MsFlags;

// From linux/mount.h; libc lacks them on some targets.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

#[derive(Debug, PartialEq)]
pub struct MountOptions {
    /// Flags for mount(2) (and the remount of a bind mount).
    pub flags: MsFlags,
    /// Propagation changes applied after mounting, in order.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes (`rro`, `rnosuid`…) for mount_setattr(AT_RECURSIVE).
    pub attr_set: u64,
    pub attr_clr: u64,
    /// Options the filesystem interprets (`mode=755`, `size=64m`).
    pub data: Vec<String>,
}

impl MountOptions {
    pub fn parse(options: &[String]) -> MountOptions {
        let mut out = MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            attr_set: 0,
            attr_clr: 0,
            data: Vec::new(),
        };
        for opt in options {
            if let Some((set, flag)) = flag_option(opt) {
                out.flags.set(flag, set);
            } else if let Some(p) = propagation_option(opt) {
                out.propagation.push(p);
            } else if let Some((set, attr)) = recursive_option(opt) {
                if set {
                    out.attr_set |= attr;
                    out.attr_clr &= !attr;
                } else {
                    out.attr_clr |= attr;
                    out.attr_set &= !attr;
                }
                // Changing any atime mode needs the whole atime field cleared first.
                if attr & MOUNT_ATTR__ATIME != 0 || opt == "rrelatime" {
                    out.attr_clr |= MOUNT_ATTR__ATIME;
                }
            } else if opt != "defaults" {
                out.data.push(opt.clone());
            }
        }
        out
    }

    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Flags a bind mount needs a second, MS_REMOUNT call for.
    pub fn remount_flags(&self) -> MsFlags {
        self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT)
    }

    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// (true = set, false = clear, flag).
fn flag_option(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "silent" => (true, MsFlags::MS_SILENT),
        "loud" => (false, MsFlags::MS_SILENT),
        _ => return None,
    })
}

fn propagation_option(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn recursive_option(opt: &str) -> Option<(bool, u64)> {
    Some(match opt {
        "rro" => (true, MOUNT_ATTR_RDONLY),
        "rrw" => (false, MOUNT_ATTR_RDONLY),
        "rnosuid" => (true, MOUNT_ATTR_NOSUID),
        "rsuid" => (false, MOUNT_ATTR_NOSUID),
        "rnodev" => (true, MOUNT_ATTR_NODEV),
        "rdev" => (false, MOUNT_ATTR_NODEV),
        "rnoexec" => (true, MOUNT_ATTR_NOEXEC),
        "rexec" => (false, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (true, MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (false, MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (true, MOUNT_ATTR_RELATIME),
        "rnorelatime" => (false, MOUNT_ATTR_RELATIME),
        "rnoatime" => (true, MOUNT_ATTR_NOATIME),
        "ratime" => (false, MOUNT_ATTR_NOATIME),
        "rstrictatime" => (true, MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (false, MOUNT_ATTR_STRICTATIME),
        "rnosymfollow" => (true, MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (false, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str]) -> MountOptions {
        MountOptions::parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation() {
        let o = parse(&["nosuid", "noexec", "nodev", "mode=1777", "size=65536k", "rslave"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        assert_eq!(o.data_string().as_deref(), Some("mode=1777,size=65536k"));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(!o.is_bind());
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = parse(&["ro", "rw", "defaults"]);
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.data_string(), None);
    }

    #[test]
    fn bind_mounts_remount_their_flags() {
        let o = parse(&["rbind", "ro", "nosuid", "rprivate"]);
        assert!(o.is_bind());
        assert!(o.flags.contains(MsFlags::MS_REC));
        assert_eq!(o.remount_flags(), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn recursive_attributes() {
        let o = parse(&["rbind", "rro", "rnoexec", "rnoatime"]);
        assert_eq!(o.attr_set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOATIME);
        assert_eq!(o.attr_clr, MOUNT_ATTR__ATIME);
        let o = parse(&["rro", "rrw"]);
        assert_eq!((o.attr_set, o.attr_clr), (0, MOUNT_ATTR_RDONLY));
    }
}
