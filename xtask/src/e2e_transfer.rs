//! End-to-end scenarios for mainline's hand-off modes: `cpr-transfer` (a new process,
//! started beforehand, takes the guest over a `cpr` channel and a main channel) and
//! `cpr-exec` (the process saves and execs the new binary in place).

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use cpr_harness::handoff::{set_cpr_exec, transfer_channels, transfer_incoming, wait_path};
use cpr_harness::{HarnessError, Progress, VmFiles, VmProcess};
use serde_json::{Value, json};

use crate::e2e::{
    Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail, generation,
    wait_generation,
};
use crate::e2e_mainline::{GuestState, put_in_state};

/// `cpr-vm` arguments for a VM whose RAM is a memfd (no path anywhere).
fn memfd_args(files: &VmFiles, mem_size: &str, smp: u32) -> Vec<OsString> {
    files.memfd_args(mem_size, smp, &[])
}

/// Waits until something listens at `path` (the new process's cpr channel).
fn wait_socket(path: &Path) -> Result<(), HarnessError> {
    wait_path(path, WAIT)
}

/// The new process's side after the hand-off: the saved state, then the guest carries on.
fn carry_on(vm: &mut VmProcess, state: GuestState, before: &Progress) -> Result<(), HarnessError> {
    match state {
        GuestState::Running => expect_status(vm, "running")?,
        GuestState::Paused => {
            expect_status(vm, "paused")?;
            std::thread::sleep(Duration::from_millis(30));
            if vm.progress()?.progress > before.progress {
                return Err(fail("a paused guest ran after the hand-off"));
            }
            vm.execute("cont", json!({}))?;
        }
        GuestState::Suspended => {
            expect_status(vm, "suspended")?;
            std::thread::sleep(Duration::from_millis(30));
            if vm.progress()?.progress > before.progress {
                return Err(fail("a suspended guest ran before system_wakeup"));
            }
            vm.execute("system_wakeup", json!({}))?;
            expect_status(vm, "running")?;
        }
    }
    check_carried_on(vm, before)?;
    wait_generation(vm, generation(before) + 2)?;
    Ok(())
}

/// One cpr-transfer: memfd RAM, the new process on the same `--qmp` path (the old one
/// hands its listening socket over) or on a path of its own.
pub fn transfer(binary: &Path, state: GuestState, smp: u32, same_path: bool) -> Outcome {
    let dir = Scratch::new(&format!("transfer-{state:?}-{smp}-{same_path}"))?;
    let files = VmFiles::in_dir(&dir.0);
    let args = memfd_args(&files, "256M", smp);
    let mut old = boot(binary, &files, &args)?;
    wait_generation(&mut old, 1)?;
    put_in_state(&mut old, state)?;
    let (main, cpr) = (dir.0.join("main.sock"), dir.0.join("cpr.sock"));
    let new_qmp = if same_path {
        files.qmp.clone()
    } else {
        dir.0.join("new-qmp.sock")
    };
    let mut new_args = memfd_args(&files, "256M", smp);
    if !same_path {
        let i = new_args.iter().position(|x| x == "--qmp").unwrap_or(0);
        new_args[i + 1] = new_qmp.clone().into();
    }
    new_args.extend(transfer_incoming(&main, &cpr));
    let (child, spawned) = VmProcess::spawn_unconnected(binary, &new_args, None)?;
    wait_socket(&cpr)?;
    old.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )?;
    old.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let before = old.progress()?;
    let _ = old.events()?;
    let t = Instant::now();
    old.execute("migrate", transfer_channels(&main, &cpr))?;
    let took = t.elapsed();
    let info = old.execute("query-migrate", json!({}))?;
    if info["status"] != "completed" {
        return Err(fail(format!("old process: {info}")));
    }
    expect_status(&mut old, "postmigrate")?;
    let mut new = VmProcess::connect(child, spawned, &new_qmp)?;
    carry_on(&mut new, state, &before)?;
    old.quit()?;
    // The monitor path is still the new process's after the old one quit.
    if same_path {
        new.reconnect(&files.qmp)?;
        expect_status(&mut new, "running")?;
    }
    new.quit()?;
    Ok(format!(
        "{state:?} guest with {smp} vCPU(s) carried on in the new process ({}), migrate took {:.1} ms, downtime {} ms",
        if same_path {
            "same --qmp path"
        } else {
            "own --qmp path"
        },
        took.as_secs_f64() * 1e3,
        info["downtime"]
    ))
}

