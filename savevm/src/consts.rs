//! Stream constants (QEMU's `migration/savevm.h` and `migration/savevm.c`)
//! and the few this crate adds (vmdesc limit and checksum trailer).

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
/// `QEMU_VM_CONFIGURATION`: the configuration section (not written by
/// V7's `cpr-save`, nor by this crate).
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
/// Total length of the trailer: tag plus be32 CRC-32.
pub const TRAILER_LEN: usize = 8;

/// `VMSTATE_INSTANCE_ID_ANY` in QEMU is `-1`; as a `u32` it is reserved.
pub const RESERVED_INSTANCE_ID: u32 = u32::MAX;

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
