//! The `ram` section: guest RAM pages in the stream, as mainline QEMU's
//! `cpr-reboot` mode copies them into the file (migration/ram.c), with
//! bounded memory on both sides.
//!
//! The VMM exposes its RAM through [`RamBlocks`]; this crate never touches
//! guest memory itself (no vm-memory, no KVM).
//!
//! # Wire format
//!
//! As QEMU 10 writes it (migration/ram.c, without multifd, mapped-ram or
//! postcopy). All integers big-endian; "str" is a counted string. A RAM
//! record starts with a be64 word: a page-aligned offset in the block ORed
//! with flags in the low 12 bits ([`RAM_SAVE_FLAG_MASK`]). The `ram`
//! section comes right after the configuration section
//! ([`QEMU_VM_CONFIGURATION`](crate::consts::QEMU_VM_CONFIGURATION), which
//! announces `x-ignore-shared` when [`RamBlocks::ignore_shared`]), before
//! the FULL device sections:
//!
//! ```text
//! START  0x01 | be32 sid | str "ram" | be32 0 | be32 4
//!          be64 total | 0x04 (MEM_SIZE)     total = sum of used_length
//!          per block: str idstr | be64 used_length [| be64 0, with x-ignore-shared]
//!          be64 0x10 (EOS)
//!        0x7e | be32 sid
//! PART   0x02 | be32 sid                      (about 1 MiB of records each)
//!          records ...
//!          be64 0x10 (EOS)
//!        0x7e | be32 sid
//! END    0x03 | be32 sid | be64 0x10 (EOS) | 0x7e | be32 sid
//!
//! record: be64 offset | 0x08 (PAGE) [| 0x20 CONTINUE] [str idstr] | 4096 bytes
//!         be64 offset | 0x02 (ZERO) [| 0x20 CONTINUE] [str idstr] | u8 0
//! ```
//!
//! The idstr follows unless CONTINUE says "same block as the previous
//! record of this section", exactly as QEMU. `sid` is the registry's next
//! free section id (QEMU registers `ram` first, so its id is lower there).
//! With `x-ignore-shared`, the be64 after a block's length is its memory
//! region's address, [`RAM_BLOCK_ADDR`](crate::consts::RAM_BLOCK_ADDR): 0,
//! what QEMU sends for `pc.ram`.
//!
//! QEMU's `scripts/analyze-migration.py` reads these sections (`-d state`)
//! and extracts each block's pages into a file of the block's length
//! (`-x`): pages without a record read as zeros there, as they do after a
//! load.
//!
//! # Choices within QEMU's format
//!
//! * **Blocks kept in place.** Which blocks stay in place is not in QEMU's
//!   block list (each side decides from its own blocks); the source records
//!   it in the vmdesc's `"ram"` entry, and a destination that disagrees
//!   about a block refuses the stream ([`Error::RamIgnoredMismatch`]),
//!   instead of silently loading a block it expected to share or keeping
//!   stale memory it expected to receive. A block kept in place carries no
//!   page.
//! * **Untouched pages cost nothing.** A page that reads as zero is one ZERO
//!   record, as in QEMU; pages the VMM knows were never populated
//!   ([`RamBlocks::populated`]) are not written at all, so 16 GiB of sparse
//!   RAM costs a few bytes. The loader zeroes every page of a copied block
//!   that no record covers.
//! * **Strict order.** Within each block, records come in offset order,
//!   each page at most once (QEMU accepts any order). CONTINUE never
//!   crosses a section boundary. An EOS record is the bare flag (QEMU
//!   ignores the rest of the word). A ZERO record's fill byte is 0 (as QEMU
//!   10 requires).
//! * **Two-pass load.** See [`load_state`]: a corrupt
//!   file never changes guest RAM.

use crate::consts::{RAM_SAVE_FLAG_MASK, TARGET_PAGE_SIZE};
use crate::error::{BoxError, Error, Result};

mod load;
mod save;
mod two_pass;

pub(crate) use load::RamLoader;
pub use load::RamSummary;
pub(crate) use save::save_ram_section;
pub use two_pass::load_state;

/// One RAM block as the VMM describes it (QEMU's `RAMBlock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlockDesc {
    /// The block's idstr (e.g. `pc.ram`); 1 to 255 bytes.
    pub idstr: String,
    /// Bytes in use; a non-zero multiple of
    /// [`TARGET_PAGE_SIZE`]. Records
    /// address the block in 4096-byte target pages, whatever its host
    /// page size.
    pub used_length: u64,
    /// Whether the block is shared and kept in place (`x-ignore-shared`):
    /// its pages are neither saved nor loaded, only its presence and length
    /// are checked. Only with [`RamBlocks::ignore_shared`].
    pub ignored: bool,
}

