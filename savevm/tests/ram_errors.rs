//! Refusals of the `ram` section, with QEMU's messages where QEMU has one:
//! block list mismatches between source and destination, and malformed
//! sections and records (crafted by hand). None writes guest RAM.

mod common;
mod ram_common;

use common::*;
use cpr_migration_file::QemuFile;
use cpr_savevm::*;
use ram_common::*;

const P: u64 = PAGE as u64;

fn src_layout() -> Vec<RamBlockDesc> {
    vec![
        RamBlockDesc::copied("pc.ram", 64 * P),
        RamBlockDesc::ignored("shared", 8 * P),
    ]
}

/// Save `src` blocks, load into `dst` blocks: the error, its chain, and
/// proof that nothing was written.
fn mismatch(src: &[RamBlockDesc], dst: &[RamBlockDesc]) -> (Error, String) {
    let (bytes, _) = save(&mut Registry::new(), &MemRam::filled(src, 3));
    let mut ram = MemRam::filled(dst, 0);
    let e = load(&bytes, &Registry::new(), &mut ram).expect_err("mismatch");
    assert_eq!(ram.touched(), 0, "{e}");
    let c = chain(&e);
    (e, c)
}

const OUTER: &str = "error while loading state for instance 0x0 of device 'ram': ";

#[test]
fn unknown_block_is_refused() {
    let mut src = src_layout();
    src.push(RamBlockDesc::copied("0000:00:03.0/virtio-net-pci.rom", P));
    let (e, c) = mismatch(&src, &src_layout());
    assert_eq!(
        c,
        format!(
            "{OUTER}Unknown ramblock \"0000:00:03.0/virtio-net-pci.rom\", cannot accept migration"
        )
    );
    match e {
        Error::LoadSection { idstr, source, .. } => {
            assert_eq!(idstr, "ram");
            assert!(matches!(*source, Error::UnknownRamBlock { .. }));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn length_mismatch_is_refused() {
    let mut dst = src_layout();
    dst[0].used_length = 32 * P;
    let (_, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        format!("{OUTER}Length mismatch: pc.ram: 0x40000 in != 0x20000")
    );
}

#[test]
fn ignored_flag_mismatch_is_refused_both_ways() {
    // Destination expects pages, the source left the block in place.
    let mut dst = src_layout();
    dst[1].ignored = false;
    let (e, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        format!(
            "{OUTER}Capability x-ignore-shared is off, but received capability is on for ramblock \"shared\""
        )
    );
    let Error::LoadSection { source, .. } = e else {
        panic!("{e:?}")
    };
    assert!(matches!(
        *source,
        Error::RamIgnoredMismatch {
            local_ignored: false,
            stream_ignored: true,
            ..
        }
    ));

    // Destination keeps the block in place, the source sent its pages.
    let mut dst = src_layout();
    dst[0].ignored = true;
    let (_, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        format!(
            "{OUTER}Capability x-ignore-shared is on, but received capability is off for ramblock \"pc.ram\""
        )
    );
}

#[test]
fn block_missing_from_the_stream_is_refused() {
    let mut dst = src_layout();
    dst.push(RamBlockDesc::copied("extra", P));
    let (_, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        format!("{OUTER}ramblock \"extra\" is missing from the stream")
    );
}

// ------------------------------------------------------- crafted sections

/// Destination: "pc.ram" 4 pages copied, "shared" 1 page in place.
fn dst_layout() -> Vec<RamBlockDesc> {
    vec![
        RamBlockDesc::copied("pc.ram", 4 * P),
        RamBlockDesc::ignored("shared", P),
    ]
}

fn start(f: &mut QemuFile, version: u32) {
    write_full_header(f, 0x01, 0, "ram", 0, version);
    f.put_u64((5 * P) | 0x04);
    for (id, len, ignored) in [("pc.ram", 4 * P, 0u8), ("shared", P, 1)] {
        f.put_counted_string(id);
        f.put_u64(len);
        f.put_u8(ignored);
    }
    f.put_u64(0x10);
    write_section_footer(f, 0);
}

fn page(f: &mut QemuFile, word: u64, idstr: Option<&str>) {
    f.put_u64(word);
    if let Some(id) = idstr {
        f.put_counted_string(id);
    }
    f.put_buffer(&[0x42; PAGE]);
}

/// Header, START, one PART with `records`, END, EOF (no vmdesc or trailer:
/// every error below comes first).
fn crafted(records: impl FnOnce(&mut QemuFile)) -> Vec<u8> {
    let mut f = QemuFile::memory_writer("t");
    write_stream_header(&mut f);
    start(&mut f, 4);
    write_part_header(&mut f, 0x02, 0);
    records(&mut f);
    f.put_u64(0x10);
    write_section_footer(&mut f, 0);
    write_part_header(&mut f, 0x03, 0);
    f.put_u64(0x10);
    write_section_footer(&mut f, 0);
    f.put_u8(0x00);
    f.into_bytes().expect("bytes")
}

fn refuse(bytes: &[u8]) -> (Error, String) {
    let mut ram = MemRam::filled(&dst_layout(), 0);
    let e = load(bytes, &Registry::new(), &mut ram).expect_err("refused");
    assert_eq!(ram.touched(), 0, "{e}");
    let c = chain(&e);
    (e, c)
}

type Records = Box<dyn FnOnce(&mut QemuFile)>;

const PART: &str = "error while loading state section id 0(ram): ";

#[test]
fn record_errors_have_qemus_messages() {
    let all_pages = |f: &mut QemuFile| {
        page(f, 0x08, Some("pc.ram"));
        for i in 1..4 {
            page(f, (i * P) | 0x28, None);
        }
    };
    let cases: Vec<(Records, &str)> = vec![
        (
            Box::new(|f| page(f, 0x28, None)),
            "Ack, bad migration stream!",
        ),
        (
            Box::new(|f| f.put_u64(0x40)),
            "Unknown combination of migration flags: 0x40",
        ),
        (
            Box::new(|f| f.put_u64(0x0a)),
            "Unknown combination of migration flags: 0xa",
        ),
        (
            Box::new(|f| page(f, 0x08, Some("nope"))),
            "Can't find block nope",
        ),
        (
            Box::new(|f| page(f, 0x08, Some("shared"))),
            "block shared should not be migrated !",
        ),
        (
            Box::new(|f| page(f, (4 * P) | 0x08, Some("pc.ram"))),
            "Illegal RAM offset 4000",
        ),
        (
            Box::new(|f| {
                f.put_u64(P | 0x02);
                f.put_counted_string("pc.ram");
                f.put_u64(4);
            }),
            "Illegal RAM offset 1000",
        ),
        (
            Box::new(|f| {
                f.put_u64(0x02);
                f.put_counted_string("pc.ram");
                f.put_u64(u64::MAX);
            }),
            "Illegal RAM offset 0",
        ),
        (
            Box::new(|f| {
                f.put_u64(0x02);
                f.put_counted_string("pc.ram");
                f.put_u64(0);
            }),
            "ramblock \"pc.ram\": zero-page run of 0 pages at 0x0",
        ),
        (
            Box::new(|f| page(f, P | 0x08, Some("pc.ram"))),
            "ramblock \"pc.ram\": page 0x1000 out of order, expected 0x0",
        ),
        (
            Box::new(|f| {
                page(f, 0x08, Some("pc.ram"));
                page(f, 0x28, None);
            }),
            "ramblock \"pc.ram\": page 0x0 out of order, expected 0x1000",
        ),
        (
            Box::new(|f| page(f, 0x08, Some("pc.ram"))),
            "ramblock \"pc.ram\": pages 0x1000..0x4000 are missing from the stream",
        ),
        (
            // EOS with offset bits: QEMU ignores them, no saver sets them.
            Box::new(move |f| {
                all_pages(f);
                f.put_u64(P | 0x10);
            }),
            "end-of-section record 0x1010 carries an offset",
        ),
    ];
    for (records, msg) in cases {
        let (_, c) = refuse(&crafted(records));
        assert_eq!(c, format!("{PART}{msg}"));
    }
    // And the well-formed variant of the same stream passes these checks
    // (it then lacks a vmdesc).
    let (e, _) = refuse(&crafted(all_pages));
    assert!(matches!(e, Error::Read { what: "vmdesc", .. }), "{e:?}");
}

#[test]
fn section_errors() {
    let header = |f: &mut QemuFile| write_stream_header(f);
    let build = |body: &dyn Fn(&mut QemuFile)| {
        let mut f = QemuFile::memory_writer("t");
        header(&mut f);
        body(&mut f);
        f.into_bytes().expect("bytes")
    };
    // PART before any START.
    let (e, _) = refuse(&build(&|f| write_part_header(f, 0x02, 0)));
    assert_eq!(e.to_string(), "Unknown savevm section 0");
    assert!(matches!(
        e,
        Error::UnknownSectionId {
            section_id: 0,
            offset: 8
        }
    ));
    // PART of another section.
    let (e, _) = refuse(&build(&|f| {
        start(f, 4);
        write_part_header(f, 0x02, 9);
    }));
    assert_eq!(e.to_string(), "Unknown savevm section 9");
    // Versions.
    let (e, _) = refuse(&build(&|f| start(f, 5)));
    assert_eq!(e.to_string(), "savevm: unsupported version 5 for 'ram' v4");
    let (_, c) = refuse(&build(&|f| start(f, 3)));
    assert_eq!(
        c,
        format!("{OUTER}ram: incoming version_id 3 is too old for local minimum version_id  4")
    );
    // Another live section.
    let (e, _) = refuse(&build(&|f| write_full_header(f, 0x01, 0, "block", 0, 1)));
    assert!(
        matches!(e, Error::UnknownSection { instance_id: 0, .. }),
        "{e:?}"
    );
    // EOF before END.
    let (e, _) = refuse(&build(&|f| {
        start(f, 4);
        f.put_u8(0);
    }));
    assert_eq!(
        e.to_string(),
        "section type 0 (EOF) at offset 78 is out of place for the ram section"
    );
    // A second START.
    let (e, _) = refuse(&build(&|f| {
        start(f, 4);
        start(f, 4);
    }));
    assert!(
        matches!(
            e,
            Error::RamSectionOrder {
                ty: 1,
                offset: 78,
                ..
            }
        ),
        "{e:?}"
    );
    // Bad ignored byte; no MEM_SIZE record.
    let (_, c) = refuse(&build(&|f| {
        write_full_header(f, 0x01, 0, "ram", 0, 4);
        f.put_u64(P | 0x04);
        f.put_counted_string("pc.ram");
        f.put_u64(4 * P);
        f.put_u8(2);
    }));
    assert_eq!(
        c,
        format!(
            "{OUTER}bad ram block list at offset 33: ramblock \"pc.ram\" has ignored flag 2, not 0 or 1"
        )
    );
    let (_, c) = refuse(&build(&|f| {
        write_full_header(f, 0x01, 0, "ram", 0, 4);
        f.put_u64(0x10);
    }));
    assert_eq!(
        c,
        format!(
            "{OUTER}bad ram block list at offset 25: it starts with flags 0x10, not RAM_SAVE_FLAG_MEM_SIZE"
        )
    );
}

#[test]
fn ram_section_must_come_before_device_sections() {
    // A FULL "timer" section, then the ram START.
    let m = Machine::golden();
    let mut f = QemuFile::memory_writer("t");
    write_stream_header(&mut f);
    write_full_header(&mut f, 0x04, 0, "timer", 0, 1);
    f.put_buffer(&[0; 16]);
    write_section_footer(&mut f, 0);
    let at = f.position();
    start(&mut f, 4);
    let bytes = f.into_bytes().expect("bytes");
    let mut ram = MemRam::filled(&dst_layout(), 0);
    match load(&bytes, &m.registry, &mut ram) {
        Err(Error::RamSectionOrder {
            ty: 1,
            name: "SECTION_START",
            offset,
        }) => {
            assert_eq!(offset, at)
        }
        other => panic!("{other:?}"),
    }
}
