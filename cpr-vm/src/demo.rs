//! `cpr-vm demo`: the main job, on nothing but the built-in guest and a temporary directory.
//!
//! Boots the guest in a `cpr-vm` process, lets it work, and then moves it to a new process,
//! again and again, in one of three ways (`--mode`):
//!
//! * `transfer` (the default, the fastest): a new `cpr-vm`, started with a `cpr` channel and
//!   a main channel, builds its machine; `migrate` in `cpr-transfer` mode hands it the
//!   memfd RAM and the device state; the guest pauses for about a millisecond;
//! * `exec`: `migrate` in `cpr-exec` mode saves and execs `cpr-vm` in the same process;
//! * `reboot`: V7's `cpr-save`, `quit`, a new `cpr-vm -S` started on the reply, `cpr-load`
//!   (what survives a host reboot).
//!
//! Each time it shows that the guest carried on (its progress continues from where it
//! was, its timer still ticks, its RAM check finds nothing wrong), with the times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::AppError;
use cpr_harness::handoff::{HandoffRun, exec_cycle, transfer_cycle};
use cpr_harness::{Progress, VmFiles, VmProcess, cycle, sibling_binary};

use crate::cli::{DemoArgs, DemoMode};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<(), AppError> {
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!("/dev/shm/cpr-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|source| AppError::DemoDir {
        path: dir.clone(),
        source,
    })?;
    let result = run_in(&dir, args);
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// What the guest did across one move, as the demo prints it.
fn carried_on(before: &Progress, after: &Progress) -> bool {
    let continued = after.progress >= before.progress;
    println!(
        "         progress {} -> {} ({}), ticks {} -> {}, RAM errors {}",
        before.progress,
        after.progress,
        if continued { "carried on" } else { "RESTARTED" },
        before.ticks,
        after.ticks,
        after.errors
    );
    continued && after.errors == 0
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", ms(d)))
}

fn print_handoff(n: u32, mode: &str, r: &HandoffRun) {
    match mode {
        "cpr-transfer" => println!(
            "{mode} {n}: migrate answered {:.2} ms | guest ran on until STOP {} | guest paused {} (STOP -> RESUME) | running in the new process {} after migrate was sent | progress seen {:.2} ms after | old process gone {} later, off the critical path",
            ms(r.migrate),
            opt_ms(r.until_stop),
            opt_ms(r.guest_pause),
            opt_ms(r.until_resume),
            ms(r.blackout),
            opt_ms(r.old_gone)
        ),
        _ => println!(
            "{mode} {n}: migrate answered {:.2} ms (then exec, same pid) | progress seen in the new image {:.2} ms after migrate",
            ms(r.migrate),
            ms(r.blackout)
        ),
    }
}

