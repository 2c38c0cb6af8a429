// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Mapping RAM blocks into this process as vm-memory guest memory, one
//! mapping per guest window, and syncing shared file mappings to stable
//! storage.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::mman::{MmapAdvise, MsFlags, madvise, msync};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::backing::{OpenMode, Opened, Origin, open_backing};
use crate::block::{RamBlock, RamBlockList};
use crate::error::{Error, Result};
use crate::window::RamWindow;

/// What [`MappedBlock::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// `msync(MS_SYNC)` over every window's mapping, then `fsync` of the
    /// descriptor unless `fsynced` is false (character devices such as
    /// `/dev/dax*`, where `msync` is the whole story).
    Synced {
        /// Bytes covered by `msync` (the windows' total size).
        bytes: u64,
        /// Whether `fsync` was also called.
        fsynced: bool,
    },
    /// Nothing to do: anonymous memory has no stable storage.
    SkippedAnonymous,
    /// Nothing to do: a private mapping's writes never reach the file.
    SkippedPrivate,
}

/// One KVM memslot's worth of guest RAM: a mapped window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memslot {
    /// Guest physical address (KVM's `guest_phys_addr`).
    pub guest_addr: GuestAddress,
    /// Size in bytes (KVM's `memory_size`).
    pub size: u64,
    /// Host virtual address (KVM's `userspace_addr`).
    pub host_addr: u64,
}

/// One mapped window of a block: its own `mmap` of the block's backing at
/// the window's offset, or its own anonymous mapping.
#[derive(Debug)]
pub struct MappedWindow {
    window: RamWindow,
    region: Arc<GuestRegionMmap>,
}

impl MappedWindow {
    /// The window description.
    pub fn window(&self) -> &RamWindow {
        &self.window
    }

    /// The window (alias region) name.
    pub fn name(&self) -> &str {
        &self.window.name
    }

    /// Offset of the window's first byte in the block and its backing.
    pub fn offset_in_block(&self) -> u64 {
        self.window.offset_in_block
    }

    /// Guest physical address of the first byte.
    pub fn guest_addr(&self) -> GuestAddress {
        self.window.guest_addr
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.window.size
    }

    /// Host virtual address of the first byte.
    pub fn host_addr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Host virtual address as KVM's `userspace_addr`.
    pub fn userspace_addr(&self) -> u64 {
        self.host_addr() as u64
    }

    /// The vm-memory region (shared with [`GuestRam::memory`]).
    pub fn region(&self) -> &Arc<GuestRegionMmap> {
        &self.region
    }

    /// The window as a KVM memslot.
    pub fn memslot(&self) -> Memslot {
        Memslot {
            guest_addr: self.guest_addr(),
            size: self.size(),
            host_addr: self.userspace_addr(),
        }
    }
}

/// One mapped RAM block.
///
/// There is no mapping of the block as a whole: each window is its own
/// mapping, and since windows never share block bytes, each byte of the
/// block has at most one mapping in this process. That keeps private and
/// anonymous blocks coherent (two private mappings of one page would each
/// get their own copy on write) and makes the windows the only place guest
/// data lives, for the VMM as for the guest.
#[derive(Debug)]
pub struct MappedBlock {
    block: RamBlock,
    /// Sorted by guest address, like the block's windows; never empty.
    windows: Vec<MappedWindow>,
    file: Option<Arc<File>>,
    origin: Origin,
    char_device: bool,
}

impl MappedBlock {
    /// The block description.
    pub fn block(&self) -> &RamBlock {
        &self.block
    }

    /// The mapped windows, sorted by guest address; never empty.
    pub fn windows(&self) -> &[MappedWindow] {
        &self.windows
    }

    fn first(&self) -> &MappedWindow {
        // Never empty: a built block has at least one window.
        &self.windows[0]
    }

    /// The vm-memory region of the first (lowest) window. The whole block
    /// for a block without explicit windows; otherwise see
    /// [`MappedBlock::windows`].
    pub fn region(&self) -> &Arc<GuestRegionMmap> {
        self.first().region()
    }

    /// Host virtual address of the first window's first byte. For a block
    /// with several windows this is **not** a mapping of the whole block:
    /// register memslots from [`GuestRam::memslots`] or
    /// [`MappedBlock::windows`].
    pub fn host_addr(&self) -> *mut u8 {
        self.first().host_addr()
    }

    /// [`MappedBlock::host_addr`] as KVM's `userspace_addr`.
    pub fn userspace_addr(&self) -> u64 {
        self.host_addr() as u64
    }

    /// Guest physical address of the first window's first byte
    /// ([`RamBlock::guest_addr`]).
    pub fn guest_addr(&self) -> GuestAddress {
        self.block.guest_addr()
    }

