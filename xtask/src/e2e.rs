//! `cargo xtask e2e`: real `cpr-vm` processes, driven over QMP, one line per scenario.
//!
//! Every scenario starts its own VM(s) in a fresh directory under /dev/shm, and checks the
//! guest itself after each restore: its progress continues from the saved value (never
//! from zero), its timer ticks keep arriving, and its RAM check finds nothing wrong.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cpr_harness::{VmFiles, cycle};

use crate::e2e_files::{killed_saves, planted_symlinks, ram_target};
use crate::e2e_inspect as inspect;
use crate::e2e_mainline::{self as mainline, GuestState};
use crate::e2e_monitor::{guest_failures, restart_on_reply, serial_mode};
use crate::e2e_ownership as ownership;
use crate::e2e_qemu_tools::analyze_migration;
use crate::e2e_refusals::{disk_full, epochs, failed_saves, hostile_files};
use crate::e2e_transfer as transfer;
use cpr_harness::{HarnessError, Progress, VmProcess};
use serde_json::json;

pub type Outcome = Result<String, HarnessError>;
type Scenario<'a> = (&'static str, Box<dyn Fn() -> Outcome + 'a>);

pub fn fail(msg: impl Into<String>) -> HarnessError {
    HarnessError::Check(msg.into())
}

pub const WAIT: Duration = Duration::from_secs(20);

