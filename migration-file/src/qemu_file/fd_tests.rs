//! Unit tests for fd-backed [`QemuFile`]s: `open`, `from_fd`, `/dev/full`,
//! pipes, memfd, seeking and syncing.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::tests::{counting, wronly_create};
use super::*;

#[test]
fn dev_full_write_error_is_latched_and_reported() -> Result<()> {
    let mut f = QemuFile::open("/dev/full", OFlag::O_WRONLY, Mode::empty(), "full")?;
    f.put_u64(1);
    f.put_counted_string("still buffered");
    assert!(f.error().is_none(), "puts must not fail before the flush");
    let err = f.flush().expect_err("flush to /dev/full succeeded");
    assert!(
        matches!(&err, Error::Write { name, offset: 0, .. } if name == "full"),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(Errno::ENOSPC));
    assert_eq!(f.error().and_then(Error::errno), Some(Errno::ENOSPC));
    let pos = f.position();
    f.put_u32(7); // a no-op now
    assert_eq!(f.position(), pos);
    let closed = f.close().expect_err("close hid the write error");
    assert_eq!(closed.errno(), Some(Errno::ENOSPC));
    Ok(())
}

#[test]
fn dev_full_error_reported_by_close_alone() -> Result<()> {
    let mut f = QemuFile::open("/dev/full", OFlag::O_WRONLY, Mode::empty(), "full")?;
    f.put_u8(1);
    let err = f.close().expect_err("close hid the write error");
    assert_eq!(err.errno(), Some(Errno::ENOSPC));
    assert!(
        err.to_string()
            .starts_with("Unable to write to file 'full'"),
        "{err}"
    );
    Ok(())
}

#[test]
fn dev_full_large_put_latches_during_put() -> Result<()> {
    let mut f = QemuFile::open("/dev/full", OFlag::O_WRONLY, Mode::empty(), "full")?;
    f.put_buffer(&vec![0; IO_BUF_SIZE * 3]);
    assert_eq!(f.error().and_then(Error::errno), Some(Errno::ENOSPC));
    assert_eq!(
        f.position(),
        IO_BUF_SIZE as u64,
        "bytes accepted after the error"
    );
    assert!(f.check().is_err());
    Ok(())
}

#[test]
fn open_rdwr_refused_with_qemu_message() {
    let err = QemuFile::open("/tmp/cpr.state", OFlag::O_RDWR, Mode::empty(), "x")
        .expect_err("O_RDWR accepted");
    assert_eq!(
        err.to_string(),
        "qemu_file_open /tmp/cpr.state: O_RDWR not supported"
    );
    assert!(matches!(err, Error::RdwrNotSupported { .. }));
}

#[test]
fn open_missing_path_reports_path_and_errno() -> std::result::Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("no-such-file");
    let err = QemuFile::open(&path, OFlag::O_RDONLY, Mode::empty(), "x").expect_err("opened");
    assert!(
        matches!(&err, Error::Open { path: p, source: Errno::ENOENT } if *p == path),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("Unable to open {}", path.display())
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "errno not chained"
    );
    Ok(())
}

/// The process umask, read without changing it (`umask(2)` is racy).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[test]
fn open_honours_caller_mode() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("moded");
    let f = QemuFile::open(&path, wronly_create(), Mode::from_bits_truncate(0o640), "x")?;
    f.close()?;
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    let umask = current_umask().unwrap_or(0o022);
    assert_eq!(mode, 0o640 & !umask);
    Ok(())
}

#[test]
fn from_fd_pipe_blocking_and_nonblocking() -> std::result::Result<(), Box<dyn std::error::Error>> {
    for nonblock in [false, true] {
        let (r, w) = nix::unistd::pipe()?;
        if nonblock {
            for fd in [&r, &w] {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            }
        }
        // More than a pipe's capacity, so both sides must wait.
        let data = counting(300_000);
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut f = QemuFile::from_fd(w, true, "pipe-out");
            f.put_u32(u32::try_from(sent.len()).unwrap_or(u32::MAX));
            f.put_buffer(&sent);
            (f.position(), f.crc32(), f.close())
        });
        let mut f = QemuFile::from_fd(r, false, "pipe-in");
        let len = f.get_u32()?;
        let mut got = vec![0; len as usize];
        f.get_buffer(&mut got)?;
        assert!(f.at_eof()?, "writer closed: expected EOF");
        let (pos, crc, closed) = writer.join().map_err(|_| "writer panicked")?;
        closed?;
        assert!(got == data, "pipe payload differs (nonblock={nonblock})");
        assert_eq!((f.position(), f.crc32()), (pos, crc));
        f.close()?;
    }
    Ok(())
}

#[test]
fn from_fd_memfd_with_seek() -> std::result::Result<(), Box<dyn std::error::Error>> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd: OwnedFd = memfd_create("cpr-state", MFdFlags::MFD_CLOEXEC)?;
    let dup = fd.try_clone()?; // shares the file offset
    let mut out = QemuFile::from_fd(fd, true, "memfd-out");
    out.put_counted_string("cpr");
    out.put_u64(42);
    out.fsync()?; // a memfd can be synced (or reports EINVAL, accepted)
    out.close()?;

    let mut inp = QemuFile::from_fd(dup, false, "memfd-in");
    inp.seek_to(0)?;
    assert_eq!(inp.get_counted_string()?, "cpr");
    assert_eq!(inp.get_u64()?, 42);
    assert!(inp.at_eof()?);
    assert!(matches!(inp.seek_to(0), Err(Error::NotSeekable { .. })));
    assert!(inp.error().is_none(), "a refused seek must not latch");
    Ok(())
}

#[test]
fn seek_to_offset_in_file() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("offset");
    std::fs::write(&path, [0xee, 0xee, 0xee, 0, 0, 0x12, 0x34])?;
    let mut f = QemuFile::open(&path, OFlag::O_RDONLY, Mode::empty(), "off")?;
    f.seek_to(3)?;
    assert_eq!(f.get_u32()?, 0x1234);
    assert_eq!(f.position(), 4);

    let mut mem = QemuFile::memory_writer("mem");
    assert!(matches!(mem.seek_to(0), Err(Error::NotSeekable { .. })));
    let mut pipe_in = {
        let (r, _w) = nix::unistd::pipe()?;
        QemuFile::from_fd(r, false, "pipe")
    };
    let err = pipe_in.seek_to(1).expect_err("seek on a pipe");
    assert_eq!(err.errno(), Some(Errno::ESPIPE));
    assert!(pipe_in.error().is_some(), "lseek failure not latched");
    Ok(())
}

#[test]
fn fsync_regular_file() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("synced");
    let mut f = QemuFile::open(&path, wronly_create(), Mode::from_bits_truncate(0o600), "s")?;
    f.put_u16(0xabcd);
    f.fsync()?;
    assert_eq!(std::fs::read(&path)?, [0xab, 0xcd], "fsync did not flush");
    f.close()?;
    Ok(())
}
