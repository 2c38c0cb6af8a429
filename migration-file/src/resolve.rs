//! [`ResolvedPath`]: where a checkpoint path really leads, resolved the way the kernel
//! would, refusing the symlinks that `fs.protected_symlinks` refuses.
//!
//! A checkpoint path is resolved one component at a time, each step relative to the
//! directory descriptor reached by the previous one (`openat(2)` with `O_PATH |
//! O_NOFOLLOW`). Every symlink met on the way, whether it is an intermediate component or
//! the final one, is opened itself, checked (its owner, and the directory it sits in)
//! and read through that same descriptor, so what is checked is what is followed. At
//! most [`MAX_SYMLINKS`] links are followed, as in the kernel.
//!
//! The result is a directory descriptor and a final name that is not a symlink (or does
//! not exist yet). Everything done later (creating, opening, linking, renaming, syncing)
//! is relative to that descriptor, so renaming a directory on the path, or swapping a
//! component for a link, after the check changes nothing; a link planted at the final
//! name later is refused by `O_NOFOLLOW` or replaced (never followed) by `renameat(2)`.
//!
//! # The symlink rule
//!
//! The kernel's `fs.protected_symlinks` (`may_follow_link` in `fs/namei.c`) refuses to
//! follow a symlink that sits in a sticky, world-writable directory (such as `/tmp` or
//! `/dev/shm`) unless the link is owned by the follower (its fsuid) or by the directory's
//! owner. A link someone else planted there would otherwise make a privileged process
//! replace or create any file it names. We apply that rule always, whatever the sysctl
//! says, with the effective uid as the follower: such a link is [`Error::UnsafeSymlink`].

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::error::{Error, Result};

/// How many symlinks one resolution follows at most (the kernel's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: u32 = 40;

/// The identity of a file: its device and inode numbers (`st_dev`, `st_ino`). Two paths
/// with the same identity are the same file (hard links, or a link and its target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file (`fstat(2)`).
    pub fn of(fd: impl AsFd) -> nix::Result<FileId> {
        nix::sys::stat::fstat(fd).map(|st| FileId::from(&st))
    }
}

impl From<&FileStat> for FileId {
    fn from(st: &FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// A path resolved to a directory descriptor and a final name that is not a symlink.
///
/// ```
/// # fn main() -> cpr_migration_file::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("cpr-doc-resolve-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).map_err(|_| unreachable!())?;
/// use cpr_migration_file::ResolvedPath;
/// std::fs::write(dir.join("real.state"), b"x").map_err(|_| unreachable!())?;
/// std::os::unix::fs::symlink("real.state", dir.join("link.state")).map_err(|_| unreachable!())?;
/// let r = ResolvedPath::new(dir.join("link.state"))?;
/// assert_eq!(r.name(), "real.state");
/// assert!(r.existing().is_some());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ResolvedPath {
    /// The directory holding the final name (`O_PATH | O_DIRECTORY`).
    dir: OwnedFd,
    /// That directory's path, for messages (lexical: built from the components walked).
    dir_path: PathBuf,
    /// The final name: no slash, not `.` or `..`.
    name: OsString,
    /// What the final name was when resolved (never a symlink), if it existed: its
    /// identity and file type.
    existing: Option<(FileId, SFlag)>,
}

/// One step of the walk.
enum Step {
    /// `..`.
    Parent,
    /// A name.
    Name(OsString),
}

/// Splits `bytes` into steps (empty and `.` components dropped); the flag says whether
/// the path ends in a slash (or in `/.`), i.e. must name a directory.
fn split(bytes: &[u8]) -> (Vec<Step>, bool) {
    let steps = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| match c {
            b".." => Step::Parent,
            name => Step::Name(OsString::from_vec(name.to_vec())),
        })
        .collect();
    let trailing = bytes.ends_with(b"/") || bytes.ends_with(b"/.") || bytes == b".";
    (steps, trailing)
}

fn open_dir_path(path: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(path, flags, Mode::empty()).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}

