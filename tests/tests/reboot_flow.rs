//! Reboot mode through the real `cpr::vmm::Vmm`, in-process, with KVM: an old VMM
//! `cpr-save`s (or `migrate`s) a running, paused or suspended guest, a new VMM on the same
//! RAM file loads it, and the guest carries on. Two `Vmm`s on one RAM file are what two
//! `cpr-vm` processes are: the RAM lock belongs to each one's open file description, so
//! the new one is refused until the old one's checkpoint hands the RAM over.
//!
//! Every failure is checked for its exact words and for the run state it leaves: running
//! again (RESUME), still paused, still suspended.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use cpr::vmm::MigrationStatus;
use cpr::vmm::{Command, Event, MigMode, MigrationCapability, Response, SetParameters};
use cpr_runstate::RunState;

fn in_use(ram: &Path) -> String {
    format!(
        "RAM file {} (pc.ram) is in use by another process, which runs or can run a guest on it",
        ram.display()
    )
}

#[test]
fn running_guest_survives_cpr_reboot() {
    let Some(scene) = scene("running_guest_survives_cpr_reboot") else {
        return;
    };
    let (dir, ram, state) = (&scene.dir, &scene.ram, &scene.state);

    let mut old = Vm::new(args(Some(ram), 2));
    old.boot();
    assert!(ram_held(ram));
    // A second VMM on the same RAM waits in `prelaunch` (as `cpr-vm -S`) and cannot load
    // while the old one holds the RAM, whatever the file: the lock is checked first.
    let mut new = Vm::new(args(Some(ram), 2));
    assert_eq!(new.refused(load(state)), in_use(ram));
    assert_eq!(new.state(), RunState::Prelaunch);
    assert_eq!(new.events(), []);

    // cpr-save: STOP, `save-vm`, a 0600 checkpoint, no temporary left; tmpfs RAM is named
    // in the reply (it would not survive a host reboot); the RAM is handed over.
    let Ok(Response::Saved { warnings }) = old.cmd(save(state)) else {
        panic!("cpr-save");
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("tmpfs"), "{warnings:?}");
    assert_eq!(old.state(), RunState::SaveVm);
    assert_eq!(old.events(), [STOP]);
    let mode = std::fs::metadata(state).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "checkpoint mode {mode:o}");
    assert_eq!(dir_entries(dir.path()), ["guest.ram", "vm.state"]);
    assert!(!ram_held(ram), "the checkpoint hands the RAM over");
    let saved_progress = old.progress();
    let checkpoint = std::fs::read(state).expect("checkpoint");

    // A second cpr-save from `save-vm` could never be loaded: refused, the good
    // checkpoint stays.
    assert_eq!(
        old.refused(save(state)),
        format!(
            "cpr-save: a VM that is save-vm cannot be restored from a checkpoint; {} is left as it was",
            state.display()
        )
    );
    assert_eq!(std::fs::read(state).expect("checkpoint"), checkpoint);
    assert_eq!(old.state(), RunState::SaveVm);

    // The new VMM loads it: RESUME, running, and the guest carries on from where it was,
    // with its RAM intact.
    new.ok(load(state));
    assert_eq!(new.state(), RunState::Running);
    assert_eq!(new.events(), [RESUME]);
    assert!(ram_held(ram));
    new.wait_progress(saved_progress);

    // V7 cpr-load step 1: a running VM is refused, and nothing changes.
    assert_eq!(new.refused(load(state)), "cpr-load called for a running VM");
    assert_eq!(new.state(), RunState::Running);
    assert_eq!(new.events(), []);

    // The old VMM cannot run the guest again: the new one holds the RAM.
    assert_eq!(old.refused(Command::Cont), in_use(ram));
    assert_eq!(old.state(), RunState::SaveVm);
    assert_eq!(old.events(), []);
    drop(old);
    new.wait_progress(saved_progress + 1);
    new.ok(Command::Stop);
    assert_eq!(new.events(), [STOP]);
}

