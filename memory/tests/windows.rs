// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest windows (QEMU's alias regions): the PC `pc.ram` layout around the
//! MMIO hole, window validation, window-based overlap checks, and what each
//! window maps.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use cpr_memory::{
    Error, GuestAddress, GuestRam, Memslot, OpenMode, Origin, PC_RAM_ABOVE_4G_START,
    PC_RAM_BELOW_4G_END, RamBlock, RamBlockList, RamWindow, SyncAction, WindowProblem, page_size,
    pc_ram_windows,
};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn pc_ram(size: u64, path: &Path, shared: bool) -> RamBlock {
    RamBlock::builder("pc.ram", size)
        .file(path)
        .shared(shared)
        .windows(pc_ram_windows(size))
        .build()
        .unwrap()
}

fn one_page(name: &str, at: u64) -> RamBlock {
    RamBlock::builder(name, page_size())
        .guest_addr(GuestAddress(at))
        .build()
        .unwrap()
}

fn pread(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[cfg(target_pointer_width = "64")]
#[test]
fn pc_ram_file_windows_hit_the_right_file_offsets_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.ram");
    let size = 4 * GIB + 64 * MIB;
    let above = size - PC_RAM_BELOW_4G_END;
    let blocks = RamBlockList::from_blocks([pc_ram(size, &path, true)]).unwrap();

    {
        let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
        let mem = ram.memory();

        // Two regions, at 0 and 4 GiB, nothing in the MMIO hole.
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(
            regions,
            [(0, PC_RAM_BELOW_4G_END), (PC_RAM_ABOVE_4G_START, above)]
        );
        for hole in [PC_RAM_BELOW_4G_END, 0xD000_0000, 0xFEC0_0000, 0xFEE0_0000] {
            assert!(!mem.address_in_range(GuestAddress(hole)), "{hole:#x}");
        }

        // One memslot per window, each the host address vm-memory uses.
        let slots: Vec<Memslot> = ram.memslots().collect();
        assert_eq!(slots.len(), 2);
        for s in &slots {
            let host = mem.get_host_address(s.guest_addr).unwrap();
            assert_eq!(s.host_addr, host as u64);
            assert_eq!(s.host_addr % page_size(), 0);
        }
        assert_eq!(slots[1].guest_addr, GuestAddress(4 * GIB));
        assert_eq!(slots[1].size, above);
        let b = ram.block("pc.ram").unwrap();
        assert_eq!(b.memslots().collect::<Vec<_>>(), slots);
        let names: Vec<_> = b.windows().iter().map(|w| w.name()).collect();
        assert_eq!(names, ["ram-below-4g", "ram-above-4g"]);
        assert_eq!(b.windows()[1].offset_in_block(), PC_RAM_BELOW_4G_END);
        assert_ne!(b.mmap_flags() & libc::MAP_SHARED, 0);

        // Guest 4 GiB is file offset 3 GiB; the last guest byte is the
        // file's last byte.
        mem.write_obj(0xa5u8, GuestAddress(4 * GIB)).unwrap();
        mem.write_slice(b"tail", GuestAddress(4 * GIB + above - 4))
            .unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(pread(&file, 3 * GIB, 1), [0xa5]);
        assert_eq!(pread(&file, size - 4, 4), b"tail");
        // And nothing landed at file offset 0 or 4 GiB.
        assert_eq!(pread(&file, 0, 1), [0]);
        assert_eq!(pread(&file, 4 * GIB, 1), [0]);

        // A write through the file is visible at the same guest address.
        let rw = File::options().write(true).open(&path).unwrap();
        rw.write_all_at(b"via pwrite", MIB).unwrap();
        let mut seen = [0u8; 10];
        mem.read_slice(&mut seen, GuestAddress(MIB)).unwrap();
        assert_eq!(&seen, b"via pwrite");

        assert_eq!(
            ram.sync().unwrap().blocks,
            [(
                "pc.ram".to_owned(),
                SyncAction::Synced {
                    bytes: size,
                    fsynced: true
                }
            )]
        );
    }

    // Still the block's size, still sparse.
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 16 * MIB, "{} blocks", meta.blocks());

    // A fresh process sees both writes at their guest addresses.
    let ram = GuestRam::map(&blocks, OpenMode::OpenExisting).unwrap();
    assert_eq!(ram.blocks()[0].origin(), Origin::Reused);
    let mem = ram.memory();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(4 * GIB)).unwrap(), 0xa5);
    let mut seen = [0u8; 10];
    mem.read_slice(&mut seen, GuestAddress(MIB)).unwrap();
    assert_eq!(&seen, b"via pwrite");
    assert_eq!(
        mem.read_obj::<[u8; 4]>(GuestAddress(4 * GIB + above - 4))
            .unwrap(),
        *b"tail"
    );
}

