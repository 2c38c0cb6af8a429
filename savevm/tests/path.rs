//! The patch's simplification: save to and load from a path.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use cpr_savevm::*;

#[test]
fn save_to_path_then_load_from_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.state");
    let mut m = Machine::golden();
    let stats = save_device_state_to_path(&path, &mut m.registry, CHANNEL_CPR_SAVE).unwrap();
    assert_eq!(stats.sections, 2);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, stats.bytes);
    assert_eq!(bytes, Machine::golden().save());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut fresh = Machine::new(Timer::default(), Dev::default());
    let loaded = load_device_state_from_path(&path, &mut fresh.registry, CHANNEL_CPR_LOAD).unwrap();
    assert_eq!(loaded.sections.len(), 2);
    assert_eq!(fresh.states(), m.states());
}

#[test]
fn failed_save_leaves_previous_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.state");
    let mut m = Machine::golden();
    save_device_state_to_path(&path, &mut m.registry, CHANNEL_XEN_SAVE).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Change the state, then fail midway (after "timer" was written).
    m.timer.lock().unwrap().state.a = 77;
    m.dev.lock().unwrap().fail_save = true;
    let e = save_device_state_to_path(&path, &mut m.registry, CHANNEL_XEN_SAVE).unwrap_err();
    assert!(matches!(e, Error::SaveSection { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vm.state"]);
}

#[test]
fn failed_save_to_a_new_path_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.state");
    let mut m = Machine::golden();
    m.timer.lock().unwrap().fail_save = true;
    save_device_state_to_path(&path, &mut m.registry, CHANNEL_CPR_SAVE).unwrap_err();
    assert!(!path.exists());
}

#[test]
fn load_from_path_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage");
    std::fs::write(&path, b"not a state file").unwrap();
    let mut m = Machine::golden();
    let e = load_device_state_from_path(&path, &mut m.registry, CHANNEL_CPR_LOAD).unwrap_err();
    assert_eq!(
        chain(&e),
        format!(
            "{} is not a vmstate file: Not a migration stream",
            path.display()
        )
    );
    assert_eq!(m.restores(), 0);

    let missing = dir.path().join("missing");
    let e = read_device_state_from_path(&missing, &m.registry, CHANNEL_XEN_LOAD).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[test]
fn corrupt_file_on_disk_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.state");
    let mut m = Machine::golden();
    save_device_state_to_path(&path, &mut m.registry, CHANNEL_CPR_SAVE).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let mut fresh = Machine::new(Timer::default(), Dev::default());
    let e = load_device_state_from_path(&path, &mut fresh.registry, CHANNEL_CPR_LOAD).unwrap_err();
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e:?}");
    assert_eq!(fresh.restores(), 0);
}
