//! `cargo xtask bench`: the blackout of a CPR reboot-mode cycle, phase by phase, against
//! RAM size and vCPU count, with real `cpr-vm` processes.
//!
//! Blackout = from `cpr-save` sent to the old process until the guest reports progress in
//! the new one. Phases: `cpr-save` (stop, capture, write, fsync, rename), `quit` (until the
//! old process is gone, VM teardown included), start (spawn until the new QMP monitor
//! answers: RAM mapped, socket up), `cpr-load` (read, check, new VM, restore), and first
//! progress (resume until the guest's next report).
//!
//! A second table is the cost of not sharing RAM: the mainline interface (`migrate` to a
//! `file:` URI, `migrate-incoming` in a new process) with RAM in place (`x-ignore-shared`)
//! next to RAM copied into the file (anonymous RAM), for each RAM size.
//!
//! RAM files are sparse files in a scratch directory on /dev/shm, and the guest's workload
//! is limited to 128 MiB (`--workload-size`) so that the 16 GiB case does not fill the
//! machine's memory: what grows is the RAM the VMM maps and registers with KVM, which is
//! what could make the blackout grow. The shared machine is noisy: read medians and
//! spreads, never single runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cpr_harness::{Cycle, VmFiles, cycle};
use cpr_harness::{HarnessError, VmProcess};
use serde_json::{Value, json};

/// One configuration's results.
struct Row {
    mem: String,
    smp: u32,
    cycles: Vec<Cycle>,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, min and max of `values`.
pub fn stats(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

type Phase = (&'static str, fn(&Cycle) -> Duration);

const PHASES: [Phase; 7] = [
    ("cpr-save", |c| c.save),
    ("quit answered", |c| c.exit),
    ("start", |c| c.start),
    ("cpr-load", |c| c.load),
    ("first progress", |c| c.first_progress),
    ("blackout", |c| c.blackout),
    ("old process gone", |c| c.old_gone),
];

fn run_config(
    binary: &Path,
    scratch: &Path,
    mem: &str,
    smp: u32,
    runs: u32,
) -> Result<Row, HarnessError> {
    let dir = scratch.join(format!("{mem}-{smp}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Check(e.to_string()))?;
    let files = VmFiles::in_dir(&dir);
    let args = files.args(mem, smp, &["--workload-size", "128M"]);
    let mut vm = VmProcess::spawn(binary, &args, &files.qmp, None)?;
    vm.wait_progress(0, Some(5), Duration::from_secs(60))?;
    // One unmeasured cycle warms the page cache and the binary.
    let (mut vm_next, _) = cycle(binary, vm, &files, &args)?;
    let mut cycles = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_millis(50));
        let (next, c) = cycle(binary, vm_next, &files, &args)?;
        if c.after.progress < c.before.progress || c.after.errors > 0 {
            return Err(HarnessError::Check(format!(
                "{mem}/{smp}: guest did not carry on cleanly: {:?} -> {:?}",
                c.before, c.after
            )));
        }
        cycles.push(c);
        vm_next = next;
    }
    vm_next.quit()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        mem: mem.to_string(),
        smp,
        cycles,
    })
}

fn row_json(r: &Row) -> Value {
    let mut phases = serde_json::Map::new();
    for (name, f) in PHASES {
        let (median, min, max) = stats(r.cycles.iter().map(|c| ms(f(c))).collect());
        phases.insert(
            name.to_string(),
            json!({"median_ms": median, "min_ms": min, "max_ms": max}),
        );
    }
    let size = r.cycles.first().map_or(0, |c| c.state_bytes);
    json!({"mem": r.mem, "vcpus": r.smp, "runs": r.cycles.len(),
           "state_file_bytes": size, "phases": phases})
}

/// One mainline cpr-reboot (`migrate` to a file, new process, `migrate-incoming`), timed.
struct MainlineRun {
    /// `migrate` sent until `query-migrate` says completed.
    migrate: Duration,
    /// `migrate-incoming` sent until completed (the guest resumes then).
    incoming: Duration,
    /// `migrate` sent until the guest reported progress in the new process.
    blackout: Duration,
    /// Size of the migration file.
    file_bytes: u64,
}

fn qmp_wait_completed(vm: &mut VmProcess) -> Result<(), HarnessError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = vm.execute("query-migrate", json!({}))?;
        match info["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") => return Err(HarnessError::Check(format!("migration failed: {info}"))),
            _ if std::time::Instant::now() > deadline => {
                return Err(HarnessError::Check("migration did not complete".into()));
            }
            _ => std::thread::sleep(Duration::from_micros(500)),
        }
    }
}

