//! A corrupt RAM stream never changes guest RAM: truncations and bit flips
//! anywhere — block list, page data, zero runs, device sections, vmdesc,
//! trailer — are refused by the first pass, so the destination's
//! `write`/`zero` are never called.

mod common;
mod ram_common;

use common::*;
use cpr_savevm::*;
use ram_common::*;

const P: u64 = PAGE as u64;

fn layout() -> Vec<RamBlockDesc> {
    vec![
        RamBlockDesc::copied("pc.ram", 16 * P),
        RamBlockDesc::copied("vram", 4 * P),
        RamBlockDesc::ignored("shared", 2 * P),
    ]
}

fn source() -> MemRam {
    let mut ram = MemRam::filled(&layout(), 0);
    for p in [0usize, 3, 15] {
        for (i, b) in ram.data[0][p * PAGE..(p + 1) * PAGE].iter_mut().enumerate() {
            *b = low((i * 13 + p) as u64) | 0x80;
        }
    }
    for (i, b) in ram.data[1].iter_mut().enumerate() {
        *b = low(i as u64 % 241) | 1;
    }
    ram
}

fn stream() -> Vec<u8> {
    save(&mut Machine::golden().registry, &source()).0
}

/// Load `bytes` into garbage RAM and a fresh machine: must fail without
/// writing RAM or restoring a device. Returns the error.
fn refused(bytes: &[u8], what: &str) -> Error {
    let m = Machine::new(Timer::default(), Dev::default());
    let mut dst = MemRam::filled(&layout(), 0xee);
    let e = match load(bytes, &m.registry, &mut dst) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e,
    };
    let _ = chain(&e);
    assert_eq!(dst.touched(), 0, "{what}: RAM written ({e})");
    assert!(dst.data.iter().flatten().all(|&b| b == 0xee), "{what}");
    assert_eq!(m.restores(), 0, "{what}");
    e
}

#[test]
fn the_stream_itself_loads() {
    let m = Machine::new(Timer::default(), Dev::default());
    let mut dst = MemRam::filled(&layout(), 0xee);
    load(&stream(), &m.registry, &mut dst).expect("load");
    assert_eq!(dst.data[..2], source().data[..2]);
}

#[test]
fn truncation_at_sampled_offsets_is_refused() {
    let bytes = stream();
    let n = bytes.len();
    assert!(n > 7 * PAGE, "{n}");
    let offsets = (0..300).chain((300..n - 700).step_by(37)).chain(n - 700..n);
    let mut tried = 0;
    for len in offsets {
        refused(&bytes[..len], &format!("truncated to {len}"));
        tried += 1;
    }
    assert!(tried > 1500, "{tried}");
}

#[test]
fn bit_flips_in_page_data_fail_the_checksum() {
    let bytes = stream();
    let src = source();
    // Each data page of the source, found in the stream by its content.
    let pages: Vec<&[u8]> = [0, 3, 15]
        .iter()
        .map(|&p| &src.data[0][p * PAGE..(p + 1) * PAGE])
        .chain(src.data[1].chunks(PAGE))
        .collect();
    assert_eq!(pages.len(), 7);
    for (k, page) in pages.iter().enumerate() {
        let at = bytes
            .windows(PAGE)
            .position(|w| w == *page)
            .unwrap_or_else(|| panic!("page {k} not in the stream"));
        for (i, bit) in [(0, 0), (1, 7), (PAGE / 2, 3), (PAGE - 1, 5)] {
            let mut b = bytes.clone();
            b[at + i] ^= 1 << bit;
            let what = format!("page {k} byte {i} bit {bit}");
            match refused(&b, &what) {
                Error::ChecksumMismatch { stored, computed } => assert_ne!(stored, computed),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_bit_flip_in_the_ram_framing_is_refused() {
    let bytes = stream();
    let (_, _, end) = walk(&bytes);
    // START (block list) and the first PART header and record header.
    for i in 8..140 {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            refused(&b, &format!("byte {i} bit {bit}"));
        }
    }
    // END, the device sections, EOF, vmdesc and trailer.
    for i in end - 18..bytes.len() {
        for bit in [0, 6] {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            refused(&b, &format!("byte {i} bit {bit}"));
        }
    }
}

#[test]
fn sampled_bit_flips_anywhere_are_refused() {
    let bytes = stream();
    for i in (0..bytes.len()).step_by(17) {
        let mut b = bytes.clone();
        b[i] ^= 1 << (i % 8);
        refused(&b, &format!("byte {i} bit {}", i % 8));
    }
}
