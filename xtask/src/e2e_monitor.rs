//! End-to-end scenarios about what the process says and leaves behind: the monitor socket
//! across a restart (a new process started on the reply to `quit`), the reply to `quit`
//! before `SHUTDOWN`, the serial file's mode, and guest failures that must not look like
//! `quit` (events and exit statuses).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitStatus};

use cpr::qmp::ClientError;
use cpr_harness::VmFiles;
use cpr_harness::{HarnessError, VmProcess};
use serde_json::{Value, json};

use crate::e2e::{Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail};

fn qmp_err(what: impl Into<String>) -> impl FnOnce(ClientError) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Qmp { what, source }
}

fn expect_exit(status: ExitStatus, code: i32, what: &str) -> Result<(), HarnessError> {
    if status.code() == Some(code) {
        Ok(())
    } else {
        Err(fail(format!(
            "{what}: cpr-vm exited with {status}, expected {code}"
        )))
    }
}

/// The mode bits of `path`.
fn mode(path: &Path) -> Result<u32, HarnessError> {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// (issue 7, items 5 and 8) `cycles` times: a running guest is cpr-saved, `quit` is sent,
/// and as soon as its reply arrives a new `cpr-vm -S` is started on the same `--qmp` path.
/// It must start every time and load the checkpoint; the guest carries on. The old process
/// sends the reply, then SHUTDOWN, then EOF, and exits 0; afterwards the new socket is
/// still at the path and accepts connections.
pub fn restart_on_reply(binary: &Path, cycles: u32) -> Outcome {
    let dir = Scratch::new("monitor-restart")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &[]);
    let mut s_args = args.clone();
    s_args.push("-S".into());
    let mut vm = boot(binary, &files, &args)?;
    for n in 1..=cycles {
        let at = |e: HarnessError| fail(format!("cycle {n}: {e}"));
        let before = vm.progress()?;
        vm.execute(
            "cpr-save",
            json!({"filename": files.state, "mode": "reboot"}),
        )?;
        vm.events()?; // the save's STOP
        // Raw lines: what arrives, in order.
        let qmp = vm.qmp();
        qmp.send_raw(b"{\"execute\": \"quit\", \"id\": \"quit\"}\r\n")
            .map_err(qmp_err("sending quit"))?;
        let mut before_reply = Vec::new();
        loop {
            let msg = qmp
                .read_message(WAIT)
                .map_err(qmp_err("reading quit's reply"))?;
            if msg.get("event").is_some() {
                before_reply.push(msg);
                continue;
            }
            if msg != json!({"return": {}, "id": "quit"}) {
                return Err(at(fail(format!("quit answered {msg}"))));
            }
            break;
        }
        // The old socket was removed before the reply left, so the new process need not
        // race the old one's exit.
        match std::fs::symlink_metadata(&files.qmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                return Err(at(fail(
                    "quit's reply arrived while the old socket was still at the path",
                )));
            }
            Err(e) => return Err(at(fail(format!("{}: {e}", files.qmp.display())))),
        }
        // At once.
        let mut next = VmProcess::spawn(binary, &s_args, &files.qmp, None)
            .map_err(|e| at(fail(format!("a new cpr-vm started on quit's reply: {e}"))))?;
        if !before_reply.is_empty() {
            return Err(at(fail(format!(
                "{} came before the reply to quit",
                before_reply[0]
            ))));
        }
        let qmp = vm.qmp();
        let event = qmp
            .read_message(WAIT)
            .map_err(qmp_err("reading SHUTDOWN"))?;
        if event.get("event") != Some(&json!("SHUTDOWN"))
            || event["data"] != json!({"guest": false, "reason": "host-qmp-quit"})
        {
            return Err(at(fail(format!("after quit's reply: {event}"))));
        }
        match qmp.read_message(WAIT) {
            Err(ClientError::Closed) => {}
            other => return Err(at(fail(format!("after SHUTDOWN: {other:?}, not EOF")))),
        }
        expect_exit(vm.wait_exit(WAIT)?, 0, "quit").map_err(at)?;
        // The old process is gone; the new socket is still there and accepts connections.
        let is_socket =
            std::fs::symlink_metadata(&files.qmp).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            return Err(at(fail("the new process's socket is gone")));
        }
        UnixStream::connect(&files.qmp)
            .map_err(|e| at(fail(format!("the new process's socket refuses: {e}"))))?;
        expect_status(&mut next, "prelaunch").map_err(at)?;
        next.execute("cpr-load", json!({"filename": files.state}))
            .map_err(at)?;
        expect_status(&mut next, "running").map_err(at)?;
        check_carried_on(&mut next, &before).map_err(at)?;
        vm = next;
    }
    // An operator who removed the socket to start the new process before quitting the old
    // one: the old process, quitting, leaves the new process's socket alone.
    let before = vm.progress()?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    std::fs::remove_file(&files.qmp).map_err(|e| fail(e.to_string()))?;
    let mut next = VmProcess::spawn(binary, &s_args, &files.qmp, None)?;
    expect_exit(vm.quit()?, 0, "quit")?;
    UnixStream::connect(&files.qmp).map_err(|e| {
        fail(format!(
            "the old process, quitting, removed the new process's socket: {e}"
        ))
    })?;
    next.execute("cpr-load", json!({"filename": files.state}))?;
    check_carried_on(&mut next, &before)?;
    expect_exit(next.quit()?, 0, "the last quit")?;
    Ok(format!(
        "{cycles} restarts on quit's reply: the path was free when the reply came and the new process bound it every time, reply before SHUTDOWN; a quitting process left a new socket alone"
    ))
}

