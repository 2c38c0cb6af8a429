//! Writing and reading the device-state stream (QEMU's
//! `qemu_save_device_state` and `qemu_loadvm_state_main`), optionally with
//! the `ram` section in front, plus the vmdesc and the checksum trailer
//! this crate adds after EOF.

use std::any::Any;

use cpr_migration_file::QemuFile;

use crate::config::write_configuration;
use crate::consts::*;
use crate::error::{Error, Result};
use crate::handler::{Saved, Staged};
use crate::ram::{RamBlocks, RamLoader, RamSummary, save_ram_section};
use crate::registry::{OnLoad, Registry};
use crate::vmdesc::{self, DeviceDesc, RamDesc, VmDesc, VmsdDesc};
use crate::vmstate::{FieldReader, FieldWriter, VmState};

/// What [`save_state`] (or [`save_device_state`]) wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveStats {
    /// Number of FULL sections written.
    pub sections: usize,
    /// Guest RAM pages whose data was written (0 without RAM).
    pub ram_pages: u64,
    /// Zero pages, written as zero runs (0 without RAM).
    pub ram_zero_pages: u64,
    /// Bytes of the `ram` section, START through END (0 without RAM).
    pub ram_bytes: u64,
    /// Length of the vmdesc JSON.
    pub vmdesc_len: u32,
    /// CRC-32 stored in the trailer.
    pub crc32: u32,
    /// Total bytes written, trailer included.
    pub bytes: u64,
}

/// Write the stream header: be32 magic, be32 version 3.
pub fn write_stream_header(f: &mut QemuFile) {
    f.put_u32(QEMU_VM_FILE_MAGIC);
    f.put_u32(QEMU_VM_FILE_VERSION);
}

/// Read and check the stream header with the generic loader's messages
/// (`Not a migration stream`, `SaveVM v2 format is obsolete...`,
/// `Unsupported migration stream version`).
pub fn read_stream_header(f: &mut QemuFile) -> Result<()> {
    let magic = get(f, "stream magic", QemuFile::get_u32)?;
    if magic != QEMU_VM_FILE_MAGIC {
        return Err(Error::NotAMigrationStream { magic });
    }
    let version = get(f, "stream version", QemuFile::get_u32)?;
    match version {
        QEMU_VM_FILE_VERSION => Ok(()),
        QEMU_VM_FILE_VERSION_COMPAT => Err(Error::ObsoleteStreamVersion { version }),
        _ => Err(Error::UnsupportedStreamVersion { version }),
    }
}

/// `save_section_header` for START/FULL: type, section id, idstr, instance
/// id, version id.
pub fn write_full_header(
    f: &mut QemuFile,
    ty: u8,
    section_id: u32,
    idstr: &str,
    instance_id: u32,
    version_id: u32,
) {
    f.put_u8(ty);
    f.put_u32(section_id);
    f.put_counted_string(idstr);
    f.put_u32(instance_id);
    f.put_u32(version_id);
}

/// `save_section_header` for PART/END: type and section id only.
pub fn write_part_header(f: &mut QemuFile, ty: u8, section_id: u32) {
    f.put_u8(ty);
    f.put_u32(section_id);
}

/// `save_section_footer`: 0x7e + be32 section id.
pub fn write_section_footer(f: &mut QemuFile, section_id: u32) {
    f.put_u8(QEMU_VM_SECTION_FOOTER);
    f.put_u32(section_id);
}

/// The header of a START/FULL section, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullHeader {
    /// Section id.
    pub section_id: u32,
    /// Section idstr.
    pub idstr: String,
    /// Instance id.
    pub instance_id: u32,
    /// Version id of the payload.
    pub version_id: u32,
}