/// Starts the VM and lets the guest work a little; prints what it did.
fn boot(binary: &Path, vm_args: &[std::ffi::OsString], qmp: &Path) -> Result<VmProcess, AppError> {
    let mut vm = VmProcess::spawn(binary, vm_args, qmp, None)?;
    let p = vm.wait_progress(0, Some(10), Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let p2 = vm.progress()?;
    println!(
        "booted: the guest's workload has processed {} pages, seen {} timer ticks, {} RAM errors (first report: {} pages)",
        p2.progress, p2.ticks, p2.errors, p.progress
    );
    Ok(vm)
}

/// After move `n`: let the guest run a little and check its ticks keep arriving and its
/// RAM check stays clean; `n` joins `failures` if not.
fn runs_on(
    vm: &mut VmProcess,
    n: u32,
    after: &Progress,
    failures: &mut Vec<u32>,
) -> Result<(), AppError> {
    let t = vm.progress()?.ticks;
    let later = vm.wait_progress(after.progress, Some(t), Duration::from_secs(20))?;
    if later.errors > 0 {
        failures.push(n);
    }
    Ok(())
}

/// Quits the VM and sums up `moves` moves (`what`), or names the failed ones.
fn finish(mut vm: VmProcess, moves: u32, what: &str, failures: Vec<u32>) -> Result<(), AppError> {
    let last = vm.progress()?;
    vm.quit()?;
    if failures.is_empty() {
        println!(
            "the guest survived {moves} {what}: its progress never restarted ({} pages now), its timer kept ticking ({} ticks), and its RAM check found {} errors",
            last.progress, last.ticks, last.errors
        );
        Ok(())
    } else {
        Err(AppError::DemoFailed { cycles: failures })
    }
}

fn run_in(dir: &Path, args: &DemoArgs) -> Result<(), AppError> {
    let binary = sibling_binary("cpr-vm");
    let files = VmFiles::in_dir(dir);
    let mem = args.mem_size.to_string();
    if args.mode != DemoMode::Reboot {
        return run_handoff(&binary, &files, args);
    }
    let vm_args = files.args(&mem, args.smp, &[]);
    println!(
        "cpr-vm demo (reboot mode): {} of guest RAM in {}, {} vCPU(s), state file {}",
        mem,
        files.ram.display(),
        args.smp,
        files.state.display()
    );
    let mut vm = boot(&binary, &vm_args, &files.qmp)?;
    let mut failures = Vec::new();
    for n in 1..=args.cycles {
        let (new_vm, c) = cycle(&binary, vm, &files, &vm_args)?;
        vm = new_vm;
        let continued = c.after.progress >= c.before.progress;
        let restarted = c.after.progress < c.before.progress;
        println!(
            "cycle {n}: cpr-save {:.1} ms ({} bytes) | quit answered {:.1} ms | new process ready {:.1} ms | cpr-load {:.1} ms | first progress {:.1} ms | blackout {:.1} ms | guest paused {} (STOP -> RESUME) | old process gone after {:.1} ms, off the critical path",
            ms(c.save),
            c.state_bytes,
            ms(c.exit),
            ms(c.start),
            ms(c.load),
            ms(c.first_progress),
            ms(c.blackout),
            opt_ms(c.guest_pause),
            ms(c.old_gone)
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
        runs_on(&mut vm, n, &c.after, &mut failures)?;
    }
    finish(vm, args.cycles, "process restarts", failures)
}

/// The hand-off modes: memfd RAM, handed over by descriptor.
fn run_handoff(binary: &Path, files: &VmFiles, args: &DemoArgs) -> Result<(), AppError> {
    let mem = args.mem_size.to_string();
    let mut vm_args = files.memfd_args(&mem, args.smp, &[]);
    let mode = match args.mode {
        DemoMode::Exec => "cpr-exec",
        _ => "cpr-transfer",
    };
    println!(
        "cpr-vm demo ({mode}): {mem} of guest RAM in a memfd (no file anywhere), {} vCPU(s)",
        args.smp
    );
    let mut vm = boot(binary, &vm_args, &files.qmp)?;
    let mut qmp = files.qmp.clone();
    let mut failures = Vec::new();
    for n in 1..=args.cycles {
        let pid = vm.pid();
        let run = if args.mode == DemoMode::Exec {
            let (next, run) = exec_cycle(binary, vm, files, &vm_args, &qmp)?;
            vm = next;
            run
        } else {
            let (next, next_qmp, run) = transfer_cycle(binary, vm, files, &vm_args, &qmp)?;
            // The next hand-off starts from the new process, on its monitor path.
            if let Some(i) = vm_args.iter().position(|a| a == "--qmp") {
                vm_args[i + 1] = next_qmp.clone().into();
            }
            (vm, qmp) = (next, next_qmp);
            run
        };
        print_handoff(n, mode, &run);
        println!("         pid {pid} -> {}", vm.pid());
        if !carried_on(&run.before, &run.after) {
            failures.push(n);
        }
        runs_on(&mut vm, n, &run.after, &mut failures)?;
    }
    finish(vm, args.cycles, &format!("hand-offs ({mode})"), failures)
}
