//! Loads that read their input in place ([`QemuFile::from_shared_input`]): a large input
//! is hashed on two threads before it is parsed, an input that reports a change is
//! refused after either pass, and the loader tells the VMM which ranges it will write
//! ([`RamBlocks::will_write`]).

mod ram_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cpr_migration_file::{QemuFile, SharedInput};
use cpr_savevm::*;
use ram_common::*;

/// One 8 MiB block full of data: its stream is past the size hashed in parallel.
fn big() -> (Vec<RamBlockDesc>, MemRam) {
    let descs = vec![RamBlockDesc::copied("pc.ram", 8 << 20)];
    let mut ram = MemRam::filled(&descs, 0);
    for (i, b) in ram.block_mut("pc.ram").iter_mut().enumerate() {
        *b = low((i % 249) as u64) | 0x80;
    }
    (descs, ram)
}

fn load_shared(bytes: Vec<u8>, dst: &mut MemRam) -> Result<LoadedState> {
    let shared = Arc::new(bytes);
    load_state(
        || Ok(QemuFile::from_shared(shared.clone(), "t")),
        &Registry::new(),
        Some(dst),
    )
}

#[test]
fn a_large_shared_stream_loads() {
    let (descs, src) = big();
    let (bytes, _) = save(&mut Registry::new(), &src);
    assert!(bytes.len() > 8 << 20);
    let mut dst = MemRam::filled(&descs, 0xee);
    load_shared(bytes, &mut dst).expect("load");
    assert_eq!(dst.block("pc.ram"), src.block("pc.ram"));
}

/// A flipped byte anywhere in either half (or in the trailer's digits) is a checksum
/// mismatch, found before guest RAM is touched.
#[test]
fn a_large_shared_stream_is_checked_in_both_halves() {
    let (descs, src) = big();
    let (bytes, _) = save(&mut Registry::new(), &src);
    let n = bytes.len();
    // Page data early, page data late (the second thread's half), the last digit.
    for at in [1 << 20, n - (1 << 20), n - 1] {
        let mut bad = bytes.clone();
        bad[at] = if at == n - 1 {
            if bad[at] == b'0' { b'1' } else { b'0' }
        } else {
            bad[at] ^ 0x01
        };
        let mut dst = MemRam::filled(&descs, 0xee);
        match load_shared(bad, &mut dst) {
            Err(Error::ChecksumMismatch { .. }) => {}
            other => panic!("byte {at}: {other:?}"),
        }
        assert_eq!(dst.touched(), 0, "byte {at}: guest RAM touched");
    }
}

/// Bytes after the trailer: the same error as when the stream is read through a buffer.
#[test]
fn trailing_bytes_after_a_large_shared_stream() {
    let (descs, src) = big();
    let (mut bytes, _) = save(&mut Registry::new(), &src);
    bytes.extend_from_slice(&[0; 5]);
    let mut dst = MemRam::filled(&descs, 0xee);
    let shared = load_shared(bytes.clone(), &mut dst).expect_err("trailing bytes");
    let mut dst2 = MemRam::filled(&descs, 0xee);
    let buffered = load(&bytes, &Registry::new(), &mut dst2).expect_err("trailing bytes");
    assert_eq!(shared.to_string(), buffered.to_string());
    assert_eq!(dst.touched(), 0);
}

/// Bytes in memory whose `verify` can be made to fail, as a mapped file that was
/// truncated or opened for writing reports.
struct Changing {
    bytes: Vec<u8>,
    changed: AtomicBool,
}

