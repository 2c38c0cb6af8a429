//! What kind of stream a file holds, from its first bytes ([`probe`]).

use cpr_migration_file::QemuFile;

use crate::consts::{QEMU_VM_CONFIGURATION, QEMU_VM_SECTION_START, RAM_IDSTR};
use crate::error::{Error, Result};
use crate::ram::{RamBlockDesc, RamLoader};
use crate::stream::{get, read_stream_header};

/// The two kinds of stream this crate writes, told apart by their first
/// section: a stream with RAM opens with QEMU's configuration section, which
/// V7's `cpr-save` never writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Device state only (V7's `cpr-save`, [`save_device_state`](crate::save_device_state)):
    /// guest RAM stays in place. Load it without RAM.
    DeviceState,
    /// The first section is QEMU's configuration section (or, as in streams
    /// written before it was, the `ram` START section): guest RAM travels in
    /// the stream (mainline `migrate` to a file,
    /// [`save_state`](crate::save_state) with RAM). Load it with
    /// [`load_state`](crate::load_state) and the VMM's RAM.
    WithRam,
}

impl StreamKind {
    /// Whether the stream carries guest RAM.
    pub fn has_ram(self) -> bool {
        self == StreamKind::WithRam
    }
}

/// Bytes looked at: magic, version, then a START section's type byte,
/// section id and counted idstr, as far as `"ram"`.
const PROBE_LEN: usize = 4 + 4 + 1 + 4 + 1 + RAM_IDSTR.len();

/// The kind of stream `f` holds, from its header and the start of its first
/// section, **without consuming anything**: `f` is left where it was, ready
/// for the loader.
///
/// A file that is not a vmstate stream (bad magic, an unsupported version,
/// shorter than the header, unreadable) is [`Error::NotVmstateFile`] naming
/// `f`'s channel name, with the header error as its source, as the loader
/// reports it; offsets in that source count from where `f` was. Only the
/// header is checked: the loader still checks the whole stream, so a file
/// probed as [`StreamKind::DeviceState`] may still be refused.
pub fn probe(f: &mut QemuFile) -> Result<StreamKind> {
    let name = f.name().to_owned();
    let not_vmstate = |source| Error::NotVmstateFile {
        file: name.clone(),
        source: Box::new(source),
    };
    let position = f.position();
    let head = f
        .peek(PROBE_LEN)
        .map_err(|source| {
            not_vmstate(Error::Read {
                what: "stream header",
                offset: position,
                source,
            })
        })?
        .to_vec();
    // The loader's own header check, over the bytes looked at.
    read_stream_header(&mut QemuFile::from_bytes(head.clone(), &name)).map_err(not_vmstate)?;
    let first = head.get(8..).unwrap_or_default();
    let configuration = first.first() == Some(&QEMU_VM_CONFIGURATION);
    let ram_start = first.first() == Some(&QEMU_VM_SECTION_START)
        && first.get(5).map(|&len| usize::from(len)) == Some(RAM_IDSTR.len())
        && first.get(6..) == Some(RAM_IDSTR.as_bytes());
    Ok(if configuration || ram_start {
        StreamKind::WithRam
    } else {
        StreamKind::DeviceState
    })
}

/// The RAM a stream carries, as its configuration section and its `ram` section's START
/// announce it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRamLayout {
    /// The blocks (idstr, length). Whether a block stays in place is not in the `ram`
    /// section (QEMU's format records it in the vmdesc at the end): every block is
    /// [`ignored`](RamBlockDesc::ignored)` = false` here.
    pub blocks: Vec<RamBlockDesc>,
    /// Whether the stream announces `x-ignore-shared`.
    pub ignore_shared: bool,
}

