//! The crate's single error type.
//!
//! Display texts use QEMU's wording (savevm.c / vmstate.c) where QEMU has
//! one, never repeat the `#[source]`, and every variant carries the
//! structured context a caller or test branches on: section idstr,
//! instance and section ids, stream and local versions, stream offsets.

use cpr_migration_file::Error as FileError;

/// A boxed error from a component's own code (a [`Persist`](crate::Persist)
/// implementation, a device).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while saving, parsing or applying a
/// device-state stream, or while registering sections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ------------------------------------------------------------ stream head
    /// Bad magic (`qemu_loadvm_state`).
    #[error("Not a migration stream")]
    NotAMigrationStream {
        /// The four bytes read instead of `QEVM`.
        magic: u32,
    },
    /// Stream version 2 (`QEMU_VM_FILE_VERSION_COMPAT`).
    #[error("SaveVM v2 format is obsolete and don't work anymore")]
    ObsoleteStreamVersion {
        /// The version read (2).
        version: u32,
    },
    /// Any other stream version but 3.
    #[error("Unsupported migration stream version")]
    UnsupportedStreamVersion {
        /// The version read.
        version: u32,
    },
    /// V7 `cpr-load`'s report for a bad header; the source says what was
    /// wrong.
    #[error("{file} is not a vmstate file")]
    NotVmstateFile {
        /// The file (path or channel name).
        file: String,
        /// The header error.
        #[source]
        source: Box<Error>,
    },

    // -------------------------------------------------------- section framing
    /// Reading a framing element failed (short stream or I/O error).
    #[error("failed to read {what} at offset {offset}")]
    Read {
        /// Which element: "section type", "section id", "footer", ...
        what: &'static str,
        /// Stream offset where the element starts.
        offset: u64,
        /// The file error.
        #[source]
        source: FileError,
    },
    /// The idstr of a START/FULL section could not be read.
    #[error("Unable to read ID string for section {section_id}")]
    ReadIdstr {
        /// The section id just read.
        section_id: u32,
        /// The file error.
        #[source]
        source: FileError,
    },
    /// No registered entry has this (idstr, instance id).
    #[error(
        "Unknown savevm section or instance '{idstr}' {instance_id}. Make sure that your current VM setup matches your saved VM setup, including any hotplugged devices"
    )]
    UnknownSection {
        /// The section's idstr from the stream.
        idstr: String,
        /// The instance id from the stream.
        instance_id: u32,
        /// Offset of the section's type byte.
        offset: u64,
    },
    /// The stream's section version is newer than the local handler.
    #[error("savevm: unsupported version {version_id} for '{idstr}' v{local_version_id}")]
    UnsupportedSectionVersion {
        /// The section's idstr.
        idstr: String,
        /// Version in the stream.
        version_id: u32,
        /// The local handler's version.
        local_version_id: u32,
    },
    /// The byte after a section's payload is not `0x7e`.
    #[error("Missing section footer for {idstr}")]
    MissingFooter {
        /// The section's idstr.
        idstr: String,
        /// The byte found instead (`None`: the stream ended).
        found: Option<u8>,
        /// Offset where the footer was expected.
        offset: u64,
    },
    /// The footer's section id differs from the header's.
    #[error(
        "Mismatched section id in footer for {idstr} - read 0x{read:x} expected 0x{expected:x}"
    )]
    FooterMismatch {
        /// The section's idstr.
        idstr: String,
        /// Section id in the footer.
        read: u32,
        /// Section id in the header.
        expected: u32,
    },
    /// A section type byte QEMU does not know.
    #[error("Unknown savevm section type {ty}")]
    UnknownSectionType {
        /// The byte read.
        ty: u8,
        /// Its offset.
        offset: u64,
    },
    /// A section type QEMU knows, but that a V7 device-state stream never
    /// holds (START/PART/END/COMMAND/CONFIGURATION/...; a stream with RAM
    /// holds a configuration section first, then the `ram` section).
    #[error("section type {ty} ({name}) is not valid in a device-state stream")]
    UnexpectedSectionType {
        /// The byte read.
        ty: u8,
        /// Its QEMU name.
        name: &'static str,
        /// Its offset.
        offset: u64,
    },
    /// Loading a section's payload failed.
    #[error("error while loading state for instance 0x{instance_id:x} of device '{idstr}'")]
    LoadSection {
        /// The section's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
        /// Its section id in the stream.
        section_id: u32,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// The same (idstr, instance) appears twice in one stream.
    #[error("section '{idstr}' instance {instance_id} appears twice in the stream")]
    DuplicateSection {
        /// The section's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
        /// Offset of the second occurrence.
        offset: u64,
    },
    /// An entry registered as required on load is absent from the stream.
    #[error("required section '{idstr}' instance {instance_id} is missing from the stream")]
    MissingSection {
        /// The entry's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
    },

    // ------------------------------------------------ configuration section
    /// A stream with RAM does not open with the configuration section
    /// (`qemu_loadvm_state` when the machine sends one).
    #[error("Configuration section missing")]
    MissingConfiguration {
        /// The section type byte found instead.
        found: u8,
        /// Its offset.
        offset: u64,
    },
    /// The configuration names another machine type
    /// (`configuration_post_load`).
    #[error("Machine type received is '{received}' and local is '{local}'")]
    MachineTypeMismatch {
        /// The machine type in the stream.
        received: String,
        /// This side's ([`MACHINE_TYPE`](crate::consts::MACHINE_TYPE)).
        local: &'static str,
    },
    /// A validated capability is on at one end only
    /// (`configuration_validate_capabilities`).
    #[error(
        "Capability {capability} is {}, but received capability is {}",
        on_off(*.local),
        on_off(*.received)
    )]
    CapabilityMismatch {
        /// The capability (`x-ignore-shared`).
        capability: &'static str,
        /// Whether it is on here.
        local: bool,
        /// Whether the stream announces it.
        received: bool,
    },
    /// The configuration announces a capability this loader does not know
    /// (`get_capability`).
    #[error("Received unknown capability {name}")]
    UnknownCapability {
        /// The capability's name in the stream.
        name: String,
    },

    // ------------------------------------------------------- vmstate payload
    /// `vmstate_load_state`: stream version above the local version.
    #[error(
        "{vmsd}: incoming version_id {version_id} is too new for local version_id {local_version_id}"
    )]
    VersionTooNew {
        /// The vmsd name.
        vmsd: String,
        /// Version in the stream.
        version_id: u32,
        /// Local version.
        local_version_id: u32,
    },
    /// `vmstate_load_state`: stream version below the local minimum.
    #[error(
        "{vmsd}: incoming version_id {version_id} is too old for local minimum version_id  {minimum_version_id}"
    )]
    VersionTooOld {
        /// The vmsd name.
        vmsd: String,
        /// Version in the stream.
        version_id: u32,
        /// Local minimum version.
        minimum_version_id: u32,
    },
    /// A field could not be read (`Failed to load %s:%s`).
    #[error("Failed to load {vmsd}:{field}")]
    Field {
        /// The vmsd name.
        vmsd: String,
        /// The field name.
        field: &'static str,
        /// The file error.
        #[source]
        source: FileError,
    },
    /// A `bool` field held a byte other than 0 or 1.
    #[error("{vmsd}:{field}: invalid bool byte 0x{value:02x}")]
    InvalidBool {
        /// The vmsd name.
        vmsd: String,
        /// The field name.
        field: &'static str,
        /// The byte read.
        value: u8,
    },
    /// A counted array is longer than the reader allows.
    #[error("{vmsd}:{field}: array of {len} elements exceeds the limit of {max}")]
    ArrayTooLong {
        /// The vmsd name.
        vmsd: String,
        /// The field name.
        field: &'static str,
        /// Count in the stream (or given to the writer).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A subsection with the parent's name prefix that the parent does not
    /// declare (QEMU's `-ENOENT`).
    #[error("unknown subsection '{name}' of '{parent}'")]
    UnknownSubsection {
        /// The parent vmsd name.
        parent: String,
        /// The subsection name in the stream.
        name: String,
        /// Offset of its 0x05 byte.
        offset: u64,
    },
    /// A subsection type whose name is not `<parent>/...`.
    #[error("subsection name '{name}' does not start with '{parent}/'")]
    SubsectionName {
        /// The parent vmsd name.
        parent: &'static str,
        /// The offending subsection name.
        name: &'static str,
    },
    /// A name written as a counted string is empty or longer than 255
    /// bytes.
    #[error("name '{name}' is {len} bytes long; a counted string holds 1 to 255")]
    BadName {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A state's own validation failed (`load`/`post_load`/`pre_save`).
    #[error("{vmsd}: {reason}")]
    InvalidState {
        /// The vmsd name.
        vmsd: String,
        /// What is wrong.
        reason: String,
    },
    /// A component hook returned an error.
    #[error("{vmsd}: {hook} failed")]
    Component {
        /// The vmsd name.
        vmsd: &'static str,
        /// Which hook: `save_state`, `restore_state`, ...
        hook: &'static str,
        /// The component's error.
        #[source]
        source: BoxError,
    },

    // ------------------------------------------------------------- registry
    /// (idstr, instance) is already registered.
    #[error("section '{idstr}' instance {instance_id} is already registered")]
    DuplicateRegistration {
        /// The idstr.
        idstr: String,
        /// The instance id.
        instance_id: u32,
    },
    /// Instance id `0xffffffff` is QEMU's "any" marker and cannot be used.
    #[error("instance id 0x{instance_id:x} of '{idstr}' is reserved")]
    ReservedInstanceId {
        /// The idstr.
        idstr: String,
        /// The reserved id.
        instance_id: u32,
    },
    /// Every instance id of this idstr is taken.
    #[error("no free instance id left for '{idstr}'")]
    InstanceIdsExhausted {
        /// The idstr.
        idstr: String,
    },

    // ------------------------------------------------------- save side
    /// A handler failed while saving its section.
    #[error("failed to save state for instance 0x{instance_id:x} of device '{idstr}'")]
    SaveSection {
        /// The section's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// The file reported an error while writing (`QERR_IO_ERROR`).
    #[error("I/O error while {op}")]
    Io {
        /// What was being done: "writing the stream", "committing", ...
        op: &'static str,
        /// The file error.
        #[source]
        source: FileError,
    },

    // ------------------------------------------------- after EOF (beyond QEMU)
    /// EOF is not followed by a vmdesc (fatal here, a warning in QEMU).
    #[error("Expected vmdescription section, but got {found}")]
    MissingVmdesc {
        /// The byte found.
        found: u8,
        /// Its offset.
        offset: u64,
    },
    /// The vmdesc length is over [`MAX_VMDESC_LEN`](crate::consts::MAX_VMDESC_LEN).
    #[error("vmdesc of {len} bytes exceeds the limit of {max}")]
    VmdescTooLarge {
        /// Length in the stream.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The vmdesc is not valid JSON of the expected shape.
    #[error("vmdesc at offset {offset} is not valid JSON")]
    VmdescJson {
        /// Offset of the JSON text.
        offset: u64,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The vmdesc does not list the sections the stream holds.
    #[error("vmdesc does not match the stream: {reason}")]
    VmdescMismatch {
        /// What differs.
        reason: String,
    },
    /// The checksum trailer is absent, has a wrong tag, or its checksum is
    /// not 8 lowercase hex digits.
    #[error("missing checksum trailer at offset {offset}")]
    MissingTrailer {
        /// Where the trailer was expected.
        offset: u64,
        /// The bytes found instead (fewer than the trailer's at end of file).
        found: Vec<u8>,
    },
    /// The trailer's CRC-32 does not match the stream.
    #[error("checksum mismatch: trailer holds 0x{stored:08x}, stream hashes to 0x{computed:08x}")]
    ChecksumMismatch {
        /// CRC-32 stored in the trailer.
        stored: u32,
        /// CRC-32 of magic through vmdesc as read.
        computed: u32,
    },
    /// Bytes follow the trailer.
    #[error("unexpected data after the checksum trailer at offset {offset}")]
    TrailingData {
        /// Offset of the first extra byte.
        offset: u64,
    },

    // ----------------------------------------------------------- ram section
    /// `qemu_loadvm_section_part_end`: a PART/END section id that no START
    /// opened.
    #[error("Unknown savevm section {section_id}")]
    UnknownSectionId {
        /// The section id read.
        section_id: u32,
        /// Offset of the section's type byte.
        offset: u64,
    },
    /// Loading a PART/END section failed.
    #[error("error while loading state section id {section_id}({idstr})")]
    LoadSectionPart {
        /// The section id.
        section_id: u32,
        /// The idstr of the section it continues.
        idstr: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A `ram` START/PART/END out of place: after device sections, a second
    /// START, a FULL section or EOF before END, a PART after END.
    #[error("section type {ty} ({name}) at offset {offset} is out of place for the ram section")]
    RamSectionOrder {
        /// The type byte read.
        ty: u8,
        /// Its QEMU name.
        name: &'static str,
        /// Its offset.
        offset: u64,
    },
    /// RAM was given to load into, but the stream has no `ram` section.
    #[error("the stream has no ram section to load guest RAM from")]
    MissingRamSection,
    /// A block of the VMM's [`RamBlocks`](crate::RamBlocks) list is unusable.
    #[error("ramblock \"{idstr}\": {reason}")]
    InvalidRamBlock {
        /// The block's idstr.
        idstr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The stream lists a block the destination does not have.
    #[error("Unknown ramblock \"{idstr}\", cannot accept migration")]
    UnknownRamBlock {
        /// The idstr in the stream.
        idstr: String,
    },
    /// A block's length differs between stream and destination.
    #[error("Length mismatch: {idstr}: 0x{stream:x} in != 0x{local:x}")]
    RamLengthMismatch {
        /// The block's idstr.
        idstr: String,
        /// used_length in the stream.
        stream: u64,
        /// used_length of the local block.
        local: u64,
    },
    /// A block is kept in place (ignored, `x-ignore-shared`) on one side
    /// only, as the vmdesc's `"ram"` entry says of the source.
    #[error(
        "ramblock \"{idstr}\" is {} here, but the source {}",
        if *.local_ignored { "kept in place" } else { "copied" },
        if *.stream_ignored { "left it in place" } else { "copied it" }
    )]
    RamIgnoredMismatch {
        /// The block's idstr.
        idstr: String,
        /// Whether the destination keeps the block in place.
        local_ignored: bool,
        /// Whether the source left the block's pages out.
        stream_ignored: bool,
    },
    /// A local block is absent from the stream's block list.
    #[error("ramblock \"{idstr}\" is missing from the stream")]
    MissingRamBlock {
        /// The local block's idstr.
        idstr: String,
    },
    /// With `x-ignore-shared`, a block's address in the block list is not
    /// the one the saver writes (0, the address QEMU sends for `pc.ram`,
    /// whose RAM it maps through aliases as the VMM maps its windows).
    #[error("Mismatched GPAs for block {idstr} {remote}!= {local}")]
    RamBlockAddrMismatch {
        /// The block's idstr.
        idstr: String,
        /// The address in the stream.
        remote: u64,
        /// The address expected.
        local: u64,
    },
    /// The MEM_SIZE block list is malformed.
    #[error("bad ram block list at offset {offset}: {reason}")]
    BadRamBlockList {
        /// Offset of the offending element.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A RAM record with flags this loader does not accept.
    #[error("Unknown combination of migration flags: 0x{flags:x}")]
    UnknownRamFlags {
        /// The flag bits of the record.
        flags: u64,
        /// Offset of the record.
        offset: u64,
    },
    /// An end-of-section (EOS) record with offset bits set (QEMU ignores
    /// them; no saver sets them).
    #[error("end-of-section record 0x{word:x} carries an offset")]
    RamEosOffset {
        /// The record word.
        word: u64,
        /// Offset of the record.
        offset: u64,
    },
    /// CONTINUE on the first record of a section.
    #[error("Ack, bad migration stream!")]
    RamNoPreviousBlock {
        /// Offset of the record.
        offset: u64,
    },
    /// A record names a block absent from the block list.
    #[error("Can't find block {idstr}")]
    RamBlockNotFound {
        /// The idstr in the record.
        idstr: String,
        /// Offset of the record.
        offset: u64,
    },
    /// A record carries pages of an ignored block.
    #[error("block {idstr} should not be migrated !")]
    RamBlockNotMigrated {
        /// The block's idstr.
        idstr: String,
        /// Offset of the record.
        offset: u64,
    },
    /// A record reaches past the block's used_length.
    #[error("Illegal RAM offset {addr:x}")]
    IllegalRamOffset {
        /// The block's idstr.
        idstr: String,
        /// The record's page offset in the block.
        addr: u64,
        /// Offset of the record.
        offset: u64,
    },
    /// A ZERO record whose fill byte is not 0.
    #[error("Found a zero page with value {value}")]
    ZeroPageValue {
        /// The block's idstr.
        idstr: String,
        /// The record's page offset in the block.
        addr: u64,
        /// The fill byte.
        value: u8,
        /// Offset of the record.
        offset: u64,
    },
    /// A record does not come after the previous record of its block (the
    /// saver writes each block's pages once, in offset order).
    #[error("ramblock \"{idstr}\": page 0x{addr:x} out of order, expected 0x{expected:x} or later")]
    RamPageOrder {
        /// The block's idstr.
        idstr: String,
        /// The record's page offset.
        addr: u64,
        /// The lowest offset the block's next record may have.
        expected: u64,
    },
    /// The VMM's [`RamBlocks`](crate::RamBlocks) failed.
    #[error("ramblock \"{idstr}\": {op} at 0x{offset:x} failed")]
    RamAccess {
        /// "read", "write" or "zero".
        op: &'static str,
        /// The block's idstr.
        idstr: String,
        /// Offset in the block.
        offset: u64,
        /// The VMM's error.
        #[source]
        source: BoxError,
    },
    /// A stream file read in place changed under the loader (truncated, or opened for
    /// writing by someone else): whatever was read from it is not trusted.
    #[error("the stream file changed while it was read (at offset {offset})")]
    InputChanged {
        /// How far the loader had read.
        offset: u64,
        /// What happened to the file.
        #[source]
        source: FileError,
    },
    /// The second pass read different bytes than the first (the file
    /// changed in between; guest RAM may be partly written).
    #[error("the stream changed between the checking and the loading pass (at offset {offset})")]
    StreamChanged {
        /// Offset where the difference showed.
        offset: u64,
        /// The error the second pass ran into, if it did not get to the
        /// end of the `ram` section.
        #[source]
        source: Option<Box<Error>>,
    },

    // ------------------------------------------------------------- apply
    /// A [`LoadedState`](crate::LoadedState) was applied to a registry other
    /// than (or changed since) the one it was parsed against.
    #[error("loaded state was parsed against registry {parsed:?}, not {applied:?}")]
    RegistryMismatch {
        /// (registry id, generation) at parse time.
        parsed: (u64, u64),
        /// (registry id, generation) at apply time.
        applied: (u64, u64),
    },
    /// The staged value handed to `apply` (or asked of
    /// [`LoadedState::take`](crate::LoadedState::take)) has the wrong type.
    #[error("{vmsd}: staged state has the wrong type")]
    StagedType {
        /// The handler's vmsd name (for `take`, the type asked for).
        vmsd: &'static str,
    },
    /// [`LoadedState::take`](crate::LoadedState::take): the stream has no
    /// such section, or its value was already taken.
    #[error("no parsed state for instance 0x{instance_id:x} of device '{idstr}'")]
    NotLoaded {
        /// The section's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
    },
    /// Applying parsed state to a handler failed.
    #[error("failed to apply state for instance 0x{instance_id:x} of device '{idstr}'")]
    ApplySection {
        /// The section's idstr.
        idstr: String,
        /// Its instance id.
        instance_id: u32,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
