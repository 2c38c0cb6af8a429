//! [`QemuFile`]: the buffered, big-endian migration stream
//! (migration/qemu-file.c over io/channel-file.c).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

mod backend;
mod hashed;

use backend::Backend;
pub use hashed::HashedBytes;

/// Size of the stream buffer, QEMU's `IO_BUF_SIZE` (32 KiB).
///
/// Writes are batched into one buffer of this size; reads are refilled one
/// buffer at a time, which also bounds how far [`QemuFile::peek`] can look.
pub const IO_BUF_SIZE: usize = 32 * 1024;

/// The buffered, big-endian migration stream: QEMU's `QEMUFile`.
///
/// A `QemuFile` is either an *output* file (puts) or an *input* file (gets,
/// peeks, skips); see the crate documentation for the error model. It is
/// `Send`, so a stream can be produced on one thread and consumed on another.
pub struct QemuFile {
    name: String,
    writable: bool,
    backend: Backend,
    /// Input buffer: the unconsumed bytes are `rbuf[rpos..rlen]`, or
    /// `shared[rpos..rlen]` for an input over shared bytes.
    rbuf: Vec<u8>,
    /// The whole input of [`from_shared`](QemuFile::from_shared), read in place.
    shared: Option<Arc<dyn SharedInput>>,
    rpos: usize,
    rlen: usize,
    /// Output buffer: bytes put but not yet handed to the backend.
    wbuf: Vec<u8>,
    /// Bytes put or consumed so far.
    position: u64,
    crc: crc32fast::Hasher,
    /// Whether consumed bytes enter `crc` (see [`QemuFile::disable_crc`]).
    hashing: bool,
    error: Option<Error>,
}

/// Bytes several inputs read in place ([`QemuFile::from_shared_input`]): a whole stream
/// in memory (`Vec<u8>`), or a file mapped under a lease ([`MappedFile`](crate::MappedFile)).
pub trait SharedInput: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];

    /// Whether the bytes read so far are still the input's own: `Err` with why not (a
    /// mapped file truncated or opened for writing meanwhile). Bytes in memory always are.
    fn verify(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl SharedInput for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// The bytes an input reads from: its buffer, or the shared input.
fn input<'a>(shared: &'a Option<Arc<dyn SharedInput>>, rbuf: &'a [u8]) -> &'a [u8] {
    shared.as_deref().map_or(rbuf, SharedInput::bytes)
}

impl fmt::Debug for QemuFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            _ if self.shared.is_some() => {
                format!(
                    "shared ({} bytes)",
                    self.shared.as_deref().map_or(0, |b| b.bytes().len())
                )
            }
            Backend::Fd(ref file) => format!("{file:?}"),
            Backend::Reader(_) => "reader".to_owned(),
            Backend::Writer(_) => "writer".to_owned(),
            Backend::Memory(ref v) => format!("memory ({} bytes)", v.len()),
            Backend::Closed => "closed".to_owned(),
        };
        f.debug_struct("QemuFile")
            .field("name", &self.name)
            .field("writable", &self.writable)
            .field("backend", &backend)
            .field("position", &self.position)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Generates the fixed-width big-endian put/get pairs.
macro_rules! int_accessors {
    ($($put:ident / $get:ident : $t:ty),* $(,)?) => {$(
        #[doc = concat!("Write a big-endian `", stringify!($t), "` (latches errors, see the crate docs).")]
        pub fn $put(&mut self, v: $t) {
            self.put_buffer(&v.to_be_bytes());
        }

        #[doc = concat!("Read a big-endian `", stringify!($t), "`; a short read is an error.")]
        pub fn $get(&mut self) -> Result<$t> {
            self.get_array().map(<$t>::from_be_bytes)
        }
    )*};
}

impl QemuFile {
    fn new(backend: Backend, writable: bool, name: &str) -> Self {
        let (rbuf, wbuf) = if writable {
            (Vec::new(), Vec::with_capacity(IO_BUF_SIZE))
        } else {
            (vec![0; IO_BUF_SIZE], Vec::new())
        };
        Self {
            name: name.to_owned(),
            writable,
            backend,
            rbuf,
            shared: None,
            rpos: 0,
            rlen: 0,
            wbuf,
            position: 0,
            crc: crc32fast::Hasher::new(),
            hashing: true,
            error: None,
        }
    }