/// The order of cpr-save's checks once there is a machine: the run state before the file
/// (a checkpoint of a VM that could never be loaded does not replace a good one, even at a
/// path that cannot be opened), the file before the VM is stopped.
#[test]
fn cpr_save_refusals_leave_the_guest_running() {
    let Some(scene) = scene("cpr_save_refusals_leave_the_guest_running") else {
        return;
    };
    let (dir, ram) = (&scene.dir, &scene.ram);
    let missing = dir.path().join("no-such-dir").join("vm.state");

    // VFIO rule (mainline): a running guest with a VFIO device is refused before anything.
    let mut vm = Vm::new(args(Some(ram), 1));
    vm.vmm.attach_vfio(Box::new(common::TestVfio));
    vm.boot();
    assert_eq!(
        vm.refused(save(&missing)),
        "VFIO device only supports cpr-reboot for runstate suspended"
    );
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(vm.events(), []);
    drop(vm);

    let mut vm = Vm::new(args(Some(ram), 1));
    vm.boot();
    // Step 5: the file is opened before the VM is stopped: no STOP, no RESUME.
    assert_eq!(
        vm.refused(save(&missing)),
        format!(
            "cannot create checkpoint file {}: Unable to open {}: ENOENT: No such file or directory",
            missing.display(),
            missing.parent().expect("parent").display()
        )
    );
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(vm.events(), []);
    // The VM's own RAM is never a target.
    assert_eq!(
        vm.refused(save(ram)),
        format!(
            "cannot save to {}: it is this VM's RAM (pc.ram)",
            ram.display()
        )
    );
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(vm.events(), []);

    // A guest that panicked cannot be restored: refused before the file is opened.
    vm.ok(Command::GuestFault(cpr::machine::GuestFault::Panic));
    vm.wait_state(RunState::GuestPanicked);
    let _ = vm.events();
    assert_eq!(
        vm.refused(save(&missing)),
        format!(
            "cpr-save: a VM that is guest-panicked cannot be restored from a checkpoint; {} is left as it was",
            missing.display()
        )
    );
    assert_eq!(vm.state(), RunState::GuestPanicked);
    assert_eq!(vm.events(), []);
}

/// A paused guest: saved without STOP, loaded `paused` without RESUME, `cont` runs it.
#[test]
fn paused_guest_stays_paused() {
    let Some(scene) = scene("paused_guest_stays_paused") else {
        return;
    };
    let (ram, state) = (&scene.ram, &scene.state);
    let mut old = Vm::new(args(Some(ram), 1));
    old.boot();
    old.ok(Command::Stop);
    assert_eq!(old.events(), [STOP]);
    let saved_progress = old.progress();
    assert!(matches!(old.cmd(save(state)), Ok(Response::Saved { .. })));
    // vm_stop(save-vm) leaves a VM that is not running alone: no STOP, still paused.
    assert_eq!(old.state(), RunState::Paused);
    assert_eq!(old.events(), [], "it was not running: no STOP");
    drop(old);

    let mut new = Vm::new(args(Some(ram), 1));
    new.ok(load(state));
    assert_eq!(new.state(), RunState::Paused);
    assert_eq!(new.events(), []);
    assert_eq!(
        new.progress(),
        saved_progress,
        "paused: the guest does not run"
    );
    new.ok(Command::Cont);
    assert_eq!(new.events(), [RESUME]);
    new.wait_progress(saved_progress);
}

/// A suspended guest (V7): saved `suspended` without STOP, loaded `suspended` without
/// RESUME; `system_wakeup` then gives RESUME and WAKEUP and the guest runs on.
#[test]
fn suspended_guest_wakes_with_resume_then_wakeup() {
    let Some(scene) = scene("suspended_guest_wakes_with_resume_then_wakeup") else {
        return;
    };
    let (ram, state) = (&scene.ram, &scene.state);
    let mut old = Vm::new(args(Some(ram), 1));
    old.boot();
    old.ok(Command::GuestSuspendRam);
    old.wait_state(RunState::Suspended);
    assert_eq!(old.events(), [SUSPEND]);
    let saved_progress = old.progress();
    assert!(matches!(old.cmd(save(state)), Ok(Response::Saved { .. })));
    assert_eq!(old.state(), RunState::Suspended);
    assert_eq!(old.events(), [], "a suspended VM is not running: no STOP");
    drop(old);

    let mut new = Vm::new(args(Some(ram), 1));
    new.ok(load(state));
    assert_eq!(new.state(), RunState::Suspended);
    assert_eq!(new.events(), [], "no RESUME before the wakeup");
    new.ok(Command::SystemWakeup);
    assert_eq!(new.events(), [RESUME, WAKEUP]);
    assert_eq!(new.state(), RunState::Running);
    new.wait_progress(saved_progress);
}

