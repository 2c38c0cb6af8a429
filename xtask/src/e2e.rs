//! `cargo xtask e2e`: real `cpr-vm` processes, driven over QMP, one line per scenario.
//!
//! Every scenario starts its own VM(s) in a fresh directory under /dev/shm, and checks the
//! guest itself after each restore: its progress continues from the saved value (never
//! from zero), its timer ticks keep arriving, and its RAM check finds nothing wrong.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cpr::demo::{VmFiles, cycle};

use crate::e2e_mainline::{self as mainline, GuestState};
use cpr::harness::{HarnessError, Progress, VmProcess};
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

/// (4c) Saves that must fail without harm: a second cpr-save (its checkpoint could never
/// be loaded), targets that are not regular files or in a missing directory, a migrate
/// whose target cannot be created (the guest is never stopped), a FIFO given to cpr-load
/// (must not hang the VMM), and migrate-incoming after the VM was loaded.
fn failed_saves(binary: &Path) -> Outcome {
    let dir = Scratch::new("failed-saves")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    let good = std::fs::read(&files.state).map_err(|e| fail(e.to_string()))?;
    let desc = vm.execute_err(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    if !desc.contains("cannot be restored from a checkpoint") {
        return Err(fail(format!("second cpr-save: {desc}")));
    }
    if std::fs::read(&files.state).map_err(|e| fail(e.to_string()))? != good {
        return Err(fail("a refused cpr-save changed the previous checkpoint"));
    }
    vm.execute("cont", json!({}))?;
    expect_status(&mut vm, "running")?;
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| fail(e.to_string()))?;
    let missing = dir.0.join("no-such-dir").join("vm.state");
    for target in [&missing, &fifo, &dir.0] {
        let desc = vm.execute_err("cpr-save", json!({"filename": target, "mode": "reboot"}))?;
        if desc.is_empty() {
            return Err(fail("empty error"));
        }
        expect_status(&mut vm, "running")
            .map_err(|e| fail(format!("after cpr-save to {}: {e}", target.display())))?;
    }
    if !std::fs::symlink_metadata(&fifo)
        .map_err(|e| fail(e.to_string()))?
        .file_type()
        .is_fifo()
    {
        return Err(fail("cpr-save replaced a FIFO"));
    }
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let before = vm.progress()?;
    let _ = vm.events()?; // forget the STOP/RESUME of the save and cont above
    let desc = vm.execute_err(
        "migrate",
        json!({"uri": format!("file:{}", missing.display())}),
    )?;
    if !desc.contains("no-such-dir") {
        return Err(fail(format!("migrate to a missing directory: {desc}")));
    }
    if vm.events()?.iter().any(|e| e.event == "STOP") {
        return Err(fail(
            "a migrate that could not open its target stopped the VM",
        ));
    }
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    // The first checkpoint is stale now (the guest ran on); take a fresh one.
    let stale = dir.0.join("stale.state");
    std::fs::write(&stale, &good).map_err(|e| fail(e.to_string()))?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    vm.quit()?;
    // A FIFO given to cpr-load is refused at once, and the VMM still answers.
    let mut s_args = args.clone();
    s_args.push("--incoming".into());
    s_args.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    let t = Instant::now();
    let desc = vm.execute_err("cpr-load", json!({"filename": fifo}))?;
    if !desc.contains("not a regular file") || t.elapsed() > Duration::from_secs(2) {
        return Err(fail(format!("cpr-load of a FIFO: {desc}")));
    }
    // The stale checkpoint is refused: its RAM has moved on.
    let desc = vm.execute_err("cpr-load", json!({"filename": stale}))?;
    if !desc.contains("is not the RAM this checkpoint left") {
        return Err(fail(format!("stale checkpoint: {desc}")));
    }
    expect_status(&mut vm, "inmigrate")?;
    // The fresh one loads; migrate-incoming is then refused.
    vm.execute("cpr-load", json!({"filename": files.state}))?;
    let desc = vm.execute_err(
        "migrate-incoming",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    if desc != "The incoming migration has already been started" {
        return Err(fail(format!("migrate-incoming after a load: {desc}")));
    }
    vm.quit()?;
    Ok("second save, odd targets, failed migrate, FIFO load, stale checkpoint and late migrate-incoming all refused harmlessly".into())
}

/// A small tmpfs mounted for a test, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: PathBuf, size: &str) -> Result<SmallFs, String> {
        std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(SmallFs(at))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// (4d) The disk fills up during cpr-save: `Error -28 while saving VM state`, the guest
/// runs again (RESUME), and the previous checkpoint is intact.
fn disk_full(binary: &Path) -> Outcome {
    let dir = Scratch::new("disk-full")?;
    let fs = match SmallFs::mount(dir.0.join("small"), "16k") {
        Ok(fs) => fs,
        Err(why) => {
            return Ok(format!(
                "skipped: cannot mount a 16 KiB tmpfs here ({why}); needs root"
            ));
        }
    };
    let files = VmFiles::in_dir(&dir.0);
    let state = fs.0.join("vm.state");
    let mut vm = boot(binary, &files, &files.args("128M", 1, &[]))?;
    vm.execute("cpr-save", json!({"filename": state, "mode": "reboot"}))?;
    let good = std::fs::read(&state).map_err(|e| fail(e.to_string()))?;
    vm.execute("cont", json!({}))?;
    let before = vm.progress()?;
    let _ = vm.events()?;
    let desc = vm.execute_err("cpr-save", json!({"filename": state, "mode": "reboot"}))?;
    if !desc.starts_with("Error -28 while saving VM state") {
        return Err(fail(format!("unexpected error: {desc}")));
    }
    let names: Vec<String> = vm.events()?.into_iter().map(|e| e.event).collect();
    if names != ["STOP", "RESUME"] {
        return Err(fail(format!("events {names:?}, expected STOP then RESUME")));
    }
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    if std::fs::read(&state).map_err(|e| fail(e.to_string()))? != good {
        return Err(fail("the failed save changed the previous checkpoint"));
    }
    let leftovers = std::fs::read_dir(&fs.0)
        .map_err(|e| fail(e.to_string()))?
        .count();
    if leftovers != 1 {
        return Err(fail(format!(
            "{leftovers} files in the target directory, expected 1"
        )));
    }
    vm.quit()?;
    drop(fs);
    Ok(format!(
        "\"{desc}\", guest resumed, previous checkpoint intact"
    ))
}

/// (5) Bad state files are refused by cpr-load; the same process then loads the good one.
fn hostile_files(binary: &Path) -> Outcome {
    let dir = Scratch::new("hostile")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    // A mismatched machine: the same guest with 2 vCPUs writes a checkpoint elsewhere.
    let other = Scratch::new("hostile-2cpu")?;
    let other_files = VmFiles::in_dir(&other.0);
    let mut other_vm = boot(binary, &other_files, &other_files.args("256M", 2, &[]))?;
    other_vm.execute(
        "cpr-save",
        json!({"filename": other_files.state, "mode": "reboot"}),
    )?;
    other_vm.quit()?;
    let before = vm.progress()?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    vm.quit()?;
    let good = std::fs::read(&files.state).map_err(|e| fail(e.to_string()))?;
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated by one byte", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("foreign", b"#!/bin/sh\necho not a checkpoint\n".to_vec()),
    ];
    for bit in [9 * 8 + 3, good.len() * 4, good.len() * 8 - 40] {
        let mut flipped = good.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        bad.push(("bit-flipped", flipped));
    }
    let mismatched = std::fs::read(&other_files.state).map_err(|e| fail(e.to_string()))?;
    bad.push(("from a 2-vCPU machine", mismatched));
    let mut s_args = args.clone();
    s_args.push("-S".into());
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    let bad_path = dir.0.join("bad.state");
    let mut refused = 0;
    for (what, bytes) in &bad {
        std::fs::write(&bad_path, bytes).map_err(|e| fail(e.to_string()))?;
        let desc = vm
            .execute_err("cpr-load", json!({"filename": bad_path}))
            .map_err(|e| fail(format!("{what} file: {e}")))?;
        if desc.is_empty() {
            return Err(fail(format!("{what} file: empty error")));
        }
        if *what == "from a 2-vCPU machine" && !desc.contains("2 vCPUs") {
            return Err(fail(format!("mismatch not explained: {desc}")));
        }
        expect_status(&mut vm, "prelaunch").map_err(|e| fail(format!("after {what}: {e}")))?;
        refused += 1;
    }
    let desc = vm.execute_err("cpr-load", json!({"filename": dir.0.join("missing.state")}))?;
    if !desc.contains("missing.state") {
        return Err(fail(format!("missing file error does not name it: {desc}")));
    }
    vm.execute("cpr-load", json!({"filename": files.state}))?;
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    vm.quit()?;
    Ok(format!(
        "{refused} bad files and a missing one refused, then the good file loaded"
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

/// Runs every scenario; returns (passed, failed).
pub fn run(binary: &Path, cycles: u32) -> (u64, u64) {
    if !Path::new("/dev/kvm").exists() {
        println!("e2e: skipped: /dev/kvm is absent on this machine, so no VM can run");
        return (0, 0);
    }
    let scenarios: Vec<Scenario<'_>> = vec![
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
        (
            "hostile state files",
            Box::new(move || hostile_files(binary)),
        ),
        ("--incoming", Box::new(move || incoming(binary))),
        ("two vCPUs", Box::new(move || two_vcpus(binary))),
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
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in &scenarios {
        let t = Instant::now();
        match f() {
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
    println!("e2e: {passed} passed, {failed} failed");
    (passed, failed)
}
