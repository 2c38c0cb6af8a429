//! RAM test doubles: an in-memory [`MemRam`] that counts every write, and
//! a [`GenRam`] that generates its pages (no buffer of its size) and checks
//! what is loaded into it. Plus [`walk`], an independent decoder of the
//! `ram` section used to check the framing.
#![allow(dead_code)]

use std::cell::Cell;

use cpr_migration_file::QemuFile;
use cpr_savevm::*;

pub const PAGE: usize = 4096;

/// Guest RAM in memory, counting calls.
#[derive(Debug, Clone)]
pub struct MemRam {
    pub descs: Vec<RamBlockDesc>,
    /// x-ignore-shared (on when a block is kept in place, unless changed).
    pub ignore_shared: bool,
    pub data: Vec<Vec<u8>>,
    pub writes: usize,
    pub zeros: usize,
    pub reads: Cell<usize>,
}

impl MemRam {
    /// Blocks filled with `fill`.
    pub fn filled(descs: &[RamBlockDesc], fill: u8) -> MemRam {
        MemRam {
            descs: descs.to_vec(),
            ignore_shared: descs.iter().any(|d| d.ignored),
            data: descs
                .iter()
                .map(|d| vec![fill; usize::try_from(d.used_length).expect("fits")])
                .collect(),
            writes: 0,
            zeros: 0,
            reads: Cell::new(0),
        }
    }

    /// Every call that changed (or could have changed) guest RAM.
    pub fn touched(&self) -> usize {
        self.writes + self.zeros
    }

    pub fn block(&self, idstr: &str) -> &[u8] {
        let i = self
            .descs
            .iter()
            .position(|d| d.idstr == idstr)
            .expect("block");
        &self.data[i]
    }

    pub fn block_mut(&mut self, idstr: &str) -> &mut [u8] {
        let i = self
            .descs
            .iter()
            .position(|d| d.idstr == idstr)
            .expect("block");
        &mut self.data[i]
    }

    fn range(
        &self,
        block: usize,
        offset: u64,
        len: usize,
    ) -> std::result::Result<std::ops::Range<usize>, BoxError> {
        let size = self.data.get(block).ok_or("no such block")?.len();
        let start = usize::try_from(offset)?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or("out of range")?;
        if !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err("unaligned access".into());
        }
        Ok(start..end)
    }
}

impl RamBlocks for MemRam {
    fn blocks(&self) -> Vec<RamBlockDesc> {
        self.descs.clone()
    }
    fn ignore_shared(&self) -> bool {
        self.ignore_shared
    }
    fn populated(
        &self,
        _block: usize,
    ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        Ok(None)
    }

    fn read(&self, block: usize, offset: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
        let r = self.range(block, offset, buf.len())?;
        buf.copy_from_slice(&self.data[block][r]);
        self.reads.set(self.reads.get() + 1);
        Ok(())
    }
    fn write(
        &mut self,
        block: usize,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<(), BoxError> {
        let r = self.range(block, offset, data.len())?;
        self.data[block][r].copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }
    fn zero(&mut self, block: usize, offset: u64, len: u64) -> std::result::Result<(), BoxError> {
        let r = self.range(block, offset, usize::try_from(len)?)?;
        self.data[block][r].fill(0);
        self.zeros += 1;
        Ok(())
    }
}

/// Guest RAM whose pages are generated: page `p` of block `b` is zero
/// unless `p % every == 0` (and `every != 0`), then it is filled with a
/// pattern of (b, p). Loading into it checks each write and zero range
/// against the pattern instead of storing anything.
#[derive(Debug)]
pub struct GenRam {
    pub descs: Vec<RamBlockDesc>,
    pub every: u64,
    /// Say that no page was ever populated (only true when `every` is 0).
    pub never_populated: bool,
    pub written_pages: u64,
    pub zeroed_pages: u64,
    pub wrong: u64,
}

impl GenRam {
    pub fn new(descs: Vec<RamBlockDesc>, every: u64) -> GenRam {
        GenRam {
            descs,
            every,
            never_populated: false,
            written_pages: 0,
            zeroed_pages: 0,
            wrong: 0,
        }
    }

    fn has_data(&self, page: u64) -> bool {
        self.every != 0 && page.is_multiple_of(self.every)
    }

    fn fill(block: usize, page: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = (low(page) ^ low(block as u64).wrapping_mul(31) ^ low(i as u64)) | 1;
        }
    }
}

impl RamBlocks for GenRam {
    fn blocks(&self) -> Vec<RamBlockDesc> {
        self.descs.clone()
    }
    fn ignore_shared(&self) -> bool {
        self.descs.iter().any(|d| d.ignored)
    }
    fn populated(
        &self,
        _block: usize,
    ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        Ok(self.never_populated.then(Vec::new))
    }

