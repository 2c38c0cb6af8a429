//! [`AtomicFile`]: save a checkpoint without ever destroying the previous one.
//!
//! V7's cpr-save opens the target with `O_WRONLY | O_CREAT | O_TRUNC`, so a
//! failed save (disk full, crash, device error) leaves neither the old nor a
//! complete new checkpoint. Here the stream goes to a temporary file beside
//! the target and only a fully written, synced file is renamed over it.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::qemu_file::QemuFile;

/// Permissions of the temporary (and so the final) file: owner read/write.
const TEMP_MODE: u32 = 0o600;

/// How many unique names to try before giving up on `EEXIST`.
const TEMP_ATTEMPTS: u32 = 64;

/// Longest slice of the target's file name kept in the temporary name, so
/// the temporary name stays within `NAME_MAX` (255).
const TEMP_STEM_MAX: usize = 200;

/// Per-process counter making temporary names unique between threads.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An output [`QemuFile`] that replaces `target` atomically on
/// [`commit`](Self::commit).
///
/// The temporary file lives in the target's directory (so `rename(2)` is
/// atomic), has a unique hidden name, is created with `O_EXCL | O_CLOEXEC`
/// and mode 0600 (set explicitly, whatever the umask). Dropping an
/// `AtomicFile` without committing removes the temporary file and leaves the
/// target untouched.
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
    temp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
}

/// The file an atomic save really replaces: a symlink is followed (the link stays, its
/// target is replaced, as a plain write through the link would do), and an existing target
/// that is not a regular file is refused.
fn resolve_target(target: &Path) -> Result<PathBuf> {
    let resolved = match std::fs::symlink_metadata(target) {
        Ok(md) if md.file_type().is_symlink() => match std::fs::canonicalize(target) {
            Ok(real) => real,
            // A dangling link: create its target.
            Err(_) => match std::fs::read_link(target) {
                Ok(dest) if dest.is_absolute() => dest,
                Ok(dest) => target.parent().unwrap_or(Path::new(".")).join(dest),
                Err(_) => target.to_path_buf(),
            },
        },
        _ => target.to_path_buf(),
    };
    match std::fs::metadata(&resolved) {
        Ok(md) if !md.is_file() => Err(Error::NotRegularFile { path: resolved }),
        _ => Ok(resolved),
    }
}

impl AtomicFile {
    /// Create the temporary file for `target`; `name` names the stream's
    /// channel (see [`QemuFile::name`]).
    pub fn create(target: impl AsRef<Path>, name: &str) -> Result<AtomicFile> {
        if target.as_ref().file_name().is_none() {
            return Err(Error::NoFileName {
                path: target.as_ref().to_path_buf(),
            });
        }
        let target = resolve_target(target.as_ref())?;
        let Some(file_name) = target.file_name() else {
            return Err(Error::NoFileName { path: target });
        };
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = file_name.as_bytes();
        let stem = stem.get(..TEMP_STEM_MAX).unwrap_or(stem);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(TEMP_MODE);

        let mut attempt = 0;
        let (temp, fd) = loop {
            let mut temp_name = b".".to_vec();
            temp_name.extend_from_slice(stem);
            let unique = format!(
                ".{}.{}.tmp",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            temp_name.extend_from_slice(unique.as_bytes());
            let temp = dir.join(OsString::from_vec(temp_name));
            match nix::fcntl::open(&temp, flags, mode) {
                Ok(fd) => break (temp, fd),
                Err(Errno::EEXIST | Errno::EINTR) if attempt < TEMP_ATTEMPTS => attempt += 1,
                Err(source) => return Err(Error::TempCreate { path: temp, source }),
            }
        };
        // The umask may have removed bits: make the mode exactly 0600.
        if let Err(source) = nix::sys::stat::fchmod(&fd, mode) {
            drop(fd);
            let _ = std::fs::remove_file(&temp);
            return Err(Error::TempCreate { path: temp, source });
        }
        Ok(AtomicFile {
            file: Some(QemuFile::from_fd(fd, true, name)),
            temp,
            target,
            dir,
        })
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

    /// The path that [`commit`](Self::commit) replaces.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flush, `fsync`, close (reporting errors), rename over the target and
    /// `fsync` the directory.
    ///
    /// Any error up to and including the rename (a latched stream error, a
    /// failed flush, sync, close or rename) removes the temporary file and
    /// leaves the previous target byte-identical. The one error after the
    /// rename, [`Error::DirSync`], means the new checkpoint is in place but
    /// its directory entry may not yet be durable.
    pub fn commit(mut self) -> Result<()> {
        let result = match self.file.take() {
            Some(mut file) => file.fsync().and_then(|()| file.close()).and_then(|()| {
                std::fs::rename(&self.temp, &self.target).map_err(|e| Error::Rename {
                    from: self.temp.clone(),
                    to: self.target.clone(),
                    source: Arc::new(e),
                })
            }),
            None => Ok(()),
        };
        // On error, Drop removes the temporary file.
        result?;
        // Renamed: nothing left for Drop to remove.
        self.temp = PathBuf::new();
        sync_dir(&self.dir)
    }
}

/// `fsync(2)` a directory so a rename in it survives a crash. File systems
/// that cannot sync directories (`EINVAL`) are accepted.
fn sync_dir(dir: &Path) -> Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let res = nix::fcntl::open(dir, flags, Mode::empty()).and_then(nix::unistd::fsync);
    match res {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(source) => Err(Error::DirSync {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Close first (the flush goes to the temporary file), then unlink.
        drop(self.file.take());
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests;
