//! Golden bytes, in the style of QEMU's tests/unit/test-vmstate.c: a
//! two-section stream written out byte by byte. The trailer CRC below was
//! computed independently (Python's `zlib.crc32` over bytes 0..570).

mod common;

use common::*;
use cpr_savevm::Error;

/// Everything before the vmdesc JSON.
#[rustfmt::skip]
const STREAM: &[u8] = &[
    0x51, 0x45, 0x56, 0x4d,             // magic "QEVM"
    0x00, 0x00, 0x00, 0x03,             // stream version 3
    // ---- section "timer"
    0x04,                               // QEMU_VM_SECTION_FULL
    0x00, 0x00, 0x00, 0x00,             // section id 0
    0x05, b't', b'i', b'm', b'e', b'r', // idstr "timer"
    0x00, 0x00, 0x00, 0x00,             // instance id 0
    0x00, 0x00, 0x00, 0x01,             // version id 1
    0x00, 0x00, 0x00, 0x01,             // a: u32 1
    0x00, 0x00, 0x00, 0x02,             // b: u32 2
    0x01, 0x02, 0x03, 0x04,
    0x05, 0x06, 0x07, 0x08,             // c: u64 0x0102030405060708
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x00,             // footer section id 0
    // ---- section "dev"
    0x04,                               // QEMU_VM_SECTION_FULL
    0x00, 0x00, 0x00, 0x01,             // section id 1
    0x03, b'd', b'e', b'v',             // idstr "dev"
    0x00, 0x00, 0x00, 0x00,             // instance id 0 (registered "any")
    0x00, 0x00, 0x00, 0x02,             // version id 2
    0x12, 0x34,                         // x: u16 0x1234
    0x01,                               // flag: bool true (added in v2)
    0x05,                               // QEMU_VM_SUBSECTION
    0x09, b'd', b'e', b'v', b'/',
    b'e', b'x', b't', b'r', b'a',       // name "dev/extra"
    0x00, 0x00, 0x00, 0x01,             // subsection version 1
    0xde, 0xad, 0xbe, 0xef,             // v: u32 0xdeadbeef
    0x7e,                               // QEMU_VM_SECTION_FOOTER
    0x00, 0x00, 0x00, 0x01,             // footer section id 1
    // ----
    0x00,                               // QEMU_VM_EOF
    0x06,                               // QEMU_VM_VMDESCRIPTION
    0x00, 0x00, 0x01, 0xd8,             // JSON length 472
];

const VMDESC: &str = concat!(
    r#"{"page_size":4096,"devices":["#,
    r#"{"name":"timer","instance_id":0,"vmsd_name":"timer","version":1,"fields":["#,
    r#"{"name":"a","type":"uint32","size":4},"#,
    r#"{"name":"b","type":"uint32","size":4},"#,
    r#"{"name":"c","type":"uint64","size":8}]},"#,
    r#"{"name":"dev","instance_id":0,"vmsd_name":"dev","version":2,"fields":["#,
    r#"{"name":"x","type":"uint16","size":2},"#,
    r#"{"name":"flag","type":"bool","size":1}],"#,
    r#""subsections":[{"vmsd_name":"dev/extra","version":1,"fields":["#,
    r#"{"name":"v","type":"uint32","size":4}]}]}]}"#,
);

/// Tag, then the CRC-32 of bytes 0..570 (0x1e41ee28) in hex: no NUL byte,
/// which `analyze-migration.py` would take for the byte before the JSON.
const TRAILER: &[u8] = b"CPRC1e41ee28";

fn golden() -> Vec<u8> {
    [STREAM, VMDESC.as_bytes(), TRAILER].concat()
}

#[test]
fn golden_save_produces_exact_bytes() {
    let bytes = Machine::golden().save();
    // The framed part and the JSON separately, for readable failures.
    assert_eq!(&bytes[..STREAM.len()], STREAM);
    assert_eq!(
        std::str::from_utf8(&bytes[STREAM.len()..bytes.len() - TRAILER.len()]),
        Ok(VMDESC)
    );
    assert_eq!(bytes, golden());
    assert_eq!(bytes.len(), 582);
}

#[test]
fn golden_trailer_crc_is_crc32_of_everything_before() {
    let g = golden();
    let covered = &g[..g.len() - TRAILER.len()];
    assert_eq!(
        format!("{:08x}", crc32fast::hash(covered)).as_bytes(),
        &TRAILER[4..]
    );
}

#[test]
fn golden_loads() {
    let mut m = Machine::new(Timer::default(), Dev::default());
    let stats = m.load(&golden()).expect("load golden");
    let ids: Vec<_> = stats
        .sections
        .iter()
        .map(|s| (s.idstr.as_str(), s.instance_id, s.section_id, s.version_id))
        .collect();
    assert_eq!(ids, [("timer", 0, 0, 1), ("dev", 0, 1, 2)]);
    assert_eq!(m.states(), (Machine::golden().states()));
    assert_eq!(m.restores(), 2);
}

#[test]
fn golden_vmdesc_is_exposed_after_parse() {
    let m = Machine::new(Timer::default(), Dev::default());
    let loaded = m.parse(&golden()).expect("parse golden");
    assert_eq!(
        loaded.vmdesc()["devices"][1]["subsections"][0]["vmsd_name"],
        "dev/extra"
    );
    assert_eq!(
        loaded.staged::<Timer>("timer", 0).map(|t| t.c),
        Some(0x0102_0304_0506_0708)
    );
    assert!(loaded.staged::<Dev>("timer", 0).is_none());
    // Parsing alone restored nothing.
    assert_eq!(m.restores(), 0);
}

/// test-vmstate.c style truncations: empty, n-2, half.
#[test]
fn golden_truncated_fails() {
    let g = golden();
    for len in [0, g.len() - 2, g.len() / 2] {
        let m = Machine::new(Timer::default(), Dev::default());
        let err = m.parse(&g[..len]).expect_err("truncated stream");
        if len == 0 {
            assert!(matches!(err, Error::NotVmstateFile { .. }), "{err:?}");
        }
        assert_eq!(m.restores(), 0);
    }
}
