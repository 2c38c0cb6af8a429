// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! RAM block descriptions and the largest-first block list
//! (QEMU's `RAMBlock` and `ram_list.blocks`).

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use nix::unistd::{SysconfVar, sysconf};
use vm_memory::GuestAddress;

use crate::error::{Error, Result};
use crate::window::{self, RamWindow};

/// What kind of memory region a RAM block belongs to.
///
/// QEMU derives this from the `MemoryRegion` flags; the volatile check only
/// cares about which of these four a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RamKind {
    /// Ordinary writable RAM (`memory_region_is_ram`, not ram_device, not
    /// read-only): guest RAM, VGA VRAM, option ROM shadow copies, ...
    Ram,
    /// Device memory mapped as RAM (`memory_region_is_ram_device`), e.g. a
    /// VFIO BAR. Its contents belong to the device, not to the guest.
    RamDevice,
    /// Read-only RAM (`memory_region_is_rom`: a RAM region with `readonly`),
    /// e.g. the BIOS image. Its contents are reloaded from files at startup.
    Rom,
    /// A ROM device (`memory_region_init_rom_device`, e.g. pflash). QEMU gives
    /// it a RAMBlock but the region is not `ram`, so condition 2 of the
    /// volatile rule excludes it.
    RomDevice,
}

impl RamKind {
    /// All kinds, for exhaustive tests and tables.
    pub const ALL: [RamKind; 4] = [
        RamKind::Ram,
        RamKind::RamDevice,
        RamKind::Rom,
        RamKind::RomDevice,
    ];
}

/// Where a RAM block's memory comes from.
#[derive(Debug, Clone)]
pub enum Backing {
    /// Anonymous memory (`memory-backend-ram`, the default `-m` RAM). No fd.
    Anonymous,
    /// A file (`memory-backend-file mem-path=...`): a tmpfs or hugetlbfs
    /// file, a file on a disk filesystem, or a `/dev/dax*` device.
    File {
        /// Path of the file or device.
        path: PathBuf,
    },
    /// A fresh `memfd_create` object (`memory-backend-memfd`).
    Memfd {
        /// The memfd name (shown as `/memfd:<name>` in `/proc/<pid>/maps`).
        name: String,
    },
    /// A descriptor handed over by a previous process or a management stack.
    /// The `Arc` keeps the descriptor open for as long as any clone of the
    /// block (or its mapping) is alive.
    InheritedFd(Arc<OwnedFd>),
}

impl Backing {
    /// Whether the block has a backing descriptor (QEMU's `rb->fd != -1`).
    pub fn has_fd(&self) -> bool {
        !matches!(self, Backing::Anonymous)
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Anonymous => f.write_str("anonymous memory"),
            Backing::File { path } => write!(f, "{}", path.display()),
            Backing::Memfd { name } => write!(f, "memfd:{name}"),
            Backing::InheritedFd(fd) => write!(f, "inherited fd {}", fd.as_raw_fd()),
        }
    }
}

/// The host page size, which every block size and guest address must be a
/// multiple of.
pub fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(4096)
    })
}

/// One RAM block: a contiguous range of memory, its backing, and the guest
/// windows through which the guest sees it.
///
/// Built with [`RamBlock::builder`]; the builder validates size, address and
/// windows. Without explicit windows ([`RamBlockBuilder::window`]) the block
/// appears contiguously at its guest address, as one implicit window.
#[derive(Debug, Clone)]
pub struct RamBlock {
    idstr: String,
    mr_name: String,
    size: u64,
    guest_addr: GuestAddress,
    kind: RamKind,
    backing: Backing,
    shared: bool,
    /// Never empty once built; sorted by guest address.
    windows: Vec<RamWindow>,
}

impl RamBlock {
    /// The same block over another backing (a descriptor bound over a
    /// reservation).
    pub(crate) fn with_backing(&self, backing: Backing) -> RamBlock {
        RamBlock {
            backing,
            ..self.clone()
        }
    }

    /// Start describing a block named `idstr` (e.g. `"pc.ram"`) of `size`
    /// bytes. Defaults: memory-region name = `idstr`, guest address 0,
    /// [`RamKind::Ram`], [`Backing::Anonymous`], not shared.
    pub fn builder(idstr: impl Into<String>, size: u64) -> RamBlockBuilder {
        let idstr = idstr.into();
        RamBlockBuilder {
            mr_name: None,
            guest_addr_set: false,
            block: RamBlock {
                idstr,
                mr_name: String::new(),
                size,
                guest_addr: GuestAddress(0),
                kind: RamKind::Ram,
                backing: Backing::Anonymous,
                shared: false,
                windows: Vec::new(),
            },
        }
    }

