//! Stream constants (QEMU's `migration/savevm.h` and `migration/savevm.c`,
//! the RAM record flags of `migration/ram.c`) and the few this crate adds
//! (machine type, vmdesc limit, checksum trailer, RAM chunk sizes).

/// `QEMU_VM_FILE_MAGIC`: the first four bytes of every stream, `"QEVM"`.
pub const QEMU_VM_FILE_MAGIC: u32 = 0x5145_564d;
/// `QEMU_VM_FILE_VERSION_COMPAT`: the obsolete version-2 format (rejected).
pub const QEMU_VM_FILE_VERSION_COMPAT: u32 = 0x0000_0002;
/// `QEMU_VM_FILE_VERSION`: the stream version written and accepted.
pub const QEMU_VM_FILE_VERSION: u32 = 0x0000_0003;

/// `QEMU_VM_EOF`: end of the section list.
pub const QEMU_VM_EOF: u8 = 0x00;
/// `QEMU_VM_SECTION_START`: first chunk of a live (iterative) section.
pub const QEMU_VM_SECTION_START: u8 = 0x01;
/// `QEMU_VM_SECTION_PART`: a middle chunk of a live section.
pub const QEMU_VM_SECTION_PART: u8 = 0x02;
/// `QEMU_VM_SECTION_END`: the final chunk of a live section.
pub const QEMU_VM_SECTION_END: u8 = 0x03;
/// `QEMU_VM_SECTION_FULL`: a complete device section (the only kind a
/// device-state stream holds).
pub const QEMU_VM_SECTION_FULL: u8 = 0x04;
/// `QEMU_VM_SUBSECTION`: introduces a VMState subsection.
pub const QEMU_VM_SUBSECTION: u8 = 0x05;
/// `QEMU_VM_VMDESCRIPTION`: the JSON description written after EOF.
pub const QEMU_VM_VMDESCRIPTION: u8 = 0x06;
/// `QEMU_VM_CONFIGURATION`: the configuration section right after the
/// header (machine type, capabilities). Written in a stream with RAM, as
/// mainline QEMU writes it; never by V7's `cpr-save` (device state only).
pub const QEMU_VM_CONFIGURATION: u8 = 0x07;
/// `QEMU_VM_COMMAND`: a migration command record.
pub const QEMU_VM_COMMAND: u8 = 0x08;
/// `QEMU_VM_SECTION_FOOTER`: marks the end of a section's payload.
pub const QEMU_VM_SECTION_FOOTER: u8 = 0x7e;

/// The target page size recorded as `page_size` in the vmdesc JSON (x86).
pub const TARGET_PAGE_SIZE: u32 = 4096;

/// Largest vmdesc the loader accepts (QEMU has no limit; a hostile length
/// must not make us allocate gigabytes).
pub const MAX_VMDESC_LEN: u32 = 1 << 20;

/// Tag opening this crate's checksum trailer: ASCII `"CPRC"`.
pub const TRAILER_TAG: [u8; 4] = *b"CPRC";
/// Total length of the trailer: the tag, then the CRC-32 as 8 lowercase hex
/// digits (ASCII, so that the trailer holds no NUL byte:
/// `analyze-migration.py` finds the vmdesc by the last NUL of the file).
pub const TRAILER_LEN: usize = 12;

/// The machine type named by the configuration section (QEMU writes its
/// machine class name, e.g. `pc-q35-10.0`; a QEMU loader refuses any other
/// name, which is right: this is not one of QEMU's machines).
pub const MACHINE_TYPE: &str = "cpr-vm";
/// The capability the configuration section announces when guest RAM in
/// shared named files stays in place (QEMU's `MigrationCapability_str`).
pub const CAP_X_IGNORE_SHARED: &str = "x-ignore-shared";

/// `VMSTATE_INSTANCE_ID_ANY` in QEMU is `-1`; as a `u32` it is reserved.
pub const RESERVED_INSTANCE_ID: u32 = u32::MAX;

// ------------------------------------------------------------- ram section

/// idstr of the RAM section (`ram_mig_init`'s `register_savevm_live`).
pub const RAM_IDSTR: &str = "ram";
/// Instance id of the RAM section.
pub const RAM_INSTANCE_ID: u32 = 0;
/// Version of the RAM section (QEMU's `ram` is at version 4).
pub const RAM_VERSION_ID: u32 = 4;

/// Low bits of a RAM record's be64 word that hold flags; the rest is a
/// page-aligned offset (QEMU keeps flags below `TARGET_PAGE_SIZE`).
pub const RAM_SAVE_FLAG_MASK: u64 = TARGET_PAGE_SIZE as u64 - 1;
/// `RAM_SAVE_FLAG_ZERO`: a zero page, followed by one fill byte (always 0).
pub const RAM_SAVE_FLAG_ZERO: u64 = 0x02;
/// `RAM_SAVE_FLAG_MEM_SIZE`: the block list (total size in the offset bits).
pub const RAM_SAVE_FLAG_MEM_SIZE: u64 = 0x04;
/// `RAM_SAVE_FLAG_PAGE`: a whole target page follows.
pub const RAM_SAVE_FLAG_PAGE: u64 = 0x08;
/// `RAM_SAVE_FLAG_EOS`: end of a RAM section's payload.
pub const RAM_SAVE_FLAG_EOS: u64 = 0x10;
/// `RAM_SAVE_FLAG_CONTINUE`: same block as the previous record (no idstr).
pub const RAM_SAVE_FLAG_CONTINUE: u64 = 0x20;

/// The address written after each block's length when `x-ignore-shared` is
/// announced (QEMU writes the block's memory-region address: 0 for
/// `pc.ram`, which it maps through aliases, as the VMM maps its windows).
pub const RAM_BLOCK_ADDR: u64 = 0;

/// Record bytes (pages and zero records) one RAM PART section carries at
/// most, about 1 MiB.
pub const RAM_PART_MAX_DATA: usize = 1 << 20;
/// Bytes of the `ram` section's PARTs built before they are handed to the
/// file at once while saving (records are never split between batches).
pub const RAM_SAVE_BATCH: usize = 512 << 10;

/// Human name of a section type byte, for diagnostics.
pub fn section_type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        QEMU_VM_EOF => "EOF",
        QEMU_VM_SECTION_START => "SECTION_START",
        QEMU_VM_SECTION_PART => "SECTION_PART",
        QEMU_VM_SECTION_END => "SECTION_END",
        QEMU_VM_SECTION_FULL => "SECTION_FULL",
        QEMU_VM_SUBSECTION => "SUBSECTION",
        QEMU_VM_VMDESCRIPTION => "VMDESCRIPTION",
        QEMU_VM_CONFIGURATION => "CONFIGURATION",
        QEMU_VM_COMMAND => "COMMAND",
        QEMU_VM_SECTION_FOOTER => "SECTION_FOOTER",
        _ => return None,
    })
}