/// Read the rest of a START/FULL header (after the type byte).
pub fn read_full_header(f: &mut QemuFile) -> Result<FullHeader> {
    let section_id = get(f, "section id", QemuFile::get_u32)?;
    let idstr = f
        .get_counted_string()
        .map_err(|source| Error::ReadIdstr { section_id, source })?;
    let instance_id = get(f, "instance id", QemuFile::get_u32)?;
    let version_id = get(f, "version id", QemuFile::get_u32)?;
    Ok(FullHeader {
        section_id,
        idstr,
        instance_id,
        version_id,
    })
}

/// `check_section_footer`.
pub fn check_section_footer(f: &mut QemuFile, idstr: &str, section_id: u32) -> Result<()> {
    let offset = f.position();
    let missing = |found| Error::MissingFooter {
        idstr: idstr.to_owned(),
        found,
        offset,
    };
    match f.get_u8() {
        Ok(QEMU_VM_SECTION_FOOTER) => {}
        Ok(b) => return Err(missing(Some(b))),
        Err(_) => return Err(missing(None)),
    }
    let read = get(f, "section footer id", QemuFile::get_u32)?;
    if read != section_id {
        return Err(Error::FooterMismatch {
            idstr: idstr.to_owned(),
            read,
            expected: section_id,
        });
    }
    Ok(())
}

pub(crate) fn get<T>(
    f: &mut QemuFile,
    what: &'static str,
    read: impl FnOnce(&mut QemuFile) -> cpr_migration_file::Result<T>,
) -> Result<T> {
    let offset = f.position();
    read(f).map_err(|source| Error::Read {
        what,
        offset,
        source,
    })
}

fn io(op: &'static str) -> impl FnOnce(cpr_migration_file::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// V7's `qemu_save_device_state`, plus vmdesc and trailer: magic, version,
/// a FULL section for every needed entry in registry order, EOF, then
/// `0x06` + be32 length + compact vmdesc JSON, then the trailer `"CPRC"` +
/// the CRC-32 of every byte from the magic through the JSON, as 8 lowercase
/// hex digits.
///
/// A handler error stops the save ([`Error::SaveSection`]); the partial
/// stream must be discarded (the path helper does so).
pub fn save_device_state(f: &mut QemuFile, registry: &mut Registry) -> Result<SaveStats> {
    save_state(f, registry, None)
}

/// [`save_device_state`] with guest RAM: when `ram` is given, the
/// configuration section (machine type, `x-ignore-shared` when
/// [`RamBlocks::ignore_shared`]) and the `ram` section (START with the
/// block list, PARTs with pages and zero pages, END; see the
/// [crate docs](crate#the-stream)) come right after magic and version, and
/// the vmdesc describes the configuration and, under `"ram"`, the blocks.
/// Guest RAM is read and written a batch at a time (the writing on a
/// thread of its own): memory use does not grow with it.
///
/// Without `ram` the bytes are exactly [`save_device_state`]'s. A
/// [`RamBlocks::read`] error is [`Error::RamAccess`]; a block list that
/// cannot be written is [`Error::InvalidRamBlock`]; a registry entry
/// `ram` instance 0 is [`Error::DuplicateRegistration`].
pub fn save_state(
    f: &mut QemuFile,
    registry: &mut Registry,
    ram: Option<&dyn RamBlocks>,
) -> Result<SaveStats> {
    if ram.is_some() {
        registry.check_no_ram_entry()?;
    }
    f.reset_crc();
    let start = f.position();
    write_stream_header(f);
    let (configuration, ram) = match ram {
        Some(ram) => (
            Some(write_configuration(f, ram.ignore_shared())?),
            Some(save_ram_section(f, ram, registry.next_section_id())?),
        ),
        None => (None, None),
    };
    let mut devices = Vec::new();
    for entry in &mut registry.entries {
        let info = &entry.info;
        let h = &mut entry.handler;
        let mut payload = Vec::new();
        let mut desc = VmsdDesc::new(h.vmsd_name(), h.version_id());
        let saved = h
            .save(&mut FieldWriter::new(&mut payload, &mut desc))
            .map_err(|e| Error::SaveSection {
                idstr: info.idstr.clone(),
                instance_id: info.instance_id,
                source: Box::new(e),
            })?;
        if saved == Saved::NotNeeded {
            continue;
        }
        write_full_header(
            f,
            QEMU_VM_SECTION_FULL,
            info.section_id,
            &info.idstr,
            info.instance_id,
            h.version_id(),
        );
        f.put_buffer(&payload);
        write_section_footer(f, info.section_id);
        f.check().map_err(io("writing the stream"))?;
        devices.push(DeviceDesc {
            name: info.idstr.clone(),
            instance_id: info.instance_id,
            vmsd: desc,
        });
    }
    f.put_u8(QEMU_VM_EOF);

    let sections = devices.len();
    let json = VmDesc {
        configuration,
        page_size: TARGET_PAGE_SIZE,
        ram: ram.as_ref().map(|r| RamDesc::new(&r.blocks)),
        devices,
    }
    .to_json();
    let vmdesc_len = u32::try_from(json.len())
        .ok()
        .filter(|&l| l <= MAX_VMDESC_LEN)
        .ok_or(Error::VmdescTooLarge {
            len: u32::try_from(json.len()).unwrap_or(u32::MAX),
            max: MAX_VMDESC_LEN,
        })?;
    f.put_u8(QEMU_VM_VMDESCRIPTION);
    f.put_u32(vmdesc_len);
    f.put_buffer(&json);

    let crc32 = f.crc32();
    f.put_buffer(&TRAILER_TAG);
    f.put_buffer(format!("{crc32:08x}").as_bytes());
    f.flush().map_err(io("writing the stream"))?;
    Ok(SaveStats {
        sections,
        ram_pages: ram.as_ref().map_or(0, |r| r.pages),
        ram_zero_pages: ram.as_ref().map_or(0, |r| r.zero_pages),
        ram_bytes: ram.as_ref().map_or(0, |r| r.bytes),
        vmdesc_len,
        crc32,
        bytes: f.position() - start,
    })
}

/// One section parsed from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSection {
    /// Section idstr.
    pub idstr: String,
    /// Instance id.
    pub instance_id: u32,
    /// Section id in the stream.
    pub section_id: u32,
    /// Version of the payload.
    pub version_id: u32,
    /// Offset of the section's type byte.
    pub offset: u64,
    /// Bytes of the section, type byte through footer.
    pub size: u64,
}

