//! Golden bytes of a tiny RAM stream, written out byte by byte: no device,
//! one block "pc.ram" of three pages — data (0x11), zero, data (0x33). The
//! trailer CRC was computed independently (Python's `zlib.crc32` over the
//! bytes 0..8494 built with `struct.pack`).

mod ram_common;

use std::cell::Cell;

use cpr_savevm::*;
use ram_common::*;

#[rustfmt::skip]
const HEAD: &[u8] = &[
    0x51, 0x45, 0x56, 0x4d,             // magic "QEVM"
    0x00, 0x00, 0x00, 0x03,             // stream version 3
    // ---- START of "ram": header and block list                  @8
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
    0x00,                               // ignored: 0, its pages follow
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ---- PART: the pages                                         @62
    0x02,                               // QEMU_VM_SECTION_PART
    0x00, 0x00, 0x00, 0x00,             // section id 0
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x08,             // offset 0 | RAM_SAVE_FLAG_PAGE
    0x06, b'p', b'c', b'.',
    b'r', b'a', b'm',                   // idstr "pc.ram" (first record)
    // 4096 bytes of 0x11 follow (page 0)                           @82
];

#[rustfmt::skip]
const MIDDLE: &[u8] = &[
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x10, 0x22,             // offset 0x1000 | ZERO | CONTINUE
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01,             // run of 1 zero page (our extension)
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x20, 0x28,             // offset 0x2000 | PAGE | CONTINUE
    // 4096 bytes of 0x33 follow (page 2)                           @4202
];

#[rustfmt::skip]
const TAIL: &[u8] = &[
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ---- END                                                     @8311
    0x03,                               // QEMU_VM_SECTION_END
    0x00, 0x00, 0x00, 0x00,             // section id 0
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x10,             // RAM_SAVE_FLAG_EOS
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ----
    0x00,                               // QEMU_VM_EOF
    0x06,                               // QEMU_VM_VMDESCRIPTION
    0x00, 0x00, 0x00, 0x9f,             // JSON length 159
];

const VMDESC: &str = concat!(
    r#"{"page_size":4096,"#,
    r#""ram":{"name":"ram","instance_id":0,"version":4,"total":12288,"#,
    r#""blocks":[{"name":"pc.ram","used_length":12288,"ignored":false}]},"#,
    r#""devices":[]}"#,
);

#[rustfmt::skip]
const TRAILER: &[u8] = &[
    b'C', b'P', b'R', b'C',             // trailer tag
    0xb3, 0xe7, 0x67, 0x73,             // CRC-32 of bytes 0..8494
];

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
    assert_eq!(bytes.len(), 8502);
    assert_eq!((stats.ram_pages, stats.ram_zero_pages), (2, 1));
    assert_eq!(stats.ram_bytes, 8311 + 18 - 8);
    assert_eq!(stats.crc32, 0xb3e7_6773);
}

#[test]
fn ram_golden_trailer_crc_is_crc32_of_everything_before() {
    let g = golden();
    assert_eq!(
        crc32fast::hash(&g[..g.len() - 8]).to_be_bytes(),
        TRAILER[4..]
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

/// QEMU's own zero-page record (one fill byte instead of a run length) is
/// not this format: the fill byte and the next record's first bytes read
/// as a run of 0x20 pages, which the loader refuses before writing.
#[test]
fn ram_golden_with_qemus_fill_byte_is_refused() {
    let mut g = golden();
    let run = HEAD.len() + PAGE + 8;
    g.splice(run..run + 8, [0x00]);
    let mut dst = MemRam::filled(&blocks(), 0xee);
    let opens = Cell::new(0);
    let e = load_state(opener(&g, &opens), &Registry::new(), Some(&mut dst))
        .expect_err("QEMU zero record");
    assert_eq!(dst.touched(), 0, "{e}");
    assert_eq!(
        chain(&e),
        "error while loading state section id 0(ram): Illegal RAM offset 1000"
    );
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