    /// Size of the block in bytes (KVM's `memory_size` for a block without
    /// explicit windows).
    pub fn size(&self) -> u64 {
        self.block.size()
    }

    /// The block's windows as KVM memslots, by guest address.
    pub fn memslots(&self) -> impl Iterator<Item = Memslot> + '_ {
        self.windows.iter().map(MappedWindow::memslot)
    }

    /// The backing descriptor, kept open as long as the mapping lives.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_deref().map(AsFd::as_fd)
    }

    /// The flags every window was mapped with (`MAP_SHARED`/`MAP_PRIVATE`,
    /// ...).
    pub fn mmap_flags(&self) -> i32 {
        self.first().region.flags()
    }

    /// Where the contents came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Make the block's contents durable: `msync(MS_SYNC)` of every window,
    /// then one `fsync`, for a shared descriptor-backed block; a documented
    /// no-op for anonymous and private blocks, whose windows hold the only
    /// copy of what the guest wrote.
    pub fn sync(&self) -> Result<SyncAction> {
        let Some(file) = &self.file else {
            return Ok(SyncAction::SkippedAnonymous);
        };
        if !self.block.shared() {
            return Ok(SyncAction::SkippedPrivate);
        }
        let sync_err = |source| Error::Sync {
            block: self.block.idstr().to_owned(),
            source,
        };
        let mut bytes = 0;
        for w in &self.windows {
            let len = w.region.size();
            if let Some(addr) = NonNull::new(w.region.as_ptr().cast()) {
                // SAFETY: `addr..addr+len` is exactly the live mapping owned
                // by `w.region` (returned page aligned by mmap), which the
                // `Arc` keeps mapped for the duration of the call; MS_SYNC
                // only writes dirty pages back and does not change the
                // mapping or memory.
                let res = unsafe { msync(addr, len, MsFlags::MS_SYNC) };
                res.map_err(|e| sync_err(io::Error::from(e)))?;
            }
            bytes += w.size();
        }
        let fsynced = !self.char_device;
        if fsynced {
            file.sync_all().map_err(sync_err)?;
        }
        Ok(SyncAction::Synced { bytes, fsynced })
    }

    /// Make every byte of the block read as zeros **without reading or writing a page**:
    /// freed, not cleared, so the cost follows what the block held, not its size (see
    /// [`Discard`] for how, per kind of block). `None` for a private file mapping (and a
    /// character device), where dropping pages would show the file's contents again
    /// rather than zeros: the caller must write zeros itself.
    ///
    /// The block must not be in use by a running guest (a vCPU writing meanwhile may or may
    /// not see its write survive). On error ([`Error::Discard`]) part of the block may
    /// already read as zeros and the rest is unchanged.
    pub fn discard(&self) -> Result<Option<Discard>> {
        let fail = |how, source: nix::errno::Errno| Error::Discard {
            block: self.block.idstr().to_owned(),
            how,
            source: io::Error::from(source),
        };
        match (&self.file, self.block.shared()) {
            (Some(_), _) if self.char_device => Ok(None),
            (Some(file), true) => {
                let len = i64::try_from(self.block.size()).map_err(|_| Error::TooLarge {
                    block: self.block.idstr().to_owned(),
                    size: self.block.size(),
                })?;
                let mode =
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                fallocate(file.as_fd(), mode, 0, len)
                    .map_err(|e| fail("fallocate(PUNCH_HOLE)", e))?;
                Ok(Some(Discard::PunchedHole))
            }
            (Some(_), false) => Ok(None),
            (None, shared) => {
                let (advice, how, done) = if shared {
                    (
                        MmapAdvise::MADV_REMOVE,
                        "madvise(MADV_REMOVE)",
                        Discard::Removed,
                    )
                } else {
                    (
                        MmapAdvise::MADV_DONTNEED,
                        "madvise(MADV_DONTNEED)",
                        Discard::DroppedPages,
                    )
                };
                for w in &self.windows {
                    let Some(addr) = NonNull::new(w.region.as_ptr().cast()) else {
                        continue;
                    };
                    // SAFETY: `addr..addr+len` is exactly the live anonymous mapping owned by
                    // `w.region` (page aligned by mmap), kept mapped by the `Arc`; the advice
                    // only replaces its pages with zero pages and never unmaps it, so every
                    // reference into guest memory stays valid (it reads zeros).
                    let res = unsafe { madvise(addr, w.region.size(), advice) };
                    res.map_err(|e| fail(how, e))?;
                }
                Ok(Some(done))
            }
        }
    }
}

