//! The `ram` section: round trips, PART chunking, the in-place
//! (x-ignore-shared) case, how it composes with device state, and the
//! two-pass load.

mod common;
mod ram_common;

use std::cell::Cell;

use common::*;
use cpr_migration_file::QemuFile;
use cpr_savevm::*;
use ram_common::*;

/// "pc.ram": 64 pages, mostly zero, patterned pages 0, 5, 6 and 63;
/// "vram": 16 pages, all data; "shared": 8 pages kept in place.
fn layout() -> Vec<RamBlockDesc> {
    vec![
        RamBlockDesc::copied("pc.ram", 64 * PAGE as u64),
        RamBlockDesc::copied("vram", 16 * PAGE as u64),
        RamBlockDesc::ignored("shared", 8 * PAGE as u64),
    ]
}

fn source_ram() -> MemRam {
    let mut ram = MemRam::filled(&layout(), 0);
    let pc = ram.block_mut("pc.ram");
    for p in [0usize, 5, 6, 63] {
        for (i, b) in pc[p * PAGE..(p + 1) * PAGE].iter_mut().enumerate() {
            *b = low((p * 7 + i % 251) as u64) | 0x40;
        }
    }
    // One byte set in the last 8 bytes: zero detection looks at all of it.
    pc[10 * PAGE + PAGE - 1] = 1;
    for (i, b) in ram.block_mut("vram").iter_mut().enumerate() {
        *b = low(i as u64 % 253) | 1;
    }
    ram.block_mut("shared").fill(0x5a);
    ram
}

#[test]
fn round_trip_restores_ram_and_devices() {
    let mut src_machine = Machine::golden();
    let src = source_ram();
    let (bytes, stats) = save(&mut src_machine.registry, &src);
    assert_eq!(stats.sections, 2);
    assert_eq!(stats.ram_pages, 5 + 16);
    assert_eq!(stats.ram_zero_pages, 64 - 5);
    assert!(stats.ram_bytes > 21 * PAGE as u64 && stats.ram_bytes < 22 * PAGE as u64);

    // Destination: garbage everywhere, its own content in the shared block.
    let mut dst = MemRam::filled(&layout(), 0xee);
    dst.block_mut("shared").fill(0x77);
    let mut m = Machine::new(Timer::default(), Dev::default());
    let loaded = load(&bytes, &m.registry, &mut dst).expect("load");
    assert_eq!(dst.block("pc.ram"), src.block("pc.ram"));
    assert_eq!(dst.block("vram"), src.block("vram"));
    assert!(
        dst.block("shared").iter().all(|&b| b == 0x77),
        "ignored block written"
    );
    // 21 pages written, the zero pages of pc.ram (one ZERO record each) zeroed in three
    // calls: [1..5), [7..10), [11..63).
    assert_eq!((dst.writes, dst.zeros), (21, 3));

    let ram = loaded.ram().expect("ram summary");
    assert_eq!(ram.blocks, layout());
    assert_eq!((ram.pages, ram.zero_pages, ram.version_id), (21, 59, 4));
    assert_eq!(ram.section_id, 2, "the registry's next free section id");
    assert_eq!(loaded.vmdesc()["ram"]["blocks"][2]["ignored"], true);
    assert_eq!(loaded.vmdesc()["ram"]["total"], 88 * PAGE);
    assert_eq!(loaded.vmdesc()["devices"].as_array().map(Vec::len), Some(2));

    // Device state was only parsed; apply it now.
    assert_eq!(m.restores(), 0);
    loaded.apply(&mut m.registry).expect("apply");
    assert_eq!(m.states(), src_machine.states());
}

