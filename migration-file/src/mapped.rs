//! [`MappedFile`]: a stream file read in place, mapped read-only under a read lease,
//! with a SIGBUS guard.
//!
//! Reading a checkpoint with `read(2)` copies every byte out of the page cache, once per
//! pass of a two-pass load; mapping it copies nothing until the loader writes page data
//! into guest RAM. Two things make a mapping of someone else's file unsafe, and both
//! are handled here:
//!
//! * **The file changes under the mapping.** A read lease (`F_SETLEASE`, `F_RDLCK`) is
//!   granted only while nobody has the file open for writing, and from then on anyone
//!   who opens it for writing or truncates it waits (up to `fs.lease-break-time`) and
//!   breaks the lease. [`MappedFile::verify`] says whether the lease still holds: if it
//!   does, the bytes are the ones the lease was taken on. The break notice is a signal
//!   this module sets to be ignored; the lease state is what counts.
//! * **The file shrinks under the mapping** (after a forced lease break): reading a page
//!   past its new end raises SIGBUS, which would kill the process. A process-wide
//!   SIGBUS handler maps a page of zeros over a faulting page of a guarded mapping and
//!   notes it, so the read completes and [`MappedFile::verify`] reports the change.
//!   Faults anywhere else go to the handler that was there before (or kill, as before).
//!
//! Where a lease cannot be had (the file is open for writing somewhere, the caller
//! neither owns it nor has `CAP_LEASE`, the file system has no leases) or the file cannot
//! be mapped, [`MappedFile::map`] says why and the caller reads the file instead.

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::qemu_file::SharedInput;

/// Offset of the lease-break signal from `SIGRTMIN` (ignored; see the module docs).
const LEASE_SIGNAL_OFFSET: i32 = 3;

/// `fcntl`'s `F_SETSIG` (Linux, `<linux/fcntl.h>`; not in the `libc` crate).
const F_SETSIG: libc::c_int = 10;

/// How many mappings can be guarded at once; a further one is refused (and read instead).
const SLOTS: usize = 32;

/// One guarded address range `start..end` (both 0: free).
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    /// A page of it faulted and was replaced with zeros.
    faulted: AtomicBool,
    /// Taken by a live [`MappedFile`].
    used: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
    used: AtomicBool::new(false),
};

static GUARDED: [Slot; SLOTS] = [FREE; SLOTS];

/// The page size, known once the handler is installed.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS disposition before ours, to pass on faults that are not ours; or why the
/// handler could not be installed.
static PREVIOUS: OnceLock<Result<SigAction, Errno>> = OnceLock::new();

/// Why a file is read rather than mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapRefused {
    /// Nothing to map at or after the offset.
    #[error("nothing to map at offset {offset} of a {len}-byte file")]
    Empty {
        /// The offset asked for.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// A system call failed: `F_SETLEASE` (`EAGAIN`: someone has the file open for
    /// writing; `EACCES`: not ours), `mmap`, `sigaction`, `fstat`.
    #[error("{op} failed")]
    Sys {
        /// The call.
        op: &'static str,
        /// Its errno.
        #[source]
        source: Errno,
    },
    /// Every guard slot is taken.
    #[error("{SLOTS} mapped files are open already")]
    NoSlot,
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> MapRefused {
    move |source| MapRefused::Sys { op, source }
}

/// A stream file from an offset to its end, mapped read-only under a read lease, with
/// a SIGBUS guard (see the module docs). Read it with
/// [`QemuFile::from_shared_input`](crate::QemuFile::from_shared_input); check
/// [`verify`](SharedInput::verify) after reading (the loaders do, through
/// [`QemuFile::verify_input`](crate::QemuFile::verify_input)).
pub struct MappedFile {
    map: NonNull<c_void>,
    map_len: usize,
    /// Where the stream starts in the mapping (the offset's part below a page).
    skip: usize,
    /// The file, holding the lease until drop.
    file: File,
    slot: &'static Slot,
}

// SAFETY: the mapping is read-only and owned by this value until drop; `&[u8]` views of it
// may be read from any thread, and the slot is only ever touched through atomics.
unsafe impl Send for MappedFile {}
// SAFETY: as for Send: nothing in a MappedFile is written after `map` returns, except the
// slot's atomics.
unsafe impl Sync for MappedFile {}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("file", &self.file)
            .field("len", &(self.map_len - self.skip))
            .finish_non_exhaustive()
    }
}