/// How [`MappedBlock::discard`] made a block read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over the block's bytes of its shared backing
    /// file: the file keeps its size, its blocks are freed, and every mapping of it (this
    /// process's, another's) reads zeros.
    PunchedHole,
    /// `madvise(MADV_DONTNEED)` over each window of a private anonymous block: its pages
    /// are dropped and the next touch faults in a fresh zero page.
    DroppedPages,
    /// `madvise(MADV_REMOVE)` over each window of a shared anonymous block (its shmem
    /// object has no descriptor to punch).
    Removed,
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
    /// Map every window of every block. Each block's backing is opened
    /// once; each window is then its own mapping: of the backing at the
    /// window's `offset_in_block` for file, memfd and inherited-fd blocks,
    /// anonymous otherwise. Windows use `MAP_SHARED` when the block is
    /// shared and `MAP_PRIVATE` otherwise, for file and anonymous blocks
    /// alike; all are `MAP_NORESERVE`, read-write (the VMM makes ROM
    /// read-only for the guest through the memslot). On hugetlbfs, window
    /// offsets must be huge-page aligned or `mmap` fails ([`Error::Map`]).
    ///
    /// An existing file whose size differs from the block's is refused with
    /// [`Error::FileSizeMismatch`] and left untouched.
    pub fn map(blocks: &RamBlockList, mode: OpenMode) -> Result<Self> {
        GuestRam::map_inner(blocks, mode, false)
    }

    /// Like [`GuestRam::map`], except that a memfd block is not created:
    /// its windows only reserve their address ranges (`PROT_NONE`, no
    /// memory), [`Origin::Reserved`], until [`GuestRam::bind`] maps the
    /// memfd another process hands over onto them, at the same addresses.
    /// A VMM can so build its whole machine (KVM memslots record host
    /// addresses, not mappings) before the RAM it will run on arrives.
    pub fn reserve(blocks: &RamBlockList, mode: OpenMode) -> Result<Self> {
        GuestRam::map_inner(blocks, mode, true)
    }

    fn map_inner(blocks: &RamBlockList, mode: OpenMode, reserve: bool) -> Result<Self> {
        let mapped = blocks
            .iter()
            .map(|b| match b.backing() {
                crate::Backing::Memfd { .. } if reserve => reserve_block(b),
                _ => map_block(b, mode),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut by_addr: Vec<Arc<GuestRegionMmap>> = mapped
            .iter()
            .flat_map(|m| m.windows.iter().map(|w| Arc::clone(&w.region)))
            .collect();
        by_addr.sort_by_key(|r| r.start_addr());
        let memory = GuestMemoryMmap::from_arc_regions(by_addr).map_err(Error::GuestMemory)?;
        Ok(Self {
            memory,
            blocks: mapped,
        })
    }

    /// The vm-memory view of all windows of all blocks, by guest address.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The mapped blocks, largest first.
    pub fn blocks(&self) -> &[MappedBlock] {
        &self.blocks
    }

    /// Maps `fd` (a memfd, or any shared-memory file of exactly the block's
    /// size) onto the reserved block `idstr`, window by window at the same
    /// host addresses (`MAP_FIXED`), shared; the block then has
    /// [`Backing::InheritedFd`](crate::Backing::InheritedFd) and
    /// [`Origin::Inherited`]. Refused for a block that is not reserved.
    pub fn bind(&mut self, idstr: &str, fd: std::os::fd::OwnedFd) -> Result<()> {
        let bind_err = |why: String| Error::Bind {
            block: idstr.to_owned(),
            why,
        };
        let mb = self
            .blocks
            .iter_mut()
            .find(|m| m.block.idstr() == idstr)
            .ok_or_else(|| bind_err("no such block".into()))?;
        if mb.origin != Origin::Reserved {
            return Err(bind_err("it is not reserved".into()));
        }
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| bind_err(format!("cannot examine the descriptor: {e}")))?;
        if !meta.file_type().is_file() || meta.len() != mb.block.size() {
            return Err(bind_err(format!(
                "the descriptor is not shared memory of {} bytes",
                mb.block.size()
            )));
        }
        for w in &mb.windows {
            let len = std::num::NonZeroUsize::new(w.region.size())
                .ok_or_else(|| bind_err("empty window".into()))?;
            let addr = std::num::NonZeroUsize::new(w.region.as_ptr() as usize);
            let offset = i64::try_from(w.window.offset_in_block)
                .map_err(|_| bind_err("window offset too large".into()))?;
            // SAFETY: `addr..addr+len` is exactly the reservation `w.region` owns (a
            // PROT_NONE anonymous mapping nothing reads or writes: the block is
            // `Reserved`); MAP_FIXED replaces it in place with a shared mapping of
            // `file` of the same length, which `w.region` then owns and unmaps as before.
            let mapped = unsafe {
                nix::sys::mman::mmap(
                    addr,
                    len,
                    nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                    nix::sys::mman::MapFlags::MAP_SHARED
                        | nix::sys::mman::MapFlags::MAP_FIXED
                        | nix::sys::mman::MapFlags::MAP_NORESERVE,
                    file.as_fd(),
                    offset,
                )
            }
            .map_err(|e| bind_err(format!("mmap: {e}")))?;
            if Some(mapped.as_ptr() as usize) != addr.map(std::num::NonZeroUsize::get) {
                return Err(bind_err("the kernel mapped it elsewhere".into()));
            }
        }
        let fd = std::os::fd::OwnedFd::from(
            file.try_clone()
                .map_err(|e| bind_err(format!("cannot duplicate the descriptor: {e}")))?,
        );
        mb.block = mb
            .block
            .with_backing(crate::Backing::InheritedFd(Arc::new(fd)));
        mb.file = Some(Arc::new(file));
        mb.origin = Origin::Inherited;
        Ok(())
    }

    /// Look a mapped block up by name.
    pub fn block(&self, idstr: &str) -> Option<&MappedBlock> {
        self.blocks.iter().find(|m| m.block.idstr() == idstr)
    }

    /// One KVM memslot per window of every block, by guest address (the
    /// order of [`GuestRam::memory`]'s regions).
    pub fn memslots(&self) -> impl Iterator<Item = Memslot> + '_ {
        self.memory.iter().map(|r| Memslot {
            guest_addr: r.start_addr(),
            size: r.len(),
            host_addr: r.as_ptr() as u64,
        })
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
    map_opened(block, open_backing(block, mode)?)
}