    /// V7 `qemu_file_open`: open `path` as an output file when `flags`
    /// contains `O_WRONLY`, otherwise as an input file.
    ///
    /// `O_RDWR` is refused with QEMU's message ("qemu_file_open \<path\>:
    /// O_RDWR not supported"). `O_CLOEXEC` is always added (as
    /// `qemu_open` does) and `mode` is used for `O_CREAT`, subject to the
    /// umask. An `open(2)` failure is [`Error::Open`] with the path and errno.
    pub fn open(path: impl AsRef<Path>, flags: OFlag, mode: Mode, name: &str) -> Result<QemuFile> {
        let path = path.as_ref();
        if flags.contains(OFlag::O_RDWR) {
            return Err(Error::RdwrNotSupported {
                path: path.to_owned(),
            });
        }
        let fd = loop {
            match nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, mode) {
                Ok(fd) => break fd,
                Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(Error::Open {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        Ok(Self::from_fd(fd, flags.contains(OFlag::O_WRONLY), name))
    }

    /// V7 `qemu_fd_open`: adopt `fd` as an output (`writable`) or input
    /// file. Never fails; the fd is closed by [`close`](Self::close) or on
    /// drop. Non-blocking fds are supported (waited for with `poll(2)`).
    pub fn from_fd(fd: OwnedFd, writable: bool, name: &str) -> QemuFile {
        Self::new(Backend::Fd(File::from(fd)), writable, name)
    }

    /// An input file over any reader (tests, sockets, pre-read buffers).
    pub fn from_reader(r: impl Read + Send + 'static, name: &str) -> QemuFile {
        Self::new(Backend::Reader(Box::new(r)), false, name)
    }

    /// An output file over any writer. [`flush`](Self::flush) also flushes
    /// the writer.
    pub fn from_writer(w: impl Write + Send + 'static, name: &str) -> QemuFile {
        Self::new(Backend::Writer(Box::new(w)), true, name)
    }

    /// An input file over owned bytes (e.g. a whole stream read beforehand).
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> QemuFile {
        Self::from_reader(io::Cursor::new(bytes), name)
    }

    /// An input file reading `bytes` in place: no copy into a buffer, and
    /// [`get_slice`](Self::get_slice) borrows straight from them. Several
    /// files may share the same bytes (e.g. the passes of a two-pass load);
    /// [`shared_bytes`](Self::shared_bytes) tells whether two read the same.
    pub fn from_shared(bytes: Arc<Vec<u8>>, name: &str) -> QemuFile {
        Self::from_shared_input(bytes, name)
    }

    /// [`from_shared`](Self::from_shared) over any [`SharedInput`], such as a
    /// [`MappedFile`](crate::MappedFile).
    pub fn from_shared_input(bytes: Arc<dyn SharedInput>, name: &str) -> QemuFile {
        let mut f = Self::new(Backend::Closed, false, name);
        f.rbuf = Vec::new();
        f.rlen = bytes.bytes().len();
        f.shared = Some(bytes);
        f
    }

    /// The bytes a [`from_shared`](Self::from_shared) input reads; `None` for
    /// any other file.
    pub fn shared_bytes(&self) -> Option<&Arc<dyn SharedInput>> {
        self.shared.as_ref()
    }

    /// Whether the bytes read so far are still the input's own
    /// ([`SharedInput::verify`]): [`Error::InputChanged`] (not latched) if a mapped
    /// file was truncated or opened for writing meanwhile. Always `Ok` for other files,
    /// whose bytes were copied out as they were read.
    pub fn verify_input(&self) -> Result<()> {
        match self.shared.as_deref().map(SharedInput::verify) {
            Some(Err(reason)) => Err(Error::InputChanged {
                name: self.name.clone(),
                reason,
            }),
            _ => Ok(()),
        }
    }

    /// An output file collecting its bytes in memory; get them back with
    /// [`into_bytes`](Self::into_bytes).
    pub fn memory_writer(name: &str) -> QemuFile {
        Self::new(Backend::Memory(Vec::new()), true, name)
    }

    /// The channel name given at creation (QEMU's `qio_channel_set_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is an output file.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The first latched error, if any (QEMU's `qemu_file_get_error`).
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// `Err` with (a copy of) the latched error, `Ok` if there is none.
    pub fn check(&self) -> Result<()> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Bytes put or consumed so far (`qemu_file_transferred`); bytes peeked
    /// but not consumed are not counted.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// CRC-32 (IEEE, as `crc32fast`) of every byte put, or every byte
    /// consumed by a get or [`skip`](Self::skip), since creation or the last
    /// [`reset_crc`](Self::reset_crc).
    pub fn crc32(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Restart the running CRC-32.
    pub fn reset_crc(&mut self) {
        self.crc = crc32fast::Hasher::new();
    }

    /// Stop hashing: bytes consumed from now on do not enter
    /// [`crc32`](Self::crc32). For a reader that already checked these exact
    /// bytes (the same [`shared_bytes`](Self::shared_bytes)), hashing them
    /// again proves nothing.
    pub fn disable_crc(&mut self) {
        self.hashing = false;
    }

    /// Record `e` unless an error is already latched; return the latched one.
    fn latch(&mut self, e: Error) -> Error {
        self.error.get_or_insert(e).clone()
    }

    // ----------------------------------------------------------------- output

    /// Whether a put may go ahead: no error latched, and an output file (else
    /// [`Error::NotWritable`] is latched).
    fn may_put(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        if !self.writable {
            self.latch(Error::NotWritable {
                name: self.name.clone(),
            });
            return false;
        }
        true
    }

    /// Write raw bytes. Like every put, this never fails visibly: an error is
    /// latched and reported by [`flush`](Self::flush), [`close`](Self::close)
    /// and [`check`](Self::check); once latched, puts do nothing.
    pub fn put_buffer(&mut self, mut buf: &[u8]) {
        if !self.may_put() {
            return;
        }
        while !buf.is_empty() {
            let room = IO_BUF_SIZE - self.wbuf.len();
            let (now, rest) = buf.split_at(room.min(buf.len()));
            self.wbuf.extend_from_slice(now);
            self.crc.update(now);
            self.position += now.len() as u64;
            buf = rest;
            if self.wbuf.len() >= IO_BUF_SIZE && self.flush_buffer().is_err() {
                return;
            }
        }
    }

    /// Write a counted string: one length byte, then the bytes (no
    /// terminator). A string of 256 bytes or more latches
    /// [`Error::StringTooLong`]; it is never truncated.
    pub fn put_counted_string(&mut self, s: &str) {
        match u8::try_from(s.len()) {
            Ok(len) => {
                self.put_u8(len);
                self.put_buffer(s.as_bytes());
            }
            Err(_) => {
                if self.error.is_none() {
                    self.latch(Error::StringTooLong {
                        name: self.name.clone(),
                        len: s.len(),
                    });
                }
            }
        }
    }

    int_accessors! {
        put_u16 / get_u16: u16,
        put_u32 / get_u32: u32,
        put_u64 / get_u64: u64,
        put_i8 / get_i8: i8,
        put_i16 / get_i16: i16,
        put_i32 / get_i32: i32,
        put_i64 / get_i64: i64,
    }

    /// Write one byte.
    pub fn put_u8(&mut self, v: u8) {
        self.put_buffer(&[v]);
    }

    /// Hand the output buffer to the backend, latching a failure.
    fn flush_buffer(&mut self) -> Result<()> {
        self.check()?;
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let start = self.position - self.wbuf.len() as u64;
        let r = self.backend.write_all(&self.wbuf);
        // Like QEMU, the buffer is dropped whether or not it was written.
        self.wbuf.clear();
        match r {
            Ok(()) => Ok(()),
            Err((done, source)) => Err(self.latch(Error::Write {
                name: self.name.clone(),
                offset: start + done as u64,
                source: Arc::new(source),
            })),
        }
    }

    /// Write out buffered bytes (and flush a [`from_writer`](Self::from_writer)
    /// writer). Returns the latched error, if any. A no-op for input files.
    pub fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return self.check();
        }
        self.flush_buffer()?;
        if let Backend::Writer(w) = &mut self.backend
            && let Err(source) = w.flush()
        {
            return Err(self.latch(Error::Write {
                name: self.name.clone(),
                offset: self.position,
                source: Arc::new(source),
            }));
        }
        Ok(())
    }

    /// [`flush`](Self::flush), then `fsync(2)` an fd-backed output file.
    ///
    /// A no-op beyond the flush for memory/generic writers and input files,
    /// and for fds that cannot be synced (`EINVAL`: pipes, sockets, character
    /// devices). Any other sync failure is latched as [`Error::Sync`].
    pub fn fsync(&mut self) -> Result<()> {
        self.flush()?;
        if !self.writable {
            return Ok(());
        }
        if let Backend::Fd(f) = &self.backend {
            match nix::unistd::fsync(f) {
                Ok(()) | Err(Errno::EINVAL) => {}
                Err(source) => {
                    return Err(self.latch(Error::Sync {
                        name: self.name.clone(),
                        source,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Position an fd-backed file at absolute `offset` before any I/O (the
    /// mainline `file:` URI's `offset=`). [`position`](Self::position) stays
    /// 0: it counts stream bytes, not file offsets.
    ///
    /// Refused with [`Error::NotSeekable`] (not latched) for non-fd files or
    /// once bytes were put, got or peeked; an `lseek(2)` failure is latched.
    pub fn seek_to(&mut self, offset: u64) -> Result<()> {
        self.check()?;
        if self.shared.is_some() {
            return Err(Error::NotSeekable {
                name: self.name.clone(),
                reason: "not backed by a file descriptor",
            });
        }
        if self.position != 0 || self.rlen != 0 || !self.wbuf.is_empty() {
            return Err(Error::NotSeekable {
                name: self.name.clone(),
                reason: "I/O has already been done",
            });
        }
        let Backend::Fd(f) = &mut self.backend else {
            return Err(Error::NotSeekable {
                name: self.name.clone(),
                reason: "not backed by a file descriptor",
            });
        };
        match f.seek(SeekFrom::Start(offset)) {
            Ok(_) => Ok(()),
            Err(source) => Err(self.latch(Error::Seek {
                name: self.name.clone(),
                offset,
                source: Arc::new(source),
            })),
        }
    }

    /// Flush (output files) and close, reporting every failure: the latched
    /// error if there is one, else a flush error, else `close(2)`'s error
    /// ([`Error::Close`]). V7's callers drop the `fclose` result; don't.
    pub fn close(mut self) -> Result<()> {
        // Errors are latched; the final check reports the first one.
        let _ = self.flush();
        if let Backend::Fd(f) = std::mem::replace(&mut self.backend, Backend::Closed) {
            // No retry on EINTR: on Linux the fd is gone either way.
            if let Err(source) = nix::unistd::close(f) {
                self.latch(Error::Close {
                    name: self.name.clone(),
                    source,
                });
            }
        }
        self.check()
    }

    /// Flush a [`memory_writer`](Self::memory_writer) and return its bytes.
    /// Any other file gives [`Error::NotMemory`] (after being flushed).
    pub fn into_bytes(mut self) -> Result<Vec<u8>> {
        self.flush()?;
        match std::mem::replace(&mut self.backend, Backend::Closed) {
            Backend::Memory(v) => Ok(v),
            other => {
                self.backend = other;
                Err(Error::NotMemory {
                    name: self.name.clone(),
                })
            }
        }
    }

    // ------------------------------------------------------------------ input

    /// Fail with the latched error, or latch [`Error::NotReadable`] for an
    /// output file.
    fn check_readable(&mut self) -> Result<()> {
        self.check()?;
        if self.writable {
            return Err(self.latch(Error::NotReadable {
                name: self.name.clone(),
            }));
        }
        Ok(())
    }

    /// Unconsumed buffered bytes.
    fn available(&self) -> usize {
        self.rlen - self.rpos
    }

    /// Move the unconsumed bytes to the front of the buffer and read more
    /// after them (`qemu_fill_buffer`). Returns the number of bytes added;
    /// 0 means end of file (or a full buffer, which callers avoid).
    fn fill(&mut self) -> Result<usize> {
        if self.shared.is_some() {
            // All of the input is already "buffered".
            return Ok(0);
        }
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        let Some(space) = self.rbuf.get_mut(self.rlen..) else {
            return Ok(0);
        };
        if space.is_empty() {
            return Ok(0);
        }
        match self.backend.read(space) {
            Ok(n) => {
                let n = n.min(space.len());
                self.rlen += n;
                Ok(n)
            }
            Err(source) => Err(self.latch(Error::Read {
                name: self.name.clone(),
                offset: self.position + self.available() as u64,
                source: Arc::new(source),
            })),
        }
    }

    /// Consume `n <= available()` buffered bytes.
    fn consume(&mut self, n: usize) {
        let end = self.rpos + n;
        if self.hashing
            && let Some(bytes) = input(&self.shared, &self.rbuf).get(self.rpos..end)
        {
            self.crc.update(bytes);
        }
        self.rpos = end;
        self.position += n as u64;
    }

    fn short_read(&mut self, offset: u64, wanted: u64, got: u64) -> Error {
        self.latch(Error::ShortRead {
            name: self.name.clone(),
            offset,
            wanted,
            got,
        })
    }

    /// Read exactly `buf.len()` bytes; a short read is [`Error::ShortRead`].
    /// Errors are returned and latched.
    pub fn get_buffer(&mut self, buf: &mut [u8]) -> Result<()> {
        self.check_readable()?;
        let start = self.position;
        let mut done = 0;
        while done < buf.len() {
            if self.available() == 0 && self.fill()? == 0 {
                return Err(self.short_read(start, buf.len() as u64, done as u64));
            }
            let n = self.available().min(buf.len() - done);
            if let (Some(dst), Some(src)) = (
                buf.get_mut(done..done + n),
                input(&self.shared, &self.rbuf).get(self.rpos..self.rpos + n),
            ) {
                dst.copy_from_slice(src);
            }
            self.consume(n);
            done += n;
        }
        Ok(())
    }

    fn get_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        self.get_buffer(&mut a)?;
        Ok(a)
    }

    /// Read one byte.
    pub fn get_u8(&mut self) -> Result<u8> {
        self.get_array().map(u8::from_be_bytes)
    }

    /// Read a counted string (length byte + bytes). Bytes that are not UTF-8
    /// are [`Error::InvalidUtf8`] (latched).
    pub fn get_counted_string(&mut self) -> Result<String> {
        let offset = self.position;
        let len = self.get_u8()?;
        let mut bytes = vec![0; usize::from(len)];
        self.get_buffer(&mut bytes)?;
        String::from_utf8(bytes).map_err(|e| {
            self.latch(Error::InvalidUtf8 {
                name: self.name.clone(),
                offset,
                source: e.utf8_error(),
            })
        })
    }

    /// Look at the next `n` bytes without consuming them
    /// (`qemu_peek_buffer`); `n` is at most [`IO_BUF_SIZE`]
    /// ([`Error::PeekTooLarge`] otherwise).
    ///
    /// Returns `Ok` with **fewer** than `n` bytes only when the stream ends
    /// first (possibly an empty slice at end of file); reaching the end is
    /// not an error here. Read errors are returned and latched.
    pub fn peek(&mut self, n: usize) -> Result<&[u8]> {
        self.check_readable()?;
        if n > IO_BUF_SIZE {
            return Err(self.latch(Error::PeekTooLarge {
                name: self.name.clone(),
                wanted: n,
                max: IO_BUF_SIZE,
            }));
        }
        while self.available() < n {
            if self.fill()? == 0 {
                break;
            }
        }
        let end = self.rpos + n.min(self.available());
        Ok(input(&self.shared, &self.rbuf)
            .get(self.rpos..end)
            .unwrap_or_default())
    }

    /// Read exactly `n` bytes (at most [`IO_BUF_SIZE`]) and borrow them from
    /// the input instead of copying them out; a short read is
    /// [`Error::ShortRead`] (latched, nothing consumed).
    pub fn get_slice(&mut self, n: usize) -> Result<&[u8]> {
        let got = self.peek(n)?.len();
        if got < n {
            let offset = self.position;
            return Err(self.short_read(offset, n as u64, got as u64));
        }
        let start = self.rpos;
        self.consume(n);
        Ok(input(&self.shared, &self.rbuf)
            .get(start..start + n)
            .unwrap_or_default())
    }

    /// Look at the next byte without consuming it (`qemu_peek_byte`); at end
    /// of file this is [`Error::ShortRead`] (latched).
    pub fn peek_u8(&mut self) -> Result<u8> {
        match self.peek(1)?.first() {
            Some(&b) => Ok(b),
            None => {
                let offset = self.position;
                Err(self.short_read(offset, 1, 0))
            }
        }
    }

    /// Consume `n` bytes without looking at them (they still enter the CRC);
    /// a short stream is [`Error::ShortRead`] (latched).
    pub fn skip(&mut self, n: u64) -> Result<()> {
        self.check_readable()?;
        let start = self.position;
        let mut left = n;
        while left > 0 {
            if self.available() == 0 && self.fill()? == 0 {
                return Err(self.short_read(start, n, n - left));
            }
            let step = usize::try_from(left).map_or(self.available(), |l| l.min(self.available()));
            self.consume(step);
            left -= step as u64;
        }
        Ok(())
    }

    /// Whether the input is exhausted. Reaching the end is not an error and
    /// is not latched; read errors are.
    pub fn at_eof(&mut self) -> Result<bool> {
        self.check_readable()?;
        Ok(self.available() == 0 && self.fill()? == 0)
    }
}

impl Drop for QemuFile {
    /// Best-effort flush, like `BufWriter`: errors are lost here, so call
    /// [`QemuFile::close`] to see them. The fd is closed by `File`'s drop.
    fn drop(&mut self) {
        if self.writable && !matches!(self.backend, Backend::Closed) {
            let _ = self.flush_buffer();
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fd_tests;
