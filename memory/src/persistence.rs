// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How long a RAM block's contents survive: beyond V7, which accepts any
//! shared fd-backed block even when its backing dies with the host.

use std::fmt;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};
use nix::sys::statfs::{
    BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, F2FS_SUPER_MAGIC, FsType, HUGETLBFS_MAGIC,
    NFS_SUPER_MAGIC, REISERFS_SUPER_MAGIC, Statfs, TMPFS_MAGIC, XFS_SUPER_MAGIC, fstatfs, statfs,
};

use crate::block::{Backing, RamBlock};
use crate::error::{Error, Result};

/// How long the guest RAM held by a block survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// Lost when the process exits: anonymous memory, a memfd (whose
    /// descriptor reboot mode cannot pass on), or any private mapping.
    ProcessLifetime,
    /// Survives a process restart but not a host reboot: tmpfs (`/dev/shm`),
    /// ramfs, hugetlbfs, or a filesystem or device this crate does not
    /// recognise (conservatively: the file outlives the process, nothing more
    /// is claimed).
    UntilHostReboot,
    /// Survives a host reboot: a file on a disk filesystem. With
    /// `needs_sync`, only once written back ([`GuestRam::sync`]).
    ///
    /// [`GuestRam::sync`]: crate::GuestRam::sync
    AcrossHostReboot {
        /// Whether dirty page-cache pages must be written back first.
        needs_sync: bool,
    },
    /// Stores go straight to persistent memory: a `/dev/dax*` device or a
    /// file with DAX enabled. ([`GuestRam::sync`] still `fsync`s a DAX
    /// file so that blocks allocated by page faults are in its metadata.)
    ///
    /// [`GuestRam::sync`]: crate::GuestRam::sync
    Persistent,
}

impl Persistence {
    /// A phrase for messages: "it survives a process restart but not a host
    /// reboot", ...
    pub fn describe(&self) -> &'static str {
        match self {
            Persistence::ProcessLifetime => "it is lost when the process exits",
            Persistence::UntilHostReboot => "it survives a process restart but not a host reboot",
            Persistence::AcrossHostReboot { needs_sync: true } => {
                "it survives a host reboot once synced"
            }
            Persistence::AcrossHostReboot { needs_sync: false } => "it survives a host reboot",
            Persistence::Persistent => "it is persistent memory and survives a host reboot",
        }
    }

    /// Whether a new process started on the same host finds the contents.
    pub fn survives_process_restart(&self) -> bool {
        !matches!(self, Persistence::ProcessLifetime)
    }

    /// Whether the contents survive a host (kexec) reboot, given a sync.
    pub fn survives_host_reboot(&self) -> bool {
        matches!(
            self,
            Persistence::AcrossHostReboot { .. } | Persistence::Persistent
        )
    }
}

/// What a block's bytes are stored in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// Anonymous memory.
    Anonymous,
    /// A memfd (created by us or inherited; `/memfd:` in `/proc/self/fd`).
    Memfd,
    /// A tmpfs file, e.g. under `/dev/shm`.
    Tmpfs,
    /// A ramfs file.
    Ramfs,
    /// A hugetlbfs file.
    Hugetlbfs,
    /// A file on a block-device or network filesystem.
    DiskFs {
        /// Filesystem name, e.g. `"ext2/3/4"`.
        fs: &'static str,
    },
    /// A device-DAX character device (`/dev/daxX.Y`).
    DaxDevice,
    /// A file on a filesystem with DAX in effect (`statx` `STATX_ATTR_DAX`,
    /// or a `dax`/`dax=always` mount option).
    DaxFs {
        /// Filesystem name.
        fs: &'static str,
    },
    /// A character device that is not device DAX.
    CharDevice,
    /// Anything else: raw `f_type` from `statfs`.
    OtherFs {
        /// The filesystem magic number.
        f_type: i64,
    },
}

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Medium::Anonymous => f.write_str("anonymous memory"),
            Medium::Memfd => f.write_str("memfd"),
            Medium::Tmpfs => f.write_str("tmpfs"),
            Medium::Ramfs => f.write_str("ramfs"),
            Medium::Hugetlbfs => f.write_str("hugetlbfs"),
            Medium::DiskFs { fs } => write!(f, "{fs}"),
            Medium::DaxDevice => f.write_str("device DAX"),
            Medium::DaxFs { fs } => write!(f, "{fs} with DAX"),
            Medium::CharDevice => f.write_str("character device"),
            Medium::OtherFs { f_type } => write!(f, "a filesystem of type {f_type:#x}"),
        }
    }
}

impl Medium {
    fn lifetime(&self) -> Persistence {
        match self {
            Medium::Anonymous | Medium::Memfd => Persistence::ProcessLifetime,
            Medium::Tmpfs
            | Medium::Ramfs
            | Medium::Hugetlbfs
            | Medium::CharDevice
            | Medium::OtherFs { .. } => Persistence::UntilHostReboot,
            Medium::DiskFs { .. } => Persistence::AcrossHostReboot { needs_sync: true },
            Medium::DaxDevice | Medium::DaxFs { .. } => Persistence::Persistent,
        }
    }
}

