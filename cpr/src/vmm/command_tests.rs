//! The typed command interface of [`Vmm`] without KVM: parameters and `--global`, the
//! VFIO forward, and QEMU's refusals before the guest runs, in QEMU's order.

use clap::Parser;

use super::*;

/// The machine options alone, as a command line.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    vm: VmArgs,
}

/// A migratable VFIO device that is not there (none can be bound yet).
#[derive(Debug)]
struct TestVfioDevice;

impl VfioDevice for TestVfioDevice {
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

/// A VMM without a machine (no KVM needed): anonymous RAM, in `prelaunch`.
fn vmm(extra: &[&str]) -> Result<Vmm> {
    let mut argv = vec!["cpr-vm", "--mem-size", "64M", "--serial", "none"];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).expect("command line");
    let (tx, _rx) = channel_pair();
    Vmm::new(cli.vm, EventSender::noop(), tx)
}

fn parameters(vm: &mut Vmm) -> MigrationParameters {
    match vm.command(Command::QueryMigrateParameters) {
        Ok(Response::MigrationParameters(p)) => p,
        other => panic!("query-migrate-parameters: {other:?}"),
    }
}

fn set_x_colo(vm: &mut Vmm) {
    vm.command(Command::MigrateSetCapabilities(vec![CapabilityStatus {
        capability: MigrationCapability::XColo,
        state: true,
    }]))
    .expect("set x-colo");
}

/// `cpr`'s own `vfio` feature must reach `cpr-vfio-info` (V7 patch 2): `cpr-vm
/// --features vfio` relies on this forward, and CI runs this test with `-p cpr
/// --features vfio` alone, so no other crate's feature can stand in for it.
#[test]
fn query_migrate_carries_vfio_exactly_with_cprs_feature() {
    assert_eq!(cpr_vfio_info::VFIO_COMPILED_IN, cfg!(feature = "vfio"));
    let mut vm = vmm(&[]).expect("vmm");
    vm.attach_vfio(Box::new(TestVfioDevice));
    let Response::Migration(info) = vm.command(Command::QueryMigrate).expect("query-migrate")
    else {
        panic!("query-migrate answers MigrationInfo");
    };
    assert_eq!(
        info.vfio.is_some(),
        cfg!(feature = "vfio"),
        "query-migrate: {info:?}"
    );
}

#[test]
fn migrate_set_parameters_refuses_out_of_range_values() {
    let mut vm = vmm(&[]).expect("vmm");
    for (bad, want) in [
        (
            SetParameters {
                downtime_limit: Some(u64::MAX),
                ..SetParameters::default()
            },
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
        ),
        (
            SetParameters {
                announce_max: Some(u64::MAX),
                mode: Some(MigMode::CprReboot),
                ..SetParameters::default()
            },
            "Parameter 'announce_max' expects a value between 0 and 100000",
        ),
    ] {
        let err = vm
            .command(Command::MigrateSetParameters(Box::new(bad)))
            .expect_err("out of range");
        assert_eq!(err.chain(), want);
    }
    let q = parameters(&mut vm);
    assert_eq!((q.downtime_limit, q.announce_max), (300, 550));
    assert_eq!(q.mode, MigMode::Normal, "a refused call changes nothing");
}

#[test]
fn globals_set_capabilities_and_parameters_at_start_up() {
    let mut vm = vmm(&[
        "--global",
        "migration.x-ignore-shared=on",
        "--global",
        "migration.mode=cpr-reboot",
        "--global",
        "migration.x-downtime-limit=1000",
    ])
    .expect("vmm");
    assert!(vm.migration.cap(MigrationCapability::XIgnoreShared));
    assert_eq!(vm.migration.mode(), MigMode::CprReboot);
    assert_eq!(parameters(&mut vm).downtime_limit, 1000);
    for (bad, want) in [
        (
            "migration.x-frob=1",
            "can't apply global migration.x-frob=1: Property 'migration.x-frob' not found",
        ),
        (
            "machine.mode=cpr-reboot",
            "can't apply global machine.mode=cpr-reboot: Property 'machine.mode' not found",
        ),
        (
            "migration.x-ignore-shared=maybe",
            "can't apply global migration.x-ignore-shared=maybe: 'maybe' is not a boolean (use 'on' or 'off', 'yes' or 'no', 'true' or 'false')",
        ),
        (
            "migration.mode=cpr-luo",
            "can't apply global migration.mode=cpr-luo: Parameter 'mode' does not accept value 'cpr-luo'",
        ),
        (
            "migration.x-downtime-limit=9999999",
            "can't apply global migration.x-downtime-limit=9999999: Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
        ),
    ] {
        let err = vmm(&["--global", bad]).expect_err(bad);
        assert_eq!(err.chain(), want);
    }
}

