//! cpr-load of hostile or mismatched checkpoint files: every one is refused
//! with a clear error, nothing is applied (devices keep their pre-load
//! values, the run state stays `prelaunch`, no event, no machine step), and
//! afterwards the same VMM, with the same registry, loads the good file.

mod common;

use std::path::Path;

use common::*;
use cpr_runstate::{Event, RunState};

/// A new process for `ram_path` and `n_vcpus`, plus a good checkpoint of a
/// running guest with the same shape.
fn setup(dir: &tempfile::TempDir, n_vcpus: u32) -> (Vmm, Vec<u8>, Devices) {
    let (ram_path, state_path) = paths(dir);
    let saved = make_checkpoint(&ram_path, &state_path, n_vcpus, RunState::Running, 0x99);
    let good = std::fs::read(&state_path).unwrap();
    let vmm = Vmm::boot(shared_file_ram(&ram_path), n_vcpus);
    (vmm, good, saved)
}

/// Load `bytes` (written to `path`) and expect a refusal that changed
/// nothing. Returns the error chain.
fn refused(vmm: &mut Vmm, path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    let err = match vmm.cpr_load(path) {
        Ok(state) => panic!("hostile file of {} bytes loaded as {state}", bytes.len()),
        Err(e) => e,
    };
    assert_nothing_applied(vmm);
    chain(&err)
}

fn assert_nothing_applied(vmm: &mut Vmm) {
    assert_eq!(vmm.devices(), vmm.sentinel_devices(), "state was applied");
    assert_eq!(vmm.vm.state(), RunState::Prelaunch);
    assert!(vmm.events().is_empty());
    assert!(vmm.vm.machine().ops.is_empty());
    assert!(!vmm.vm.start_on_wakeup_requested());
    assert_eq!(lock(&vmm.global).state, None, "globalstate was applied");
}

/// The good file loads into the VMM that refused the bad ones.
fn loads_good(vmm: &mut Vmm, path: &Path, good: &[u8], saved: &Devices) {
    std::fs::write(path, good).unwrap();
    assert_eq!(vmm.cpr_load(path).unwrap(), RunState::Running);
    assert_eq!(&vmm.devices(), saved);
    assert_eq!(vmm.vm.state(), RunState::Running);
    assert_eq!(vmm.events(), [Event::Resume]);
    assert_eq!(vmm.read_ram(), ram_pattern(0x99));
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file")
}

#[test]
fn truncated_files_are_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 2);
    let bad = dir.path().join("bad.cpr");
    let n = good.len();
    let p = bad.display().to_string();

    // Every proper prefix, including the empty file.
    let mut msgs = Vec::with_capacity(n);
    for len in 0..n {
        msgs.push(refused(&mut vmm, &bad, &good[..len]));
    }
    assert_eq!(
        msgs[0],
        format!(
            "Error while loading VM state: {p} is not a vmstate file: failed to read stream \
             magic at offset 0: unexpected end of file 'cpr-load' at offset 0: wanted 4 bytes, \
             got 0"
        )
    );
    assert!(
        msgs[6].contains("failed to read stream version at offset 4"),
        "{}",
        msgs[6]
    );
    // Header only: the section loop finds no type byte.
    assert_eq!(
        msgs[8],
        "Error while loading VM state: failed to read section type at offset 8: unexpected \
         end of file 'cpr-load' at offset 8: wanted 1 bytes, got 0"
    );
    // QEMU's own device-state format ends at EOF: no vmdesc, no trailer.
    let eof = find(&good, b"\x00\x06") + 1;
    assert!(
        msgs[eof].contains(&format!("failed to read vmdesc at offset {eof}")),
        "{}",
        msgs[eof]
    );
    // Everything but the trailer.
    assert_eq!(
        msgs[n - 8],
        format!(
            "Error while loading VM state: missing checksum trailer at offset {}",
            n - 8
        )
    );
    assert!(
        msgs[n - 1].contains(&format!(
            "failed to read trailer checksum at offset {}",
            n - 4
        )),
        "{}",
        msgs[n - 1]
    );
    // One extra byte is refused too.
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        refused(&mut vmm, &bad, &long),
        format!(
            "Error while loading VM state: unexpected data after the checksum trailer at offset {n}"
        )
    );

    loads_good(&mut vmm, &bad, &good, &saved);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 1);
    let bad = dir.path().join("bad.cpr");

    for pos in 0..good.len() {
        let mut b = good.clone();
        b[pos] ^= 1 << (pos % 8);
        refused(&mut vmm, &bad, &b);
    }

    // A flip inside a device payload keeps the framing intact: only the
    // checksum trailer notices it.
    let at = find(&good, &0x1122_3344_5566_7788u64.to_be_bytes()) + 7;
    let mut b = good.clone();
    b[at] ^= 0x01; // count 0x...88 -> 0x...89
    let msg = refused(&mut vmm, &bad, &b);
    assert!(
        msg.starts_with("Error while loading VM state: checksum mismatch: trailer holds 0x"),
        "{msg}"
    );
    // A flip in the magic is a foreign file.
    let mut b = good.clone();
    b[0] ^= 0x80;
    let msg = refused(&mut vmm, &bad, &b);
    assert_eq!(
        msg,
        format!(
            "Error while loading VM state: {} is not a vmstate file: Not a migration stream",
            bad.display()
        )
    );

    loads_good(&mut vmm, &bad, &good, &saved);
}

