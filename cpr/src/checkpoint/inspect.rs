//! Checking and describing a checkpoint without a machine to load it into: what
//! `cpr-vm inspect` runs. The same loader and rules as [`parse`], against the
//! checkpoint's own `cpr-machine` section instead of a VM's shape.

use super::*;

/// What kind of checkpoint a stream is, by what wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// V7's `cpr-save`: device state only, guest RAM left in place (loaded by `cpr-load`).
    CprSave,
    /// Mainline `migrate` with every RAM block left in place (`x-ignore-shared` on shared
    /// RAM): a `ram` section that lists the blocks and carries no page.
    MainlineInPlace,
    /// Mainline `migrate` with RAM copied into the stream (RAM that is not shared, or
    /// `x-ignore-shared` off).
    MainlineCopied,
}

impl CheckpointKind {
    /// A short name (`cpr-save`, `mainline-in-place`, `mainline-copied`).
    pub fn name(self) -> &'static str {
        match self {
            CheckpointKind::CprSave => "cpr-save",
            CheckpointKind::MainlineInPlace => "mainline-in-place",
            CheckpointKind::MainlineCopied => "mainline-copied",
        }
    }
}

/// A checkpoint read and checked as the loaders check it, without a machine to load it
/// into ([`inspect`]).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// What wrote it.
    pub kind: CheckpointKind,
    /// The machine it was taken of (its `cpr-machine` section).
    pub layout: MachineLayout,
    /// The run state it was taken in (its `globalstate` section).
    pub runstate: RunState,
    /// Its device sections, in stream order.
    pub sections: Vec<cpr_savevm::LoadedSection>,
    /// Its `ram` section (mainline streams).
    pub ram: Option<cpr_savevm::RamSummary>,
}

/// A [`cpr_savevm::RamBlocks`] of the shape a stream announces that drops every page:
/// what [`inspect`] loads into when it is only checking.
struct NoRam(cpr_savevm::StreamRamLayout);

impl cpr_savevm::RamBlocks for NoRam {
    fn blocks(&self) -> Vec<cpr_savevm::RamBlockDesc> {
        self.0.blocks.clone()
    }
    fn ignore_shared(&self) -> bool {
        self.0.ignore_shared
    }
    fn read(&self, _: usize, _: u64, _: &mut [u8]) -> Result<(), cpr_savevm::BoxError> {
        Err("a checkpoint being inspected has no RAM to read".into())
    }
    fn write(&mut self, _: usize, _: u64, _: &[u8]) -> Result<(), cpr_savevm::BoxError> {
        Ok(())
    }
    fn zero(&mut self, _: usize, _: u64, _: u64) -> Result<(), cpr_savevm::BoxError> {
        Ok(())
    }
    fn populated(
        &self,
        _: usize,
    ) -> Result<Option<Vec<std::ops::Range<u64>>>, cpr_savevm::BoxError> {
        Ok(None)
    }
}

/// The RAM blocks a checkpoint stream carries (see [`cpr_savevm::ram_blocks`]), each
/// marked kept in place or copied as the stream's vmdesc says; empty for a `cpr-save`
/// stream. The shape to give [`inspect`]'s `ram` for extracting RAM.
///
/// The `ram` section lists blocks without saying which stay in place (QEMU records that
/// in the vmdesc at the end): a dry run of the loader against the list finds out, one
/// block at a time, from the loader's own [`cpr_savevm::Error::RamIgnoredMismatch`].
pub fn stream_ram_blocks(
    mut open: impl FnMut() -> cpr_savevm::Result<cpr_migration_file::QemuFile>,
) -> cpr_savevm::Result<cpr_savevm::StreamRamLayout> {
    let Some(mut layout) = cpr_savevm::ram_blocks(&mut open()?)? else {
        return Ok(cpr_savevm::StreamRamLayout::default());
    };
    let registry = registry(None, None)?;
    for _ in 0..=layout.blocks.len() {
        let mut dry = NoRam(layout.clone());
        match cpr_savevm::load_state(&mut open, &registry, Some(&mut dry)) {
            Err(cpr_savevm::Error::RamIgnoredMismatch {
                idstr,
                stream_ignored,
                ..
            }) => match layout.blocks.iter_mut().find(|b| b.idstr == idstr) {
                Some(b) if b.ignored != stream_ignored => b.ignored = stream_ignored,
                _ => break,
            },
            // Anything else is for `inspect` to report, with the list as it stands.
            _ => break,
        }
    }
    Ok(layout)
}

/// Reads and checks a whole checkpoint as `cpr-load` and `migrate-incoming` do before they
/// change anything (framing, versions, every section known and present, the saver's value
/// rules ([`check_saveable`]), vmdesc, checksum; a copied `ram` section read twice, the
/// second time writing pages), but against the checkpoint's own machine shape instead of a
/// VM's. `open` gives the stream from its start, as for [`parse`].
///
/// The pages of copied RAM go to `ram` if given (which must have the shape
/// [`stream_ram_blocks`] reads, and receives nothing unless the whole stream checked out),
/// and are dropped otherwise.
pub fn inspect(
    mut open: impl FnMut() -> cpr_savevm::Result<cpr_migration_file::QemuFile>,
    ram: Option<&mut dyn cpr_savevm::RamBlocks>,
) -> cpr_savevm::Result<Inspection> {
    let kind = cpr_savevm::probe(&mut open()?)?;
    let mut dropped = NoRam(cpr_savevm::StreamRamLayout::default());
    let ram: Option<&mut dyn cpr_savevm::RamBlocks> = match ram {
        _ if !kind.has_ram() => None,
        Some(ram) => Some(ram),
        None => {
            dropped.0 = stream_ram_blocks(&mut open)?;
            Some(&mut dropped)
        }
    };
    let registry = registry(None, None)?;
    let mut loaded = cpr_savevm::load_state(open, &registry, ram)?;
    let ram = loaded.ram().cloned();
    let kind = match &ram {
        None => CheckpointKind::CprSave,
        Some(r) if r.blocks.iter().all(|b| b.ignored) => CheckpointKind::MainlineInPlace,
        Some(_) => CheckpointKind::MainlineCopied,
    };
    Ok(Inspection {
        kind,
        sections: loaded.sections().cloned().collect(),
        ram,
        layout: loaded.take(MachineLayout::NAME, 0)?,
        runstate: loaded
            .take::<GlobalStateSection>(GlobalStateSection::NAME, 0)?
            .0,
    })
}
