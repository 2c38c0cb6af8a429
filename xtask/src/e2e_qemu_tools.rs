//! QEMU's own migration-stream tool reads every kind of stream `cpr-vm` writes.
//!
//! `scripts/analyze-migration.py` (QEMU 10.0.2, from Debian's source package; `.ci/run`
//! fetches it and names it in `CPR_ANALYZE_MIGRATION`) is run on each stream twice:
//!
//! * `-d state` must parse it to the end and list every section: `ram` for a mainline
//!   stream, and every device of the stream's vmdesc, as many `cpu` sections as vCPUs;
//! * `-x` must extract it: a `pc.ram` file with the guest's RAM, byte for byte, for a stream
//!   that copies RAM (compared with the RAM file, or with the process's anonymous memory
//!   read from `/proc/PID/mem`, while the source is stopped after `migrate`); an all-zero
//!   `pc.ram` for a stream that leaves RAM in place; none for a V7 `cpr-save`.
//!
//! Anonymous RAM has no name in `/proc/PID/maps`, and the kernel may merge its mapping
//! with a neighbouring one (a malloc arena): the RAM is then at one end of a larger
//! anonymous mapping, and the check accepts the extraction if it equals the RAM-sized
//! window at either end of one of them (a stream whose pages were shifted would match
//! neither).
//!
//! The streams: V7 `cpr-save` of a running, a paused and a suspended guest; mainline
//! `migrate` with `x-ignore-shared` (RAM in place) of a running and a suspended guest;
//! mainline with RAM copied from a shared RAM file (paused guest) and from private
//! anonymous memory (running and suspended guest); 2 vCPUs for the RAM file, 1 for
//! anonymous memory. The guest's workload keeps 16 of its 128 MiB busy, so the streams
//! that copy RAM leave most pages out (never touched: a hole in the file, absent from the
//! page tables), and `-x` must still give back every page.
//!
//! Without `CPR_ANALYZE_MIGRATION` the scenario skips and says why, except under CI
//! (`CI` set), where that is a failure.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cpr_harness::{HarnessError, VmFiles, VmProcess};
use serde_json::{Value, json};

use crate::e2e::{Outcome, Scratch, WAIT, boot, expect_status, fail, wait_generation};

/// The environment variable naming the script.
pub const SCRIPT_VAR: &str = "CPR_ANALYZE_MIGRATION";

/// Guest RAM size: small, so that `-x` (pure Python, a page at a time) stays quick.
const MEM: &str = "128M";
const MEM_BYTES: u64 = 128 << 20;
/// What the guest's workload writes (from 4 MiB): the rest of its RAM above it is never
/// touched, so a stream that copies RAM leaves most of it out.
const WORKLOAD: &str = "16M";

/// What a stream carries of the guest's RAM, and so what `-x` must extract.
enum Ram {
    /// V7 `cpr-save`: no `ram` section, nothing extracted.
    None,
    /// RAM left in place: a `pc.ram` of the block's length, all zeros.
    InPlace,
    /// RAM copied: a `pc.ram` equal to this source.
    Copied(Source),
}

/// Where the guest's RAM can be read while the source is stopped.
enum Source {
    /// The shared RAM file.
    File(PathBuf),
    /// Private anonymous memory of process `pid`, at one of `addrs`.
    Process { pid: u32, addrs: Vec<u64> },
}

/// One stream to check.
struct Stream<'a> {
    name: &'a str,
    file: &'a Path,
    vcpus: usize,
    ram: Ram,
}

/// Whether this runs under CI, where a missing tool is a failure.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The script to run, or why there is none (`Err(Ok)`: skip; `Err(Err)`: fail).
fn script() -> Result<PathBuf, Outcome> {
    let missing = |why: String| {
        if under_ci() {
            Err(Err(fail(format!(
                "{why} (under CI, .ci/run fetches the script and sets {SCRIPT_VAR})"
            ))))
        } else {
            Err(Ok(format!(
                "skipped: {why}; run .ci/run, or set {SCRIPT_VAR} to QEMU 10's scripts/analyze-migration.py"
            )))
        }
    };
    let Some(path) = std::env::var_os(SCRIPT_VAR) else {
        return missing(format!("{SCRIPT_VAR} is not set"));
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(Err(fail(format!(
            "{SCRIPT_VAR}={}: no such file",
            path.display()
        ))));
    }
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(path),
        _ => missing("python3 is not installed".into()),
    }
}

