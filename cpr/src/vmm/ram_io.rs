//! Guest RAM as the savevm `ram` section sees it ([`cpr_savevm::RamBlocks`]): block offsets
//! translated through the block's guest windows (`ram-below-4g`, `ram-above-4g`).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use cpr_memory::{Backing, GuestRam, MappedBlock, Origin};
use cpr_savevm::{BoxError, RamBlockDesc, RamBlocks};
use nix::unistd::{Whence, lseek};
use vm_memory::{Bytes, GuestAddress};

/// Chunk used to compare and clear zero runs.
const ZERO_CHUNK: usize = 64 * 1024;

/// Mainline's rule for which blocks stay in place: with `x-ignore-shared`, a block that is
/// shared and backed by a named file (QEMU's `RAM_NAMED_FILE`) sends no pages; everything
/// else is copied, memfd RAM included (it has no name to be found by after the process).
pub(super) fn stays_in_place(block: &MappedBlock, ignore_shared: bool) -> bool {
    ignore_shared
        && block.block().shared()
        && matches!(block.block().backing(), Backing::File { .. })
}

/// Whether every block of `ram` still reads as zeros because nothing wrote it since it
/// was mapped (fresh anonymous memory or a file created just now).
pub(super) fn is_fresh(ram: &GuestRam) -> bool {
    ram.blocks()
        .iter()
        .all(|b| matches!(b.origin(), Origin::Anonymous | Origin::Created))
}

/// [`RamBlocks`] over a [`GuestRam`].
pub(super) struct GuestRamIo<'a> {
    ram: &'a GuestRam,
    ignore_shared: bool,
    /// RAM nobody has written since it was mapped: zero runs need no clearing.
    pristine: bool,
    /// RAM files to tag `running` before the first write: once pages are copied in, no
    /// checkpoint that left this RAM in place describes it any more.
    retag: Vec<PathBuf>,
    retagged: bool,
}

impl<'a> GuestRamIo<'a> {
    /// A view of `ram`; `ignore_shared` is the `x-ignore-shared` capability; `pristine`
    /// says the RAM still reads as zeros everywhere (see [`is_fresh`]).
    pub(super) fn new(ram: &'a GuestRam, ignore_shared: bool, pristine: bool) -> Self {
        GuestRamIo {
            ram,
            ignore_shared,
            pristine,
            retag: Vec::new(),
            retagged: false,
        }
    }

    /// Tag `files` `running` before the first page is written (loading).
    pub(super) fn retag_on_write(mut self, files: Vec<PathBuf>) -> Self {
        self.retag = files;
        self
    }

    /// Whether the RAM files were tagged `running` because RAM was written.
    pub(super) fn retagged(&self) -> bool {
        self.retagged
    }

    fn before_write(&mut self) {
        if !self.retagged {
            super::epoch::tag(&self.retag, super::epoch::RUNNING);
            self.retagged = true;
        }
    }

    /// Guest address of `offset..offset+len` in `block`; the range must lie in one window.
    fn guest_addr(&self, block: usize, offset: u64, len: u64) -> Result<GuestAddress, BoxError> {
        let b = self
            .ram
            .blocks()
            .get(block)
            .ok_or_else(|| BoxError::from(format!("no RAM block {block}")))?;
        for w in b.windows() {
            let start = w.offset_in_block();
            if offset >= start && offset + len <= start + w.size() {
                return Ok(GuestAddress(w.guest_addr().0 + (offset - start)));
            }
        }
        Err(format!(
            "RAM block {}: {offset:#x}+{len:#x} is not inside one guest window",
            b.block().idstr()
        )
        .into())
    }

    /// Runs `f` over `offset..offset+len` of `block`, split at window boundaries.
    fn each_piece(
        &self,
        block: usize,
        offset: u64,
        len: u64,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        let mut done = 0u64;
        while done < len {
            let piece = (len - done).min(ZERO_CHUNK as u64);
            // A piece never crosses a window: windows are page-aligned and so is `piece`.
            let addr = self.guest_addr(block, offset + done, piece)?;
            let at = usize::try_from(done).map_err(|e| BoxError::from(e.to_string()))?;
            let n = usize::try_from(piece).map_err(|e| BoxError::from(e.to_string()))?;
            f(addr, at, n)?;
            done += piece;
        }
        Ok(())
    }
}