impl MappedFile {
    /// Maps `file` (opened read-only) from `offset` to its end, after taking a read lease
    /// on its open file description. The lease and the mapping last until drop.
    pub fn map(file: &File, offset: u64) -> Result<MappedFile, MapRefused> {
        install_guard().map_err(sys("sigaction(SIGBUS)"))?;
        let file = file.try_clone().map_err(|e| MapRefused::Sys {
            op: "dup",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let fd = file.as_raw_fd();
        take_lease(fd)?;
        // From here the file cannot change without breaking the lease: its length now is
        // the length the mapping covers.
        let lease = LeaseGuard(fd);
        let len = file
            .metadata()
            .map_err(|e| MapRefused::Sys {
                op: "fstat",
                source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?
            .len();
        if offset >= len {
            return Err(MapRefused::Empty { offset, len });
        }
        let page = PAGE_SIZE.load(Ordering::Relaxed) as u64;
        let start = offset - offset % page;
        let skip =
            usize::try_from(offset - start).map_err(|_| MapRefused::Empty { offset, len })?;
        let map_len = usize::try_from(len - start).map_err(|_| MapRefused::Sys {
            op: "mmap",
            source: Errno::EFBIG,
        })?;
        let (Some(nz_len), Ok(file_off)) =
            (std::num::NonZeroUsize::new(map_len), i64::try_from(start))
        else {
            return Err(MapRefused::Empty { offset, len });
        };
        let slot = take_slot().ok_or(MapRefused::NoSlot)?;
        // SAFETY: a new read-only private mapping chosen by the kernel (no address given), of
        // a file we hold open; it aliases no Rust object and is unmapped only in drop.
        let map = unsafe {
            mmap(
                None,
                nz_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                &file,
                file_off,
            )
        };
        let map = match map {
            Ok(m) => m,
            Err(e) => {
                slot.used.store(false, Ordering::Release);
                return Err(MapRefused::Sys {
                    op: "mmap",
                    source: e,
                });
            }
        };
        slot.faulted.store(false, Ordering::Release);
        // Start first: while `end` is still 0 the slot guards nothing.
        slot.start.store(map.as_ptr() as usize, Ordering::Release);
        slot.end
            .store(map.as_ptr() as usize + map_len, Ordering::Release);
        std::mem::forget(lease);
        Ok(MappedFile {
            map,
            map_len,
            skip,
            file,
            slot,
        })
    }
}

impl SharedInput for MappedFile {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `map..map+map_len` is a live read-only mapping owned by `self` (unmapped in
        // drop only), `skip < map_len`. Its bytes stay the file's as long as the lease holds;
        // after a forced break they may change (or read as zeros, through the SIGBUS guard)
        // but stay readable memory: the loaders treat them as untrusted input either way
        // and `verify` reports the change.
        let all =
            unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<u8>(), self.map_len) };
        all.get(self.skip..).unwrap_or_default()
    }

    fn verify(&self) -> Result<(), String> {
        if self.slot.faulted.load(Ordering::Acquire) {
            return Err("it was truncated (pages past its new end read as zeros)".into());
        }
        match lease_of(self.file.as_raw_fd()) {
            Ok(libc::F_RDLCK) => Ok(()),
            Ok(_) => Err(
                "someone opened it for writing or truncated it (the read lease was broken)".into(),
            ),
            Err(e) => Err(format!("its read lease cannot be checked: {e}")),
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // Unguarded first (end first: the slot then guards nothing), so that a SIGBUS in
        // whatever is mapped at these addresses next is never taken for ours.
        self.slot.end.store(0, Ordering::Release);
        self.slot.start.store(0, Ordering::Release);
        // SAFETY: the mapping `map..map+map_len` was made by `map` and is owned by `self`;
        // the slices `bytes` handed out borrowed `self`, so none outlives this.
        let res = unsafe { munmap(self.map, self.map_len) };
        // A failure leaks the address range; the file is still closed.
        let _ = res;
        self.slot.used.store(false, Ordering::Release);
        // Let a writer waiting on the lease go now rather than at close.
        let _ = set_lease(self.file.as_raw_fd(), libc::F_UNLCK);
    }
}

/// Releases a lease taken by [`take_lease`] on an early return of [`MappedFile::map`].
struct LeaseGuard(RawFd);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let _ = set_lease(self.0, libc::F_UNLCK);
    }
}

/// `F_SETSIG` to an ignored signal, then `F_SETLEASE(F_RDLCK)`.
fn take_lease(fd: RawFd) -> Result<(), MapRefused> {
    let signal = libc::SIGRTMIN() + LEASE_SIGNAL_OFFSET;
    ignore_lease_signal(signal).map_err(sys("sigaction(lease signal)"))?;
    // SAFETY: fcntl on a descriptor this process owns; F_SETSIG takes an int and touches
    // no memory.
    let res = unsafe { libc::fcntl(fd, F_SETSIG, signal) };
    Errno::result(res).map_err(sys("fcntl(F_SETSIG)"))?;
    set_lease(fd, libc::F_RDLCK).map_err(sys("fcntl(F_SETLEASE)"))
}

fn set_lease(fd: RawFd, kind: libc::c_int) -> Result<(), Errno> {
    // SAFETY: fcntl on a descriptor this process owns; F_SETLEASE takes an int and touches
    // no memory.
    let res = unsafe { libc::fcntl(fd, libc::F_SETLEASE, kind) };
    Errno::result(res).map(drop)
}

fn lease_of(fd: RawFd) -> Result<libc::c_int, Errno> {
    // SAFETY: fcntl on a descriptor this process owns; F_GETLEASE touches no memory.
    let res = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
    Errno::result(res)
}

/// The lease-break signal is ignored where nobody handles it (its default would kill).
fn ignore_lease_signal(signal: libc::c_int) -> Result<(), Errno> {
    static DONE: OnceLock<Result<(), Errno>> = OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid argument to be filled in; reading the
        // current disposition changes nothing.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `old` is valid for writes; a null new action only reads the disposition.
        let res = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
        Errno::result(res)?;
        if old.sa_sigaction != libc::SIG_DFL {
            return Ok(());
        }
        // SAFETY: a zeroed sigaction with SIG_IGN and an empty mask is a valid disposition.
        let mut ign: libc::sigaction = unsafe { std::mem::zeroed() };
        ign.sa_sigaction = libc::SIG_IGN;
        // SAFETY: `ign` is a valid disposition; the signal is a real-time signal nothing
        // else in this process handles (its disposition was the default).
        let res = unsafe { libc::sigaction(signal, &ign, std::ptr::null_mut()) };
        Errno::result(res).map(drop)
    })
}

