//! `cpr-load` of hostile or mismatched checkpoints through the real `cpr::vmm::Vmm` (KVM
//! makes the good checkpoint and loads it at the end): every bad file is refused with a
//! clear error and changes nothing (the VMM stays in `prelaunch`, sends no event, and does
//! not keep the RAM), and afterwards the same VMM loads the good file and the guest runs
//! on.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use cpr::vmm::{Command, Response};
use cpr_runstate::{GlobalState, RunState};

/// A good checkpoint of a running guest with `smp` vCPUs, and a new VMM of the same shape
/// on the same RAM file, in `prelaunch`.
struct Setup {
    dir: tempfile::TempDir,
    ram: PathBuf,
    bad: PathBuf,
    good: Vec<u8>,
    progress: u64,
    vm: Vm,
}

fn setup(smp: u32, stop_first: bool) -> Setup {
    let dir = shm_dir();
    let ram = dir.path().join("guest.ram");
    let state = dir.path().join("vm.state");
    let mut old = Vm::new(args(Some(&ram), smp));
    old.boot();
    if stop_first {
        old.ok(Command::Stop);
    }
    assert!(matches!(old.cmd(save(&state)), Ok(Response::Saved { .. })));
    let progress = old.progress();
    drop(old);
    let good = std::fs::read(&state).expect("checkpoint");
    let vm = Vm::new(args(Some(&ram), smp));
    Setup {
        bad: dir.path().join("bad.state"),
        dir,
        ram,
        good,
        progress,
        vm,
    }
}

impl Setup {
    /// Loads `bytes` and expects a refusal that changed nothing; returns its words.
    fn refused(&mut self, bytes: &[u8]) -> String {
        std::fs::write(&self.bad, bytes).expect("write");
        let err = self.vm.refused(load(&self.bad));
        self.nothing_changed();
        err
    }

    fn nothing_changed(&mut self) {
        assert_eq!(self.vm.state(), RunState::Prelaunch);
        assert_eq!(self.vm.events(), []);
        assert!(!ram_held(&self.ram), "a refused load keeps no RAM");
    }

    /// The good file loads into the VMM that refused the bad ones; the guest runs on.
    fn loads_good(mut self) {
        std::fs::write(&self.bad, &self.good).expect("write");
        self.vm.ok(load(&self.bad));
        assert_eq!(self.vm.state(), RunState::Running);
        assert_eq!(self.vm.events(), [RESUME]);
        self.vm.wait_progress(self.progress);
        drop(self.dir);
    }

    fn load_error(&self) -> &'static str {
        "Error -22 while loading VM state: "
    }
}

/// The offsets tried in a file of `n` bytes: every one in the first and last 512 bytes
/// (the header, the first sections, the end of the stream, the trailer), and every 7th in
/// between (the vCPU state, where only the checksum can tell; each load takes a few
/// milliseconds).
fn sampled(offset: usize, n: usize) -> bool {
    offset < 512 || offset + 512 >= n || offset.is_multiple_of(7)
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file")
}

#[test]
fn truncated_files_are_refused() {
    let _one = serialize();
    if !have_kvm("truncated_files_are_refused") {
        return;
    }
    let mut s = setup(2, false);
    let good = s.good.clone();
    let n = good.len();
    let not_vmstate = format!("{} is not a vmstate file", s.bad.display());
    let mut msgs = vec![String::new(); n];
    for len in (0..n).filter(|&l| sampled(l, n)) {
        msgs[len] = s.refused(&good[..len]);
    }
    for (len, msg) in msgs.iter().enumerate().take(8) {
        assert_eq!(*msg, not_vmstate, "{len} bytes");
    }
    // Header only: the section loop finds no type byte.
    assert_eq!(
        msgs[8],
        format!(
            "{}failed to read section type at offset 8: unexpected end of file 'cpr-load' at offset 8: wanted 1 bytes, got 0",
            s.load_error()
        )
    );
    for (len, msg) in msgs.iter().enumerate().skip(9) {
        assert!(
            !sampled(len, n) || msg.starts_with(s.load_error()),
            "{len} bytes: {msg}"
        );
    }
    // Everything but the trailer, then everything but its last byte.
    assert_eq!(
        msgs[n - 12],
        format!(
            "{}missing checksum trailer at offset {}",
            s.load_error(),
            n - 12
        )
    );
    assert!(
        msgs[n - 1].contains(&format!(
            "failed to read trailer checksum at offset {}",
            n - 8
        )),
        "{}",
        msgs[n - 1]
    );
    // One byte too many.
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        s.refused(&long),
        format!(
            "{}unexpected data after the checksum trailer at offset {n}",
            s.load_error()
        )
    );
    s.loads_good();
}

