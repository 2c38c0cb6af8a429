//! The V7 reboot-mode flow (patch 06, reference §6.2–§6.4 and §13) as a
//! VMM would run it, composed from cpr-memory, cpr-migration-file,
//! cpr-savevm and cpr-runstate, without KVM: an "old process" cpr-saves,
//! is dropped, and a "new process" maps the same RAM file and cpr-loads.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use cpr_memory::{
    Backing, Medium, Origin, Persistence, RamBlock, VolatileReason, page_size, persistence,
};
use cpr_runstate::{ControlOp, Event, RunState, StatusInfo, WakeupReason};
use cpr_savevm::CHANNEL_CPR_LOAD;

#[test]
fn running_guest_survives_cpr_reboot() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);

    // ---------------------------------------------------------- old process
    let mut old = Vmm::boot(shared_file_ram(&ram_path), 2);
    assert_eq!(old.ram.blocks()[0].origin(), Origin::Created);
    old.start_and_run(0x5a, 41);
    lock(&old.counter).state.count += 1; // the guest keeps doing things
    let saved_devices = old.devices();
    assert_eq!(saved_devices.counter.count, 42);

    // /dev/shm survives a process restart (this scenario), not a reboot.
    let report = persistence(old.blocks.get("pc.ram").unwrap()).unwrap();
    assert_eq!(report.medium, Medium::Tmpfs);
    assert_eq!(report.persistence, Persistence::UntilHostReboot);

    let stats = old.cpr_save(&state_path).unwrap();
    assert_eq!(stats.sections, 4); // globalstate, counter, cpu 0, cpu 1
    assert_eq!(old.vm.state(), RunState::SaveVm);
    assert_eq!(old.events(), [Event::Stop]);
    assert_eq!(
        old.vm.machine().ops,
        [ControlOp::DisableTicks, ControlOp::PauseVcpus]
    );
    assert!(!old.vm.machine().vcpus_running);
    let mode = std::fs::metadata(&state_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "checkpoint mode {mode:o}");
    // Only the RAM file and the checkpoint: no temporary file left behind.
    assert_eq!(dir_entries(dir.path()), ["pc.ram", "vm.cpr"]);

    // The stream: QEVM v3, sections in registration order, globalstate
    // holding "running" (what global_state_store saw before vm_stop).
    let bytes = std::fs::read(&state_path).unwrap();
    assert_eq!(bytes[..8], [b'Q', b'E', b'V', b'M', 0, 0, 0, 3]);
    let probe = Vmm::boot(shared_file_ram(&dir.path().join("probe.ram")), 2);
    let parsed =
        read_device_state_from_path(&state_path, &probe.registry, CHANNEL_CPR_LOAD).unwrap();
    let order: Vec<(String, u32)> = parsed
        .sections()
        .map(|s| (s.idstr.clone(), s.instance_id))
        .collect();
    assert_eq!(
        order,
        [
            ("globalstate".to_owned(), 0),
            ("counter".to_owned(), 0),
            ("cpu".to_owned(), 0),
            ("cpu".to_owned(), 1)
        ]
    );
    let g = parsed
        .staged::<GlobalStateSection>("globalstate", 0)
        .unwrap();
    assert_eq!(g.state.unwrap().runstate, RunState::Running);
    drop((parsed, probe));

    // "quit": everything of the old process goes away but the files.
    drop(old);

    // ---------------------------------------------------------- new process
    let mut new = Vmm::boot(shared_file_ram(&ram_path), 2);
    assert_eq!(new.ram.blocks()[0].origin(), Origin::Reused);
    assert_eq!(new.read_ram(), ram_pattern(0x5a), "guest RAM not preserved");
    assert_eq!(new.devices(), new.sentinel_devices());
    assert_eq!(new.vm.state(), RunState::Prelaunch);

    assert_eq!(new.cpr_load(&state_path).unwrap(), RunState::Running);
    assert_eq!(new.devices(), saved_devices);
    assert_eq!(new.devices().vcpus[1], running_regs(1));
    assert_eq!(new.vm.state(), RunState::Running);
    assert_eq!(new.events(), [Event::Resume]);
    assert_eq!(
        new.vm.machine().ops,
        [ControlOp::EnableTicks, ControlOp::ResumeVcpus]
    );
    assert_eq!(new.read_ram(), ram_pattern(0x5a));
    // The new process sees its own writes through the same file.
    new.write_ram(&ram_pattern(0x77));
    assert_eq!(std::fs::read(&ram_path).unwrap(), ram_pattern(0x77));

    // cpr-load refuses a running VM (step 1), and changes nothing.
    let err = new.cpr_load(&state_path).unwrap_err();
    assert_eq!(err.to_string(), "cpr-load called for a running VM");
    assert!(new.events().is_empty());
}

