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
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Chunk used to compare and clear zero runs where pages cannot be discarded.
const ZERO_CHUNK: usize = 64 * 1024;

/// Pages written through a block's descriptor are gathered up to this much per `pwrite`.
const STAGING: usize = 256 * 1024;

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

/// One guest window of a block: its bytes `start..end` of the block, mapped at `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    guest: GuestAddress,
}

/// The piece of `pos..pos+left` (block offsets) that starts at `pos`, lies inside one
/// window and is at most `max` long: its guest address and length. `None` if no window
/// holds `pos`. Windows need not be a multiple of any chunk size apart (`pc.ram` changes
/// window at 3 GiB, which a 64 KiB piece starting at 3 GiB - 8 KiB crosses).
fn piece(spans: &[Span], pos: u64, left: u64, max: u64) -> Option<(GuestAddress, u64)> {
    let s = spans.iter().find(|s| s.start <= pos && pos < s.end)?;
    let n = left.min(max).min(s.end - pos);
    Some((GuestAddress(s.guest.0 + (pos - s.start)), n))
}

/// What a load knows about a copied block's old contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Old {
    /// Not looked at yet: discarded before the block's first page is loaded.
    Unknown,
    /// Reads as zeros (fresh, or discarded): zero runs need nothing.
    Zero,
    /// May hold old data that could not be discarded (a private file mapping): zero runs
    /// are read and cleared where not zero.
    Stale,
    /// A shared file (or memfd) that may hold old data: kept until overwritten, pages in
    /// place (written through the descriptor, no allocation), and zero runs punched out.
    Overwrite,
}

/// Whether `b`'s pages are written through its descriptor (`pwrite`) rather than its
/// mapping: a shared regular file or memfd. Writing through a fresh mapping takes a page
/// fault (and on some hosts a costly page-table update) per 4 KiB page; `pwrite` fills
/// the page cache directly and the mapping sees the same pages.
fn writes_through_fd(b: &MappedBlock) -> bool {
    b.block().shared()
        && b.fd().is_some_and(|fd| {
            nix::sys::stat::fstat(fd).is_ok_and(|st| {
                nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                    .contains(nix::sys::stat::SFlag::S_IFREG)
            })
        })
}

/// Pages gathered for one `pwrite` to a block's descriptor: `data` goes at `offset`.
#[derive(Default)]
struct Staged {
    block: usize,
    offset: u64,
    data: Vec<u8>,
}

/// [`RamBlocks`] over a [`GuestRam`].
pub(super) struct GuestRamIo<'a> {
    ram: &'a GuestRam,
    ignore_shared: bool,
    /// Each block's windows, by block offset.
    spans: Vec<Vec<Span>>,
    /// Each block's old contents, for loading.
    old: Vec<Old>,
    /// RAM files to tag `running` before the first write: once pages are copied in, no
    /// checkpoint that left this RAM in place describes it any more.
    retag: Vec<PathBuf>,
    retagged: bool,
    /// Threads allocating RAM ahead of the copies ([`RamBlocks::will_write`]), joined on
    /// drop.
    prefault: Vec<std::thread::JoinHandle<()>>,
    /// Per block: written through its descriptor ([`writes_through_fd`]).
    via_fd: Vec<bool>,
    /// Pages not yet written through a descriptor.
    staged: Staged,
}

impl Drop for GuestRamIo<'_> {
    fn drop(&mut self) {
        for t in self.prefault.drain(..) {
            let _ = t.join();
        }
    }
}

