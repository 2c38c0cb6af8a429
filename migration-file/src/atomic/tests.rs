//! Unit tests for [`AtomicFile`].

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

const OLD: &[u8] = b"previous checkpoint";

/// File names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// A directory holding `vm.state` with [`OLD`] contents.
fn setup() -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("vm.state");
    std::fs::write(&target, OLD)?;
    Ok((dir, target))
}

#[test]
fn commit_replaces_target() -> TestResult {
    let (dir, target) = setup()?;
    let mut save = AtomicFile::create(&target, "cpr-save")?;
    assert_eq!(save.target(), target);
    assert_eq!(save.file().name(), "cpr-save");
    save.file().put_u32(0x5145_564d);
    save.file().put_u32(3);
    save.file().put_buffer(&vec![7; IO_BUF_SIZE_FOR_TEST]);
    // Nothing visible at the target until the commit.
    assert_eq!(std::fs::read(&target)?, OLD);
    save.commit()?;
    let got = std::fs::read(&target)?;
    assert_eq!(got[..8], [0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]);
    assert_eq!(got.len(), 8 + IO_BUF_SIZE_FOR_TEST);
    assert_eq!(entries(dir.path()), ["vm.state"]);
    assert_eq!(mode_of(&target)?, 0o600);
    Ok(())
}

const IO_BUF_SIZE_FOR_TEST: usize = crate::IO_BUF_SIZE * 2 + 1;

#[test]
fn commit_creates_missing_target() -> TestResult {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("new.state");
    let mut save = AtomicFile::create(&target, "cpr-save")?;
    save.file().put_counted_string("fresh");
    save.commit()?;
    assert_eq!(std::fs::read(&target)?, b"\x05fresh");
    assert_eq!(entries(dir.path()), ["new.state"]);
    Ok(())
}

/// The temporary's mode and link count, through its descriptor.
fn temp_stat(save: &AtomicFile) -> nix::Result<(u32, u64)> {
    let st = nix::sys::stat::fstat(&save.fd)?;
    Ok((st.st_mode & 0o7777, st.st_nlink))
}