/// The classification of one block, with a message for `cpr-save`.
///
/// Its `Display` reads e.g. "RAM block pc.ram is backed by tmpfs
/// /dev/shm/x: it survives a process restart but not a host reboot".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistenceReport {
    /// Block name (`idstr`).
    pub block: String,
    /// The backing as written in the block ([`Backing`]'s `Display`).
    pub backing: String,
    /// What the backing is stored in.
    pub medium: Medium,
    /// Whether the block is mapped shared (a private mapping never writes
    /// through, whatever the medium).
    pub shared: bool,
    /// The verdict.
    pub persistence: Persistence,
}

impl fmt::Display for PersistenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RAM block {} is backed by ", self.block)?;
        match self.medium {
            Medium::Anonymous => f.write_str("anonymous memory")?,
            _ => write!(f, "{} {}", self.medium, self.backing)?,
        }
        if !self.shared && self.medium != Medium::Anonymous {
            f.write_str(" mapped private")?;
        }
        write!(f, ": {}", self.persistence.describe())?;
        if self.medium == Medium::Memfd {
            f.write_str(" (a memfd outlives it only if its descriptor is passed on)")?;
        }
        Ok(())
    }
}

/// Classify `block`. Files are inspected with `statfs`/`statx`; a file that
/// does not exist yet is classified by its parent directory. Anonymous and
/// memfd blocks need no system call.
pub fn persistence(block: &RamBlock) -> Result<PersistenceReport> {
    let medium = match block.backing() {
        Backing::Anonymous => Medium::Anonymous,
        Backing::Memfd { .. } => Medium::Memfd,
        Backing::File { path } => file_medium(block, path)?,
        Backing::InheritedFd(fd) => fd_medium(block, fd)?,
    };
    let persistence = if block.shared() {
        medium.lifetime()
    } else {
        Persistence::ProcessLifetime
    };
    Ok(PersistenceReport {
        block: block.idstr().to_owned(),
        backing: block.backing().to_string(),
        medium,
        shared: block.shared(),
        persistence,
    })
}

fn stat_err(block: &RamBlock, what: impl fmt::Display) -> impl FnOnce(io::Error) -> Error {
    let block = block.idstr().to_owned();
    let what = what.to_string();
    move |source| Error::Stat {
        block,
        what,
        source,
    }
}

fn file_medium(block: &RamBlock, path: &Path) -> Result<Medium> {
    match fs::File::open(path) {
        Ok(file) => {
            let meta = file.metadata().map_err(stat_err(block, path.display()))?;
            if meta.file_type().is_char_device() {
                return Ok(char_device_medium(meta.rdev(), path));
            }
            let st = fstatfs(&file).map_err(|e| stat_err(block, path.display())(e.into()))?;
            let dax = statx_dax(&file) || mount_has_dax(path);
            Ok(fs_medium(&st, dax))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let st = statfs(parent).map_err(|e| stat_err(block, parent.display())(e.into()))?;
            Ok(fs_medium(&st, mount_has_dax(parent)))
        }
        Err(e) => Err(stat_err(block, path.display())(e)),
    }
}

fn fd_medium(block: &RamBlock, fd: &impl AsFd) -> Result<Medium> {
    let raw = fd.as_fd().as_raw_fd();
    let what = format!("fd {raw}");
    let link = fs::read_link(format!("/proc/self/fd/{raw}")).ok();
    if link
        .as_ref()
        .is_some_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"/memfd:"))
    {
        return Ok(Medium::Memfd);
    }
    let file = fs::File::from(
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(stat_err(block, &what))?,
    );
    let meta = file.metadata().map_err(stat_err(block, &what))?;
    if meta.file_type().is_char_device() {
        return Ok(char_device_medium(
            meta.rdev(),
            link.as_deref().unwrap_or(Path::new("")),
        ));
    }
    let st = fstatfs(&file).map_err(|e| stat_err(block, &what)(e.into()))?;
    let dax = statx_dax(&file) || link.as_deref().is_some_and(mount_has_dax);
    Ok(fs_medium(&st, dax))
}

/// A character device is device DAX if sysfs says its subsystem is `dax`;
/// without sysfs, fall back on the `/dev/dax*` name.
fn char_device_medium(rdev: u64, path: &Path) -> Medium {
    let sys = PathBuf::from(format!(
        "/sys/dev/char/{}:{}/subsystem",
        major(rdev),
        minor(rdev)
    ));
    let by_sysfs = fs::read_link(sys)
        .ok()
        .is_some_and(|l| l.file_name().is_some_and(|n| n == "dax"));
    let by_name = path
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"dax"));
    if by_sysfs || by_name {
        Medium::DaxDevice
    } else {
        Medium::CharDevice
    }
}

const RAMFS: FsType = FsType(0x8584_58f6);
const ZFS: FsType = FsType(0x2fc1_2fc1);

fn fs_medium(st: &Statfs, dax: bool) -> Medium {
    medium_for_magic(st.filesystem_type(), dax)
}