    /// The block name (QEMU's `RAMBlock.idstr`).
    pub fn idstr(&self) -> &str {
        &self.idstr
    }

    /// The owning memory region's name (QEMU's `memory_region_name(rb->mr)`),
    /// which is what the volatile error reports.
    pub fn mr_name(&self) -> &str {
        &self.mr_name
    }

    /// Size in bytes (QEMU's `max_length`; blocks here are not resizeable).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// First guest physical address: the builder's guest address, or with
    /// explicit windows the lowest window's guest address.
    pub fn guest_addr(&self) -> GuestAddress {
        self.guest_addr
    }

    /// One past the last guest physical address of the highest window. With
    /// several windows, `guest_addr()..guest_end()` is a span that may
    /// contain holes (the PC layout's MMIO hole): use [`RamBlock::windows`].
    pub fn guest_end(&self) -> u64 {
        // Cannot overflow: checked by the builder.
        self.windows
            .iter()
            .map(RamWindow::guest_end)
            .max()
            .unwrap_or(self.guest_addr.0 + self.size)
    }

    /// The guest windows, sorted by guest address; never empty. A block
    /// built without windows has one named after its memory region:
    /// offset 0, [`RamBlock::guest_addr`], the whole block.
    pub fn windows(&self) -> &[RamWindow] {
        &self.windows
    }

    /// The memory-region kind.
    pub fn kind(&self) -> RamKind {
        self.kind
    }

    /// The backing.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Whether the block is mapped `MAP_SHARED` (QEMU's `RAM_SHARED`,
    /// `share=on`).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The first pair of windows, one of each block, sharing a guest address.
    fn overlapping_windows<'a>(
        &'a self,
        other: &'a RamBlock,
    ) -> Option<(&'a RamWindow, &'a RamWindow)> {
        self.windows.iter().find_map(|w| {
            other
                .windows
                .iter()
                .find(|o| w.guest_overlaps(o))
                .map(|o| (w, o))
        })
    }
}

/// Builder for [`RamBlock`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RamBlockBuilder {
    mr_name: Option<String>,
    guest_addr_set: bool,
    block: RamBlock,
}

impl RamBlockBuilder {
    /// Memory-region name, if different from the block name.
    pub fn mr_name(mut self, name: impl Into<String>) -> Self {
        self.mr_name = Some(name.into());
        self
    }

    /// Guest physical address of the first byte, for a block that appears
    /// contiguously. Not together with [`RamBlockBuilder::window`].
    pub fn guest_addr(mut self, addr: GuestAddress) -> Self {
        self.block.guest_addr = addr;
        self.guest_addr_set = true;
        self
    }

    /// Add a guest window (a QEMU alias region): `size` bytes of the block
    /// from `offset_in_block` appear at `guest_addr`. Once a window is
    /// given, only the windows are mapped for the guest; bytes of the block
    /// outside every window are not mapped at all.
    pub fn window(
        mut self,
        name: impl Into<String>,
        offset_in_block: u64,
        guest_addr: GuestAddress,
        size: u64,
    ) -> Self {
        self.block
            .windows
            .push(RamWindow::new(name, offset_in_block, guest_addr, size));
        self
    }

    /// Add several windows, e.g. [`pc_ram_windows`](crate::pc_ram_windows).
    pub fn windows(mut self, windows: impl IntoIterator<Item = RamWindow>) -> Self {
        self.block.windows.extend(windows);
        self
    }

    /// Memory-region kind.
    pub fn kind(mut self, kind: RamKind) -> Self {
        self.block.kind = kind;
        self
    }

    /// Backing of the block.
    pub fn backing(mut self, backing: Backing) -> Self {
        self.block.backing = backing;
        self
    }

    /// Shortcut for `backing(Backing::File { path })`.
    pub fn file(self, path: impl Into<PathBuf>) -> Self {
        self.backing(Backing::File { path: path.into() })
    }