    fn read(&self, block: usize, offset: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
        for (k, page) in buf.chunks_mut(PAGE).enumerate() {
            let p = offset / PAGE as u64 + k as u64;
            if self.has_data(p) {
                Self::fill(block, p, page);
            } else {
                page.fill(0);
            }
        }
        Ok(())
    }
    fn write(
        &mut self,
        block: usize,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<(), BoxError> {
        let p = offset / PAGE as u64;
        let mut expected = vec![0u8; data.len()];
        if self.has_data(p) {
            Self::fill(block, p, &mut expected);
        }
        if expected != data {
            self.wrong += 1;
        }
        self.written_pages += 1;
        Ok(())
    }
    fn zero(&mut self, _block: usize, offset: u64, len: u64) -> std::result::Result<(), BoxError> {
        let first = offset / PAGE as u64;
        let n = len / PAGE as u64;
        if (first..first + n).any(|p| self.has_data(p)) {
            self.wrong += 1;
        }
        self.zeroed_pages += n;
        Ok(())
    }
}

/// The low byte of `x`.
pub fn low(x: u64) -> u8 {
    x.to_le_bytes()[0]
}

/// A factory over fixed bytes, counting how often it was called.
pub fn opener<'a>(
    bytes: &'a [u8],
    opens: &'a Cell<usize>,
) -> impl FnMut() -> Result<QemuFile> + 'a {
    move || {
        opens.set(opens.get() + 1);
        Ok(QemuFile::from_bytes(bytes.to_vec(), "test-load"))
    }
}

/// Save `registry` and `ram` into memory.
pub fn save(registry: &mut Registry, ram: &dyn RamBlocks) -> (Vec<u8>, SaveStats) {
    let mut f = QemuFile::memory_writer("test-save");
    let stats = save_state(&mut f, registry, Some(ram)).expect("save");
    (f.into_bytes().expect("into_bytes"), stats)
}

/// Load `bytes` into `ram` (two passes over the same bytes).
pub fn load(bytes: &[u8], registry: &Registry, ram: &mut dyn RamBlocks) -> Result<LoadedState> {
    let opens = Cell::new(0);
    load_state(opener(bytes, &opens), registry, Some(ram))
}

/// What [`walk`] decoded from one PART section.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Part {
    /// (block idstr, offset) of each PAGE record.
    pub pages: Vec<(String, u64)>,
    /// (block idstr, offset) of each ZERO record.
    pub zero_pages: Vec<(String, u64)>,
}

/// A block of the block list: idstr, length, address (with x-ignore-shared).
pub type ListedBlock = (String, u64, Option<u64>);

/// The configuration section every stream with RAM opens with.
pub const CONFIG: &[u8] = b"\x07\x00\x00\x00\x06cpr-vm";
/// Its capabilities subsection, announcing x-ignore-shared.
pub const CONFIG_CAPS: &[u8] =
    b"\x05\x1aconfiguration/capabilities\x00\x00\x00\x01\x00\x00\x00\x01\x0fx-ignore-shared";

/// Independently decode the configuration and `ram` sections that follow
/// magic and version: returns the block list (idstr, length, address when
/// x-ignore-shared is announced) and the PARTs, and the offset just after
/// END's footer. Panics on anything unexpected.
pub fn walk(bytes: &[u8]) -> (Vec<ListedBlock>, Vec<Part>, usize) {
    let mut at = 8;
    assert_eq!(bytes[at..at + CONFIG.len()], *CONFIG, "configuration");
    at += CONFIG.len();
    let ignore_shared = bytes[at..].starts_with(CONFIG_CAPS);
    if ignore_shared {
        at += CONFIG_CAPS.len();
    }
    let mut take = |n: usize| {
        let s = &bytes[at..at + n];
        at += n;
        s
    };
    let be32 = |s: &[u8]| u32::from_be_bytes(s.try_into().unwrap());
    let be64 = |s: &[u8]| u64::from_be_bytes(s.try_into().unwrap());
    assert_eq!(take(1), [0x01], "START");
    let sid = be32(take(4));
    let n = take(1)[0] as usize;
    assert_eq!(take(n), b"ram");
    assert_eq!(be32(take(4)), 0, "instance");
    assert_eq!(be32(take(4)), 4, "version");
    let word = be64(take(8));
    assert_eq!(word & 0xfff, 0x04, "MEM_SIZE");
    let mut left = word & !0xfff;
    let mut blocks = Vec::new();
    while left > 0 {
        let n = take(1)[0] as usize;
        let id = String::from_utf8(take(n).to_vec()).unwrap();
        let len = be64(take(8));
        let addr = ignore_shared.then(|| be64(take(8)));
        left -= len;
        blocks.push((id, len, addr));
    }
    assert_eq!(be64(take(8)), 0x10, "EOS");
    assert_eq!(take(1), [0x7e]);
    assert_eq!(be32(take(4)), sid);
    let mut parts = Vec::new();
    loop {
        let ty = take(1)[0];
        assert_eq!(be32(take(4)), sid);
        let mut part = Part::default();
        let mut last: Option<String> = None;
        loop {
            let word = be64(take(8));
            let (addr, flags) = (word & !0xfff, word & 0xfff);
            if flags == 0x10 {
                break;
            }
            let block = if flags & 0x20 != 0 {
                last.clone().expect("CONTINUE after a record")
            } else {
                let n = take(1)[0] as usize;
                String::from_utf8(take(n).to_vec()).unwrap()
            };
            last = Some(block.clone());
            match flags & !0x20 {
                0x08 => {
                    take(PAGE);
                    part.pages.push((block, addr));
                }
                0x02 => {
                    assert_eq!(take(1), [0], "fill byte");
                    part.zero_pages.push((block, addr));
                }
                f => panic!("flags {f:#x}"),
            }
        }
        assert_eq!(take(1), [0x7e]);
        assert_eq!(be32(take(4)), sid);
        match ty {
            0x02 => parts.push(part),
            0x03 => {
                assert_eq!(part, Part::default(), "END carries no records");
                break;
            }
            t => panic!("section type {t}"),
        }
    }
    (blocks, parts, at)
}