/// A scenario's private directory, removed afterwards.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Result<Scratch, HarnessError> {
        let dir = PathBuf::from(format!("/dev/shm/cpr-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots a VM and waits until its workload and timer are both visibly running.
pub fn boot(binary: &Path, files: &VmFiles, args: &[OsString]) -> Result<VmProcess, HarnessError> {
    let mut vm = VmProcess::spawn(binary, args, &files.qmp, None)?;
    vm.wait_progress(0, Some(5), WAIT)?;
    Ok(vm)
}

/// The guest checks after a restore: progress carried on from `before`, ticks keep
/// arriving, no RAM errors.
pub fn check_carried_on(vm: &mut VmProcess, before: &Progress) -> Result<Progress, HarnessError> {
    // The guest's first report in this process: a guest that restarted from zero (or from
    // an older checkpoint) reports less than it had done before the save.
    let after = vm.wait_new_report(WAIT)?;
    if after.progress < before.progress || generation(&after) < generation(before) {
        return Err(fail(format!(
            "progress restarted: {} (generation {}) before the save, {} (generation {}) after",
            before.progress,
            generation(before),
            after.progress,
            generation(&after)
        )));
    }
    let ticking = vm.wait_progress(after.progress, Some(after.ticks.max(before.ticks)), WAIT)?;
    if ticking.errors > 0 {
        return Err(fail(format!(
            "the guest's RAM check found {} errors",
            ticking.errors
        )));
    }
    Ok(ticking)
}

/// Waits until every vCPU's workload generation reaches `gen`; the workload checks each
/// generation's pattern while writing the next, so two generations past a restore mean
/// every page of the workload region was checked since.
pub fn wait_generation(vm: &mut VmProcess, target: u64) -> Result<Progress, HarnessError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = vm.progress()?;
        if p.errors > 0 {
            return Err(fail(format!(
                "the guest's RAM check found {} errors",
                p.errors
            )));
        }
        if !p.vcpus.is_empty() && p.vcpus.iter().all(|v| v.generation >= target) {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "workload did not reach generation {target}: {p:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lowest generation any vCPU is in.
pub fn generation(p: &Progress) -> u64 {
    p.vcpus.iter().map(|v| v.generation).min().unwrap_or(0)
}

pub fn expect_status(vm: &mut VmProcess, want: &str) -> Result<(), HarnessError> {
    let got = vm.status()?;
    if got == want {
        Ok(())
    } else {
        Err(fail(format!("status is {got}, expected {want}")))
    }
}

/// (1) A running guest through `cycles` save/quit/start/load cycles.
fn running_cycles(binary: &Path, cycles: u32) -> Outcome {
    let dir = Scratch::new("running")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    let mut blackouts = Vec::new();
    for n in 1..=cycles {
        let (mut next, c) = cycle(binary, vm, &files, &args)?;
        expect_status(&mut next, "running")?;
        check_carried_on(&mut next, &c.before).map_err(|e| fail(format!("cycle {n}: {e}")))?;
        blackouts.push(c.blackout);
        vm = next;
    }
    // Every page of the workload region checked since the last restore.
    let now = vm.progress()?;
    wait_generation(&mut vm, generation(&now) + 2)?;
    vm.quit()?;
    blackouts.sort();
    let median = blackouts[blackouts.len() / 2];
    Ok(format!(
        "{cycles} cycles, progress carried on each time, median blackout {:.1} ms",
        median.as_secs_f64() * 1e3
    ))
}

/// (2) A suspended guest comes back suspended and wakes with RESUME then WAKEUP.
fn suspended(binary: &Path) -> Outcome {
    let dir = Scratch::new("suspended")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    vm.execute("guest-suspend-ram", json!({}))?;
    vm.wait_event("SUSPEND", WAIT)?;
    expect_status(&mut vm, "suspended")?;
    let frozen = vm.progress()?;
    std::thread::sleep(Duration::from_millis(50));
    if vm.progress()?.progress != frozen.progress {
        return Err(fail("a suspended guest kept running"));
    }
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    expect_status(&mut vm, "suspended")?;
    vm.quit()?;
    let mut s_args = args.clone();
    s_args.push("-S".into());
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    expect_status(&mut vm, "prelaunch")?;
    vm.execute("cpr-load", json!({"filename": files.state}))?;
    expect_status(&mut vm, "suspended")?;
    std::thread::sleep(Duration::from_millis(50));
    if vm.progress()?.progress > frozen.progress {
        return Err(fail("the loaded guest ran before system_wakeup"));
    }
    vm.execute("system_wakeup", json!({}))?;
    let resume = vm.wait_event("RESUME", WAIT)?;
    let wakeup = vm.wait_event("WAKEUP", WAIT)?;
    let (r, w) = (resume.timestamp, wakeup.timestamp);
    if (r.seconds, r.microseconds) > (w.seconds, w.microseconds) {
        return Err(fail("WAKEUP came before RESUME"));
    }
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &frozen)?;
    vm.quit()?;
    Ok("suspended after load, system_wakeup gave RESUME then WAKEUP, progress resumed".into())
}

/// (3) A paused VM stays paused after load; cont resumes it.
fn paused(binary: &Path) -> Outcome {
    let dir = Scratch::new("paused")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    vm.execute("stop", json!({}))?;
    vm.wait_event("STOP", WAIT)?;
    let before = vm.progress()?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    expect_status(&mut vm, "paused")?;
    vm.quit()?;
    let mut s_args = args.clone();
    s_args.push("-S".into());
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    vm.execute("cpr-load", json!({"filename": files.state}))?;
    expect_status(&mut vm, "paused")?;
    std::thread::sleep(Duration::from_millis(50));
    if vm.progress()?.progress > before.progress {
        return Err(fail("a paused guest ran after load"));
    }
    vm.execute("cont", json!({}))?;
    vm.wait_event("RESUME", WAIT)?;
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    vm.quit()?;
    Ok("stayed paused after load, cont resumed it".into())
}

/// (4) Anonymous RAM: cpr-save refuses, the guest keeps running.
fn volatile(binary: &Path) -> Outcome {
    let dir = Scratch::new("volatile")?;
    let qmp = dir.0.join("qmp.sock");
    let state = dir.0.join("vm.state");
    let args: Vec<OsString> = ["--mem-size", "128M", "--qmp"]
        .iter()
        .map(OsString::from)
        .chain([qmp.clone().into_os_string()])
        .chain(["--serial", "none"].iter().map(OsString::from))
        .collect();
    let mut vm = VmProcess::spawn(binary, &args, &qmp, None)?;
    let before = vm.wait_progress(0, Some(2), WAIT)?;
    let desc = vm.execute_err("cpr-save", json!({"filename": state, "mode": "reboot"}))?;
    if desc != "Memory region pc.ram is volatile" {
        return Err(fail(format!("unexpected error: {desc}")));
    }
    if state.exists() {
        return Err(fail("a refused cpr-save left a state file"));
    }
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    vm.quit()?;
    Ok(format!("refused with \"{desc}\", guest kept running"))
}

/// (4b) Persistence: RAM in /dev/shm is named in cpr-save's warnings; RAM on a disk file is
/// made durable and needs no warning.
fn persistence(binary: &Path) -> Outcome {
    let shm = Scratch::new("persist-shm")?;
    let disk = PathBuf::from(format!("/var/tmp/cpr-e2e-{}-persist", std::process::id()));
    let _ = std::fs::remove_dir_all(&disk);
    std::fs::create_dir_all(&disk).map_err(|e| fail(e.to_string()))?;
    let disk_guard = Scratch(disk.clone());
    let mut details = Vec::new();
    for (dir, survives) in [(&shm.0, false), (&disk_guard.0, true)] {
        let files = VmFiles::in_dir(dir);
        let mut vm = boot(binary, &files, &files.args("128M", 1, &[]))?;
        let q = vm.execute("query-ram-persistence", json!({}))?;
        let block = &q[0];
        if block["survives-host-reboot"] != json!(survives) {
            return Err(fail(format!("{}: persistence {block}", dir.display())));
        }
        let reply = vm.execute(
            "cpr-save",
            json!({"filename": files.state, "mode": "reboot"}),
        )?;
        let warned = reply.get("warnings").is_some();
        if warned == survives {
            return Err(fail(format!("{}: cpr-save replied {reply}", dir.display())));
        }
        vm.quit()?;
        details.push(format!(
            "{}: {}",
            if survives { "disk" } else { "tmpfs" },
            block["persistence"].as_str().unwrap_or("?")
        ));
    }
    Ok(format!(
        "{} (tmpfs named in cpr-save's warnings)",
        details.join(", ")
    ))
}

/// (6) `--incoming <file>` loads at start-up.
fn incoming(binary: &Path) -> Outcome {
    let dir = Scratch::new("incoming")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    let before = vm.progress()?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    vm.quit()?;
    let mut in_args = args.clone();
    in_args.push("--incoming".into());
    in_args.push(files.state.clone().into());
    let t = Instant::now();
    let mut vm = VmProcess::spawn(binary, &in_args, &files.qmp, None)?;
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    let took = t.elapsed();
    vm.quit()?;
    Ok(format!(
        "--incoming resumed the guest ({:.1} ms from spawn to carried-on checks)",
        took.as_secs_f64() * 1e3
    ))
}

/// (7) Two vCPUs: both carry on.
fn two_vcpus(binary: &Path) -> Outcome {
    let dir = Scratch::new("smp2")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 2, &[]);
    let vm = boot(binary, &files, &args)?;
    let (mut vm, c) = cycle(binary, vm, &files, &args)?;
    let after = check_carried_on(&mut vm, &c.before)?;
    if after.vcpus.len() != 2 {
        return Err(fail(format!("{} vCPUs report", after.vcpus.len())));
    }
    // Each vCPU's own counters carried on, then each completed two more generations.
    for (i, (b, a)) in c.before.vcpus.iter().zip(&after.vcpus).enumerate() {
        if a.progress < b.progress || a.generation < b.generation {
            return Err(fail(format!("vCPU {i} went back: {b:?} -> {a:?}")));
        }
    }
    wait_generation(&mut vm, generation(&after) + 2)?;
    vm.quit()?;
    Ok("both vCPUs carried on".into())
}

/// Runs every scenario (or those whose name contains `only`); returns (passed, failed,
/// skipped).
pub fn run(binary: &Path, cycles: u32, only: Option<&str>) -> (u64, u64, u64) {
    let mut scenarios: Vec<Scenario<'_>> = vec![
        (
            "running guest, save/quit/start/load cycles",
            Box::new(move || running_cycles(binary, cycles)),
        ),
        ("suspended guest", Box::new(move || suspended(binary))),
        ("paused guest", Box::new(move || paused(binary))),
        (
            "anonymous RAM is volatile",
            Box::new(move || volatile(binary)),
        ),
        ("RAM persistence", Box::new(move || persistence(binary))),
        (
            "failed saves and odd targets",
            Box::new(move || failed_saves(binary)),
        ),
        (
            "disk full during cpr-save",
            Box::new(move || disk_full(binary)),
        ),
        ("checkpoint epochs", Box::new(move || epochs(binary))),
        (
            "hostile state files",
            Box::new(move || hostile_files(binary)),
        ),
        (
            "files: symlinks planted by another user",
            Box::new(move || planted_symlinks(binary)),
        ),
        (
            "files: killed saves and planted temporary names",
            Box::new(move || killed_saves(binary)),
        ),
        (
            "files: the VM's own RAM as the target",
            Box::new(move || ram_target(binary)),
        ),
        ("--incoming", Box::new(move || incoming(binary))),
        ("two vCPUs", Box::new(move || two_vcpus(binary))),
        (
            "monitor: new process on quit's reply",
            Box::new(move || restart_on_reply(binary, 20)),
        ),
        (
            "monitor: serial file mode",
            Box::new(move || serial_mode(binary)),
        ),
        (
            "monitor: guest failures and exit statuses",
            Box::new(move || guest_failures(binary)),
        ),
        (
            "mainline: running guest, RAM in place",
            Box::new(move || mainline::cycle(binary, GuestState::Running, true)),
        ),
        (
            "mainline: running guest, RAM copied",
            Box::new(move || mainline::cycle(binary, GuestState::Running, false)),
        ),
        (
            "mainline: paused guest, RAM in place",
            Box::new(move || mainline::cycle(binary, GuestState::Paused, true)),
        ),
        (
            "mainline: paused guest, RAM copied",
            Box::new(move || mainline::cycle(binary, GuestState::Paused, false)),
        ),
        (
            "mainline: suspended guest, RAM in place",
            Box::new(move || mainline::cycle(binary, GuestState::Suspended, true)),
        ),
        (
            "mainline: suspended guest, RAM copied",
            Box::new(move || mainline::cycle(binary, GuestState::Suspended, false)),
        ),
        (
            "mainline: refusals",
            Box::new(move || mainline::refusals(binary)),
        ),
        (
            "mainline: --incoming file: with --global",
            Box::new(move || mainline::incoming_with_globals(binary)),
        ),
        (
            "transfer: running, 1 vCPU, same --qmp path",
            Box::new(move || transfer::transfer(binary, GuestState::Running, 1, true)),
        ),
        (
            "transfer: running, 2 vCPUs, own --qmp path",
            Box::new(move || transfer::transfer(binary, GuestState::Running, 2, false)),
        ),
        (
            "transfer: paused, 1 vCPU",
            Box::new(move || transfer::transfer(binary, GuestState::Paused, 1, false)),
        ),
        (
            "transfer: paused, 2 vCPUs",
            Box::new(move || transfer::transfer(binary, GuestState::Paused, 2, true)),
        ),
        (
            "transfer: suspended, 1 vCPU",
            Box::new(move || transfer::transfer(binary, GuestState::Suspended, 1, true)),
        ),
        (
            "transfer: suspended, 2 vCPUs",
            Box::new(move || transfer::transfer(binary, GuestState::Suspended, 2, false)),
        ),
        (
            "transfer: running, 1 vCPU, own --qmp path",
            Box::new(move || transfer::transfer(binary, GuestState::Running, 1, false)),
        ),
        (
            "transfer: --incoming defer, then migrate-incoming",
            Box::new(move || transfer::transfer_defer(binary)),
        ),
        (
            "transfer: the new process dies or refuses",
            Box::new(move || transfer::transfer_failures(binary)),
        ),
        (
            "transfer: refusals",
            Box::new(move || transfer::transfer_refusals(binary)),
        ),
        (
            "exec: running, 1 vCPU",
            Box::new(move || transfer::exec(binary, 1)),
        ),
        (
            "exec: running, 2 vCPUs",
            Box::new(move || transfer::exec(binary, 2)),
        ),
        (
            "exec: a command that cannot run",
            Box::new(move || transfer::exec_failing(binary)),
        ),
        (
            "RAM ownership: a second process is refused",
            Box::new(move || ownership::second_process(binary)),
        ),
        (
            "RAM ownership: cpr-save hands the RAM over",
            Box::new(move || ownership::hand_over(binary)),
        ),
        (
            "RAM ownership: migrate hands the RAM over",
            Box::new(move || ownership::mainline_hand_over(binary)),
        ),
        (
            "QEMU's analyze-migration.py reads every stream",
            Box::new(move || analyze_migration(binary)),
        ),
        (
            "inspect: every stream kind",
            Box::new(move || inspect::stream_kinds(binary)),
        ),
        (
            "copy mode: 5 GiB guest, across the 3 GiB boundary",
            Box::new(move || inspect::above_4g(binary)),
        ),
    ];
    if let Some(only) = only {
        scenarios.retain(|(name, _)| name.contains(only));
    }
    if !Path::new("/dev/kvm").exists() {
        for (name, _) in &scenarios {
            println!("e2e SKIP {name}: /dev/kvm is absent on this machine, so no VM can run");
        }
        return (0, 0, scenarios.len() as u64);
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, f) in &scenarios {
        let t = Instant::now();
        match f() {
            Ok(detail) if detail.starts_with("skipped:") => {
                skipped += 1;
                println!("e2e SKIP {name}: {detail}");
            }
            Ok(detail) => {
                passed += 1;
                println!(
                    "e2e PASS {name}: {detail} ({:.1} s)",
                    t.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                failed += 1;
                println!("e2e FAIL {name}: {e} ({:.1} s)", t.elapsed().as_secs_f64());
            }
        }
    }
    println!("e2e: {passed} passed, {failed} failed, {skipped} skipped");
    (passed, failed, skipped)
}
