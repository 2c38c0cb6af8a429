//! Reading the `ram` section. The same [`RamLoader`] runs twice: without a
//! sink (pass 1: check everything, skip page data) and with one (pass 2:
//! write pages into guest RAM and zero the rest).

use cpr_migration_file::QemuFile;

use super::{PAGE, PAGE64, RamBlockDesc, RamBlocks, WILL_WRITE_GAP, validate_blocks};
use crate::config::read_configuration;
use crate::consts::*;
use crate::error::{Error, Result};
use crate::stream::{check_section_footer, get, read_full_header};
use crate::vmdesc::VmsdDesc;

/// What the `ram` section of a loaded stream held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamSummary {
    /// Section id of the `ram` section.
    pub section_id: u32,
    /// Version of the section (4).
    pub version_id: u32,
    /// The blocks, in stream order.
    pub blocks: Vec<RamBlockDesc>,
    /// Pages whose data the stream carries.
    pub pages: u64,
    /// Zero pages: ZERO records, and pages of copied blocks that no record
    /// covers (never populated at the source).
    pub zero_pages: u64,
    /// Offset of the START section's type byte.
    pub offset: u64,
    /// Bytes from START's type byte through END's footer.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No START yet.
    Idle,
    /// After START: (section id, version).
    Open(u32, u32),
    /// After END.
    Done(u32, u32),
}

/// A block of the stream's list: its index in the local list and the next
/// offset a record must cover.
#[derive(Debug)]
struct StreamBlock {
    local: usize,
    cursor: u64,
}

/// Reads START/PART/END sections of `ram` and checks them against the
/// local block list.
pub(crate) struct RamLoader<'r> {
    local: Vec<RamBlockDesc>,
    /// This side's `x-ignore-shared` (the stream's, once its configuration
    /// has been checked).
    ignore_shared: bool,
    sink: Option<&'r mut dyn RamBlocks>,
    phase: Phase,
    blocks: Vec<StreamBlock>,
    /// Block (index in `blocks`) of the previous record of this section.
    last: Option<usize>,
    pages: u64,
    zero_pages: u64,
    /// Pages to zero not yet handed to the sink: (local block, start, end).
    pending_zero: Option<(usize, u64, u64)>,
    /// Take the stream's block list as the local one ([`RamLoader::adopting`]).
    adopt: bool,
    /// Offset of START's type byte, and of the byte after END's footer.
    span: (u64, u64),
    /// Without a sink: the ranges each local block has page data for (see
    /// [`RamBlocks::will_write`]).
    page_ranges: Vec<Vec<std::ops::Range<u64>>>,
}

/// Most blocks [`RamLoader::adopting`] takes from a stream.
const MAX_ADOPTED_BLOCKS: usize = 256;

impl<'r> RamLoader<'r> {
    /// A loader for `local` (validated) with `x-ignore-shared` as
    /// `ignore_shared`; with a `sink`, pages are written there and the
    /// pages no record covers zeroed, otherwise skipped.
    pub(crate) fn new(
        local: Vec<RamBlockDesc>,
        ignore_shared: bool,
        sink: Option<&'r mut dyn RamBlocks>,
    ) -> Result<Self> {
        validate_blocks(&local, ignore_shared)?;
        Ok(RamLoader {
            local,
            ignore_shared,
            sink,
            phase: Phase::Idle,
            blocks: Vec::new(),
            last: None,
            pages: 0,
            zero_pages: 0,
            pending_zero: None,
            adopt: false,
            span: (0, 0),
            page_ranges: Vec::new(),
        })
    }

    /// The ranges of each local block (by index) that the stream carries page data for,
    /// merged across gaps under [`WILL_WRITE_GAP`], as a loader without a sink found them.
    pub(crate) fn take_page_ranges(&mut self) -> Vec<Vec<std::ops::Range<u64>>> {
        std::mem::take(&mut self.page_ranges)
    }