impl RamBlocks for GuestRamIo<'_> {
    fn ignore_shared(&self) -> bool {
        self.ignore_shared
    }

    fn blocks(&self) -> Vec<RamBlockDesc> {
        self.ram
            .blocks()
            .iter()
            .map(|b| {
                let idstr = b.block().idstr().to_string();
                if stays_in_place(b, self.ignore_shared) {
                    RamBlockDesc::ignored(idstr, b.block().size())
                } else {
                    RamBlockDesc::copied(idstr, b.block().size())
                }
            })
            .collect()
    }

    fn read(&self, block: usize, offset: u64, buf: &mut [u8]) -> Result<(), BoxError> {
        let len = buf.len() as u64;
        self.each_piece(block, offset, len, |addr, at, n| {
            self.ram
                .memory()
                .read_slice(&mut buf[at..at + n], addr)
                .map_err(|e| BoxError::from(e.to_string()))
        })
    }

    fn write(&mut self, block: usize, offset: u64, data: &[u8]) -> Result<(), BoxError> {
        self.before_write();
        self.each_piece(block, offset, data.len() as u64, |addr, at, n| {
            self.ram
                .memory()
                .write_slice(&data[at..at + n], addr)
                .map_err(|e| BoxError::from(e.to_string()))
        })
    }

    /// Clears only what is not already zero: fresh RAM (anonymous, or a new sparse file)
    /// is read through the zero page and never written, so a mostly-empty guest costs a
    /// read of its RAM, not a write of it.
    fn zero(&mut self, block: usize, offset: u64, len: u64) -> Result<(), BoxError> {
        if self.pristine {
            return Ok(());
        }
        self.before_write();
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut buf = vec![0u8; ZERO_CHUNK];
        let mem = self.ram.memory();
        self.each_piece(block, offset, len, |addr, _, n| {
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| BoxError::from(e.to_string()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                mem.write_slice(&zeros[..n], addr)
                    .map_err(|e| BoxError::from(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// Which parts of a block may hold data, without touching its pages:
    /// * a private anonymous block: the pages present in (or swapped out of) this
    ///   process's page tables (`/proc/self/pagemap`); anything else was never written;
    /// * a shared file: the file's data extents (`SEEK_DATA`/`SEEK_HOLE`);
    /// * anything else (a private file mapping, whose copied-on-write pages are in
    ///   neither place; shared anonymous memory): unknown, every page is read.
    fn populated(&self, block: usize) -> Result<Option<Vec<Range<u64>>>, BoxError> {
        let b = self
            .ram
            .blocks()
            .get(block)
            .ok_or_else(|| BoxError::from(format!("no RAM block {block}")))?;
        let shared = b.block().shared();
        match (b.block().backing(), shared) {
            (Backing::Anonymous, false) => pagemap_ranges(b).map(Some),
            (_, true) if b.block().backing().has_fd() => match b.fd() {
                Some(fd) => Ok(Some(data_extents(fd, b.block().size())?)),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

/// pagemap bits: page present, page swapped.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PAGE: u64 = 4096;

/// Block offsets of the pages of `b` that are present or swapped, as merged ranges.
fn pagemap_ranges(b: &MappedBlock) -> Result<Vec<Range<u64>>, BoxError> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut entries = vec![0u8; 8 * 8192];
    for w in b.windows() {
        let pages = w.size() / PAGE;
        let first = w.userspace_addr() / PAGE;
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(8192);
            let buf = &mut entries[..usize::try_from(n * 8)?];
            pagemap.read_exact_at(buf, (first + done) * 8)?;
            for (k, e) in buf.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(e.try_into()?);
                if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                    let off = w.offset_in_block() + (done + k as u64) * PAGE;
                    match out.last_mut() {
                        Some(r) if r.end == off => r.end += PAGE,
                        _ => out.push(off..off + PAGE),
                    }
                }
            }
            done += n;
        }
    }
    Ok(out)
}

/// The data extents of a file of `len` bytes (holes read as zeros).
fn data_extents(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> Result<Vec<Range<u64>>, BoxError> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let off = |v: u64| i64::try_from(v).map_err(|e| BoxError::from(e.to_string()));
    while pos < len {
        let start = match lseek(fd.as_fd(), off(pos)?, Whence::SeekData) {
            Ok(s) => u64::try_from(s)?,
            Err(nix::errno::Errno::ENXIO) => break, // no data after pos
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match lseek(fd.as_fd(), off(start)?, Whence::SeekHole) {
            Ok(e) => u64::try_from(e)?.min(len),
            Err(e) => return Err(e.into()),
        };
        out.push(start..end);
        pos = end;
    }
    Ok(out)
}
