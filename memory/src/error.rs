// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's single error type.

use std::io;
use std::path::PathBuf;

use vm_memory::GuestRegionCollectionError;
use vm_memory::mmap::MmapRegionError;

use crate::volatile::VolatileBlock;
use crate::window::WindowProblem;

/// Everything that can go wrong in `cpr-memory`.
///
/// Every variant names the RAM block (QEMU's `idstr`) it is about, and where
/// a file is involved, its path. Underlying OS errors are kept as `#[source]`
/// and are not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A RAM block of size zero was described.
    #[error("RAM block {block} has size zero")]
    ZeroSize {
        /// Block name (`idstr`).
        block: String,
    },

    /// The block's size is not a multiple of the host page size.
    #[error("RAM block {block}: size {size:#x} is not a multiple of the page size {page_size:#x}")]
    UnalignedSize {
        /// Block name (`idstr`).
        block: String,
        /// Requested size in bytes.
        size: u64,
        /// Host page size in bytes.
        page_size: u64,
    },

    /// The block's guest physical address is not page aligned.
    #[error(
        "RAM block {block}: guest address {addr:#x} is not aligned to the page size {page_size:#x}"
    )]
    UnalignedAddress {
        /// Block name (`idstr`).
        block: String,
        /// Requested guest physical address.
        addr: u64,
        /// Host page size in bytes.
        page_size: u64,
    },

    /// `addr + size` does not fit in the guest physical address space.
    #[error("RAM block {block}: guest range {addr:#x} + {size:#x} overflows")]
    AddressOverflow {
        /// Block name (`idstr`).
        block: String,
        /// Guest physical address.
        addr: u64,
        /// Size in bytes.
        size: u64,
    },

    /// The block's size does not fit in this host's `usize`.
    #[error("RAM block {block}: size {size:#x} does not fit in the host address space")]
    TooLarge {
        /// Block name (`idstr`).
        block: String,
        /// Size in bytes.
        size: u64,
    },

    /// Two guest windows (of one block, or of two blocks of one list) cover
    /// overlapping guest physical ranges. A block without explicit windows
    /// has one named after its memory region, covering the whole block.
    #[error("{0}")]
    Overlap(Box<GuestOverlap>),

    /// A guest window of a block is invalid on its own or clashes with
    /// another window of the same block in the block's bytes.
    #[error(
        "RAM block {block}: window {window} (block offset {offset:#x}, guest address {guest_addr:#x}, size {size:#x}): {problem}"
    )]
    InvalidWindow {
        /// Block name (`idstr`).
        block: String,
        /// Window name.
        window: String,
        /// The window's offset in the block.
        offset: u64,
        /// The window's guest physical address.
        guest_addr: u64,
        /// The window's size.
        size: u64,
        /// What is wrong.
        problem: WindowProblem,
    },

    /// Both a block guest address and explicit windows were given; with
    /// windows, the windows alone say where the block appears.
    #[error("RAM block {block}: give either a guest address or windows, not both")]
    GuestAddrWithWindows {
        /// Block name (`idstr`).
        block: String,
    },

    /// Two blocks of one list share a name (QEMU aborts on this).
    #[error("RAMBlock \"{block}\" already registered")]
    DuplicateName {
        /// The duplicated block name.
        block: String,
    },

    /// `check_ram_volatile` found volatile RAM. The message is QEMU's and
    /// names the memory region of the largest volatile block; `volatile`
    /// lists every volatile block, largest first.
    #[error("Memory region {mr_name} is volatile")]
    Volatile {
        /// Memory-region name of the first (largest) volatile block.
        mr_name: String,
        /// Every volatile block, in list order (largest first).
        volatile: Vec<VolatileBlock>,
    },

    /// An existing backing file has the wrong size. It is never resized:
    /// the old contents may be the guest RAM of a previous process.
    #[error(
        "RAM block {block}: backing file {} is {actual} bytes, expected {expected}; refusing to reuse or resize it",
        path.display()
    )]
    FileSizeMismatch {
        /// Block name (`idstr`).
        block: String,
        /// Backing file.
        path: PathBuf,
        /// The block's size.
        expected: u64,
        /// The file's size on disk.
        actual: u64,
    },

    /// An inherited descriptor refers to an object of the wrong size.
    #[error("RAM block {block}: inherited fd {fd} is {actual} bytes, expected {expected}")]
    FdSizeMismatch {
        /// Block name (`idstr`).
        block: String,
        /// The descriptor number.
        fd: i32,
        /// The block's size.
        expected: u64,
        /// The size `fstat` reports.
        actual: u64,
    },

    /// Opening or creating the backing file failed.
    #[error("RAM block {block}: cannot open backing file {}", path.display())]
    OpenFile {
        /// Block name (`idstr`).
        block: String,
        /// Backing file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A fresh backing file could not be sized with `ftruncate`.
    #[error("RAM block {block}: cannot size backing file {} to {size} bytes", path.display())]
    Truncate {
        /// Block name (`idstr`).
        block: String,
        /// Backing file.
        path: PathBuf,
        /// Requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `memfd_create` or sizing the memfd failed.
    #[error("RAM block {block}: cannot create memfd {name}")]
    Memfd {
        /// Block name (`idstr`).
        block: String,
        /// The memfd name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `fstat`/`statfs` of the backing failed.
    #[error("RAM block {block}: cannot stat its backing {what}")]
    Stat {
        /// Block name (`idstr`).
        block: String,
        /// The path or descriptor that was inspected.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `mmap` of a window of the block failed.
    #[error("RAM block {block}: cannot map window {window} ({size} bytes)")]
    Map {
        /// Block name (`idstr`).
        block: String,
        /// Window name.
        window: String,
        /// Size of the window in bytes.
        size: u64,
        /// vm-memory's error.
        #[source]
        source: MmapRegionError,
    },

    /// [`GuestRam::bind`](crate::GuestRam::bind) on a block that is not
    /// reserved, or with a descriptor that does not fit it.
    #[error("RAM block {block}: cannot bind a descriptor: {why}")]
    Bind {
        /// Block name (`idstr`).
        block: String,
        /// Why.
        why: String,
    },

    /// vm-memory refused the set of regions.
    #[error("cannot build guest memory from the RAM blocks")]
    GuestMemory(#[source] GuestRegionCollectionError),

    /// `msync` or `fsync` failed.
    #[error("RAM block {block}: cannot sync its backing to stable storage")]
    Sync {
        /// Block name (`idstr`).
        block: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Freeing a block's pages ([`MappedBlock::discard`](crate::MappedBlock::discard))
    /// failed.
    #[error("RAM block {block}: cannot discard its contents ({how})")]
    Discard {
        /// Block name (`idstr`).
        block: String,
        /// The call that failed.
        how: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The two windows of an [`Error::Overlap`] (boxed to keep [`Error`]
/// small).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "RAM block {block} window {window} [{start:#x}, {end:#x}) overlaps RAM block {other} window {other_window} [{other_start:#x}, {other_end:#x})"
)]
pub struct GuestOverlap {
    /// The block being added (or built).
    pub block: String,
    /// The window of `block`.
    pub window: String,
    /// First guest address of `window`.
    pub start: u64,
    /// One past the last guest address of `window`.
    pub end: u64,
    /// The block already in the list (`block` itself for two windows of one
    /// block).
    pub other: String,
    /// The window of `other`.
    pub other_window: String,
    /// First guest address of `other_window`.
    pub other_start: u64,
    /// One past the last guest address of `other_window`.
    pub other_end: u64,
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
