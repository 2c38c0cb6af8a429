//! [`AtomicFile`]: save a checkpoint without ever destroying the previous one.
//!
//! V7's cpr-save opens the target with `O_WRONLY | O_CREAT | O_TRUNC`, so a
//! failed save (disk full, crash, device error) leaves neither the old nor a
//! complete new checkpoint. Here the stream goes to a temporary file in the
//! target's directory and only a fully written, synced file is renamed over it.
//!
//! The target is resolved with [`ResolvedPath`] (symlinks followed as the kernel
//! would, refusing those `fs.protected_symlinks` refuses); every later step is
//! relative to the directory descriptor it yields. The temporary is an unnamed
//! `O_TMPFILE`, given a name only at commit (a random, hidden one, created
//! exclusively by `linkat(2)`), which is then renamed over the target: a save
//! killed before the commit leaves nothing behind. Where the file system has no
//! `O_TMPFILE`, the temporary is created under a random name with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`. Nothing is predictable, so nothing can be
//! squatted on. The names carry the creator's pid
//! (`.<target>.cpr-<pid>-<random>.tmp`), and each new save to a target removes
//! the ones a dead process left (a fallback temporary of a killed save, or one
//! killed between the link and the rename), if they are regular files of ours
//! that no open file description holds locked.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::error::{Error, Result};
use crate::qemu_file::QemuFile;
use crate::resolve::{FileId, ResolvedPath, kind, reopen_dir};

/// Permissions of the temporary (and so the final) file: owner read/write.
const TEMP_MODE: u32 = 0o600;

/// How many random names to try before giving up on `EEXIST`.
const TEMP_ATTEMPTS: u32 = 64;

/// Longest slice of the target's file name kept in the temporary name, so
/// the temporary name stays within `NAME_MAX` (255).
const TEMP_STEM_MAX: usize = 200;

/// What follows the stem in a temporary name, before `<pid>-<random>.tmp`.
const TEMP_MARK: &[u8] = b".cpr-";

/// How a temporary file is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// `O_TMPFILE` where the file system has it, else [`Strategy::Named`].
    Auto,
    /// A random name, `O_CREAT | O_EXCL | O_NOFOLLOW` (tests force it).
    #[cfg_attr(not(test), allow(dead_code))]
    Named,
}

/// Where the temporary file is.
#[derive(Debug)]
enum Temp {
    /// An unnamed `O_TMPFILE`: nothing to remove, it goes with its last descriptor.
    Unnamed,
    /// A name in the target's directory (the fallback, or an `O_TMPFILE` just linked in).
    Named(OsString),
    /// Renamed over the target: nothing left to remove.
    Gone,
}

/// An output [`QemuFile`] that replaces `target` atomically on
/// [`commit`](Self::commit).
///
/// The temporary file lives in the target's directory (so the rename is
/// atomic), is an unnamed `O_TMPFILE` (or, where the file system has none, a
/// random hidden name created with `O_EXCL | O_NOFOLLOW`), and has mode 0600
/// exactly, whatever the umask. Dropping an `AtomicFile` without committing
/// leaves the target untouched and nothing behind.
///
/// ```
/// # fn main() -> cpr_migration_file::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("cpr-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).map_err(|_| unreachable!())?;
/// let target = dir.join("vm.state");
/// let mut save = cpr_migration_file::AtomicFile::create(&target, "cpr-save")?;
/// save.file().put_u32(0x5145_564d);
/// save.commit()?;
/// assert_eq!(std::fs::read(&target).ok(), Some(b"QEVM".to_vec()));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct AtomicFile {
    /// `None` once consumed by `commit`.
    file: Option<QemuFile>,
    /// The temporary file's descriptor (the open file description the stream writes
    /// to): to link it in, and to hold its lock until the rename.
    fd: OwnedFd,
    temp: Temp,
    target: ResolvedPath,
    target_path: PathBuf,
}

