//! `cargo xtask bench`: the blackout of a CPR reboot-mode cycle, phase by phase, against
//! RAM size and vCPU count, with real `cpr-vm` processes.
//!
//! Blackout = from `cpr-save` sent to the old process until the guest reports progress in
//! the new one. Phases: `cpr-save` (stop, capture, write, fsync, rename), `quit` (until the
//! old process is gone, VM teardown included), start (spawn until the new QMP monitor
//! answers: RAM mapped, socket up), `cpr-load` (read, check, new VM, restore), and first
//! progress (resume until the guest's next report).
//!
//! Then copy mode, with the mainline interface (`migrate` to a `file:` URI,
//! `migrate-incoming` in a new process): RAM copied into the file because it is private
//! anonymous memory, or a shared /dev/shm file without `x-ignore-shared`, next to RAM left
//! in place (`x-ignore-shared`), for each RAM size at 128 MiB of guest data; and the same
//! against the guest's data (`--data`, written in full before the save) at one RAM size
//! (`--data-mem`). Each row prints QEMU 10's figure from issue 10 where there is one, and
//! our target, half of it. `--copy-only` runs just those tables. Blackout there = from
//! `migrate` sent until the guest reports progress in the new process, which is started
//! on the reply to the old one's `quit` (a completed migration has handed the RAM over),
//! as in the reboot-mode cycle.
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

const PHASES: [Phase; 8] = [
    ("cpr-save", |c| c.save),
    ("quit answered", |c| c.exit),
    ("start", |c| c.start),
    ("cpr-load", |c| c.load),
    ("first progress", |c| c.first_progress),
    ("blackout", |c| c.blackout),
    ("guest pause", |c| c.guest_pause.unwrap_or_default()),
    ("old process gone", |c| c.old_gone),
];

/// The files of a VM in `dir`, emptied first (a run killed midway may have left some).
pub fn fresh_files(dir: &Path) -> Result<VmFiles, HarnessError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| HarnessError::Check(e.to_string()))?;
    Ok(VmFiles::in_dir(dir))
}

fn run_config(
    binary: &Path,
    scratch: &Path,
    mem: &str,
    smp: u32,
    runs: u32,
) -> Result<Row, HarnessError> {
    let dir = scratch.join(format!("{mem}-{smp}"));
    let files = fresh_files(&dir)?;
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

/// Where the guest's RAM is in a mainline run, and so what the stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RamMode {
    /// A shared /dev/shm file with `x-ignore-shared`: left in place, not in the stream.
    InPlace,
    /// Private anonymous RAM (not shared): copied into the stream, on both sides.
    Anonymous,
    /// A shared /dev/shm file without `x-ignore-shared`: copied into the stream, and the
    /// new process loads it back into the same file.
    SharedFile,
}

impl RamMode {
    fn name(self) -> &'static str {
        match self {
            RamMode::InPlace => "in place",
            RamMode::Anonymous => "anon",
            RamMode::SharedFile => "shm file",
        }
    }
}

/// One mainline run's configuration: RAM size, where RAM is, how much the guest writes.
struct MainlineConfig<'a> {
    mem: &'a str,
    ram: RamMode,
    workload: &'a str,
}

/// Bytes of a size like `128M` or `2G` (the `--workload-size` forms this bench uses).
fn size_bytes(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().unwrap_or(0);
    match unit {
        "K" => n << 10,
        "M" => n << 20,
        "G" => n << 30,
        _ => s.parse().unwrap_or(0),
    }
}

/// One mainline cpr-reboot run (`migrate` to a file, quit, new process, `migrate-incoming`),
/// after the guest has written its whole workload region once.
fn mainline_run(
    binary: &Path,
    scratch: &Path,
    cfg: &MainlineConfig<'_>,
) -> Result<MainlineRun, HarnessError> {
    let MainlineConfig { mem, ram, workload } = *cfg;
    let dir = scratch.join(format!("{mem}-{workload}-{}", ram.name().replace(' ', "-")));
    let files = fresh_files(&dir)?;
    let mut args = files.args(mem, 1, &["--workload-size", workload]);
    if ram == RamMode::Anonymous {
        let i = args.iter().position(|a| a == "--mem-path").unwrap_or(0);
        args.drain(i..i + 2);
        args.push("--mem-share".into());
        args.push("off".into());
    }
    let ignore_shared = ram == RamMode::InPlace;
    let mut vm = VmProcess::spawn(binary, &args, &files.qmp, None)?;
    // Every page of the workload written at least once: the stream carries all of it.
    let pages = size_bytes(workload) / 4096;
    vm.wait_progress(pages, Some(5), Duration::from_secs(300))?;
    vm.set_cpr_reboot(ignore_shared)?;
    let before = vm.progress()?;
    let t0 = std::time::Instant::now();
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    vm.wait_migration_completed(Duration::from_secs(120))?;
    let migrate = t0.elapsed();
    // A completed migration has handed the RAM over: the new process starts on the reply
    // to `quit`, while the old one is still exiting (as in the reboot-mode cycle).
    vm.quit_on_reply()?;
    let mut old = vm;
    let mut dest = args.clone();
    dest.push("--incoming".into());
    dest.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &dest, &files.qmp, None)?;
    vm.set_cpr_reboot(ignore_shared)?;
    let t1 = std::time::Instant::now();
    vm.execute(
        "migrate-incoming",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    vm.wait_migration_completed(Duration::from_secs(120))?;
    let incoming = t1.elapsed();
    let after = vm.wait_new_report(Duration::from_secs(60))?;
    let blackout = t0.elapsed();
    if after.errors > 0 || after.progress < before.progress {
        return Err(HarnessError::Check(format!(
            "{mem} {}: the guest did not carry on cleanly: {before:?} -> {after:?}",
            ram.name()
        )));
    }
    let file_bytes = std::fs::metadata(&files.state).map_or(0, |m| m.len());
    vm.quit()?;
    old.wait_exit(Duration::from_secs(20))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(MainlineRun {
        migrate,
        incoming,
        blackout,
        file_bytes,
    })
}

