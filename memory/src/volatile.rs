// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `qemu_check_ram_volatile`: refuse CPR when some guest RAM would be lost.

use std::fmt;

use crate::block::{RamBlock, RamBlockList, RamKind};
use crate::error::{Error, Result};

/// Why a block is volatile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolatileReason {
    /// The block has no backing descriptor (anonymous memory, shared or not).
    NoFd,
    /// The block has a descriptor but is mapped `MAP_PRIVATE`, so guest
    /// writes land in private copy-on-write pages and never reach the file.
    NotShared,
}

impl fmt::Display for VolatileReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolatileReason::NoFd => "it has no backing file descriptor",
            VolatileReason::NotShared => "it is not mapped shared",
        })
    }
}

/// One volatile block, as carried by [`Error::Volatile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolatileBlock {
    /// Block name (`idstr`).
    pub idstr: String,
    /// Memory-region name.
    pub mr_name: String,
    /// Size in bytes.
    pub size: u64,
    /// Why it is volatile.
    pub reason: VolatileReason,
}

/// The V7 rule on plain values: a block is volatile iff its region is
/// ordinary RAM (not a RAM device, not ROM, not a ROM device) and it lacks a
/// descriptor or is not mapped shared.
pub fn is_volatile(kind: RamKind, has_fd: bool, shared: bool) -> bool {
    kind == RamKind::Ram && (!has_fd || !shared)
}

/// Why `block` is volatile, or `None` if it is not.
pub fn volatile_reason(block: &RamBlock) -> Option<VolatileReason> {
    let has_fd = block.backing().has_fd();
    if !is_volatile(block.kind(), has_fd, block.shared()) {
        None
    } else if !has_fd {
        Some(VolatileReason::NoFd)
    } else {
        Some(VolatileReason::NotShared)
    }
}

/// Every volatile block of `blocks`, largest first.
pub fn volatile_blocks(blocks: &RamBlockList) -> Vec<VolatileBlock> {
    blocks
        .iter()
        .filter_map(|b| {
            volatile_reason(b).map(|reason| VolatileBlock {
                idstr: b.idstr().to_owned(),
                mr_name: b.mr_name().to_owned(),
                size: b.size(),
                reason,
            })
        })
        .collect()
}

