//! End-to-end scenarios for the files a checkpoint is written to: a symlink planted by
//! another user, saves killed with SIGKILL and names planted where a temporary could go,
//! and the VM's own RAM file as the target.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cpr_harness::VmFiles;
use cpr_harness::{HarnessError, VmProcess};
use serde_json::json;

use crate::e2e::{
    Outcome, Scratch, WAIT, boot, check_carried_on, expect_status, fail, generation,
    wait_generation,
};

/// uid and gid of `nobody`, the other user.
const NOBODY: u32 = 65534;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |e| fail(format!("{what}: {e}"))
}

fn chmod(path: &Path, mode: u32) -> Result<(), HarnessError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {mode:o} {}", path.display())))
}

/// Runs `args` as user `nobody` (util-linux `setpriv`, else `runuser`).
fn as_nobody(args: &[&OsStr]) -> Result<(), HarnessError> {
    let uid = format!("--reuid={NOBODY}");
    let gid = format!("--regid={NOBODY}");
    let tools: [(&str, Vec<&str>); 2] = [
        ("setpriv", vec![&uid, &gid, "--clear-groups"]),
        ("runuser", vec!["-u", "nobody", "--"]),
    ];
    for (tool, pre) in tools {
        match Command::new(tool).args(pre).args(args).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(fail(format!(
                    "{tool} {args:?} as nobody: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot run {tool}: {e}"))),
        }
    }
    Err(fail(
        "neither setpriv nor runuser (util-linux) is installed: cannot act as nobody",
    ))
}

/// `ln -s target link`, run by `nobody`; checks that the link is theirs.
fn plant_link_as_nobody(target: &Path, link: &Path) -> Result<(), HarnessError> {
    as_nobody(&[
        OsStr::new("ln"),
        OsStr::new("-s"),
        target.as_os_str(),
        link.as_os_str(),
    ])?;
    let md = std::fs::symlink_metadata(link).map_err(io(link.display()))?;
    if !md.file_type().is_symlink() || md.uid() != NOBODY {
        return Err(fail(format!("{} is not nobody's symlink", link.display())));
    }
    Ok(())
}

/// A sticky, world-writable directory (like /tmp) inside `dir`.
fn sticky_dir(dir: &Path) -> Result<PathBuf, HarnessError> {
    chmod(dir, 0o755)?;
    let sticky = dir.join("sticky");
    std::fs::create_dir(&sticky).map_err(io(sticky.display()))?;
    chmod(&sticky, 0o1777)?;
    Ok(sticky)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Result<Vec<String>, HarnessError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Fails if the VM reported STOP since the last look.
fn no_stop(vm: &mut VmProcess, after: &str) -> Result<(), HarnessError> {
    if vm.events()?.iter().any(|e| e.event == "STOP") {
        return Err(fail(format!("{after}: the VM was stopped")));
    }
    expect_status(vm, "running").map_err(|e| fail(format!("{after}: {e}")))
}

/// Asks for in-place migration (RAM stays in its file), so a save is small and quick.
fn in_place_cpr(vm: &mut VmProcess) -> Result<(), HarnessError> {
    vm.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
    )?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    Ok(())
}

