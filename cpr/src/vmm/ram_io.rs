//! Guest RAM as the savevm `ram` section sees it ([`cpr_savevm::RamBlocks`]): block offsets
//! translated through the block's guest windows (`ram-below-4g`, `ram-above-4g`).

use cpr_memory::{GuestRam, MappedBlock};
use cpr_savevm::{BoxError, RamBlockDesc, RamBlocks};
use vm_memory::{Bytes, GuestAddress};

/// Chunk used to compare and clear zero runs.
const ZERO_CHUNK: usize = 64 * 1024;

/// Mainline's rule for which blocks stay in place: with `x-ignore-shared`, a block that is
/// shared and backed by a named file (QEMU's `RAM_NAMED_FILE`, here any fd) sends no pages;
/// everything else is copied.
pub fn stays_in_place(block: &MappedBlock, ignore_shared: bool) -> bool {
    ignore_shared && block.block().shared() && block.block().backing().has_fd()
}

/// [`RamBlocks`] over a [`GuestRam`].
pub struct GuestRamIo<'a> {
    ram: &'a GuestRam,
    ignore_shared: bool,
}

impl<'a> GuestRamIo<'a> {
    /// A view of `ram`; `ignore_shared` is the `x-ignore-shared` capability.
    pub fn new(ram: &'a GuestRam, ignore_shared: bool) -> Self {
        GuestRamIo { ram, ignore_shared }
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
}