    /// Whether to map the block `MAP_SHARED`.
    pub fn shared(mut self, shared: bool) -> Self {
        self.block.shared = shared;
        self
    }

    /// Validate and build: the size must be non-zero and page aligned, the
    /// guest address page aligned, and the range must not overflow. Windows
    /// must be non-empty, page aligned (offset, guest address and size),
    /// inside the block, and must not share block bytes or guest addresses
    /// with each other.
    pub fn build(self) -> Result<RamBlock> {
        let mut block = self.block;
        block.mr_name = self.mr_name.unwrap_or_else(|| block.idstr.clone());
        let page = page_size();
        if block.size == 0 {
            return Err(Error::ZeroSize { block: block.idstr });
        }
        if !block.size.is_multiple_of(page) {
            return Err(Error::UnalignedSize {
                block: block.idstr,
                size: block.size,
                page_size: page,
            });
        }
        if !block.guest_addr.0.is_multiple_of(page) {
            return Err(Error::UnalignedAddress {
                block: block.idstr,
                addr: block.guest_addr.0,
                page_size: page,
            });
        }
        if block.guest_addr.0.checked_add(block.size).is_none() {
            return Err(Error::AddressOverflow {
                block: block.idstr,
                addr: block.guest_addr.0,
                size: block.size,
            });
        }
        if usize::try_from(block.size).is_err() {
            return Err(Error::TooLarge {
                block: block.idstr,
                size: block.size,
            });
        }
        if block.windows.is_empty() {
            block.windows.push(RamWindow::new(
                block.mr_name.clone(),
                0,
                block.guest_addr,
                block.size,
            ));
        } else if self.guest_addr_set {
            return Err(Error::GuestAddrWithWindows { block: block.idstr });
        } else {
            let windows = std::mem::take(&mut block.windows);
            block.windows = window::validate(&block.idstr, block.size, page, windows)?;
            block.guest_addr = block.windows[0].guest_addr;
        }
        Ok(block)
    }
}

/// The RAM blocks of a machine, kept sorted largest first as QEMU's
/// `ram_list.blocks` is: a new block goes before the first block that is
/// strictly smaller, so blocks of equal size keep their insertion order.
#[derive(Debug, Clone, Default)]
pub struct RamBlockList {
    blocks: Vec<RamBlock>,
}

