//! One guest, one process: who owns the RAM a checkpoint leaves in place.
//!
//! Nothing in QEMU stops two processes from running guests on one RAM file: a second VMM
//! started on the same `--mem-path`, or a new process that loads a checkpoint while the old
//! one can still `cont`, runs two guests over one RAM and corrupts both. Here a process that
//! runs, or can run, a guest on a RAM file holds an exclusive open-file-description lock
//! (`F_OFD_SETLK`) on it, taken on the descriptor that maps the RAM. Such a lock belongs to
//! the open file description, not to the process: it goes wherever the descriptor goes (a
//! descriptor handed to another process over `SCM_RIGHTS` hands over the lock with it), and
//! the kernel drops it when the last descriptor is closed, so a killed VMM never leaves a
//! stale lock behind.
//!
//! The rule, as the README states it:
//!
//! * the lock is taken before anything runs a guest over the RAM or writes into it: booting
//!   the guest, `cont`, `system_wakeup`, and loading a checkpoint (`cpr-load`,
//!   `migrate-incoming`, `--incoming`). A process that finds the RAM locked by another is
//!   refused with an error naming the file; a process started with `-S` or `--incoming`
//!   waits without the lock, so it can be started before the old one saves;
//! * a completed checkpoint (`cpr-save`, or an outgoing `migrate`) hands the RAM over: the
//!   lock is released, and a new process may load while the old one is still exiting. The
//!   old process takes the lock back if it is asked to run the guest again, and is refused
//!   if the new one holds it;
//! * a RAM file mapped private is only read by its guest: it takes a shared (read) lock, so
//!   two private mappings may coexist, but never a private mapping next to a shared one.
//!
//! The same type keeps the RAM files' epoch tags (see `epoch.rs`): they say `running` from
//! the moment before any vCPU runs, so a VMM killed a moment later never leaves changed RAM
//! under an old checkpoint's epoch.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use cpr_memory::{Backing, GuestRam};
use nix::errno::Errno;

use super::epoch;

/// Why the RAM could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another process holds the lock.
    #[error(
        "RAM file {} ({block}) is in use by another process, which runs or can run a guest on it",
        path.display()
    )]
    InUse {
        /// The RAM file.
        path: PathBuf,
        /// Its RAM block.
        block: String,
    },
    /// `fcntl` failed for another reason.
    #[error("cannot lock RAM file {}", path.display())]
    Lock {
        /// The RAM file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The RAM file's descriptor could not be duplicated or examined.
    #[error("cannot use the descriptor of RAM file {}", path.display())]
    Descriptor {
        /// The RAM file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One file-backed RAM block.
#[derive(Debug)]
struct RamFile {
    /// The block's idstr (`pc.ram`).
    block: String,
    /// The path it was opened by.
    path: PathBuf,
    /// A duplicate of the mapping's descriptor: same open file description, same lock.
    file: File,
    /// Mapped shared (the guest writes the file): exclusive lock; else a shared one.
    shared: bool,
    /// A file with a path, which carries the epoch tags (a memfd has none).
    tagged: bool,
}

/// The RAM files of one VM: their lock and their epoch tags.
#[derive(Debug, Default)]
pub(crate) struct RamOwnership {
    files: Vec<RamFile>,
    /// This process holds the lock on every file.
    locked: bool,
    /// The files are tagged `running`.
    tagged_running: bool,
}

impl RamOwnership {
    /// The file-backed blocks of `ram`, not yet locked.
    pub(crate) fn new(ram: &GuestRam) -> Result<RamOwnership, OwnershipError> {
        let mut files = Vec::new();
        for b in ram.blocks() {
            let Some(fd) = b.fd() else {
                continue;
            };
            // A memfd (no path) is locked too: in cpr-transfer two processes map it.
            let (path, tagged) = match b.block().backing() {
                Backing::File { path } => (path.clone(), true),
                _ => (PathBuf::from(format!("memfd:{}", b.block().idstr())), false),
            };
            let path = &path;
            let descriptor = |source| OwnershipError::Descriptor {
                path: path.clone(),
                source,
            };
            let file = File::from(fd.try_clone_to_owned().map_err(descriptor)?);
            files.push(RamFile {
                block: b.block().idstr().to_string(),
                path: path.clone(),
                file,
                shared: b.block().shared(),
                tagged,
            });
        }
        Ok(RamOwnership {
            files,
            locked: false,
            tagged_running: false,
        })
    }

    /// The RAM files' paths (those that carry epoch tags).
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|f| f.tagged)
            .map(|f| f.path.clone())
            .collect()
    }

    /// Whether this process holds the RAM.
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }

    /// Takes the lock on every RAM file (a no-op if held). If one file is held by another
    /// process, the files locked so far are released again and the error names that file.
    pub(crate) fn acquire(&mut self) -> Result<(), OwnershipError> {
        if self.locked {
            return Ok(());
        }
        for (i, f) in self.files.iter().enumerate() {
            let kind = if f.shared {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            };
            if let Err(e) = set_lock(&f.file, kind) {
                for done in &self.files[..i] {
                    let _ = set_lock(&done.file, libc::F_UNLCK);
                }
                return Err(match e {
                    Errno::EAGAIN | Errno::EACCES => OwnershipError::InUse {
                        path: f.path.clone(),
                        block: f.block.clone(),
                    },
                    source => OwnershipError::Lock {
                        path: f.path.clone(),
                        source,
                    },
                });
            }
        }
        self.locked = true;
        Ok(())
    }

    /// Hands the RAM over: releases the lock (a completed checkpoint describes this RAM,
    /// and the process that loads it must be able to take it while this one still exits).
    pub(crate) fn release(&mut self) {
        if !self.locked {
            return;
        }
        for f in &self.files {
            // Unlocking a descriptor we hold cannot conflict; an error would mean the
            // descriptor is gone, and then so is the lock.
            let _ = set_lock(&f.file, libc::F_UNLCK);
        }
        self.locked = false;
    }

    /// Before any vCPU runs over the RAM: take the lock, then tag the files `running`
    /// (once), so no checkpoint's epoch stays on RAM that is about to change.
    pub(crate) fn before_run(&mut self) -> Result<(), OwnershipError> {
        self.acquire()?;
        if !self.tagged_running {
            epoch::tag(&self.paths(), epoch::RUNNING);
            self.tagged_running = true;
        }
        Ok(())
    }

    /// Whether the files are tagged `running` (no checkpoint describes them).
    pub(crate) fn tagged_running(&self) -> bool {
        self.tagged_running
    }

    /// A checkpoint has (or may have) put its epoch on the files: whatever runs next must
    /// tag them `running` again.
    pub(crate) fn checkpoint_tagged(&mut self) {
        self.tagged_running = false;
    }

    /// RAM pages were copied into the files and they were tagged `running` for it
    /// (`ram_io.rs`).
    pub(crate) fn retagged_running(&mut self) {
        self.tagged_running = true;
    }
}

