//! Writing the `ram` section: START with the block list, PARTs with pages
//! and zero pages, END.
//!
//! The PARTs are built in memory, [`RAM_SAVE_BATCH`] bytes of stream at a
//! time, each page read from guest RAM straight into its place after its
//! record header, and hashed there ([`HashedBytes`]). A second thread writes
//! the finished batches to the file while the next one is built, so the
//! file's own cost (allocating its pages, copying into them) overlaps the
//! reading, zero checks and CRC; where no thread can be started, the batches
//! are written in turn. A few batches are alive at once, reused: nothing
//! else grows with the RAM size.

use std::sync::mpsc;

use cpr_migration_file::{HashedBytes, QemuFile};

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

/// The longest record with what may surround it in a batch: a PART header (5 bytes), a
/// record word with a 255-byte idstr (264), a page, and the EOS word and footer that may
/// close the PART after it (13).
const RECORD_MAX: usize = 5 + 264 + PAGE + 13;

/// Each batch's buffer: a batch is handed over once it holds [`RAM_SAVE_BATCH`] bytes,
/// and a record is only begun with room for the longest one.
const BATCH_CAPACITY: usize = RAM_SAVE_BATCH + RECORD_MAX;

/// Batches waiting for the writer thread, so that it need not wait whenever the builder
/// is scheduled late (on a busy machine). Five buffers are alive at most: the one being
/// built, these, the one being written, and one on its way back.
const BATCHES_QUEUED: usize = 2;

/// Why building the PARTs stopped.
enum Stop {
    /// A RAM block could not be read, or its populated ranges not found.
    Ram(Error),
    /// The file stopped taking batches (its error is latched in it).
    Sink,
}

/// Builds the stream bytes of PART sections into batches: opens a PART on the first
/// record and closes it once it holds [`RAM_PART_MAX_DATA`] bytes of records.
struct PartWriter<'e> {
    section_id: u32,
    open: bool,
    data: usize,
    /// Block of the previous record in the open PART (for CONTINUE).
    last: Option<usize>,
    /// The batch being built: `buf[..len]`; `buf` is [`BATCH_CAPACITY`] long once a
    /// record was begun.
    buf: Vec<u8>,
    len: usize,
    /// Takes a finished batch and gives back a buffer for the next one, or stops.
    emit: &'e mut dyn FnMut(HashedBytes) -> Option<Vec<u8>>,
}

