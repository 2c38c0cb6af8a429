//! End-to-end scenarios for the mainline QEMU interface (8.2+): `migrate-set-capabilities`,
//! `migrate-set-parameters {mode: cpr-reboot}`, `migrate file:`, `--incoming defer`,
//! `migrate-incoming`, across a real process restart, with RAM in place
//! (`x-ignore-shared`) or copied into the file.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use cpr_harness::VmFiles;
use cpr_harness::{HarnessError, VmProcess};
use serde_json::{Value, json};

use crate::e2e::{
    Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail, generation,
    wait_generation,
};

/// How the guest is when the migration starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestState {
    /// Running.
    Running,
    /// Paused with `stop`.
    Paused,
    /// Suspended with `guest-suspend-ram`.
    Suspended,
}

/// Brings a running guest into `state`: `stop` (paused) or `guest-suspend-ram`.
pub fn put_in_state(vm: &mut VmProcess, state: GuestState) -> Result<(), HarnessError> {
    match state {
        GuestState::Running => {}
        GuestState::Paused => {
            vm.execute("stop", json!({}))?;
            vm.wait_event("STOP", WAIT)?;
        }
        GuestState::Suspended => {
            vm.execute("guest-suspend-ram", json!({}))?;
            vm.wait_event("SUSPEND", WAIT)?;
        }
    }
    Ok(())
}

/// Sets the capabilities and mode on one side.
fn configure(vm: &mut VmProcess, ignore_shared: bool) -> Result<(), HarnessError> {
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "x-ignore-shared", "state": ignore_shared},
        ]}),
    )?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let params = vm.execute("query-migrate-parameters", json!({}))?;
    if params["mode"] != "cpr-reboot" {
        return Err(fail(format!("query-migrate-parameters: {params}")));
    }
    let caps = vm.execute("query-migrate-capabilities", json!({}))?;
    let on = caps.as_array().is_some_and(|list| {
        list.iter()
            .any(|c| c["capability"] == "x-ignore-shared" && c["state"] == json!(ignore_shared))
    });
    if !on {
        return Err(fail(format!("query-migrate-capabilities: {caps}")));
    }
    Ok(())
}

/// Polls `query-migrate` until `completed` (or fails on `failed`).
fn wait_completed(vm: &mut VmProcess) -> Result<Value, HarnessError> {
    vm.wait_migration_completed(WAIT)
}

/// The MIGRATION statuses seen, in order.
fn migration_events(vm: &mut VmProcess) -> Result<Vec<String>, HarnessError> {
    Ok(vm
        .events()?
        .into_iter()
        .filter(|e| e.event == "MIGRATION")
        .filter_map(|e| {
            e.data
                .and_then(|d| d["status"].as_str().map(str::to_string))
        })
        .collect())
}

/// One mainline cpr-reboot across a process restart.
pub fn cycle(binary: &Path, state: GuestState, ignore_shared: bool) -> Outcome {
    let name = format!(
        "mainline-{state:?}-{}",
        if ignore_shared { "inplace" } else { "copy" }
    );
    let dir = Scratch::new(&name)?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    // Let the workload fill its region with a pattern first, so the copy carries data.
    wait_generation(&mut vm, 2)?;
    put_in_state(&mut vm, state)?;
    let before = vm.progress()?;
    configure(&mut vm, ignore_shared)?;
    let _ = vm.events()?;
    let uri = format!("file:{}", files.state.display());
    vm.execute("migrate", json!({"uri": uri}))?;
    let info = wait_completed(&mut vm)?;
    let statuses = migration_events(&mut vm)?;
    if statuses != ["setup", "active", "completed"] {
        return Err(fail(format!("source MIGRATION events: {statuses:?}")));
    }
    expect_status(&mut vm, "postmigrate")?;
    vm.quit()?;
    let size = std::fs::metadata(&files.state).map_or(0, |m| m.len());
    // RAM copied: give the new process fresh, anonymous RAM, so only the file can bring the
    // guest's memory back. In place: the same RAM file.
    let mut dest_args: Vec<OsString> = if ignore_shared {
        args.clone()
    } else {
        let mut a = files.args("256M", 1, &[]);
        let i = a.iter().position(|x| x == "--mem-path").unwrap_or(0);
        a.drain(i..i + 2);
        a
    };
    dest_args.push("--incoming".into());
    dest_args.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &dest_args, &files.qmp, None)?;
    expect_status(&mut vm, "inmigrate")?;
    configure(&mut vm, ignore_shared)?;
    vm.execute(
        "migrate-incoming",
        json!({"channels": [{"channel-type": "main",
            "addr": {"transport": "file", "filename": files.state, "offset": 0}}]}),
    )?;
    wait_completed(&mut vm)?;
    match state {
        GuestState::Running => {
            expect_status(&mut vm, "running")?;
        }
        GuestState::Paused => {
            expect_status(&mut vm, "paused")?;
            std::thread::sleep(Duration::from_millis(30));
            if vm.progress()?.progress > before.progress {
                return Err(fail("a paused guest ran after migrate-incoming"));
            }
            vm.execute("cont", json!({}))?;
            vm.wait_event("RESUME", WAIT)?;
        }
        GuestState::Suspended => {
            vm.wait_event("RESUME", WAIT)?;
            expect_status(&mut vm, "suspended")?;
            std::thread::sleep(Duration::from_millis(30));
            if vm.progress()?.progress > before.progress {
                return Err(fail("a suspended guest ran before system_wakeup"));
            }
            vm.execute("system_wakeup", json!({}))?;
            vm.wait_event("WAKEUP", WAIT)?;
            expect_status(&mut vm, "running")?;
        }
    }
    check_carried_on(&mut vm, &before)?;
    // Two more generations: every page written before the migration was checked.
    wait_generation(&mut vm, generation(&before) + 2)?;
    vm.quit()?;
    Ok(format!(
        "{} bytes in the file, source {} MiB transferred, guest carried on",
        size,
        info["ram"]["transferred"].as_u64().unwrap_or(0) >> 20
    ))
}

