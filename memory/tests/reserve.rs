//! `GuestRam::reserve` and `GuestRam::bind`: a memfd block's address space is reserved
//! first, and the memfd another process hands over is mapped there later.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use cpr_memory::{Backing, GuestRam, OpenMode, Origin, RamBlock, RamBlockList, pc_ram_windows};
use vm_memory::{Bytes, GuestAddress};

fn memfd(size: u64) -> File {
    let fd =
        nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).expect("memfd");
    let f = File::from(fd);
    f.set_len(size).expect("size");
    f
}

fn blocks(size: u64) -> RamBlockList {
    let b = RamBlock::builder("pc.ram", size)
        .backing(Backing::Memfd {
            name: "pc.ram".into(),
        })
        .shared(true)
        .windows(pc_ram_windows(size))
        .build()
        .expect("block");
    RamBlockList::from_blocks([b]).expect("blocks")
}

#[test]
fn a_reserved_block_takes_the_handed_memfd_at_the_same_addresses() {
    let size = 64 << 20;
    let mut ram = GuestRam::reserve(&blocks(size), OpenMode::OpenOrCreate).expect("reserve");
    let b = &ram.blocks()[0];
    assert_eq!(b.origin(), Origin::Reserved);
    assert!(b.fd().is_none());
    let addr = b.host_addr();
    // What the old process's guest wrote.
    let mut old = memfd(size);
    old.seek(SeekFrom::Start(0x1000)).expect("seek");
    old.write_all(b"guest data").expect("write");
    ram.bind("pc.ram", OwnedFd::from(old.try_clone().expect("dup")))
        .expect("bind");
    let b = &ram.blocks()[0];
    assert_eq!(b.origin(), Origin::Inherited);
    assert_eq!(
        b.host_addr(),
        addr,
        "same host address: memslots stay valid"
    );
    assert!(matches!(b.block().backing(), Backing::InheritedFd(_)));
    let mut got = [0u8; 10];
    ram.memory()
        .read_slice(&mut got, GuestAddress(0x1000))
        .expect("read");
    assert_eq!(&got, b"guest data");
    // Writes through the mapping land in the memfd (shared).
    ram.memory()
        .write_slice(b"new", GuestAddress(0x2000))
        .expect("write");
    let mut back = [0u8; 3];
    old.seek(SeekFrom::Start(0x2000)).expect("seek");
    old.read_exact(&mut back).expect("read");
    assert_eq!(&back, b"new");
    // Bound once: a second bind is refused.
    let err = ram
        .bind("pc.ram", OwnedFd::from(memfd(size)))
        .expect_err("bound already");
    assert!(err.to_string().contains("not reserved"), "{err}");
}

#[test]
fn bind_refuses_what_does_not_fit() {
    let size = 64 << 20;
    let mut ram = GuestRam::reserve(&blocks(size), OpenMode::OpenOrCreate).expect("reserve");
    let err = ram
        .bind("pc.ram", OwnedFd::from(memfd(size / 2)))
        .expect_err("wrong size");
    assert!(err.to_string().contains("bytes"), "{err}");
    let err = ram
        .bind("other", OwnedFd::from(memfd(size)))
        .expect_err("no such block");
    assert!(err.to_string().contains("no such block"), "{err}");
    // Still reserved: the right descriptor binds.
    ram.bind("pc.ram", OwnedFd::from(memfd(size)))
        .expect("bind");
    // `map` creates memfd blocks, as before.
    let ram = GuestRam::map(&blocks(size), OpenMode::OpenOrCreate).expect("map");
    assert_eq!(ram.blocks()[0].origin(), Origin::Created);
}
