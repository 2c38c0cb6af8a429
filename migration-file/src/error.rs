//! The crate's single error type.
//!
//! Every variant carries the structured context a caller (or a test) may
//! branch on: the file's channel name, the path, the stream offset, the
//! wanted/got lengths. The Display text uses QEMU's wording where QEMU has
//! one and never repeats the `#[source]` text; walk the source chain to get
//! the OS error.
//!
//! [`Error`] is `Clone` (operating-system errors are shared behind an
//! [`Arc`]) so that the latched error of a [`QemuFile`](crate::QemuFile) can
//! be handed out again and again by [`QemuFile::check`](crate::QemuFile::check)
//! without losing its kind, errno or source chain.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use nix::errno::Errno;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong with a [`QemuFile`](crate::QemuFile) or an
/// [`AtomicFile`](crate::AtomicFile).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `qemu_file_open` refuses read-write files: a QEMUFile is either an
    /// output or an input stream.
    #[error("qemu_file_open {}: O_RDWR not supported", path.display())]
    RdwrNotSupported {
        /// The path that was asked for.
        path: PathBuf,
    },

    /// `open(2)` failed (QIOChannelFile's "Unable to open %s").
    #[error("Unable to open {}", path.display())]
    Open {
        /// The path that could not be opened.
        path: PathBuf,
        /// The errno reported by `open(2)`.
        #[source]
        source: Errno,
    },

    /// The backend failed while reading (QIOChannelFile's readv error).
    #[error("Unable to read from file '{name}' at offset {offset}")]
    Read {
        /// Channel name of the file.
        name: String,
        /// Stream offset ([`position`](crate::QemuFile::position)) at which
        /// the failing read was attempted.
        offset: u64,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The backend failed while writing (QIOChannelFile's writev error).
    #[error("Unable to write to file '{name}' at offset {offset}")]
    Write {
        /// Channel name of the file.
        name: String,
        /// Stream offset of the first byte that could not be written.
        offset: u64,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Making written data durable (`fsync(2)`) failed.
    #[error("Unable to sync file '{name}'")]
    Sync {
        /// Channel name of the file.
        name: String,
        /// The errno reported by `fsync(2)`.
        #[source]
        source: Errno,
    },

    /// `close(2)` failed (QIOChannelFile's "Unable to close file").
    #[error("Unable to close file '{name}'")]
    Close {
        /// Channel name of the file.
        name: String,
        /// The errno reported by `close(2)`.
        #[source]
        source: Errno,
    },

    /// Positioning an fd-backed file failed.
    #[error("Unable to seek file '{name}' to offset {offset}")]
    Seek {
        /// Channel name of the file.
        name: String,
        /// The requested absolute file offset.
        offset: u64,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },

    /// [`seek_to`](crate::QemuFile::seek_to) on a file that is not backed by
    /// a file descriptor, or after I/O has already happened.
    #[error("file '{name}' cannot seek: {reason}")]
    NotSeekable {
        /// Channel name of the file.
        name: String,
        /// Why the seek was refused.
        reason: &'static str,
    },

    /// A file read in place ([`MappedFile`](crate::MappedFile)) changed under the reader:
    /// truncated, or opened for writing by someone else, while it was read.
    #[error("file '{name}' changed while it was read: {reason}")]
    InputChanged {
        /// Channel name of the file.
        name: String,
        /// What happened to it.
        reason: String,
    },

    /// The stream ended before the requested bytes could be read.
    #[error("unexpected end of file '{name}' at offset {offset}: wanted {wanted} bytes, got {got}")]
    ShortRead {
        /// Channel name of the file.
        name: String,
        /// Stream offset at which the read started.
        offset: u64,
        /// Number of bytes requested.
        wanted: u64,
        /// Number of bytes that were available.
        got: u64,
    },

    /// A write was attempted on an input file.
    #[error("file '{name}' is an input file: cannot write")]
    NotWritable {
        /// Channel name of the file.
        name: String,
    },

    /// A read was attempted on an output file.
    #[error("file '{name}' is an output file: cannot read")]
    NotReadable {
        /// Channel name of the file.
        name: String,
    },

    /// A counted string is limited to 255 bytes (its length is one byte).
    #[error("counted string of {len} bytes is too long for file '{name}' (at most 255)")]
    StringTooLong {
        /// Channel name of the file.
        name: String,
        /// Length in bytes of the rejected string.
        len: usize,
    },

    /// A counted string read from the stream is not valid UTF-8.
    #[error("counted string in file '{name}' at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// Channel name of the file.
        name: String,
        /// Stream offset of the string's length byte.
        offset: u64,
        /// Where the decoding failed.
        #[source]
        source: std::str::Utf8Error,
    },

    /// [`peek`](crate::QemuFile::peek) cannot look further ahead than one
    /// buffer.
    #[error("cannot peek {wanted} bytes ahead in file '{name}' (at most {max})")]
    PeekTooLarge {
        /// Channel name of the file.
        name: String,
        /// Number of bytes requested.
        wanted: usize,
        /// The buffer size, [`IO_BUF_SIZE`](crate::IO_BUF_SIZE).
        max: usize,
    },

    /// [`into_bytes`](crate::QemuFile::into_bytes) on a file that is not a
    /// [`memory_writer`](crate::QemuFile::memory_writer).
    #[error("file '{name}' is not an in-memory writer")]
    NotMemory {
        /// Channel name of the file.
        name: String,
    },

    /// The atomic-save target has no file name component (e.g. `/` or `..`).
    #[error("atomic save target {} has no file name", path.display())]
    NoFileName {
        /// The rejected target path.
        path: PathBuf,
    },

    /// The atomic-save target exists and is not a regular file (a device, FIFO, socket or
    /// directory must never be replaced by a checkpoint).
    #[error("cannot save to {}: it exists and is not a regular file", path.display())]
    NotRegularFile {
        /// The target (symlinks resolved).
        path: PathBuf,
    },

    /// A symlink on the path is one the kernel's `fs.protected_symlinks` rule would not
    /// follow: it sits in a sticky, world-writable directory (like `/tmp`) and is owned
    /// neither by this process's effective uid nor by the directory's owner. Someone else
    /// may have planted it to make us write where it points. Refused whatever the sysctl
    /// says.
    #[error(
        "refusing to follow symlink {}: it is in {}, a sticky world-writable directory, and is owned by uid {link_uid}, neither ours (uid {euid}) nor the directory owner's (uid {dir_uid})",
        path.display(),
        dir.display()
    )]
    UnsafeSymlink {
        /// The link (as reached by the walk).
        path: PathBuf,
        /// The directory it is in.
        dir: PathBuf,
        /// The link's owner.
        link_uid: u32,
        /// The directory's owner.
        dir_uid: u32,
        /// Our effective uid (the follower).
        euid: u32,
    },

    /// Creating the atomic-save temporary file failed.
    #[error("Unable to create temporary file {}", path.display())]
    TempCreate {
        /// The temporary path (or the last one tried).
        path: PathBuf,
        /// The errno reported by `open(2)`/`fchmod(2)`.
        #[source]
        source: Errno,
    },

    /// Renaming the temporary file over the target failed; the target is
    /// unchanged.
    #[error("Unable to rename {} to {}", from.display(), to.display())]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The operating-system error.
        #[source]
        source: Arc<io::Error>,
    },

    /// Syncing the target's directory after the rename failed: the new
    /// contents are in place but the rename may not survive a crash.
    #[error("Unable to sync directory {}", dir.display())]
    DirSync {
        /// The directory holding the target.
        dir: PathBuf,
        /// The errno reported by `open(2)` or `fsync(2)`.
        #[source]
        source: Errno,
    },
}

impl Error {
    /// The `errno` behind this error, when there is one (like QEMU's negative
    /// return codes from `qemu_file_get_error`).
    #[must_use]
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Open { source, .. }
            | Self::Sync { source, .. }
            | Self::Close { source, .. }
            | Self::TempCreate { source, .. }
            | Self::DirSync { source, .. } => Some(*source),
            Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Seek { source, .. }
            | Self::Rename { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}