#[test]
fn foreign_files_are_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 1);
    let bad = dir.path().join("bad.cpr");
    let not_vmstate = format!(
        "Error while loading VM state: {} is not a vmstate file",
        bad.display()
    );

    // Random bytes (deterministic xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    assert_ne!(random[..4], *b"QEVM");
    assert_eq!(
        refused(&mut vmm, &bad, &random),
        format!("{not_vmstate}: Not a migration stream")
    );

    // Empty.
    assert!(refused(&mut vmm, &bad, &[]).starts_with(&not_vmstate));

    // QEVM, version 2 (the rest of a good stream after it).
    let mut v2 = good.clone();
    v2[4..8].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(
        refused(&mut vmm, &bad, &v2),
        format!("{not_vmstate}: SaveVM v2 format is obsolete and don't work anymore")
    );
    let mut v4 = good.clone();
    v4[4..8].copy_from_slice(&4u32.to_be_bytes());
    assert_eq!(
        refused(&mut vmm, &bad, &v4),
        format!("{not_vmstate}: Unsupported migration stream version")
    );

    // A text file, and a missing file.
    assert_eq!(
        refused(&mut vmm, &bad, b"QEMU is great\n"),
        format!("{not_vmstate}: Not a migration stream")
    );
    let missing = dir.path().join("missing.cpr");
    let err = vmm.cpr_load(&missing).unwrap_err();
    assert_nothing_applied(&mut vmm);
    assert_eq!(
        chain(&err),
        format!(
            "Error while loading VM state: I/O error while opening the state file: Unable to \
             open {}: ENOENT: No such file or directory",
            missing.display()
        )
    );

    loads_good(&mut vmm, &bad, &good, &saved);
}

#[test]
fn file_with_more_vcpus_than_machine_is_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 1);
    let other = tempfile::TempDir::new_in("/dev/shm").unwrap();
    let (ram2, state2) = paths(&other);
    make_checkpoint(&ram2, &state2, 2, RunState::Running, 0x99);
    let two = std::fs::read(&state2).unwrap();

    let bad = dir.path().join("bad.cpr");
    let msg = refused(&mut vmm, &bad, &two);
    assert!(
        msg.starts_with(
            "Error while loading VM state: Unknown savevm section or instance 'cpu' 1. Make \
             sure that your current VM setup matches your saved VM setup"
        ),
        "{msg}"
    );
    loads_good(&mut vmm, &bad, &good, &saved);
}

#[test]
fn file_with_fewer_vcpus_than_machine_is_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 2);
    let other = tempfile::TempDir::new_in("/dev/shm").unwrap();
    let (ram1, state1) = paths(&other);
    make_checkpoint(&ram1, &state1, 1, RunState::Running, 0x99);
    let one = std::fs::read(&state1).unwrap();

    let bad = dir.path().join("bad.cpr");
    assert_eq!(
        refused(&mut vmm, &bad, &one),
        "Error while loading VM state: required section 'cpu' instance 1 is missing from the \
         stream"
    );
    loads_good(&mut vmm, &bad, &good, &saved);
}

#[test]
fn checkpoint_from_a_newer_device_version_is_refused() {
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 1);
    // Bump the counter section's version_id (4 bytes before its payload),
    // and re-seal the trailer so only the version check can catch it.
    let name = find(&good, b"\x07counter");
    let ver = name + 8 + 4; // idstr, then be32 instance id
    assert_eq!(good[ver..ver + 4], 2u32.to_be_bytes());
    let mut b = good.clone();
    b[ver..ver + 4].copy_from_slice(&3u32.to_be_bytes());
    let body = b.len() - 8;
    let crc = crc32(&b[..body]);
    b[body + 4..].copy_from_slice(&crc.to_be_bytes());
    let bad = dir.path().join("bad.cpr");
    assert_eq!(
        refused(&mut vmm, &bad, &b),
        "Error while loading VM state: savevm: unsupported version 3 for 'counter' v2"
    );
    loads_good(&mut vmm, &bad, &good, &saved);
}

/// CRC-32 (IEEE), as the savevm trailer uses; bitwise, no table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn checkpoint_without_globalstate_is_refused() {
    // V7 would load it and leave global_state.state at its zero value
    // (`debug`); here globalstate is required.
    let dir = shm_dir();
    let (mut vmm, good, saved) = setup(&dir, 1);
    let other = tempfile::TempDir::new_in("/dev/shm").unwrap();
    let (ram2, _) = paths(&other);
    let mut old = Vmm::boot(shared_file_ram(&ram2), 1);
    old.start_and_run(0x99, 5);
    let no_global = other.path().join("no-global.cpr");
    let mut file =
        cpr_migration_file::AtomicFile::create(&no_global, cpr_savevm::CHANNEL_CPR_SAVE).unwrap();
    let stats = cpr_savevm::save_device_state(file.file(), &mut old.registry).unwrap();
    file.commit().unwrap();
    assert_eq!(stats.sections, 2); // counter, cpu 0: globalstate not needed

    let bad = dir.path().join("bad.cpr");
    assert_eq!(
        refused(&mut vmm, &bad, &std::fs::read(&no_global).unwrap()),
        "Error while loading VM state: required section 'globalstate' instance 0 is missing \
         from the stream"
    );
    loads_good(&mut vmm, &bad, &good, &saved);
}
