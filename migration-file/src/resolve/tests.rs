//! Unit tests for [`ResolvedPath`] and the symlink rule.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// The uid of `nobody`, owner of the links "someone else" plants.
const NOBODY: u32 = 65534;

/// Tests that need to own files as another user run as root only.
fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        println!("skipping {test}: needs root to give a symlink to uid {NOBODY} (lchown)");
        false
    }
}

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn plant_link(target: &Path, link: &Path, uid: u32) -> std::io::Result<()> {
    symlink(target, link)?;
    std::os::unix::fs::lchown(link, Some(uid), Some(uid))
}

#[test]
fn plain_paths() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("vm.state");
    let r = ResolvedPath::new(&file)?;
    assert_eq!(r.path(), file);
    assert_eq!(r.dir_path(), dir.path());
    assert_eq!(r.name(), "vm.state");
    assert_eq!(r.existing(), None);
    std::fs::write(&file, b"x")?;
    let r = ResolvedPath::new(&file)?;
    let md = std::fs::metadata(&file)?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        r.existing(),
        Some(FileId {
            dev: md.dev(),
            ino: md.ino()
        })
    );
    assert!(!r.exists_not_regular());
    // `.` and `..` inside the path, and doubled slashes.
    std::fs::create_dir(dir.path().join("sub"))?;
    let odd = format!("{}//sub/./../vm.state", dir.path().display());
    let r = ResolvedPath::new(&odd)?;
    assert_eq!(r.existing(), ResolvedPath::new(&file)?.existing());
    assert_eq!(r.path(), file);
    // Relative to the working directory (the crate's directory under cargo test).
    let r = ResolvedPath::new("Cargo.toml")?;
    assert_eq!(r.name(), "Cargo.toml");
    assert!(r.existing().is_some());
    Ok(())
}

#[test]
fn paths_without_a_file_name() {
    for p in ["/", "..", ".", "", "/tmp/", "/tmp/."] {
        let err = ResolvedPath::new(p).expect_err(p);
        assert!(matches!(err, Error::NoFileName { .. }), "{p}: {err:?}");
    }
}

#[test]
fn missing_and_odd_components() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-dir").join("vm.state");
    let err = ResolvedPath::new(&missing).expect_err("missing dir");
    assert!(
        matches!(&err, Error::Open { path, source: Errno::ENOENT } if *path == dir.path().join("no-such-dir")),
        "{err:?}"
    );
    std::fs::write(dir.path().join("file"), b"")?;
    let err = ResolvedPath::new(dir.path().join("file").join("x")).expect_err("file as dir");
    assert_eq!(err.errno(), Some(Errno::ENOTDIR), "{err:?}");
    // A directory (or a link to one) at the end is not a file to write.
    std::fs::create_dir(dir.path().join("sub"))?;
    let err = ResolvedPath::new(dir.path().join("sub")).expect_err("dir");
    assert!(matches!(err, Error::NotRegularFile { .. }), "{err:?}");
    for (name, to) in [
        ("l1", "sub"),
        ("l2", "sub/"),
        ("l3", "."),
        ("l4", "sub/.."),
        ("l5", "/"),
    ] {
        symlink(to, dir.path().join(name))?;
        let err = ResolvedPath::new(dir.path().join(name)).expect_err(name);
        assert!(
            matches!(err, Error::NotRegularFile { .. }),
            "{name} -> {to}: {err:?}"
        );
    }
    // A link whose target ends in a slash must lead to a directory.
    symlink("file/", dir.path().join("l6"))?;
    let err = ResolvedPath::new(dir.path().join("l6")).expect_err("file/");
    assert_eq!(err.errno(), Some(Errno::ENOTDIR), "{err:?}");
    symlink("absent/", dir.path().join("l7"))?;
    let err = ResolvedPath::new(dir.path().join("l7")).expect_err("absent/");
    assert_eq!(err.errno(), Some(Errno::ENOENT), "{err:?}");
    Ok(())
}

#[test]
fn links_are_followed_like_the_kernel() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("a/b"))?;
    std::fs::write(d.join("a/b/real"), b"x")?;
    // Final link, relative.
    symlink("a/b/real", d.join("rel"))?;
    assert_eq!(ResolvedPath::new(d.join("rel"))?.path(), d.join("a/b/real"));
    // Final link, absolute.
    symlink(d.join("a/b/real"), d.join("abs"))?;
    assert_eq!(ResolvedPath::new(d.join("abs"))?.path(), d.join("a/b/real"));
    // Intermediate links, and `..` inside a link target (relative to the link's
    // directory, as the kernel does, not lexically).
    symlink("a/b", d.join("dirlink"))?;
    symlink("../b/real", d.join("a/b/up"))?;
    let r = ResolvedPath::new(d.join("dirlink/up"))?;
    assert_eq!(r.path(), d.join("a/b/real"));
    assert!(r.existing().is_some());
    // A chain of links ending in one to a link.
    symlink("rel", d.join("chain"))?;
    assert_eq!(
        ResolvedPath::new(d.join("chain"))?.path(),
        d.join("a/b/real")
    );
    // Dangling: the name the link gives, to be created.
    symlink("a/b/new.state", d.join("dangling"))?;
    let r = ResolvedPath::new(d.join("dangling"))?;
    assert_eq!(r.path(), d.join("a/b/new.state"));
    assert_eq!(r.existing(), None);
    // A dangling link into a missing directory.
    symlink("missing/x", d.join("dangling2"))?;
    let err = ResolvedPath::new(d.join("dangling2")).expect_err("missing dir");
    assert_eq!(err.errno(), Some(Errno::ENOENT));
    Ok(())
}