/// QEMU 10's figures from issue 10 (unthrottled, same machine, RAM copied into the file):
/// `(RAM mode, RAM size, phase) -> ms`, where the issue gives one. The targets are half.
fn qemu_reference(ram: RamMode, mem: &str, phase: &str) -> Option<f64> {
    match (ram, mem, phase) {
        (RamMode::Anonymous, "256M", "blackout") => Some(217.0),
        (RamMode::Anonymous, "4G", "blackout") => Some(498.0),
        (RamMode::Anonymous, "256M", "load") => Some(53.0),
        (RamMode::Anonymous, "1G", "load") => Some(72.0),
        (RamMode::SharedFile, "4G", "blackout") => Some(8000.0),
        _ => None,
    }
}

/// One table row: median [min-max] of each phase over `runs`, and QEMU's figure and our
/// target (half of it) where the issue has one.
fn copy_row(
    binary: &Path,
    scratch: &Path,
    cfg: &MainlineConfig<'_>,
    runs: u32,
) -> Result<Value, String> {
    eprintln!(
        "bench: mainline {} RAM, {}, {} of guest data...",
        cfg.mem,
        cfg.ram.name(),
        cfg.workload
    );
    let mut rs = Vec::new();
    for _ in 0..runs {
        rs.push(mainline_run(binary, scratch, cfg).map_err(|e| e.to_string())?);
    }
    let mut cells = Vec::new();
    let mut phases = serde_json::Map::new();
    for (phase, f) in [
        ("save", (|r| r.migrate) as fn(&MainlineRun) -> Duration),
        ("load", |r| r.incoming),
        ("blackout", |r| r.blackout),
    ] {
        let (m, lo, hi) = stats(rs.iter().map(|r| ms(f(r))).collect());
        // QEMU's figures are for the RAM-size table (fixed guest data), not the data rows.
        let reference = qemu_reference(cfg.ram, cfg.mem, phase).filter(|_| cfg.workload == "128M");
        let verdict = reference.map(|q| {
            let target = q / 2.0;
            (q, target, if m <= target { "ok" } else { "MISS" })
        });
        let cell = match verdict {
            Some((q, t, v)) => format!("{m:.1} [{lo:.1}-{hi:.1}] q{q:.0}/t{t:.0} {v}"),
            None => format!("{m:.1} [{lo:.1}-{hi:.1}]"),
        };
        cells.push(cell);
        phases.insert(
            phase.to_string(),
            json!({"median_ms": m, "min_ms": lo, "max_ms": hi,
                   "qemu_ms": reference, "target_ms": reference.map(|q| q / 2.0)}),
        );
    }
    let bytes = rs.first().map_or(0, |r| r.file_bytes);
    println!(
        "{:<6} {:<9} {:>6} {:>12} {:>34} {:>34} {:>34}",
        cfg.mem,
        cfg.ram.name(),
        cfg.workload,
        bytes,
        cells[0],
        cells[1],
        cells[2]
    );
    Ok(
        json!({"mem": cfg.mem, "ram": cfg.ram.name(), "guest_data": cfg.workload,
              "file_bytes": bytes, "runs": rs.len(), "phases": phases}),
    )
}

fn copy_header(title: &str, runs: u32) {
    println!();
    println!(
        "{title}: ms, median [min-max] over {runs} runs; qN/tN = QEMU 10's figure / our target (half)"
    );
    println!(
        "{:<6} {:<9} {:>6} {:>12} {:>34} {:>34} {:>34}",
        "RAM", "RAM is", "data", "file B", "save (migrate)", "load (migrate-incoming)", "blackout"
    );
}

