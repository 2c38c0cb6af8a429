//! `cpr-vm demo`: the main job, on nothing but the built-in guest and a temporary directory.
//!
//! Boots the guest in a `cpr-vm` process, lets it work, and then, cycle after cycle:
//! `cpr-save` over QMP, `quit`, start a new `cpr-vm` with the same arguments plus `-S`,
//! `cpr-load`, and show that the guest carried on (its progress continues from where it
//! was, its timer still ticks, its RAM check finds nothing wrong), with the blackout time.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::DemoArgs;
use crate::error::{Error, Result};
use crate::harness::{HarnessError, Progress, VmProcess, sibling_binary};

/// One save → quit → start → load cycle, timed.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// Progress when the save was sent (read just before).
    pub before: Progress,
    /// The guest's first report in the new process.
    pub after: Progress,
    /// `cpr-save` round trip.
    pub save: Duration,
    /// `quit` until the old process is gone.
    pub exit: Duration,
    /// New process spawned until its QMP monitor answered.
    pub start: Duration,
    /// `cpr-load` round trip.
    pub load: Duration,
    /// `cpr-load` answered until the guest's first report.
    pub first_progress: Duration,
    /// `cpr-save` sent until the guest's first report in the new process.
    pub blackout: Duration,
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

/// Saves `vm` to `files.state`, quits it, starts a new process with `args` + `-S`, loads,
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
    vm.quit()?;
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
    let state_bytes = std::fs::metadata(&files.state).map_or(0, |m| m.len());
    Ok((
        vm,
        Cycle {
            before,
            after,
            save,
            exit,
            start,
            load,
            first_progress,
            blackout,
            state_bytes,
        },
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!("/dev/shm/cpr-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Other(format!("cannot create {}: {e}", dir.display())))?;
    let result = run_in(&dir, args);
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(dir: &Path, args: &DemoArgs) -> Result<()> {
    let h = |e: HarnessError| Error::Other(e.to_string());
    let binary = sibling_binary("cpr-vm");
    let files = VmFiles::in_dir(dir);
    let mem = args.mem_size.to_string();
    let vm_args = files.args(&mem, args.smp, &[]);
    println!(
        "cpr-vm demo: {} of guest RAM in {}, {} vCPU(s), state file {}",
        mem,
        files.ram.display(),
        args.smp,
        files.state.display()
    );
    let mut vm = VmProcess::spawn(&binary, &vm_args, &files.qmp, None).map_err(h)?;
    let p = vm
        .wait_progress(0, Some(10), Duration::from_secs(30))
        .map_err(h)?;
    std::thread::sleep(Duration::from_millis(300));
    let p2 = vm.progress().map_err(h)?;
    println!(
        "booted: the guest's workload has processed {} pages, seen {} timer ticks, {} RAM errors (first report: {} pages)",
        p2.progress, p2.ticks, p2.errors, p.progress
    );
    let mut failures = Vec::new();
    for n in 1..=args.cycles {
        let (new_vm, c) = cycle(&binary, vm, &files, &vm_args).map_err(h)?;
        vm = new_vm;
        let continued = c.after.progress >= c.before.progress;
        let restarted = c.after.progress < c.before.progress;
        println!(
            "cycle {n}: cpr-save {:.1} ms ({} bytes) | quit {:.1} ms | new process ready {:.1} ms | cpr-load {:.1} ms | first progress {:.1} ms | blackout {:.1} ms",
            ms(c.save),
            c.state_bytes,
            ms(c.exit),
            ms(c.start),
            ms(c.load),
            ms(c.first_progress),
            ms(c.blackout)
        );
        println!(
            "         progress {} -> {} ({}), ticks {} -> {}, RAM errors {}",
            c.before.progress,
            c.after.progress,
            if continued {
                "carried on"
            } else if restarted {
                "RESTARTED"
            } else {
                "stuck"
            },
            c.before.ticks,
            c.after.ticks,
            c.after.errors
        );
        if !continued || c.after.errors > 0 {
            failures.push(n);
        }
        // Let it run a little between cycles, and check ticks keep arriving.
        let t = vm.progress().map_err(h)?.ticks;
        let later = vm
            .wait_progress(c.after.progress, Some(t), Duration::from_secs(20))
            .map_err(h)?;
        if later.errors > 0 {
            failures.push(n);
        }
    }
    let last = vm.progress().map_err(h)?;
    vm.quit().map_err(h)?;
    if failures.is_empty() {
        println!(
            "the guest survived {} process restarts: its progress never restarted ({} pages now), its timer kept ticking ({} ticks), and its RAM check found {} errors",
            args.cycles, last.progress, last.ticks, last.errors
        );
        Ok(())
    } else {
        Err(Error::Other(format!(
            "the guest did not carry on cleanly in cycle(s) {failures:?}"
        )))
    }
}