/// Mainline: `migrate` with mode `cpr-reboot` and `x-ignore-shared`, statuses and events,
/// `query-migrate` after success, the refusals around it, and `migrate-incoming` into a
/// VMM started with `--incoming defer`.
#[test]
fn mainline_migrate_and_migrate_incoming() {
    let Some(scene) = scene("mainline_migrate_and_migrate_incoming") else {
        return;
    };
    let (ram, state) = (&scene.ram, &scene.state);
    let mut old = Vm::new(args(Some(ram), 2));
    old.boot();
    old.cap(MigrationCapability::Events);
    old.cap(MigrationCapability::XIgnoreShared);
    old.ok(Command::MigrateSetParameters(Box::new(SetParameters {
        mode: Some(MigMode::CprReboot),
        ..SetParameters::default()
    })));
    // CPR refuses COLO, with a machine as without.
    old.cap(MigrationCapability::XColo);
    assert_eq!(old.refused(migrate(state)), "Cannot use COLO with CPR");
    assert_eq!(old.state(), RunState::Running);
    assert_eq!(old.query_migrate().status, None);
    old.ok(Command::MigrateSetCapabilities(vec![
        cpr::vmm::CapabilityStatus {
            capability: MigrationCapability::XColo,
            state: false,
        },
    ]));
    assert_eq!(old.events(), []);

    let mut new = Vm::incoming_defer(args(Some(ram), 2));
    new.cap(MigrationCapability::Events);
    new.cap(MigrationCapability::XIgnoreShared);
    assert_eq!(
        new.refused(migrate(state)),
        "Guest is waiting for an incoming migration"
    );
    assert_eq!(new.state(), RunState::Inmigrate);

    old.ok(migrate(state));
    // STOP goes out when the guest stops: between `setup` and `active`, as in QEMU.
    assert_eq!(
        old.events(),
        [
            Event::Migration(MigrationStatus::Setup),
            STOP,
            Event::Migration(MigrationStatus::Active),
            Event::Migration(MigrationStatus::Completed),
        ]
    );
    assert_eq!(old.state(), RunState::Postmigrate);
    let info = old.query_migrate();
    assert_eq!(info.status, Some(MigrationStatus::Completed));
    assert_eq!(info.error_desc, None);
    let ram_stats = info.ram.expect("ram statistics");
    assert_eq!(
        ram_stats.normal, 0,
        "x-ignore-shared: shared RAM stays in place"
    );
    assert!(!ram_held(ram), "the checkpoint hands the RAM over");
    let saved_progress = old.progress();
    // A VM in `postmigrate` has nothing loadable to give.
    assert_eq!(
        old.refused(migrate(state)),
        "cannot migrate a VM that is postmigrate: its state could never be loaded"
    );

    new.ok(migrate_incoming(state));
    // RESUME as the guest resumes, then `completed` (QEMU's
    // `process_incoming_migration_bh`: the state changes come before the event).
    assert_eq!(
        new.events(),
        [
            Event::Migration(MigrationStatus::Setup),
            Event::Migration(MigrationStatus::Active),
            RESUME,
            Event::Migration(MigrationStatus::Completed),
        ]
    );
    assert_eq!(new.state(), RunState::Running);
    assert_eq!(new.query_migrate().status, Some(MigrationStatus::Completed));
    assert_eq!(
        new.refused(migrate_incoming(state)),
        "The incoming migration has already been started"
    );
    assert_eq!(old.refused(Command::Cont), in_use(ram));
    drop(old);
    new.wait_progress(saved_progress);
}