/// Copy mode (RAM copied into the file because it is not shared, or `x-ignore-shared` is
/// off) against RAM size at a fixed amount of guest data, with RAM left in place for
/// reference; then against the amount of guest data at a fixed RAM size.
fn run_copy_case(
    binary: &Path,
    scratch: &Path,
    sizes: &[String],
    data_sizes: &[String],
    data_mem: &str,
    runs: u32,
) -> Result<Value, String> {
    copy_header(
        "mainline cpr-reboot (migrate file: / migrate-incoming), 1 vCPU, 128 MiB of guest data",
        runs,
    );
    let mut by_size = Vec::new();
    for mem in sizes {
        for ram in [RamMode::InPlace, RamMode::Anonymous, RamMode::SharedFile] {
            let cfg = MainlineConfig {
                mem,
                ram,
                workload: "128M",
            };
            by_size.push(copy_row(binary, scratch, &cfg, runs)?);
        }
    }
    copy_header(
        &format!("copy mode against guest data, {data_mem} RAM, 1 vCPU"),
        runs,
    );
    let mut by_data = Vec::new();
    for workload in data_sizes {
        for ram in [RamMode::Anonymous, RamMode::SharedFile] {
            let cfg = MainlineConfig {
                mem: data_mem,
                ram,
                workload,
            };
            by_data.push(copy_row(binary, scratch, &cfg, runs)?);
        }
    }
    Ok(json!({"by_ram_size": by_size, "by_guest_data": by_data}))
}

/// What `cargo xtask bench` measures.
pub struct Options {
    /// Measured cycles per configuration of the CPR table.
    pub runs: u32,
    /// Measured runs per row of the copy-mode tables.
    pub copy_runs: u32,
    /// RAM sizes.
    pub sizes: Vec<String>,
    /// Only the copy-mode tables.
    pub copy_only: bool,
    /// Only these tables (`reboot`, `handoff`, `copy`); empty: all.
    pub only: Vec<String>,
    /// Amounts of guest data for the copy-mode rows at a fixed RAM size.
    pub data: Vec<String>,
    /// That fixed RAM size.
    pub data_mem: String,
}

fn print_cpr_table(rows: &[Row], runs: u32) {
    println!();
    println!(
        "CPR reboot mode, in-place RAM: blackout phases in ms, median [min-max] over {runs} runs"
    );
    print!("{:<6} {:>4} {:>10}", "RAM", "vCPU", "state B");
    for (name, _) in PHASES {
        print!(" {name:>20}");
    }
    println!();
    for r in rows {
        let size = r.cycles.first().map_or(0, |c| c.state_bytes);
        print!("{:<6} {:>4} {:>10}", r.mem, r.smp, size);
        for (_, f) in PHASES {
            let (median, min, max) = stats(r.cycles.iter().map(|c| ms(f(c))).collect());
            print!(" {:>20}", format!("{median:.1} [{min:.1}-{max:.1}]"));
        }
        println!();
    }
}

/// Runs the benchmark and prints the tables and the JSON (also written to `json_out`).
pub fn run(binary: &Path, opts: &Options, json_out: &Path) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("bench needs /dev/kvm, which is absent on this machine".into());
    }
    let (runs, sizes) = (opts.runs, &opts.sizes);
    let wanted = |table: &str| {
        if opts.copy_only {
            table == "copy"
        } else {
            opts.only.is_empty() || opts.only.iter().any(|o| o == table)
        }
    };
    let scratch = PathBuf::from(format!("/dev/shm/cpr-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    for mem in sizes.iter().filter(|_| wanted("reboot")) {
        for smp in [1, 2] {
            eprintln!("bench: {mem} RAM, {smp} vCPU(s), {runs} runs...");
            let row = run_config(binary, &scratch, mem, smp, runs).map_err(|e| e.to_string());
            let _ = std::fs::remove_dir_all(&scratch);
            rows.push(row?);
        }
    }
    if wanted("reboot") {
        print_cpr_table(&rows, runs);
    }
    let handoff = if wanted("handoff") {
        crate::bench_handoff::run(binary, &scratch, sizes, runs)
    } else {
        Ok(Value::Null)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let handoff = handoff?;
    let copy = if wanted("copy") {
        run_copy_case(
            binary,
            &scratch,
            sizes,
            &opts.data,
            &opts.data_mem,
            opts.copy_runs,
        )
    } else {
        Ok(Value::Null)
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let copy = copy?;
    let doc = json!({"benchmark": "cpr-reboot-blackout", "runs": runs,
                     "results": rows.iter().map(row_json).collect::<Vec<_>>(),
                     "handoff": handoff,
                     "mainline_copy_mode": copy});
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
    use super::{size_bytes, stats};

    #[test]
    fn median_and_spread() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(stats(vec![]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn workload_sizes() {
        assert_eq!(size_bytes("64M"), 64 << 20);
        assert_eq!(size_bytes("2G"), 2 << 30);
        assert_eq!(size_bytes("4096"), 4096);
    }
}
