//! `cpr-vm demo`: the main job, on nothing but the built-in guest and a temporary directory.
//!
//! Boots the guest in a `cpr-vm` process, lets it work, and then, cycle after cycle:
//! `cpr-save` over QMP, `quit`, start a new `cpr-vm` with the same arguments plus `-S`,
//! `cpr-load`, and show that the guest carried on (its progress continues from where it
//! was, its timer still ticks, its RAM check finds nothing wrong), with the blackout time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::AppError;
use cpr_harness::{VmFiles, VmProcess, cycle, sibling_binary};

use crate::cli::DemoArgs;

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

fn run_in(dir: &Path, args: &DemoArgs) -> Result<(), AppError> {
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
    let mut vm = VmProcess::spawn(&binary, &vm_args, &files.qmp, None)?;
    let p = vm.wait_progress(0, Some(10), Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let p2 = vm.progress()?;
    println!(
        "booted: the guest's workload has processed {} pages, seen {} timer ticks, {} RAM errors (first report: {} pages)",
        p2.progress, p2.ticks, p2.errors, p.progress
    );
    let mut failures = Vec::new();
    for n in 1..=args.cycles {
        let (new_vm, c) = cycle(&binary, vm, &files, &vm_args)?;
        vm = new_vm;
        let continued = c.after.progress >= c.before.progress;
        let restarted = c.after.progress < c.before.progress;
        println!(
            "cycle {n}: cpr-save {:.1} ms ({} bytes) | quit answered {:.1} ms | new process ready {:.1} ms | cpr-load {:.1} ms | first progress {:.1} ms | blackout {:.1} ms (old process gone after {:.1} ms, off the critical path)",
            ms(c.save),
            c.state_bytes,
            ms(c.exit),
            ms(c.start),
            ms(c.load),
            ms(c.first_progress),
            ms(c.blackout),
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
        // Let it run a little between cycles, and check ticks keep arriving.
        let t = vm.progress()?.ticks;
        let later = vm.wait_progress(c.after.progress, Some(t), Duration::from_secs(20))?;
        if later.errors > 0 {
            failures.push(n);
        }
    }
    let last = vm.progress()?;
    vm.quit()?;
    if failures.is_empty() {
        println!(
            "the guest survived {} process restarts: its progress never restarted ({} pages now), its timer kept ticking ({} ticks), and its RAM check found {} errors",
            args.cycles, last.progress, last.ticks, last.errors
        );
        Ok(())
    } else {
        Err(AppError::DemoFailed { cycles: failures })
    }
}