/// Map a `statfs` magic (plus the DAX finding) to a medium.
#[allow(
    clippy::useless_conversion,
    reason = "fs_type_t is i64 on x86_64 glibc but not on every Linux target"
)]
fn medium_for_magic(t: FsType, dax: bool) -> Medium {
    let disk = [
        (EXT4_SUPER_MAGIC, "ext2/3/4"),
        (XFS_SUPER_MAGIC, "xfs"),
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (F2FS_SUPER_MAGIC, "f2fs"),
        (REISERFS_SUPER_MAGIC, "reiserfs"),
        (ZFS, "zfs"),
        (NFS_SUPER_MAGIC, "nfs"),
    ];
    if t == TMPFS_MAGIC {
        Medium::Tmpfs
    } else if t == HUGETLBFS_MAGIC {
        Medium::Hugetlbfs
    } else if t == RAMFS {
        Medium::Ramfs
    } else if let Some((_, fs)) = disk.iter().find(|(m, _)| *m == t) {
        if dax {
            Medium::DaxFs { fs }
        } else {
            Medium::DiskFs { fs }
        }
    } else {
        Medium::OtherFs {
            f_type: i64::from(t.0),
        }
    }
}

/// Whether `statx` reports `STATX_ATTR_DAX` for the open file (Linux 5.8+;
/// false when the kernel does not report the attribute).
fn statx_dax(file: &fs::File) -> bool {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `file` is an open descriptor for the duration of the call, the
    // path is a NUL-terminated empty string as AT_EMPTY_PATH requires, and
    // `buf` is a writable, properly aligned `struct statx`.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return false;
    }
    // SAFETY: statx returned 0, so the kernel filled `buf` (and it was
    // zero-initialised anyway, a valid bit pattern for this plain C struct).
    let stx = unsafe { buf.assume_init() };
    let dax = u64::from(libc::STATX_ATTR_DAX.unsigned_abs());
    stx.stx_attributes_mask & dax != 0 && stx.stx_attributes & dax != 0
}

fn mount_has_dax(path: &Path) -> bool {
    let Ok(canonical) = fs::canonicalize(path) else {
        return false;
    };
    fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| mount_options_for(&info, &canonical))
        .is_some_and(|opts| has_dax_option(&opts))
}

/// The mount and superblock options of the mount covering `path` (the
/// longest matching mount point, the later line winning a tie), joined by
/// commas, from `/proc/self/mountinfo` text.
fn mount_options_for(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount_point), Some(mount_opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let super_opts = fields.get(sep + 3).copied().unwrap_or("");
        let mount_point = unescape_octal(mount_point);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = Path::new(&mount_point).components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, format!("{mount_opts},{super_opts}")));
        }
    }
    best.map(|(_, opts)| opts)
}

fn has_dax_option(opts: &str) -> bool {
    opts.split(',').any(|o| o == "dax" || o == "dax=always")
}

/// Undo mountinfo's `\ooo` escaping of space, tab, newline and backslash.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
41 22 259:1 / /mnt/pmem rw,relatime shared:9 - xfs /dev/pmem0 rw,attr2,dax=always
42 22 259:2 / /mnt/my\\040pm rw,relatime shared:10 - ext4 /dev/pmem1 rw,dax
43 22 259:3 / /mnt/pmem/sub rw,relatime shared:11 - ext4 /dev/sdb1 rw,dax=never
";

    #[test]
    fn mountinfo_longest_prefix_and_dax_options() {
        let opts = |p: &str| mount_options_for(MOUNTINFO, Path::new(p)).unwrap();
        assert!(!has_dax_option(&opts("/var/tmp/ram")));
        assert!(!has_dax_option(&opts("/dev/shm/ram")));
        assert!(has_dax_option(&opts("/mnt/pmem/ram")));
        assert!(has_dax_option(&opts("/mnt/my pm/ram")));
        // A nested non-DAX mount wins over the DAX mount above it.
        assert!(!has_dax_option(&opts("/mnt/pmem/sub/ram")));
        // Component-wise prefix: /mnt/pmemx is not under /mnt/pmem.
        assert!(!has_dax_option(&opts("/mnt/pmemx/ram")));
        assert!(!has_dax_option("rw,dax=inode,relatime"));
    }

    #[test]
    fn magic_table() {
        assert_eq!(medium_for_magic(TMPFS_MAGIC, false), Medium::Tmpfs);
        assert_eq!(medium_for_magic(HUGETLBFS_MAGIC, true), Medium::Hugetlbfs);
        assert_eq!(medium_for_magic(RAMFS, false), Medium::Ramfs);
        assert_eq!(
            medium_for_magic(XFS_SUPER_MAGIC, false),
            Medium::DiskFs { fs: "xfs" }
        );
        assert_eq!(
            medium_for_magic(EXT4_SUPER_MAGIC, true),
            Medium::DaxFs { fs: "ext2/3/4" }
        );
        assert_eq!(
            medium_for_magic(FsType(0x1234), false).lifetime(),
            Persistence::UntilHostReboot
        );
        assert_eq!(Medium::DaxDevice.lifetime(), Persistence::Persistent);
    }
}