/// (a) A symlink planted by user `nobody` in a sticky world-writable directory, pointing
/// to a root-owned file (or into a directory only root can write): `cpr-save`, `migrate
/// file:` and `migrate file:...,offset=N` are refused naming the link, the file is
/// unchanged, nothing is created, and the guest runs on. A link made by root itself still
/// works: the file it points to is replaced, the link stays.
pub fn planted_symlinks(binary: &Path) -> Outcome {
    if !nix::unistd::geteuid().is_root() {
        return Ok("skipped: needs root to plant links as user nobody".into());
    }
    let dir = Scratch::new("files-symlinks")?;
    let sticky = sticky_dir(&dir.0)?;
    let victim = dir.0.join("victim");
    std::fs::write(&victim, b"root's file").map_err(io("victim"))?;
    let rootdir = dir.0.join("rootdir");
    std::fs::create_dir(&rootdir).map_err(io("rootdir"))?;
    // The final component; a link into a directory only root may write; an intermediate
    // component.
    let links = [
        (sticky.join("vm.state"), victim.clone()),
        (sticky.join("new.state"), rootdir.join("created.state")),
        (sticky.join("d"), rootdir.clone()),
    ];
    for (link, to) in &links {
        plant_link_as_nobody(to, link)?;
    }
    let targets = [
        links[0].0.clone(),
        links[1].0.clone(),
        sticky.join("d").join("vm.state"),
    ];
    let files = VmFiles::in_dir(&dir.0);
    let mut vm = boot(binary, &files, &files.args("128M", 1, &[]))?;
    in_place_cpr(&mut vm)?;
    let before = vm.progress()?;
    let _ = vm.events()?;
    let mut refused = 0;
    for (target, link) in targets.iter().zip(&links) {
        let why = format!("refusing to follow symlink {}", link.0.display());
        let uri = format!("file:{}", target.display());
        let attempts = [
            ("cpr-save", json!({"filename": target, "mode": "reboot"})),
            ("migrate", json!({"uri": uri})),
            ("migrate", json!({"uri": format!("{uri},offset=4096")})),
        ];
        for (command, args) in attempts {
            let what = format!("{command} {args}");
            let desc = vm.execute_err(command, args)?;
            if !desc.contains(&why) || !desc.contains("sticky world-writable directory") {
                return Err(fail(format!("{what}: {desc}")));
            }
            no_stop(&mut vm, &what)?;
            refused += 1;
        }
    }
    let contents = std::fs::read(&victim).map_err(io("victim"))?;
    if contents != b"root's file" {
        return Err(fail("the file nobody's link points to was changed"));
    }
    if !listing(&rootdir)?.is_empty() {
        return Err(fail(format!(
            "a file was created in {}: {:?}",
            rootdir.display(),
            listing(&rootdir)?
        )));
    }
    if listing(&sticky)? != ["d", "new.state", "vm.state"] {
        return Err(fail(format!(
            "{}: {:?}",
            sticky.display(),
            listing(&sticky)?
        )));
    }
    check_carried_on(&mut vm, &before)?;
    // Root's own link in the same directory: followed, as before.
    let mine = sticky.join("mine.state");
    let real = dir.0.join("real.state");
    std::os::unix::fs::symlink(&real, &mine).map_err(io("symlink"))?;
    vm.execute("cpr-save", json!({"filename": mine, "mode": "reboot"}))?;
    let link_kept = std::fs::symlink_metadata(&mine).is_ok_and(|m| m.file_type().is_symlink());
    let written = std::fs::read(&real).map_err(io("real.state"))?;
    if !link_kept || !written.starts_with(b"QEVM") {
        return Err(fail(format!(
            "saving through root's own link: link kept {link_kept}, {} bytes written",
            written.len()
        )));
    }
    // Reading goes through the same rule.
    let desc = vm.execute_err("cpr-load", json!({"filename": links[0].0}))?;
    if !desc.contains("refusing to follow symlink") {
        return Err(fail(format!("cpr-load through nobody's link: {desc}")));
    }
    vm.execute("cont", json!({}))?;
    expect_status(&mut vm, "running")?;
    vm.quit()?;
    Ok(format!(
        "{refused} saves through nobody's links refused (final, dangling, intermediate), file intact, guest ran on; root's own link followed"
    ))
}