struct StagedSection {
    info: LoadedSection,
    entry: usize,
    /// `None` once [`LoadedState::take`] handed it out.
    staged: Option<Staged>,
    /// The fields read, as the saver describes them in the vmdesc.
    desc: VmsdDesc,
}

/// A fully parsed and checked stream, not yet applied.
pub struct LoadedState {
    stamp: (u64, u64),
    sections: Vec<StagedSection>,
    /// The vmdesc as the stream holds it (checked byte for byte); parsed on demand.
    vmdesc_json: Vec<u8>,
    vmdesc: std::sync::OnceLock<serde_json::Value>,
    ram: Option<RamSummary>,
}

impl std::fmt::Debug for LoadedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedState")
            .field("sections", &self.sections().collect::<Vec<_>>())
            .field("ram", &self.ram)
            .finish_non_exhaustive()
    }
}

/// What [`LoadedState::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadStats {
    /// Sections applied, in stream order (not those [taken](LoadedState::take)).
    pub sections: Vec<LoadedSection>,
}

impl LoadedState {
    /// The sections, in stream order.
    pub fn sections(&self) -> impl Iterator<Item = &LoadedSection> {
        self.sections.iter().map(|s| &s.info)
    }

    /// The vmdesc JSON of the stream (parsed the first time it is asked for: the loader
    /// checks it byte for byte, which needs no parsing).
    pub fn vmdesc(&self) -> &serde_json::Value {
        self.vmdesc.get_or_init(|| {
            serde_json::from_slice(&self.vmdesc_json).unwrap_or(serde_json::Value::Null)
        })
    }

