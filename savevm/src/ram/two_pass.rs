//! The two-pass load of a stream with guest RAM ([`load_state`]).

use std::sync::Arc;

use cpr_migration_file::{QemuFile, SharedInput};

use super::{RamBlockDesc, RamBlocks, RamLoader};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::stream::{
    LoadedState, get, load_device_state_as, parse_stream, read_stream_header, verify_input,
};

/// [`load_device_state`](crate::load_device_state) with guest RAM, in two passes so that a corrupt
/// file never changes guest RAM:
///
/// 1. `open()` the stream and check all of it as [`load_device_state`](crate::load_device_state)
///    does, plus the configuration section (machine type, `x-ignore-shared`
///    as [`RamBlocks::ignore_shared`]), the `ram` section against `ram`'s
///    [`blocks`](RamBlocks::blocks) (same idstrs and lengths, records in
///    range and in order, none for a block kept in place), the vmdesc's
///    `"ram"` entry (the same blocks kept in place) and the checksum
///    trailer. Page data is skipped, not kept.
/// 2. Only then, and only if some block is copied, `open()` it again (from
///    its start: a fresh file, or one rewound with
///    [`QemuFile::seek_to`]) and write its pages into `ram`, zeroing the
///    pages of copied blocks that carry no data (ZERO records, and pages no
///    record covers).
///    The bytes read must parse and hash as in pass 1 (parse only, when
///    both passes read the same [`QemuFile::from_shared_input`] bytes: bytes
///    in memory cannot change, and a file mapped under a lease
///    ([`cpr_migration_file::MappedFile`]) that changed is
///    [`Error::InputChanged`] after either pass)
///    ([`Error::StreamChanged`] otherwise; guest RAM may then be partly
///    written, so give a factory that re-reads the same bytes, e.g. a
///    duplicate of one fd, as `cpr`'s `cpr-load` does). A
///    [`RamBlocks::write`]/[`zero`](RamBlocks::zero) failure is
///    [`Error::RamAccess`] (wrapped in the section error).
///
/// The returned [`LoadedState`] holds the parsed device state, not yet
/// applied, and [`LoadedState::ram`]. Without `ram`, `open` is called once
/// and this is [`load_device_state`](crate::load_device_state); with `ram`, a stream without a `ram`
/// section is [`Error::MissingRamSection`].
pub fn load_state(
    open: impl FnMut() -> Result<QemuFile>,
    registry: &Registry,
    ram: Option<&mut dyn RamBlocks>,
) -> Result<LoadedState> {
    load_state_as(open, registry, ram, None)
}

/// [`load_state`] naming the file `file` (else the channel name) in header
/// errors.
pub(crate) fn load_state_as(
    mut open: impl FnMut() -> Result<QemuFile>,
    registry: &Registry,
    ram: Option<&mut dyn RamBlocks>,
    file: Option<&str>,
) -> Result<LoadedState> {
    let mut f = open()?;
    let file = file.map_or_else(|| f.name().to_owned(), str::to_owned);
    let Some(ram) = ram else {
        return load_device_state_as(&mut f, registry, &file);
    };
    registry.check_no_ram_entry()?;

    // Pass 1: check everything, skip page data.
    let local = ram.blocks();
    let ignore_shared = ram.ignore_shared();
    let mut check = RamLoader::new(local.clone(), ignore_shared, None)?;
    let (loaded, end) = parse_stream(&mut f, registry, Some(&mut check), &file)?;
    // Kept alive across the passes, so a pass 2 reading these very bytes is known.
    let checked = f.shared_bytes().cloned();
    drop(f);
    let copied = loaded
        .ram()
        .is_some_and(|r| r.blocks.iter().any(|b| !b.ignored));
    let Some((end_offset, end_crc)) = end.filter(|_| copied) else {
        return Ok(loaded);
    };

    // Pass 2: the same bytes again, now writing guest RAM.
    let mut f = open()?;
    for (block, ranges) in check.take_page_ranges().iter().enumerate() {
        if !ranges.is_empty() {
            ram.will_write(block, ranges)
                .map_err(|source| Error::RamAccess {
                    op: "prepare",
                    idstr: local
                        .get(block)
                        .map(|d| d.idstr.clone())
                        .unwrap_or_default(),
                    offset: ranges.first().map_or(0, |r| r.start),
                    source,
                })?;
        }
    }
    let written = write_pages(
        &mut f,
        checked.as_ref(),
        local,
        ignore_shared,
        ram,
        &file,
        (end_offset, end_crc),
    );
    // A file read in place that changed under this pass: its error, whatever the pass
    // made of the bytes.
    verify_input(&f)?;
    written.map(|()| loaded)
}

/// Pass 2 of [`load_state_as`] on `f`: the `ram` section's pages into `ram`, checking
/// that the bytes are the ones pass 1 checked (`checked`, or `end` = offset and CRC-32
/// after the `ram` section).
fn write_pages(
    f: &mut QemuFile,
    checked: Option<&Arc<dyn SharedInput>>,
    local: Vec<RamBlockDesc>,
    ignore_shared: bool,
    ram: &mut dyn RamBlocks,
    file: &str,
    (end_offset, end_crc): (u64, u32),
) -> Result<()> {
    f.reset_crc();
    // The same bytes pass 1 hashed (held in memory, or a file mapped under a lease that
    // `verify_input` checks): hashing them again proves nothing.
    let same = matches!((checked, f.shared_bytes()), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
    if same {
        f.disable_crc();
    }
    read_stream_header(f).map_err(|e| Error::NotVmstateFile {
        file: file.to_owned(),
        source: Box::new(e),
    })?;
    let mut writer = RamLoader::new(local, ignore_shared, Some(ram))?;
    if let Err(e) = writer.configuration(f) {
        return Err(Error::StreamChanged {
            offset: f.position(),
            source: Some(Box::new(e)),
        });
    }
    while !writer.is_done() {
        let offset = f.position();
        let read =
            get(f, "section type", QemuFile::get_u8).and_then(|ty| writer.section(f, ty, offset));
        match read {
            Ok(()) => {}
            // The VMM failed to write: its error, as is.
            Err(e) if is_ram_access(&e) => return Err(e),
            // Pass 1 accepted these bytes: they are not the same any more.
            Err(e) => {
                return Err(Error::StreamChanged {
                    offset: f.position(),
                    source: Some(Box::new(e)),
                });
            }
        }
    }
    if f.position() != end_offset || (!same && f.crc32() != end_crc) {
        return Err(Error::StreamChanged {
            offset: f.position(),
            source: None,
        });
    }
    Ok(())
}

/// Whether `e` is (wraps) a [`RamBlocks`] failure.
fn is_ram_access(e: &Error) -> bool {
    match e {
        Error::RamAccess { .. } => true,
        Error::LoadSection { source, .. } | Error::LoadSectionPart { source, .. } => {
            is_ram_access(source)
        }
        _ => false,
    }
}