/// Bytes `pid` has written so far (`/proc/<pid>/io`'s `wchar`).
fn written_by(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `cpr-vm` arguments with anonymous RAM (no `--mem-path`): `migrate` copies all of it.
fn anonymous_args(files: &VmFiles, size: &str) -> Vec<OsString> {
    let mut args = files.args(size, 1, &[]);
    if let Some(i) = args.iter().position(|a| a == "--mem-path") {
        args.drain(i..i + 2);
    }
    args
}

/// Starts a copy-mode `migrate` of 512 MiB of anonymous RAM to `uri` and kills the VM
/// with SIGKILL once it has written 64 MiB; returns its pid and what it had written.
fn kill_mid_copy(binary: &Path, files: &VmFiles, uri: &str) -> Result<(u32, u64), HarnessError> {
    let mut vm = boot(binary, files, &anonymous_args(files, "512M"))?;
    // Every page written once, so the stream carries all of them.
    wait_generation(&mut vm, 1)?;
    vm.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
    let pid = vm.pid();
    let base = written_by(pid).ok_or_else(|| fail("cannot read /proc/<pid>/io"))?;
    let request = json!({"execute": "migrate", "arguments": {"uri": uri}});
    vm.qmp()
        .send_raw(format!("{request}\n").as_bytes())
        .map_err(|e| fail(format!("sending migrate: {e}")))?;
    let deadline = Instant::now() + WAIT;
    let mut during = 0;
    while during < (64 << 20) {
        during = written_by(pid).unwrap_or(0).saturating_sub(base);
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the migration wrote only {during} bytes in {WAIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.kill()?;
    Ok((pid, during))
}

/// (b) A `cpr-vm` killed (SIGKILL) in the middle of a large copy-mode `migrate` leaves no
/// temporary file behind; a leftover of a dead process is removed by the next save; and
/// 400 names planted by another user where a temporary could go (the old scheme's
/// `.<name>.<pid>.<n>.tmp`, and ours with guessed random parts) do not stop `cpr-save` or
/// `migrate`, and are left alone.
pub fn killed_saves(binary: &Path) -> Outcome {
    if !nix::unistd::geteuid().is_root() {
        return Ok("skipped: needs root to plant files as user nobody".into());
    }
    let dir = Scratch::new("files-killed")?;
    let shared = sticky_dir(&dir.0)?;
    let files = VmFiles::in_dir(&dir.0);
    let state = shared.join("vm.state");
    let uri = format!("file:{}", state.display());
    // 1. Killed mid-copy (tried again, on a fresh VM, if the copy outran the poller).
    let mut attempts = 0;
    let (pid, during) = loop {
        attempts += 1;
        let (pid, during) = kill_mid_copy(binary, &files, &uri)?;
        if !state.exists() {
            break (pid, during);
        }
        if attempts == 3 {
            return Err(fail(
                "the migration completed before the kill three times: nothing was tested",
            ));
        }
        std::fs::remove_file(&state).map_err(io(state.display()))?;
    };
    let left = listing(&shared)?;
    if !left.is_empty() {
        return Err(fail(format!(
            "a migration killed after {} MiB left {left:?} in {}",
            during >> 20,
            shared.display()
        )));
    }
    // 2. A new VM; names planted where a save could put its temporary.
    let mut vm = boot(binary, &files, &files.args("128M", 1, &[]))?;
    let next = vm.pid();
    let victim = dir.0.join("victim");
    std::fs::write(&victim, b"root's file").map_err(io("victim"))?;
    let mut planted: Vec<PathBuf> = Vec::new();
    for n in 0..200u64 {
        planted.push(shared.join(format!(".vm.state.{next}.{n}.tmp")));
        planted.push(shared.join(format!(".vm.state.cpr-{next}-{n:016x}.tmp")));
    }
    // Planted by nobody: links for half, files for the other half (created as root, then
    // given to nobody: 400 processes would be slow).
    for (i, p) in planted.iter().enumerate() {
        if i % 2 == 0 {
            std::os::unix::fs::symlink(&victim, p).map_err(io(p.display()))?;
        } else {
            std::fs::write(p, b"planted").map_err(io(p.display()))?;
        }
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).map_err(io(p.display()))?;
    }
    // What a save killed between its link and its rename would leave (the killed VM's
    // pid), ours: removed by the next save. The same name owned by nobody: left alone.
    let leftover = shared.join(format!(".vm.state.cpr-{pid}-00000000deadbeef.tmp"));
    std::fs::write(&leftover, b"left behind").map_err(io("leftover"))?;
    let theirs = shared.join(format!(".vm.state.cpr-{pid}-00000000feedf00d.tmp"));
    std::fs::write(&theirs, b"nobody's").map_err(io("theirs"))?;
    std::os::unix::fs::lchown(&theirs, Some(NOBODY), Some(NOBODY)).map_err(io("lchown"))?;
    vm.execute("cpr-save", json!({"filename": state, "mode": "reboot"}))
        .map_err(|e| {
            fail(format!(
                "cpr-save among {} planted names: {e}",
                planted.len()
            ))
        })?;
    if leftover.exists() {
        return Err(fail("the dead process's leftover was not removed"));
    }
    vm.execute("cont", json!({}))?;
    in_place_cpr(&mut vm)?;
    vm.execute("migrate", json!({"uri": &uri})).map_err(|e| {
        fail(format!(
            "migrate among {} planted names: {e}",
            planted.len()
        ))
    })?;
    let info = vm.execute("query-migrate", json!({}))?;
    if info["status"] != "completed" {
        return Err(fail(format!("migrate among planted names: {info}")));
    }
    vm.quit()?;
    let mut expected: Vec<String> = planted
        .iter()
        .chain([&theirs, &state])
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    expected.sort();
    if listing(&shared)? != expected {
        return Err(fail(format!(
            "{} holds something else than the planted names and the checkpoint",
            shared.display()
        )));
    }
    if std::fs::read(&victim).map_err(io("victim"))? != b"root's file" {
        return Err(fail("a planted link was written through"));
    }
    Ok(format!(
        "killed after {} MiB of a copy-mode migrate: nothing left; a dead save's leftover removed; {} planted names did not stop cpr-save or migrate",
        during >> 20,
        planted.len()
    ))
}

/// (c) The VM's own RAM file as the target (its path, a hard link, a symlink, and in place
/// at an offset): refused before the VM is stopped, and the guest's RAM is intact.
pub fn ram_target(binary: &Path) -> Outcome {
    let dir = Scratch::new("files-ram")?;
    let files = VmFiles::in_dir(&dir.0);
    let mut vm = boot(binary, &files, &files.args("128M", 1, &[]))?;
    wait_generation(&mut vm, 1)?;
    in_place_cpr(&mut vm)?;
    let ram_before = std::fs::metadata(&files.ram).map_err(io("RAM file"))?;
    let hard = dir.0.join("ram-hard-link");
    std::fs::hard_link(&files.ram, &hard).map_err(io("hard link"))?;
    let soft = dir.0.join("ram-symlink");
    std::os::unix::fs::symlink(&files.ram, &soft).map_err(io("symlink"))?;
    let before = vm.progress()?;
    let _ = vm.events()?;
    let mut refused = 0;
    for target in [&files.ram, &hard, &soft] {
        let want = format!(
            "cannot save to {}: it is this VM's RAM (pc.ram)",
            target.display()
        );
        let uri = format!("file:{}", target.display());
        let attempts = [
            ("cpr-save", json!({"filename": target, "mode": "reboot"})),
            ("migrate", json!({"uri": uri})),
            ("migrate", json!({"uri": format!("{uri},offset=4096")})),
            (
                "migrate",
                json!({"channels": [{"channel-type": "main",
                    "addr": {"transport": "file", "filename": target, "offset": 8192}}]}),
            ),
        ];
        for (command, args) in attempts {
            let what = format!("{command} {args}");
            let desc = vm.execute_err(command, args)?;
            if desc != want {
                return Err(fail(format!("{what}: {desc}")));
            }
            no_stop(&mut vm, &what)?;
            refused += 1;
        }
    }
    let ram_after = std::fs::metadata(&files.ram).map_err(io("RAM file"))?;
    if (ram_after.ino(), ram_after.len()) != (ram_before.ino(), ram_before.len()) {
        return Err(fail("the RAM file was replaced or resized"));
    }
    // The guest carries on, and its RAM check goes over every page twice.
    let after = check_carried_on(&mut vm, &before)?;
    wait_generation(&mut vm, generation(&after) + 2)?;
    vm.quit()?;
    Ok(format!(
        "{refused} saves over the RAM (path, hard link, symlink; whole and at an offset) refused, VM never stopped, guest RAM intact"
    ))
}
