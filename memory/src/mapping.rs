// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Mapping RAM blocks into this process as vm-memory guest memory, and
//! syncing shared file mappings to stable storage.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MsFlags, msync};
use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use crate::block::{Backing, RamBlock, RamBlockList};
use crate::error::{Error, Result};

/// How [`GuestRam::map`] treats a [`Backing::File`] path.
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
}

/// What [`MappedBlock::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// `msync(MS_SYNC)` over the whole mapping, then `fsync` of the
    /// descriptor unless `fsynced` is false (character devices such as
    /// `/dev/dax*`, where `msync` is the whole story).
    Synced {
        /// Bytes covered by `msync`.
        bytes: u64,
        /// Whether `fsync` was also called.
        fsynced: bool,
    },
    /// Nothing to do: anonymous memory has no stable storage.
    SkippedAnonymous,
    /// Nothing to do: a private mapping's writes never reach the file.
    SkippedPrivate,
}

/// One mapped RAM block.
#[derive(Debug)]
pub struct MappedBlock {
    block: RamBlock,
    region: Arc<GuestRegionMmap>,
    origin: Origin,
    char_device: bool,
}

impl MappedBlock {
    /// The block description.
    pub fn block(&self) -> &RamBlock {
        &self.block
    }

    /// The vm-memory region (shared with [`GuestRam::memory`]).
    pub fn region(&self) -> &Arc<GuestRegionMmap> {
        &self.region
    }

    /// Host virtual address of the first byte.
    pub fn host_addr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Host virtual address as KVM's `userspace_addr`.
    pub fn userspace_addr(&self) -> u64 {
        self.host_addr() as u64
    }

    /// Guest physical address of the first byte.
    pub fn guest_addr(&self) -> GuestAddress {
        self.block.guest_addr()
    }

    /// Size in bytes (KVM's `memory_size`).
    pub fn size(&self) -> u64 {
        self.block.size()
    }

    /// The backing descriptor, kept open as long as the mapping lives.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.region.file_offset().map(|fo| fo.file().as_fd())
    }

    /// The flags the block was mapped with (`MAP_SHARED`/`MAP_PRIVATE`, ...).
    pub fn mmap_flags(&self) -> i32 {
        self.region.flags()
    }

    /// Where the contents came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Make the block's contents durable: `msync(MS_SYNC)` then `fsync` for a
    /// shared descriptor-backed mapping; a documented no-op otherwise.
    pub fn sync(&self) -> Result<SyncAction> {
        let Some(fo) = self.region.file_offset() else {
            return Ok(SyncAction::SkippedAnonymous);
        };
        if !self.block.shared() {
            return Ok(SyncAction::SkippedPrivate);
        }
        let sync_err = |source| Error::Sync {
            block: self.block.idstr().to_owned(),
            source,
        };
        let len = self.region.size();
        if let Some(addr) = NonNull::new(self.region.as_ptr().cast()) {
            // SAFETY: `addr..addr+len` is exactly the live mapping owned by
            // `self.region` (returned page aligned by mmap), which the `Arc`
            // keeps mapped for the duration of the call; MS_SYNC only writes
            // dirty pages back and does not change the mapping or memory.
            let res = unsafe { msync(addr, len, MsFlags::MS_SYNC) };
            res.map_err(|e| sync_err(io::Error::from(e)))?;
        }
        let fsynced = !self.char_device;
        if fsynced {
            fo.file().sync_all().map_err(sync_err)?;
        }
        Ok(SyncAction::Synced {
            bytes: self.block.size(),
            fsynced,
        })
    }
}

/// Result of [`GuestRam::sync`]: one entry per block, largest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// `(idstr, action)` per block.
    pub blocks: Vec<(String, SyncAction)>,
}

impl SyncReport {
    /// Total bytes written back.
    pub fn synced_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .map(|(_, a)| match a {
                SyncAction::Synced { bytes, .. } => *bytes,
                _ => 0,
            })
            .sum()
    }
}

/// Guest RAM mapped from a [`RamBlockList`].
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    blocks: Vec<MappedBlock>,
}

