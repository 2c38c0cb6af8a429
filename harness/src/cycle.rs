//! One save → quit → start → load cycle of a real `cpr-vm` process, timed: the step that
//! `cpr-vm demo`, `cargo xtask e2e` and `cargo xtask bench` repeat.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{HarnessError, Progress, VmProcess};

/// One save → quit → start → load cycle, timed.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// Progress when the save was sent (read just before).
    pub before: Progress,
    /// The guest's first report in the new process.
    pub after: Progress,
    /// `cpr-save` round trip.
    pub save: Duration,
    /// `quit` until its reply: the new process starts then, while the old one still exits.
    pub exit: Duration,
    /// `quit` until the old process was gone (measured off the critical path, after the
    /// guest ran in the new process).
    pub old_gone: Duration,
    /// New process spawned until its QMP monitor answered.
    pub start: Duration,
    /// `cpr-load` round trip.
    pub load: Duration,
    /// `cpr-load` answered until the guest's first report.
    pub first_progress: Duration,
    /// `cpr-save` sent until the guest's first report in the new process.
    pub blackout: Duration,
    /// STOP in the old process to RESUME in the new one, by their event timestamps: how
    /// long the guest did not run.
    pub guest_pause: Option<Duration>,
    /// Size of the state file.
    pub state_bytes: u64,
}

/// Files of a demo/bench VM.
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// Guest RAM.
    pub ram: PathBuf,
    /// Checkpoint.
    pub state: PathBuf,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Guest console.
    pub serial: PathBuf,
}

impl VmFiles {
    /// The usual names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        VmFiles {
            ram: dir.join("guest.ram"),
            state: dir.join("vm.state"),
            qmp: dir.join("qmp.sock"),
            serial: dir.join("serial.log"),
        }
    }

    /// `cpr-vm` arguments for a VM whose RAM is a memfd (`--mem-backend memfd`, no file):
    /// [`args`](Self::args) without `--mem-path`.
    pub fn memfd_args(&self, mem_size: &str, smp: u32, extra: &[&str]) -> Vec<OsString> {
        let mut with = vec!["--mem-backend", "memfd"];
        with.extend_from_slice(extra);
        let mut a = self.args(mem_size, smp, &with);
        if let Some(i) = a.iter().position(|x| x == "--mem-path") {
            a.drain(i..i + 2);
        }
        a
    }

    /// `cpr-vm` arguments for this VM.
    pub fn args(&self, mem_size: &str, smp: u32, extra: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--mem-path".into(),
            self.ram.clone().into(),
            "--mem-size".into(),
            mem_size.into(),
            "--smp".into(),
            smp.to_string().into(),
            "--qmp".into(),
            self.qmp.clone().into(),
            "--serial".into(),
            self.serial.clone().into(),
        ];
        a.extend(extra.iter().map(OsString::from));
        a
    }
}

/// Saves `vm` to `files.state`, quits it, starts a new process with `args` + `-S` as soon
/// as the quit is answered (the old process still exiting), loads,
/// and waits for the guest to move on.
pub fn cycle(
    binary: &Path,
    vm: VmProcess,
    files: &VmFiles,
    args: &[OsString],
) -> std::result::Result<(VmProcess, Cycle), HarnessError> {
    let mut vm = vm;
    let before = vm.progress()?;
    let t0 = Instant::now();
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    let save = t0.elapsed();
    let t1 = Instant::now();
    let mut old = vm;
    old.quit_on_reply()?;
    let exit = t1.elapsed();
    let mut new_args = args.to_vec();
    new_args.push("-S".into());
    let mut vm = VmProcess::spawn(binary, &new_args, &files.qmp, None)?;
    let start = vm.ready - vm.spawned;
    let t2 = Instant::now();
    vm.execute("cpr-load", json!({"filename": files.state}))?;
    let load = t2.elapsed();
    let t3 = Instant::now();
    let after = vm.wait_new_report(Duration::from_secs(20))?;
    let first_progress = t3.elapsed();
    let blackout = t0.elapsed();
    let ts = |e: cpr::qmp::Event| e.timestamp.seconds * 1_000_000 + e.timestamp.microseconds;
    let guest_pause = match (
        old.wait_event("STOP", Duration::from_millis(100)),
        vm.wait_event("RESUME", Duration::from_millis(100)),
    ) {
        (Ok(stop), Ok(resume)) => u64::try_from(ts(resume) - ts(stop))
            .ok()
            .map(Duration::from_micros),
        _ => None,
    };
    let status = old.wait_exit(Duration::from_secs(20))?;
    let old_gone = t1.elapsed();
    if !status.success() {
        return Err(HarnessError::Check(format!(
            "the old process exited with {status}"
        )));
    }
    let state_bytes = std::fs::metadata(&files.state).map_or(0, |m| m.len());
    Ok((
        vm,
        Cycle {
            before,
            after,
            save,
            exit,
            old_gone,
            start,
            load,
            first_progress,
            blackout,
            guest_pause,
            state_bytes,
        },
    ))
}