/// The PC layout's block size is still the file size: a file as large as
/// the guest span (5 GiB + 64 MiB) or as the low window is refused.
#[cfg(target_pointer_width = "64")]
#[test]
fn pc_ram_file_must_be_the_block_size_not_the_guest_span() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.ram");
    let size = 4 * GIB + 64 * MIB;
    let blocks = RamBlockList::from_blocks([pc_ram(size, &path, true)]).unwrap();
    for wrong in [size + GIB, PC_RAM_BELOW_4G_END] {
        File::create(&path).unwrap().set_len(wrong).unwrap();
        assert!(matches!(
            GuestRam::map(&blocks, OpenMode::OpenOrCreate),
            Err(Error::FileSizeMismatch { expected, actual, .. })
                if expected == size && actual == wrong
        ));
        assert_eq!(fs::metadata(&path).unwrap().len(), wrong);
    }
}

#[test]
fn private_file_windows_read_the_file_at_their_offsets_and_never_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("priv");
    let p = page_size();
    let len = usize::try_from(p).unwrap();
    let original: Vec<u8> = (0..4 * len)
        .map(|i| u8::try_from(i / len + 1).unwrap())
        .collect();
    fs::write(&path, &original).unwrap();

    let block = RamBlock::builder("priv", 4 * p)
        .file(&path)
        .window("hi", 2 * p, GuestAddress(100 * p), 2 * p)
        .window("lo", 0, GuestAddress(0), 2 * p)
        .build()
        .unwrap();
    assert_eq!(block.guest_addr(), GuestAddress(0));
    assert_eq!(block.guest_end(), 102 * p);
    let ram = GuestRam::map(
        &RamBlockList::from_blocks([block]).unwrap(),
        OpenMode::OpenExisting,
    )
    .unwrap();
    let b = ram.block("priv").unwrap();
    assert_ne!(b.mmap_flags() & libc::MAP_PRIVATE, 0);
    assert_eq!(b.mmap_flags() & libc::MAP_SHARED, 0);
    let mem = ram.memory();
    // Guest page 100 is block (file) page 2, whose bytes are 3.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(100 * p)).unwrap(), 3);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(p)).unwrap(), 2);
    assert!(!mem.address_in_range(GuestAddress(2 * p)));

    // Writes stay in the window mappings, which are the only copy.
    mem.write_obj(0xeeu8, GuestAddress(100 * p)).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(100 * p)).unwrap(), 0xee);
    assert_eq!(b.sync().unwrap(), SyncAction::SkippedPrivate);
    drop(ram);
    assert_eq!(fs::read(&path).unwrap(), original);
}

#[test]
fn anonymous_windows_are_separate_mappings_with_the_block_flags() {
    let p = page_size();
    let block = RamBlock::builder("anon", 4 * p)
        .shared(true)
        .window("a", 0, GuestAddress(0), p)
        .window("b", p, GuestAddress(16 * p), 3 * p)
        .build()
        .unwrap();
    let ram = GuestRam::map(
        &RamBlockList::from_blocks([block]).unwrap(),
        OpenMode::CreateNew,
    )
    .unwrap();
    let b = &ram.blocks()[0];
    assert_eq!(b.origin(), Origin::Anonymous);
    assert!(b.fd().is_none());
    for w in b.windows() {
        let flags = w.region().flags();
        assert_ne!(flags & libc::MAP_ANONYMOUS, 0);
        assert_ne!(flags & libc::MAP_SHARED, 0);
        assert_eq!(w.region().len(), w.size());
    }
    let mem = ram.memory();
    mem.write_obj(1u64, GuestAddress(0)).unwrap();
    mem.write_obj(2u64, GuestAddress(19 * p - 8)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(0)).unwrap(), 1);
    assert_eq!(mem.read_obj::<u64>(GuestAddress(19 * p - 8)).unwrap(), 2);
    assert_eq!(mem.num_regions(), 2);
    assert_eq!(b.sync().unwrap(), SyncAction::SkippedAnonymous);
}