#[test]
fn single_bit_flips_are_refused() {
    let _one = serialize();
    if !have_kvm("single_bit_flips_are_refused") {
        return;
    }
    let mut s = setup(1, false);
    let good = s.good.clone();
    for pos in (0..good.len()).filter(|&p| sampled(p, good.len())) {
        let mut b = good.clone();
        b[pos] ^= 1 << (pos % 8);
        s.refused(&b);
    }
    // A flip in the magic is a foreign file; one in the trailer's checksum is a checksum
    // mismatch.
    let mut b = good.clone();
    b[0] ^= 0x80;
    assert_eq!(
        s.refused(&b),
        format!("{} is not a vmstate file", s.bad.display())
    );
    let mut b = good.clone();
    let last = b.len() - 1;
    // Another hex digit (a flipped bit may make it no hex digit: no trailer at all).
    b[last] = if b[last] == b'0' { b'1' } else { b'0' };
    let msg = s.refused(&b);
    assert!(
        msg.starts_with(&format!(
            "{}checksum mismatch: trailer holds 0x",
            s.load_error()
        )),
        "{msg}"
    );
    s.loads_good();
}

#[test]
fn foreign_files_are_refused() {
    let _one = serialize();
    if !have_kvm("foreign_files_are_refused") {
        return;
    }
    let mut s = setup(1, false);
    let not_vmstate = format!("{} is not a vmstate file", s.bad.display());
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
    assert_eq!(s.refused(&random), not_vmstate);
    assert_eq!(s.refused(&[]), not_vmstate);
    assert_eq!(s.refused(b"QEMU is great\n"), not_vmstate);
    // QEVM of another version, the rest of a good stream after it.
    for version in [2u32, 4] {
        let mut b = s.good.clone();
        b[4..8].copy_from_slice(&version.to_be_bytes());
        assert_eq!(s.refused(&b), not_vmstate, "version {version}");
    }
    // Not a regular file: a directory, and /dev/zero (which would never end).
    let sub = s.dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let err = s.vm.refused(load(&sub));
    s.nothing_changed();
    assert!(
        err.starts_with(&format!("cannot open checkpoint file {}", sub.display())),
        "{err}"
    );
    let err = s.vm.refused(load(Path::new("/dev/zero")));
    s.nothing_changed();
    assert_eq!(err, "cannot load /dev/zero: not a regular file");
    s.loads_good();
}

/// A checkpoint of a machine with another number of vCPUs does not fit this one.
#[test]
fn wrong_vcpu_counts_are_refused() {
    let _one = serialize();
    if !have_kvm("wrong_vcpu_counts_are_refused") {
        return;
    }
    for (theirs, ours) in [(2, 1), (1, 2)] {
        let other = setup(theirs, false);
        let mut s = setup(ours, false);
        assert_eq!(
            s.refused(&other.good),
            format!(
                "{}error while loading state for instance 0x0 of device 'cpr-machine': cpr-machine: machine mismatch: the checkpoint has {theirs} vCPUs, this VM has {ours}",
                s.load_error()
            )
        );
        drop(other);
        s.loads_good();
    }
}