/// The target's name as kept in temporary names.
fn stem(target: &ResolvedPath) -> &[u8] {
    let name = target.name().as_bytes();
    name.get(..TEMP_STEM_MAX).unwrap_or(name)
}

/// Eight unpredictable bytes (the kernel's `/dev/urandom`; std's randomly keyed hasher if
/// that cannot be read).
fn random_u64() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_ok() {
        return u64::from_ne_bytes(buf);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A fresh temporary name for `stem`: `.<stem>.cpr-<pid>-<random>.tmp`.
fn temp_name(stem: &[u8]) -> OsString {
    let mut name = b".".to_vec();
    name.extend_from_slice(stem);
    name.extend_from_slice(TEMP_MARK);
    name.extend_from_slice(format!("{}-{:016x}.tmp", std::process::id(), random_u64()).as_bytes());
    OsString::from_vec(name)
}

/// The pid a temporary name of `stem` carries, if `name` is one.
fn temp_pid(stem: &[u8], name: &[u8]) -> Option<i32> {
    let rest = name
        .strip_prefix(b".")?
        .strip_prefix(stem)?
        .strip_prefix(TEMP_MARK)?
        .strip_suffix(b".tmp")?;
    let (pid, random) = rest.split_at(rest.iter().position(|&b| b == b'-')?);
    let random = random.get(1..)?;
    if random.is_empty() || !random.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(pid)
        .ok()?
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
}

/// A whole-file lock record of type `l_type`.
fn whole_file(l_type: libc::c_int) -> Option<libc::flock> {
    Some(libc::flock {
        l_type: libc::c_short::try_from(l_type).ok()?,
        l_whence: libc::c_short::try_from(libc::SEEK_SET).ok()?,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    })
}

/// Marks a temporary file as in use for as long as its open file description lives (an
/// open-file-description write lock, released by the kernel when the process dies).
/// Best effort: a file system without locks leaves the pid as the only clue.
fn lock_in_use(fd: BorrowedFd<'_>) {
    if let Some(fl) = whole_file(libc::F_WRLCK) {
        let _ = nix::fcntl::fcntl(fd, FcntlArg::F_OFD_SETLK(&fl));
    }
}

/// Whether some open file description holds a lock on `fd`'s file.
fn locked_by_someone(fd: BorrowedFd<'_>) -> bool {
    let Some(mut fl) = whole_file(libc::F_RDLCK) else {
        return false;
    };
    match nix::fcntl::fcntl(fd, FcntlArg::F_OFD_GETLK(&mut fl)) {
        Ok(_) => libc::c_int::from(fl.l_type) != libc::F_UNLCK,
        Err(_) => false,
    }
}

/// Whether process `pid` may still be alive (anything but `ESRCH` says it may).
fn process_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Removes the temporary files of `target` that dead processes left behind: names of
/// our pattern carrying the pid of a process that is gone (never our own), that are
/// regular files owned by our effective uid and that no one holds locked. Returns how
/// many were removed. Best effort: anything odd is left alone.
fn remove_leftovers(target: &ResolvedPath) -> usize {
    let stem = stem(target);
    let Ok(listing) = reopen_dir(target.dir()).and_then(nix::dir::Dir::from_fd) else {
        return 0;
    };
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let names: Vec<(OsString, i32)> = {
        let mut listing = listing;
        listing
            .iter()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_bytes();
                let pid = temp_pid(stem, name)?;
                Some((OsString::from_vec(name.to_vec()), pid))
            })
            .collect()
    };
    let euid = nix::unistd::geteuid().as_raw();
    let dir = target.dir();
    let mut removed = 0;
    for (name, pid) in names {
        if pid == me || process_alive(pid) {
            continue;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let Ok(fd) = nix::fcntl::openat(dir, name.as_os_str(), flags, Mode::empty()) else {
            continue;
        };
        let Ok(st) = nix::sys::stat::fstat(&fd) else {
            continue;
        };
        if kind(&st) != SFlag::S_IFREG || st.st_uid != euid || locked_by_someone(fd.as_fd()) {
            continue;
        }
        // Still that file under that name?
        let now = nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
        if now.is_ok_and(|now| FileId::from(&now) == FileId::from(&st))
            && nix::unistd::unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

impl AtomicFile {
    /// Create the temporary file for `target`; `name` names the stream's
    /// channel (see [`QemuFile::name`]).
    ///
    /// Fails with [`Error::UnsafeSymlink`] when the path goes through a symlink the
    /// kernel's `fs.protected_symlinks` would refuse to follow, [`Error::NotRegularFile`]
    /// when the target exists and is not a regular file, [`Error::NoFileName`],
    /// [`Error::Open`] when the path cannot be resolved, and [`Error::TempCreate`].
    pub fn create(target: impl AsRef<Path>, name: &str) -> Result<AtomicFile> {
        Self::create_with(target.as_ref(), name, Strategy::Auto)
    }

    fn create_with(target: &Path, name: &str, strategy: Strategy) -> Result<AtomicFile> {
        let target = ResolvedPath::new(target)?;
        let target_path = target.path();
        if target.exists_not_regular() {
            return Err(Error::NotRegularFile { path: target_path });
        }
        remove_leftovers(&target);
        let mode = Mode::from_bits_truncate(TEMP_MODE);
        let unnamed = match strategy {
            Strategy::Auto => {
                let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
                match nix::fcntl::openat(target.dir(), ".", flags, mode) {
                    Ok(fd) => Some(fd),
                    // No O_TMPFILE here (or a kernel that predates it).
                    Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => None,
                    Err(source) => {
                        return Err(Error::TempCreate {
                            path: target.dir_path().to_path_buf(),
                            source,
                        });
                    }
                }
            }
            Strategy::Named => None,
        };
        let (fd, temp) = match unnamed {
            Some(fd) => (fd, Temp::Unnamed),
            None => Self::create_named(&target)?,
        };
        let mut save = AtomicFile {
            file: None,
            fd,
            temp,
            target,
            target_path,
        };
        // From here on, Drop removes a named temporary.
        let fail = |save: &AtomicFile, source| Error::TempCreate {
            path: save.temp_path(),
            source,
        };
        // The umask may have removed bits: make the mode exactly 0600.
        if let Err(source) = nix::sys::stat::fchmod(&save.fd, mode) {
            return Err(fail(&save, source));
        }
        lock_in_use(save.fd.as_fd());
        let stream = match save.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                let source = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
                return Err(fail(&save, source));
            }
        };
        save.file = Some(QemuFile::from_fd(stream, true, name));
        Ok(save)
    }

    /// The fallback: a random name, created exclusively and never through a link.
    fn create_named(target: &ResolvedPath) -> Result<(OwnedFd, Temp)> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(TEMP_MODE);
        let mut attempt = 0;
        loop {
            let name = temp_name(stem(target));
            match nix::fcntl::openat(target.dir(), name.as_os_str(), flags, mode) {
                Ok(fd) => return Ok((fd, Temp::Named(name))),
                Err(Errno::EEXIST | Errno::EINTR) if attempt < TEMP_ATTEMPTS => attempt += 1,
                Err(source) => {
                    return Err(Error::TempCreate {
                        path: target.dir_path().join(name),
                        source,
                    });
                }
            }
        }
    }

    /// The stream to write the checkpoint into.
    ///
    /// # Panics
    ///
    /// Never: the file is only taken by [`commit`](Self::commit), which
    /// consumes `self`.
    pub fn file(&mut self) -> &mut QemuFile {
        self.file
            .as_mut()
            .expect("AtomicFile::file is present until commit consumes self")
    }

    /// The path that [`commit`](Self::commit) replaces (symlinks followed).
    pub fn target(&self) -> &Path {
        &self.target_path
    }

    /// The identity of the file [`commit`](Self::commit) would replace, if the target
    /// existed when this save was created: a caller can refuse to replace a file it must
    /// keep (the VM's own RAM) before it writes anything.
    pub fn replaces(&self) -> Option<FileId> {
        self.target.existing()
    }

    /// Where the temporary is, for messages: its name once it has one, else the
    /// directory it is in.
    fn temp_path(&self) -> PathBuf {
        match &self.temp {
            Temp::Named(n) => self.target.dir_path().join(n),
            Temp::Unnamed | Temp::Gone => self.target.dir_path().to_path_buf(),
        }
    }

    /// Gives an unnamed temporary a random name in the target's directory, created
    /// exclusively (`linkat(2)` never replaces a name).
    fn link_in(&mut self) -> Result<()> {
        let proc_path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let dir = self.target.dir();
        let mut attempt = 0;
        loop {
            let name = temp_name(stem(&self.target));
            let via_proc = nix::unistd::linkat(
                AT_FDCWD,
                proc_path.as_str(),
                dir,
                name.as_os_str(),
                AtFlags::AT_SYMLINK_FOLLOW,
            );
            // No /proc: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH on older kernels).
            let linked = match via_proc {
                Err(Errno::ENOENT) => {
                    nix::unistd::linkat(&self.fd, "", dir, name.as_os_str(), AtFlags::AT_EMPTY_PATH)
                }
                other => other,
            };
            match linked {
                Ok(()) => {
                    self.temp = Temp::Named(name);
                    return Ok(());
                }
                Err(Errno::EEXIST | Errno::EINTR) if attempt < TEMP_ATTEMPTS => attempt += 1,
                Err(source) => {
                    return Err(Error::TempCreate {
                        path: self.target.dir_path().join(name),
                        source,
                    });
                }
            }
        }
    }

    /// Flush, `fsync`, close (reporting errors), give the temporary a name if it has
    /// none, rename it over the target and `fsync` the directory.
    ///
    /// Any error up to and including the rename (a latched stream error, a
    /// failed flush, sync, close, link or rename) removes the temporary file and
    /// leaves the previous target byte-identical. The one error after the
    /// rename, [`Error::DirSync`], means the new checkpoint is in place but
    /// its directory entry may not yet be durable.
    pub fn commit(mut self) -> Result<()> {
        // On error, Drop removes the temporary file.
        if let Some(mut file) = self.file.take() {
            file.fsync().and_then(|()| file.close())?;
        }
        if matches!(self.temp, Temp::Unnamed) {
            self.link_in()?;
        }
        if let Temp::Named(temp) = &self.temp {
            let dir = self.target.dir();
            nix::fcntl::renameat(dir, temp.as_os_str(), dir, self.target.name()).map_err(|e| {
                Error::Rename {
                    from: self.target.dir_path().join(temp),
                    to: self.target_path.clone(),
                    source: Arc::new(std::io::Error::from(e)),
                }
            })?;
        }
        // Renamed: nothing left for Drop to remove.
        self.temp = Temp::Gone;
        sync_dir(self.target.dir(), self.target.dir_path())
    }
}

/// `fsync(2)` a directory so a rename in it survives a crash. File systems
/// that cannot sync directories (`EINVAL`) are accepted.
fn sync_dir(dir: BorrowedFd<'_>, dir_path: &Path) -> Result<()> {
    match reopen_dir(dir).and_then(nix::unistd::fsync) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(source) => Err(Error::DirSync {
            dir: if dir_path.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir_path.to_path_buf()
            },
            source,
        }),
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Close first (the flush goes to the temporary file), then unlink.
        drop(self.file.take());
        if let Temp::Named(name) = &self.temp {
            let _ = nix::unistd::unlinkat(
                self.target.dir(),
                OsStr::new(name),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests;