    /// The `ram` section, when loaded with [`load_state`](crate::load_state) and RAM.
    pub fn ram(&self) -> Option<&RamSummary> {
        self.ram.as_ref()
    }

    /// The parsed state of a section, before it is applied (e.g. to read
    /// `globalstate`'s runstate). `T` is the handler's staged type (the
    /// [`VmState`](crate::VmState) for a [`Persist`](crate::Persist)
    /// component).
    pub fn staged<T: Any>(&self, idstr: &str, instance_id: u32) -> Option<&T> {
        self.sections
            .iter()
            .find(|s| s.info.instance_id == instance_id && s.info.idstr == idstr)
            .and_then(|s| s.staged.as_ref()?.downcast_ref())
    }

    /// Hands out the parsed state of a section, which [`apply`](Self::apply)
    /// then leaves out: for a caller that builds its own state from the
    /// stream's values (sections registered as
    /// [`ValueSection`](crate::ValueSection)s) instead of applying them to
    /// components. `T` is the handler's staged type (the
    /// [`VmState`](crate::VmState) of a [`ValueSection`](crate::ValueSection)
    /// or [`Persist`](crate::Persist) component).
    ///
    /// A section that is not in the stream, or was already taken, is
    /// [`Error::NotLoaded`]; one staged as another type is
    /// [`Error::StagedType`] and stays where it is.
    pub fn take<T: VmState + 'static>(&mut self, idstr: &str, instance_id: u32) -> Result<T> {
        let not_loaded = || Error::NotLoaded {
            idstr: idstr.to_owned(),
            instance_id,
        };
        let slot = self
            .sections
            .iter_mut()
            .find(|s| s.info.instance_id == instance_id && s.info.idstr == idstr)
            .map(|s| &mut s.staged)
            .ok_or_else(not_loaded)?;
        let staged = slot.take().ok_or_else(not_loaded)?;
        match staged.downcast::<T>() {
            Ok(value) => Ok(*value),
            Err(staged) => {
                *slot = Some(staged);
                Err(Error::StagedType { vmsd: T::NAME })
            }
        }
    }

    /// Apply every section, in stream order, to the registry it was parsed
    /// against (unchanged since: else [`Error::RegistryMismatch`] and
    /// nothing is applied), except those [taken](Self::take). Stops at the first handler error
    /// ([`Error::ApplySection`]); all validation happened at parse time, so
    /// only the component itself (e.g. a KVM ioctl) can fail here.
    pub fn apply(self, registry: &mut Registry) -> Result<LoadStats> {
        if self.stamp != registry.stamp() {
            return Err(Error::RegistryMismatch {
                parsed: self.stamp,
                applied: registry.stamp(),
            });
        }
        let mut applied = Vec::with_capacity(self.sections.len());
        for s in self.sections {
            let Some(staged) = s.staged else {
                continue;
            };
            let Some(entry) = registry.entries.get_mut(s.entry) else {
                return Err(Error::RegistryMismatch {
                    parsed: self.stamp,
                    applied: registry.stamp(),
                });
            };
            entry
                .handler
                .apply(staged)
                .map_err(|e| Error::ApplySection {
                    idstr: s.info.idstr.clone(),
                    instance_id: s.info.instance_id,
                    source: Box::new(e),
                })?;
            applied.push(s.info);
        }
        Ok(LoadStats { sections: applied })
    }
}

/// Parse and check a whole device-state stream against `registry` without
/// changing any state: header (a bad one is `<file> is not a vmstate file`,
/// `file` being the channel name), FULL sections to EOF (every section
/// known, versions, footers, no duplicates, every [`OnLoad::Required`] entry
/// present), the vmdesc, the checksum trailer, and end of file. A `ram`
/// section is refused here ([`Error::UnexpectedSectionType`]): load it with
/// [`load_state`](crate::load_state).
pub fn load_device_state(f: &mut QemuFile, registry: &Registry) -> Result<LoadedState> {
    let file = f.name().to_owned();
    load_device_state_as(f, registry, &file)
}

