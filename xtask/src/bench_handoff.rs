//! `cargo xtask bench`, hand-off modes: cpr-transfer and cpr-exec against RAM size and
//! vCPU count (memfd RAM, 128 MiB of guest data), next to the reboot-mode table.
//!
//! Columns: `migrate` (sent until its reply), `until STOP` (sent until the old process
//! stopped the guest: the new process took the descriptors and built its machine while
//! the guest ran), `guest pause` (STOP in the old process to RESUME in the new one, by
//! their event timestamps), `until RESUME` (sent, by the client's clock, until the new
//! process's RESUME: when the guest runs again as a client sees it), `progress seen` (sent
//! until the guest's RAM progress counter moved in the new process: `until RESUME` plus up
//! to one of the built-in guest's bursts, a few ms apart on this host), `old gone` (the old
//! process's exit, off the critical path).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use cpr_harness::handoff::{HandoffRun, exec_cycle, transfer_cycle};
use cpr_harness::{HarnessError, VmProcess};
use serde_json::{Value, json};

use crate::bench::{ms, stats};

/// The targets the issue sets, printed next to the results.
const TARGETS: &str = "targets: cpr-transfer guest pause <= 1 ms median, blackout <= 3 ms median, both flat within 15% from 256M to 16G; QEMU 10.0.2 cpr-transfer (TCG, 1 vCPU): pause 2.6-4.1 ms median, 30-87 ms migrate to running";

struct Rows {
    mem: String,
    smp: u32,
    transfer: Vec<HandoffRun>,
    exec: Vec<HandoffRun>,
}

fn run_config(
    binary: &Path,
    scratch: &Path,
    mem: &str,
    smp: u32,
    runs: u32,
) -> Result<Rows, HarnessError> {
    let dir = scratch.join(format!("handoff-{mem}-{smp}"));
    let files = crate::bench::fresh_files(&dir)?;
    let args = files.memfd_args(mem, smp, &["--workload-size", "128M"]);
    let mut vm = VmProcess::spawn(binary, &args, &files.qmp, None)?;
    vm.wait_progress(0, Some(5), Duration::from_secs(60))?;
    let mut qmp = files.qmp.clone();
    // One unmeasured hand-off warms the page cache and the binary.
    let (next, q, _) = transfer_cycle(binary, vm, &files, &args, &qmp)?;
    (vm, qmp) = (next, q);
    let mut transfer = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_millis(50));
        let (next, q, run) = transfer_cycle(binary, vm, &files, &args, &qmp)?;
        (vm, qmp) = (next, q);
        transfer.push(run);
    }
    // cpr-exec needs the process's own arguments: those of the current monitor path.
    let exec_args: Vec<OsString> = {
        let mut a = args.clone();
        if let Some(i) = a.iter().position(|x| x == "--qmp") {
            a[i + 1] = qmp.clone().into();
        }
        a
    };
    let mut exec = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_millis(50));
        let (next, run) = exec_cycle(binary, vm, &files, &exec_args, &qmp)?;
        vm = next;
        exec.push(run);
    }
    vm.quit()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Rows {
        mem: mem.to_string(),
        smp,
        transfer,
        exec,
    })
}

type Column = (&'static str, fn(&HandoffRun) -> Option<Duration>);

const COLUMNS: [Column; 6] = [
    ("migrate", |r| Some(r.migrate)),
    ("until STOP", |r| r.until_stop),
    ("guest pause", |r| r.guest_pause),
    ("until RESUME", |r| r.until_resume),
    ("progress seen", |r| Some(r.blackout)),
    ("old gone", |r| r.old_gone),
];

fn cell(runs: &[HandoffRun], f: fn(&HandoffRun) -> Option<Duration>) -> (String, Value) {
    let values: Vec<f64> = runs.iter().filter_map(f).map(ms).collect();
    if values.is_empty() {
        return ("-".into(), Value::Null);
    }
    let (m, lo, hi) = stats(values);
    (
        format!("{m:.2} [{lo:.2}-{hi:.2}]"),
        json!({"median_ms": m, "min_ms": lo, "max_ms": hi}),
    )
}

/// Runs the hand-off rows; prints the table, returns the JSON.
pub fn run(binary: &Path, scratch: &Path, sizes: &[String], runs: u32) -> Result<Value, String> {
    let mut rows = Vec::new();
    for mem in sizes {
        for smp in [1, 2] {
            eprintln!("bench: cpr-transfer and cpr-exec, {mem} RAM, {smp} vCPU(s), {runs} runs...");
            rows.push(run_config(binary, scratch, mem, smp, runs).map_err(|e| e.to_string())?);
        }
    }
    println!();
    println!(
        "hand-off modes, memfd RAM, 128 MiB of guest data: ms, median [min-max] over {runs} runs"
    );
    println!("{TARGETS}");
    print!("{:<6} {:>4} {:<13}", "RAM", "vCPU", "mode");
    for (name, _) in COLUMNS {
        print!(" {name:>22}");
    }
    println!();
    let mut out = Vec::new();
    for r in &rows {
        for (mode, runs) in [("cpr-transfer", &r.transfer), ("cpr-exec", &r.exec)] {
            print!("{:<6} {:>4} {:<13}", r.mem, r.smp, mode);
            let mut cols = serde_json::Map::new();
            for (name, f) in COLUMNS {
                let (text, v) = cell(runs, f);
                print!(" {text:>22}");
                cols.insert(name.to_string(), v);
            }
            println!();
            out.push(
                json!({"mem": r.mem, "vcpus": r.smp, "mode": mode, "runs": runs.len(),
                "phases": cols}),
            );
        }
    }
    Ok(Value::Array(out))
}