/// A memfd block's windows as address-space reservations (see
/// [`GuestRam::reserve`]).
fn reserve_block(block: &RamBlock) -> Result<MappedBlock> {
    let opened = Opened {
        file: None,
        origin: Origin::Reserved,
        char_device: false,
        hugetlbfs: false,
    };
    map_opened(block, opened)
}

/// Maps each window of `block` over what `opened` holds (its backing, or a reservation).
fn map_opened(block: &RamBlock, opened: Opened) -> Result<MappedBlock> {
    let windows = block
        .windows()
        .iter()
        .map(|w| map_window(block, &opened, w))
        .collect::<Result<Vec<_>>>()?;
    Ok(MappedBlock {
        block: block.clone(),
        windows,
        file: opened.file,
        origin: opened.origin,
        char_device: opened.char_device,
    })
}

/// Asks for transparent huge pages on a private anonymous window, as QEMU does for guest
/// RAM (`QEMU_MADV_HUGEPAGE`): a guest or a loader touching fresh memory then takes one
/// fault per 2 MiB rather than per 4 KiB. Advice only: where THP is off it changes
/// nothing, and a refusal is not an error.
fn advise_huge_pages(region: &GuestRegionMmap) {
    let Some(addr) = NonNull::new(region.as_ptr().cast()) else {
        return;
    };
    // SAFETY: `addr..addr+len` is exactly the anonymous mapping `region` owns (page aligned
    // by mmap), mapped for as long as `region` lives; MADV_HUGEPAGE changes how its future
    // faults are served, never its contents or its mapping.
    let res = unsafe { madvise(addr, region.size(), MmapAdvise::MADV_HUGEPAGE) };
    // EINVAL: a kernel without THP. The mapping works the same, with small pages.
    let _ = res;
}

fn map_window(block: &RamBlock, opened: &Opened, window: &RamWindow) -> Result<MappedWindow> {
    let name = || block.idstr().to_owned();
    // Fits: a window lies inside the block, whose size the builder checked.
    let size = usize::try_from(window.size).map_err(|_| Error::TooLarge {
        block: name(),
        size: window.size,
    })?;
    let share = if block.shared() {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let prot = if opened.origin == Origin::Reserved {
        libc::PROT_NONE
    } else {
        libc::PROT_READ | libc::PROT_WRITE
    };
    let builder = MmapRegionBuilder::new(size).with_mmap_prot(prot);
    let builder = match &opened.file {
        None if opened.origin == Origin::Reserved => {
            builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_ANONYMOUS)
        }
        None => builder.with_mmap_flags(share | libc::MAP_NORESERVE | libc::MAP_ANONYMOUS),
        Some(file) => builder
            .with_mmap_flags(share | libc::MAP_NORESERVE)
            .with_hugetlbfs(opened.hugetlbfs)
            .with_file_offset(FileOffset::from_arc(
                Arc::clone(file),
                window.offset_in_block,
            )),
    };
    let region = builder.build().map_err(|source| Error::Map {
        block: name(),
        window: window.name.clone(),
        size: window.size,
        source,
    })?;
    let region = GuestRegionMmap::new(region, window.guest_addr).ok_or(Error::AddressOverflow {
        block: name(),
        addr: window.guest_addr.0,
        size: window.size,
    })?;
    if opened.file.is_none() && !block.shared() && opened.origin != Origin::Reserved {
        advise_huge_pages(&region);
    }
    Ok(MappedWindow {
        window: window.clone(),
        region: Arc::new(region),
    })
}