impl PartWriter<'_> {
    fn new(
        section_id: u32,
        emit: &mut dyn FnMut(HashedBytes) -> Option<Vec<u8>>,
    ) -> PartWriter<'_> {
        PartWriter {
            section_id,
            open: false,
            data: 0,
            last: None,
            buf: Vec::new(),
            len: 0,
            emit,
        }
    }

    /// Room for `n` more bytes in `buf`: there is, since [`Self::begin`] makes room for
    /// the longest record; this keeps a wrong size from being more than slow.
    fn room(&mut self, n: usize) {
        if self.buf.len() < self.len + n {
            self.buf.resize(self.len + n, 0);
        }
    }

    /// Append `bytes` to the batch.
    fn put(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    /// Hand the batch over and start the next one in the buffer given back.
    fn flush(&mut self) -> std::result::Result<(), Stop> {
        if self.len == 0 {
            return Ok(());
        }
        let mut full = std::mem::take(&mut self.buf);
        full.truncate(self.len);
        self.len = 0;
        self.buf = (self.emit)(HashedBytes::new(full)).ok_or(Stop::Sink)?;
        Ok(())
    }

    /// Before a record: hand the batch over if it is full, make room for the longest
    /// record, and open a PART if none is.
    fn begin(&mut self) -> std::result::Result<(), Stop> {
        if self.len >= RAM_SAVE_BATCH {
            self.flush()?;
        }
        if self.buf.len() < BATCH_CAPACITY {
            self.buf.resize(BATCH_CAPACITY, 0);
        }
        if !self.open {
            // write_part_header(PART)
            self.put(&[QEMU_VM_SECTION_PART]);
            self.put(&self.section_id.to_be_bytes());
            self.open = true;
        }
        Ok(())
    }

    /// The length of a record's header (`save_page_header`): its word and, unless
    /// CONTINUE, its block's idstr.
    fn header_len(&self, block: usize, idstr: &str) -> usize {
        if self.last == Some(block) {
            8
        } else {
            9 + idstr.len()
        }
    }

    /// A record's header; returns its length.
    fn header(&mut self, block: usize, idstr: &str, offset: u64, flag: u64) -> usize {
        if self.last == Some(block) {
            self.put(&(offset | flag | RAM_SAVE_FLAG_CONTINUE).to_be_bytes());
            8
        } else {
            // validate_blocks keeps idstrs to 1..=255 bytes.
            let len = u8::try_from(idstr.len()).unwrap_or(u8::MAX);
            self.put(&(offset | flag).to_be_bytes());
            self.put(&[len]);
            self.put(idstr.as_bytes());
            self.last = Some(block);
            9 + idstr.len()
        }
    }

    /// The page at `offset` of `block`, read into its place in the batch: a PAGE record
    /// (`save_normal_page`), or a ZERO record if it reads as zeros. Returns whether it
    /// was zero.
    fn page(
        &mut self,
        ram: &dyn RamBlocks,
        b: &RamBlockDesc,
        block: usize,
        offset: u64,
    ) -> std::result::Result<bool, Stop> {
        self.begin()?;
        let hlen = self.header_len(block, &b.idstr);
        self.room(hlen + PAGE);
        let at = self.len + hlen;
        let page = self.buf.get_mut(at..at + PAGE).unwrap_or_default();
        ram.read(block, offset, page).map_err(|source| {
            Stop::Ram(Error::RamAccess {
                op: "read",
                idstr: b.idstr.clone(),
                offset,
                source,
            })
        })?;
        if is_zero(page) {
            let n = self.header(block, &b.idstr, offset, RAM_SAVE_FLAG_ZERO);
            self.put(&[0]);
            self.wrote(n + 1);
            return Ok(true);
        }
        let n = self.header(block, &b.idstr, offset, RAM_SAVE_FLAG_PAGE);
        // The page is already in place, right after its header.
        self.len += PAGE;
        self.wrote(n + PAGE);
        Ok(false)
    }

    fn wrote(&mut self, n: usize) {
        self.data += n;
        if self.data >= RAM_PART_MAX_DATA {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.open {
            // The EOS record, then write_section_footer.
            self.put(&RAM_SAVE_FLAG_EOS.to_be_bytes());
            self.put(&[QEMU_VM_SECTION_FOOTER]);
            self.put(&self.section_id.to_be_bytes());
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
    write_parts(f, ram, &blocks, section_id, &mut saved)?;

    // END (ram_save_complete): nothing left to send.
    write_part_header(f, QEMU_VM_SECTION_END, section_id);
    f.put_u64(RAM_SAVE_FLAG_EOS);
    write_section_footer(f, section_id);
    f.check().map_err(io)?;
    saved.bytes = f.position() - start;
    saved.blocks = blocks;
    Ok(saved)
}

/// The PART sections: built here, written by a thread of their own while the next batch
/// is built; in turn if that thread cannot be started.
fn write_parts(
    f: &mut QemuFile,
    ram: &dyn RamBlocks,
    blocks: &[RamBlockDesc],
    section_id: u32,
    saved: &mut RamSaved,
) -> Result<()> {
    let io = |source| Error::Io {
        op: "writing the stream",
        source,
    };
    let threaded = std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<HashedBytes>(BATCHES_QUEUED);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let file = &mut *f;
        let writer = std::thread::Builder::new()
            .name("ram-save".into())
            .spawn_scoped(s, move || {
                for batch in rx {
                    file.put_hashed(&batch);
                    if file.error().is_some() {
                        // Dropping `rx` stops the builder.
                        break;
                    }
                    // The builder may be done and gone: then the buffer is freed here.
                    let _ = back_tx.send(batch.into_vec());
                }
            });
        let Ok(writer) = writer else {
            return None;
        };
        let mut emit = |batch| {
            tx.send(batch).ok()?;
            Some(back_rx.try_recv().unwrap_or_default())
        };
        let built = build_parts(ram, blocks, section_id, saved, &mut emit);
        drop(tx);
        Some((built, writer.join().is_ok()))
    });
    let (built, joined) = match threaded {
        Some(r) => r,
        None => {
            let mut emit = |batch: HashedBytes| {
                f.put_hashed(&batch);
                f.error().is_none().then(|| batch.into_vec())
            };
            (build_parts(ram, blocks, section_id, saved, &mut emit), true)
        }
    };
    if let Err(Stop::Ram(e)) = built {
        return Err(e);
    }
    // Stopped by the file: its error. Anything else that lost a batch is reported too.
    f.check().map_err(io)?;
    if built.is_err() || !joined {
        return Err(io(cpr_migration_file::Error::Write {
            name: f.name().to_owned(),
            offset: f.position(),
            source: std::sync::Arc::new(std::io::Error::other("the RAM writer thread stopped")),
        }));
    }
    Ok(())
}

/// Builds every PART of `blocks` into batches handed to `emit`, the last one included.
fn build_parts(
    ram: &dyn RamBlocks,
    blocks: &[RamBlockDesc],
    section_id: u32,
    saved: &mut RamSaved,
    emit: &mut dyn FnMut(HashedBytes) -> Option<Vec<u8>>,
) -> std::result::Result<(), Stop> {
    let mut w = PartWriter::new(section_id, emit);
    for (i, b) in blocks.iter().enumerate().filter(|(_, b)| !b.ignored) {
        let populated = ram.populated(i).map_err(|source| {
            Stop::Ram(Error::RamAccess {
                op: "query populated ranges of",
                idstr: b.idstr.clone(),
                offset: 0,
                source,
            })
        })?;
        for (start, end, maybe_data) in segments(populated.as_deref(), b.used_length) {
            if !maybe_data {
                // Never populated: zeros, left out of the stream without reading (or
                // faulting in) a byte; the loader zeroes what no record covers.
                saved.zero_pages += (end - start) / PAGE64;
                continue;
            }
            for offset in (start..end).step_by(PAGE) {
                if w.page(ram, b, i, offset)? {
                    saved.zero_pages += 1;
                } else {
                    saved.pages += 1;
                }
            }
        }
    }
    w.close();
    w.flush()
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

    /// Blocks of zeros but for the pages listed.
    struct Ram(Vec<(RamBlockDesc, Vec<u8>)>);

    impl RamBlocks for Ram {
        fn blocks(&self) -> Vec<RamBlockDesc> {
            self.0.iter().map(|(d, _)| d.clone()).collect()
        }
        fn ignore_shared(&self) -> bool {
            false
        }
        fn read(
            &self,
            block: usize,
            offset: u64,
            buf: &mut [u8],
        ) -> std::result::Result<(), crate::BoxError> {
            let at = usize::try_from(offset)?;
            let data = self
                .0
                .get(block)
                .and_then(|(_, d)| d.get(at..at + buf.len()));
            buf.copy_from_slice(data.ok_or("out of range")?);
            Ok(())
        }
        fn write(
            &mut self,
            _: usize,
            _: u64,
            _: &[u8],
        ) -> std::result::Result<(), crate::BoxError> {
            Err("read-only".into())
        }
        fn zero(&mut self, _: usize, _: u64, _: u64) -> std::result::Result<(), crate::BoxError> {
            Err("read-only".into())
        }
        fn populated(
            &self,
            _: usize,
        ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, crate::BoxError> {
            Ok(None)
        }
    }

    /// The PART bytes `build_parts` writes for `ram`, batch by batch.
    fn parts(ram: &Ram, section_id: u32) -> (Vec<Vec<u8>>, RamSaved) {
        let mut batches = Vec::new();
        let mut saved = RamSaved::default();
        let mut emit = |b: HashedBytes| {
            batches.push(b.into_vec());
            Some(Vec::new())
        };
        assert!(build_parts(ram, &ram.blocks(), section_id, &mut saved, &mut emit).is_ok());
        (batches, saved)
    }

    /// One ZERO record and fill byte per page, CONTINUE within a block; a page with data
    /// is a PAGE record with the page.
    #[test]
    fn zero_pages_are_qemus_records() {
        let mut b = vec![0u8; 8192];
        b[4096 + 17] = 0x5a;
        let ram = Ram(vec![
            (RamBlockDesc::copied("a", 8192), vec![0; 8192]),
            (RamBlockDesc::copied("b", 8192), b.clone()),
        ]);
        let (batches, saved) = parts(&ram, 7);
        assert_eq!((saved.pages, saved.zero_pages), (1, 3));
        #[rustfmt::skip]
        let mut expected: Vec<u8> = vec![
            0x02, 0, 0, 0, 7,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'a', 0,
            0, 0, 0, 0, 0, 0, 0x10, 0x22, 0,
            0, 0, 0, 0, 0, 0, 0, 0x02, 1, b'b', 0,
            0, 0, 0, 0, 0, 0, 0x10, 0x28,
        ];
        expected.extend_from_slice(&b[4096..]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 7]);
        assert_eq!(batches, vec![expected]);
    }

    /// Batches end after whole records once they hold RAM_SAVE_BATCH bytes, PARTs once
    /// they hold RAM_PART_MAX_DATA bytes of records: joined, they are the records of
    /// QEMU's stream, whatever is zero.
    #[test]
    fn batches_split_between_records() {
        let pages = 3 * RAM_SAVE_BATCH / PAGE + 5;
        let mut data = vec![0u8; pages * PAGE];
        for (n, page) in data.chunks_mut(PAGE).enumerate() {
            if n % 5 != 2 {
                page.fill(u8::try_from(n % 251).unwrap_or(0) | 1);
            }
        }
        let len = data.len() as u64;
        let ram = Ram(vec![(RamBlockDesc::copied("pc.ram", len), data.clone())]);
        let (batches, saved) = parts(&ram, 3);
        assert!(batches.len() >= 3, "{} batches", batches.len());
        for b in &batches {
            assert!(b.len() <= BATCH_CAPACITY, "{}", b.len());
        }
        for b in batches.iter().rev().skip(1) {
            assert!(b.len() >= RAM_SAVE_BATCH, "{}", b.len());
        }
        // The same records, built one at a time as QEMU's ram_save_target_page would.
        let mut expected = Vec::new();
        let (mut open, mut held, mut first) = (false, 0, true);
        for (n, page) in data.chunks(PAGE).enumerate() {
            if !open {
                expected.extend_from_slice(&[0x02, 0, 0, 0, 3]);
                (open, first) = (true, true);
            }
            let zero = page.iter().all(|&b| b == 0);
            let flag = if zero {
                RAM_SAVE_FLAG_ZERO
            } else {
                RAM_SAVE_FLAG_PAGE
            };
            let cont = if first { 0 } else { RAM_SAVE_FLAG_CONTINUE };
            expected.extend_from_slice(&((n * PAGE) as u64 | flag | cont).to_be_bytes());
            let mut rec = 8;
            if first {
                expected.extend_from_slice(b"\x06pc.ram");
                rec += 7;
                first = false;
            }
            if zero {
                expected.push(0);
                rec += 1;
            } else {
                expected.extend_from_slice(page);
                rec += PAGE;
            }
            held += rec;
            if held >= RAM_PART_MAX_DATA {
                expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 3]);
                (open, held) = (false, 0);
            }
        }
        if open {
            expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 3]);
        }
        assert_eq!(batches.concat(), expected);
        assert_eq!(saved.pages + saved.zero_pages, pages as u64);
    }

    /// A batch refused by the file stops the build; a RAM read error is the block's.
    #[test]
    fn stops_on_the_first_failure() {
        let ram = Ram(vec![(RamBlockDesc::copied("a", 4 << 20), vec![1; 4 << 20])]);
        let mut calls = 0;
        let mut saved = RamSaved::default();
        let mut emit = |_| {
            calls += 1;
            None
        };
        let r = build_parts(&ram, &ram.blocks(), 1, &mut saved, &mut emit);
        assert!(matches!(r, Err(Stop::Sink)));
        assert_eq!(calls, 1);

        let short = Ram(vec![(RamBlockDesc::copied("a", 8192), vec![1; 4096])]);
        let mut emit = |b: HashedBytes| Some(b.into_vec());
        let r = build_parts(&short, &short.blocks(), 1, &mut saved, &mut emit);
        assert!(
            matches!(r, Err(Stop::Ram(Error::RamAccess { offset: 4096, .. }))),
            "not the read error"
        );
    }
}
