//! Writing the `ram` section: START with the block list, PARTs with pages
//! and zero pages, END. Guest RAM is read [`RAM_READ_BATCH`] bytes at a
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
    /// Zero pages: ZERO records, and never-populated pages left out.
    pub(crate) zero_pages: u64,
    /// Bytes of the section, START through END's footer.
    pub(crate) bytes: u64,
}

/// Writes records into PART sections, opening one on the first record and
/// closing it once it holds [`RAM_PART_MAX_DATA`] bytes of records.
struct PartWriter<'f> {
    f: &'f mut QemuFile,
    section_id: u32,
    open: bool,
    data: usize,
    /// Block of the previous record in the open PART (for CONTINUE).
    last: Option<usize>,
}

impl PartWriter<'_> {
    /// A record's word and, unless CONTINUE, its block's idstr
    /// (`save_page_header`); returns the bytes written.
    fn header(&mut self, block: usize, idstr: &str, offset: u64, flag: u64) -> usize {
        if !self.open {
            write_part_header(self.f, QEMU_VM_SECTION_PART, self.section_id);
            self.open = true;
        }
        if self.last == Some(block) {
            self.f.put_u64(offset | flag | RAM_SAVE_FLAG_CONTINUE);
            8
        } else {
            self.f.put_u64(offset | flag);
            self.f.put_counted_string(idstr);
            self.last = Some(block);
            9 + idstr.len()
        }
    }

    /// One zero page: a ZERO record and the fill byte 0 (`save_zero_page`).
    fn zero_page(&mut self, blocks: &[RamBlockDesc], block: usize, offset: u64) {
        let idstr = blocks.get(block).map_or("", |b| b.idstr.as_str());
        let n = self.header(block, idstr, offset, RAM_SAVE_FLAG_ZERO);
        self.f.put_u8(0);
        self.wrote(n + 1);
    }

    fn page(&mut self, blocks: &[RamBlockDesc], block: usize, offset: u64, data: &[u8]) {
        let idstr = blocks.get(block).map_or("", |b| b.idstr.as_str());
        let n = self.header(block, idstr, offset, RAM_SAVE_FLAG_PAGE);
        self.f.put_buffer(data);
        self.wrote(n + data.len());
    }

    fn wrote(&mut self, n: usize) {
        self.data += n;
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

/// Splits `0..len` into `(start, end, may_hold_data)` segments, page-aligned: the
/// populated ranges (widened to whole pages, merged) and the gaps between them. Without a
/// hint, the whole block may hold data.
fn segments(populated: Option<&[std::ops::Range<u64>]>, len: u64) -> Vec<(u64, u64, bool)> {
    let Some(ranges) = populated else {
        return vec![(0, len, true)];
    };
    let mut spans: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| {
            let start = r.start.min(len) / PAGE64 * PAGE64;
            let end = r.end.min(len).div_ceil(PAGE64) * PAGE64;
            (start, end.min(len))
        })
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = 0;
    for (s, e) in spans {
        if e <= pos {
            continue;
        }
        match out.last_mut() {
            // Touching or overlapping the previous populated span: extend it.
            Some(last) if last.2 && s <= pos => last.1 = e,
            _ => {
                if s > pos {
                    out.push((pos, s, false));
                }
                out.push((s.max(pos), e, true));
            }
        }
        pos = e;
    }
    if pos < len {
        out.push((pos, len, false));
    }
    out
}

/// Write the whole `ram` section of `ram` as section `section_id`.
pub(crate) fn save_ram_section(
    f: &mut QemuFile,
    ram: &dyn RamBlocks,
    section_id: u32,
) -> Result<RamSaved> {
    let blocks = ram.blocks();
    let ignore_shared = ram.ignore_shared();
    let total = validate_blocks(&blocks, ignore_shared)?;
    let start = f.position();
    let io = |source| Error::Io {
        op: "writing the stream",
        source,
    };

    // START: the block list (ram_save_setup), with each block's address
    // when x-ignore-shared is announced.
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
        if ignore_shared {
            f.put_u64(RAM_BLOCK_ADDR);
        }
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
    };
    let mut buf = vec![0u8; RAM_READ_BATCH];
    for (i, b) in blocks.iter().enumerate().filter(|(_, b)| !b.ignored) {
        let populated = ram.populated(i).map_err(|source| Error::RamAccess {
            op: "query populated ranges of",
            idstr: b.idstr.clone(),
            offset: 0,
            source,
        })?;
        for (start, end, maybe_data) in segments(populated.as_deref(), b.used_length) {
            if !maybe_data {
                // Never populated: zeros, left out of the stream without reading (or
                // faulting in) a byte; the loader zeroes what no record covers.
                saved.zero_pages += (end - start) / PAGE64;
                continue;
            }
            let mut offset = start;
            while offset < end {
                let n = usize::try_from(end - offset).map_or(buf.len(), |l| l.min(buf.len()));
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
        }
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

    #[test]
    fn segments_cover_the_block_in_whole_pages() {
        assert_eq!(segments(None, 3 * 4096), vec![(0, 3 * 4096, true)]);
        assert_eq!(
            segments(Some(&[100..200, 4096 * 5..4096 * 5 + 1]), 8 * 4096),
            vec![
                (0, 4096, true),
                (4096, 5 * 4096, false),
                (5 * 4096, 6 * 4096, true),
                (6 * 4096, 8 * 4096, false)
            ]
        );
        // Overlapping, unsorted, out-of-range hints.
        assert_eq!(
            segments(
                Some(&[8192..20000, 0..4096, 4096..9000, 1 << 40..1 << 41]),
                6 * 4096
            ),
            vec![(0, 5 * 4096, true), (5 * 4096, 6 * 4096, false)]
        );
        assert_eq!(segments(Some(&[]), 4096), vec![(0, 4096, false)]);
    }

    /// One ZERO record and fill byte per page, CONTINUE within a block.
    #[test]
    fn zero_pages_are_qemus_records() {
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
        };
        w.zero_page(&blocks, 0, 0);
        w.zero_page(&blocks, 0, 4096);
        w.zero_page(&blocks, 1, 0);
        w.close();
        let bytes = f.into_bytes().expect("memory");
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x02, 0, 0, 0, 7,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'a', 0,
            0, 0, 0, 0, 0, 0, 0x10, 0x22, 0,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'b', 0,
            0, 0, 0, 0, 0, 0, 0, 0x10,
            0x7e, 0, 0, 0, 7,
        ];
        assert_eq!(bytes, expected);
    }
}