fn window_error(builder: cpr_memory::RamBlockBuilder) -> (String, WindowProblem) {
    match builder.build() {
        Err(Error::InvalidWindow {
            window, problem, ..
        }) => (window, problem),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn window_validation_names_the_window_and_the_problem() {
    let p = page_size();
    let b = || RamBlock::builder("blk", 4 * p);

    let (w, problem) = window_error(b().window("past-end", 3 * p, GuestAddress(0), 2 * p));
    assert_eq!(w, "past-end");
    assert_eq!(problem, WindowProblem::OutsideBlock { block_size: 4 * p });

    for (offset, guest, size) in [(1, 0, p), (0, p / 2, p), (0, 0, p + 8)] {
        let (w, problem) = window_error(b().window("odd", offset, GuestAddress(guest), size));
        assert_eq!(w, "odd");
        assert_eq!(problem, WindowProblem::Unaligned { page_size: p });
    }

    let (_, problem) = window_error(b().window("empty", 0, GuestAddress(0), 0));
    assert_eq!(problem, WindowProblem::ZeroSize);

    let (w, problem) = window_error(b().window("x", 0, GuestAddress(0), 2 * p).window(
        "y",
        p,
        GuestAddress(64 * p),
        2 * p,
    ));
    assert_eq!(w, "y");
    assert_eq!(
        problem,
        WindowProblem::SharesBlockBytes { other: "x".into() }
    );

    let err = b()
        .window("x", 0, GuestAddress(8 * p), 2 * p)
        .window("y", 2 * p, GuestAddress(9 * p), 2 * p)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Overlap(o)
            if o.block == "blk" && o.other == "blk" && o.window == "y" && o.other_window == "x"
                && o.start == 9 * p && o.other_end == 10 * p),
        "{err:?}"
    );
    assert!(err.to_string().contains("window y"), "{err}");

    assert!(matches!(
        b().guest_addr(GuestAddress(p))
            .window("w", 0, GuestAddress(0), p)
            .build(),
        Err(Error::GuestAddrWithWindows { block }) if block == "blk"
    ));

    // Adjacent windows, in either space, are fine; bytes outside every
    // window are allowed (and simply not mapped).
    let ok = b()
        .windows([
            RamWindow::new("x", 0, GuestAddress(0), p),
            RamWindow::new("y", p, GuestAddress(p), p),
        ])
        .build()
        .unwrap();
    assert_eq!(ok.windows().len(), 2);
}

#[test]
fn implicit_window_is_the_whole_block_named_after_its_region() {
    let p = page_size();
    let b = RamBlock::builder("vga.vram", 2 * p)
        .mr_name("vga.vram-mr")
        .guest_addr(GuestAddress(8 * p))
        .build()
        .unwrap();
    assert_eq!(
        b.windows(),
        [RamWindow::new("vga.vram-mr", 0, GuestAddress(8 * p), 2 * p)]
    );
    assert_eq!(b.guest_end(), 10 * p);
}

#[test]
fn cross_block_overlap_compares_windows_not_spans() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * GIB + 64 * MIB;
    let ram = pc_ram(size, &dir.path().join("unused"), true);
    // The span [0, 5 GiB + 64 MiB) contains the MMIO hole.
    assert_eq!(ram.guest_addr(), GuestAddress(0));
    assert_eq!(ram.guest_end(), 5 * GIB + 64 * MIB);

    // A block in the hole is fine, whichever is inserted first.
    for hole_first in [false, true] {
        let hole = one_page("testdev.ram", 0xD000_0000);
        let order = if hole_first {
            [hole, ram.clone()]
        } else {
            [ram.clone(), hole]
        };
        let list = RamBlockList::from_blocks(order).unwrap();
        assert_eq!(list.len(), 2);
    }

    // One inside either window is refused, naming the window.
    let mut list = RamBlockList::from_blocks([ram.clone()]).unwrap();
    for (at, window) in [(MIB, "ram-below-4g"), (5 * GIB, "ram-above-4g")] {
        let err = list.insert(one_page("intruder", at)).unwrap_err();
        assert!(
            matches!(&err, Error::Overlap(o)
                if o.block == "intruder" && o.other == "pc.ram" && o.other_window == window),
            "{err:?}"
        );
    }
    // And the other way round: the windows of a new block are checked.
    let mut list2 = RamBlockList::from_blocks([one_page("early", 4 * GIB + MIB)]).unwrap();
    let err = list2.insert(ram).unwrap_err();
    assert!(
        matches!(&err, Error::Overlap(o)
            if o.block == "pc.ram" && o.window == "ram-above-4g" && o.other == "early"),
        "{err:?}"
    );
    assert_eq!(list2.len(), 1);
    list.insert(one_page("hole", 0xD000_0000)).unwrap();
    assert_eq!(list.len(), 2);
}

#[cfg(target_pointer_width = "64")]
#[test]
fn block_in_the_hole_is_mapped_between_the_windows() {
    let p = page_size();
    let blocks = RamBlockList::from_blocks([
        one_page("testdev.ram", 0xD000_0000),
        RamBlock::builder("pc.ram", 4 * GIB)
            .shared(true)
            .windows(pc_ram_windows(4 * GIB))
            .build()
            .unwrap(),
    ])
    .unwrap();
    let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
    let slots: Vec<_> = ram.memslots().map(|s| (s.guest_addr.0, s.size)).collect();
    assert_eq!(slots, [(0, 3 * GIB), (0xD000_0000, p), (4 * GIB, GIB),]);
    assert_eq!(ram.memory().num_regions(), 3);
}
