//! Writing the `ram` section: START with the block list, PARTs with pages
//! and zero runs, END. Guest RAM is read [`RAM_READ_BATCH`] bytes at a
//! time into one buffer; nothing else grows with the RAM size.

use cpr_migration_file::QemuFile;

use super::{PAGE, PAGE64, RamBlockDesc, RamBlocks, is_zero, validate_blocks};
use crate::consts::*;
use crate::error::{Error, Result};
use crate::stream::{write_full_header, write_part_header, write_section_footer};

/// What [`save_ram_section`] wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct RamSaved {
    /// The block list, as written.
    pub(crate) blocks: Vec<RamBlockDesc>,
    /// PAGE records (pages whose data was written).
    pub(crate) pages: u64,
    /// Zero pages (covered by ZERO runs, no data written).
    pub(crate) zero_pages: u64,
    /// Bytes of the section, START through END's footer.
    pub(crate) bytes: u64,
}

/// Writes records into PART sections, opening one on the first record and
/// closing it once it holds [`RAM_PART_MAX_DATA`] bytes of page data.
struct PartWriter<'f> {
    f: &'f mut QemuFile,
    section_id: u32,
    open: bool,
    data: usize,
    /// Block of the previous record in the open PART (for CONTINUE).
    last: Option<usize>,
    /// A run of zero pages not yet written: (block, offset, pages).
    run: Option<(usize, u64, u64)>,
}

impl PartWriter<'_> {
    fn header(&mut self, block: usize, idstr: &str, offset: u64, flag: u64) {
        if !self.open {
            write_part_header(self.f, QEMU_VM_SECTION_PART, self.section_id);
            self.open = true;
        }
        if self.last == Some(block) {
            self.f.put_u64(offset | flag | RAM_SAVE_FLAG_CONTINUE);
        } else {
            self.f.put_u64(offset | flag);
            self.f.put_counted_string(idstr);
            self.last = Some(block);
        }
    }

    /// Write the pending zero run, if any.
    fn flush_run(&mut self, blocks: &[RamBlockDesc]) {
        if let Some((block, offset, pages)) = self.run.take() {
            let idstr = blocks.get(block).map_or("", |b| b.idstr.as_str());
            self.header(block, idstr, offset, RAM_SAVE_FLAG_ZERO);
            self.f.put_u64(pages);
        }
    }

    fn zero_page(&mut self, blocks: &[RamBlockDesc], block: usize, offset: u64) {
        match &mut self.run {
            Some((b, start, pages)) if *b == block && *start + *pages * PAGE64 == offset => {
                *pages += 1;
            }
            _ => {
                self.flush_run(blocks);
                self.run = Some((block, offset, 1));
            }
        }
    }

    fn page(&mut self, blocks: &[RamBlockDesc], block: usize, offset: u64, data: &[u8]) {
        self.flush_run(blocks);
        let idstr = blocks.get(block).map_or("", |b| b.idstr.as_str());
        self.header(block, idstr, offset, RAM_SAVE_FLAG_PAGE);
        self.f.put_buffer(data);
        self.data += data.len();
        if self.data >= RAM_PART_MAX_DATA {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.open {
            self.f.put_u64(RAM_SAVE_FLAG_EOS);
            write_section_footer(self.f, self.section_id);
            self.open = false;
            self.data = 0;
            self.last = None;
        }
    }
}

/// Write the whole `ram` section of `ram` as section `section_id`.
pub(crate) fn save_ram_section(
    f: &mut QemuFile,
    ram: &dyn RamBlocks,
    section_id: u32,
) -> Result<RamSaved> {
    let blocks = ram.blocks();
    let total = validate_blocks(&blocks)?;
    let start = f.position();
    let io = |source| Error::Io {
        op: "writing the stream",
        source,
    };

    // START: the block list (ram_save_setup).
    write_full_header(
        f,
        QEMU_VM_SECTION_START,
        section_id,
        RAM_IDSTR,
        RAM_INSTANCE_ID,
        RAM_VERSION_ID,
    );
    f.put_u64(total | RAM_SAVE_FLAG_MEM_SIZE);
    for b in &blocks {
        f.put_counted_string(&b.idstr);
        f.put_u64(b.used_length);
        f.put_u8(u8::from(b.ignored));
    }
    f.put_u64(RAM_SAVE_FLAG_EOS);
    write_section_footer(f, section_id);
    f.check().map_err(io)?;

    // PARTs: every page of every block that is not ignored.
    let mut saved = RamSaved::default();
    let mut w = PartWriter {
        f,
        section_id,
        open: false,
        data: 0,
        last: None,
        run: None,
    };
    let mut buf = vec![0u8; RAM_READ_BATCH];
    for (i, b) in blocks.iter().enumerate().filter(|(_, b)| !b.ignored) {
        let mut offset = 0u64;
        while offset < b.used_length {
            let n = usize::try_from(b.used_length - offset).map_or(buf.len(), |l| l.min(buf.len()));
            let batch = buf.get_mut(..n).unwrap_or_default();
            ram.read(i, offset, batch)
                .map_err(|source| Error::RamAccess {
                    op: "read",
                    idstr: b.idstr.clone(),
                    offset,
                    source,
                })?;
            for page in batch.chunks_exact(PAGE) {
                if is_zero(page) {
                    w.zero_page(&blocks, i, offset);
                    saved.zero_pages += 1;
                } else {
                    w.page(&blocks, i, offset, page);
                    saved.pages += 1;
                }
                offset += PAGE64;
            }
            w.f.check().map_err(io)?;
        }
        w.flush_run(&blocks);
    }
    w.close();
    let f = w.f;

    // END (ram_save_complete): nothing left to send.
    write_part_header(f, QEMU_VM_SECTION_END, section_id);
    f.put_u64(RAM_SAVE_FLAG_EOS);
    write_section_footer(f, section_id);
    f.check().map_err(io)?;
    saved.bytes = f.position() - start;
    saved.blocks = blocks;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero run of a block is flushed before a page of another block,
    /// and a run never spans two blocks.
    #[test]
    fn runs_do_not_cross_blocks() {
        let blocks = [
            RamBlockDesc::copied("a", 8192),
            RamBlockDesc::copied("b", 8192),
        ];
        let mut f = QemuFile::memory_writer("t");
        let mut w = PartWriter {
            f: &mut f,
            section_id: 7,
            open: false,
            data: 0,
            last: None,
            run: None,
        };
        w.zero_page(&blocks, 0, 0);
        w.zero_page(&blocks, 0, 4096);
        w.zero_page(&blocks, 1, 0);
        w.flush_run(&blocks);
        w.close();
        let bytes = f.into_bytes().expect("memory");
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x02, 0, 0, 0, 7,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 2,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'b', 0, 0, 0, 0, 0, 0, 0, 1,
            0, 0, 0, 0, 0, 0, 0, 0x10,
            0x7e, 0, 0, 0, 7,
        ];
        assert_eq!(bytes, expected);
    }
}
