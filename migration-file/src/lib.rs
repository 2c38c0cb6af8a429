//! QEMUFile for the CPR series: patch 3, "migration: qemu file wrappers".
//!
//! Mirrors `migration/qemu-file-channel.{c,h}` (the two wrappers the patch
//! adds), the `QEMUFile` they return (`migration/qemu-file.c`) and the
//! channel underneath (`io/channel-file.c`).
//!
//! # What the C patch does
//!
//! Patch 3 of Steve Sistare's Live Update V7 series adds two helpers so that
//! cpr-save/cpr-load (patch 6) and the Xen save/load commands (patch 4) can
//! get a migration stream on a plain file in one call:
//!
//! * `qemu_file_open(path, flags, mode, name, errp)` refuses `O_RDWR`
//!   ("qemu_file_open %s: O_RDWR not supported"), opens a `QIOChannelFile`
//!   on `path` ("Unable to open %s" on failure), names the channel `name`,
//!   and wraps it as an *output* QEMUFile if `flags` has `O_WRONLY`, else as
//!   an *input* one. The QEMUFile then owns the only channel reference, so
//!   `qemu_fclose` closes the fd.
//! * `qemu_fd_open(fd, writable, name)` adopts an existing fd the same way;
//!   it cannot fail (used later for cpr-state's memfd).
//!
//! The QEMUFile itself buffers `IO_BUF_SIZE` (32 KiB) bytes, writes
//! big-endian integers and one-byte-length "counted strings", and keeps a
//! *sticky* error: the first failure is recorded and every later operation
//! becomes a no-op, to be reported by `qemu_file_get_error`/`qemu_fclose`.
//!
//! # How this crate does it
//!
//! [`QemuFile::open`] and [`QemuFile::from_fd`] are the two wrappers, with
//! the same output/input choice, the same `O_RDWR` refusal and message, and
//! a channel name kept for error messages ([`QemuFile::name`]). The file is
//! a [`QemuFile`] over an fd, any `Read`/`Write`, or memory
//! ([`QemuFile::from_bytes`], [`QemuFile::memory_writer`]), so stream code
//! is tested without touching the disk. [`QemuFile::from_shared`] reads
//! bytes already in memory in place (several readers may share them), and
//! [`QemuFile::get_slice`] borrows what it reads instead of copying it out. Errors are one enum, [`Error`],
//! whose variants carry the file name, path, offset and wanted/got lengths.
//!
//! ## Error model
//!
//! * **Puts latch.** `put_*` return nothing, as in QEMU: the first error
//!   (an I/O failure while flushing, a write to an input file, an oversized
//!   counted string) is latched and later puts do nothing. It surfaces from
//!   [`QemuFile::flush`], [`QemuFile::fsync`], [`QemuFile::close`],
//!   [`QemuFile::error`] and [`QemuFile::check`].
//! * **Gets return `Result` and latch.** `get_*`, `peek*`, `skip` and
//!   `at_eof` return the error *and* latch it, so `?` works in the loader
//!   while the file still remembers why it failed; once latched, every read
//!   fails with that same error.
//!
//! # Where this port deliberately differs from V7
//!
//! * **Short reads are errors.** QEMU's getters return 0 (and set the file
//!   error) on a truncated stream; here a get that cannot be satisfied is
//!   [`Error::ShortRead`] with the offset and the wanted/got lengths, never a
//!   silent 0 and never a panic. [`QemuFile::peek`] may return fewer bytes,
//!   but only at end of file.
//! * **Close and flush errors are reported.** V7's `qmp_cpr_save` ignores
//!   `qemu_fclose`'s return value, so a final flush hitting `ENOSPC` would
//!   go unnoticed. [`QemuFile::close`] returns the latched, flush or
//!   `close(2)` error.
//! * **Saving never destroys the previous checkpoint.** V7 truncates the
//!   target with `O_TRUNC` before writing. [`AtomicFile`] writes a
//!   temporary file beside the target, syncs it, renames it over the target
//!   and syncs the directory; any failure before the rename leaves the old
//!   checkpoint byte-identical.
//! * **Temporaries leave nothing to squat on and nothing behind.** The
//!   temporary is an unnamed `O_TMPFILE`, linked in under a random name only
//!   at commit and renamed over the target at once; where the file system has
//!   no `O_TMPFILE`, a random name opened `O_EXCL | O_NOFOLLOW`. A killed save
//!   leaves nothing (or, in the fallback, a name carrying its pid that the
//!   next save to the same target removes).
//! * **The symlink rule.** V7 opens the target with a plain `open(2)`, so
//!   the kernel's `fs.protected_symlinks` applies only if the host enables
//!   it. [`ResolvedPath`] walks the path itself, one `O_NOFOLLOW` component at
//!   a time, and always refuses a symlink that sits in a sticky,
//!   world-writable directory and is owned neither by us nor by the
//!   directory's owner ([`Error::UnsafeSymlink`]), whatever the sysctl says:
//!   a link planted in `/tmp` by another user never makes a checkpoint
//!   replace or create the file it names. The links a user made themselves
//!   are followed (the file they lead to is replaced, the link stays). Every
//!   later step is relative to the directory descriptor the walk ends in.
//!   [`AtomicFile::replaces`] tells which file (device and inode) a save
//!   would replace, so a caller can refuse to overwrite one it must keep.
//! * **Checkpoints are private.** V7's callers create files 0660 or 0600;
//!   [`AtomicFile`] always uses 0600 (guest memory and device state are
//!   sensitive). [`QemuFile::open`] honours the caller's mode.
//! * **Counted strings are never truncated.** A string of 256 bytes or more
//!   latches [`Error::StringTooLong`]; a non-UTF-8 string read back is
//!   [`Error::InvalidUtf8`].
//! * **Integrity.** Every file keeps a running CRC-32 of the bytes put or
//!   consumed ([`QemuFile::crc32`]) so callers can seal and verify streams.
//!   Bytes may be hashed ahead, on another thread, and put with their hash
//!   ([`HashedBytes`], [`QemuFile::put_hashed`]): the writing thread then
//!   only writes them.
//! * **Files read in place, safely.** [`MappedFile`] maps a stream file
//!   read-only under a read lease (`F_SETLEASE`), so nobody can open it for
//!   writing or truncate it unnoticed while it is read, with a SIGBUS guard
//!   that turns a truncation after a forced lease break into zeros and an
//!   [`Error::InputChanged`] instead of a killed process. Where no lease can
//!   be had, callers read the file as before. This module is the crate's
//!   only `unsafe` code.
//!
//! `/dev/fdset/N` names (QEMU's fd passing in `qemu_open_old`) are not
//! interpreted: callers that receive fds use [`QemuFile::from_fd`].
//!
//! ```
//! use cpr_migration_file::QemuFile;
//!
//! let mut out = QemuFile::memory_writer("example-out");
//! out.put_u32(0x5145_564d); // "QEVM"
//! out.put_counted_string("ram");
//! let bytes = out.into_bytes()?;
//!
//! let mut inp = QemuFile::from_bytes(bytes, "example-in");
//! assert_eq!(inp.get_u32()?, 0x5145_564d);
//! assert_eq!(inp.get_counted_string()?, "ram");
//! assert!(inp.at_eof()?);
//! assert!(inp.get_u8().is_err()); // short read: an error, now latched
//! assert!(inp.error().is_some());
//! # Ok::<(), cpr_migration_file::Error>(())
//! ```

// Only `mapped` (mmap, fcntl leases, a SIGBUS handler) needs `unsafe`.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod atomic;
mod error;
#[allow(unsafe_code)]
mod mapped;
mod qemu_file;
mod resolve;

pub use atomic::AtomicFile;
pub use error::{Error, Result};
pub use mapped::{MapRefused, MappedFile};
pub use qemu_file::{HashedBytes, IO_BUF_SIZE, QemuFile, SharedInput};
pub use resolve::{FileId, MAX_SYMLINKS, ResolvedPath};