impl RamBlockDesc {
    /// A block whose pages are copied into the stream.
    pub fn copied(idstr: impl Into<String>, used_length: u64) -> Self {
        RamBlockDesc {
            idstr: idstr.into(),
            used_length,
            ignored: false,
        }
    }

    /// A shared block kept in place (no pages in the stream).
    pub fn ignored(idstr: impl Into<String>, used_length: u64) -> Self {
        RamBlockDesc {
            idstr: idstr.into(),
            used_length,
            ignored: true,
        }
    }
}

/// Guest RAM as the VMM exposes it to the saver and the loader. `block` is
/// an index into [`blocks`](Self::blocks), which must not change while a
/// save or load runs; offsets and lengths are page-aligned and in range.
///
/// ```
/// use cpr_savevm::*;
/// use cpr_migration_file::QemuFile;
///
/// /// One block in a `Vec` (a VMM maps guest memory instead).
/// struct Ram { desc: RamBlockDesc, mem: Vec<u8> }
///
/// impl RamBlocks for Ram {
///     fn blocks(&self) -> Vec<RamBlockDesc> { vec![self.desc.clone()] }
///     fn ignore_shared(&self) -> bool { false }
///     fn populated(&self, _b: usize) -> Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
///         Ok(None)
///     }
///     fn read(&self, _b: usize, off: u64, buf: &mut [u8]) -> Result<(), BoxError> {
///         let off = usize::try_from(off)?;
///         buf.copy_from_slice(&self.mem[off..off + buf.len()]);
///         Ok(())
///     }
///     fn write(&mut self, _b: usize, off: u64, data: &[u8]) -> Result<(), BoxError> {
///         let off = usize::try_from(off)?;
///         self.mem[off..off + data.len()].copy_from_slice(data);
///         Ok(())
///     }
///     fn zero(&mut self, _b: usize, off: u64, len: u64) -> Result<(), BoxError> {
///         let (off, len) = (usize::try_from(off)?, usize::try_from(len)?);
///         self.mem[off..off + len].fill(0);
///         Ok(())
///     }
/// }
/// # type Result<T, E> = std::result::Result<T, E>;
///
/// let desc = RamBlockDesc::copied("pc.ram", 1 << 20);
/// let mut src = Ram { desc: desc.clone(), mem: vec![0; 1 << 20] };
/// src.mem[4096..8192].fill(0xab);
/// let mut registry = Registry::new();
///
/// let mut f = QemuFile::memory_writer("cpr-save");
/// let stats = save_state(&mut f, &mut registry, Some(&src))?;
/// assert_eq!((stats.ram_pages, stats.ram_zero_pages), (1, 255)); // 255 ZERO records
/// let bytes = f.into_bytes().expect("memory file");
///
/// let mut dst = Ram { desc, mem: vec![0xff; 1 << 20] };
/// let open = || Ok(QemuFile::from_bytes(bytes.clone(), "cpr-load"));
/// let loaded = load_state(open, &registry, Some(&mut dst))?;  // RAM written
/// assert_eq!(dst.mem, src.mem);
/// loaded.apply(&mut registry)?;                               // devices
/// # Ok::<(), cpr_savevm::Error>(())
/// ```
pub trait RamBlocks {
    /// The blocks, in the order they are saved.
    fn blocks(&self) -> Vec<RamBlockDesc>;
    /// The `x-ignore-shared` capability: announced by the configuration
    /// section when saving, and compared with the stream's when loading
    /// ([`Error::CapabilityMismatch`]). A block may be
    /// [`ignored`](RamBlockDesc::ignored) only with it on.
    fn ignore_shared(&self) -> bool;
    /// Copy `buf.len()` bytes at `offset` of `block` into `buf` (`&self`,
    /// so a paused guest's RAM can be read while the VMM holds other
    /// references).
    fn read(&self, block: usize, offset: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError>;
    /// Store `data` at `offset` of `block`.
    fn write(
        &mut self,
        block: usize,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<(), BoxError>;
    /// Make `len` bytes at `offset` of `block` read as zeros (the VMM may
    /// `madvise(MADV_DONTNEED)` or `memset`).
    fn zero(&mut self, block: usize, offset: u64, len: u64) -> std::result::Result<(), BoxError>;
    /// The byte ranges of `block` that may hold data, if the VMM knows (an anonymous
    /// mapping's present or swapped pages, a sparse file's data extents); `None` to have
    /// every page read. Pages outside the ranges are saved as zeros without being read, so
    /// saving a mostly-empty 16 GiB guest costs what its data costs. Getting this wrong
    /// loses data: a range must not be left out unless it reads as zeros.
    fn populated(
        &self,
        block: usize,
    ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError>;
    /// Before a load writes pages (its second pass, once the stream is checked): the
    /// byte ranges of `block` the stream carries page data for, in order, merged across
    /// gaps of less than [`WILL_WRITE_GAP`]. A VMM may get that memory ready ahead of the
    /// copies (allocate it on another thread, so the copies take no page faults). A hint
    /// about what follows, not a write: the default does nothing.
    fn will_write(
        &mut self,
        block: usize,
        ranges: &[std::ops::Range<u64>],
    ) -> std::result::Result<(), BoxError> {
        let _ = (block, ranges);
        Ok(())
    }
    /// After a load's last page: anything [`write`](Self::write) or
    /// [`zero`](Self::zero) kept back (to batch it) must reach guest RAM now. The
    /// default has nothing kept back.
    fn finish_writes(&mut self) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

/// Gap under which [`RamBlocks::will_write`] ranges are merged: a huge page (2 MiB), which
/// a VMM allocating ahead would allocate whole anyway.
pub const WILL_WRITE_GAP: u64 = 2 << 20;

/// Check a block list from [`RamBlocks::blocks`]: names 1..=255 bytes and
/// unique, lengths non-zero page multiples, total without overflow, blocks
/// kept in place only with `ignore_shared`. Returns the total length.
pub(crate) fn validate_blocks(blocks: &[RamBlockDesc], ignore_shared: bool) -> Result<u64> {
    let invalid = |b: &RamBlockDesc, reason| Error::InvalidRamBlock {
        idstr: b.idstr.clone(),
        reason,
    };
    let mut total = 0u64;
    for (i, b) in blocks.iter().enumerate() {
        if b.idstr.is_empty() || b.idstr.len() > 255 {
            return Err(invalid(b, "the idstr must be 1 to 255 bytes long"));
        }
        if b.used_length == 0 || b.used_length & RAM_SAVE_FLAG_MASK != 0 {
            return Err(invalid(
                b,
                "used_length must be a non-zero multiple of the 4096-byte target page",
            ));
        }
        if b.ignored && !ignore_shared {
            return Err(invalid(
                b,
                "a block is kept in place only with x-ignore-shared",
            ));
        }
        if blocks.iter().take(i).any(|o| o.idstr == b.idstr) {
            return Err(invalid(b, "the idstr is used by two blocks"));
        }
        total = total
            .checked_add(b.used_length)
            .ok_or_else(|| invalid(b, "the blocks' total length overflows 64 bits"))?;
    }
    Ok(total)
}

/// Whether `buf` is all zero bytes: OR-folds 256-byte chunks (which the
/// compiler vectorizes) and stops at the first non-zero chunk.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(256);
    for c in &mut chunks {
        if c.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// One target page, as a `usize`.
pub(crate) const PAGE: usize = TARGET_PAGE_SIZE as usize;
/// One target page, as a `u64`.
pub(crate) const PAGE64: u64 = TARGET_PAGE_SIZE as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_finds_any_set_byte() {
        let mut page = vec![0u8; PAGE + 7];
        assert!(is_zero(&page));
        for i in [0, 255, 256, 4095, PAGE + 6] {
            page[i] = 0x80;
            assert!(!is_zero(&page), "byte {i}");
            page[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn validate_blocks_refuses_bad_lists() {
        let ok = [
            RamBlockDesc::copied("a", 8192),
            RamBlockDesc::ignored("b", 4096),
        ];
        assert_eq!(validate_blocks(&ok, true).ok(), Some(12288));
        assert!(matches!(
            validate_blocks(&ok, false),
            Err(Error::InvalidRamBlock { .. })
        ));
        for bad in [
            vec![RamBlockDesc::copied("", 4096)],
            vec![RamBlockDesc::copied("x".repeat(256), 4096)],
            vec![RamBlockDesc::copied("a", 0)],
            vec![RamBlockDesc::copied("a", 4097)],
            vec![
                RamBlockDesc::copied("a", 4096),
                RamBlockDesc::copied("a", 4096),
            ],
            vec![
                RamBlockDesc::copied("a", u64::MAX - 4095),
                RamBlockDesc::copied("b", 4096),
            ],
        ] {
            assert!(
                matches!(
                    validate_blocks(&bad, true),
                    Err(Error::InvalidRamBlock { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
