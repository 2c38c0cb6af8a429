//! Golden bytes of a tiny RAM stream, written out byte by byte: no device,
//! one block "pc.ram" of three pages — data (0x11), zero, data (0x33) —
//! framed as QEMU 10 frames a migration stream. The trailer CRC was
//! computed independently (Python's `zlib.crc32` over the bytes 0..8647
//! built with `struct.pack`).

mod ram_common;

use std::cell::Cell;

use cpr_savevm::*;
use ram_common::*;

#[rustfmt::skip]
const HEAD: &[u8] = &[
    0x51, 0x45, 0x56, 0x4d,             // magic "QEVM"
    0x00, 0x00, 0x00, 0x03,             // stream version 3
    // ---- configuration                                          @8
    0x07,                               // QEMU_VM_CONFIGURATION
    0x00, 0x00, 0x00, 0x06,             // len 6
    b'c', b'p', b'r', b'-', b'v', b'm', // machine type "cpr-vm"
                                        // (x-ignore-shared off: no subsection)
    // ---- START of "ram": header and block list                  @19
    0x01,                               // QEMU_VM_SECTION_START
    0x00, 0x00, 0x00, 0x00,             // section id 0 (empty registry)
    0x03, b'r', b'a', b'm',             // idstr "ram"
    0x00, 0x00, 0x00, 0x00,             // instance id 0
    0x00, 0x00, 0x00, 0x04,             // version id 4
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x30, 0x04,             // total 0x3000 | RAM_SAVE_FLAG_MEM_SIZE
    0x06, b'p', b'c', b'.',
    b'r', b'a', b'm',                   // block idstr "pc.ram"
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x30, 0x00,             // used_length 0x3000
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ---- PART: the pages                                         @72
    0x02,                               // QEMU_VM_SECTION_PART
    0x00, 0x00, 0x00, 0x00,             // section id 0
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x08,             // offset 0 | RAM_SAVE_FLAG_PAGE
    0x06, b'p', b'c', b'.',
    b'r', b'a', b'm',                   // idstr "pc.ram" (first record)
    // 4096 bytes of 0x11 follow (page 0)                           @92
];

#[rustfmt::skip]
const MIDDLE: &[u8] = &[
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x10, 0x22,             // offset 0x1000 | ZERO | CONTINUE
    0x00,                               // fill byte 0
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x20, 0x28,             // offset 0x2000 | PAGE | CONTINUE
    // 4096 bytes of 0x33 follow (page 2)                           @4205
];

#[rustfmt::skip]
const TAIL: &[u8] = &[
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ---- END                                                     @8314
    0x03,                               // QEMU_VM_SECTION_END
    0x00, 0x00, 0x00, 0x00,             // section id 0
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ----
    0x00,                               // QEMU_VM_EOF
    0x06,                               // QEMU_VM_VMDESCRIPTION
    0x00, 0x00, 0x01, 0x35,             // JSON length 309
];

const VMDESC: &str = concat!(
    r#"{"configuration":{"vmsd_name":"configuration","version":1,"fields":["#,
    r#"{"name":"len","type":"uint32","size":4},"#,
    r#"{"name":"name","type":"buffer","size":6}]},"#,
    r#""page_size":4096,"#,
    r#""ram":{"name":"ram","instance_id":0,"version":4,"total":12288,"#,
    r#""blocks":[{"name":"pc.ram","used_length":12288,"ignored":false}]},"#,
    r#""devices":[]}"#,
);

/// Tag, then the CRC-32 of bytes 0..8647 in hex.
const TRAILER: &[u8] = b"CPRCa75c515b";

fn golden() -> Vec<u8> {
    [
        HEAD,
        &[0x11; PAGE],
        MIDDLE,
        &[0x33; PAGE],
        TAIL,
        VMDESC.as_bytes(),
        TRAILER,
    ]
    .concat()
}

fn blocks() -> [RamBlockDesc; 1] {
    [RamBlockDesc::copied("pc.ram", 3 * PAGE as u64)]
}

fn source() -> MemRam {
    let mut ram = MemRam::filled(&blocks(), 0);
    ram.data[0][..PAGE].fill(0x11);
    ram.data[0][2 * PAGE..].fill(0x33);
    ram
}

#[test]
fn ram_golden_save_produces_exact_bytes() {
    let (bytes, stats) = save(&mut Registry::new(), &source());
    let g = golden();
    assert_eq!(bytes[..HEAD.len()], *HEAD);
    let json_at = g.len() - TRAILER.len() - VMDESC.len();
    assert_eq!(
        std::str::from_utf8(&bytes[json_at..bytes.len() - TRAILER.len()]),
        Ok(VMDESC)
    );
    assert_eq!(bytes, g);
    assert_eq!(bytes.len(), 8659);
    assert_eq!((stats.ram_pages, stats.ram_zero_pages), (2, 1));
    assert_eq!(stats.ram_bytes, 8314 + 18 - 19);
    assert_eq!(stats.crc32, 0xa75c_515b);
}

#[test]
fn ram_golden_trailer_crc_is_crc32_of_everything_before() {
    let g = golden();
    let covered = &g[..g.len() - TRAILER.len()];
    assert_eq!(
        format!("{:08x}", crc32fast::hash(covered)).as_bytes(),
        &TRAILER[4..]
    );
}

#[test]
fn ram_golden_loads() {
    let mut dst = MemRam::filled(&blocks(), 0xee);
    let loaded = load(&golden(), &Registry::new(), &mut dst).expect("load");
    assert_eq!(dst.data, source().data);
    assert_eq!((dst.writes, dst.zeros), (2, 1));
    let ram = loaded.ram().expect("ram");
    assert_eq!((ram.section_id, ram.pages, ram.zero_pages), (0, 2, 1));
}

/// A stream as this crate wrote it before it followed QEMU 10 (no configuration
/// section) is refused before anything is written.
#[test]
fn ram_golden_without_configuration_is_refused() {
    let mut g = golden();
    g.drain(8..19);
    let mut dst = MemRam::filled(&blocks(), 0xee);
    let opens = Cell::new(0);
    let e = load_state(opener(&g, &opens), &Registry::new(), Some(&mut dst))
        .expect_err("no configuration");
    assert_eq!(dst.touched(), 0, "{e}");
    assert_eq!(chain(&e), "Configuration section missing");
    assert!(matches!(
        e,
        Error::MissingConfiguration {
            found: 0x01,
            offset: 8
        }
    ));
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