/// V7 cpr-save step 10: a save that fails after the VM was stopped (here the disk is
/// "full") restarts a running VM (STOP, then RESUME), leaves a paused one paused and a
/// suspended one suspended, without a sound; the previous checkpoint stays, no temporary
/// is left, and the guest runs on.
#[test]
fn failed_saves_leave_the_vm_as_it_was() {
    let Some(scene) = scene("failed_saves_leave_the_vm_as_it_was") else {
        return;
    };
    let (dir, ram, state) = (&scene.dir, &scene.ram, &scene.state);
    let mut vm = Vm::new(args(Some(ram), 1));
    vm.boot();
    assert!(matches!(vm.cmd(save(state)), Ok(Response::Saved { .. })));
    let good = std::fs::read(state).expect("checkpoint");
    vm.ok(Command::Cont);
    assert_eq!(vm.events(), [STOP, RESUME]);
    assert!(ram_held(ram), "cont takes the RAM back");

    let full = "Error -27 while saving VM state: ";
    let failed_save = |vm: &mut Vm| {
        let err = with_file_size_limit(512, || vm.refused(save(state)));
        assert!(err.starts_with(full), "{err}");
        assert_eq!(std::fs::read(state).expect("checkpoint"), good);
        assert_eq!(dir_entries(dir.path()), ["guest.ram", "vm.state"]);
    };

    // Running: stopped, then running again.
    failed_save(&mut vm);
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(vm.events(), [STOP, RESUME]);
    let p = vm.progress();
    vm.wait_progress(p);

    // Paused: still paused, no event.
    vm.ok(Command::Stop);
    assert_eq!(vm.events(), [STOP]);
    failed_save(&mut vm);
    assert_eq!(vm.state(), RunState::Paused);
    assert_eq!(vm.events(), []);
    vm.ok(Command::Cont);
    assert_eq!(vm.events(), [RESUME]);

    // Suspended: still suspended, no event; the guest wakes and runs on.
    vm.ok(Command::GuestSuspendRam);
    vm.wait_state(RunState::Suspended);
    assert_eq!(vm.events(), [SUSPEND]);
    failed_save(&mut vm);
    assert_eq!(vm.state(), RunState::Suspended);
    assert_eq!(vm.events(), []);
    vm.ok(Command::SystemWakeup);
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(vm.events(), [WAKEUP]);
    let p = vm.progress();
    vm.wait_progress(p);
}

/// A `migrate` that fails once the VM is stopped is status `failed`, with the error in
/// `query-migrate`, and the VM running again (mainline's `migrate_fd_cleanup`); the
/// command itself succeeds, as in QEMU, where the failure comes later.
#[test]
fn failed_migrate_is_status_failed_and_the_guest_runs_on() {
    let Some(scene) = scene("failed_migrate_is_status_failed_and_the_guest_runs_on") else {
        return;
    };
    let (dir, ram, state) = (&scene.dir, &scene.ram, &scene.state);
    let mut vm = Vm::new(args(Some(ram), 1));
    vm.boot();
    vm.cap(MigrationCapability::Events);
    with_file_size_limit(512, || vm.ok(migrate(state)));
    let info = vm.query_migrate();
    assert_eq!(info.status, Some(MigrationStatus::Failed));
    let desc = info.error_desc.expect("error-desc");
    assert!(
        desc.starts_with("Error -27 while saving VM state: "),
        "{desc}"
    );
    assert_eq!(
        vm.events(),
        [
            Event::Migration(MigrationStatus::Setup),
            STOP,
            Event::Migration(MigrationStatus::Active),
            Event::Migration(MigrationStatus::Failed),
            RESUME,
        ]
    );
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(
        dir_entries(dir.path()),
        ["guest.ram"],
        "nothing left behind"
    );
    assert!(ram_held(ram));
    let p = vm.progress();
    vm.wait_progress(p);
}

/// Copy mode (private anonymous RAM, copied into the file): the checkpoint loads when it
/// can be mapped under a read lease, and also when it cannot (someone has it open for
/// writing) and is read instead; either way the guest finds its RAM intact and carries on.
#[test]
fn copied_ram_loads_mapped_or_read() {
    let Some(scene) = scene("copied_ram_loads_mapped_or_read") else {
        return;
    };
    let state = &scene.state;
    let anon = || {
        let mut a = args(None, 1);
        a.mem_share = cpr::config::OnOff::Off;
        // Past the size whose checksum is computed on two threads.
        a.workload_size = Some(cpr::config::Size(12 << 20));
        a
    };
    let cpr_reboot = || {
        Command::MigrateSetParameters(Box::new(SetParameters {
            mode: Some(MigMode::CprReboot),
            ..SetParameters::default()
        }))
    };
    let mut old = Vm::new(anon());
    old.boot();
    old.wait_progress(3 * 4096);
    old.ok(cpr_reboot());
    old.ok(migrate(state));
    let saved = old.progress();
    drop(old);
    assert!(std::fs::metadata(state).expect("checkpoint").len() > 12 << 20);
    for writer_open in [false, true] {
        let writer = writer_open.then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(state)
                .expect("writer")
        });
        let mut new = Vm::incoming_defer(anon());
        new.ok(migrate_incoming(state));
        assert_eq!(new.state(), RunState::Running, "writer open: {writer_open}");
        new.wait_progress(saved);
        drop(writer);
    }
}
