// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest windows onto a RAM block (QEMU's memory-region aliases) and the x86
//! PC layout of `pc.ram` around the 32-bit MMIO hole.

use std::fmt;

use vm_memory::GuestAddress;

use crate::error::{Error, GuestOverlap, Result};

/// End of the RAM below 4 GiB in the PC layout, and the block offset where
/// `ram-above-4g` starts: 3 GiB. Guest addresses from here to 4 GiB are the
/// MMIO hole (test device `0xD000_0000`, IOAPIC `0xFEC0_0000`, LAPIC
/// `0xFEE0_0000`).
pub const PC_RAM_BELOW_4G_END: u64 = 0xC000_0000;

/// Guest address of `ram-above-4g`: 4 GiB.
pub const PC_RAM_ABOVE_4G_START: u64 = 1 << 32;

/// One window through which a range of a RAM block appears in guest
/// physical memory, like a QEMU alias region (`ram-below-4g` is an alias of
/// `pc.ram` at offset 0, `ram-above-4g` one at offset 3 GiB).
///
/// Each window is one vm-memory region and one KVM memslot. A block without
/// explicit windows has a single implicit one named after its memory
/// region: offset 0, the block's guest address, the whole block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamWindow {
    /// Region name, e.g. `"ram-below-4g"`; used in errors only.
    pub name: String,
    /// Offset of the window's first byte in the block (and in its backing
    /// file or memfd).
    pub offset_in_block: u64,
    /// Guest physical address of the window's first byte.
    pub guest_addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

impl RamWindow {
    /// A window of `size` bytes of the block from `offset_in_block`, seen by
    /// the guest at `guest_addr`. Validated when the block is built.
    pub fn new(
        name: impl Into<String>,
        offset_in_block: u64,
        guest_addr: GuestAddress,
        size: u64,
    ) -> Self {
        Self {
            name: name.into(),
            offset_in_block,
            guest_addr,
            size,
        }
    }

    /// One past the last guest address. Cannot overflow once the block
    /// holding the window has been built.
    pub fn guest_end(&self) -> u64 {
        self.guest_addr.0.saturating_add(self.size)
    }

    /// One past the last block offset. Cannot overflow once the block
    /// holding the window has been built.
    pub fn offset_end(&self) -> u64 {
        self.offset_in_block.saturating_add(self.size)
    }

    /// Whether the two windows share a guest address.
    pub(crate) fn guest_overlaps(&self, other: &RamWindow) -> bool {
        self.guest_addr.0 < other.guest_end() && other.guest_addr.0 < self.guest_end()
    }
}

/// The PC layout of a RAM block of `size` bytes (QEMU's `pc_memory_init`
/// with a 3 GiB `below_4g_mem_size`): `ram-below-4g` maps the first
/// `min(size, 3 GiB)` bytes at guest 0 and, when the block is larger,
/// `ram-above-4g` maps the rest at guest 4 GiB (block offset 3 GiB), leaving
/// `[3 GiB, 4 GiB)` to MMIO. Returns no window for `size == 0`.
pub fn pc_ram_windows(size: u64) -> Vec<RamWindow> {
    let mut windows = Vec::with_capacity(2);
    if size > 0 {
        windows.push(RamWindow::new(
            "ram-below-4g",
            0,
            GuestAddress(0),
            size.min(PC_RAM_BELOW_4G_END),
        ));
    }
    if size > PC_RAM_BELOW_4G_END {
        windows.push(RamWindow::new(
            "ram-above-4g",
            PC_RAM_BELOW_4G_END,
            GuestAddress(PC_RAM_ABOVE_4G_START),
            size - PC_RAM_BELOW_4G_END,
        ));
    }
    windows
}

/// Why a [`RamWindow`] was refused ([`Error::InvalidWindow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowProblem {
    /// The window is empty.
    ZeroSize,
    /// Offset, guest address or size is not a multiple of the page size.
    Unaligned {
        /// Host page size in bytes.
        page_size: u64,
    },
    /// `offset_in_block + size` is past the end of the block.
    OutsideBlock {
        /// The block's size.
        block_size: u64,
    },
    /// `guest_addr + size` does not fit in the guest physical address space.
    AddressOverflow,
    /// The window maps block bytes another window of the block also maps.
    /// Refused because separate private or anonymous mappings of the same
    /// bytes would not see each other's writes.
    SharesBlockBytes {
        /// The other window.
        other: String,
    },
}

impl fmt::Display for WindowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowProblem::ZeroSize => f.write_str("size is zero"),
            WindowProblem::Unaligned { page_size } => write!(
                f,
                "offset, guest address and size must be multiples of the page size {page_size:#x}"
            ),
            WindowProblem::OutsideBlock { block_size } => {
                write!(
                    f,
                    "extends past the end of the block ({block_size:#x} bytes)"
                )
            }
            WindowProblem::AddressOverflow => f.write_str("guest range overflows"),
            WindowProblem::SharesBlockBytes { other } => {
                write!(f, "maps block bytes that window {other} also maps")
            }
        }
    }
}

