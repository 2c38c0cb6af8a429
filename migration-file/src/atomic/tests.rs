//! Unit tests for [`AtomicFile`].

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

#[test]
fn temp_file_is_0600_beside_target() -> TestResult {
    let (dir, target) = setup()?;
    let save = AtomicFile::create(&target, "cpr-save")?;
    let temp = save.temp_path().to_path_buf();
    assert_eq!(temp.parent(), Some(dir.path()));
    assert_eq!(mode_of(&temp)?, 0o600);
    assert_eq!(entries(dir.path()).len(), 2);
    drop(save);
    assert!(!temp.exists());
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
    let a = AtomicFile::create(&target, "a")?;
    let b = AtomicFile::create(&target, "b")?;
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
            Error::TempCreate {
                source: Errno::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("Unable to create temporary file ")
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