impl ResolvedPath {
    /// Resolves `path` (see the module documentation). Fails with
    /// [`Error::UnsafeSymlink`] for a link the kernel's `fs.protected_symlinks` would not
    /// follow, [`Error::NoFileName`] for a path with no final name (`/`, `..`),
    /// [`Error::NotRegularFile`] when a symlink leads to a directory, and [`Error::Open`]
    /// (with the path walked so far) when a component cannot be looked up (`ENOENT`,
    /// `ENOTDIR`, `EACCES`, or `ELOOP` after [`MAX_SYMLINKS`] links).
    pub fn new(path: impl AsRef<Path>) -> Result<ResolvedPath> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        let (mut pending, trailing) = split(bytes);
        // The user's own path must end in a name.
        if trailing || !matches!(pending.last(), Some(Step::Name(_))) {
            return Err(Error::NoFileName {
                path: path.to_path_buf(),
            });
        }
        pending.reverse(); // a stack: the next step is last
        let (mut dir, mut dir_path) = if bytes.starts_with(b"/") {
            (open_dir_path(Path::new("/"))?, PathBuf::from("/"))
        } else {
            (open_dir_path(Path::new("."))?, PathBuf::new())
        };
        let euid = nix::unistd::geteuid().as_raw();
        let mut hops = 0;
        // Set when the steps that are left came from a link whose target ends in a slash.
        let mut must_be_dir = false;
        while let Some(step) = pending.pop() {
            let last = pending.is_empty();
            let name = match step {
                Step::Parent => {
                    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                    dir =
                        nix::fcntl::openat(&dir, "..", flags, Mode::empty()).map_err(|source| {
                            Error::Open {
                                path: dir_path.join(".."),
                                source,
                            }
                        })?;
                    if dir_path.as_os_str().is_empty() || dir_path.ends_with("..") {
                        dir_path.push("..");
                    } else if dir_path != Path::new("/") {
                        dir_path.pop();
                    }
                    if last {
                        // A link led to a directory.
                        return Err(Error::NotRegularFile { path: dir_path });
                    }
                    continue;
                }
                Step::Name(name) => name,
            };
            let here = dir_path.join(&name);
            let open_err = |source| Error::Open {
                path: here.clone(),
                source,
            };
            // Open the component itself, never what it points to, and look at what it is
            // through that descriptor.
            let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = match nix::fcntl::openat(&dir, name.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if last && !must_be_dir => {
                    return Ok(ResolvedPath {
                        dir,
                        dir_path,
                        name,
                        existing: None,
                    });
                }
                Err(source) => return Err(open_err(source)),
            };
            let st = nix::sys::stat::fstat(&fd).map_err(open_err)?;
            match kind(&st) {
                SFlag::S_IFDIR if last => return Err(Error::NotRegularFile { path: here }),
                SFlag::S_IFDIR => {
                    dir = fd;
                    dir_path = here;
                }
                SFlag::S_IFLNK => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(open_err(Errno::ELOOP));
                    }
                    let parent = nix::sys::stat::fstat(&dir).map_err(open_err)?;
                    check_link(&st, &parent, euid, &here, &dir_path)?;
                    let target = nix::fcntl::readlinkat(&fd, "").map_err(open_err)?;
                    let target = target.as_bytes();
                    if target.is_empty() {
                        return Err(open_err(Errno::ENOENT));
                    }
                    let (steps, trailing) = split(target);
                    if last {
                        must_be_dir |= trailing;
                    }
                    if target.starts_with(b"/") {
                        dir = open_dir_path(Path::new("/"))?;
                        dir_path = PathBuf::from("/");
                    }
                    if steps.is_empty() && pending.is_empty() {
                        // The link names a directory (`/`, `.`) and nothing follows.
                        return Err(Error::NotRegularFile { path: dir_path });
                    }
                    pending.extend(steps.into_iter().rev());
                }
                _ if last && must_be_dir => return Err(open_err(Errno::ENOTDIR)),
                _ if last => {
                    return Ok(ResolvedPath {
                        dir,
                        dir_path,
                        name,
                        existing: Some((FileId::from(&st), kind(&st))),
                    });
                }
                _ => return Err(open_err(Errno::ENOTDIR)),
            }
        }
        // Not reached: the last step always returns (a link's steps go before it ends).
        Err(Error::NotRegularFile { path: dir_path })
    }

    /// The path of the file this resolution leads to (links followed), for messages.
    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    /// The directory holding it (an `O_PATH` descriptor: usable as the `dirfd` of the
    /// `*at` calls, not for I/O).
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The path of that directory, for messages.
    pub fn dir_path(&self) -> &Path {
        &self.dir_path
    }

    /// The final name in [`dir`](Self::dir).
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The identity of the file at the final name when it was resolved, if it existed.
    pub fn existing(&self) -> Option<FileId> {
        self.existing.map(|(id, _)| id)
    }

    /// Whether the final name existed when resolved and was not a regular file.
    pub fn exists_not_regular(&self) -> bool {
        self.existing
            .is_some_and(|(_, kind)| kind != SFlag::S_IFREG)
    }

    /// Opens the final name with `openat(2)`, adding `O_NOFOLLOW | O_CLOEXEC`: a link
    /// planted there since the resolution is refused (`ELOOP`), never followed.
    pub fn open(&self, flags: OFlag, mode: Mode) -> Result<OwnedFd> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        nix::fcntl::openat(&self.dir, self.name.as_os_str(), flags, mode).map_err(|source| {
            Error::Open {
                path: self.path(),
                source,
            }
        })
    }
}

/// The file type bits of `st`.
pub(crate) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// The kernel's `may_follow_link` with `fs.protected_symlinks = 1`: a link is followed
/// unless it sits in a sticky, world-writable directory and is owned neither by the
/// follower nor by the directory's owner.
fn check_link(
    link: &FileStat,
    dir: &FileStat,
    euid: u32,
    path: &Path,
    dir_path: &Path,
) -> Result<()> {
    let sticky_world_writable = libc::S_ISVTX | libc::S_IWOTH;
    if link.st_uid == euid
        || dir.st_mode & sticky_world_writable != sticky_world_writable
        || dir.st_uid == link.st_uid
    {
        return Ok(());
    }
    Err(Error::UnsafeSymlink {
        path: path.to_path_buf(),
        dir: if dir_path.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir_path.to_path_buf()
        },
        link_uid: link.st_uid,
        dir_uid: dir.st_uid,
        euid,
    })
}

/// Opens a directory held as an `O_PATH` descriptor again, for reading (listing or
/// `fsync(2)`).
pub(crate) fn reopen_dir(dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, ".", flags, Mode::empty())
}

#[cfg(test)]
mod tests;