#[test]
fn suspended_guest_wakes_with_resume_then_wakeup() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);

    let mut old = Vmm::boot(shared_file_ram(&ram_path), 1);
    old.start_and_run(0x33, 7);
    old.vm.suspend_request();
    assert!(old.vm.process_suspend().unwrap());
    assert_eq!(old.events(), [Event::Suspend]);
    old.vm.machine_mut().ops.clear();
    let saved = old.devices();

    old.cpr_save(&state_path).unwrap();
    // A suspended VM is not "running": vm_stop leaves it alone, no STOP;
    // cpr-save itself freezes the ticks that suspend left running.
    assert_eq!(old.vm.state(), RunState::Suspended);
    assert!(old.events().is_empty());
    assert_eq!(old.vm.machine().ops, [ControlOp::DisableTicks]);
    drop(old);

    let mut new = Vmm::boot(shared_file_ram(&ram_path), 1);
    assert_eq!(new.cpr_load(&state_path).unwrap(), RunState::Suspended);
    assert_eq!(new.vm.state(), RunState::Suspended);
    assert!(new.vm.start_on_wakeup_requested());
    assert!(new.events().is_empty(), "no RESUME before the wakeup");
    assert!(new.vm.machine().ops.is_empty());
    assert_eq!(new.devices(), saved);
    assert_eq!(new.read_ram(), ram_pattern(0x33));

    new.vm.register_wakeup_support();
    new.vm.system_wakeup().unwrap();
    assert!(new.vm.process_wakeup().unwrap());
    assert_eq!(new.events(), [Event::Resume, Event::Wakeup]);
    assert_eq!(
        new.vm.query_status(),
        StatusInfo {
            running: true,
            status: RunState::Running
        }
    );
    assert!(!new.vm.start_on_wakeup_requested());
    let m = new.vm.machine();
    assert_eq!(
        m.ops,
        [
            ControlOp::EnableTicks,
            ControlOp::ResumeVcpus,
            ControlOp::PauseVcpus,
            ControlOp::Wakeup,
            ControlOp::ResumeVcpus
        ]
    );
    assert_eq!(m.wakeups, [WakeupReason::Other]);
    assert!(m.ticks_enabled && m.vcpus_running);
}

#[test]
fn paused_guest_stays_paused_after_load() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);
    let saved = make_checkpoint(&ram_path, &state_path, 2, RunState::Paused, 0x10);

    let mut new = Vmm::boot(shared_file_ram(&ram_path), 2);
    assert_eq!(new.cpr_load(&state_path).unwrap(), RunState::Paused);
    assert_eq!(
        new.vm.query_status(),
        StatusInfo {
            running: false,
            status: RunState::Paused
        }
    );
    assert!(new.events().is_empty());
    assert!(new.vm.machine().ops.is_empty());
    assert!(!new.vm.start_on_wakeup_requested());
    assert_eq!(new.devices(), saved);
    assert_eq!(new.read_ram(), ram_pattern(0x10));

    // `cont` works afterwards.
    new.vm.vm_start().unwrap();
    assert_eq!(new.events(), [Event::Resume]);
}