/// `madvise(MADV_POPULATE_WRITE)` over host memory `addr..addr+len`: its pages allocated
/// and mapped writable, contents unchanged. Best effort: a kernel without it (before 5.14)
/// or a failure leaves the copies to fault the pages in themselves.
fn populate_write(addr: usize, len: usize) {
    // SAFETY: MADV_POPULATE_WRITE faults pages in as a write would, without writing: it
    // changes no byte of memory. The range is guest RAM, mapped for as long as the
    // GuestRamIo that spawned this thread (which joins it on drop) borrows the GuestRam;
    // if it were unmapped the call would fail with ENOMEM, touching nothing.
    let res = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if res != 0 {
        log::debug!(
            "MADV_POPULATE_WRITE at {addr:#x}+{len:#x}: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl<'a> GuestRamIo<'a> {
    /// A view of `ram`; `ignore_shared` is the `x-ignore-shared` capability; `pristine`
    /// says the RAM still reads as zeros everywhere (see [`is_fresh`]).
    pub(super) fn new(ram: &'a GuestRam, ignore_shared: bool, pristine: bool) -> Self {
        let spans = ram
            .blocks()
            .iter()
            .map(|b| {
                b.windows()
                    .iter()
                    .map(|w| Span {
                        start: w.offset_in_block(),
                        end: w.offset_in_block() + w.size(),
                        guest: w.guest_addr(),
                    })
                    .collect()
            })
            .collect();
        let old = if pristine { Old::Zero } else { Old::Unknown };
        GuestRamIo {
            ram,
            ignore_shared,
            spans,
            old: vec![old; ram.blocks().len()],
            retag: Vec::new(),
            retagged: false,
            prefault: Vec::new(),
            via_fd: ram.blocks().iter().map(writes_through_fd).collect(),
            staged: Staged::default(),
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

    fn block(&self, block: usize) -> Result<&'a MappedBlock, BoxError> {
        self.ram
            .blocks()
            .get(block)
            .ok_or_else(|| BoxError::from(format!("no RAM block {block}")))
    }

    /// Before the first page of `block` is loaded: tag the RAM files `running`, and make
    /// the block read as zeros by freeing its pages (nothing read, nothing allocated), so
    /// that what the stream does not fill in is zero at no cost. The loader has checked
    /// the whole stream by then, and a copied block's records cover all of it.
    fn before_write(&mut self, block: usize) -> Result<(), BoxError> {
        if !self.retagged {
            super::epoch::tag(&self.retag, super::epoch::RUNNING);
            self.retagged = true;
        }
        if self.old.get(block) != Some(&Old::Unknown) {
            return Ok(());
        }
        let b = self.block(block)?;
        if self.via_fd.get(block) == Some(&true) {
            // Overwritten in place and punched where zero, page by page as the stream says:
            // nothing freed and allocated again.
            if let Some(o) = self.old.get_mut(block) {
                *o = Old::Overwrite;
            }
            return Ok(());
        }
        let old = match b.discard() {
            Ok(Some(how)) => {
                log::debug!(
                    "RAM block {}: old contents discarded ({how:?})",
                    b.block().idstr()
                );
                Old::Zero
            }
            Ok(None) => Old::Stale,
            Err(e) => {
                log::warn!(
                    "{}: zero pages will be written instead",
                    crate::error::chain(&e)
                );
                Old::Stale
            }
        };
        if let Some(o) = self.old.get_mut(block) {
            *o = old;
        }
        Ok(())
    }

    /// Runs `f(guest address, offset in the range, length)` over `offset..offset+len` of
    /// `block`, in pieces of at most `max` bytes that each lie inside one guest window.
    fn each_piece(
        &self,
        block: usize,
        offset: u64,
        len: u64,
        max: u64,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        let spans = self
            .spans
            .get(block)
            .ok_or_else(|| BoxError::from(format!("no RAM block {block}")))?;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let Some((addr, n)) = piece(spans, pos, len - done, max) else {
                return Err(format!(
                    "RAM block {}: offset {pos:#x} is in no guest window",
                    self.block(block)?.block().idstr()
                )
                .into());
            };
            f(addr, usize::try_from(done)?, usize::try_from(n)?)?;
            done += n;
        }
        Ok(())
    }
}

impl GuestRamIo<'_> {
    /// Gathers `data` for `offset` of `block`, to be written with the pages around it by one
    /// `pwrite` ([`Self::flush_staged`]).
    fn stage(&mut self, block: usize, offset: u64, data: &[u8]) -> Result<(), BoxError> {
        let s = &self.staged;
        let follows = s.block == block && s.offset + s.data.len() as u64 == offset;
        if !s.data.is_empty() && (!follows || s.data.len() + data.len() > STAGING) {
            self.flush_staged()?;
        }
        if self.staged.data.is_empty() {
            self.staged.block = block;
            self.staged.offset = offset;
            if self.staged.data.capacity() < STAGING {
                self.staged.data.reserve(STAGING);
            }
        }
        self.staged.data.extend_from_slice(data);
        Ok(())
    }

    /// `pwrite`s the staged pages to their block's descriptor (the block's offsets are its
    /// file's: a block maps its file from offset 0).
    fn flush_staged(&mut self) -> Result<(), BoxError> {
        if self.staged.data.is_empty() {
            return Ok(());
        }
        let (block, offset) = (self.staged.block, self.staged.offset);
        let b = self.block(block)?;
        let fd = b.fd().ok_or_else(|| {
            BoxError::from(format!("RAM block {} has no descriptor", b.block().idstr()))
        })?;
        let mut done = 0;
        while done < self.staged.data.len() {
            let at = i64::try_from(offset + done as u64)?;
            match nix::sys::uio::pwrite(fd, &self.staged.data[done..], at) {
                Ok(0) => return Err("pwrite wrote nothing".into()),
                Ok(n) => done += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(format!(
                        "writing {} bytes at {:#x} of RAM block {}: {e}",
                        self.staged.data.len() - done,
                        offset + done as u64,
                        b.block().idstr()
                    )
                    .into());
                }
            }
        }
        self.staged.data.clear();
        Ok(())
    }

    /// Makes `offset..offset+len` of a descriptor-backed block read as zeros by punching a
    /// hole (nothing read or written; already-empty ranges cost next to nothing).
    fn punch(&mut self, block: usize, offset: u64, len: u64) -> Result<(), BoxError> {
        self.flush_staged()?;
        let b = self.block(block)?;
        let fd = b.fd().ok_or_else(|| {
            BoxError::from(format!("RAM block {} has no descriptor", b.block().idstr()))
        })?;
        let mode = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        nix::fcntl::fallocate(
            fd.as_fd(),
            mode,
            i64::try_from(offset)?,
            i64::try_from(len)?,
        )
        .map_err(|e| {
            BoxError::from(format!(
                "punching {len:#x} bytes at {offset:#x} of RAM block {}: {e}",
                b.block().idstr()
            ))
        })
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
        self.each_piece(block, offset, len, len, |addr, at, n| {
            self.ram
                .memory()
                .read_slice(&mut buf[at..at + n], addr)
                .map_err(|e| BoxError::from(e.to_string()))
        })
    }

    fn write(&mut self, block: usize, offset: u64, data: &[u8]) -> Result<(), BoxError> {
        self.before_write(block)?;
        if self.via_fd.get(block) == Some(&true) {
            return self.stage(block, offset, data);
        }
        let len = data.len() as u64;
        self.each_piece(block, offset, len, len, |addr, at, n| {
            self.ram
                .memory()
                .write_slice(&data[at..at + n], addr)
                .map_err(|e| BoxError::from(e.to_string()))
        })
    }

    /// Nothing to do once the block's old contents were discarded ([`Self::before_write`])
    /// or the RAM is fresh. Otherwise (a private file mapping) only what is not already
    /// zero is cleared.
    fn zero(&mut self, block: usize, offset: u64, len: u64) -> Result<(), BoxError> {
        if self.old.get(block) == Some(&Old::Zero) {
            return Ok(());
        }
        self.before_write(block)?;
        match self.old.get(block) {
            Some(Old::Zero) => return Ok(()),
            Some(Old::Overwrite) => return self.punch(block, offset, len),
            _ => {}
        }
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut buf = vec![0u8; ZERO_CHUNK];
        let mem = self.ram.memory();
        self.each_piece(block, offset, len, ZERO_CHUNK as u64, |addr, _, n| {
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| BoxError::from(e.to_string()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                mem.write_slice(&zeros[..n], addr)
                    .map_err(|e| BoxError::from(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// Allocates the memory the load is about to copy pages into, on a thread of its own
    /// that runs ahead of the copies: a fault per 4 KiB page (or a huge page zeroed and
    /// possibly compacted for, on the copier's time) is slow on some hosts, where one
    /// `MADV_POPULATE_WRITE` per range is not. Only for memory that reads as zeros (fresh,
    /// or just discarded); old contents are discarded first, as for any write.
    fn will_write(&mut self, block: usize, ranges: &[Range<u64>]) -> Result<(), BoxError> {
        self.before_write(block)?;
        if self.old.get(block) != Some(&Old::Zero) || self.via_fd.get(block) == Some(&true) {
            return Ok(());
        }
        let mem = self.ram.memory();
        let mut host = Vec::new();
        for r in ranges {
            self.each_piece(block, r.start, r.end - r.start, u64::MAX, |addr, _, n| {
                let ptr = mem
                    .get_host_address(addr)
                    .map_err(|e| BoxError::from(e.to_string()))?;
                host.push((ptr as usize, n));
                Ok(())
            })?;
        }
        let thread = std::thread::Builder::new()
            .name("ram-prefault".into())
            .spawn(move || {
                for (addr, len) in host {
                    populate_write(addr, len);
                }
            })?;
        self.prefault.push(thread);
        Ok(())
    }

    /// Writes what is staged for a descriptor ([`Self::stage`]).
    fn finish_writes(&mut self) -> Result<(), BoxError> {
        self.flush_staged()
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

/// `PAGEMAP_SCAN` (Linux 6.7, `linux/fs.h`): `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xc060_6610;
/// `PAGE_IS_PRESENT` and `PAGE_IS_SWAPPED`, page categories of `PAGEMAP_SCAN`.
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Regions one `PAGEMAP_SCAN` call returns at most.
const SCAN_REGIONS: usize = 1024;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Appends block offset `off..off+len` to `out`, merged with the last range it touches.
fn push_range(out: &mut Vec<Range<u64>>, off: u64, len: u64) {
    match out.last_mut() {
        Some(r) if r.end == off => r.end += len,
        _ => out.push(off..off + len),
    }
}

/// Block offsets of the pages of `b` that are present or swapped, as merged ranges: asked
/// of the kernel as ranges (`PAGEMAP_SCAN`), or, where it cannot (before Linux 6.7), read
/// entry by entry from `/proc/self/pagemap`.
fn pagemap_ranges(b: &MappedBlock) -> Result<Vec<Range<u64>>, BoxError> {
    let pagemap = File::open("/proc/self/pagemap")?;
    match pagemap_scan(&pagemap, b, SCAN_REGIONS) {
        Ok(ranges) => Ok(ranges),
        Err(e) => {
            log::debug!("PAGEMAP_SCAN: {e}; reading /proc/self/pagemap");
            pagemap_read(&pagemap, b)
        }
    }
}

/// [`pagemap_ranges`] with `PAGEMAP_SCAN`, `per_call` regions at a time: a few calls for
/// the whole block, whatever its size, instead of 8 bytes read and looked at per page.
fn pagemap_scan(
    pagemap: &File,
    b: &MappedBlock,
    per_call: usize,
) -> Result<Vec<Range<u64>>, BoxError> {
    let mut found: Vec<Range<u64>> = Vec::new();
    let mut regions = vec![PageRegion::default(); per_call.max(1)];
    for w in b.windows() {
        let base = w.userspace_addr();
        let end = base + w.size();
        let mut start = base;
        while start < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid `pm_scan_arg` for the duration of the call and
            // `arg.vec` points to `regions`, `arg.vec_len` entries long and alive until
            // the call returns; the kernel writes nothing else. It only reads this
            // process's page tables.
            let n = unsafe {
                nix::libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(pagemap),
                    PAGEMAP_SCAN as _,
                    &mut arg,
                )
            };
            let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
            for r in regions.iter().take(n) {
                let (s, e) = (r.start.max(start), r.end.min(end));
                if s < e {
                    found.push(w.offset_in_block() + (s - base)..w.offset_in_block() + (e - base));
                }
            }
            // The kernel has looked at everything before `walk_end` (`end` unless `regions`
            // filled up). It may have reported regions beyond it too (seen on 6.18 with
            // huge pages): they come again from the next call, and are merged below.
            if arg.walk_end <= start {
                return Err("PAGEMAP_SCAN made no progress".into());
            }
            start = arg.walk_end;
        }
    }
    found.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(found.len());
    for r in found {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// [`pagemap_ranges`] from the pagemap entries, one per page.
fn pagemap_read(pagemap: &File, b: &MappedBlock) -> Result<Vec<Range<u64>>, BoxError> {
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
                    push_range(&mut out, off, PAGE);
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

#[cfg(test)]
mod tests {
    use cpr_memory::{OpenMode, RamBlock, RamBlockList, pc_ram_windows};

    use super::*;

    const GIB: u64 = 1 << 30;

    /// `pc.ram` of `size` at QEMU's x86 layout, anonymous or in a private file `path`.
    fn pc_ram(size: u64, file: Option<&std::path::Path>) -> GuestRam {
        let b = RamBlock::builder("pc.ram", size).windows(pc_ram_windows(size));
        let b = match file {
            Some(p) => b.file(p).shared(false),
            None => b,
        };
        let blocks = RamBlockList::from_blocks([b.build().expect("block")]).expect("list");
        GuestRam::map(&blocks, OpenMode::OpenOrCreate).expect("map")
    }

    /// `pc.ram` of `size` in a shared file at `path`, every byte 0x5a.
    fn shared_file_full_of_0x5a(path: &std::path::Path, size: u64) -> GuestRam {
        let block = RamBlock::builder("pc.ram", size)
            .file(path)
            .shared(true)
            .build()
            .expect("block");
        let blocks = RamBlockList::from_blocks([block]).expect("list");
        let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).expect("map");
        let full = vec![0x5a; usize::try_from(size).expect("size")];
        ram.memory()
            .write_slice(&full, GuestAddress(0))
            .expect("fill");
        ram
    }

    #[test]
    fn pieces_stop_at_the_3_gib_window_boundary() {
        let spans = [
            Span {
                start: 0,
                end: 3 * GIB,
                guest: GuestAddress(0),
            },
            Span {
                start: 3 * GIB,
                end: 5 * GIB,
                guest: GuestAddress(4 * GIB),
            },
        ];
        // The failing zero run of the issue: 64 KiB from 8 KiB below the boundary.
        assert_eq!(
            piece(&spans, 0xbfff_e000, 0x10000, 0x10000),
            Some((GuestAddress(0xbfff_e000), 0x2000))
        );
        assert_eq!(
            piece(&spans, 3 * GIB, 0xe000, 0x10000),
            Some((GuestAddress(4 * GIB), 0xe000))
        );
        // Within a window: the smaller of what is left and the chunk.
        assert_eq!(
            piece(&spans, 4096, 1 << 20, 0x10000),
            Some((GuestAddress(4096), 0x10000))
        );
        assert_eq!(
            piece(&spans, 3 * GIB + 4096, 8192, 0x10000),
            Some((GuestAddress(4 * GIB + 4096), 8192))
        );
        // The last byte of a window, and past the block.
        assert_eq!(
            piece(&spans, 3 * GIB - 1, 2, 2),
            Some((GuestAddress(3 * GIB - 1), 1))
        );
        assert_eq!(piece(&spans, 5 * GIB, 4096, 4096), None);
    }

    /// A 5 GiB guest (mapped, never touched beyond a few pages): writes and zero runs that
    /// straddle the 3 GiB boundary land on both sides of the MMIO hole.
    #[test]
    fn ranges_across_the_window_boundary_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pc.ram");
        // A private file mapping: its old contents cannot be discarded, so zero runs are
        // read and cleared piece by piece.
        for file in [None, Some(path.as_path())] {
            let ram = pc_ram(5 * GIB, file);
            let mem = ram.memory();
            let at = 3 * GIB - 0x2000;
            mem.write_slice(&[0xee; 0x2000], GuestAddress(at))
                .expect("below");
            mem.write_slice(&[0xee; 0x20000], GuestAddress(4 * GIB))
                .expect("above");
            let mut io = GuestRamIo::new(&ram, false, false);
            io.write(0, at, &[0xab; 0x10000]).expect("write across");
            let mut back = vec![0; 0x10000];
            io.read(0, at, &mut back).expect("read across");
            assert!(back.iter().all(|&b| b == 0xab));
            let mut below = [0u8; 0x2000];
            mem.read_slice(&mut below, GuestAddress(at)).expect("below");
            assert!(below.iter().all(|&b| b == 0xab));
            io.zero(0, at + 0x10000, 0x10000).expect("zero across");
            let mut above = vec![0u8; 0x20000];
            mem.read_slice(&mut above, GuestAddress(4 * GIB))
                .expect("above");
            assert!(above[..0xe000].iter().all(|&b| b == 0xab), "{file:?}");
            assert!(above[0xe000..0x1e000].iter().all(|&b| b == 0), "{file:?}");
            // Anonymous RAM was discarded before the first write: the rest reads zeros;
            // a private file keeps what the zero runs did not cover.
            let tail = if file.is_some() { 0xee } else { 0 };
            assert!(above[0x1e000..].iter().all(|&b| b == tail), "{file:?}");
        }
    }

    /// A shared file's pages are written through its descriptor, overwriting old data in
    /// place, batched until finish_writes; zero runs are punched out. The mapping (what the
    /// guest sees) reads exactly the stream's pages and zeros.
    #[test]
    fn shared_files_are_overwritten_in_place_and_punched() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pc.ram");
        let size: u64 = 8 << 20;
        let ram = shared_file_full_of_0x5a(&path, size);
        let n = usize::try_from(size).expect("size");
        let mut io = GuestRamIo::new(&ram, false, false);
        assert_eq!(io.via_fd, vec![true]);
        // Pages 1-2 (one pwrite), a zero run over 3..10, page 10, then the tail.
        io.zero(0, 0, 4096).expect("zero");
        io.write(0, 4096, &[1; 4096]).expect("page 1");
        io.write(0, 8192, &[2; 4096]).expect("page 2");
        io.zero(0, 3 * 4096, 7 * 4096).expect("zero run");
        io.write(0, 10 * 4096, &[3; 4096]).expect("page 10");
        // Held back until the next zero run or the end of the load.
        let mut page = [0u8; 4096];
        ram.memory()
            .read_slice(&mut page, GuestAddress(10 * 4096))
            .expect("read");
        assert_eq!(page, [0x5a; 4096], "page 10 is not written yet");
        io.write(0, 11 * 4096, &[4; 4096]).expect("page 11");
        io.finish_writes().expect("finish");
        io.zero(0, 12 * 4096, size - 12 * 4096).expect("tail");
        drop(io);
        let mut back = vec![0xff; n];
        ram.memory()
            .read_slice(&mut back, GuestAddress(0))
            .expect("read");
        let expect = |at: usize| match at / 4096 {
            1 => 1,
            2 => 2,
            10 => 3,
            11 => 4,
            _ => 0,
        };
        assert!(back.iter().enumerate().all(|(i, &b)| b == expect(i)));
        let allocated = std::fs::metadata(&path).expect("meta").blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes still allocated");
    }

    /// The pages a private anonymous block holds, by `PAGEMAP_SCAN` and by reading the
    /// pagemap: the same ranges, holding every page written (and, with transparent huge
    /// pages, the rest of their huge page), across the 3 GiB window boundary too.
    #[test]
    fn pagemap_scan_finds_the_pages_written() {
        let ram = pc_ram(5 * GIB, None);
        let mem = ram.memory();
        let b = &ram.blocks()[0];
        let pagemap = File::open("/proc/self/pagemap").expect("pagemap");
        // Scattered pages 5 MiB apart (in distinct huge pages too), a run, and a run
        // across the boundary (block offsets 3 GiB - 8 KiB .. 3 GiB + 8 KiB).
        let mut written: Vec<u64> = (0..1000u64).map(|p| p * (5 << 20)).collect();
        written.extend((0..256).map(|p| GIB + p * PAGE));
        written.extend((0..4).map(|p| 3 * GIB - 0x2000 + p * PAGE));
        for &off in &written {
            let addr = if off < 3 * GIB { off } else { off + GIB };
            mem.write_slice(&[1], GuestAddress(addr + 100))
                .expect("page");
        }
        let read = pagemap_read(&pagemap, b).expect("read");
        let holds = |ranges: &[Range<u64>], off: u64| ranges.iter().any(|r| r.contains(&off));
        let missed: Vec<_> = written.iter().filter(|&&o| !holds(&read, o)).collect();
        assert!(missed.is_empty(), "pages missed: {missed:x?}");
        assert!(read.len() > 900, "{} ranges", read.len());
        assert!(holds(&read, 3 * GIB) && holds(&read, 3 * GIB - PAGE));
        // A full region buffer, many times per window, and one call for everything.
        for per_call in [7, SCAN_REGIONS] {
            match pagemap_scan(&pagemap, b, per_call) {
                Ok(scanned) => assert!(scanned == read, "scan ({per_call}) and read differ"),
                Err(e) => eprintln!("PAGEMAP_SCAN unavailable here ({e}): only the read checked"),
            }
        }
        assert!(pagemap_ranges(b).expect("ranges") == read);
    }

    /// Loading into RAM that held data leaves no old byte behind, wherever the stream's
    /// zero runs fall, and frees the pages instead of writing them.
    #[test]
    fn loading_frees_the_old_contents_of_shared_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pc.ram");
        let size = 64 << 20;
        let ram = shared_file_full_of_0x5a(&path, size);
        let full = vec![0x5a; usize::try_from(size).expect("size")];
        let mut io = GuestRamIo::new(&ram, false, false);
        io.zero(0, 0, 4096).expect("zero run");
        io.write(0, 4096, &[1; 4096]).expect("page");
        io.zero(0, 8192, size - 8192).expect("zero run");
        let mut back = vec![0xff; full.len()];
        ram.memory()
            .read_slice(&mut back, GuestAddress(0))
            .expect("read");
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..8192].iter().all(|&b| b == 1));
        assert!(back[8192..].iter().all(|&b| b == 0));
        let allocated = std::fs::metadata(&path).expect("meta").blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes still allocated");
    }
}