#[test]
fn temp_file_is_unnamed_0600() -> TestResult {
    let (dir, target) = setup()?;
    let save = AtomicFile::create(&target, "cpr-save")?;
    assert!(matches!(save.temp, Temp::Unnamed), "{:?}", save.temp);
    // Nothing in the directory: no name, no link.
    assert_eq!(entries(dir.path()), ["vm.state"]);
    assert_eq!(temp_stat(&save)?, (0o600, 0));
    drop(save);
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn fallback_temp_file_is_random_0600_beside_target() -> TestResult {
    let (dir, target) = setup()?;
    let save = AtomicFile::create_with(&target, "cpr-save", Strategy::Named)?;
    let temp = save.temp_path();
    assert_eq!(temp.parent(), Some(dir.path()));
    let name = temp
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    assert_eq!(
        temp_pid(b"vm.state", &name),
        i32::try_from(std::process::id()).ok()
    );
    assert_eq!(mode_of(&temp)?, 0o600);
    assert_eq!(entries(dir.path()).len(), 2);
    drop(save);
    assert!(!temp.exists());
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn mode_is_0600_whatever_the_umask() -> TestResult {
    // The umask is process-wide: both strategies and both umasks in this one test.
    // 0o277 would take the owner's write bit from a plain 0600 create; it also makes
    // other tests' new directories read-only meanwhile, which only root ignores.
    let umasks: &[u32] = if nix::unistd::geteuid().is_root() {
        &[0o000, 0o277]
    } else {
        &[0o000]
    };
    for &umask in umasks {
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(umask));
        let result = (|| -> TestResult {
            let dir = tempfile::tempdir()?;
            for strategy in [Strategy::Auto, Strategy::Named] {
                let target = dir.path().join(format!("{strategy:?}.state"));
                let mut save = AtomicFile::create_with(&target, "t", strategy)?;
                assert_eq!(temp_stat(&save)?.0, 0o600, "umask {umask:o}, {strategy:?}");
                save.file().put_u8(1);
                save.commit()?;
                assert_eq!(mode_of(&target)?, 0o600, "umask {umask:o}, {strategy:?}");
            }
            Ok(())
        })();
        nix::sys::stat::umask(old);
        result?;
    }
    Ok(())
}

#[test]
fn drop_without_commit_keeps_old_target() -> TestResult {
    let (dir, target) = setup()?;
    {
        let mut save = AtomicFile::create(&target, "cpr-save")?;
        save.file().put_buffer(b"half-written new checkpoint");
        save.file().flush()?;
    }
    assert_eq!(std::fs::read(&target)?, OLD);
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn unique_temp_names() -> TestResult {
    let (dir, target) = setup()?;
    let a = AtomicFile::create_with(&target, "a", Strategy::Named)?;
    let b = AtomicFile::create_with(&target, "b", Strategy::Named)?;
    assert_ne!(a.temp_path(), b.temp_path());
    assert_eq!(entries(dir.path()).len(), 3);
    drop((a, b));
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn write_failure_keeps_old_checkpoint() -> TestResult {
    let (dir, target) = setup()?;
    let mut save = AtomicFile::create(&target, "cpr-save")?;
    // Simulate a full disk: the stream now goes to /dev/full.
    save.file = Some(QemuFile::open(
        "/dev/full",
        OFlag::O_WRONLY,
        Mode::empty(),
        "full",
    )?);
    save.file().put_u64(1);
    let err = save.commit().expect_err("commit on a full disk succeeded");
    assert!(matches!(err, Error::Write { .. }), "{err:?}");
    assert_eq!(err.errno(), Some(Errno::ENOSPC));
    assert_eq!(std::fs::read(&target)?, OLD);
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn latched_stream_error_aborts_commit() -> TestResult {
    let (dir, target) = setup()?;
    let mut save = AtomicFile::create(&target, "cpr-save")?;
    save.file().put_u32(1);
    save.file().put_counted_string(&"z".repeat(300));
    let err = save
        .commit()
        .expect_err("commit after a latched error succeeded");
    assert!(
        matches!(err, Error::StringTooLong { len: 300, .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&target)?, OLD);
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn rename_failure_keeps_target() -> TestResult {
    let dir = tempfile::tempdir()?;
    // A non-empty directory cannot be replaced by a file; it appears after `create`
    // (which refuses a directory target up front).
    let target = dir.path().join("busy");
    std::fs::write(&target, OLD)?;
    let mut save = AtomicFile::create(&target, "cpr-save")?;
    std::fs::remove_file(&target)?;
    std::fs::create_dir(&target)?;
    std::fs::write(target.join("inside"), OLD)?;
    save.file().put_u8(1);
    let err = save.commit().expect_err("renamed a file over a directory");
    assert!(
        matches!(&err, Error::Rename { to, .. } if *to == target),
        "{err:?}"
    );
    assert_eq!(std::fs::read(target.join("inside"))?, OLD);
    assert_eq!(entries(dir.path()), ["busy"]);
    Ok(())
}

#[test]
fn create_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-dir").join("vm.state");
    let err = AtomicFile::create(&missing, "x").expect_err("created in a missing dir");
    assert!(
        matches!(
            err,
            Error::Open {
                source: Errno::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "Unable to open {}",
            dir.path().join("no-such-dir").display()
        )
    );

    let err = AtomicFile::create("/", "x").expect_err("accepted /");
    assert!(matches!(err, Error::NoFileName { .. }), "{err:?}");
    Ok(())
}

#[test]
fn long_target_name_fits_name_max() -> TestResult {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("n".repeat(255));
    let mut save = AtomicFile::create(&target, "long")?;
    save.file().put_u8(9);
    save.commit()?;
    assert_eq!(std::fs::read(&target)?, [9]);
    Ok(())
}

#[test]
fn non_regular_targets_are_refused_and_symlinks_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory, a FIFO: refused, untouched.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let err = AtomicFile::create(&sub, "t").expect_err("directory");
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err}");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let err = AtomicFile::create(&fifo, "t").expect_err("fifo");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot save to {}: it exists and is not a regular file",
            fifo.display()
        )
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("fifo")
            .file_type()
            .is_fifo()
    );
    // A symlink to a regular file: the file is replaced, the link stays a link.
    let real = dir.path().join("real.state");
    std::fs::write(&real, b"old").expect("write");
    let link = dir.path().join("link.state");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let mut a = AtomicFile::create(&link, "t").expect("create");
    a.file().put_buffer(b"new");
    a.commit().expect("commit");
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).expect("read"), b"new");
}

#[test]
fn fallback_commit_replaces_target() -> TestResult {
    let (dir, target) = setup()?;
    let mut save = AtomicFile::create_with(&target, "cpr-save", Strategy::Named)?;
    save.file().put_buffer(b"new");
    save.commit()?;
    assert_eq!(std::fs::read(&target)?, b"new");
    assert_eq!(entries(dir.path()), ["vm.state"]);
    Ok(())
}