/// `cpr-load` checks that the saved run state can be entered before it applies anything
/// (V7 applies the sections, then aborts QEMU in `runstate_set`): a checkpoint saying
/// `shutdown` (which cpr-save never writes) is refused from `prelaunch`, one saying
/// `suspended` is refused by a paused VM, which stays paused and runs on.
#[test]
fn saved_run_states_that_cannot_be_entered_are_refused() {
    let _one = serialize();
    if !have_kvm("saved_run_states_that_cannot_be_entered_are_refused") {
        return;
    }
    let mut s = setup(1, true);
    let shutdown = with_runstate(&s.good, RunState::Shutdown);
    assert_eq!(
        s.refused(&shutdown),
        format!(
            "{}error while loading state for instance 0x0 of device 'globalstate': globalstate: run state shutdown: a checkpoint is only ever taken of a running, paused or suspended VM",
            s.load_error()
        )
    );

    // Paused, from the good (paused) checkpoint; then the same checkpoint, saying
    // `suspended`.
    let good = s.bad.with_extension("good");
    std::fs::write(&good, &s.good).expect("write");
    s.vm.ok(load(&good));
    assert_eq!(s.vm.state(), RunState::Paused);
    assert_eq!(s.vm.events(), []);
    let suspended = with_runstate(&s.good, RunState::Suspended);
    std::fs::write(&s.bad, &suspended).expect("write");
    assert_eq!(
        s.vm.refused(load(&s.bad)),
        "cannot restore a suspended VM into a VM that is paused"
    );
    assert_eq!(s.vm.state(), RunState::Paused);
    assert_eq!(s.vm.events(), []);
    s.vm.ok(Command::Cont);
    assert_eq!(s.vm.events(), [RESUME]);
    s.vm.wait_progress(s.progress);
}

/// A checkpoint without `globalstate` (V7 would load it and leave the run state at its
/// zero value, `debug`): refused, as a section the machine requires.
#[test]
fn checkpoint_without_globalstate_is_refused() {
    let _one = serialize();
    if !have_kvm("checkpoint_without_globalstate_is_refused") {
        return;
    }
    let mut s = setup(1, false);
    let mut b = s.good.clone();
    // The section: type byte and be32 section id before the idstr; the payload (be32 size,
    // 100-byte buffer) and the footer (type byte, be32 section id) after the ids.
    let idstr = find(&b, b"\x0bglobalstate");
    let start = idstr - 5;
    let end = idstr + 12 + 8 + 104 + 5;
    b.drain(start..end);
    reseal(&mut b);
    assert_eq!(
        s.refused(&b),
        format!(
            "{}required section 'globalstate' instance 0 is missing from the stream",
            s.load_error()
        )
    );
    s.loads_good();
}

/// `checkpoint` with its `globalstate` saying `state`, the checksum trailer re-sealed so
/// that only the run-state rules can refuse it.
fn with_runstate(checkpoint: &[u8], state: RunState) -> Vec<u8> {
    let mut b = checkpoint.to_vec();
    // idstr (length byte, name), be32 instance id, be32 version id, then the payload:
    // be32 size and the 100-byte buffer.
    let at = find(&b, b"\x0bglobalstate") + 12 + 8;
    let size = u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let buf: [u8; 100] = b[at + 4..at + 104].try_into().expect("100 bytes");
    let mut g = GlobalState::decode(size, &buf).expect("globalstate");
    g.runstate = state;
    let (size, buf) = g.encode();
    b[at..at + 4].copy_from_slice(&size.to_be_bytes());
    b[at + 4..at + 104].copy_from_slice(&buf);
    reseal(&mut b);
    b
}

/// Recomputes the checksum trailer ("CPRC" and 8 hex digits) of an edited stream.
fn reseal(b: &mut [u8]) {
    let body = b.len() - 12;
    let crc = crc32(&b[..body]);
    b[body + 4..].copy_from_slice(format!("{crc:08x}").as_bytes());
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