/// The RAM blocks a stream carries, as its `ram` section's START lists them, read and
/// checked as the loader reads them; `None` for a stream without RAM
/// ([`StreamKind::DeviceState`]). For a tool that has no RAM of its own and must describe
/// some to [`load_state`](crate::load_state) (an inspector, an extractor): the loader then
/// checks the whole stream against that list.
///
/// Reads `f` from where it is to the end of the START section. A file that is not a
/// vmstate stream is [`Error::NotVmstateFile`], as in [`probe`].
pub fn ram_blocks(f: &mut QemuFile) -> Result<Option<StreamRamLayout>> {
    if !probe(f)?.has_ram() {
        return Ok(None);
    }
    let name = f.name().to_owned();
    read_stream_header(f).map_err(|source| Error::NotVmstateFile {
        file: name,
        source: Box::new(source),
    })?;
    let config = crate::config::read_configuration_any(f)?;
    let mut loader = RamLoader::adopting(config.ignore_shared);
    let offset = f.position();
    let ty = get(f, "section type", QemuFile::get_u8)?;
    loader.section(f, ty, offset)?;
    Ok(Some(StreamRamLayout {
        blocks: loader.local_blocks().to_vec(),
        ignore_shared: config.ignore_shared,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{QEMU_VM_FILE_MAGIC, QEMU_VM_SECTION_FULL};

    fn header(magic: u32, version: u32) -> Vec<u8> {
        [magic.to_be_bytes(), version.to_be_bytes()].concat()
    }

    fn probe_bytes(bytes: &[u8]) -> Result<StreamKind> {
        probe(&mut QemuFile::from_bytes(bytes.to_vec(), "cpr-load"))
    }

    fn with_section(ty: u8, idstr: &str) -> Vec<u8> {
        let mut b = header(QEMU_VM_FILE_MAGIC, 3);
        b.push(ty);
        b.extend_from_slice(&7u32.to_be_bytes());
        b.push(u8::try_from(idstr.len()).expect("short idstr"));
        b.extend_from_slice(idstr.as_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn the_first_section_tells_the_kind() {
        let kind = |ty, idstr| probe_bytes(&with_section(ty, idstr)).expect("a vmstate stream");
        assert_eq!(kind(QEMU_VM_SECTION_START, "ram"), StreamKind::WithRam);
        let mut config = header(QEMU_VM_FILE_MAGIC, 3);
        config.extend_from_slice(b"\x07\x00\x00\x00\x06cpr-vm");
        assert_eq!(probe_bytes(&config).expect("probe"), StreamKind::WithRam);
        assert!(kind(QEMU_VM_SECTION_START, "ram").has_ram());
        assert_eq!(kind(QEMU_VM_SECTION_FULL, "ram"), StreamKind::DeviceState);
        assert_eq!(
            kind(QEMU_VM_SECTION_FULL, "cpr-machine"),
            StreamKind::DeviceState
        );
        assert_eq!(kind(QEMU_VM_SECTION_START, "ramx"), StreamKind::DeviceState);
        assert_eq!(kind(QEMU_VM_SECTION_START, "ra"), StreamKind::DeviceState);
        assert!(!kind(QEMU_VM_SECTION_FULL, "cpu").has_ram());
        // A header and nothing else is a (broken) device-state stream: the loader says why.
        assert_eq!(
            probe_bytes(&header(QEMU_VM_FILE_MAGIC, 3)).expect("a header"),
            StreamKind::DeviceState
        );
    }

    #[test]
    fn nothing_is_consumed() {
        let bytes = with_section(QEMU_VM_SECTION_START, "ram");
        let mut f = QemuFile::from_bytes(bytes.clone(), "cpr-load");
        assert_eq!(probe(&mut f).expect("probe"), StreamKind::WithRam);
        assert_eq!(f.position(), 0);
        let mut back = vec![0; bytes.len()];
        f.get_buffer(&mut back).expect("every byte still there");
        assert_eq!(back, bytes);
    }

    #[test]
    fn a_bad_header_is_not_a_vmstate_file() {
        let refused = |bytes: &[u8]| {
            let e = probe_bytes(bytes).expect_err("not a vmstate stream");
            assert_eq!(e.to_string(), "cpr-load is not a vmstate file");
            let Error::NotVmstateFile { source, .. } = e else {
                panic!("{e:?}");
            };
            *source
        };
        assert!(matches!(
            refused(&header(0x5145_564e, 3)),
            Error::NotAMigrationStream { magic: 0x5145_564e }
        ));
        assert!(matches!(
            refused(&header(QEMU_VM_FILE_MAGIC, 2)),
            Error::ObsoleteStreamVersion { version: 2 }
        ));
        assert!(matches!(
            refused(&header(QEMU_VM_FILE_MAGIC, 4)),
            Error::UnsupportedStreamVersion { version: 4 }
        ));
        for short in [&b""[..], b"QEV", b"QEVM\0\0\0"] {
            assert!(matches!(refused(short), Error::Read { .. }), "{short:?}");
        }
    }
}