    fn note_page(&mut self, block: usize, addr: u64) {
        if self.page_ranges.len() <= block {
            self.page_ranges.resize_with(block + 1, Vec::new);
        }
        let Some(ranges) = self.page_ranges.get_mut(block) else {
            return;
        };
        match ranges.last_mut() {
            Some(r) if addr >= r.end && addr - r.end < WILL_WRITE_GAP => r.end = addr + PAGE64,
            _ => ranges.push(addr..addr + PAGE64),
        }
    }

    /// A loader without local RAM that takes the block list of the stream's START section
    /// as its own (each block checked as [`validate_blocks`] checks a local list; whether
    /// a block stays in place is not in the ram section, so every block is taken as
    /// copied), then checks the rest against it; pages are skipped. `ignore_shared` is what
    /// the stream's configuration section announced. For a tool that describes a stream
    /// without a VM.
    pub(crate) fn adopting(ignore_shared: bool) -> Self {
        RamLoader {
            local: Vec::new(),
            ignore_shared,
            sink: None,
            phase: Phase::Idle,
            blocks: Vec::new(),
            last: None,
            pages: 0,
            zero_pages: 0,
            pending_zero: None,
            adopt: true,
            span: (0, 0),
            page_ranges: Vec::new(),
        }
    }

    /// The local block list (the stream's, for an [adopting](Self::adopting) loader).
    pub(crate) fn local_blocks(&self) -> &[RamBlockDesc] {
        &self.local
    }

    /// Read the configuration section that opens the stream and check it
    /// against this side (see [`read_configuration`]); returns its
    /// description. A device-state stream (a device section or EOF first)
    /// is [`Error::MissingRamSection`].
    pub(crate) fn configuration(&self, f: &mut QemuFile) -> Result<VmsdDesc> {
        let offset = f.position();
        let next = f.peek_u8().map_err(|source| Error::Read {
            what: "section type",
            offset,
            source,
        })?;
        if matches!(next, QEMU_VM_SECTION_FULL | QEMU_VM_EOF) {
            return Err(Error::MissingRamSection);
        }
        read_configuration(f, self.ignore_shared).map(|(_, desc)| desc)
    }