#[test]
fn stream_is_framed_as_qemu_with_a_zero_record_per_zero_page() {
    let src = source_ram();
    let (bytes, stats) = save(&mut Registry::new(), &src);
    let (blocks, parts, end) = walk(&bytes);
    // x-ignore-shared is on ("shared" stays in place): each block's address follows.
    assert_eq!(
        blocks,
        [
            ("pc.ram".into(), 64 * PAGE as u64, Some(0)),
            ("vram".into(), 16 * PAGE as u64, Some(0)),
            ("shared".into(), 8 * PAGE as u64, Some(0)),
        ]
    );
    assert_eq!(parts.len(), 1);
    let p = PAGE as u64;
    let pc = |o: u64| ("pc.ram".to_string(), o * p);
    assert_eq!(parts[0].pages[..5], [pc(0), pc(5), pc(6), pc(10), pc(63)]);
    assert_eq!(parts[0].pages.len(), 21);
    let zeros: Vec<_> = [1, 2, 3, 4, 7, 8, 9]
        .into_iter()
        .chain(11..63)
        .map(pc)
        .collect();
    assert_eq!(parts[0].zero_pages, zeros);
    // Right after the ram section: EOF (no devices), as QEMU orders it.
    assert_eq!(bytes[end], 0x00);
    let config = CONFIG.len() + CONFIG_CAPS.len();
    assert_eq!(stats.ram_bytes, (end - 8 - config) as u64);
}

#[test]
fn parts_hold_at_most_one_mebibyte_of_pages() {
    // 600 data pages: 256 + 256 + 88.
    let descs = [RamBlockDesc::copied("big", 600 * PAGE as u64)];
    let src = GenRam::new(descs.to_vec(), 1);
    let (bytes, stats) = save(&mut Registry::new(), &src);
    let (_, parts, _) = walk(&bytes);
    let sizes: Vec<_> = parts.iter().map(|p| p.pages.len()).collect();
    assert_eq!(sizes, [256, 256, 88]);
    assert_eq!(stats.ram_pages, 600);
    let mut dst = GenRam::new(descs.to_vec(), 1);
    load(&bytes, &Registry::new(), &mut dst).expect("load");
    assert_eq!((dst.written_pages, dst.wrong), (600, 0));
}

#[test]
fn in_place_blocks_are_checked_and_never_written() {
    let descs = [
        RamBlockDesc::ignored("pc.ram", 32 * PAGE as u64),
        RamBlockDesc::ignored("rom", PAGE as u64),
    ];
    let src = MemRam::filled(&descs, 0x11);
    let (bytes, stats) = save(&mut Registry::new(), &src);
    assert_eq!((stats.ram_pages, stats.ram_zero_pages), (0, 0));
    assert_eq!(src.reads.get(), 0, "ignored blocks are not even read");
    let (_, parts, _) = walk(&bytes);
    assert!(parts.is_empty());

    let mut dst = MemRam::filled(&descs, 0x22);
    let opens = Cell::new(0);
    let loaded =
        load_state(opener(&bytes, &opens), &Registry::new(), Some(&mut dst)).expect("load");
    assert_eq!(opens.get(), 1, "nothing to write: no second pass");
    assert_eq!(dst.touched(), 0);
    assert_eq!(loaded.ram().map(|r| r.blocks.clone()), Some(descs.to_vec()));
}

#[test]
fn copied_blocks_take_two_passes() {
    let src = source_ram();
    let (bytes, _) = save(&mut Registry::new(), &src);
    let mut dst = MemRam::filled(&layout(), 0);
    let opens = Cell::new(0);
    load_state(opener(&bytes, &opens), &Registry::new(), Some(&mut dst)).expect("load");
    assert_eq!(opens.get(), 2);
}

#[test]
fn probe_tells_what_the_saver_wrote() {
    let mut m = Machine::golden();
    let probe_bytes = |bytes: Vec<u8>| probe(&mut QemuFile::from_bytes(bytes, "t"));
    assert_eq!(probe_bytes(m.save()).expect("v7"), StreamKind::DeviceState);
    let (with_ram, _) = save(&mut m.registry, &source_ram());
    assert_eq!(probe_bytes(with_ram).expect("ram"), StreamKind::WithRam);
    // Only in-place blocks: still a ram section (the block list), still WithRam.
    let shared = MemRam::filled(&[RamBlockDesc::ignored("shared", 8 * PAGE as u64)], 1);
    let (in_place, _) = save(&mut m.registry, &shared);
    assert_eq!(probe_bytes(in_place).expect("ram"), StreamKind::WithRam);
}