/// QEMU's `qemu_check_ram_volatile`: `Ok(())` when no block is volatile,
/// otherwise [`Error::Volatile`] whose message names the memory region of
/// the first volatile block in largest-first order, and which lists every
/// volatile block.
///
/// Pure: it looks only at the block descriptions, nothing is mapped.
pub fn check_ram_volatile(blocks: &RamBlockList) -> Result<()> {
    let volatile = volatile_blocks(blocks);
    match volatile.first() {
        None => Ok(()),
        Some(first) => Err(Error::Volatile {
            mr_name: first.mr_name.clone(),
            volatile,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::block::{Backing, page_size};

    fn inherited() -> Backing {
        Backing::InheritedFd(Arc::new(OwnedFd::from(File::open("/dev/null").unwrap())))
    }

    /// All backings: one without an fd, three with.
    fn backings() -> Vec<(Backing, bool)> {
        vec![
            (Backing::Anonymous, false),
            (
                Backing::File {
                    path: "/dev/shm/x".into(),
                },
                true,
            ),
            (Backing::Memfd { name: "m".into() }, true),
            (inherited(), true),
        ]
    }

    #[test]
    fn truth_table_of_the_v7_rule() {
        use RamKind::*;
        // (kind, has_fd, shared) -> volatile, spelled out rather than derived.
        let table = [
            (Ram, false, false, true),
            (Ram, false, true, true), // share=on anonymous RAM: fd == -1
            (Ram, true, false, true), // private file mapping
            (Ram, true, true, false), // the only passing RAM
            (RamDevice, false, false, false),
            (RamDevice, false, true, false),
            (RamDevice, true, false, false),
            (RamDevice, true, true, false),
            (Rom, false, false, false),
            (Rom, false, true, false),
            (Rom, true, false, false),
            (Rom, true, true, false),
            (RomDevice, false, false, false),
            (RomDevice, false, true, false),
            (RomDevice, true, false, false),
            (RomDevice, true, true, false),
        ];
        assert_eq!(table.len(), RamKind::ALL.len() * 4);
        for (kind, has_fd, shared, want) in table {
            assert_eq!(
                is_volatile(kind, has_fd, shared),
                want,
                "{kind:?} fd={has_fd} shared={shared}"
            );
        }
    }

    #[test]
    fn truth_table_through_blocks_and_check() {
        for kind in RamKind::ALL {
            for (backing, has_fd) in backings() {
                for shared in [false, true] {
                    let b = RamBlock::builder("blk", page_size())
                        .mr_name("mr")
                        .kind(kind)
                        .backing(backing.clone())
                        .shared(shared)
                        .build()
                        .unwrap();
                    let want = kind == RamKind::Ram && !(has_fd && shared);
                    let list = RamBlockList::from_blocks([b]).unwrap();
                    let res = check_ram_volatile(&list);
                    assert_eq!(res.is_err(), want, "{kind:?} {backing} shared={shared}");
                    let reason = volatile_reason(&list.as_slice()[0]);
                    let want_reason = match (want, has_fd) {
                        (false, _) => None,
                        (true, false) => Some(VolatileReason::NoFd),
                        (true, true) => Some(VolatileReason::NotShared),
                    };
                    assert_eq!(reason, want_reason);
                }
            }
        }
    }

    fn ram(name: &str, mr: &str, pages: u64, at: u64, backing: Backing, shared: bool) -> RamBlock {
        RamBlock::builder(name, pages * page_size())
            .mr_name(mr)
            .guest_addr(GuestAddress(at * page_size()))
            .backing(backing)
            .shared(shared)
            .build()
            .unwrap()
    }

    #[test]
    fn error_names_mr_of_largest_volatile_and_lists_all() {
        let file = || Backing::File {
            path: "/dev/shm/f".into(),
        };
        // Inserted smallest first on purpose: the list must reorder them.
        let list = RamBlockList::from_blocks([
            ram("vga.vram", "vga.vram-mr", 2, 0, Backing::Anonymous, false),
            ram("ok", "ok-mr", 16, 100, file(), true),
            ram("/objects/m1", "m1", 4, 200, file(), false),
            ram("pc.ram", "pc.ram-mr", 8, 300, Backing::Anonymous, true),
        ])
        .unwrap();
        let err = check_ram_volatile(&list).unwrap_err();
        assert_eq!(err.to_string(), "Memory region pc.ram-mr is volatile");
        let Error::Volatile { mr_name, volatile } = err else {
            panic!("wrong variant");
        };
        assert_eq!(mr_name, "pc.ram-mr");
        let got: Vec<_> = volatile
            .iter()
            .map(|v| {
                (
                    v.idstr.as_str(),
                    v.mr_name.as_str(),
                    v.size / page_size(),
                    v.reason,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("pc.ram", "pc.ram-mr", 8, VolatileReason::NoFd),
                ("/objects/m1", "m1", 4, VolatileReason::NotShared),
                ("vga.vram", "vga.vram-mr", 2, VolatileReason::NoFd),
            ]
        );
    }

    #[test]
    fn equal_sizes_name_the_first_inserted() {
        let list = RamBlockList::from_blocks([
            ram("first", "mr-first", 4, 0, Backing::Anonymous, false),
            ram("second", "mr-second", 4, 10, Backing::Anonymous, false),
        ])
        .unwrap();
        let err = check_ram_volatile(&list).unwrap_err();
        assert_eq!(err.to_string(), "Memory region mr-first is volatile");
    }

    #[test]
    fn rom_and_device_blocks_pass_and_empty_list_passes() {
        check_ram_volatile(&RamBlockList::new()).unwrap();
        let list = RamBlockList::from_blocks([
            RamBlock::builder("pc.bios", page_size())
                .kind(RamKind::Rom)
                .build()
                .unwrap(),
            RamBlock::builder("0000:00:02.0 BAR 0", page_size())
                .guest_addr(GuestAddress(page_size()))
                .kind(RamKind::RamDevice)
                .build()
                .unwrap(),
            ram("pc.ram", "pc.ram", 4, 10, inherited(), true),
        ])
        .unwrap();
        check_ram_volatile(&list).unwrap();
    }
}
