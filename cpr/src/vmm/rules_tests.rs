//! The rules of `cpr-save`, `cpr-load`, `migrate` and `migrate-incoming` that need no
//! machine, checked through the real [`Vmm`] in-process, without KVM: the order of V7's
//! checks, their exact words, and that a refusal changes nothing (run state, events, RAM
//! lock, files). What needs a running guest is in `tests/tests/`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use crate::vmm::MigrationStatus;
use cpr_runstate::RunState;

use super::*;
use crate::config::{Global, Size};

/// What a test changes before the VMM is built.
struct Setup {
    args: VmArgs,
    /// Attach a migratable VFIO test device.
    vfio: bool,
}

/// A VFIO device without hardware.
#[derive(Debug)]
struct TestVfio;

impl cpr_vfio_info::VfioDevice for TestVfio {
    fn name(&self) -> &str {
        "0000:01:00.0"
    }

    fn supports_migration(&self) -> bool {
        true
    }

    fn bytes_transferred(&self) -> u64 {
        0
    }
}

/// A VMM without a machine, in `prelaunch`, its events captured.
fn vmm(ram: Option<&Path>, shared: bool, tweak: impl FnOnce(&mut Setup)) -> (Vmm, Receiver<Event>) {
    let args = VmArgs {
        mem_size: Size(64 << 20),
        mem_path: ram.map(Path::to_path_buf),
        mem_backend: None,
        mem_share: if shared { OnOff::On } else { OnOff::Off },
        smp: 1,
        serial: "none".into(),
        workload_size: None,
        globals: Vec::new(),
    };
    let mut setup = Setup { args, vfio: false };
    tweak(&mut setup);
    let (events, rx) = EventSender::capture();
    let (tx, _rx) = channel_pair();
    let mut vm = Vmm::new(setup.args, events, tx).expect("vmm");
    if setup.vfio {
        vm.attach_vfio(Box::new(TestVfio));
    }
    (vm, rx)
}

fn global(text: &str) -> Global {
    text.parse().expect("global")
}

/// MIGRATION events on.
fn events_on(vm: &mut Vmm) {
    vm.command(Command::MigrateSetCapabilities(vec![CapabilityStatus {
        capability: MigrationCapability::Events,
        state: true,
    }]))
    .expect("events on");
}

fn save(path: &Path) -> Command {
    Command::CprSave(CprSaveArgs {
        filename: path.to_path_buf(),
        mode: CprMode::Reboot,
    })
}

fn load(path: &Path) -> Command {
    Command::CprLoad(CprLoadArgs {
        filename: path.to_path_buf(),
    })
}

/// The error of a refused command, as QMP reports it.
fn refused(vm: &mut Vmm, command: Command) -> String {
    vm.command(command).expect_err("refused").chain()
}