/// (issue 7, item 6) Under umask 000 the `--serial` file is created 0600, like the QMP
/// socket; an existing serial file keeps its mode.
pub fn serial_mode(binary: &Path) -> Outcome {
    let dir = Scratch::new("serial-mode")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &[]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(binary)
        .args(&args);
    let mut vm = VmProcess::spawn_command(cmd, &files.qmp, None)?;
    vm.wait_progress(0, Some(2), WAIT)?;
    let console = std::fs::read_to_string(&files.serial).map_err(|e| fail(e.to_string()))?;
    if !console.contains("cpr-guest: kernel up") {
        return Err(fail(format!(
            "no guest banner in the serial file: {console:?}"
        )));
    }
    let (serial, socket) = (mode(&files.serial)?, mode(&files.qmp)?);
    if (serial, socket) != (0o600, 0o600) {
        return Err(fail(format!(
            "under umask 000: serial file {serial:o}, QMP socket {socket:o}; expected 600"
        )));
    }
    expect_exit(vm.quit()?, 0, "quit")?;
    // A file the operator made keeps the mode they gave it.
    std::fs::set_permissions(&files.serial, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| fail(e.to_string()))?;
    let mut vm = VmProcess::spawn(binary, &args, &files.qmp, None)?;
    vm.wait_progress(0, Some(2), WAIT)?;
    let kept = mode(&files.serial)?;
    expect_exit(vm.quit()?, 0, "quit")?;
    if kept != 0o640 {
        return Err(fail(format!("an existing 640 serial file became {kept:o}")));
    }
    Ok("serial file 600 under umask 000 (socket too); an existing 640 file kept its mode".into())
}

/// (issue 7, item 7) A guest failure does not look like `quit`: a triple fault gives
/// SHUTDOWN {guest: true, reason: guest-reset} and exit status 3; a panic gives
/// GUEST_PANICKED, STOP and `guest-panicked`, and `quit` then exits 3; a clean `quit`
/// exits 0.
pub fn guest_failures(binary: &Path) -> Outcome {
    let dir = Scratch::new("guest-failures")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("128M", 1, &[]);

    let mut vm = boot(binary, &files, &args)?;
    vm.execute("x-guest-fault", json!({"kind": "triple-fault"}))?;
    let shutdown = vm.wait_event("SHUTDOWN", WAIT)?;
    let want = json!({"guest": true, "reason": "guest-reset"});
    if shutdown.data.as_ref() != Some(&want) {
        return Err(fail(format!(
            "triple fault: SHUTDOWN {:?}, expected {want}",
            shutdown.data
        )));
    }
    expect_exit(vm.wait_exit(WAIT)?, 3, "triple fault")?;
    if files.qmp.exists() {
        return Err(fail("the socket outlived the process"));
    }

    let mut vm = boot(binary, &files, &args)?;
    vm.execute("x-guest-fault", json!({"kind": "panic"}))?;
    let panicked = vm.wait_event("GUEST_PANICKED", WAIT)?;
    let action = panicked.data.as_ref().and_then(|d| d.get("action"));
    if action != Some(&Value::from("pause")) {
        return Err(fail(format!("GUEST_PANICKED {:?}", panicked.data)));
    }
    vm.wait_event("STOP", WAIT)?;
    expect_status(&mut vm, "guest-panicked")?;
    expect_exit(vm.quit()?, 3, "quit of a panicked guest")?;

    let vm = boot(binary, &files, &args)?;
    expect_exit(vm.quit()?, 0, "a clean quit")?;
    Ok("triple fault: SHUTDOWN guest-reset, exit 3; panic: GUEST_PANICKED, guest-panicked, quit exits 3; clean quit exits 0".into())
}
