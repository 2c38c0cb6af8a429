//! End-to-end scenarios for RAM ownership (issue: one guest, one process): two live
//! `cpr-vm` processes on one RAM file, and the hand-over at a completed checkpoint.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cpr_harness::VmFiles;
use cpr_harness::{HarnessError, VmProcess};
use serde_json::json;

use crate::e2e::{
    Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail, generation,
    wait_generation,
};

/// `args` with the QMP socket replaced by `qmp` (a second process next to the first).
fn with_qmp(args: &[OsString], qmp: &Path) -> Vec<OsString> {
    let mut out = args.to_vec();
    if let Some(i) = out.iter().position(|a| a == "--qmp") {
        out[i + 1] = qmp.into();
    }
    out
}

/// Starts a second `cpr-vm` beside the first: the same arguments with its own monitor
/// socket, plus `extra`.
fn spawn_beside(
    binary: &Path,
    args: &[OsString],
    qmp: &Path,
    extra: &[&str],
) -> Result<VmProcess, HarnessError> {
    let mut argv = with_qmp(args, qmp);
    argv.extend(extra.iter().map(OsString::from));
    VmProcess::spawn(binary, &argv, qmp, None)
}

/// The error a refused command gives must say that the RAM is another process's.
fn expect_in_use(desc: &str, ram: &Path, what: &str) -> Result<(), HarnessError> {
    if desc.contains("in use by another process") && desc.contains(&ram.display().to_string()) {
        Ok(())
    } else {
        Err(fail(format!(
            "{what}: expected a refusal naming {} as in use, got: {desc}",
            ram.display()
        )))
    }
}

/// A second `cpr-vm` that would run a guest on a RAM file a running one holds is refused,
/// with an error naming the file, and the first guest never notices.
pub fn second_process(binary: &Path) -> Outcome {
    let dir = Scratch::new("own-second")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut vm = boot(binary, &files, &args)?;
    let before = vm.progress()?;
    let other = with_qmp(&args, &dir.0.join("other.sock"));
    let mut child = Command::new(binary)
        .args(&other)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start a second cpr-vm: {e}")))?;
    // A process that was not refused would run its guest for ever: give it a deadline.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(
                    "a second process on the same RAM file was not refused: it ran a guest",
                ));
            }
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    if status.code() != Some(1) {
        return Err(fail(format!(
            "the second process was not refused (status {status}): {stderr}"
        )));
    }
    expect_in_use(&stderr, &files.ram, "second process")?;
    // The same with -S, then `cont`: the process may wait, but not run.
    let mut waiting = spawn_beside(binary, &args, &dir.0.join("other.sock"), &["-S"])?;
    let desc = waiting.execute_err("cont", json!({}))?;
    expect_in_use(&desc, &files.ram, "cont in a second process")?;
    expect_status(&mut waiting, "prelaunch")?;
    waiting.quit()?;
    // The first guest ran on, untouched: two more generations checked, no RAM error.
    let now = check_carried_on(&mut vm, &before)?;
    wait_generation(&mut vm, generation(&now) + 2)?;
    vm.quit()?;
    Ok(format!(
        "a second process was refused ({}), a -S one could not cont; the first guest saw 0 RAM errors",
        stderr.trim().lines().last().unwrap_or_default()
    ))
}

/// A new process started before the save loads while the old one is still alive: the
/// completed checkpoint hands the RAM over, and the old process can no longer run the
/// guest (`cont`, `cpr-load`). A failed load gives the RAM back.
pub fn hand_over(binary: &Path) -> Outcome {
    let dir = Scratch::new("own-handover")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut old = boot(binary, &files, &args)?;
    let new_qmp = dir.0.join("new.sock");
    let mut new = spawn_beside(binary, &args, &new_qmp, &["-S"])?;
    // Before the save the RAM is the old process's: the new one can neither boot nor load.
    let desc = new.execute_err("cont", json!({}))?;
    expect_in_use(&desc, &files.ram, "cont before the save")?;
    // A load that fails before it writes RAM gives the RAM back: the old process, whose
    // checkpoint handed it over, can take it again and run on.
    old.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    let garbage = dir.0.join("garbage.state");
    std::fs::write(&garbage, b"not a checkpoint")
        .map_err(|e| fail(format!("cannot write {}: {e}", garbage.display())))?;
    new.execute_err("cpr-load", json!({"filename": garbage}))?;
    old.execute("cont", json!({}))
        .map_err(|e| fail(format!("the old process could not take its RAM back: {e}")))?;
    expect_status(&mut old, "running")?;
    let before = old.progress()?;
    let t = Instant::now();
    old.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    new.execute("cpr-load", json!({"filename": files.state}))?;
    let took = t.elapsed();
    expect_status(&mut new, "running")?;
    // The old process is still alive, and may not run the guest again.
    let desc = old.execute_err("cont", json!({}))?;
    expect_in_use(&desc, &files.ram, "cont in the old process")?;
    let desc = old.execute_err("cpr-load", json!({"filename": files.state}))?;
    expect_in_use(&desc, &files.ram, "cpr-load in the old process")?;
    let after = check_carried_on(&mut new, &before)?;
    wait_generation(&mut new, generation(&after) + 2)?;
    let status = old.quit()?;
    if !status.success() {
        return Err(fail(format!("the old process exited with {status}")));
    }
    new.quit()?;
    Ok(format!(
        "a failed load gave the RAM back; loaded while the old process was alive ({:.1} ms save+load); old cont and cpr-load refused; 0 RAM errors",
        took.as_secs_f64() * 1e3
    ))
}

/// The mainline flow: an outgoing `migrate` in `cpr-reboot` mode hands the RAM over too;
/// a `migrate-incoming` before it is refused and leaves the new process waiting.
pub fn mainline_hand_over(binary: &Path) -> Outcome {
    let dir = Scratch::new("own-mainline")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("256M", 1, &[]);
    let mut old = boot(binary, &files, &args)?;
    let new_qmp = dir.0.join("new.sock");
    let mut new = spawn_beside(binary, &args, &new_qmp, &["--incoming", "defer"])?;
    for vm in [&mut old, &mut new] {
        vm.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )?;
        vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    }
    let uri = format!("file:{}", files.state.display());
    // Nothing saved yet: the old process holds the RAM, so the load is refused, and the
    // refusal leaves the new process waiting for another try.
    std::fs::write(&files.state, b"")
        .map_err(|e| fail(format!("cannot write {}: {e}", files.state.display())))?;
    let desc = new.execute_err("migrate-incoming", json!({"uri": uri}))?;
    expect_in_use(&desc, &files.ram, "migrate-incoming before the save")?;
    let before = old.progress()?;
    old.execute("migrate", json!({"uri": uri}))?;
    let info = old.execute("query-migrate", json!({}))?;
    if info["status"] != "completed" {
        return Err(fail(format!("migrate did not complete: {info}")));
    }
    new.execute("migrate-incoming", json!({"uri": uri}))?;
    expect_status(&mut new, "running")?;
    let desc = old.execute_err("cont", json!({}))?;
    expect_in_use(&desc, &files.ram, "cont after migrate")?;
    let after = check_carried_on(&mut new, &before)?;
    wait_generation(&mut new, generation(&after) + 2)?;
    old.quit()?;
    new.quit()?;
    Ok(
        "migrate handed the RAM over; early migrate-incoming and late cont refused; 0 RAM errors"
            .into(),
    )
}
