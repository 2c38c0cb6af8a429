//! Checkpoint-file policy: how `cpr-save`, `migrate file:`, `cpr-load`, `migrate-incoming`
//! and `--incoming` open the files they write or read.
//!
//! * **The path** is resolved by [`ResolvedPath`] (through [`AtomicFile`] when writing a
//!   whole checkpoint): one component at a time, as the kernel does, refusing any symlink
//!   the kernel's `fs.protected_symlinks` would refuse to follow (someone else's link in a
//!   sticky, world-writable directory such as `/tmp`), whatever the sysctl says. The links
//!   a user made themselves are followed. Every open is relative to the directory the walk
//!   ended in, with `O_NOFOLLOW`.
//! * **A whole checkpoint** ([`create_atomic`]) goes to a temporary file renamed over the
//!   target at commit ([`AtomicFile`]).
//! * **A stream at an offset** ([`open_in_place`], `migrate file:...,offset=N`) is written
//!   in place, into a file created 0600 if missing and never truncated.
//! * **Reading** ([`open_for_read`]) opens the file read-only.
//! * Only **regular files**: a device, FIFO, socket or directory is refused, and a FIFO is
//!   opened `O_NONBLOCK` first, so it can never block the VMM.
//! * **Never the VM's own RAM.** A target that is the same file as one of this VM's RAM
//!   backings (same device and inode: through its own path, a hard link or a symlink) is
//!   refused, before anything is stopped or written. Renaming a checkpoint over the RAM
//!   file would lose the guest at the next start, and a stream written in place would
//!   overwrite live guest memory.

use std::os::fd::OwnedFd;
use std::path::Path;

use cpr_migration_file::{AtomicFile, FileId, ResolvedPath};
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::Mode;

use super::Vmm;
use crate::error::{Error, Result};

/// One of this VM's RAM backings, by identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RamFile {
    /// Its device and inode.
    pub id: FileId,
    /// The RAM block it backs (`pc.ram`).
    pub block: String,
}

impl Vmm {
    /// The identities of this VM's RAM backings (file, memfd or inherited descriptor),
    /// from the descriptors the mappings were made from: a checkpoint must never be
    /// written over any of them. The one place they are computed.
    pub(super) fn ram_identities(&self) -> Vec<RamFile> {
        self.ram
            .blocks()
            .iter()
            .filter_map(|b| {
                let id = b.fd().and_then(|fd| FileId::of(fd).ok()).or_else(|| {
                    match b.block().backing() {
                        cpr_memory::Backing::File { path } => {
                            nix::sys::stat::stat(path).ok().map(|st| FileId::from(&st))
                        }
                        _ => None,
                    }
                })?;
                Some(RamFile {
                    id,
                    block: b.block().idstr().to_string(),
                })
            })
            .collect()
    }
}

/// Refuses `id` if it is one of `ram`.
fn refuse_ram(path: &Path, id: FileId, ram: &[RamFile]) -> Result<()> {
    match ram.iter().find(|r| r.id == id) {
        Some(r) => Err(Error::TargetIsRam {
            path: path.to_path_buf(),
            block: r.block.clone(),
        }),
        None => Ok(()),
    }
}