/// The mainline refusals: options incompatible with CPR, VFIO without a suspended guest,
/// `migrate-incoming` without `--incoming`, unsupported URIs.
pub fn refusals(binary: &Path) -> Outcome {
    let dir = Scratch::new("mainline-refusals")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &["--x-vfio-test-device", "vfio-test0"]);
    let mut vm = boot(binary, &files, &args)?;
    let uri = format!("file:{}", files.state.display());
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let mut seen = Vec::new();
    for (cap, want) in [
        ("postcopy-ram", "Cannot use postcopy with CPR"),
        (
            "background-snapshot",
            "Cannot use background snapshot with CPR",
        ),
        ("x-colo", "Cannot use COLO with CPR"),
    ] {
        vm.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": cap, "state": true}]}),
        )?;
        let desc = vm.execute_err("migrate", json!({"uri": uri}))?;
        if desc != want {
            return Err(fail(format!("{cap}: {desc}")));
        }
        vm.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": cap, "state": false}]}),
        )?;
        seen.push(cap);
    }
    let desc = vm.execute_err("migrate", json!({"uri": uri}))?;
    if desc != "VFIO device only supports cpr-reboot for runstate suspended" {
        return Err(fail(format!("VFIO: {desc}")));
    }
    expect_status(&mut vm, "running")?;
    let desc = vm.execute_err("migrate", json!({"uri": "tcp:127.0.0.1:4444"}))?;
    if !desc.starts_with("unknown migration protocol") {
        return Err(fail(format!("tcp: {desc}")));
    }
    let desc = vm.execute_err("migrate-incoming", json!({"uri": uri}))?;
    if desc != "'-incoming' was not specified on the command line" {
        return Err(fail(format!("migrate-incoming: {desc}")));
    }
    // With the guest suspended, VFIO allows cpr-reboot.
    vm.execute("guest-suspend-ram", json!({}))?;
    vm.wait_event("SUSPEND", WAIT)?;
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    )?;
    vm.execute("migrate", json!({"uri": uri}))?;
    wait_completed(&mut vm)?;
    vm.quit()?;
    Ok(format!(
        "{} refused with CPR, VFIO refused until suspended, bad URI and stray migrate-incoming refused",
        seen.join("/")
    ))
}

/// The README's start-up row: `--incoming file:` loads an in-place stream, with the
/// capability and mode set by `--global`, as QEMU users set them with `-global`.
pub fn incoming_with_globals(binary: &Path) -> Outcome {
    let dir = Scratch::new("mainline-globals")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    configure(&mut vm, true)?;
    let before = vm.progress()?;
    let uri = format!("file:{}", files.state.display());
    vm.execute("migrate", json!({"uri": uri}))?;
    wait_completed(&mut vm)?;
    vm.quit()?;
    let mut dest_args = args.clone();
    for a in [
        "--global",
        "migration.x-ignore-shared=on",
        "--global",
        "migration.mode=cpr-reboot",
        "--incoming",
        &uri,
    ] {
        dest_args.push(a.into());
    }
    let mut vm = VmProcess::spawn(binary, &dest_args, &files.qmp, None)?;
    expect_status(&mut vm, "running")?;
    let params = vm.execute("query-migrate-parameters", json!({}))?;
    if params["mode"] != "cpr-reboot" {
        return Err(fail(format!("--global mode not set: {params}")));
    }
    let after = check_carried_on(&mut vm, &before)?;
    wait_generation(&mut vm, generation(&after) + 2)?;
    vm.quit()?;
    Ok("an in-place stream loaded at start-up with --global; guest carried on".into())
}
