// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest RAM blocks and the CPR volatile-RAM check.
//!
//! Mirrors patch 1 of QEMU's "Live Update" V7 series (Steve Sistare, Dec
//! 2021), **"memory: qemu_check_ram_volatile"**, which touches
//! `include/exec/memory.h` and `softmmu/memory.c`.
//!
//! # What the C patch does
//!
//! `int qemu_check_ram_volatile(Error **errp)` tells `cpr-save` whether any
//! guest RAM would be lost across a CPR reboot. It walks the RAM blocks with
//! `qemu_ram_foreach_block`, which visits `ram_list.blocks` in list order and
//! stops at the first callback returning non-zero. That list is sorted
//! **largest block first** (a new block goes before the first strictly
//! smaller one), so the first hit is the largest volatile block, usually
//! the main guest RAM. A block is volatile when all five conditions hold:
//!
//! 1. it has a memory region,
//! 2. the region is RAM (`memory_region_is_ram`),
//! 3. the region is not a RAM device (`memory_region_is_ram_device`, e.g. a
//!    VFIO BAR),
//! 4. the region is not ROM (`memory_region_is_rom`: RAM that is read-only),
//! 5. the block has no backing fd **or** is not mapped shared
//!    (`rb->fd == -1 || !qemu_ram_is_shared(rb)`).
//!
//! On the first hit the function fails with `Memory region %s is volatile`,
//! naming the **memory region** (`memory_region_name(mr)`), not the block's
//! `idstr`. The patch's header comment disagrees with its code: it calls
//! the function `qemu_ram_check_volatile` and says it returns 1, while the
//! code is named `qemu_check_ram_volatile` and returns -1.
//!
//! # How this crate does it
//!
//! * [`RamBlock`] describes a block: `idstr`, memory-region name, size,
//!   guest address, [`RamKind`], [`Backing`] and `shared`. Every block has a
//!   region, so condition 1 always holds; conditions 2–4 become the
//!   [`RamKind`] (with [`RamKind::RomDevice`] for QEMU's ROM devices, whose
//!   region has a RAMBlock but is not `ram`); condition 5 is
//!   [`Backing::has_fd`] and [`RamBlock::shared`].
//! * [`RamBlockList`] keeps QEMU's largest-first order, equal sizes in
//!   insertion order, and also refuses duplicate names and overlapping guest
//!   windows (see below).
//! * [`check_ram_volatile`] is a pure function over the list: it maps
//!   nothing, so the rule is unit tested without memory. [`is_volatile`] is
//!   the rule on plain values.
//! * [`GuestRam::map`] builds a vm-memory [`GuestMemoryMmap`] from the list
//!   with `MmapRegionBuilder` and explicit flags: `MAP_SHARED` for shared
//!   blocks and `MAP_PRIVATE` otherwise, for file and anonymous blocks alike.
//!   (vm-memory's `from_ranges_with_files` always maps files shared, so it
//!   cannot express a private file block.) Each [`MappedBlock`] exposes the
//!   host address, guest address and size of each of its windows
//!   ([`MappedWindow`], [`Memslot`]) for KVM memslots and keeps its backing
//!   fd open.
//!
//! # Windows: QEMU's alias regions
//!
//! QEMU's PC machines have one RAMBlock `pc.ram` for all of RAM, shown to
//! the guest through two alias regions: `ram-below-4g` (guest 0, block
//! offset 0, up to 3 GiB) and `ram-above-4g` (guest 4 GiB, block offset
//! 3 GiB, the rest), leaving the MMIO hole between. A [`RamBlock`] does the
//! same with [`RamWindow`]s ([`RamBlockBuilder::window`], or
//! [`pc_ram_windows`] for exactly that layout); a block without windows has
//! one implicit window covering it at its guest address. [`GuestRam::map`]
//! opens the backing once and maps **each window** on its own: the same fd
//! at the window's offset for file, memfd and inherited blocks (so a shared
//! block's windows see the same pages as the file), a separate anonymous
//! mapping otherwise. Windows may not share block bytes, so each byte has
//! one mapping and private blocks stay coherent. Each window is one region
//! of [`GuestRam::memory`] and one KVM memslot ([`GuestRam::memslots`]).
//! Overlap checks, within a block and across a [`RamBlockList`], compare
//! windows, so a small block can sit in another block's MMIO hole.
//!
//! # Where it goes further than V7, and why
//!
//! * **All volatile blocks.** [`Error::Volatile`] prints QEMU's message for
//!   the largest block but also carries every volatile block and the reason,
//!   so an operator can fix them all at once.
//! * **Persistence.** V7 accepts any shared fd-backed block, including a
//!   `/dev/shm` file, which survives a process restart but not the reboot
//!   that reboot mode is for. [`persistence()`] classifies each backing with
//!   `statfs` (and `statx`/mountinfo for DAX) so `cpr-save` can warn, e.g.
//!   "RAM block pc.ram is backed by tmpfs /dev/shm/x: it survives a process
//!   restart but not a host reboot".
//! * **Durability.** A file on a disk filesystem survives a reboot only once
//!   its dirty pages are written back; [`GuestRam::sync`] does `msync`
//!   (`MS_SYNC`) and `fsync` and reports what it did per block.
//! * **Wrong-size reuse refused.** An existing backing file of the wrong
//!   size is never truncated or grown: it may hold a previous process's
//!   guest RAM. [`OpenMode`] makes "create fresh" and "reuse" explicit.
//! * **Discard.** [`MappedBlock::discard`] makes a block read as zeros without touching
//!   a page (a hole punched in a shared file, anonymous pages dropped), for a loader that
//!   overwrites RAM with a stream: QEMU reads every page and clears the non-zero ones.
//!   Private anonymous windows ask for transparent huge pages (`MADV_HUGEPAGE`), as QEMU
//!   does for guest RAM, so filling fresh RAM takes one fault per 2 MiB.
//!
//! # Example
//!
//! ```
//! use cpr_memory::{
//!     Error, GuestAddress, GuestRam, OpenMode, RamBlock, RamBlockList, check_ram_volatile,
//!     page_size, persistence,
//! };
//!
//! let dir = tempfile::tempdir()?;
//! let mut blocks = RamBlockList::new();
//! blocks.insert(
//!     RamBlock::builder("pc.ram", 16 * page_size())
//!         .file(dir.path().join("pc.ram"))
//!         .shared(true)
//!         .build()?,
//! )?;
//! blocks.insert(
//!     RamBlock::builder("vga.vram", page_size())
//!         .mr_name("vga.vram-mr")
//!         .guest_addr(GuestAddress(1 << 30))
//!         .build()?,
//! )?;
//!
//! // Anonymous VRAM is volatile: QEMU's message, plus the full list.
//! let err = check_ram_volatile(&blocks).unwrap_err();
//! assert_eq!(err.to_string(), "Memory region vga.vram-mr is volatile");
//! assert!(matches!(err, Error::Volatile { volatile, .. } if volatile.len() == 1));
//!
//! // The file-backed block passes, and says how long it lasts.
//! let report = persistence(blocks.get("pc.ram").unwrap())?;
//! assert!(report.persistence.survives_process_restart());
//!
//! // Map everything; a restarted VMM uses OpenMode::OpenOrCreate to find it again.
//! let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate)?;
//! for slot in ram.memslots() {
//!     let (_gpa, _hva, _len) = (slot.guest_addr.0, slot.host_addr, slot.size);
//! }
//! ram.sync()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(unreachable_pub)]

mod backing;
mod block;
mod error;
mod mapping;
mod persistence;
mod volatile;
mod window;

pub use backing::{OpenMode, Origin};
pub use block::{Backing, RamBlock, RamBlockBuilder, RamBlockList, RamKind, page_size};
pub use error::{Error, GuestOverlap, Result};
pub use mapping::{
    Discard, GuestRam, MappedBlock, MappedWindow, Memslot, SyncAction, SyncReport, sync,
};
pub use persistence::{Medium, Persistence, PersistenceReport, persistence};
pub use volatile::{
    VolatileBlock, VolatileReason, check_ram_volatile, is_volatile, volatile_blocks,
    volatile_reason,
};
pub use window::{
    PC_RAM_ABOVE_4G_START, PC_RAM_BELOW_4G_END, RamWindow, WindowProblem, pc_ram_windows,
};

/// Re-exported so users need not depend on vm-memory for the basic types.
pub use vm_memory::{GuestAddress, GuestMemoryMmap};