/// [`load_device_state`] naming the file `file` in header errors
/// (`<file> is not a vmstate file`), for a VMM that opened `f` from a path.
pub fn load_device_state_as(
    f: &mut QemuFile,
    registry: &Registry,
    file: &str,
) -> Result<LoadedState> {
    parse_stream(f, registry, None, file).map(|(loaded, _)| loaded)
}

/// Parse a whole stream; with `ram`, its `ram` section too. Also returns
/// (offset, running CRC-32) just after the `ram` section's END.
///
/// A file read in place that changed meanwhile is [`Error::InputChanged`], whatever the
/// parse made of its bytes.
pub(crate) fn parse_stream(
    f: &mut QemuFile,
    registry: &Registry,
    ram: Option<&mut RamLoader<'_>>,
    file: &str,
) -> Result<(LoadedState, Option<(u64, u32)>)> {
    let checksum = shared_checksum(f);
    if checksum.is_some() {
        // Hashed already, in parallel: the parse only reads.
        f.disable_crc();
    }
    let parsed = parse_stream_bytes(f, registry, ram, file, checksum);
    verify_input(f)?;
    parsed
}

/// Inputs smaller than this are hashed as they are parsed.
const PARALLEL_CRC_MIN: usize = 4 << 20;

/// For a large input read in place ([`QemuFile::shared_bytes`]): the CRC-32 of all of it
/// but a trailer's length at the end (where a well-formed stream's trailer is), hashed in
/// two halves on two threads and combined; also faults a mapped file in on both. `None`
/// for other inputs, which hash as they are read.
fn shared_checksum(f: &QemuFile) -> Option<(u64, u32)> {
    let bytes = f.shared_bytes()?.bytes();
    let body = bytes.get(..bytes.len().checked_sub(TRAILER_LEN)?)?;
    if body.len() < PARALLEL_CRC_MIN {
        return None;
    }
    let (first, second) = body.split_at(body.len() / 2);
    let hash = |b: &[u8]| {
        let mut h = crc32fast::Hasher::new();
        h.update(b);
        h
    };
    let crc = std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("stream-crc".into())
            .spawn_scoped(s, || hash(second));
        let mut h = hash(first);
        match other.ok().map(|t| t.join()) {
            Some(Ok(h2)) => h.combine(&h2),
            // No second thread (or it died): hash the second half here.
            _ => h.update(second),
        }
        h
    });
    Some((body.len() as u64, crc.finalize()))
}

/// [`Error::InputChanged`] if `f` reads a file in place that changed under it.
pub(crate) fn verify_input(f: &QemuFile) -> Result<()> {
    f.verify_input().map_err(|source| Error::InputChanged {
        offset: f.position(),
        source,
    })
}