impl RamBlockList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a block in largest-first position. Refuses a duplicate name or a
    /// window whose guest range overlaps a window of a block already in the
    /// list (blocks whose spans interleave, e.g. a device in the PC MMIO
    /// hole, are fine); the list is unchanged on error.
    pub fn insert(&mut self, block: RamBlock) -> Result<()> {
        if self.blocks.iter().any(|b| b.idstr == block.idstr) {
            return Err(Error::DuplicateName { block: block.idstr });
        }
        if let Some((other, (w, ow))) = self
            .blocks
            .iter()
            .find_map(|b| block.overlapping_windows(b).map(|ws| (b, ws)))
        {
            return Err(window::overlap(&block.idstr, w, &other.idstr, ow));
        }
        let pos = self
            .blocks
            .iter()
            .position(|b| b.size < block.size)
            .unwrap_or(self.blocks.len());
        self.blocks.insert(pos, block);
        Ok(())
    }

    /// Build a list from blocks, inserting them in iteration order.
    pub fn from_blocks(blocks: impl IntoIterator<Item = RamBlock>) -> Result<Self> {
        let mut list = Self::new();
        for block in blocks {
            list.insert(block)?;
        }
        Ok(list)
    }

    /// The blocks, largest first (QEMU's `qemu_ram_foreach_block` order).
    pub fn iter(&self) -> std::slice::Iter<'_, RamBlock> {
        self.blocks.iter()
    }

    /// The blocks as a slice, largest first.
    pub fn as_slice(&self) -> &[RamBlock] {
        &self.blocks
    }

    /// Look a block up by name.
    pub fn get(&self, idstr: &str) -> Option<&RamBlock> {
        self.blocks.iter().find(|b| b.idstr == idstr)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl<'a> IntoIterator for &'a RamBlockList {
    type Item = &'a RamBlock;
    type IntoIter = std::slice::Iter<'a, RamBlock>;

    fn into_iter(self) -> Self::IntoIter {
        self.blocks.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(name: &str, pages: u64, at_page: u64) -> RamBlock {
        RamBlock::builder(name, pages * page_size())
            .guest_addr(GuestAddress(at_page * page_size()))
            .build()
            .unwrap()
    }

    fn names(list: &RamBlockList) -> Vec<&str> {
        list.iter().map(RamBlock::idstr).collect()
    }

    #[test]
    fn builder_defaults_mr_name_to_idstr() {
        let b = block("pc.ram", 1, 0);
        assert_eq!(b.mr_name(), "pc.ram");
        assert_eq!(b.kind(), RamKind::Ram);
        assert!(!b.shared());
        assert!(!b.backing().has_fd());
    }

    #[test]
    fn builder_rejects_bad_geometry() {
        let p = page_size();
        assert!(matches!(
            RamBlock::builder("z", 0).build(),
            Err(Error::ZeroSize { block }) if block == "z"
        ));
        assert!(matches!(
            RamBlock::builder("u", p + 1).build(),
            Err(Error::UnalignedSize { size, .. }) if size == p + 1
        ));
        assert!(matches!(
            RamBlock::builder("a", p)
                .guest_addr(GuestAddress(1))
                .build(),
            Err(Error::UnalignedAddress { addr: 1, .. })
        ));
        assert!(matches!(
            RamBlock::builder("o", p)
                .guest_addr(GuestAddress(u64::MAX - p + 1))
                .build(),
            Err(Error::AddressOverflow { .. })
        ));
    }

    #[test]
    fn list_is_largest_first_and_equal_sizes_keep_insertion_order() {
        let list = RamBlockList::from_blocks([
            block("small", 1, 0),
            block("big", 8, 10),
            block("mid-a", 4, 20),
            block("mid-b", 4, 30),
            block("big2", 8, 40),
            block("tiny", 1, 50),
        ])
        .unwrap();
        assert_eq!(
            names(&list),
            ["big", "big2", "mid-a", "mid-b", "small", "tiny"]
        );
    }

    #[test]
    fn list_rejects_overlap_and_duplicates_without_changing() {
        let mut list = RamBlockList::from_blocks([block("a", 4, 0)]).unwrap();
        let err = list.insert(block("b", 1, 3)).unwrap_err();
        assert!(
            matches!(&err, Error::Overlap(o) if o.block == "b" && o.other == "a" && o.other_window == "a")
        );
        assert!(matches!(
            list.insert(block("a", 1, 100)),
            Err(Error::DuplicateName { block }) if block == "a"
        ));
        // Adjacent is fine.
        list.insert(block("c", 1, 4)).unwrap();
        assert_eq!(names(&list), ["a", "c"]);
    }

    proptest! {
        /// Whatever the insertion order, the list is sorted by non-increasing
        /// size and blocks of equal size appear in insertion order.
        #[test]
        fn prop_largest_first_stable(sizes in proptest::collection::vec(1u64..6, 0..24)) {
            let mut list = RamBlockList::new();
            for (i, pages) in sizes.iter().enumerate() {
                let at = u64::try_from(i).unwrap() * 8;
                list.insert(block(&format!("b{i}"), *pages, at)).unwrap();
            }
            let got: Vec<(u64, usize)> = list
                .iter()
                .map(|b| (b.size(), b.idstr()[1..].parse::<usize>().unwrap()))
                .collect();
            let mut want: Vec<(u64, usize)> = sizes
                .iter()
                .enumerate()
                .map(|(i, p)| (p * page_size(), i))
                .collect();
            // A stable sort by descending size is exactly QEMU's order.
            want.sort_by_key(|w| std::cmp::Reverse(w.0));
            prop_assert_eq!(got, want);
        }

        /// Insertion succeeds iff the new range overlaps no existing range.
        #[test]
        fn prop_overlap_matches_interval_math(
            ranges in proptest::collection::vec((0u64..64, 1u64..8), 1..12)
        ) {
            let mut list = RamBlockList::new();
            let mut accepted: Vec<(u64, u64)> = Vec::new();
            for (i, (start, len)) in ranges.iter().enumerate() {
                let clash = accepted.iter().any(|(s, l)| *start < s + l && *s < start + len);
                let res = list.insert(block(&format!("r{i}"), *len, *start));
                prop_assert_eq!(res.is_err(), clash);
                if !clash {
                    accepted.push((*start, *len));
                }
            }
            prop_assert_eq!(list.len(), accepted.len());
        }
    }
}
