//! One hand-off in mainline's `cpr-transfer` or `cpr-exec` mode, timed: what the demo
//! shows and the bench measures.
//!
//! * **Guest pause**: from the old process's STOP event to the new one's RESUME, by the
//!   processes' own event timestamps (cpr-transfer only: after an exec the new image's
//!   RESUME goes out before a client can reconnect).
//! * **Until RESUME**, as a client sees it: from `migrate` sent (the client's clock) to the
//!   new process's RESUME (its timestamp), cpr-transfer only.
//! * **Blackout**, as a client sees it: from `migrate` sent until the guest's own progress
//!   counter (read from guest RAM by the new process, `ram-progress`) is seen to move in the
//!   new process. The built-in guest advances in bursts a few milliseconds apart (every
//!   interrupt runs in emulated kernel mode on this host), which this includes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{HarnessError, Progress, Result, VmFiles, VmProcess};

/// What one hand-off took.
#[derive(Debug, Clone)]
pub struct HandoffRun {
    /// Progress when `migrate` was sent (read just before).
    pub before: Progress,
    /// The guest's first report in the new process.
    pub after: Progress,
    /// `migrate` sent until its reply (cpr-transfer: the new process has the guest).
    pub migrate: Duration,
    /// STOP (old process) to RESUME (new process), by their event timestamps.
    pub guest_pause: Option<Duration>,
    /// `migrate` sent until the old process stopped the guest (cpr-transfer: the new
    /// process took the descriptors and built its machine meanwhile, the guest running).
    pub until_stop: Option<Duration>,
    /// `migrate` sent (client's clock) until RESUME in the new process (its event
    /// timestamp): when the guest runs again, as a client sees it (cpr-transfer).
    pub until_resume: Option<Duration>,
    /// `migrate` sent until the guest's RAM progress counter was seen to move in the new
    /// process. The built-in guest advances in bursts (its interrupts run in emulated
    /// kernel mode on this host), so this is `until_resume` plus up to one burst period.
    pub blackout: Duration,
    /// `quit` sent to the old process until it was gone (off the critical path).
    pub old_gone: Option<Duration>,
}

fn ts_micros(e: &cpr::qmp::Event) -> i64 {
    e.timestamp.seconds * 1_000_000 + e.timestamp.microseconds
}

fn event_micros(vm: &mut VmProcess, name: &str) -> Result<i64> {
    Ok(ts_micros(&vm.wait_event(name, Duration::from_secs(20))?))
}

fn wall_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(u64::try_from(d).unwrap_or(0))
}

/// Polls `vm` until its guest's RAM progress counter moves; returns when that was seen.
pub fn wait_ram_progress(vm: &mut VmProcess, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let p = vm.progress()?;
        match (first, p.ram_progress) {
            (None, Some(v)) => first = Some(v),
            (Some(f), Some(v)) if v > f => return Ok(Instant::now()),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Check(format!(
                "the guest's RAM progress did not move within {timeout:?} (last: {p:?})"
            )));
        }
    }
}

/// `args` with `--qmp` pointing at `qmp`.
fn with_qmp(args: &[OsString], qmp: &Path) -> Vec<OsString> {
    let mut a = args.to_vec();
    if let Some(i) = a.iter().position(|x| x == "--qmp") {
        a[i + 1] = qmp.into();
    }
    a
}

/// The `--incoming` arguments of a cpr-transfer target.
pub fn transfer_incoming(main: &Path, cpr: &Path) -> Vec<OsString> {
    vec![
        "--incoming".into(),
        format!("unix:{}", main.display()).into(),
        "--incoming".into(),
        json!({"channel-type": "cpr",
            "addr": {"transport": "socket", "type": "unix", "path": cpr}})
        .to_string()
        .into(),
    ]
}

/// `migrate`'s channels for cpr-transfer.
pub fn transfer_channels(main: &Path, cpr: &Path) -> Value {
    json!({"channels": [
        {"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": main}},
        {"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": cpr}},
    ]})
}

