//! What QEMU's `scripts/analyze-migration.py` relies on to read a stream, restated in Rust
//! so that it is checked on every test run (the e2e scenario runs the script itself):
//!
//! * it finds the vmdesc JSON as the first `{` after the **last NUL byte** of the file,
//!   checks that the byte five before it is `0x06`, and reads the be32 length there;
//! * it reads an array entry of the vmdesc as `array_len` elements (one when absent), so
//!   an entry must not describe an empty array.

mod common;

use std::borrow::Cow;

use common::*;
use cpr_savevm::vmdesc::{DeviceDesc, FieldDesc, VmDesc, VmsdDesc};
use cpr_savevm::*;
use proptest::prelude::*;

/// The script's `read_migration_debug_json`: the JSON it would decode, or why it would
/// stop.
fn script_finds_json(file: &[u8]) -> std::result::Result<&[u8], String> {
    let nul = file.iter().rposition(|&b| b == 0).ok_or("no NUL byte")?;
    let brace = nul
        + file[nul..]
            .iter()
            .position(|&b| b == b'{')
            .ok_or("no '{' after the last NUL")?;
    if brace < 5 || file[brace - 5] != 0x06 {
        return Err(format!(
            "No Debug Migration device found (JSON guessed at {brace})"
        ));
    }
    let len = u32::from_be_bytes(file[brace - 4..brace].try_into().map_err(|_| "len")?);
    Ok(&file[brace..brace + len as usize])
}

/// The tail of a stream as the saver writes it: EOF, `0x06`, be32 length, JSON, trailer.
fn tail(json: &[u8], crc: u32) -> Vec<u8> {
    let mut b = vec![0x00, 0x06];
    b.extend_from_slice(&u32::try_from(json.len()).expect("short").to_be_bytes());
    b.extend_from_slice(json);
    b.extend_from_slice(b"CPRC");
    b.extend_from_slice(format!("{crc:08x}").as_bytes());
    b
}

/// A description whose JSON is about `n` bytes long (one device with a long name).
fn desc_of_len(n: usize) -> VmDesc {
    let base = VmDesc {
        configuration: None,
        page_size: 4096,
        ram: None,
        devices: vec![DeviceDesc {
            name: String::new(),
            instance_id: 0,
            vmsd: VmsdDesc {
                vmsd_name: "d",
                version: 1,
                fields: vec![FieldDesc {
                    name: Cow::Borrowed("f"),
                    array_len: None,
                    ty: "uint8",
                    size: 1,
                }],
                subsections: Vec::new(),
            },
        }],
    };
    let fixed = serde_json::to_vec(&base).expect("json").len();
    let mut d = base;
    d.devices[0].name = "x".repeat(n.saturating_sub(fixed));
    d
}

/// Every JSON length whose be32 holds a `{` byte (0x7b) low in the length: the script
/// would take that byte for the JSON's start. The saver pads those with spaces, and the
/// JSON still parses.
#[test]
fn the_json_length_never_holds_a_brace() {
    let mut padded = 0;
    for n in (0x7a00..0x7c80).chain((0x100..0x1000).step_by(7)) {
        let desc = desc_of_len(n);
        let json = desc.to_json();
        let raw = serde_json::to_vec(&desc).expect("json");
        assert!(json.starts_with(&raw) && json[raw.len()..].iter().all(|&b| b == b' '));
        padded += usize::from(json.len() != raw.len());
        let len = u32::try_from(json.len()).expect("short").to_be_bytes();
        assert!(!len.contains(&b'{'), "length {:#x}", json.len());
        let file = tail(&json, 0x0000_7b00);
        assert_eq!(script_finds_json(&file), Ok(&json[..]), "length {n:#x}");
        let back: serde_json::Value = serde_json::from_slice(&json).expect("still JSON");
        assert_eq!(back["page_size"], 4096);
    }
    assert!(padded > 256, "{padded} lengths padded");
    // Unpadded, such a length hides the JSON from the script.
    let raw = serde_json::to_vec(&desc_of_len(0x7b10)).expect("json");
    let e = script_finds_json(&tail(&raw, 1)).expect_err("the length's '{' found first");
    assert!(e.starts_with("No Debug Migration device found"), "{e}");
}