fn parse_stream_bytes(
    f: &mut QemuFile,
    registry: &Registry,
    mut ram: Option<&mut RamLoader<'_>>,
    file: &str,
    checksum: Option<(u64, u32)>,
) -> Result<(LoadedState, Option<(u64, u32)>)> {
    f.reset_crc();
    read_stream_header(f).map_err(|e| Error::NotVmstateFile {
        file: file.to_owned(),
        source: Box::new(e),
    })?;
    let configuration = match ram.as_deref_mut() {
        Some(r) => Some(r.configuration(f)?),
        None => None,
    };
    let (sections, ram_end) = load_sections(f, registry, ram.as_deref_mut())?;

    for entry in &registry.entries {
        let info = &entry.info;
        let present = sections
            .iter()
            .any(|s| s.info.instance_id == info.instance_id && s.info.idstr == info.idstr);
        if info.on_load == OnLoad::Required && !present {
            return Err(Error::MissingSection {
                idstr: info.idstr.clone(),
                instance_id: info.instance_id,
            });
        }
    }

    let offset = f.position();
    let ty = get(f, "vmdesc", QemuFile::get_u8)?;
    if ty != QEMU_VM_VMDESCRIPTION {
        return Err(Error::MissingVmdesc { found: ty, offset });
    }
    let len = get(f, "vmdesc length", QemuFile::get_u32)?;
    if len > MAX_VMDESC_LEN {
        return Err(Error::VmdescTooLarge {
            len,
            max: MAX_VMDESC_LEN,
        });
    }
    let json_offset = f.position();
    let mut json = vec![0; len as usize];
    get(f, "vmdesc", |f| f.get_buffer(&mut json))?;
    let devices: Vec<DeviceDesc> = sections
        .iter()
        .map(|s| DeviceDesc {
            name: s.info.idstr.clone(),
            instance_id: s.info.instance_id,
            vmsd: s.desc.clone(),
        })
        .collect();
    let ram = ram.and_then(|r| r.summary());
    let ram_blocks = ram.as_ref().map(|r| r.blocks.as_slice());
    vmdesc::check(
        &json,
        json_offset,
        configuration.as_ref(),
        &devices,
        ram_blocks,
    )?;

    check_trailer(f, checksum)?;
    let loaded = LoadedState {
        stamp: registry.stamp(),
        sections,
        vmdesc_json: json,
        vmdesc: std::sync::OnceLock::new(),
        ram,
    };
    if let Some(check) = &registry.stream_check {
        check(&loaded)?;
    }
    Ok((loaded, ram_end))
}

type Sections = (Vec<StagedSection>, Option<(u64, u32)>);

fn load_sections(
    f: &mut QemuFile,
    registry: &Registry,
    mut ram: Option<&mut RamLoader<'_>>,
) -> Result<Sections> {
    let mut sections: Vec<StagedSection> = Vec::new();
    let mut ram_end = None;
    loop {
        let offset = f.position();
        let ty = get(f, "section type", QemuFile::get_u8)?;
        // With RAM: START/PART/END of `ram` first, then FULL sections.
        if let Some(r) = ram.as_deref_mut() {
            let misplaced = match ty {
                QEMU_VM_SECTION_START | QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END => {
                    !sections.is_empty()
                }
                QEMU_VM_SECTION_FULL => r.is_open(),
                QEMU_VM_EOF if r.is_idle() => return Err(Error::MissingRamSection),
                QEMU_VM_EOF => r.is_open(),
                _ => false,
            };
            if misplaced {
                return Err(Error::RamSectionOrder {
                    ty,
                    name: section_type_name(ty).unwrap_or("?"),
                    offset,
                });
            }
            if matches!(
                ty,
                QEMU_VM_SECTION_START | QEMU_VM_SECTION_PART | QEMU_VM_SECTION_END
            ) {
                r.section(f, ty, offset)?;
                if r.is_done() {
                    ram_end = Some((f.position(), f.crc32()));
                }
                continue;
            }
        }
        match ty {
            QEMU_VM_EOF => return Ok((sections, ram_end)),
            QEMU_VM_SECTION_FULL => {
                let s = load_full_section(f, registry, offset)?;
                if sections.iter().any(|t| {
                    t.info.instance_id == s.info.instance_id && t.info.idstr == s.info.idstr
                }) {
                    return Err(Error::DuplicateSection {
                        idstr: s.info.idstr,
                        instance_id: s.info.instance_id,
                        offset,
                    });
                }
                sections.push(s);
            }
            // START/PART/END (live sections; `ram` is read above when RAM
            // was given), COMMAND, CONFIGURATION, ...: QEMU knows them, a
            // V7 device-state stream never holds them.
            _ => {
                return Err(match section_type_name(ty) {
                    Some(name) => Error::UnexpectedSectionType { ty, name, offset },
                    None => Error::UnknownSectionType { ty, offset },
                });
            }
        }
    }
}