fn take_slot() -> Option<&'static Slot> {
    GUARDED.iter().find(|s| {
        s.used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })
}

/// Installs the SIGBUS handler once, remembering the disposition it replaces.
fn install_guard() -> Result<(), Errno> {
    let prev = PREVIOUS.get_or_init(|| {
        if let Ok(Some(p)) = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            && let Ok(p) = usize::try_from(p)
        {
            PAGE_SIZE.store(p, Ordering::Relaxed);
        }
        let action = SigAction::new(
            SigHandler::SigAction(on_sigbus),
            SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK | SaFlags::SA_NODEFER,
            SigSet::empty(),
        );
        // SAFETY: `on_sigbus` only reads atomics, calls mmap/sigaction (system calls) and
        // the previous handler: nothing that is unsafe in a signal handler on Linux.
        unsafe { sigaction(Signal::SIGBUS, &action) }
    });
    prev.as_ref().map(drop).map_err(|e| *e)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid, readable siginfo.
    let info_ref = unsafe { &*info };
    // SAFETY: for SIGBUS the kernel fills in `si_addr` (the faulting address).
    let addr = unsafe { info_ref.si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    for s in &GUARDED {
        let (start, end) = (
            s.start.load(Ordering::Acquire),
            s.end.load(Ordering::Acquire),
        );
        if start <= addr && addr < end {
            let at = addr - addr % page;
            // SAFETY: `at..at+page` lies inside a mapping a live MappedFile owns and reads
            // only through `bytes`; a private page of zeros in its place changes what it
            // reads (which `verify` then reports), nothing else.
            let res = unsafe {
                libc::mmap(
                    at as *mut c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if res != libc::MAP_FAILED {
                s.faulted.store(true, Ordering::Release);
                return;
            }
        }
    }
    pass_on(sig, info, ctx);
}

/// A SIGBUS that is not ours: what the process would have done without us.
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    match PREVIOUS.get() {
        Some(Ok(prev)) => match prev.handler() {
            SigHandler::Handler(f) => f(sig),
            SigHandler::SigAction(f) => f(sig, info, ctx),
            SigHandler::SigDfl | SigHandler::SigIgn => restore_default(),
        },
        _ => restore_default(),
    }
}

/// Back to the default disposition: returning re-runs the faulting access, which then
/// kills the process as it would have without the guard.
fn restore_default() {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing the default disposition is always sound.
    let _ = unsafe { sigaction(Signal::SIGBUS, &dfl) };
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stream");
        std::fs::write(&path, bytes).expect("write");
        (dir, path)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| u8::try_from(i % 251).expect("< 251"))
            .collect()
    }

    #[test]
    fn maps_the_file_from_an_offset() {
        let data = pattern(3 * 4096 + 17);
        let (_dir, path) = file_with(&data);
        let file = File::open(&path).expect("open");
        for offset in [0u64, 1, 4095, 4096, 5000] {
            let m = MappedFile::map(&file, offset).expect("map");
            let at = usize::try_from(offset).expect("small");
            assert_eq!(m.bytes(), &data[at..], "offset {offset}");
            assert_eq!(m.verify(), Ok(()));
        }
        assert_eq!(
            MappedFile::map(&file, data.len() as u64).err(),
            Some(MapRefused::Empty {
                offset: data.len() as u64,
                len: data.len() as u64
            })
        );
    }

    #[test]
    fn a_file_open_for_writing_is_not_mapped() {
        let (_dir, path) = file_with(&pattern(8192));
        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        let file = File::open(&path).expect("open");
        match MappedFile::map(&file, 0) {
            Err(MapRefused::Sys { op, source }) => {
                assert_eq!((op, source), ("fcntl(F_SETLEASE)", Errno::EAGAIN));
            }
            other => panic!("mapped a file open for writing: {other:?}"),
        }
    }

    /// Opening the file for writing while it is mapped breaks the lease; `verify` says so,
    /// and the writer proceeds once the mapping is gone.
    #[test]
    fn a_writer_breaks_the_lease_and_verify_tells() {
        let data = pattern(8192);
        let (_dir, path) = file_with(&data);
        let file = File::open(&path).expect("open");
        let m = MappedFile::map(&file, 0).expect("map");
        let blocked = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        let err = blocked.expect_err("a writer waits for the lease");
        assert_eq!(err.raw_os_error(), Some(libc::EWOULDBLOCK));
        let why = m.verify().expect_err("the lease is broken");
        assert!(why.contains("opened it for writing"), "{why}");
        drop(m);
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("the writer gets in once the mapping is gone");
        w.write_all(b"x").expect("write");
    }

    /// A file truncated under the mapping: the pages past its new end read as zeros instead
    /// of killing the process, and `verify` reports it. The lease is dropped first, as the
    /// kernel does after `fs.lease-break-time`.
    #[test]
    fn a_truncated_file_reads_zeros_and_verify_tells() {
        let data = pattern(4 * 4096);
        let (_dir, path) = file_with(&data);
        let file = File::open(&path).expect("open");
        let m = MappedFile::map(&file, 0).expect("map");
        set_lease(m.file.as_raw_fd(), libc::F_UNLCK).expect("unlease");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer")
            .set_len(4096)
            .expect("truncate");
        let bytes = m.bytes();
        assert_eq!(&bytes[..4096], &data[..4096]);
        assert!(bytes[4096..].iter().all(|&b| b == 0));
        let why = m.verify().expect_err("truncated");
        assert!(why.contains("truncated"), "{why}");
        drop(m);
        // The guard slot is free again and a new mapping is clean.
        let file = File::open(&path).expect("open");
        let again = MappedFile::map(&file, 0).expect("map");
        assert_eq!(again.bytes(), &data[..4096]);
        assert_eq!(again.verify(), Ok(()));
    }
}