    /// Whether START has been read but END has not.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(..))
    }

    /// Whether END has been read.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done(..))
    }

    /// Whether no START has been read.
    pub(crate) fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// What the section held, once END has been read.
    pub(crate) fn summary(&self) -> Option<RamSummary> {
        let Phase::Done(section_id, version_id) = self.phase else {
            return None;
        };
        Some(RamSummary {
            section_id,
            version_id,
            blocks: self.descs().cloned().collect(),
            pages: self.pages,
            zero_pages: self.zero_pages,
            offset: self.span.0,
            size: self.span.1 - self.span.0,
        })
    }

    /// The stream's blocks, in stream order.
    fn descs(&self) -> impl Iterator<Item = &RamBlockDesc> {
        self.blocks.iter().filter_map(|b| self.local.get(b.local))
    }

    /// Read the rest of a START/PART/END section whose type byte `ty` was
    /// read at `offset`.
    pub(crate) fn section(&mut self, f: &mut QemuFile, ty: u8, offset: u64) -> Result<()> {
        match (ty, self.phase) {
            (QEMU_VM_SECTION_START, Phase::Idle) => self.start(f, offset),
            (QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END, Phase::Open(sid, version)) => {
                self.part(f, ty, offset, sid, version)
            }
            (QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END, Phase::Idle) => {
                let section_id = get(f, "section id", QemuFile::get_u32)?;
                Err(Error::UnknownSectionId { section_id, offset })
            }
            _ => Err(Error::RamSectionOrder {
                ty,
                name: section_type_name(ty).unwrap_or("?"),
                offset,
            }),
        }
    }

    fn start(&mut self, f: &mut QemuFile, offset: u64) -> Result<()> {
        let hdr = read_full_header(f)?;
        if hdr.idstr != RAM_IDSTR || hdr.instance_id != RAM_INSTANCE_ID {
            return Err(Error::UnknownSection {
                idstr: hdr.idstr,
                instance_id: hdr.instance_id,
                offset,
            });
        }
        if hdr.version_id > RAM_VERSION_ID {
            return Err(Error::UnsupportedSectionVersion {
                idstr: hdr.idstr,
                version_id: hdr.version_id,
                local_version_id: RAM_VERSION_ID,
            });
        }
        let wrap = |e| Error::LoadSection {
            idstr: RAM_IDSTR.to_owned(),
            instance_id: RAM_INSTANCE_ID,
            section_id: hdr.section_id,
            source: Box::new(e),
        };
        if hdr.version_id < RAM_VERSION_ID {
            return Err(wrap(Error::VersionTooOld {
                vmsd: RAM_IDSTR.to_owned(),
                version_id: hdr.version_id,
                minimum_version_id: RAM_VERSION_ID,
            }));
        }
        self.block_list(f).map_err(wrap)?;
        self.last = None;
        self.records(f).map_err(wrap)?;
        check_section_footer(f, RAM_IDSTR, hdr.section_id)?;
        self.span = (offset, f.position());
        self.phase = Phase::Open(hdr.section_id, hdr.version_id);
        Ok(())
    }

    fn part(
        &mut self,
        f: &mut QemuFile,
        ty: u8,
        offset: u64,
        sid: u32,
        version: u32,
    ) -> Result<()> {
        let section_id = get(f, "section id", QemuFile::get_u32)?;
        if section_id != sid {
            return Err(Error::UnknownSectionId { section_id, offset });
        }
        let wrap = |e| Error::LoadSectionPart {
            section_id,
            idstr: RAM_IDSTR.to_owned(),
            source: Box::new(e),
        };
        self.last = None;
        self.records(f).map_err(wrap)?;
        if ty == QEMU_VM_SECTION_END {
            self.finish().map_err(wrap)?;
        }
        check_section_footer(f, RAM_IDSTR, section_id)?;
        self.span.1 = f.position();
        if ty == QEMU_VM_SECTION_END {
            self.phase = Phase::Done(sid, version);
        }
        Ok(())
    }

    /// The MEM_SIZE record: be64 total | MEM_SIZE, then per block idstr,
    /// be64 used_length and, with `x-ignore-shared`, be64 address, until the
    /// lengths add up to total.
    fn block_list(&mut self, f: &mut QemuFile) -> Result<()> {
        let at = f.position();
        let word = get(f, "ram block list", QemuFile::get_u64)?;
        if word & RAM_SAVE_FLAG_MASK != RAM_SAVE_FLAG_MEM_SIZE {
            return Err(Error::BadRamBlockList {
                offset: at,
                reason: format!(
                    "it starts with flags 0x{:x}, not RAM_SAVE_FLAG_MEM_SIZE",
                    word & RAM_SAVE_FLAG_MASK
                ),
            });
        }
        let total = word & !RAM_SAVE_FLAG_MASK;
        let mut left = total;
        while left > 0 {
            let at = f.position();
            let idstr = f.get_counted_string().map_err(|source| Error::Read {
                what: "ramblock idstr",
                offset: at,
                source,
            })?;
            let len = get(f, "ramblock length", QemuFile::get_u64)?;
            if self.ignore_shared {
                let addr = get(f, "ramblock address", QemuFile::get_u64)?;
                if addr != RAM_BLOCK_ADDR {
                    return Err(Error::RamBlockAddrMismatch {
                        idstr,
                        remote: addr,
                        local: RAM_BLOCK_ADDR,
                    });
                }
            }
            if self.adopt && !self.local.iter().any(|b| b.idstr == idstr) {
                if self.local.len() >= MAX_ADOPTED_BLOCKS {
                    return Err(Error::BadRamBlockList {
                        offset: at,
                        reason: format!("more than {MAX_ADOPTED_BLOCKS} blocks"),
                    });
                }
                let desc = RamBlockDesc {
                    idstr: idstr.clone(),
                    used_length: len,
                    ignored: false,
                };
                validate_blocks(std::slice::from_ref(&desc), self.ignore_shared)?;
                self.local.push(desc);
            }
            let Some((local, desc)) = self
                .local
                .iter()
                .enumerate()
                .find(|(_, b)| b.idstr == idstr)
            else {
                return Err(Error::UnknownRamBlock { idstr });
            };
            if self.blocks.iter().any(|b| b.local == local) {
                return Err(Error::BadRamBlockList {
                    offset: at,
                    reason: format!("ramblock \"{idstr}\" is listed twice"),
                });
            }
            if len != desc.used_length {
                return Err(Error::RamLengthMismatch {
                    idstr,
                    stream: len,
                    local: desc.used_length,
                });
            }
            left = left
                .checked_sub(len)
                .ok_or_else(|| Error::BadRamBlockList {
                    offset: at,
                    reason: format!("the block lengths exceed the announced total 0x{total:x}"),
                })?;
            self.blocks.push(StreamBlock { local, cursor: 0 });
        }
        for (i, b) in self.local.iter().enumerate() {
            if !self.blocks.iter().any(|s| s.local == i) {
                return Err(Error::MissingRamBlock {
                    idstr: b.idstr.clone(),
                });
            }
        }
        Ok(())
    }

    /// PAGE and ZERO records up to EOS (`ram_load_precopy`).
    fn records(&mut self, f: &mut QemuFile) -> Result<()> {
        loop {
            let at = f.position();
            let word = get(f, "ram record", QemuFile::get_u64)?;
            let (addr, flags) = (word & !RAM_SAVE_FLAG_MASK, word & RAM_SAVE_FLAG_MASK);
            if flags == RAM_SAVE_FLAG_EOS {
                // QEMU ignores the rest of the word; the saver writes EOS alone.
                if addr != 0 {
                    return Err(Error::RamEosOffset { word, offset: at });
                }
                return Ok(());
            }
            let kind = flags & !RAM_SAVE_FLAG_CONTINUE;
            if kind != RAM_SAVE_FLAG_PAGE && kind != RAM_SAVE_FLAG_ZERO {
                return Err(Error::UnknownRamFlags { flags, offset: at });
            }
            let index = self.block_from_stream(f, flags, at)?;
            let (local, cursor) = match self.blocks.get(index) {
                Some(b) => (b.local, b.cursor),
                None => return Err(Error::RamNoPreviousBlock { offset: at }),
            };
            let Some(desc) = self.local.get(local) else {
                return Err(Error::RamNoPreviousBlock { offset: at });
            };
            let (ignored, used_length) = (desc.ignored, desc.used_length);
            // The block's name, for errors only (no allocation per record).
            let idstr = |l: &Self| {
                l.local
                    .get(local)
                    .map(|d| d.idstr.clone())
                    .unwrap_or_default()
            };
            if ignored {
                return Err(Error::RamBlockNotMigrated {
                    idstr: idstr(self),
                    offset: at,
                });
            }
            let Some(end) = addr.checked_add(PAGE64).filter(|&end| end <= used_length) else {
                return Err(Error::IllegalRamOffset {
                    idstr: idstr(self),
                    addr,
                    offset: at,
                });
            };
            if addr < cursor {
                return Err(Error::RamPageOrder {
                    idstr: idstr(self),
                    addr,
                    expected: cursor,
                });
            }
            // Pages skipped since the previous record read as zeros.
            self.zero(local, cursor, addr)?;
            if kind == RAM_SAVE_FLAG_PAGE {
                self.pages += 1;
                self.flush_zero()?;
                let data_at = f.position();
                let read = |source| Error::Read {
                    what: "ram page",
                    offset: data_at,
                    source,
                };
                let written = match self.sink.as_deref_mut() {
                    Some(sink) => {
                        // Borrowed from the stream's buffer: one copy, into guest RAM.
                        let page = f.get_slice(PAGE).map_err(read)?;
                        sink.write(local, addr, page)
                    }
                    None => {
                        f.skip(PAGE64).map_err(read)?;
                        self.note_page(local, addr);
                        Ok(())
                    }
                };
                written.map_err(|source| Error::RamAccess {
                    op: "write",
                    idstr: idstr(self),
                    offset: addr,
                    source,
                })?;
            } else {
                let value = get(f, "zero page value", QemuFile::get_u8)?;
                if value != 0 {
                    return Err(Error::ZeroPageValue {
                        idstr: idstr(self),
                        addr,
                        value,
                        offset: at,
                    });
                }
                self.zero(local, addr, end)?;
            }
            if let Some(b) = self.blocks.get_mut(index) {
                b.cursor = end;
            }
        }
    }

    /// Count `start..end` of local block `block` as zero pages and, with a
    /// sink, queue it for zeroing (merged with the pending range when they
    /// touch).
    fn zero(&mut self, block: usize, start: u64, end: u64) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        self.zero_pages += (end - start) / PAGE64;
        if self.sink.is_none() {
            return Ok(());
        }
        match &mut self.pending_zero {
            Some((b, _, e)) if *b == block && *e == start => *e = end,
            _ => {
                self.flush_zero()?;
                self.pending_zero = Some((block, start, end));
            }
        }
        Ok(())
    }

    /// Hand the pending zero range to the sink.
    fn flush_zero(&mut self) -> Result<()> {
        let Some((block, start, end)) = self.pending_zero.take() else {
            return Ok(());
        };
        let idstr = self.local.get(block).map(|d| d.idstr.clone());
        if let Some(sink) = self.sink.as_deref_mut() {
            sink.zero(block, start, end - start)
                .map_err(|source| Error::RamAccess {
                    op: "zero",
                    idstr: idstr.unwrap_or_default(),
                    offset: start,
                    source,
                })?;
        }
        Ok(())
    }

    /// `ram_block_from_stream`: the previous block for CONTINUE, else the
    /// block named by the idstr that follows.
    fn block_from_stream(&mut self, f: &mut QemuFile, flags: u64, at: u64) -> Result<usize> {
        if flags & RAM_SAVE_FLAG_CONTINUE != 0 {
            return self.last.ok_or(Error::RamNoPreviousBlock { offset: at });
        }
        let id_at = f.position();
        let idstr = f.get_counted_string().map_err(|source| Error::Read {
            what: "ramblock idstr",
            offset: id_at,
            source,
        })?;
        let local = &self.local;
        let found = self
            .blocks
            .iter()
            .position(|b| local.get(b.local).is_some_and(|d| d.idstr == idstr));
        let Some(index) = found else {
            return Err(Error::RamBlockNotFound { idstr, offset: at });
        };
        self.last = Some(index);
        Ok(index)
    }

    /// At END: the pages of copied blocks that no record covered read as
    /// zeros.
    fn finish(&mut self) -> Result<()> {
        let tails: Vec<(usize, u64, u64)> = self
            .blocks
            .iter()
            .filter_map(|b| {
                let desc = self.local.get(b.local)?;
                (!desc.ignored).then_some((b.local, b.cursor, desc.used_length))
            })
            .collect();
        for (block, start, end) in tails {
            self.zero(block, start, end)?;
        }
        self.flush_zero()?;
        let finished = match self.sink.as_deref_mut() {
            Some(sink) => sink.finish_writes(),
            None => Ok(()),
        };
        finished.map_err(|source| Error::RamAccess {
            op: "finishing the writes",
            idstr: self
                .descs()
                .filter(|d| !d.ignored)
                .map(|d| d.idstr.as_str())
                .collect::<Vec<_>>()
                .join(","),
            offset: 0,
            source,
        })
    }
}
