//! End-to-end scenarios for `cpr-vm inspect` on files written by real `cpr-vm` processes,
//! and for copy mode above the 3 GiB window boundary.

use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cpr_harness::{HarnessError, VmFiles, VmProcess};
use serde_json::{Value, json};

use crate::e2e::{
    Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail, generation,
    wait_generation,
};

/// Runs `cpr-vm inspect ARGS`.
fn inspect(binary: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Result<Output, HarnessError> {
    let mut c = Command::new(binary);
    c.arg("inspect");
    for a in args {
        c.arg(a);
    }
    c.output()
        .map_err(|e| fail(format!("cannot run {} inspect: {e}", binary.display())))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// `inspect --json FILE`, which must succeed.
fn inspect_json(binary: &Path, file: &Path) -> Result<Value, HarnessError> {
    let out = inspect(binary, &[&"--json", &file])?;
    if !out.status.success() {
        return Err(fail(format!(
            "inspect --json {}: {}",
            file.display(),
            text(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("inspect --json: {e}")))
}

/// `migrate` to `files.state` with `x-ignore-shared` as given; waits for completion.
fn migrate(vm: &mut VmProcess, files: &VmFiles, ignore_shared: bool) -> Result<(), HarnessError> {
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]}),
    )?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    vm.execute(
        "migrate",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let info = vm.execute("query-migrate", json!({}))?;
        match info["status"].as_str() {
            Some("completed") => return Ok(()),
            Some("failed") => return Err(fail(format!("migration failed: {info}"))),
            _ if Instant::now() >= deadline => {
                return Err(fail(format!("migration did not complete: {info}")));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Checks `--json` fields of a file and that `--check` accepts it.
fn expect_described(
    binary: &Path,
    file: &Path,
    kind: &str,
    runstate: &str,
    vcpus: u64,
) -> Result<Value, HarnessError> {
    let out = inspect(binary, &[&"--check", &file])?;
    if !out.status.success() {
        return Err(fail(format!(
            "--check refused a good {kind} file: {}",
            text(&out.stderr)
        )));
    }
    let j = inspect_json(binary, file)?;
    let got = (
        j["kind"].as_str(),
        j["runstate"].as_str(),
        j["vcpus"].as_u64(),
    );
    if got != (Some(kind), Some(runstate), Some(vcpus)) {
        return Err(fail(format!(
            "expected {kind}/{runstate}/{vcpus} vCPUs, got {j}"
        )));
    }
    let cpus = j["sections"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["idstr"] == "cpu").count());
    if cpus as u64 != vcpus || j["ram_blocks"][0]["idstr"] != "pc.ram" {
        return Err(fail(format!("sections or RAM blocks wrong: {j}")));
    }
    Ok(j)
}

/// Every kind of stream `cpr-vm` writes, read back by `cpr-vm inspect`: V7 `cpr-save`
/// (paused, 2 vCPUs), mainline with RAM in place (suspended), mainline with RAM copied
/// (running): `--check`, `--json`, `--extract-ram` equal to the guest's RAM file, and a
/// damaged copy refused with the loader's error.
pub fn stream_kinds(binary: &Path) -> Outcome {
    let dir = Scratch::new("inspect")?;
    let mut details = Vec::new();

    // V7 cpr-save of a paused guest with 2 vCPUs.
    let files = VmFiles::in_dir(&dir.0.join("v7"));
    std::fs::create_dir_all(dir.0.join("v7")).map_err(|e| fail(e.to_string()))?;
    let mut vm = boot(binary, &files, &files.args("256M", 2, &[]))?;
    vm.execute("stop", json!({}))?;
    vm.execute(
        "cpr-save",
        json!({"filename": files.state, "mode": "reboot"}),
    )?;
    vm.quit()?;
    let j = expect_described(binary, &files.state, "cpr-save", "paused", 2)?;
    if !j["ram"].is_null() || j["ram_blocks"][0]["copied"] != false {
        return Err(fail(format!("a cpr-save file with RAM in it: {j}")));
    }
    let out = inspect(
        binary,
        &[&"--extract-ram", &dir.0.join("none"), &files.state],
    )?;
    if out.status.success() || !text(&out.stderr).contains("nothing to extract") {
        return Err(fail(format!(
            "--extract-ram on a cpr-save file: {}",
            text(&out.stderr)
        )));
    }
    details.push("cpr-save".to_string());

    // Mainline, RAM in place, suspended guest.
    let files = VmFiles::in_dir(&dir.0.join("inplace"));
    std::fs::create_dir_all(dir.0.join("inplace")).map_err(|e| fail(e.to_string()))?;
    let mut vm = boot(binary, &files, &files.args("256M", 1, &[]))?;
    vm.execute("guest-suspend-ram", json!({}))?;
    vm.wait_event("SUSPEND", WAIT)?;
    migrate(&mut vm, &files, true)?;
    vm.quit()?;
    let j = expect_described(binary, &files.state, "mainline-in-place", "suspended", 1)?;
    if j["ram"]["pages"] != 0 || j["ram"]["blocks"][0]["ignored"] != true {
        return Err(fail(format!("RAM in place, but: {}", j["ram"])));
    }
    details.push("mainline in place".to_string());

    // Mainline, RAM copied (a shared file without x-ignore-shared), running guest. The
    // migrated guest stays stopped, so its RAM file is what the stream carries.
    let files = VmFiles::in_dir(&dir.0.join("copied"));
    std::fs::create_dir_all(dir.0.join("copied")).map_err(|e| fail(e.to_string()))?;
    let mut vm = boot(binary, &files, &files.args("256M", 1, &[]))?;
    wait_generation(&mut vm, 1)?;
    migrate(&mut vm, &files, false)?;
    vm.quit()?;
    let j = expect_described(binary, &files.state, "mainline-copied", "running", 1)?;
    let pages = j["ram"]["pages"].as_u64().unwrap_or(0);
    let zero = j["ram"]["zero_pages"].as_u64().unwrap_or(0);
    if pages == 0 || (pages + zero) * 4096 != 256 << 20 || j["ram_blocks"][0]["copied"] != true {
        return Err(fail(format!("RAM copied, but: {}", j["ram"])));
    }
    let out_dir = dir.0.join("extracted");
    let out = inspect(binary, &[&"--extract-ram", &out_dir, &files.state])?;
    if !out.status.success() {
        return Err(fail(format!("--extract-ram: {}", text(&out.stderr))));
    }
    let extracted = std::fs::read(out_dir.join("pc.ram")).map_err(|e| fail(e.to_string()))?;
    let guest = std::fs::read(&files.ram).map_err(|e| fail(e.to_string()))?;
    if extracted != guest {
        let at = extracted.iter().zip(&guest).position(|(a, b)| a != b);
        return Err(fail(format!(
            "extracted RAM differs from the guest's ({} vs {} bytes, first difference at {at:?})",
            extracted.len(),
            guest.len()
        )));
    }
    // `file:PATH,offset=0` is accepted as `--incoming` takes it.
    let spec = format!("file:{},offset=0", files.state.display());
    let out = inspect(binary, &[&"--check", &spec])?;
    if !out.status.success() {
        return Err(fail(format!("--check {spec}: {}", text(&out.stderr))));
    }
    details.push(format!(
        "mainline copied ({pages} pages, extracted RAM = guest RAM)"
    ));

    // Damaged: one flipped byte in the middle; the checksum refuses it.
    let bad = dir.0.join("damaged.state");
    std::fs::copy(&files.state, &bad).map_err(|e| fail(e.to_string()))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .map_err(|e| fail(e.to_string()))?;
    let len = f.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len / 2)
        .map_err(|e| fail(e.to_string()))?;
    f.write_all_at(&[b[0] ^ 0x10], len / 2)
        .map_err(|e| fail(e.to_string()))?;
    let out = inspect(binary, &[&"--check", &bad])?;
    let err = text(&out.stderr);
    if out.status.code() != Some(1) || !err.contains("checksum mismatch") {
        return Err(fail(format!(
            "a damaged file: status {:?}, {err}",
            out.status.code()
        )));
    }
    let out = inspect(binary, &[&"--extract-ram", &dir.0.join("bad-out"), &bad])?;
    if out.status.success() || dir.0.join("bad-out").join("pc.ram").exists() {
        return Err(fail("RAM extracted from a damaged file"));
    }
    details.push("damaged file refused".to_string());
    Ok(details.join(", "))
}

/// Copy mode above 4 GiB: a 5 GiB guest on a shared RAM file without `x-ignore-shared`,
/// with data on both sides of the 3 GiB window boundary (block offsets 3 GiB - 8 KiB to
/// 3 GiB + 56 KiB, written into the RAM file beside the guest) and old data elsewhere that
/// the stream does not carry; the new process loads into the same file. QEMU's layout
/// puts block offset 3 GiB at guest 4 GiB.
pub fn above_4g(binary: &Path) -> Outcome {
    const GIB: u64 = 1 << 30;
    let dir = Scratch::new("copy-5g")?;
    let files = VmFiles::in_dir(&dir.0);
    let args = files.args("5G", 1, &["--workload-size", "64M"]);
    let mut vm = boot(binary, &files, &args)?;
    let ram = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files.ram)
        .map_err(|e| fail(e.to_string()))?;
    let across = 3 * GIB - 0x2000;
    let pattern: Vec<u8> = (0..0x10000u32).map(|i| (i % 251) as u8 | 1).collect();
    ram.write_all_at(&pattern, across)
        .map_err(|e| fail(e.to_string()))?;
    wait_generation(&mut vm, 1)?;
    let before = vm.progress()?;
    migrate(&mut vm, &files, false)?;
    vm.quit()?;
    // Behind the loader's back: garbage over the pattern and over pages the stream carries
    // as zero, on both sides of the boundary.
    let stale = vec![0xeeu8; 0x20000];
    for at in [across, 3 * GIB + GIB / 2, GIB] {
        ram.write_all_at(&stale, at)
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut dest: Vec<OsString> = args.clone();
    dest.push("--incoming".into());
    dest.push("defer".into());
    let mut vm = VmProcess::spawn(binary, &dest, &files.qmp, None)?;
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": false}]}),
    )?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let t = Instant::now();
    vm.execute(
        "migrate-incoming",
        json!({"uri": format!("file:{}", files.state.display())}),
    )?;
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let info = vm.execute("query-migrate", json!({}))?;
        match info["status"].as_str() {
            Some("completed") => break,
            Some("failed") => return Err(fail(format!("migrate-incoming failed: {info}"))),
            _ if Instant::now() >= deadline => {
                return Err(fail(format!("migrate-incoming did not complete: {info}")));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let load = t.elapsed();
    expect_status(&mut vm, "running")?;
    let mut back = vec![0u8; 0x10000];
    ram.read_exact_at(&mut back, across)
        .map_err(|e| fail(e.to_string()))?;
    if back != pattern {
        return Err(fail("the pages across the 3 GiB boundary were not loaded"));
    }
    for at in [across + 0x10000, 3 * GIB + GIB / 2, GIB] {
        let mut z = vec![0u8; 0x10000];
        ram.read_exact_at(&mut z, at)
            .map_err(|e| fail(e.to_string()))?;
        if z.iter().any(|&b| b != 0) {
            return Err(fail(format!(
                "old data at block offset {at:#x} survived the load"
            )));
        }
    }
    check_carried_on(&mut vm, &before)?;
    wait_generation(&mut vm, generation(&before) + 2)?;
    vm.quit()?;
    Ok(format!(
        "5 GiB guest loaded in {:.0} ms, pages across 3 GiB restored, old data zeroed",
        load.as_secs_f64() * 1e3
    ))
}