fn load_full_section(f: &mut QemuFile, registry: &Registry, offset: u64) -> Result<StagedSection> {
    let hdr = read_full_header(f)?;
    let Some(index) = registry.find(&hdr.idstr, hdr.instance_id) else {
        return Err(Error::UnknownSection {
            idstr: hdr.idstr,
            instance_id: hdr.instance_id,
            offset,
        });
    };
    let Some(entry) = registry.entries.get(index) else {
        return Err(Error::UnknownSection {
            idstr: hdr.idstr,
            instance_id: hdr.instance_id,
            offset,
        });
    };
    let h = &entry.handler;
    if hdr.version_id > h.version_id() {
        return Err(Error::UnsupportedSectionVersion {
            idstr: hdr.idstr,
            version_id: hdr.version_id,
            local_version_id: h.version_id(),
        });
    }
    let parse = |f: &mut QemuFile| {
        if hdr.version_id < h.minimum_version_id() {
            return Err(Error::VersionTooOld {
                vmsd: h.vmsd_name().to_owned(),
                version_id: hdr.version_id,
                minimum_version_id: h.minimum_version_id(),
            });
        }
        let mut r = FieldReader::new(f, h.vmsd_name(), hdr.version_id);
        let staged = h.parse(&mut r, hdr.version_id)?;
        Ok((staged, r.into_description()))
    };
    let (staged, desc) = parse(f).map_err(|e| Error::LoadSection {
        idstr: hdr.idstr.clone(),
        instance_id: hdr.instance_id,
        section_id: hdr.section_id,
        source: Box::new(e),
    })?;
    check_section_footer(f, &hdr.idstr, hdr.section_id)?;
    Ok(StagedSection {
        info: LoadedSection {
            idstr: hdr.idstr,
            instance_id: hdr.instance_id,
            section_id: hdr.section_id,
            version_id: hdr.version_id,
            offset,
            size: f.position() - offset,
        },
        entry: index,
        staged: Some(staged),
        desc,
    })
}

/// The trailer at `f`'s position: its checksum against the bytes before it (`f`'s running
/// CRC-32, or `checksum`'s (length, CRC-32) of a shared input's first bytes).
fn check_trailer(f: &mut QemuFile, checksum: Option<(u64, u32)>) -> Result<()> {
    let computed = match checksum {
        None => f.crc32(),
        Some((len, crc)) if len == f.position() => crc,
        // A trailer where the whole-input hash did not expect one: hash what precedes it.
        Some(_) => {
            let end = usize::try_from(f.position()).unwrap_or(usize::MAX);
            let bytes = f
                .shared_bytes()
                .map(|b| b.bytes().get(..end).unwrap_or_default());
            crc32fast::hash(bytes.unwrap_or_default())
        }
    };
    let offset = f.position();
    let mut tag = [0u8; 4];
    if f.get_buffer(&mut tag).is_err() || tag != TRAILER_TAG {
        let found = if f.error().is_some() {
            Vec::new()
        } else {
            tag.to_vec()
        };
        return Err(Error::MissingTrailer { offset, found });
    }
    let mut hex = [0u8; TRAILER_LEN - TRAILER_TAG.len()];
    get(f, "trailer checksum", |f| f.get_buffer(&mut hex))?;
    // Exactly the saver's 8 lowercase hex digits.
    let stored = std::str::from_utf8(&hex)
        .ok()
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .and_then(|h| u32::from_str_radix(h, 16).ok());
    let Some(stored) = stored else {
        return Err(Error::MissingTrailer {
            offset,
            found: [&tag[..], &hex].concat(),
        });
    };
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    let end = f.position();
    match f.at_eof() {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::TrailingData { offset: end }),
        Err(source) => Err(Error::Read {
            what: "end of file",
            offset: end,
            source,
        }),
    }
}