/// A `struct flock` of `kind` over the whole file (`F_OFD_*` locks require `l_pid` 0).
#[allow(clippy::cast_possible_truncation)] // `short` fields; the constants are 0 to 2.
fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// `F_OFD_SETLK` over the whole file.
fn set_lock(file: &File, kind: libc::c_int) -> Result<(), Errno> {
    let lock = whole_file(kind);
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)).map(drop)
}

/// Whether `path`'s RAM is locked by some process (for tests and diagnostics): the lock a
/// new descriptor would conflict with.
pub fn is_locked_elsewhere(path: &Path) -> std::io::Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut lock = whole_file(libc::F_WRLCK);
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut lock))?;
    Ok(libc::c_int::from(lock.l_type) != libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpr_memory::{OpenMode, RamBlock, RamBlockList};

    fn ram(path: &Path, shared: bool) -> GuestRam {
        let block = RamBlock::builder("pc.ram", 1 << 20)
            .backing(Backing::File {
                path: path.to_path_buf(),
            })
            .shared(shared)
            .build()
            .expect("block");
        let blocks = RamBlockList::from_blocks([block]).expect("blocks");
        GuestRam::map(&blocks, OpenMode::OpenOrCreate).expect("map")
    }

    #[test]
    fn one_owner_at_a_time_and_hand_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.ram");
        let (old_ram, new_ram) = (ram(&path, true), ram(&path, true));
        let mut old = RamOwnership::new(&old_ram).expect("old");
        let mut new = RamOwnership::new(&new_ram).expect("new");
        assert!(!is_locked_elsewhere(&path).expect("getlk"));
        old.acquire().expect("the first owner takes the RAM");
        assert!(is_locked_elsewhere(&path).expect("getlk"));
        let err = new.acquire().expect_err("the RAM is taken");
        assert!(matches!(err, OwnershipError::InUse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("pc.ram"),
            "{text}"
        );
        // Taking it again is a no-op; handing it over lets the new owner in.
        old.acquire().expect("idempotent");
        old.release();
        new.acquire().expect("handed over");
        assert!(old.acquire().is_err(), "the old owner cannot take it back");
        // Dropping the owner (and its mapping) drops the lock: nothing stale is left.
        drop(new);
        drop(new_ram);
        old.acquire()
            .expect("the lock went with the last descriptor");
    }

    #[test]
    fn private_mappings_share_but_never_with_a_shared_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.ram");
        let (a_ram, b_ram, c_ram) = (ram(&path, false), ram(&path, false), ram(&path, true));
        let mut a = RamOwnership::new(&a_ram).expect("a");
        let mut b = RamOwnership::new(&b_ram).expect("b");
        let mut c = RamOwnership::new(&c_ram).expect("c");
        a.acquire().expect("private");
        b.acquire()
            .expect("a second private mapping only reads the file too");
        assert!(
            c.acquire().is_err(),
            "a shared mapping would write under them"
        );
        a.release();
        b.release();
        c.acquire().expect("free again");
        assert!(a.acquire().is_err());
    }

    #[test]
    fn before_run_takes_the_lock_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.ram");
        let (a_ram, b_ram) = (ram(&path, true), ram(&path, true));
        let mut a = RamOwnership::new(&a_ram).expect("a");
        let mut b = RamOwnership::new(&b_ram).expect("b");
        a.before_run().expect("runs");
        assert!(a.tagged_running());
        assert!(b.before_run().is_err());
        assert!(!b.tagged_running(), "a refused process tags nothing");
    }
}