/// Validate the windows of block `block` (`block_size` bytes) and return
/// them sorted by guest address. Windows must be non-empty, page aligned,
/// inside the block, disjoint in the block and disjoint in guest space.
pub(crate) fn validate(
    block: &str,
    block_size: u64,
    page_size: u64,
    mut windows: Vec<RamWindow>,
) -> Result<Vec<RamWindow>> {
    let invalid = |w: &RamWindow, problem| Error::InvalidWindow {
        block: block.to_owned(),
        window: w.name.clone(),
        offset: w.offset_in_block,
        guest_addr: w.guest_addr.0,
        size: w.size,
        problem,
    };
    for w in &windows {
        if w.size == 0 {
            return Err(invalid(w, WindowProblem::ZeroSize));
        }
        if [w.offset_in_block, w.guest_addr.0, w.size]
            .iter()
            .any(|v| !v.is_multiple_of(page_size))
        {
            return Err(invalid(w, WindowProblem::Unaligned { page_size }));
        }
        if w.offset_in_block
            .checked_add(w.size)
            .is_none_or(|end| end > block_size)
        {
            return Err(invalid(w, WindowProblem::OutsideBlock { block_size }));
        }
        if w.guest_addr.0.checked_add(w.size).is_none() {
            return Err(invalid(w, WindowProblem::AddressOverflow));
        }
    }

    windows.sort_by_key(|w| w.offset_in_block);
    for pair in windows.windows(2) {
        if pair[1].offset_in_block < pair[0].offset_end() {
            let other = pair[0].name.clone();
            return Err(invalid(&pair[1], WindowProblem::SharesBlockBytes { other }));
        }
    }

    windows.sort_by_key(|w| w.guest_addr);
    for pair in windows.windows(2) {
        if pair[0].guest_overlaps(&pair[1]) {
            return Err(overlap(block, &pair[1], block, &pair[0]));
        }
    }
    Ok(windows)
}

/// [`Error::Overlap`] for window `w` of `block` against `ow` of `other`.
pub(crate) fn overlap(block: &str, w: &RamWindow, other: &str, ow: &RamWindow) -> Error {
    Error::Overlap(Box::new(GuestOverlap {
        block: block.to_owned(),
        window: w.name.clone(),
        start: w.guest_addr.0,
        end: w.guest_end(),
        other: other.to_owned(),
        other_window: ow.name.clone(),
        other_start: ow.guest_addr.0,
        other_end: ow.guest_end(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::page_size;

    const GIB: u64 = 1 << 30;

    fn w(name: &str, offset: u64, guest: u64, size: u64) -> RamWindow {
        RamWindow::new(name, offset, GuestAddress(guest), size)
    }

    #[test]
    fn pc_layout_splits_at_3g_and_resumes_at_4g() {
        assert!(pc_ram_windows(0).is_empty());
        assert_eq!(pc_ram_windows(GIB), [w("ram-below-4g", 0, 0, GIB)]);
        assert_eq!(pc_ram_windows(3 * GIB), [w("ram-below-4g", 0, 0, 3 * GIB)]);
        assert_eq!(
            pc_ram_windows(5 * GIB),
            [
                w("ram-below-4g", 0, 0, 3 * GIB),
                w("ram-above-4g", 3 * GIB, 4 * GIB, 2 * GIB),
            ]
        );
        // No window covers the MMIO hole, and together they cover the block.
        let ws = pc_ram_windows(5 * GIB);
        for hole in [0xC000_0000, 0xD000_0000, 0xFEC0_0000, 0xFEE0_0000] {
            assert!(
                ws.iter()
                    .all(|w| !(w.guest_addr.0..w.guest_end()).contains(&hole))
            );
        }
        assert_eq!(ws.iter().map(|w| w.size).sum::<u64>(), 5 * GIB);
    }

    #[test]
    fn validate_sorts_by_guest_address() {
        let p = page_size();
        let got = validate(
            "b",
            4 * p,
            p,
            vec![w("hi", 0, 100 * p, 2 * p), w("lo", 2 * p, 10 * p, 2 * p)],
        )
        .unwrap();
        let names: Vec<_> = got.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["lo", "hi"]);
    }

    #[test]
    fn validate_names_the_problem() {
        let p = page_size();
        let problem = |ws: Vec<RamWindow>| match validate("b", 4 * p, p, ws) {
            Err(Error::InvalidWindow { problem, .. }) => problem,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(problem(vec![w("z", 0, 0, 0)]), WindowProblem::ZeroSize);
        assert_eq!(
            problem(vec![w("u", 0, 0, p + 1)]),
            WindowProblem::Unaligned { page_size: p }
        );
        assert_eq!(
            problem(vec![w("o", 3 * p, 0, 2 * p)]),
            WindowProblem::OutsideBlock { block_size: 4 * p }
        );
        assert_eq!(
            problem(vec![w("m", u64::MAX - p + 1, 0, p)]),
            WindowProblem::OutsideBlock { block_size: 4 * p }
        );
        assert_eq!(
            problem(vec![w("g", 0, u64::MAX - p + 1, p)]),
            WindowProblem::AddressOverflow
        );
        assert_eq!(
            problem(vec![w("a", 0, 0, 2 * p), w("b", p, 10 * p, p)]),
            WindowProblem::SharesBlockBytes { other: "a".into() }
        );
        assert!(matches!(
            validate("b", 4 * p, p, vec![w("a", 0, 0, 2 * p), w("c", 2 * p, p, p)]),
            Err(Error::Overlap(o))
                if o.block == "b" && o.other == "b" && o.window == "c" && o.other_window == "a"
        ));
    }
}
