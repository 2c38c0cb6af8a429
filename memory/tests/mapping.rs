// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Mapping RAM blocks for real: shared write-through, private copy-on-write,
//! refusal of wrong-sized files, sync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use cpr_memory::{
    Backing, Discard, Error, GuestAddress, GuestRam, OpenMode, Origin, RamBlock, RamBlockList,
    RamKind, SyncAction, page_size,
};
use vm_memory::{Bytes, GuestMemoryBackend};

fn file_block(name: &str, pages: u64, at_page: u64, path: &Path, shared: bool) -> RamBlock {
    RamBlock::builder(name, pages * page_size())
        .guest_addr(GuestAddress(at_page * page_size()))
        .file(path)
        .shared(shared)
        .build()
        .unwrap()
}

fn list(blocks: impl IntoIterator<Item = RamBlock>) -> RamBlockList {
    RamBlockList::from_blocks(blocks).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
        .collect()
}

#[test]
fn shared_file_block_is_read_back_through_a_fresh_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.ram");
    let blocks = list([file_block("pc.ram", 4, 0, &path, true)]);
    let size = usize::try_from(4 * page_size()).unwrap();
    let data = pattern(size, 0x5a);

    {
        let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
        let b = ram.block("pc.ram").unwrap();
        assert_eq!(b.origin(), Origin::Created);
        assert_ne!(b.mmap_flags() & libc::MAP_SHARED, 0);
        assert!(b.fd().is_some());
        ram.memory().write_slice(&data, GuestAddress(0)).unwrap();
    }
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 4 * page_size());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A new "process": same arguments, existing file.
    let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).unwrap();
    assert_eq!(ram.blocks()[0].origin(), Origin::Reused);
    let mut back = vec![0u8; size];
    ram.memory().read_slice(&mut back, GuestAddress(0)).unwrap();
    assert_eq!(back, data);
    drop(ram);
    // And the bytes are in the file itself.
    assert_eq!(fs::read(&path).unwrap(), data);
}

#[test]
fn private_file_mapping_does_not_write_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rom-ish");
    let size = usize::try_from(2 * page_size()).unwrap();
    let original = pattern(size, 0xaa);
    fs::write(&path, &original).unwrap();

    let blocks = list([file_block("priv", 2, 0, &path, false)]);
    let ram = GuestRam::map(&blocks, OpenMode::OpenExisting).unwrap();
    let b = &ram.blocks()[0];
    assert_ne!(b.mmap_flags() & libc::MAP_PRIVATE, 0);
    assert_eq!(b.mmap_flags() & libc::MAP_SHARED, 0);

    // The mapping starts with the file's contents...
    let mut seen = vec![0u8; size];
    ram.memory().read_slice(&mut seen, GuestAddress(0)).unwrap();
    assert_eq!(seen, original);
    // ...but writes stay private, both while mapped and after unmapping.
    let scribble = vec![0x11u8; size];
    ram.memory()
        .write_slice(&scribble, GuestAddress(0))
        .unwrap();
    ram.memory().read_slice(&mut seen, GuestAddress(0)).unwrap();
    assert_eq!(seen, scribble);
    assert_eq!(fs::read(&path).unwrap(), original);
    assert_eq!(b.sync().unwrap(), SyncAction::SkippedPrivate);
    drop(ram);
    assert_eq!(fs::read(&path).unwrap(), original);
}

#[test]
fn wrong_size_reuse_is_refused_and_the_file_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old-ram");
    let old = pattern(usize::try_from(3 * page_size()).unwrap(), 0x33);
    fs::write(&path, &old).unwrap();

    for mode in [OpenMode::OpenOrCreate, OpenMode::OpenExisting] {
        for pages in [2, 4] {
            let blocks = list([file_block("pc.ram", pages, 0, &path, true)]);
            let err = GuestRam::map(&blocks, mode).unwrap_err();
            let msg = err.to_string();
            match err {
                Error::FileSizeMismatch {
                    block,
                    path: p,
                    expected,
                    actual,
                } => {
                    assert_eq!(block, "pc.ram");
                    assert_eq!(p, path);
                    assert_eq!(expected, pages * page_size());
                    assert_eq!(actual, 3 * page_size());
                }
                other => panic!("{mode:?}: unexpected {other:?}"),
            }
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&(3 * page_size()).to_string()), "{msg}");
            assert!(msg.contains(&(pages * page_size()).to_string()), "{msg}");
            assert_eq!(fs::read(&path).unwrap(), old, "{mode:?} {pages}");
        }
    }
}