/// The typed interface, without KVM: QEMU's refusals, in QEMU's order.
#[test]
fn commands_before_the_guest_runs() {
    let mut vm = vmm(&[]).expect("vmm");
    let err = |vm: &mut Vmm, c: Command| vm.command(c).expect_err("refused").chain();
    assert_eq!(
        vm.command(Command::QueryStatus).ok(),
        Some(Response::Status(cpr_runstate::StatusInfo::new(
            RunState::Prelaunch
        )))
    );
    let migrate = |uri: &str, resume: bool| {
        Command::Migrate(MigrateArgs {
            cpr: None,
            target: FileTarget::from_uri(uri).map(MigrationAddress::from),
            detach: None,
            resume,
        })
    };
    assert_eq!(
        err(&mut vm, migrate("file:/x", true)),
        "Cannot resume if there is no paused migration"
    );
    // A bad target is reported after the run-state checks, as QEMU does.
    assert_eq!(
        err(&mut vm, migrate("tcp:1.2.3.4:5", false)),
        "migrate: the VM was never started, there is no state to migrate"
    );
    let incoming = |uri: &str| {
        Command::MigrateIncoming(MigrateIncomingArgs {
            target: FileTarget::from_uri(uri).map(MigrationAddress::from),
            exit_on_error: None,
        })
    };
    assert_eq!(
        err(&mut vm, incoming("tcp:1.2.3.4:5")),
        "'-incoming' was not specified on the command line"
    );
    assert_eq!(
        err(
            &mut vm,
            Command::GuestFault(crate::machine::GuestFault::Panic)
        ),
        "x-guest-fault: the guest is not running"
    );
    assert_eq!(
        err(&mut vm, Command::GuestSuspendRam),
        "guest-suspend-ram: the guest is not running"
    );
    vm.command(Command::MigrateSetCapabilities(vec![CapabilityStatus {
        capability: MigrationCapability::Events,
        state: true,
    }]))
    .expect("set events");
    let Ok(Response::MigrationCapabilities(caps)) = vm.command(Command::QueryMigrateCapabilities)
    else {
        panic!("query-migrate-capabilities");
    };
    assert_eq!(caps.len(), MigrationCapability::ALL.len());
    let on: Vec<_> = caps
        .iter()
        .filter(|c| c.state)
        .map(|c| c.capability)
        .collect();
    assert_eq!(on, [MigrationCapability::Events]);
    assert!(!vm.should_quit());
    assert_eq!(vm.command(Command::Quit).ok(), Some(Response::Empty));
    assert!(vm.should_quit());
}

/// `--incoming defer`: `migrate` is refused while waiting, and a bad target of
/// `migrate-incoming` is reported once the state allows it.
#[test]
fn commands_while_waiting_for_an_incoming_migration() {
    let mut vm = vmm(&[]).expect("vmm");
    vm.start(true, Some(&Incoming::Defer)).expect("defer");
    assert_eq!(vm.runstate(), RunState::Inmigrate);
    let err = |vm: &mut Vmm, c: Command| vm.command(c).expect_err("refused").chain();
    assert_eq!(
        err(
            &mut vm,
            Command::Migrate(MigrateArgs {
                cpr: None,
                target: FileTarget::from_uri("file:/x").map(MigrationAddress::from),
                detach: Some(true),
                resume: false,
            })
        ),
        "Guest is waiting for an incoming migration"
    );
    assert_eq!(
        err(
            &mut vm,
            Command::MigrateIncoming(MigrateIncomingArgs {
                target: Err(TargetError::NeedUriOrChannels),
                exit_on_error: None,
            })
        ),
        "need either 'uri' or 'channels' argument"
    );
    assert_eq!(vm.runstate(), RunState::Inmigrate, "nothing changed");
}

#[test]
fn cpr_save_refuses_x_colo_first() {
    let mut vm = vmm(&[]).expect("vmm");
    set_x_colo(&mut vm);
    // Anonymous RAM is volatile (step 1): file-backed RAM reaches step 2.
    let dir = tempfile::tempdir().expect("tempdir");
    let ram = dir.path().join("guest.ram");
    let ram = ram.to_str().expect("utf-8");
    let mut vm2 = vmm(&["--mem-path", ram]).expect("vmm");
    set_x_colo(&mut vm2);
    let state = dir.path().join("vm.state");
    let save = || {
        Command::CprSave(CprSaveArgs {
            filename: state.clone(),
            mode: CprMode::Reboot,
        })
    };
    let err = vm2.command(save()).expect_err("x-colo");
    assert_eq!(err.chain(), "cpr-save does not support x-colo");
    assert!(!state.exists(), "nothing was written");
    let err = vm.command(save()).expect_err("volatile first");
    assert_eq!(err.chain(), "Memory region pc.ram is volatile");
}
