//! End-to-end scenarios where something must be refused without harm: saves that fail,
//! odd targets, a disk that fills up, hostile state files.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cpr_harness::VmFiles;
use cpr_harness::VmProcess;
use serde_json::json;

use crate::e2e::{Outcome, Scratch, boot, check_carried_on, expect_status, fail};

/// (4c) Saves that must fail without harm: a second cpr-save (its checkpoint could never
/// be loaded), targets that are not regular files or in a missing directory, a migrate
/// whose target cannot be created (the guest is never stopped), a FIFO given to cpr-load
/// (must not hang the VMM), and migrate-incoming after the VM was loaded.
pub fn failed_saves(binary: &Path) -> Outcome {
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
pub fn disk_full(binary: &Path) -> Outcome {
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
pub fn hostile_files(binary: &Path) -> Outcome {
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

/// A checkpoint stays loadable exactly as long as the RAM it left in place is unchanged:
/// loading it twice without running is fine, two saves of a paused VM are both valid, and
/// it is refused once the guest ran on or once another stream's pages were copied over
/// the RAM file.
pub fn epochs(binary: &Path) -> Outcome {
    let dir = Scratch::new("epochs")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &[]);
    let (a, b, c) = (
        dir.0.join("a.state"),
        dir.0.join("b.state"),
        dir.0.join("c.state"),
    );
    let mut vm = boot(binary, &files, &args)?;
    vm.execute("stop", json!({}))?;
    let before = vm.progress()?;
    vm.execute("cpr-save", json!({"filename": a, "mode": "reboot"}))?;
    vm.execute("cpr-save", json!({"filename": b, "mode": "reboot"}))?;
    vm.quit()?;
    let mut s_args = args.clone();
    s_args.push("-S".into());
    // Loaded and quit without running: still valid, twice.
    for _ in 0..2 {
        let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
        vm.execute("cpr-load", json!({"filename": a}))?;
        expect_status(&mut vm, "paused")?;
        vm.quit()?;
    }
    // Now the guest runs on: both checkpoints become stale.
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    vm.execute("cpr-load", json!({"filename": b}))?;
    vm.execute("cont", json!({}))?;
    check_carried_on(&mut vm, &before)?;
    vm.execute("stop", json!({}))?;
    vm.execute("cpr-save", json!({"filename": c, "mode": "reboot"}))?;
    vm.quit()?;
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    for stale in [&a, &b] {
        let desc = vm.execute_err("cpr-load", json!({"filename": stale}))?;
        if !desc.contains("is not the RAM this checkpoint left") {
            return Err(fail(format!("stale {}: {desc}", stale.display())));
        }
    }
    vm.quit()?;
    // Another VM's RAM copied over the RAM file makes `c` stale too.
    let other = Scratch::new("epochs-other")?;
    let ofiles = VmFiles::in_dir(&other.0);
    let mut oargs = ofiles.args("128M", 1, &["--mem-share", "off"]);
    let i = oargs.iter().position(|x| x == "--mem-path").unwrap_or(0);
    oargs.drain(i..i + 2);
    let mut x = boot(binary, &ofiles, &oargs)?;
    x.execute("stop", json!({}))?;
    x.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let copy = format!("file:{}", ofiles.state.display());
    x.execute("migrate", json!({"uri": copy}))?;
    x.quit()?;
    let mut d_args = args.clone();
    d_args.push("--incoming".into());
    d_args.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &d_args, &files.qmp, None)?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    vm.execute("migrate-incoming", json!({"uri": copy}))?;
    expect_status(&mut vm, "paused")?;
    vm.quit()?;
    let mut vm = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    let desc = vm.execute_err("cpr-load", json!({"filename": c}))?;
    if !desc.contains("is not the RAM this checkpoint left") {
        return Err(fail(format!("c after a copy over its RAM: {desc}")));
    }
    vm.quit()?;
    Ok("valid checkpoints reload (twice, and after a second save); stale ones are refused after the guest ran and after a RAM copy".into())
}