/// Nothing changed: still `prelaunch`, no event, the RAM not held by anyone.
fn unchanged(vm: &Vmm, events: &Receiver<Event>, ram: Option<&Path>) {
    assert_eq!(vm.runstate(), RunState::Prelaunch);
    assert_eq!(events.try_iter().collect::<Vec<_>>(), []);
    if let Some(ram) = ram {
        assert!(
            !is_locked_elsewhere(ram).expect("getlk"),
            "the RAM stays free"
        );
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::Builder::new()
                .prefix("cpr-rules-")
                .tempdir_in("/dev/shm")
                .expect("tempdir"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// V7's cpr-save checks, in order: volatile RAM (1), x-colo (2), then mainline's VFIO rule,
/// then ours (nothing to save). Each configuration has every later fault too, so a swap of
/// two checks shows up as the wrong error.
#[test]
fn cpr_save_checks_come_in_v7_order() {
    let files = Files::new();
    let ram = files.path("guest.ram");
    let state = files.path("vm.state");
    let colo = |s: &mut Setup| s.args.globals.push(global("migration.x-colo=on"));
    let vfio = |s: &mut Setup| s.vfio = true;

    // 1. Anonymous RAM, and a private mapping of a file, are volatile.
    let (mut vm, events) = vmm(None, true, |a| {
        colo(a);
        vfio(a);
    });
    assert_eq!(
        refused(&mut vm, save(&state)),
        "Memory region pc.ram is volatile"
    );
    unchanged(&vm, &events, None);
    let (mut vm, events) = vmm(Some(&ram), false, |a| {
        colo(a);
        vfio(a);
    });
    assert_eq!(
        refused(&mut vm, save(&state)),
        "Memory region pc.ram is volatile"
    );
    unchanged(&vm, &events, Some(&ram));
    drop(vm);

    // 2. x-colo.
    let (mut vm, events) = vmm(Some(&ram), true, |a| {
        colo(a);
        vfio(a);
    });
    assert_eq!(
        refused(&mut vm, save(&state)),
        "cpr-save does not support x-colo"
    );
    unchanged(&vm, &events, Some(&ram));
    drop(vm);

    // (Mainline 9.0) a VFIO device needs a suspended guest.
    let (mut vm, events) = vmm(Some(&ram), true, vfio);
    assert_eq!(
        refused(&mut vm, save(&state)),
        "VFIO device only supports cpr-reboot for runstate suspended"
    );
    unchanged(&vm, &events, Some(&ram));
    drop(vm);

    // Nothing to save: checked before the run state (`prelaunch` could never be loaded
    // either) and before the file is opened (its directory is missing).
    let (mut vm, events) = vmm(Some(&ram), true, |_| {});
    assert_eq!(
        refused(&mut vm, save(&files.path("missing/vm.state"))),
        "cpr-save: the VM was never started, there is no state to save"
    );
    unchanged(&vm, &events, Some(&ram));
    assert_eq!(files.entries(), ["guest.ram"], "nothing was written");
}

/// V7's cpr-load checks, in order, before any machine exists: (ours) the RAM lock, then
/// open (2), then magic and version (3), then the stream (5). A refused load leaves the
/// process in `prelaunch` without the RAM, ready for a good file.
#[test]
fn cpr_load_checks_come_in_v7_order() {
    let files = Files::new();
    let ram = files.path("guest.ram");
    let (mut old, _old_events) = vmm(Some(&ram), true, |_| {});
    let (mut new, events) = vmm(Some(&ram), true, |_| {});
    let missing = files.path("missing.state");

    // The RAM is another process's (the old one could still run a guest on it): refused
    // before the file is even opened.
    old.rs
        .machine_mut()
        .ram
        .acquire()
        .expect("old holds the RAM");
    assert_eq!(
        refused(&mut new, load(&missing)),
        format!(
            "RAM file {} (pc.ram) is in use by another process, which runs or can run a guest on it",
            ram.display()
        )
    );
    assert_eq!(new.runstate(), RunState::Prelaunch);
    old.rs.machine_mut().ram.release();

    // 2. Open.
    assert_eq!(
        refused(&mut new, load(&missing)),
        format!(
            "cannot open checkpoint file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    unchanged(&new, &events, Some(&ram));

    // 3. Magic and version: an empty file, a text file, QEVM of another version.
    let bad = files.path("bad.state");
    let not_vmstate = format!("{} is not a vmstate file", bad.display());
    for bytes in [
        &b""[..],
        b"QEMU is great\n",
        b"QEVM\0\0\0\x02",
        b"QEVM\0\0\0\x04",
    ] {
        std::fs::write(&bad, bytes).expect("write");
        assert_eq!(refused(&mut new, load(&bad)), not_vmstate, "{bytes:?}");
        unchanged(&new, &events, Some(&ram));
    }

    // 5. A good header and nothing after it: the stream is read and refused as a whole.
    std::fs::write(&bad, b"QEVM\0\0\0\x03").expect("write");
    let err = refused(&mut new, load(&bad));
    assert!(
        err.starts_with("Error -22 while loading VM state: "),
        "{err}"
    );
    unchanged(&new, &events, Some(&ram));

    // The old process can take its RAM back: nothing of the new one's refusals holds it.
    old.rs.machine_mut().ram.acquire().expect("free again");
}

/// Mainline's incoming side without a machine: `migrate-incoming` only after `--incoming
/// defer`, and a failed load is status `failed` (with its error in `query-migrate`), the
/// events `setup`, `active`, `failed`, the VM still waiting in `inmigrate`, ready for
/// another try.
#[test]
fn migrate_incoming_failure_is_reported_and_can_be_retried() {
    let files = Files::new();
    let ram = files.path("guest.ram");
    let (mut vm, events) = vmm(Some(&ram), true, |_| {});
    events_on(&mut vm);
    let incoming = |path: &Path| {
        Command::MigrateIncoming(MigrateIncomingArgs {
            target: FileTarget::from_uri(&format!("file:{}", path.display()))
                .map(MigrationAddress::from),
            exit_on_error: None,
        })
    };
    let missing = files.path("missing.state");
    assert_eq!(
        refused(&mut vm, incoming(&missing)),
        "'-incoming' was not specified on the command line"
    );
    unchanged(&vm, &events, Some(&ram));
    let Ok(Response::Migration(info)) = vm.command(Command::QueryMigrate) else {
        panic!("query-migrate");
    };
    assert_eq!(info.status, None, "no migration yet");

    vm.start(true, Some(&Incoming::Defer)).expect("defer");
    assert_eq!(vm.runstate(), RunState::Inmigrate);
    let want = format!(
        "cannot open checkpoint file {}: No such file or directory (os error 2)",
        missing.display()
    );
    for _ in 0..2 {
        assert_eq!(refused(&mut vm, incoming(&missing)), want);
        assert_eq!(
            events.try_iter().collect::<Vec<_>>(),
            [
                Event::Migration(MigrationStatus::Setup),
                Event::Migration(MigrationStatus::Active),
                Event::Migration(MigrationStatus::Failed),
            ]
        );
        let Ok(Response::Migration(info)) = vm.command(Command::QueryMigrate) else {
            panic!("query-migrate");
        };
        assert_eq!(info.status, Some(MigrationStatus::Failed));
        assert_eq!(info.error_desc.as_deref(), Some(want.as_str()));
        assert_eq!(vm.runstate(), RunState::Inmigrate);
        assert!(!is_locked_elsewhere(&ram).expect("getlk"));
    }

    // `--incoming file:` at start-up fails the same way, as the start-up's error.
    let (mut vm, events) = vmm(Some(&ram), true, |_| {});
    events_on(&mut vm);
    let err = vm
        .start(
            false,
            Some(&Incoming::File {
                path: missing.clone(),
                offset: 0,
            }),
        )
        .expect_err("no file");
    assert_eq!(err.chain(), want);
    assert_eq!(vm.runstate(), RunState::Inmigrate);
    assert_eq!(
        events.try_iter().last(),
        Some(Event::Migration(MigrationStatus::Failed))
    );
}

/// `migrate`'s refusals before a machine exists, in mainline's order: `resume`, then the
/// run state, then the target; nothing is written and no status is set.
#[test]
fn migrate_refusals_come_before_the_target() {
    let files = Files::new();
    let ram = files.path("guest.ram");
    let (mut vm, events) = vmm(Some(&ram), true, |s| {
        s.args.globals.push(global("migration.mode=cpr-reboot"));
        s.args.globals.push(global("migration.x-colo=on"));
    });
    events_on(&mut vm);
    let state = files.path("vm.state");
    let migrate = |target: MigrationTarget, resume: bool| {
        Command::Migrate(MigrateArgs {
            cpr: None,
            target,
            detach: None,
            resume,
        })
    };
    let uri = format!("file:{}", state.display());
    assert_eq!(
        refused(
            &mut vm,
            migrate(FileTarget::from_uri(&uri).map(MigrationAddress::from), true)
        ),
        "Cannot resume if there is no paused migration"
    );
    assert_eq!(
        refused(&mut vm, migrate(Err(TargetError::NeedUriOrChannels), false)),
        "migrate: the VM was never started, there is no state to migrate"
    );
    unchanged(&vm, &events, Some(&ram));
    let Ok(Response::Migration(info)) = vm.command(Command::QueryMigrate) else {
        panic!("query-migrate");
    };
    assert_eq!(info.status, None);
    assert_eq!(files.entries(), ["guest.ram"]);
}