fn mainline_configure(vm: &mut VmProcess, ignore_shared: bool) -> Result<(), HarnessError> {
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]}),
    )?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    Ok(())
}

/// In place: RAM in a shared /dev/shm file with `x-ignore-shared`. Copied: private
/// anonymous RAM (not shared: mainline copies it into the file), on both sides.
fn mainline_run(
    binary: &Path,
    scratch: &Path,
    mem: &str,
    copied: bool,
) -> Result<MainlineRun, HarnessError> {
    let dir = scratch.join(format!("{mem}-{}", if copied { "copy" } else { "inplace" }));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Check(e.to_string()))?;
    let files = VmFiles::in_dir(&dir);
    let mut args = files.args(mem, 1, &["--workload-size", "128M"]);
    if copied {
        // Private anonymous RAM: the classic RAM that is not shared.
        let i = args.iter().position(|a| a == "--mem-path").unwrap_or(0);
        args.drain(i..i + 2);
        args.push("--mem-share".into());
        args.push("off".into());
    }
    let mut vm = VmProcess::spawn(binary, &args, &files.qmp, None)?;
    vm.wait_progress(0, Some(5), Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(200));
    mainline_configure(&mut vm, !copied)?;
    let before = vm.progress()?;
    let t0 = std::time::Instant::now();
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    qmp_wait_completed(&mut vm)?;
    let migrate = t0.elapsed();
    vm.quit()?;
    let mut dest = args.clone();
    dest.push("--incoming".into());
    dest.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &dest, &files.qmp, None)?;
    mainline_configure(&mut vm, !copied)?;
    let t1 = std::time::Instant::now();
    vm.execute(
        "migrate-incoming",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    qmp_wait_completed(&mut vm)?;
    let incoming = t1.elapsed();
    let after = vm.wait_new_report(Duration::from_secs(60))?;
    let blackout = t0.elapsed();
    if after.errors > 0 || after.progress < before.progress {
        return Err(HarnessError::Check(format!(
            "{mem}: the guest did not carry on cleanly: {before:?} -> {after:?}"
        )));
    }
    let file_bytes = std::fs::metadata(&files.state).map_or(0, |m| m.len());
    vm.quit()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MainlineRun {
        migrate,
        incoming,
        blackout,
        file_bytes,
    })
}

