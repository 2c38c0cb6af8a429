//! The byte channel under a [`QemuFile`](super::QemuFile): QEMU's
//! `QIOChannelFile` (io/channel-file.c) or a generic reader/writer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Where the bytes go to or come from (QEMU's QIOChannel under the QEMUFile).
pub(super) enum Backend {
    /// A file descriptor, QIOChannelFile: a path opened by
    /// [`QemuFile::open`](super::QemuFile::open) or an fd adopted by [`QemuFile::from_fd`](super::QemuFile::from_fd).
    Fd(File),
    /// Any reader ([`QemuFile::from_reader`](super::QemuFile::from_reader), [`QemuFile::from_bytes`](super::QemuFile::from_bytes)).
    Reader(Box<dyn Read + Send>),
    /// Any writer ([`QemuFile::from_writer`](super::QemuFile::from_writer)).
    Writer(Box<dyn Write + Send>),
    /// [`QemuFile::memory_writer`](super::QemuFile::memory_writer).
    Memory(Vec<u8>),
    /// Taken apart by `close`/`into_bytes`.
    Closed,
}

impl Backend {
    /// One `read(2)`-like call, retried on `EINTR`; a non-blocking fd that
    /// would block is waited for (QEMU yields the coroutine instead).
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Self::Fd(f) => f.read(buf),
                Self::Reader(r) => r.read(buf),
                Self::Writer(_) | Self::Memory(_) | Self::Closed => {
                    return Err(io::ErrorKind::Unsupported.into());
                }
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self {
                    Self::Fd(f) => wait_for(f, PollFlags::POLLIN)?,
                    _ => return Err(e),
                },
                r => return r,
            }
        }
    }

    /// Write all of `data`. On failure, returns how much was written before
    /// the error together with the error.
    pub(super) fn write_all(
        &mut self,
        mut data: &[u8],
    ) -> std::result::Result<(), (usize, io::Error)> {
        let total = data.len();
        while !data.is_empty() {
            let r = match self {
                Self::Fd(f) => f.write(data),
                Self::Writer(w) => w.write(data),
                Self::Memory(v) => {
                    v.extend_from_slice(data);
                    Ok(data.len())
                }
                Self::Reader(_) | Self::Closed => Err(io::ErrorKind::Unsupported.into()),
            };
            let done = total - data.len();
            match r {
                Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
                Ok(n) => data = data.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self {
                    Self::Fd(f) => wait_for(f, PollFlags::POLLOUT).map_err(|e| (done, e))?,
                    _ => return Err((done, e)),
                },
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }
}

/// Block until a non-blocking fd is ready for `events`.
fn wait_for(file: &File, events: PollFlags) -> io::Result<()> {
    loop {
        let mut fds = [PollFd::new(file.as_fd(), events)];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
