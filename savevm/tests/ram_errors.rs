//! Refusals of the configuration and `ram` sections, with QEMU's messages
//! where QEMU has one: capability and block list mismatches between source
//! and destination, and malformed sections and records (crafted by hand).
//! None writes guest RAM.

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
    mismatch_into(src, MemRam::filled(dst, 0))
}

fn mismatch_into(src: &[RamBlockDesc], mut ram: MemRam) -> (Error, String) {
    let (bytes, _) = save(&mut Registry::new(), &MemRam::filled(src, 3));
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
fn capability_mismatch_is_refused_both_ways() {
    // The source announces x-ignore-shared ("shared" stays in place), this side has it off.
    let mut dst = src_layout();
    dst[1].ignored = false;
    let (e, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        "Capability x-ignore-shared is off, but received capability is on"
    );
    assert!(matches!(
        e,
        Error::CapabilityMismatch {
            capability: "x-ignore-shared",
            local: false,
            received: true,
        }
    ));
    // The other way round.
    let copied = [RamBlockDesc::copied("pc.ram", 64 * P)];
    let mut dst = MemRam::filled(&copied, 0);
    dst.ignore_shared = true;
    let (_, c) = mismatch_into(&copied, dst);
    assert_eq!(
        c,
        "Capability x-ignore-shared is on, but received capability is off"
    );
}

#[test]
fn blocks_kept_in_place_on_one_side_only_are_refused() {
    // Destination copies "shared" (x-ignore-shared on, but, say, its RAM is not a shared
    // file), the source left it in place: its stale memory must not be kept.
    let mut dst = MemRam::filled(&src_layout(), 0);
    dst.descs[1].ignored = false;
    let (e, c) = mismatch_into(&src_layout(), dst);
    assert_eq!(
        c,
        "ramblock \"shared\" is copied here, but the source left it in place"
    );
    assert!(matches!(
        e,
        Error::RamIgnoredMismatch {
            local_ignored: false,
            stream_ignored: true,
            ..
        }
    ));

    // Destination keeps pc.ram in place, the source sent its pages.
    let mut dst = src_layout();
    dst[0].ignored = true;
    let (_, c) = mismatch(&src_layout(), &dst);
    assert_eq!(
        c,
        "error while loading state section id 0(ram): block pc.ram should not be migrated !"
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

/// The stream header and the configuration (x-ignore-shared on).
fn header(f: &mut QemuFile) {
    write_stream_header(f);
    f.put_buffer(CONFIG);
    f.put_buffer(CONFIG_CAPS);
}

/// Where the configuration ends.
const AFTER_CONFIG: u64 = 8 + (CONFIG.len() + CONFIG_CAPS.len()) as u64;

fn start(f: &mut QemuFile, version: u32) {
    write_full_header(f, 0x01, 0, "ram", 0, version);
    f.put_u64((5 * P) | 0x04);
    for (id, len) in [("pc.ram", 4 * P), ("shared", P)] {
        f.put_counted_string(id);
        f.put_u64(len);
        f.put_u64(0); // address (x-ignore-shared)
    }
    f.put_u64(0x10);
    write_section_footer(f, 0);
}

/// Bytes of [`start`].
const START_LEN: u64 = 17 + 8 + 2 * 23 + 8 + 5;

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
    header(&mut f);
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
                f.put_u8(1);
            }),
            "Found a zero page with value 1",
        ),
        (
            Box::new(|f| {
                f.put_u64((4 * P) | 0x02);
                f.put_counted_string("pc.ram");
                f.put_u8(0);
            }),
            "Illegal RAM offset 4000",
        ),
        (
            // A zero run (this crate's old format): the count's first byte reads as the
            // fill byte, the rest of it and the EOS as the next record's word.
            Box::new(|f| {
                f.put_u64(0x02);
                f.put_counted_string("pc.ram");
                f.put_u64(4);
            }),
            "Unknown combination of migration flags: 0x400",
        ),
        (
            Box::new(|f| {
                page(f, P | 0x08, Some("pc.ram"));
                page(f, 0x28, None);
            }),
            "ramblock \"pc.ram\": page 0x0 out of order, expected 0x2000 or later",
        ),
        (
            Box::new(|f| {
                page(f, 0x08, Some("pc.ram"));
                page(f, 0x28, None);
            }),
            "ramblock \"pc.ram\": page 0x0 out of order, expected 0x1000 or later",
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
    // And well-formed variants of the same stream pass these checks (they then lack a
    // vmdesc): every page, or some pages with gaps (which load as zeros).
    let (e, _) = refuse(&crafted(all_pages));
    assert!(matches!(e, Error::Read { what: "vmdesc", .. }), "{e:?}");
    let (e, _) = refuse(&crafted(|f| {
        page(f, P | 0x08, Some("pc.ram"));
        f.put_u64((2 * P) | 0x22);
        f.put_u8(0);
    }));
    assert!(matches!(e, Error::Read { what: "vmdesc", .. }), "{e:?}");
}

#[test]
fn section_errors() {
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
            offset: AFTER_CONFIG
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
        format!(
            "section type 0 (EOF) at offset {} is out of place for the ram section",
            AFTER_CONFIG + START_LEN
        )
    );
    // A second START.
    let (e, _) = refuse(&build(&|f| {
        start(f, 4);
        start(f, 4);
    }));
    assert!(
        matches!(
            e,
            Error::RamSectionOrder { ty: 1, offset, .. } if offset == AFTER_CONFIG + START_LEN
        ),
        "{e:?}"
    );
    // A block address other than the saver's 0; no MEM_SIZE record.
    let (_, c) = refuse(&build(&|f| {
        write_full_header(f, 0x01, 0, "ram", 0, 4);
        f.put_u64(P | 0x04);
        f.put_counted_string("pc.ram");
        f.put_u64(4 * P);
        f.put_u64(0x1000);
    }));
    assert_eq!(
        c,
        format!("{OUTER}Mismatched GPAs for block pc.ram 4096!= 0")
    );
    let (_, c) = refuse(&build(&|f| {
        write_full_header(f, 0x01, 0, "ram", 0, 4);
        f.put_u64(0x10);
    }));
    assert_eq!(
        c,
        format!(
            "{OUTER}bad ram block list at offset {}: it starts with flags 0x10, not RAM_SAVE_FLAG_MEM_SIZE",
            AFTER_CONFIG + 17
        )
    );
    // No configuration section: the ram section right after the header.
    let mut f = QemuFile::memory_writer("t");
    write_stream_header(&mut f);
    start(&mut f, 4);
    let (e, _) = refuse(&f.into_bytes().expect("bytes"));
    assert!(
        matches!(
            e,
            Error::MissingConfiguration {
                found: 1,
                offset: 8
            }
        ),
        "{e:?}"
    );
}

#[test]
fn ram_section_must_come_before_device_sections() {
    // A FULL "timer" section, then the ram START.
    let m = Machine::golden();
    let mut f = QemuFile::memory_writer("t");
    header(&mut f);
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