/// The new process dies before the hand-off, or refuses it: the old VM runs on.
pub fn transfer_failures(binary: &Path) -> Outcome {
    let dir = Scratch::new("transfer-failures")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = memfd_args(&files, "256M", 1);
    let mut old = boot(binary, &files, &args)?;
    old.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let (main, cpr) = (dir.0.join("main.sock"), dir.0.join("cpr.sock"));
    let mut seen = Vec::new();
    // (a) Killed while waiting for the CPR state; (b) started with the wrong RAM size, so
    // it refuses the descriptors; (c) started with a different vCPU count, so it refuses
    // the device state after the guest was stopped.
    for (what, mem, smp) in [
        ("killed before the hand-off", "256M", 1),
        ("wrong RAM size", "128M", 1),
        ("wrong vCPU count", "256M", 2),
    ] {
        let mut new_args = memfd_args(&files, mem, smp);
        let i = new_args.iter().position(|x| x == "--qmp").unwrap_or(0);
        new_args[i + 1] = dir.0.join("new.sock").into();
        new_args.extend(transfer_incoming(&main, &cpr));
        let (mut child, _) = VmProcess::spawn_unconnected(binary, &new_args, None)?;
        wait_socket(&cpr)?;
        if what.starts_with("killed") {
            let _ = child.kill();
            let _ = child.wait();
        }
        let before = old.progress()?;
        let err = old.execute_err("migrate", transfer_channels(&main, &cpr));
        let outcome = match err {
            Ok(desc) => desc,
            Err(_) => {
                // Refused after the stop: `migrate` succeeded as a command, the migration
                // failed.
                let info = old.execute("query-migrate", json!({}))?;
                if info["status"] != "failed" {
                    return Err(fail(format!("{what}: the old process says {info}")));
                }
                info["error-desc"].as_str().unwrap_or_default().to_string()
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&cpr);
        let _ = std::fs::remove_file(&main);
        expect_status(&mut old, "running")?;
        check_carried_on(&mut old, &before)?;
        seen.push(format!("{what}: {outcome}"));
    }
    wait_generation(&mut old, 3)?;
    old.quit()?;
    Ok(format!("the old VM ran on each time ({})", seen.join("; ")))
}

/// QEMU's refusals for cpr-transfer, and memfd RAM refused by cpr-reboot.
pub fn transfer_refusals(binary: &Path) -> Outcome {
    let dir = Scratch::new("transfer-refusals")?;
    let files = VmFiles::in_dir(&dir.0);
    let (main, cpr) = (dir.0.join("main.sock"), dir.0.join("cpr.sock"));
    let mut vm = boot(binary, &files, &memfd_args(&files, "128M", 1))?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let mut checks: Vec<(Value, &str)> = vec![
        (
            json!({"uri": format!("file:{}", files.state.display())}),
            "Migration requires streamable transport (eg unix)",
        ),
        (
            json!({"uri": format!("unix:{}", main.display())}),
            "missing 'cpr' migration channel",
        ),
        (
            json!({"channels": [
                {"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": main}},
                {"channel-type": "cpr", "addr": {"transport": "file", "filename": "/tmp/x"}},
            ]}),
            "bad cpr channel address; must be unix",
        ),
    ];
    checks.push((
        transfer_channels(&main, &cpr),
        "cannot connect to the cpr channel",
    ));
    let mut seen = 0;
    for (args, want) in checks {
        let desc = vm.execute_err("migrate", args)?;
        if !desc.starts_with(want) {
            return Err(fail(format!("migrate: {desc} (expected {want})")));
        }
        seen += 1;
    }
    // cpr-reboot cannot keep a memfd.
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let desc = vm.execute_err(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    if !desc.contains("is a memfd") {
        return Err(fail(format!("cpr-reboot over a memfd: {desc}")));
    }
    let desc = vm.execute_err(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    if !desc.contains("is a memfd") {
        return Err(fail(format!("cpr-save over a memfd: {desc}")));
    }
    expect_status(&mut vm, "running")?;
    vm.quit()?;
    // Anonymous RAM cannot be handed over.
    let mut anon = files.args("128M", 1, &[]);
    let i = anon.iter().position(|x| x == "--mem-path").unwrap_or(0);
    anon.drain(i..i + 2);
    let mut vm = boot(binary, &files, &anon)?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let desc = vm.execute_err("migrate", transfer_channels(&main, &cpr))?;
    if !desc.starts_with("Memory region pc.ram is not compatible with CPR") {
        return Err(fail(format!("anonymous RAM: {desc}")));
    }
    expect_status(&mut vm, "running")?;
    vm.quit()?;
    Ok(format!(
        "{} migrate refusals, memfd under cpr-reboot and anonymous RAM refused; the VM never stopped",
        seen
    ))
}

/// cpr-exec: the same process execs the new binary; the monitor stays at its path.
pub fn exec(binary: &Path, smp: u32) -> Outcome {
    let dir = Scratch::new(&format!("exec-{smp}"))?;
    let files = VmFiles::in_dir(&dir.0);
    let args = memfd_args(&files, "256M", smp);
    let mut vm = boot(binary, &files, &args)?;
    wait_generation(&mut vm, 1)?;
    let pid = vm.pid();
    set_cpr_exec(&mut vm, binary, &args, &files)?;
    let before = vm.progress()?;
    let t = Instant::now();
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    vm.reconnect(&files.qmp)?;
    let reconnected = t.elapsed();
    if vm.pid() != pid {
        return Err(fail("the pid changed"));
    }
    check_carried_on(&mut vm, &before)?;
    wait_generation(&mut vm, generation(&before) + 2)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !maps.contains("--incoming") {
        return Err(fail(format!("pid {pid} is not the exec'd image: {maps:?}")));
    }
    vm.quit()?;
    Ok(format!(
        "pid {pid} exec'd itself with {smp} vCPU(s); monitor back at its path {:.1} ms after migrate was sent; guest carried on",
        reconnected.as_secs_f64() * 1e3
    ))
}

/// cpr-exec of a command that cannot run: the old image runs its VM on.
pub fn exec_failing(binary: &Path) -> Outcome {
    let dir = Scratch::new("exec-failing")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = memfd_args(&files, "128M", 1);
    let mut vm = boot(binary, &files, &args)?;
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )?;
    let desc = {
        vm.execute("migrate-set-parameters", json!({"mode": "cpr-exec"}))?;
        vm.execute_err(
            "migrate",
            json!({"uri": format!("file:{}", files.state.display())}),
        )?
    };
    if desc != "cpr-exec-command is not set" {
        return Err(fail(format!("no command: {desc}")));
    }
    vm.execute(
        "migrate-set-parameters",
        json!({"cpr-exec-command": [dir.0.join("no-such-cpr-vm"), "--incoming", "defer"]}),
    )?;
    let before = vm.progress()?;
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    let deadline = Instant::now() + WAIT;
    let info = loop {
        let info = vm.execute("query-migrate", json!({}))?;
        if info["status"] == "failed" || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if info["status"] != "failed"
        || !info["error-desc"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot exec")
    {
        return Err(fail(format!("query-migrate: {info}")));
    }
    expect_status(&mut vm, "running")?;
    check_carried_on(&mut vm, &before)?;
    vm.quit()?;
    Ok(format!("{}; the old image ran on", info["error-desc"]))
}

/// cpr-transfer to a process started with `--incoming defer`: its main channel is given by
/// `migrate-incoming` (sent while the old process's `migrate` waits for it).
pub fn transfer_defer(binary: &Path) -> Outcome {
    let dir = Scratch::new("transfer-defer")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = memfd_args(&files, "256M", 1);
    let mut old = boot(binary, &files, &args)?;
    wait_generation(&mut old, 1)?;
    let (main, cpr) = (dir.0.join("main.sock"), dir.0.join("cpr.sock"));
    let new_qmp = dir.0.join("new-qmp.sock");
    let mut new_args = memfd_args(&files, "256M", 1);
    let i = new_args.iter().position(|x| x == "--qmp").unwrap_or(0);
    new_args[i + 1] = new_qmp.clone().into();
    new_args.push("--incoming".into());
    new_args.push("defer".into());
    new_args.push("--incoming".into());
    new_args.push(
        json!({"channel-type": "cpr",
            "addr": {"transport": "socket", "type": "unix", "path": cpr}})
        .to_string()
        .into(),
    );
    let mut new = VmProcess::spawn(binary, &new_args, &new_qmp, None)?;
    wait_socket(&cpr)?;
    old.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let before = old.progress()?;
    let channels = transfer_channels(&main, &cpr);
    let old_side = std::thread::spawn(move || {
        let r = old.execute("migrate", channels);
        (old, r)
    });
    // Answered once the CPR state has arrived and the machine is ready.
    new.execute(
        "migrate-incoming",
        json!({"uri": format!("unix:{}", main.display())}),
    )?;
    let (mut old, migrated) = old_side
        .join()
        .map_err(|_| fail("the old process's client thread panicked"))?;
    migrated?;
    expect_status(&mut old, "postmigrate")?;
    carry_on(&mut new, GuestState::Running, &before)?;
    old.quit()?;
    new.quit()?;
    Ok("migrate-incoming unix: after --incoming defer took the guest over".into())
}