/// A binary CRC in the trailer held a NUL byte once in about 65 saves; the hex digits
/// never do. Saved streams whose CRC has a zero byte are searched for, and their trailer
/// (as the saver wrote it) checked.
#[test]
fn the_trailer_holds_no_nul() {
    let mut found = 0;
    for a in 0..5000u32 {
        let bytes = Machine::new(
            Timer { a, b: 7, c: 9 },
            Dev {
                x: 3,
                flag: true,
                extra: DevExtra { v: 1 },
            },
        )
        .save();
        let (body, trailer) = bytes.split_at(bytes.len() - consts::TRAILER_LEN);
        let crc = crc32fast::hash(body);
        if !crc.to_be_bytes().contains(&0) {
            continue;
        }
        found += 1;
        assert_eq!(&trailer[..4], b"CPRC");
        assert_eq!(trailer[4..], *format!("{crc:08x}").as_bytes());
        assert!(!trailer.contains(&0), "{trailer:?}");
        assert!(script_finds_json(&bytes).is_ok(), "crc {crc:#010x}");
        if found == 3 {
            break;
        }
    }
    assert_eq!(found, 3, "saved streams whose CRC holds a zero byte");
    // The old binary trailer with a NUL in its CRC.
    let json = br#"{"page_size":4096,"devices":[]}"#;
    let mut old = tail(json, 0);
    old.truncate(old.len() - 8);
    old.extend_from_slice(&0x1200_3400u32.to_be_bytes());
    let e = script_finds_json(&old).expect_err("the CRC's NUL found last");
    assert_eq!(e, "no '{' after the last NUL");
}

proptest! {
    /// Whole streams as saved, whatever their state (and so their checksum).
    #[test]
    fn the_script_finds_the_vmdesc_of_every_saved_stream(
        a in any::<u32>(), b in any::<u32>(), c in any::<u64>(), x in any::<u16>(), v in any::<u32>(),
    ) {
        let bytes = Machine::new(Timer { a, b, c }, Dev { x, flag: true, extra: DevExtra { v } }).save();
        let json = script_finds_json(&bytes).map_err(TestCaseError::fail)?;
        let back: serde_json::Value = serde_json::from_slice(json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back["devices"].as_array().map(Vec::len), Some(2));
        // The JSON is followed by the trailer alone.
        let end = bytes.len() - consts::TRAILER_LEN;
        prop_assert_eq!(&bytes[end - json.len()..end], json);
    }
}

/// `vmstate_save_state` records an array of one element as a plain field and an empty
/// one not at all; the script reads `array_len` elements of an entry, one without it.
#[test]
fn arrays_are_described_as_qemu_describes_them() {
    struct Arrays(Vec<u8>);
    impl VmState for Arrays {
        const NAME: &'static str = "arrays";
        const VERSION_ID: u32 = 1;
        const MINIMUM_VERSION_ID: u32 = 1;
        fn needed(&self) -> bool {
            true
        }
        fn pre_save(&mut self) -> Result<()> {
            Ok(())
        }
        fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
            w.array("fifo", &self.0)?;
            w.u8("after", 0x7e);
            Ok(())
        }
        fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
            let fifo = r.array::<u8>("fifo", 16)?;
            r.u8("after")?;
            Ok(Arrays(fifo))
        }
        fn post_load(&mut self, _v: u32) -> Result<()> {
            Ok(())
        }
    }
    let described = |fifo: &[u8]| {
        let (bytes, desc) = encode_vmstate(&mut Arrays(fifo.to_vec()))
            .expect("encode")
            .expect("needed");
        let json = serde_json::to_string(&desc.fields).expect("json");
        // What the script reads for these fields: their sizes times their counts.
        let read: u64 = desc
            .fields
            .iter()
            .map(|f| f.size * u64::from(f.array_len.unwrap_or(1)))
            .sum();
        assert_eq!(read, bytes.len() as u64, "{json}");
        let back: Arrays = decode_vmstate(bytes, 1).expect("decode");
        assert_eq!(back.0, fifo);
        json
    };
    let count = r#"{"name":"fifo.count","type":"uint32","size":4}"#;
    let after = r#"{"name":"after","type":"uint8","size":1}"#;
    assert_eq!(described(&[]), format!("[{count},{after}]"));
    assert_eq!(
        described(&[9]),
        format!(r#"[{count},{{"name":"fifo","type":"uint8","size":1}},{after}]"#)
    );
    assert_eq!(
        described(&[9, 8, 7]),
        format!(r#"[{count},{{"name":"fifo","array_len":3,"type":"uint8","size":1}},{after}]"#)
    );
}