impl GuestRam {
    /// Map every block. File-backed blocks use `MAP_SHARED` when the block is
    /// shared and `MAP_PRIVATE` otherwise; anonymous blocks use
    /// `MAP_ANONYMOUS` with `MAP_SHARED` or `MAP_PRIVATE` likewise. All
    /// mappings are `MAP_NORESERVE`, read-write (the VMM makes ROM read-only
    /// for the guest through the memslot).
    ///
    /// An existing file whose size differs from the block's is refused with
    /// [`Error::FileSizeMismatch`] and left untouched.
    pub fn map(blocks: &RamBlockList, mode: OpenMode) -> Result<Self> {
        let mapped = blocks
            .iter()
            .map(|b| map_block(b, mode))
            .collect::<Result<Vec<_>>>()?;
        let mut by_addr: Vec<Arc<GuestRegionMmap>> =
            mapped.iter().map(|m| Arc::clone(&m.region)).collect();
        by_addr.sort_by_key(|r| r.start_addr());
        let memory = GuestMemoryMmap::from_arc_regions(by_addr).map_err(Error::GuestMemory)?;
        Ok(Self {
            memory,
            blocks: mapped,
        })
    }

    /// The vm-memory view of all blocks.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The mapped blocks, largest first.
    pub fn blocks(&self) -> &[MappedBlock] {
        &self.blocks
    }

    /// Look a mapped block up by name.
    pub fn block(&self, idstr: &str) -> Option<&MappedBlock> {
        self.blocks.iter().find(|m| m.block.idstr() == idstr)
    }

    /// [`MappedBlock::sync`] every block, stopping at the first failure.
    pub fn sync(&self) -> Result<SyncReport> {
        let blocks = self
            .blocks
            .iter()
            .map(|m| Ok((m.block.idstr().to_owned(), m.sync()?)))
            .collect::<Result<_>>()?;
        Ok(SyncReport { blocks })
    }
}

/// Free-function form of [`GuestRam::sync`].
pub fn sync(ram: &GuestRam) -> Result<SyncReport> {
    ram.sync()
}

fn map_block(block: &RamBlock, mode: OpenMode) -> Result<MappedBlock> {
    let name = || block.idstr().to_owned();
    let (file, origin) = match block.backing() {
        Backing::Anonymous => (None, Origin::Anonymous),
        Backing::File { path } => {
            let (file, created) = open_file(block, path, mode)?;
            let origin = if created {
                Origin::Created
            } else {
                Origin::Reused
            };
            (Some(file), origin)
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
            (Some(file), Origin::Created)
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
            (Some(file), Origin::Inherited)
        }
    };

    // Checked by the block builder.
    let size = usize::try_from(block.size()).map_err(|_| Error::TooLarge {
        block: name(),
        size: block.size(),
    })?;
    let share = if block.shared() {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let mut builder = MmapRegionBuilder::new(size)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(share | libc::MAP_NORESERVE | libc::MAP_ANONYMOUS);
    let mut char_device = false;
    if let Some(file) = file {
        let stat_err = |source| Error::Stat {
            block: name(),
            what: block.backing().to_string(),
            source,
        };
        let hugetlbfs = fstatfs(&file)
            .map_err(|e| stat_err(io::Error::from(e)))?
            .filesystem_type()
            == HUGETLBFS_MAGIC;
        char_device = file
            .metadata()
            .map_err(stat_err)?
            .file_type()
            .is_char_device();
        builder = builder
            .with_mmap_flags(share | libc::MAP_NORESERVE)
            .with_hugetlbfs(hugetlbfs)
            .with_file_offset(FileOffset::new(file, 0));
    }
    let region = builder.build().map_err(|source| Error::Map {
        block: name(),
        size: block.size(),
        source,
    })?;
    let region =
        GuestRegionMmap::new(region, block.guest_addr()).ok_or(Error::AddressOverflow {
            block: name(),
            addr: block.guest_addr().0,
            size: block.size(),
        })?;
    Ok(MappedBlock {
        block: block.clone(),
        region: Arc::new(region),
        origin,
        char_device,
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