#[test]
fn replaces_tells_the_identity_of_the_target() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    let (dir, target) = setup()?;
    let md = std::fs::metadata(&target)?;
    let id = FileId {
        dev: md.dev(),
        ino: md.ino(),
    };
    assert_eq!(AtomicFile::create(&target, "t")?.replaces(), Some(id));
    // Through a hard link and through a symlink: the same file.
    let hard = dir.path().join("hard");
    std::fs::hard_link(&target, &hard)?;
    assert_eq!(AtomicFile::create(&hard, "t")?.replaces(), Some(id));
    let soft = dir.path().join("soft");
    std::os::unix::fs::symlink(&target, &soft)?;
    assert_eq!(AtomicFile::create(&soft, "t")?.replaces(), Some(id));
    assert_eq!(
        AtomicFile::create(dir.path().join("new"), "t")?.replaces(),
        None
    );
    Ok(())
}

/// uid of `nobody`.
const NOBODY: u32 = 65534;

#[test]
fn someone_elses_link_in_a_sticky_directory_is_refused() -> TestResult {
    if !nix::unistd::geteuid().is_root() {
        println!("skipping: needs root to give a symlink to uid {NOBODY} (lchown)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let sticky = dir.path().join("sticky");
    std::fs::create_dir(&sticky)?;
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777))?;
    let victim = dir.path().join("victim");
    std::fs::write(&victim, OLD)?;
    let link = sticky.join("vm.state");
    std::os::unix::fs::symlink(&victim, &link)?;
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY))?;
    // A missing victim too: the link would make us create a file only we may create.
    let link2 = sticky.join("new.state");
    std::os::unix::fs::symlink(dir.path().join("created"), &link2)?;
    std::os::unix::fs::lchown(&link2, Some(NOBODY), Some(NOBODY))?;
    for (l, strategy) in [
        (&link, Strategy::Auto),
        (&link, Strategy::Named),
        (&link2, Strategy::Auto),
    ] {
        let err = AtomicFile::create_with(l, "t", strategy).expect_err("followed nobody's link");
        assert!(
            matches!(&err, Error::UnsafeSymlink { path, .. } if path == l),
            "{err:?}"
        );
        assert!(err.to_string().contains("sticky world-writable"), "{err}");
    }
    assert_eq!(std::fs::read(&victim)?, OLD);
    assert!(!dir.path().join("created").exists());
    assert_eq!(entries(&sticky), ["new.state", "vm.state"]);
    assert_eq!(entries(dir.path()), ["sticky", "victim"]);
    // Our own link there is followed: the file is replaced, the link stays.
    std::fs::remove_file(&link)?;
    std::os::unix::fs::symlink(&victim, &link)?;
    let mut save = AtomicFile::create(&link, "t")?;
    save.file().put_buffer(b"new");
    save.commit()?;
    assert_eq!(std::fs::read(&victim)?, b"new");
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    Ok(())
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> std::io::Result<u32> {
    let mut child = std::process::Command::new("true").spawn()?;
    let pid = child.id();
    child.wait()?;
    Ok(pid)
}

#[test]
fn leftovers_of_dead_processes_are_removed() -> TestResult {
    let (dir, target) = setup()?;
    let d = dir.path();
    let dead = dead_pid()?;
    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let name = |stem: &str, pid: u32, rnd: &str| format!(".{stem}.cpr-{pid}-{rnd}.tmp");
    let gone = [
        name("vm.state", dead, "0123456789abcdef"),
        name("vm.state", dead, "00ff"),
    ];
    for g in &gone {
        std::fs::write(d.join(g), b"left behind")?;
    }
    let kept = [
        // A live process (ours, or our parent's) may still use them.
        name("vm.state", me, "0123456789abcdef"),
        name("vm.state", parent, "0123456789abcdef"),
        // Another target's.
        name("other.state", dead, "0123456789abcdef"),
        // Not our pattern.
        name("vm.state", dead, "not-hex"),
        format!(".vm.state.{dead}.0.tmp"),
        // A symlink, a directory.
        name("vm.state", dead, "1111111111111111"),
        name("vm.state", dead, "2222222222222222"),
        // Locked by an open file description: someone still writes it (a process in
        // another pid namespace, say).
        name("vm.state", dead, "3333333333333333"),
    ];
    for k in &kept[..5] {
        std::fs::write(d.join(k), b"in use")?;
    }
    std::os::unix::fs::symlink(&target, d.join(&kept[5]))?;
    std::fs::create_dir(d.join(&kept[6]))?;
    std::fs::write(d.join(&kept[7]), b"in use")?;
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join(&kept[7]))?;
    lock_in_use(holder.as_fd());
    let mut not_ours = None;
    if nix::unistd::geteuid().is_root() {
        let n = name("vm.state", dead, "4444444444444444");
        std::fs::write(d.join(&n), b"nobody's")?;
        std::os::unix::fs::chown(d.join(&n), Some(NOBODY), Some(NOBODY))?;
        not_ours = Some(n);
    } else {
        println!("not checking a leftover owned by another user: needs root");
    }
    let mut save = AtomicFile::create(&target, "t")?;
    for g in &gone {
        assert!(!d.join(g).exists(), "{g} is still there");
    }
    for k in kept.iter().chain(&not_ours) {
        assert!(
            std::fs::symlink_metadata(d.join(k)).is_ok(),
            "{k} was removed"
        );
    }
    save.file().put_u8(1);
    save.commit()?;
    drop(holder);
    Ok(())
}