/// Step 1 runs before anything else: the VM is not stopped, no file is
/// created, no event is emitted.
fn assert_volatile_refused(block: RamBlock, reason: VolatileReason, dir: &tempfile::TempDir) {
    let state_path = dir.path().join("vm.cpr");
    let mut vmm = Vmm::boot(block, 1);
    vmm.start_and_run(1, 5);
    let before = dir_entries(dir.path());
    let err = vmm.cpr_save(&state_path).unwrap_err();
    assert_eq!(err.to_string(), "Memory region pc.ram-mr is volatile");
    let CprError::Volatile(cpr_memory::Error::Volatile { volatile, .. }) = err else {
        panic!("wrong error {err:?}");
    };
    assert_eq!(volatile.len(), 1);
    assert_eq!(volatile[0].reason, reason);
    assert_eq!(vmm.vm.state(), RunState::Running);
    assert!(vmm.events().is_empty());
    assert!(vmm.vm.machine().ops.is_empty());
    assert!(vmm.vm.machine().vcpus_running);
    assert!(!state_path.exists());
    assert_eq!(
        lock(&vmm.global).state,
        None,
        "global state stored too early"
    );
    drop(vmm);
    assert_eq!(dir_entries(dir.path()), before);
}

#[test]
fn volatile_ram_refuses_save_and_vm_keeps_running() {
    let dir = shm_dir();
    let size = RAM_PAGES * page_size();

    // Anonymous RAM, even share=on: no fd to find again.
    for shared in [false, true] {
        let anon = RamBlock::builder("pc.ram", size)
            .mr_name("pc.ram-mr")
            .backing(Backing::Anonymous)
            .shared(shared)
            .build()
            .unwrap();
        assert_volatile_refused(anon, VolatileReason::NoFd, &dir);
    }

    // A private mapping of a file: the guest's writes never reach the file.
    let ram_path = dir.path().join("private.ram");
    let private = RamBlock::builder("pc.ram", size)
        .mr_name("pc.ram-mr")
        .file(&ram_path)
        .shared(false)
        .build()
        .unwrap();
    assert_volatile_refused(private, VolatileReason::NotShared, &dir);
    assert_eq!(
        std::fs::read(&ram_path).unwrap(),
        vec![0u8; ram_len()],
        "a private mapping wrote through to its file"
    );
}

#[test]
fn failed_save_keeps_previous_checkpoint_and_resumes() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);
    let mut vmm = Vmm::boot(shared_file_ram(&ram_path), 1);
    vmm.start_and_run(2, 100);

    // A good checkpoint, then `cont` (save-vm -> running is legal).
    vmm.cpr_save(&state_path).unwrap();
    let good = std::fs::read(&state_path).unwrap();
    let good_devices = vmm.devices();
    vmm.vm.vm_start().unwrap();
    assert_eq!(vmm.events(), [Event::Stop, Event::Resume]);
    vmm.vm.machine_mut().ops.clear();

    // The counter's state query fails mid-stream, after the VM was stopped.
    lock(&vmm.counter).state.count = 200;
    lock(&vmm.counter).fail_save = true;
    let err = vmm.cpr_save(&state_path).unwrap_err();
    assert_eq!(
        chain(&err),
        "Error while saving VM state: failed to save state for instance 0x0 of device \
         'counter': counter: save_state failed: device busy"
    );
    assert_eq!(
        std::fs::read(&state_path).unwrap(),
        good,
        "old checkpoint damaged"
    );
    assert_eq!(dir_entries(dir.path()), ["pc.ram", "vm.cpr"]);
    // V7 step 10: stopped (STOP), then restarted (RESUME) because it ran.
    assert_eq!(vmm.events(), [Event::Stop, Event::Resume]);
    assert_eq!(vmm.vm.state(), RunState::Running);
    assert_eq!(
        vmm.vm.machine().ops,
        [
            ControlOp::DisableTicks,
            ControlOp::PauseVcpus,
            ControlOp::EnableTicks,
            ControlOp::ResumeVcpus
        ]
    );

    // Creating the file fails (its directory is gone): before vm_stop, so
    // nothing to undo, no event.
    vmm.vm.machine_mut().ops.clear();
    let missing = dir.path().join("no-such-dir").join("vm.cpr");
    let err = vmm.cpr_save(&missing).unwrap_err();
    assert!(matches!(err, CprError::Open(_)), "{err:?}");
    assert!(
        chain(&err).starts_with(&format!(
            "Unable to open {}",
            dir.path().join("no-such-dir").display()
        )),
        "{}",
        chain(&err)
    );
    assert!(
        chain(&err).ends_with("ENOENT: No such file or directory"),
        "{}",
        chain(&err)
    );
    assert!(vmm.events().is_empty());
    assert!(vmm.vm.machine().ops.is_empty());
    assert_eq!(vmm.vm.state(), RunState::Running);
    drop(vmm);

    // The surviving checkpoint is the good one, and it loads.
    let mut new = Vmm::boot(shared_file_ram(&ram_path), 1);
    assert_eq!(new.cpr_load(&state_path).unwrap(), RunState::Running);
    assert_eq!(new.devices(), good_devices);
    assert_eq!(new.devices().counter.count, 100);
}

