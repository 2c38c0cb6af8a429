// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Opening a RAM block's backing (file, memfd, inherited descriptor) once,
//! before its windows are mapped from it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};

use crate::block::{Backing, RamBlock};
use crate::error::{Error, Result};

/// How [`GuestRam::map`](crate::GuestRam::map) treats a [`Backing::File`]
/// path.
///
/// Memfd backings are always fresh and inherited descriptors are always
/// reused, whatever the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file (`O_CREAT|O_EXCL`, mode 0600) and size it; fail if it
    /// exists. For a first boot that must not pick up stale RAM.
    CreateNew,
    /// Reuse the file if it exists and has exactly the block's size,
    /// otherwise create it. This is how a VMM restarted with the same
    /// arguments finds the previous process's RAM.
    OpenOrCreate,
    /// The file must exist with exactly the block's size (CPR load).
    OpenExisting,
}

/// Where a mapped block's contents came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fresh anonymous memory: zero filled.
    Anonymous,
    /// A backing object created by this call (new file or memfd): zero filled.
    Created,
    /// An existing file or device: holds whatever a previous user left.
    Reused,
    /// An inherited descriptor: holds whatever its previous user left.
    Inherited,
    /// Address space reserved for a memfd another process will hand over
    /// ([`GuestRam::reserve`](crate::GuestRam::reserve)): nothing is mapped
    /// there yet (`PROT_NONE`) until [`GuestRam::bind`](crate::GuestRam::bind).
    Reserved,
}

/// A block's backing, opened and size-checked, ready to be mapped.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The descriptor, shared by every window's `FileOffset`; `None` for
    /// anonymous memory.
    pub file: Option<Arc<File>>,
    pub origin: Origin,
    /// A character device (`/dev/dax*`): `msync` only, no `fsync`.
    pub char_device: bool,
    /// A hugetlbfs file (vm-memory needs to know for its bookkeeping).
    pub hugetlbfs: bool,
}

/// Open (or create) the backing of `block` once. The object always has
/// exactly the block's size: a wrong-sized existing file or inherited
/// regular file is refused, never resized.
pub(crate) fn open_backing(block: &RamBlock, mode: OpenMode) -> Result<Opened> {
    let name = || block.idstr().to_owned();
    let (file, origin) = match block.backing() {
        Backing::Anonymous => {
            return Ok(Opened {
                file: None,
                origin: Origin::Anonymous,
                char_device: false,
                hugetlbfs: false,
            });
        }
        Backing::File { path } => {
            let (file, created) = open_file(block, path, mode)?;
            let origin = if created {
                Origin::Created
            } else {
                Origin::Reused
            };
            (file, origin)
        }
        Backing::Memfd { name: mname } => {
            let memfd_err = |source| Error::Memfd {
                block: name(),
                name: mname.clone(),
                source,
            };
            let fd = memfd_create(mname.as_str(), MFdFlags::MFD_CLOEXEC)
                .map_err(|e| memfd_err(io::Error::from(e)))?;
            let file = File::from(fd);
            file.set_len(block.size()).map_err(memfd_err)?;
            (file, Origin::Created)
        }
        Backing::InheritedFd(fd) => {
            let stat_err = |source| Error::Stat {
                block: name(),
                what: format!("fd {}", fd.as_raw_fd()),
                source,
            };
            let file = File::from(fd.try_clone().map_err(stat_err)?);
            let meta = file.metadata().map_err(stat_err)?;
            if meta.file_type().is_file() && meta.len() != block.size() {
                return Err(Error::FdSizeMismatch {
                    block: name(),
                    fd: fd.as_raw_fd(),
                    expected: block.size(),
                    actual: meta.len(),
                });
            }
            (file, Origin::Inherited)
        }
    };

    let stat_err = |source| Error::Stat {
        block: name(),
        what: block.backing().to_string(),
        source,
    };
    let hugetlbfs = fstatfs(&file)
        .map_err(|e| stat_err(io::Error::from(e)))?
        .filesystem_type()
        == HUGETLBFS_MAGIC;
    let char_device = file
        .metadata()
        .map_err(stat_err)?
        .file_type()
        .is_char_device();
    Ok(Opened {
        file: Some(Arc::new(file)),
        origin,
        char_device,
        hugetlbfs,
    })
}

/// Open or create the backing file of `block`. Returns the file and whether
/// this call created it. Never changes the size of an existing file.
fn open_file(block: &RamBlock, path: &Path, mode: OpenMode) -> Result<(File, bool)> {
    let open_err = |source| Error::OpenFile {
        block: block.idstr().to_owned(),
        path: path.to_owned(),
        source,
    };
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    let open = || OpenOptions::new().read(true).write(true).open(path);

    let (file, created) = match mode {
        OpenMode::CreateNew => (create().map_err(open_err)?, true),
        OpenMode::OpenExisting => (open().map_err(open_err)?, false),
        OpenMode::OpenOrCreate => match create() {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (open().map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        },
    };

    if created {
        if let Err(source) = file.set_len(block.size()) {
            // Do not leave a wrong-sized file behind for the next start to trip on.
            let _ = std::fs::remove_file(path);
            return Err(Error::Truncate {
                block: block.idstr().to_owned(),
                path: path.to_owned(),
                size: block.size(),
                source,
            });
        }
        return Ok((file, true));
    }

    let meta = file.metadata().map_err(|source| Error::Stat {
        block: block.idstr().to_owned(),
        what: path.display().to_string(),
        source,
    })?;
    let ft = meta.file_type();
    if ft.is_file() {
        if meta.len() != block.size() {
            return Err(Error::FileSizeMismatch {
                block: block.idstr().to_owned(),
                path: path.to_owned(),
                expected: block.size(),
                actual: meta.len(),
            });
        }
    } else if !ft.is_char_device() {
        return Err(open_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or character device",
        )));
    }
    // A character device (/dev/dax*) reports size 0; its real size is the
    // device's, and mmap itself refuses a range past its end.
    Ok((file, false))
}