#[test]
fn at_most_40_links() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("end"), b"x")?;
    // link0 -> end, linkN -> link(N-1): resolving linkN follows N+1 links.
    symlink("end", d.join("link0"))?;
    for n in 1..=MAX_SYMLINKS {
        symlink(format!("link{}", n - 1), d.join(format!("link{n}")))?;
    }
    let ok = format!("link{}", MAX_SYMLINKS - 1);
    assert_eq!(ResolvedPath::new(d.join(&ok))?.path(), d.join("end"));
    let too_many = format!("link{MAX_SYMLINKS}");
    let err = ResolvedPath::new(d.join(&too_many)).expect_err("41 links");
    assert_eq!(err.errno(), Some(Errno::ELOOP), "{err:?}");
    // A loop.
    symlink("loop-b", d.join("loop-a"))?;
    symlink("loop-a", d.join("loop-b"))?;
    let err = ResolvedPath::new(d.join("loop-a")).expect_err("loop");
    assert_eq!(err.errno(), Some(Errno::ELOOP), "{err:?}");
    Ok(())
}

#[test]
fn open_never_follows_a_link_planted_later() -> TestResult {
    let dir = tempfile::tempdir()?;
    let r = ResolvedPath::new(dir.path().join("vm.state"))?;
    std::fs::write(dir.path().join("victim"), b"keep")?;
    symlink("victim", dir.path().join("vm.state"))?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    let err = r
        .open(flags, Mode::from_bits_truncate(0o600))
        .expect_err("followed");
    assert_eq!(err.errno(), Some(Errno::ELOOP), "{err:?}");
    assert_eq!(std::fs::read(dir.path().join("victim"))?, b"keep");
    Ok(())
}

/// A sticky, world-writable directory (like /tmp) with a root-owned file to attack.
fn sticky_setup() -> std::io::Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    let dir = tempfile::tempdir()?;
    chmod(dir.path(), 0o755)?;
    let sticky = dir.path().join("sticky");
    std::fs::create_dir(&sticky)?;
    chmod(&sticky, 0o1777)?;
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"root's file")?;
    Ok((dir, sticky, victim))
}

#[test]
fn protected_symlinks_rule() -> TestResult {
    if !root_or_skip("protected_symlinks_rule") {
        return Ok(());
    }
    let (dir, sticky, victim) = sticky_setup()?;
    let euid = nix::unistd::geteuid().as_raw();
    // Someone else's link in a sticky world-writable directory: refused, final or not.
    let link = sticky.join("vm.state");
    plant_link(&victim, &link, NOBODY)?;
    let err = ResolvedPath::new(&link).expect_err("followed nobody's link");
    match &err {
        Error::UnsafeSymlink {
            path,
            dir,
            link_uid,
            dir_uid,
            euid: e,
        } => {
            assert_eq!(path, &link);
            assert_eq!(dir, &sticky);
            assert_eq!((*link_uid, *dir_uid, *e), (NOBODY, euid, euid));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to follow symlink {}: it is in {}, a sticky world-writable directory, and is owned by uid {NOBODY}, neither ours (uid {euid}) nor the directory owner's (uid {euid})",
            link.display(),
            sticky.display()
        )
    );
    let subdir = dir.path().join("rootdir");
    std::fs::create_dir(&subdir)?;
    plant_link(&subdir, &sticky.join("d"), NOBODY)?;
    let err = ResolvedPath::new(sticky.join("d").join("vm.state")).expect_err("intermediate");
    assert!(
        matches!(&err, Error::UnsafeSymlink { path, .. } if *path == sticky.join("d")),
        "{err:?}"
    );
    // ... also when reached through another link, and as the second hop.
    symlink(sticky.join("vm.state"), dir.path().join("mine"))?;
    let err = ResolvedPath::new(dir.path().join("mine")).expect_err("second hop");
    assert!(matches!(err, Error::UnsafeSymlink { .. }), "{err:?}");
    // Our own link there is followed.
    symlink(&victim, sticky.join("own"))?;
    assert_eq!(ResolvedPath::new(sticky.join("own"))?.path(), victim);
    // So is the directory owner's link: a directory owned by nobody, nobody's link.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs)?;
    chmod(&theirs, 0o1777)?;
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY))?;
    plant_link(&victim, &theirs.join("l"), NOBODY)?;
    assert_eq!(ResolvedPath::new(theirs.join("l"))?.path(), victim);
    // Not sticky, or not world-writable: the kernel follows, and so do we.
    for (name, mode) in [("open", 0o777), ("sticky-private", 0o1775)] {
        let d = dir.path().join(name);
        std::fs::create_dir(&d)?;
        chmod(&d, mode)?;
        plant_link(&victim, &d.join("l"), NOBODY)?;
        assert_eq!(ResolvedPath::new(d.join("l"))?.path(), victim, "{name}");
    }
    assert_eq!(std::fs::read(&victim)?, b"root's file");
    Ok(())
}