#[test]
fn failed_save_of_paused_vm_stays_paused() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);
    let mut vmm = Vmm::boot(shared_file_ram(&ram_path), 1);
    vmm.start_and_run(3, 1);
    vmm.vm.vm_stop(RunState::Paused).unwrap();
    assert_eq!(vmm.events(), [Event::Stop]);
    lock(&vmm.counter).fail_save = true;
    let err = vmm.cpr_save(&state_path).unwrap_err();
    assert!(matches!(err, CprError::Save(_)), "{err:?}");
    assert!(!state_path.exists());
    assert_eq!(dir_entries(dir.path()), ["pc.ram"]);
    // It was not running: no STOP, and no RESUME on the error path.
    assert!(vmm.events().is_empty());
    assert_eq!(vmm.vm.state(), RunState::Paused);
}

#[test]
fn suspended_checkpoint_into_paused_vm_is_an_error() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);
    make_checkpoint(&ram_path, &state_path, 1, RunState::Suspended, 0x44);

    let mut new = Vmm::boot(shared_file_ram(&ram_path), 1);
    new.vm.runstate_set(RunState::Paused).unwrap();
    let err = new.cpr_load(&state_path).unwrap_err();
    assert!(
        matches!(
            err,
            CprError::Runstate(cpr_runstate::Error::InvalidTransition {
                from: RunState::Paused,
                to: RunState::Suspended
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "invalid runstate transition: 'paused' -> 'suspended'"
    );
    // Checked before applying: nothing changed.
    assert_eq!(new.vm.state(), RunState::Paused);
    assert_eq!(new.devices(), new.sentinel_devices());
    assert!(!new.vm.start_on_wakeup_requested());
    assert!(new.events().is_empty());

    // V7's order (apply, then runstate_set) would hit the same edge; here
    // too it is a value, not an abort.
    let err = new.vm.runstate_set(RunState::Suspended).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid runstate transition: 'paused' -> 'suspended'"
    );
    assert_eq!(new.vm.state(), RunState::Paused);
}

#[test]
fn saved_shutdown_state_cannot_be_loaded_from_prelaunch() {
    let dir = shm_dir();
    let (ram_path, state_path) = paths(&dir);
    make_checkpoint(&ram_path, &state_path, 1, RunState::Shutdown, 0x45);

    let mut new = Vmm::boot(shared_file_ram(&ram_path), 1);
    let err = new.cpr_load(&state_path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid runstate transition: 'prelaunch' -> 'shutdown'"
    );
    assert_eq!(new.vm.state(), RunState::Prelaunch);
    assert_eq!(new.devices(), new.sentinel_devices());
    assert!(new.events().is_empty());
}
