//! A corrupt stream never half-restores a machine: every truncation and
//! every single-bit flip of a valid stream is refused before any handler's
//! state changes.

mod common;

use common::*;
use cpr_savevm::Error;

fn fresh() -> Machine {
    Machine::new(Timer::default(), Dev::default())
}

fn assert_refused_untouched(bytes: &[u8], what: &str) {
    let mut m = fresh();
    let before = m.states();
    let err = m.load(bytes).map(|_| ()).expect_err(what);
    // Display and source chain must be printable.
    let _ = chain(&err);
    assert_eq!(m.restores(), 0, "{what}: apply ran ({err})");
    assert_eq!(m.states(), before, "{what}: state changed");
}

#[test]
fn truncation_at_every_offset_is_refused() {
    let bytes = Machine::golden().save();
    for len in 0..bytes.len() {
        assert_refused_untouched(&bytes[..len], &format!("truncated to {len}"));
    }
    // And the whole stream loads.
    let mut m = fresh();
    m.load(&bytes).expect("full stream");
    assert_eq!(m.restores(), 2);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let bytes = Machine::golden().save();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert_refused_untouched(&b, &format!("bit {bit} of byte {i} flipped"));
        }
    }
}

#[test]
fn flip_in_payload_is_caught_by_the_checksum() {
    let bytes = Machine::golden().save();
    let mut b = bytes.clone();
    b[27] ^= 0x10; // inside timer.a: framing is still valid
    match fresh().parse(&b) {
        Err(Error::ChecksumMismatch { stored, computed }) => assert_ne!(stored, computed),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
}

#[test]
fn missing_trailer_is_refused() {
    let bytes = Machine::golden().save();
    let cut = &bytes[..bytes.len() - cpr_savevm::consts::TRAILER_LEN];
    match fresh().parse(cut) {
        Err(e @ Error::MissingTrailer { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("missing checksum trailer at offset {}", cut.len())
            );
        }
        other => panic!("expected MissingTrailer, got {other:?}"),
    }
}

#[test]
fn bytes_after_the_trailer_are_refused() {
    let mut bytes = Machine::golden().save();
    let end = bytes.len() as u64;
    bytes.push(0);
    match fresh().parse(&bytes) {
        Err(Error::TrailingData { offset }) => assert_eq!(offset, end),
        other => panic!("expected TrailingData, got {other:?}"),
    }
}

#[test]
fn stream_without_vmdesc_is_refused() {
    // What V7's cpr-save writes: EOF and nothing after.
    let bytes = Machine::golden().save();
    let json = bytes
        .windows(2)
        .position(|w| w == b"{\"")
        .expect("vmdesc JSON");
    let eof = json - 6; // 0x00, then 0x06 + be32 length
    assert_eq!(bytes[eof..eof + 2], [0x00, 0x06]);
    let mut b = bytes[..=eof].to_vec();
    b.push(0x42);
    match fresh().parse(&b) {
        Err(e @ Error::MissingVmdesc { found: 0x42, .. }) => {
            assert_eq!(e.to_string(), "Expected vmdescription section, but got 66");
        }
        other => panic!("expected MissingVmdesc, got {other:?}"),
    }
}

/// The checksum is exactly the saver's 8 lowercase hex digits: the same value in capitals,
/// or digits that are not hex, are not a trailer.
#[test]
fn trailer_checksum_is_lowercase_hex_only() {
    let bytes = Machine::golden().save();
    let at = bytes.len() - cpr_savevm::consts::TRAILER_LEN;
    assert_eq!(&bytes[at..at + 4], b"CPRC");
    let upper: Vec<u8> = bytes[at + 4..].to_ascii_uppercase();
    assert_ne!(upper, bytes[at + 4..], "the golden CRC has a letter");
    for digits in [upper, b"+1e41ee2".to_vec(), b"1e41ee2 ".to_vec()] {
        let mut b = bytes.clone();
        b[at + 4..].copy_from_slice(&digits);
        match fresh().parse(&b) {
            Err(Error::MissingTrailer { offset, found }) => {
                assert_eq!(offset, at as u64);
                assert_eq!(found[4..], digits);
            }
            other => panic!("{digits:?}: expected MissingTrailer, got {other:?}"),
        }
    }
}