impl SharedInput for Changing {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn verify(&self) -> std::result::Result<(), String> {
        if self.changed.load(Ordering::SeqCst) {
            Err("truncated".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn an_input_that_changed_is_refused_after_either_pass() {
    for big_stream in [false, true] {
        let (descs, src) = if big_stream {
            big()
        } else {
            let descs = vec![RamBlockDesc::copied("pc.ram", 16 * PAGE as u64)];
            let mut ram = MemRam::filled(&descs, 0);
            ram.block_mut("pc.ram").fill(0x11);
            (descs, ram)
        };
        let (bytes, _) = save(&mut Registry::new(), &src);
        // Changed during pass 1: refused before guest RAM is touched.
        let input = Arc::new(Changing {
            bytes: bytes.clone(),
            changed: AtomicBool::new(true),
        });
        let mut dst = MemRam::filled(&descs, 0xee);
        let open = || {
            let i: Arc<dyn SharedInput> = input.clone();
            Ok(QemuFile::from_shared_input(i, "t"))
        };
        match load_state(open, &Registry::new(), Some(&mut dst)) {
            Err(Error::InputChanged { source, .. }) => {
                assert!(source.to_string().contains("truncated"), "{source}");
            }
            other => panic!("pass 1: {other:?}"),
        }
        assert_eq!(dst.touched(), 0);
        // Changed during pass 2 (it reports so once pass 2 has started).
        let input = Arc::new(Changing {
            bytes,
            changed: AtomicBool::new(false),
        });
        let mut calls = 0;
        let open = || {
            calls += 1;
            if calls == 2 {
                input.changed.store(true, Ordering::SeqCst);
            }
            let i: Arc<dyn SharedInput> = input.clone();
            Ok(QemuFile::from_shared_input(i, "t"))
        };
        match load_state(open, &Registry::new(), Some(&mut dst)) {
            Err(Error::InputChanged { .. }) => {}
            other => panic!("pass 2: {other:?}"),
        }
    }
}

/// [`MemRam`] that records what [`RamBlocks::will_write`] was told, and when.
struct Recording {
    ram: MemRam,
    told: Vec<(usize, Vec<std::ops::Range<u64>>, usize)>,
    /// Calls to finish_writes, with the writes and zeros made by then.
    finished: Vec<usize>,
}

impl RamBlocks for Recording {
    fn blocks(&self) -> Vec<RamBlockDesc> {
        self.ram.blocks()
    }
    fn ignore_shared(&self) -> bool {
        self.ram.ignore_shared()
    }
    fn read(&self, b: usize, o: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
        self.ram.read(b, o, buf)
    }
    fn write(&mut self, b: usize, o: u64, d: &[u8]) -> std::result::Result<(), BoxError> {
        self.ram.write(b, o, d)
    }
    fn zero(&mut self, b: usize, o: u64, l: u64) -> std::result::Result<(), BoxError> {
        self.ram.zero(b, o, l)
    }
    fn populated(
        &self,
        b: usize,
    ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        self.ram.populated(b)
    }
    fn will_write(
        &mut self,
        block: usize,
        ranges: &[std::ops::Range<u64>],
    ) -> std::result::Result<(), BoxError> {
        self.told.push((block, ranges.to_vec(), self.ram.touched()));
        Ok(())
    }
    fn finish_writes(&mut self) -> std::result::Result<(), BoxError> {
        self.finished.push(self.ram.touched());
        Ok(())
    }
}

/// Saves `src` and loads it into a [`Recording`] of the same blocks.
fn load_recording(descs: &[RamBlockDesc], src: &MemRam) -> Recording {
    let (bytes, _) = save(&mut Registry::new(), src);
    let mut dst = Recording {
        ram: MemRam::filled(descs, 0xee),
        told: Vec::new(),
        finished: Vec::new(),
    };
    load(&bytes, &Registry::new(), &mut dst).expect("load");
    dst
}

/// The ranges with page data, merged across gaps under 2 MiB, told once per block before
/// the first write; not told for a block without page data. Then, after the last page,
/// that the writes are done.
#[test]
#[allow(clippy::single_range_in_vec_init)]
fn the_vmm_is_told_which_ranges_will_be_written() {
    let p = PAGE as u64;
    let descs = vec![
        RamBlockDesc::copied("pc.ram", 1024 * p),
        RamBlockDesc::copied("empty", 16 * p),
        RamBlockDesc::copied("vram", 16 * p),
    ];
    let mut src = MemRam::filled(&descs, 0);
    // Pages 0 and 1, 3 (after a 1-page gap), 515 (after a 511-page gap, just under
    // 2 MiB): one range. "empty" has no page data; "vram" has its first and last page.
    for page in [0usize, 1, 3, 515] {
        src.block_mut("pc.ram")[page * PAGE] = 1;
    }
    src.block_mut("vram")[0] = 1;
    src.block_mut("vram")[15 * PAGE] = 1;
    let dst = load_recording(&descs, &src);
    assert_eq!(
        dst.told,
        vec![(0, vec![0..516 * p], 0), (2, vec![0..16 * p], 0)]
    );
    assert_eq!(dst.ram.block("pc.ram"), src.block("pc.ram"));
    // Told once the last write and zero run were made.
    assert_eq!(dst.finished, vec![dst.ram.touched()]);

    // A gap of exactly 2 MiB splits.
    let descs = vec![RamBlockDesc::copied("pc.ram", 1024 * p)];
    let mut src = MemRam::filled(&descs, 0);
    src.block_mut("pc.ram")[0] = 1;
    src.block_mut("pc.ram")[513 * PAGE] = 1;
    let dst = load_recording(&descs, &src);
    assert_eq!(dst.told, vec![(0, vec![0..p, 513 * p..514 * p], 0)]);
}