#[test]
fn create_new_refuses_an_existing_file_and_open_existing_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ram");
    fs::write(&path, b"keep").unwrap();
    let blocks = list([file_block("pc.ram", 1, 0, &path, true)]);
    let err = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap_err();
    assert!(
        matches!(&err, Error::OpenFile { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"keep");

    let missing = dir.path().join("missing");
    let blocks = list([file_block("pc.ram", 1, 0, &missing, true)]);
    let err = GuestRam::map(&blocks, OpenMode::OpenExisting).unwrap_err();
    assert!(
        matches!(&err, Error::OpenFile { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(!missing.exists());
}

#[test]
fn several_blocks_expose_host_addresses_for_memslots() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = list([
        RamBlock::builder("pc.bios", page_size())
            .guest_addr(GuestAddress(64 * page_size()))
            .kind(RamKind::Rom)
            .build()
            .unwrap(),
        file_block("pc.ram", 8, 0, &dir.path().join("ram"), true),
        RamBlock::builder("vga.vram", 2 * page_size())
            .guest_addr(GuestAddress(32 * page_size()))
            .shared(true)
            .build()
            .unwrap(),
    ]);
    let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
    let names: Vec<_> = ram.blocks().iter().map(|b| b.block().idstr()).collect();
    assert_eq!(names, ["pc.ram", "vga.vram", "pc.bios"]);
    assert_eq!(ram.memory().num_regions(), 3);
    for b in ram.blocks() {
        let host = ram.memory().get_host_address(b.guest_addr()).unwrap();
        assert_eq!(host, b.host_addr());
        assert_eq!(b.userspace_addr(), host as u64);
        assert_eq!(b.userspace_addr() % page_size(), 0);
        let last = GuestAddress(b.guest_addr().0 + b.size() - 1);
        assert!(ram.memory().address_in_range(last));
    }
    let vram = ram.block("vga.vram").unwrap();
    assert_eq!(vram.origin(), Origin::Anonymous);
    let flags = vram.mmap_flags();
    assert_ne!(flags & libc::MAP_ANONYMOUS, 0);
    assert_ne!(flags & libc::MAP_SHARED, 0);
    let bios = ram.block("pc.bios").unwrap();
    assert_ne!(bios.mmap_flags() & libc::MAP_PRIVATE, 0);
    // A gap between blocks is not guest memory.
    assert!(
        !ram.memory()
            .address_in_range(GuestAddress(16 * page_size()))
    );
}

#[test]
fn overlapping_blocks_never_reach_mmap() {
    let a = RamBlock::builder("a", 4 * page_size()).build().unwrap();
    let b = RamBlock::builder("b", page_size())
        .guest_addr(GuestAddress(2 * page_size()))
        .build()
        .unwrap();
    assert!(matches!(
        RamBlockList::from_blocks([a, b]),
        Err(Error::Overlap { .. })
    ));
}

#[test]
fn sync_reports_what_it_did_per_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ram");
    let blocks = list([
        file_block("pc.ram", 4, 0, &path, true),
        RamBlock::builder("anon", page_size())
            .guest_addr(GuestAddress(100 * page_size()))
            .build()
            .unwrap(),
    ]);
    let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
    ram.memory()
        .write_slice(b"durable", GuestAddress(page_size()))
        .unwrap();
    let report = cpr_memory::sync(&ram).unwrap();
    assert_eq!(
        report.blocks,
        [
            (
                "pc.ram".to_owned(),
                SyncAction::Synced {
                    bytes: 4 * page_size(),
                    fsynced: true
                }
            ),
            ("anon".to_owned(), SyncAction::SkippedAnonymous),
        ]
    );
    assert_eq!(report.synced_bytes(), 4 * page_size());
    let on_disk = fs::read(&path).unwrap();
    let at = usize::try_from(page_size()).unwrap();
    assert_eq!(&on_disk[at..at + 7], b"durable");
}

#[test]
fn memfd_block_is_fresh_and_usable() {
    let blocks = list([RamBlock::builder("mem0", 2 * page_size())
        .backing(Backing::Memfd {
            name: "cpr-test".into(),
        })
        .shared(true)
        .build()
        .unwrap()]);
    let ram = GuestRam::map(&blocks, OpenMode::OpenExisting).unwrap();
    let b = &ram.blocks()[0];
    assert_eq!(b.origin(), Origin::Created);
    assert!(b.fd().is_some());
    ram.memory()
        .write_obj(0xdead_beef_u32, GuestAddress(8))
        .unwrap();
    assert_eq!(
        ram.memory().read_obj::<u32>(GuestAddress(8)).unwrap(),
        0xdead_beef
    );
    assert!(matches!(b.sync().unwrap(), SyncAction::Synced { .. }));
}

#[test]
fn inherited_fd_is_mapped_and_size_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handed-over");
    let size = usize::try_from(page_size()).unwrap();
    fs::write(&path, pattern(size, 7)).unwrap();
    let open = || {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Backing::InheritedFd(Arc::new(OwnedFd::from(f)))
    };

    let blocks = list([RamBlock::builder("pc.ram", page_size())
        .backing(open())
        .shared(true)
        .build()
        .unwrap()]);
    let ram = GuestRam::map(&blocks, OpenMode::CreateNew).unwrap();
    assert_eq!(ram.blocks()[0].origin(), Origin::Inherited);
    let mut seen = vec![0u8; size];
    ram.memory().read_slice(&mut seen, GuestAddress(0)).unwrap();
    assert_eq!(seen, pattern(size, 7));
    ram.memory().write_slice(b"new", GuestAddress(0)).unwrap();
    drop(ram);
    drop(blocks);
    assert_eq!(&fs::read(&path).unwrap()[..3], b"new");

    let blocks = list([RamBlock::builder("pc.ram", 2 * page_size())
        .backing(open())
        .shared(true)
        .build()
        .unwrap()]);
    assert!(matches!(
        GuestRam::map(&blocks, OpenMode::OpenOrCreate),
        Err(Error::FdSizeMismatch { expected, actual, .. })
            if expected == 2 * page_size() && actual == page_size()
    ));
    assert_eq!(fs::metadata(&path).unwrap().len(), page_size());
}

#[test]
fn fresh_file_is_sparse_and_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    // 64 MiB: created with ftruncate, so it must not occupy 64 MiB on disk.
    let pages = (64 << 20) / page_size();
    let blocks = list([file_block("pc.ram", pages, 0, &path, true)]);
    let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).unwrap();
    assert_eq!(ram.blocks()[0].origin(), Origin::Created);
    assert_eq!(
        ram.memory().read_obj::<u64>(GuestAddress(1 << 20)).unwrap(),
        0
    );
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    // Appending to the file behind our back would change its size; the next
    // start must then refuse it rather than map past the block.
    drop(ram);
    File::options()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert!(matches!(
        GuestRam::map(&blocks, OpenMode::OpenOrCreate),
        Err(Error::FileSizeMismatch { .. })
    ));
}