/// Runs the script in `cwd` with `args`; returns its stdout, or fails with its output.
fn run_script(
    script: &Path,
    cwd: &Path,
    stream: &Path,
    args: &[&str],
) -> Result<String, HarnessError> {
    let out = Command::new("python3")
        .arg(script)
        .arg("-f")
        .arg(stream)
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| fail(format!("cannot run python3 {}: {e}", script.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(fail(format!(
            "analyze-migration.py {} on {} failed ({}):\n{}\n{}",
            args.join(" "),
            stream.display(),
            out.status,
            tail(&stdout, 20),
            tail(&String::from_utf8_lossy(&out.stderr), 30),
        )));
    }
    Ok(stdout)
}

/// The last `n` lines of `s`, each cut to 300 characters (the script prints the whole
/// vmdesc on one line when it fails).
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(300) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => (*l).to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs both checks on one stream; returns a short description.
fn check(script: &Path, dir: &Path, s: &Stream<'_>) -> Result<String, HarnessError> {
    let in_stream = |e: HarnessError| fail(format!("{}: {e}", s.name));
    // -d desc: the vmdesc, as the script reads it.
    let desc = run_script(script, dir, s.file, &["-d", "desc"]).map_err(in_stream)?;
    let desc: Value = serde_json::from_str(&desc)
        .map_err(|e| fail(format!("{}: -d desc is not JSON: {e}", s.name)))?;
    let mut expected: Vec<String> = desc["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let cpus = expected.iter().filter(|n| *n == "cpu").count();
    if cpus != s.vcpus || expected.first().map(String::as_str) != Some("cpr-machine") {
        return Err(fail(format!(
            "{}: the vmdesc lists {expected:?} ({cpus} cpu sections, {} vCPUs)",
            s.name, s.vcpus
        )));
    }
    if !matches!(s.ram, Ram::None) {
        expected.push("ram".into());
    }
    expected.sort();

    // -d state: every section dumped.
    let state = run_script(script, dir, s.file, &["-d", "state"]).map_err(in_stream)?;
    let state: Value = serde_json::from_str(&state)
        .map_err(|e| fail(format!("{}: -d state is not JSON: {e}", s.name)))?;
    let mut shown: Vec<String> = state
        .as_object()
        .map(|m| {
            m.keys()
                .map(|k| {
                    k.rsplit_once(" (")
                        .map_or(k.as_str(), |(n, _)| n)
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    shown.sort();
    if shown != expected {
        return Err(fail(format!(
            "{}: -d state shows sections {shown:?}, the stream holds {expected:?}",
            s.name
        )));
    }

    // -x: the extracted RAM.
    let size = std::fs::metadata(s.file).map_or(0, |m| m.len());
    let x = dir.join(format!("x-{}", s.name));
    std::fs::create_dir_all(&x).map_err(|e| fail(format!("{}: {e}", x.display())))?;
    run_script(script, &x, s.file, &["-x"]).map_err(in_stream)?;
    let extracted = x.join("pc.ram");
    let ram = match &s.ram {
        Ram::None if extracted.exists() => {
            return Err(fail(format!(
                "{}: -x extracted RAM from a V7 stream",
                s.name
            )));
        }
        Ram::None => "no RAM".to_string(),
        Ram::InPlace => {
            let zero = compare(
                &extracted,
                |_, buf| {
                    buf.fill(0);
                    Ok(())
                },
                false,
            )
            .map_err(|e| {
                fail(format!(
                    "{}: RAM left in place, yet -x extracted {e}",
                    s.name
                ))
            })?;
            format!("{} MiB of zeros", zero >> 20)
        }
        Ram::Copied(_) if size > MEM_BYTES / 2 => {
            return Err(fail(format!(
                "{}: {size} bytes: the stream did not leave the never-touched pages out",
                s.name
            )));
        }
        Ram::Copied(Source::File(path)) => {
            let f = File::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            let n =
                compare(&extracted, |off, buf| f.read_exact_at(buf, off), false).map_err(|e| {
                    fail(format!(
                        "{}: the RAM -x extracted differs from {}: {e}",
                        s.name,
                        path.display()
                    ))
                })?;
            format!("{} MiB identical to the RAM file", n >> 20)
        }
        Ram::Copied(Source::Process { pid, addrs }) => {
            let f = File::open(format!("/proc/{pid}/mem"))
                .map_err(|e| fail(format!("/proc/{pid}/mem: {e}")))?;
            let f = &f;
            let at = |addr: u64| move |off, buf: &mut [u8]| f.read_exact_at(buf, addr + off);
            let found = addrs
                .iter()
                .find_map(|&a| compare(&extracted, at(a), true).ok().map(|n| (a, n)));
            let Some((addr, n)) = found else {
                let why: Vec<String> = addrs
                    .iter()
                    .map(|&a| match compare(&extracted, at(a), false) {
                        Ok(_) => format!("{a:#x}: equal"),
                        Err(e) => format!("{a:#x}: {e}"),
                    })
                    .collect();
                return Err(fail(format!(
                    "{}: the RAM -x extracted is not the anonymous RAM of process {pid}: {}",
                    s.name,
                    why.join("; ")
                )));
            };
            format!(
                "{} MiB identical to the guest's anonymous RAM at {addr:#x}",
                n >> 20
            )
        }
    };
    let _ = std::fs::remove_dir_all(&x);
    let _ = std::fs::remove_file(s.file);
    Ok(format!(
        "{} ({} KiB, {} sections, {ram})",
        s.name,
        size >> 10,
        shown.len()
    ))
}

/// Compares the file at `path` (of the guest's RAM size) with what `read` gives at each
/// offset; returns the bytes compared, or where they differ (at the first difference if
/// `fast`).
fn compare(
    path: &Path,
    read: impl Fn(u64, &mut [u8]) -> std::io::Result<()>,
    fast: bool,
) -> Result<u64, String> {
    let mut f = File::open(path).map_err(|e| format!("no {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != MEM_BYTES {
        return Err(format!("{} bytes, the guest has {MEM_BYTES}", len));
    }
    const CHUNK: usize = 1 << 20;
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut differ = Vec::new();
    let mut off = 0u64;
    while off < len {
        f.read_exact(&mut got).map_err(|e| e.to_string())?;
        read(off, &mut want)
            .map_err(|e| format!("cannot read the guest's RAM at {off:#x}: {e}"))?;
        for (i, (g, w)) in got.chunks(4096).zip(want.chunks(4096)).enumerate() {
            if g != w {
                differ.push(off + (i as u64) * 4096);
            }
        }
        if fast && !differ.is_empty() {
            break;
        }
        off += CHUNK as u64;
    }
    if differ.is_empty() {
        Ok(len)
    } else {
        let first: Vec<String> = differ.iter().take(4).map(|o| format!("{o:#x}")).collect();
        Err(format!(
            "{} pages differ{}, the first at {}",
            differ.len(),
            if fast { " (stopped at the first)" } else { "" },
            first.join(", ")
        ))
    }
}

/// Where the guest's anonymous RAM may be in process `pid`: both ends of each anonymous
/// read-write mapping at least as large as the RAM (see the module docs).
fn anonymous_ram(pid: u32) -> Result<Vec<u64>, HarnessError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| fail(format!("cannot read /proc/{pid}/maps: {e}")))?;
    let mut found: Vec<u64> = maps
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let (range, perms) = (cols.next()?, cols.next()?);
            let path = cols.nth(3).unwrap_or("");
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (b - a >= MEM_BYTES && perms.starts_with("rw") && path.is_empty())
                .then_some([a, b - MEM_BYTES])
        })
        .flatten()
        .collect();
    found.dedup();
    if found.is_empty() {
        return Err(fail(format!(
            "process {pid} has no anonymous mapping of {MEM} or more:\n{maps}"
        )));
    }
    Ok(found)
}

/// `migrate` to `file` and wait until it completes (the source is then `postmigrate`).
fn migrate(vm: &mut VmProcess, file: &Path) -> Result<(), HarnessError> {
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    )?;
    vm.wait_migration_completed(WAIT)?;
    expect_status(vm, "postmigrate")
}

fn cpr_save(vm: &mut VmProcess, file: &Path) -> Result<(), HarnessError> {
    vm.execute("cpr-save", json!({"filename": file, "mode": "reboot"}))
        .map(drop)
}

fn suspend(vm: &mut VmProcess) -> Result<(), HarnessError> {
    vm.execute("guest-suspend-ram", json!({}))?;
    vm.wait_event("SUSPEND", WAIT).map(drop)
}

fn wake(vm: &mut VmProcess) -> Result<(), HarnessError> {
    vm.execute("system_wakeup", json!({}))?;
    vm.wait_event("WAKEUP", WAIT).map(drop)
}

fn stop(vm: &mut VmProcess) -> Result<(), HarnessError> {
    vm.execute("stop", json!({}))?;
    vm.wait_event("STOP", WAIT).map(drop)
}

fn cont(vm: &mut VmProcess) -> Result<(), HarnessError> {
    vm.execute("cont", json!({}))?;
    expect_status(vm, "running")
}

/// The scenario.
pub fn analyze_migration(binary: &Path) -> Outcome {
    let script = match script() {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let dir = Scratch::new("qemu-tools")?;
    let mut done = Vec::new();
    let mut run = |name: &str, vcpus: usize, ram: Ram| -> Result<(), HarnessError> {
        let file = dir.0.join(format!("{name}.state"));
        let s = Stream {
            name,
            file: &file,
            vcpus,
            ram,
        };
        done.push(check(&script, &dir.0, &s)?);
        Ok(())
    };
    let state = |name: &str| dir.0.join(format!("{name}.state"));

    // A 2-vCPU guest in a shared RAM file.
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args(MEM, 2, &["--workload-size", WORKLOAD]);
    let mut vm = boot(binary, &files, &args)?;
    wait_generation(&mut vm, 2)?;
    cpr_save(&mut vm, &state("v7-running"))?;
    run("v7-running", 2, Ram::None)?;
    cont(&mut vm)?;
    stop(&mut vm)?;
    cpr_save(&mut vm, &state("v7-paused"))?;
    run("v7-paused", 2, Ram::None)?;
    cont(&mut vm)?;
    suspend(&mut vm)?;
    cpr_save(&mut vm, &state("v7-suspended"))?;
    run("v7-suspended", 2, Ram::None)?;
    wake(&mut vm)?;

    vm.set_cpr_reboot(true)?;
    migrate(&mut vm, &state("inplace-running"))?;
    run("inplace-running", 2, Ram::InPlace)?;
    cont(&mut vm)?;
    vm.set_cpr_reboot(false)?;
    stop(&mut vm)?;
    migrate(&mut vm, &state("copied-file-paused"))?;
    run(
        "copied-file-paused",
        2,
        Ram::Copied(Source::File(files.ram.clone())),
    )?;
    cont(&mut vm)?;
    vm.set_cpr_reboot(true)?;
    suspend(&mut vm)?;
    migrate(&mut vm, &state("inplace-suspended"))?;
    run("inplace-suspended", 2, Ram::InPlace)?;
    vm.quit()?;
    let _ = std::fs::remove_file(&files.ram);

    // A 1-vCPU guest in private anonymous memory: pages it never touched are left out.
    let mut anon: Vec<OsString> =
        files.args(MEM, 1, &["--workload-size", WORKLOAD, "--mem-share", "off"]);
    let i = anon.iter().position(|a| a == "--mem-path").unwrap_or(0);
    anon.drain(i..i + 2);
    let mut vm = boot(binary, &files, &anon)?;
    wait_generation(&mut vm, 2)?;
    let source = |pid: u32| -> Result<Source, HarnessError> {
        Ok(Source::Process {
            pid,
            addrs: anonymous_ram(pid)?,
        })
    };
    let src = source(vm.pid())?;
    vm.set_cpr_reboot(false)?;
    migrate(&mut vm, &state("copied-anon-running"))?;
    run("copied-anon-running", 1, Ram::Copied(src))?;
    cont(&mut vm)?;
    suspend(&mut vm)?;
    let src = source(vm.pid())?;
    migrate(&mut vm, &state("copied-anon-suspended"))?;
    run("copied-anon-suspended", 1, Ram::Copied(src))?;
    vm.quit()?;
    Ok(format!(
        "{}: -d state showed every section, -x extracted the guest's RAM",
        done.join(", ")
    ))
}