/// Waits until `path` exists (a socket the new process binds).
pub fn wait_path(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(HarnessError::Check(format!(
                "{} never appeared",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// The monitor path the next process of a chain uses: the two alternate, so that the
/// new process's monitor is up (and sees its RESUME) before the hand-off.
pub fn next_qmp(files: &VmFiles, current: &Path) -> PathBuf {
    let b = files.qmp.with_extension("b.sock");
    if current == b { files.qmp.clone() } else { b }
}

/// One cpr-transfer of the running guest of `old` (whose arguments are `args`, with its
/// monitor at `old_qmp`) to a new process started now, on the other monitor path.
pub fn transfer_cycle(
    binary: &Path,
    mut old: VmProcess,
    files: &VmFiles,
    args: &[OsString],
    old_qmp: &Path,
) -> Result<(VmProcess, PathBuf, HandoffRun)> {
    let dir = files.qmp.parent().unwrap_or(Path::new("/tmp"));
    let (main, cpr) = (dir.join("main.sock"), dir.join("cpr.sock"));
    let new_qmp = next_qmp(files, old_qmp);
    let mut new_args = with_qmp(args, &new_qmp);
    new_args.extend(transfer_incoming(&main, &cpr));
    let mut new = VmProcess::spawn(binary, &new_args, &new_qmp, None)?;
    wait_path(&cpr, Duration::from_secs(20))?;
    // The new process answers commands only once it has the CPR state; its RESUME
    // event reaches this connection all the same.
    old.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    )?;
    old.execute("migrate-set-parameters", json!({"mode": "cpr-transfer"}))?;
    let _ = old.events()?;
    let _ = new.events()?;
    let before = old.progress()?;
    let sent = wall_micros();
    let t0 = Instant::now();
    old.execute("migrate", transfer_channels(&main, &cpr))?;
    let migrate = t0.elapsed();
    let moved = wait_ram_progress(&mut new, Duration::from_secs(20))?;
    let blackout = moved - t0;
    let stop = event_micros(&mut old, "STOP")?;
    let resume = event_micros(&mut new, "RESUME")?;
    let info = old.execute("query-migrate", json!({}))?;
    if info["status"] != "completed" {
        return Err(HarnessError::Check(format!("old process: {info}")));
    }
    let after = new.wait_new_report(Duration::from_secs(20))?;
    if after.progress < before.progress || after.errors > 0 {
        return Err(HarnessError::Check(format!(
            "the guest did not carry on cleanly: {before:?} -> {after:?}"
        )));
    }
    let t1 = Instant::now();
    old.quit_on_reply()?;
    let status = old.wait_exit(Duration::from_secs(20))?;
    let old_gone = t1.elapsed();
    if !status.success() {
        return Err(HarnessError::Check(format!(
            "the old process exited with {status}"
        )));
    }
    Ok((
        new,
        new_qmp,
        HandoffRun {
            before,
            after,
            migrate,
            guest_pause: Some(micros(resume - stop)),
            until_stop: Some(micros(stop - sent)),
            until_resume: Some(micros(resume - sent)),
            blackout,
            old_gone: Some(old_gone),
        },
    ))
}

/// Mode `cpr-exec` on `vm`, whose `cpr-exec-command` runs `binary` again with `args` plus
/// `--incoming file:` (the state file of `files`).
pub fn set_cpr_exec(
    vm: &mut VmProcess,
    binary: &Path,
    args: &[OsString],
    files: &VmFiles,
) -> Result<()> {
    let mut command: Vec<String> = vec![binary.display().to_string()];
    command.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    command.push("--incoming".into());
    command.push(format!("file:{}", files.state.display()));
    vm.execute(
        "migrate-set-parameters",
        json!({"mode": "cpr-exec", "cpr-exec-command": command}),
    )
    .map(drop)
}

/// One cpr-exec of the running guest of `vm` (arguments `args`, monitor at `qmp`): the
/// same process execs `binary` with the same arguments plus `--incoming file:`.
pub fn exec_cycle(
    binary: &Path,
    mut vm: VmProcess,
    files: &VmFiles,
    args: &[OsString],
    qmp: &Path,
) -> Result<(VmProcess, HandoffRun)> {
    set_cpr_exec(&mut vm, binary, args, files)?;
    let before = vm.progress()?;
    let pid = vm.pid();
    let t0 = Instant::now();
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    let migrate = t0.elapsed();
    vm.reconnect(qmp)?;
    let moved = wait_ram_progress(&mut vm, Duration::from_secs(20))?;
    let blackout = moved - t0;
    if vm.pid() != pid {
        return Err(HarnessError::Check("the pid changed".into()));
    }
    let after = vm.wait_new_report(Duration::from_secs(20))?;
    if after.progress < before.progress || after.errors > 0 {
        return Err(HarnessError::Check(format!(
            "the guest did not carry on cleanly: {before:?} -> {after:?}"
        )));
    }
    Ok((
        vm,
        HandoffRun {
            before,
            after,
            migrate,
            guest_pause: None,
            until_stop: None,
            until_resume: None,
            blackout,
            old_gone: None,
        },
    ))
}