#[test]
fn planted_names_do_not_stop_a_save() -> TestResult {
    let (dir, target) = setup()?;
    let d = dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, OLD)?;
    let pid = std::process::id();
    // 200 links at every name a guesser could try: the old scheme's, and ours with
    // guessed random parts.
    let mut planted = Vec::new();
    for n in 0..200u64 {
        planted.push(format!(".vm.state.{pid}.{n}.tmp"));
        planted.push(format!(".vm.state.cpr-{pid}-{n:016x}.tmp"));
    }
    for (i, p) in planted.iter().enumerate() {
        if i % 2 == 0 {
            std::os::unix::fs::symlink(&victim, d.join(p))?;
        } else {
            std::fs::write(d.join(p), b"planted")?;
        }
    }
    for strategy in [Strategy::Auto, Strategy::Named] {
        let mut save = AtomicFile::create_with(&target, "t", strategy)?;
        save.file().put_buffer(b"new");
        save.commit()?;
        assert_eq!(std::fs::read(&target)?, b"new");
        std::fs::write(&target, OLD)?;
    }
    assert_eq!(std::fs::read(&victim)?, OLD);
    assert_eq!(entries(d).len(), planted.len() + 2);
    Ok(())
}

/// Environment of [`helper_killed_save`]: the target, and `named` for the fallback.
const HELPER_TARGET: &str = "CPR_TEST_KILLED_SAVE_TARGET";
const HELPER_STRATEGY: &str = "CPR_TEST_KILLED_SAVE_STRATEGY";

/// Not a test: the child process of [`killed_saves_leave_nothing_behind`]. Starts a save,
/// writes into it, says so on stdout, and waits to be killed.
#[test]
#[ignore = "run by killed_saves_leave_nothing_behind in a child process"]
fn helper_killed_save() -> TestResult {
    let Some(target) = std::env::var_os(HELPER_TARGET) else {
        return Ok(());
    };
    let strategy = match std::env::var(HELPER_STRATEGY).as_deref() {
        Ok("named") => Strategy::Named,
        _ => Strategy::Auto,
    };
    let mut save = AtomicFile::create_with(Path::new(&target), "killed", strategy)?;
    save.file().put_buffer(&vec![0x5a; 1 << 20]);
    save.file().flush()?;
    println!("SAVING");
    std::thread::sleep(std::time::Duration::from_secs(120));
    Ok(())
}

#[test]
fn killed_saves_leave_nothing_behind() -> TestResult {
    use std::io::BufRead;
    for strategy in ["auto", "named"] {
        let (dir, target) = setup()?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "atomic::tests::helper_killed_save",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_TARGET, &target)
            .env(HELPER_STRATEGY, strategy)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let saving = std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .any(|l| l.contains("SAVING"));
        let during = entries(dir.path());
        child.kill()?;
        child.wait()?;
        assert!(saving, "{strategy}: the child never started its save");
        if strategy == "auto" {
            // O_TMPFILE: never a name, so a kill leaves nothing.
            assert_eq!(during, ["vm.state"], "{strategy}");
        } else {
            // The fallback has a name, left behind by the kill...
            assert_eq!(during.len(), 2, "{strategy}: {during:?}");
        }
        // ... which the next save to that target removes.
        let mut save = AtomicFile::create(&target, "t")?;
        assert_eq!(entries(dir.path()), ["vm.state"], "{strategy}");
        save.file().put_u8(1);
        save.commit()?;
        assert_eq!(std::fs::read(&target)?, [1]);
    }
    Ok(())
}