/// Starts writing a whole checkpoint to `path` (channel name `channel`): a temporary file,
/// renamed over the target when committed. Refused: a path through someone else's
/// symlink, an existing target that is not a regular file, and this VM's RAM.
pub(super) fn create_atomic(path: &Path, channel: &str, ram: &[RamFile]) -> Result<AtomicFile> {
    let file = AtomicFile::create(path, channel).map_err(|source| Error::Create {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(id) = file.replaces() {
        // Dropping `file` leaves nothing behind.
        refuse_ram(path, id, ram)?;
    }
    Ok(file)
}

/// Opens (creating it, 0600, never truncating) a file to write a stream into at an offset.
/// Refused as [`create_atomic`] refuses, and without blocking on a FIFO.
pub(super) fn open_in_place(path: &Path, ram: &[RamFile]) -> Result<std::fs::File> {
    let file = open_regular(path, OFlag::O_WRONLY | OFlag::O_CREAT, "save to")?;
    let id = FileId::of(&file).map_err(|e| open_err(path, e.into()))?;
    refuse_ram(path, id, ram)?;
    Ok(file)
}

/// Opens a checkpoint for reading, only if it is a regular file, without blocking on a
/// FIFO (`/dev/zero` would never end, a FIFO would hang the VMM), and never through
/// someone else's symlink.
pub(super) fn open_for_read(path: &Path) -> Result<std::fs::File> {
    open_regular(path, OFlag::O_RDONLY, "load")
}

fn open_err(path: &Path, source: std::io::Error) -> Error {
    Error::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// A file error as an `io::Error` under [`Error::Open`]: a plain errno stays one, anything
/// else (a refused symlink) keeps its own words.
fn file_err(path: &Path, e: cpr_migration_file::Error) -> Error {
    let source = match e {
        cpr_migration_file::Error::Open { source, .. } => std::io::Error::from(source),
        other => std::io::Error::other(other),
    };
    open_err(path, source)
}

fn open_regular(path: &Path, flags: OFlag, what: &'static str) -> Result<std::fs::File> {
    let resolved = ResolvedPath::new(path).map_err(|e| file_err(path, e))?;
    let fd: OwnedFd = resolved
        .open(flags | OFlag::O_NONBLOCK, Mode::from_bits_truncate(0o600))
        .map_err(|e| file_err(path, e))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| open_err(path, e))?;
    if !meta.is_file() {
        return Err(Error::NotRegularFile {
            what,
            path: path.to_path_buf(),
        });
    }
    let flags =
        nix::fcntl::fcntl(&file, FcntlArg::F_GETFL).map_err(|e| open_err(path, e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|e| open_err(path, e.into()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A "RAM file" in a fresh directory, and its identity as the VMM would pass it.
    fn setup() -> std::io::Result<(tempfile::TempDir, PathBuf, Vec<RamFile>)> {
        let dir = tempfile::tempdir()?;
        let ram = dir.path().join("guest.ram");
        std::fs::write(&ram, vec![0x5a; 8192])?;
        let md = std::fs::metadata(&ram)?;
        let ids = vec![RamFile {
            id: FileId {
                dev: md.dev(),
                ino: md.ino(),
            },
            block: "pc.ram".into(),
        }];
        Ok((dir, ram, ids))
    }

    #[test]
    fn the_vms_ram_is_never_a_target() -> TestResult {
        let (dir, ram, ids) = setup()?;
        let hard = dir.path().join("hard-link");
        std::fs::hard_link(&ram, &hard)?;
        let soft = dir.path().join("soft-link");
        std::os::unix::fs::symlink(&ram, &soft)?;
        for path in [&ram, &hard, &soft] {
            let want = format!(
                "cannot save to {}: it is this VM's RAM (pc.ram)",
                path.display()
            );
            let err = create_atomic(path, "cpr-save", &ids).expect_err("atomic over RAM");
            assert_eq!(err.to_string(), want);
            let err = open_in_place(path, &ids).expect_err("in place into RAM");
            assert_eq!(err.to_string(), want);
        }
        assert_eq!(std::fs::read(&ram)?, vec![0x5a; 8192]);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        assert_eq!(names, ["guest.ram", "hard-link", "soft-link"]);
        // Any other file is fine, created or not.
        let other = dir.path().join("vm.state");
        let mut f = create_atomic(&other, "cpr-save", &ids)?;
        f.file().put_u8(1);
        f.commit()?;
        drop(open_in_place(&other, &ids)?);
        drop(open_in_place(&dir.path().join("container"), &ids)?);
        assert_eq!(
            std::fs::metadata(dir.path().join("container"))?.mode() & 0o777,
            0o600
        );
        Ok(())
    }

    #[test]
    fn only_regular_files_and_fifos_never_block() -> TestResult {
        let (dir, _ram, ids) = setup()?;
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600))?;
        let err = open_for_read(&fifo).expect_err("fifo");
        assert_eq!(
            err.to_string(),
            format!("cannot load {}: not a regular file", fifo.display())
        );
        // O_WRONLY on a FIFO with no reader fails at once (ENXIO) instead of blocking.
        let err = open_in_place(&fifo, &ids).expect_err("fifo");
        assert!(err.to_string().contains("fifo"), "{err}");
        let err = create_atomic(&fifo, "t", &ids).expect_err("fifo");
        assert!(err.chain().contains("not a regular file"), "{err}");
        assert!(std::fs::symlink_metadata(&fifo)?.file_type().is_fifo());
        let err = open_for_read(dir.path()).expect_err("dir");
        assert!(err.chain().contains("not a regular file"), "{err}");
        let err = open_for_read(&dir.path().join("missing.state")).expect_err("missing");
        assert_eq!(
            err.chain(),
            format!(
                "cannot open checkpoint file {}: No such file or directory (os error 2)",
                dir.path().join("missing.state").display()
            )
        );
        Ok(())
    }

    #[test]
    fn someone_elses_link_is_refused_for_every_use() -> TestResult {
        if !nix::unistd::geteuid().is_root() {
            println!("skipping: needs root to give a symlink to uid 65534 (lchown)");
            return Ok(());
        }
        let (dir, _ram, ids) = setup()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let sticky = dir.path().join("sticky");
        std::fs::create_dir(&sticky)?;
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777))?;
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"root's")?;
        let link = sticky.join("vm.state");
        std::os::unix::fs::symlink(&victim, &link)?;
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534))?;
        let why = format!("refusing to follow symlink {}", link.display());
        let err = create_atomic(&link, "cpr-save", &ids).expect_err("atomic");
        assert!(err.chain().contains(&why), "{}", err.chain());
        let err = open_in_place(&link, &ids).expect_err("in place");
        assert!(err.chain().contains(&why), "{}", err.chain());
        let err = open_for_read(&link).expect_err("read");
        assert!(err.chain().contains(&why), "{}", err.chain());
        assert_eq!(std::fs::read(&victim)?, b"root's");
        // Our own link: written through, as before.
        let mine = sticky.join("mine");
        std::os::unix::fs::symlink(&victim, &mine)?;
        drop(open_for_read(&mine)?);
        let mut f = create_atomic(&mine, "cpr-save", &ids)?;
        f.file().put_u8(7);
        f.commit()?;
        assert_eq!(std::fs::read(&victim)?, [7]);
        Ok(())
    }
}