/// The cost of not sharing RAM: mainline cpr-reboot with RAM in place vs copied.
fn run_copy_case(
    binary: &Path,
    scratch: &Path,
    sizes: &[String],
    runs: u32,
) -> Result<Value, String> {
    println!();
    println!(
        "mainline cpr-reboot (migrate file: / migrate-incoming), 1 vCPU, 128 MiB of guest data: ms, median [min-max] over {runs} runs"
    );
    println!(
        "{:<6} {:<8} {:>12} {:>22} {:>22} {:>22}",
        "RAM", "RAM is", "file B", "migrate", "migrate-incoming", "blackout"
    );
    let mut out = Vec::new();
    for mem in sizes {
        for copied in [false, true] {
            eprintln!(
                "bench: mainline {mem}, RAM {}...",
                if copied { "copied" } else { "in place" }
            );
            let mut rs = Vec::new();
            for _ in 0..runs {
                rs.push(mainline_run(binary, scratch, mem, copied).map_err(|e| e.to_string())?);
            }
            let col = |f: fn(&MainlineRun) -> Duration| {
                let (m, lo, hi) = stats(rs.iter().map(|r| ms(f(r))).collect());
                (format!("{m:.1} [{lo:.1}-{hi:.1}]"), m)
            };
            let (mig, mig_m) = col(|r| r.migrate);
            let (inc, inc_m) = col(|r| r.incoming);
            let (blk, blk_m) = col(|r| r.blackout);
            let bytes = rs.first().map_or(0, |r| r.file_bytes);
            let kind = if copied { "copied" } else { "in place" };
            println!("{mem:<6} {kind:<8} {bytes:>12} {mig:>22} {inc:>22} {blk:>22}");
            out.push(json!({"mem": mem, "ram": kind, "file_bytes": bytes,
                "migrate_ms": mig_m, "incoming_ms": inc_m, "blackout_ms": blk_m}));
        }
    }
    Ok(Value::Array(out))
}

/// Runs the benchmark and prints the table and the JSON (also written to `json_out`).
pub fn run(
    binary: &Path,
    runs: u32,
    sizes: &[String],
    only: &[String],
    json_out: &Path,
) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("bench needs /dev/kvm, which is absent on this machine".into());
    }
    let wanted = |table: &str| only.is_empty() || only.iter().any(|o| o == table);
    let scratch = PathBuf::from(format!("/dev/shm/cpr-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let reboot_sizes: &[String] = if wanted("reboot") { sizes } else { &[] };
    for mem in reboot_sizes {
        for smp in [1, 2] {
            eprintln!("bench: {mem} RAM, {smp} vCPU(s), {runs} runs...");
            let row = run_config(binary, &scratch, mem, smp, runs).map_err(|e| e.to_string());
            let _ = std::fs::remove_dir_all(&scratch);
            rows.push(row?);
        }
    }
    println!();
    println!(
        "CPR reboot mode, in-place RAM: blackout phases in ms, median [min-max] over {runs} runs"
    );
    print!("{:<6} {:>4} {:>10}", "RAM", "vCPU", "state B");
    for (name, _) in PHASES {
        print!(" {name:>20}");
    }
    println!();
    for r in &rows {
        let size = r.cycles.first().map_or(0, |c| c.state_bytes);
        print!("{:<6} {:>4} {:>10}", r.mem, r.smp, size);
        for (_, f) in PHASES {
            let (median, min, max) = stats(r.cycles.iter().map(|c| ms(f(c))).collect());
            print!(" {:>20}", format!("{median:.1} [{min:.1}-{max:.1}]"));
        }
        println!();
    }
    let handoff = if wanted("handoff") {
        crate::bench_handoff::run(binary, &scratch, sizes, runs)
    } else {
        Ok(Value::Null)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let handoff = handoff?;
    let copy = if wanted("copy") {
        run_copy_case(binary, &scratch, sizes, runs.min(3))
    } else {
        Ok(Value::Null)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let copy = copy?;
    let doc = json!({"benchmark": "cpr-reboot-blackout", "runs": runs,
                     "results": rows.iter().map(row_json).collect::<Vec<_>>(),
                     "handoff": handoff,
                     "mainline_in_place_vs_copied": copy});
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    println!();
    println!("{text}");
    if let Some(dir) = json_out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(json_out, text).map_err(|e| format!("{}: {e}", json_out.display()))?;
    eprintln!("bench: JSON written to {}", json_out.display());
    let too_big: Vec<_> = rows
        .iter()
        .filter(|r| r.smp == 1 && r.cycles.first().is_some_and(|c| c.state_bytes >= 16 * 1024))
        .map(|r| r.mem.clone())
        .collect();
    if too_big.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "1-vCPU state file is 16 KiB or more for {too_big:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::stats;

    #[test]
    fn median_and_spread() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(stats(vec![]), (0.0, 0.0, 0.0));
    }
}