/// Allocated bytes of `path`.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn discard_zeroes_each_kind_of_block_without_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 64;
    let size = usize::try_from(pages * page_size()).unwrap();
    let data = pattern(size, 0x33);
    let shared = dir.path().join("shared");
    let private = dir.path().join("private");
    fs::write(&private, pattern(size, 0x44)).unwrap();
    let anon = |name: &str, at: u64, shared: bool| {
        RamBlock::builder(name, pages * page_size())
            .guest_addr(GuestAddress(at * page_size()))
            .shared(shared)
            .build()
            .unwrap()
    };
    let blocks = list([
        file_block("file", pages, 0, &shared, true),
        file_block("private", pages, pages, &private, false),
        anon("anon", 2 * pages, false),
        anon("shmem", 3 * pages, true),
    ]);
    let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).unwrap();
    for b in ram.blocks() {
        ram.memory().write_slice(&data, b.guest_addr()).unwrap();
    }
    assert!(allocated(&shared) >= pages * page_size());
    let mut back = vec![0u8; size];
    for (name, expected) in [
        ("file", Some(Discard::PunchedHole)),
        ("private", None),
        ("anon", Some(Discard::DroppedPages)),
        ("shmem", Some(Discard::Removed)),
    ] {
        let b = ram.block(name).unwrap();
        assert_eq!(b.discard().unwrap(), expected, "{name}");
        ram.memory().read_slice(&mut back, b.guest_addr()).unwrap();
        if expected.is_some() {
            assert!(back.iter().all(|&x| x == 0), "{name} reads as zeros");
        } else {
            assert_eq!(
                back, data,
                "{name}: a private file mapping is left as it was"
            );
        }
    }
    // The file's blocks are freed, its size kept; the private file is untouched.
    assert_eq!(fs::metadata(&shared).unwrap().len(), pages * page_size());
    assert!(allocated(&shared) < page_size(), "{}", allocated(&shared));
    assert_eq!(fs::read(&private).unwrap(), pattern(size, 0x44));
}

/// The `VmFlags` of the mapping that starts at `addr`, from /proc/self/smaps.
fn vm_flags(addr: u64) -> String {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    lines
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn private_anonymous_ram_asks_for_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = list([
        RamBlock::builder("anon", 1024 * page_size())
            .build()
            .unwrap(),
        file_block("file", 16, 4096, &dir.path().join("f"), true),
    ]);
    let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).unwrap();
    let anon = vm_flags(ram.block("anon").unwrap().userspace_addr());
    let file = vm_flags(ram.block("file").unwrap().userspace_addr());
    assert!(anon.split_whitespace().any(|f| f == "hg"), "{anon}");
    assert!(!file.split_whitespace().any(|f| f == "hg"), "{file}");
}