#[test]
fn ram_blocks_reads_the_block_list_a_loader_then_accepts() {
    let mut m = Machine::golden();
    let blocks = |bytes: &[u8]| {
        ram_blocks(&mut QemuFile::from_bytes(bytes.to_vec(), "t")).map(|l| l.map(|l| l.blocks))
    };
    assert_eq!(blocks(&m.save()).expect("v7"), None);
    let (bytes, _) = save(&mut m.registry, &source_ram());
    let mut listed = blocks(&bytes).expect("ram").expect("a ram section");
    // Names and lengths as saved; which blocks stay in place is the vmdesc's to say.
    let names = |l: &[RamBlockDesc]| {
        l.iter()
            .map(|b| (b.idstr.clone(), b.used_length))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&listed), names(&layout()));
    assert!(listed.iter().all(|b| !b.ignored));
    for b in &mut listed {
        b.ignored = layout().iter().any(|l| l.idstr == b.idstr && l.ignored);
    }
    // The list is what the loader wants: a RAM of that shape loads the stream.
    let mut dst = MemRam::filled(&listed, 0xff);
    load(&bytes, &m.registry, &mut dst).expect("load");
    assert_eq!(dst.block("vram"), source_ram().block("vram"));
    // Not a stream, and a block the loader would refuse (length not a page multiple).
    assert!(matches!(
        blocks(b"QEVX\0\0\0\x03"),
        Err(Error::NotVmstateFile { .. })
    ));
    let (mut odd, _) = save(
        &mut m.registry,
        &MemRam::filled(&[RamBlockDesc::copied("a", 4096)], 1),
    );
    // START's block list: "a" (counted string), then its be64 length.
    let mut needle = vec![1u8, b'a'];
    needle.extend_from_slice(&4096u64.to_be_bytes());
    let at = odd
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the block list")
        + 2;
    assert_eq!(&odd[at..at + 8], &4096u64.to_be_bytes());
    // An empty name: nothing but the adopted list's own check (as a loader checks its
    // local list) refuses it.
    let mut unnamed = odd.clone();
    unnamed.splice(at - 2..at, [0u8]);
    match blocks(&unnamed) {
        Err(Error::LoadSection { source, .. }) => match *source {
            Error::InvalidRamBlock { idstr, reason } => {
                assert_eq!(idstr, "");
                assert_eq!(reason, "the idstr must be 1 to 255 bytes long");
            }
            other => panic!("an unnamed block: {other:?}"),
        },
        other => panic!("an unnamed block: {other:?}"),
    }
    odd[at + 7] = 1;
    assert!(blocks(&odd).is_err(), "length 4097 accepted");
    for cut in [20, 40, 60] {
        assert!(blocks(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn without_ram_the_bytes_are_the_device_state_streams() {
    let mut m = Machine::golden();
    let v7 = m.save();
    let mut f = QemuFile::memory_writer("t");
    let stats = save_state(&mut f, &mut m.registry, None).expect("save");
    assert_eq!(f.into_bytes().expect("bytes"), v7);
    assert_eq!(
        (stats.ram_pages, stats.ram_zero_pages, stats.ram_bytes),
        (0, 0, 0)
    );

    let opens = Cell::new(0);
    let loaded = load_state(opener(&v7, &opens), &m.registry, None).expect("load");
    assert_eq!(opens.get(), 1);
    assert!(loaded.ram().is_none());
    assert!(loaded.vmdesc().get("ram").is_none());
}

#[test]
fn ram_stream_needs_ram_to_load_into() {
    let (bytes, _) = save(&mut Registry::new(), &source_ram());
    // The device-state loader refuses it at its configuration section.
    let mut f = QemuFile::from_bytes(bytes.clone(), "t");
    match load_device_state(&mut f, &Registry::new()) {
        Err(Error::UnexpectedSectionType {
            ty: 7, offset: 8, ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let opens = Cell::new(0);
    match load_state(opener(&bytes, &opens), &Registry::new(), None) {
        Err(Error::UnexpectedSectionType {
            ty: 7, offset: 8, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn ram_loader_refuses_a_stream_without_ram() {
    let v7 = Machine::golden().save();
    let m = Machine::new(Timer::default(), Dev::default());
    let mut dst = MemRam::filled(&layout(), 0);
    let e = load(&v7, &m.registry, &mut dst).expect_err("no ram section");
    assert!(matches!(e, Error::MissingRamSection), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the stream has no ram section to load guest RAM from"
    );
    assert_eq!(dst.touched(), 0);
}

#[test]
fn stream_changed_between_passes_is_reported() {
    let src = source_ram();
    let (first, _) = save(&mut Registry::new(), &src);
    let mut other = source_ram();
    other.block_mut("vram")[3] ^= 0xff;
    let (second, _) = save(&mut Registry::new(), &other);
    let mut calls = 0;
    let open = || {
        calls += 1;
        let b = if calls == 1 { &first } else { &second };
        Ok(QemuFile::from_bytes(b.clone(), "t"))
    };
    let mut dst = MemRam::filled(&layout(), 0);
    match load_state(open, &Registry::new(), Some(&mut dst)) {
        Err(e @ Error::StreamChanged { source: None, .. }) => assert!(
            e.to_string()
                .starts_with("the stream changed between the checking and the loading pass")
        ),
        other => panic!("{other:?}"),
    }

    // Truncated on the second read: the parse error, as the cause.
    let mut calls = 0;
    let open = || {
        calls += 1;
        let b = if calls == 1 {
            &first[..]
        } else {
            &first[..5000]
        };
        Ok(QemuFile::from_bytes(b.to_vec(), "t"))
    };
    match load_state(open, &Registry::new(), Some(&mut dst)) {
        Err(Error::StreamChanged {
            source: Some(cause),
            ..
        }) => assert!(matches!(*cause, Error::LoadSectionPart { .. }), "{cause:?}"),
        other => panic!("{other:?}"),
    }
}

/// Both passes over one set of shared bytes: loaded (pass 2 is not hashed again,
/// the bytes cannot have changed).
#[test]
fn shared_bytes_load_in_both_passes() {
    let src = source_ram();
    let (bytes, _) = save(&mut Registry::new(), &src);
    let shared = std::sync::Arc::new(bytes);
    let mut calls = 0;
    let open = || {
        calls += 1;
        Ok(QemuFile::from_shared(shared.clone(), "t"))
    };
    let mut dst = MemRam::filled(&layout(), 0xee);
    load_state(open, &Registry::new(), Some(&mut dst)).expect("load");
    assert_eq!(calls, 2);
    assert_eq!(dst.block("pc.ram"), src.block("pc.ram"));
    assert_eq!(dst.block("vram"), src.block("vram"));
}

/// Shared bytes, but not the same ones in pass 2: still hashed and compared.
#[test]
fn other_shared_bytes_in_pass_two_are_a_changed_stream() {
    let src = source_ram();
    let (first, _) = save(&mut Registry::new(), &src);
    // A byte of page data: it still parses, only the checksum tells.
    let mut other = source_ram();
    other.block_mut("vram")[3] ^= 0xff;
    let (second, _) = save(&mut Registry::new(), &other);
    assert_eq!(first.len(), second.len());
    let (first, second) = (std::sync::Arc::new(first), std::sync::Arc::new(second));
    let mut calls = 0;
    let open = || {
        calls += 1;
        let b = if calls == 1 { &first } else { &second };
        Ok(QemuFile::from_shared(b.clone(), "t"))
    };
    let mut dst = MemRam::filled(&layout(), 0);
    match load_state(open, &Registry::new(), Some(&mut dst)) {
        Err(Error::StreamChanged { source: None, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A VMM that cannot write guest RAM: its error, not "stream changed".
#[test]
fn write_failures_are_the_vmms_errors() {
    struct ReadOnly(MemRam);
    impl RamBlocks for ReadOnly {
        fn blocks(&self) -> Vec<RamBlockDesc> {
            self.0.blocks()
        }
        fn ignore_shared(&self) -> bool {
            self.0.ignore_shared()
        }
        fn populated(
            &self,
            b: usize,
        ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
            self.0.populated(b)
        }
        fn read(&self, b: usize, o: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
            self.0.read(b, o, buf)
        }
        fn write(&mut self, _: usize, _: u64, _: &[u8]) -> std::result::Result<(), BoxError> {
            Err("read-only mapping".into())
        }
        fn zero(&mut self, b: usize, o: u64, l: u64) -> std::result::Result<(), BoxError> {
            self.0.zero(b, o, l)
        }
    }
    let (bytes, _) = save(&mut Registry::new(), &source_ram());
    let mut dst = ReadOnly(MemRam::filled(&layout(), 0));
    let e = load(&bytes, &Registry::new(), &mut dst).expect_err("write fails");
    assert_eq!(
        chain(&e),
        "error while loading state section id 0(ram): ramblock \"pc.ram\": write at 0x0 failed: read-only mapping"
    );
}

#[test]
fn ram_is_not_a_registry_entry() {
    let mut registry = Registry::new();
    registry
        .register_persist(
            Registration::new("ram", InstanceId::Id(0), OnLoad::Optional),
            shared(Timer::default()),
        )
        .expect("register");
    let mut f = QemuFile::memory_writer("t");
    match save_state(&mut f, &mut registry, Some(&source_ram())) {
        Err(Error::DuplicateRegistration {
            idstr,
            instance_id: 0,
        }) => assert_eq!(idstr, "ram"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn save_refuses_bad_block_lists_and_reports_read_errors() {
    let bad = MemRam::filled(&[RamBlockDesc::copied("odd", 100)], 0);
    let mut f = QemuFile::memory_writer("t");
    let e = save_state(&mut f, &mut Registry::new(), Some(&bad)).expect_err("unaligned");
    assert_eq!(
        e.to_string(),
        "ramblock \"odd\": used_length must be a non-zero multiple of the 4096-byte target page"
    );

    // blocks() says 2 pages, the memory has 1: the read of the second page
    // fails.
    let mut short = MemRam::filled(&[RamBlockDesc::copied("pc.ram", 2 * PAGE as u64)], 1);
    short.data[0].truncate(PAGE);
    let mut f = QemuFile::memory_writer("t");
    match save_state(&mut f, &mut Registry::new(), Some(&short)) {
        Err(e @ Error::RamAccess { .. }) => {
            assert_eq!(
                chain(&e),
                "ramblock \"pc.ram\": read at 0x1000 failed: out of range"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The VMM's populated-ranges hint: pages outside it are left out of the stream without a
/// single read, and load back as zeros.
#[test]
fn populated_hint_skips_reading_never_populated_pages() {
    struct Hinted {
        inner: MemRam,
        hint: Vec<std::ops::Range<u64>>,
        outside_reads: Cell<usize>,
    }
    impl RamBlocks for Hinted {
        fn blocks(&self) -> Vec<RamBlockDesc> {
            self.inner.blocks()
        }
        fn ignore_shared(&self) -> bool {
            self.inner.ignore_shared()
        }
        fn populated(
            &self,
            b: usize,
        ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
            Ok((b == 0).then(|| self.hint.clone()))
        }
        fn read(&self, b: usize, o: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
            let end = o + buf.len() as u64;
            if b == 0 && !self.hint.iter().any(|r| o >= r.start && end <= r.end) {
                self.outside_reads.set(self.outside_reads.get() + 1);
            }
            self.inner.read(b, o, buf)
        }
        fn write(&mut self, b: usize, o: u64, d: &[u8]) -> std::result::Result<(), BoxError> {
            self.inner.write(b, o, d)
        }
        fn zero(&mut self, b: usize, o: u64, l: u64) -> std::result::Result<(), BoxError> {
            self.inner.zero(b, o, l)
        }
    }
    let page = PAGE as u64;
    let src = Hinted {
        inner: source_ram(),
        // Pages 5..7 of pc.ram (which hold data) and nothing else: the data in pages 0,
        // 10 and 63 is, by the VMM's word, not there, and must come back as zeros.
        hint: std::iter::once(5 * page..7 * page).collect(),
        outside_reads: Cell::new(0),
    };
    let mut m = Machine::golden();
    let (bytes, stats) = save(&mut m.registry, &src);
    assert_eq!(
        src.outside_reads.get(),
        0,
        "read outside the populated hint"
    );
    assert_eq!(
        stats.ram_pages,
        2 + 16,
        "pc.ram pages 5 and 6, and all of vram"
    );
    assert_eq!(stats.ram_zero_pages, 62, "the rest of pc.ram");
    let (_, parts, _) = walk(&bytes);
    let pc: Vec<_> = parts
        .iter()
        .flat_map(|p| p.pages.iter().chain(&p.zero_pages))
        .filter(|(b, _)| b == "pc.ram")
        .map(|(_, o)| o / page)
        .collect();
    assert_eq!(pc, [5, 6], "no record for a page outside the hint");
    let mut dst = MemRam::filled(&layout(), 0xee);
    let m2 = Machine::new(Timer::default(), Dev::default());
    load(&bytes, &m2.registry, &mut dst).expect("load");
    let pc = dst.block("pc.ram");
    assert_eq!(
        &pc[5 * PAGE..7 * PAGE],
        &src.inner.block("pc.ram")[5 * PAGE..7 * PAGE]
    );
    assert!(pc[..5 * PAGE].iter().all(|&b| b == 0));
    assert!(pc[7 * PAGE..].iter().all(|&b| b == 0));
    assert_eq!(dst.block("vram"), src.inner.block("vram"));
}

/// A registry's stream check sees the whole parsed stream (devices and the
/// ram section) and refuses it before any guest RAM is written.
#[test]
fn stream_check_refuses_before_ram_is_written() {
    let mut src_machine = Machine::golden();
    let (bytes, _) = save(&mut src_machine.registry, &source_ram());
    let mut m = Machine::new(Timer::default(), Dev::default());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = std::sync::Arc::clone(&seen);
    m.registry.set_stream_check(move |loaded| {
        let ram = loaded.ram().map(|r| r.blocks.len());
        *record.lock().unwrap() = Some((loaded.sections().count(), ram));
        Err(Error::InvalidState {
            vmsd: "dev".into(),
            reason: "refused by the stream check".into(),
        })
    });
    let mut dst = MemRam::filled(&layout(), 0xee);
    let e = load(&bytes, &m.registry, &mut dst).expect_err("refused");
    assert_eq!(e.to_string(), "dev: refused by the stream check");
    assert_eq!(*seen.lock().unwrap(), Some((2, Some(3))));
    assert_eq!(dst.touched(), 0, "guest RAM was written");
    assert_eq!(m.restores(), 0);
}

/// A file that fills up while guest RAM is written (by the saver's writer thread): the
/// save stops there with the file's error and the offset it failed at, whatever batch the
/// RAM reader was building.
#[test]
fn save_reports_a_full_file_during_ram() {
    struct Full(usize);
    impl std::io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let ram = GenRam::new(vec![RamBlockDesc::copied("pc.ram", 64 << 20)], 1);
    for room in [100, 3 << 20, 20 << 20] {
        let mut f = QemuFile::from_writer(Full(room), "full");
        match save_state(&mut f, &mut Registry::new(), Some(&ram)) {
            Err(Error::Io {
                source: cpr_migration_file::Error::Write { offset, .. },
                ..
            }) => assert_eq!(offset, room as u64),
            other => panic!("{room}: {other:?}"),
        }
    }
}
