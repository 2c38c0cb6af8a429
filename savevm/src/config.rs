//! QEMU's configuration section (`QEMU_VM_CONFIGURATION`, savevm.c's
//! `vmstate_configuration`), which a stream with RAM opens with, as
//! mainline QEMU's migration streams do:
//!
//! ```text
//! 0x07 | be32 len | len bytes: machine type      ("cpr-vm")
//!      [ 0x05 | str "configuration/capabilities" | be32 1     (x-ignore-shared on)
//!        be32 caps_count (1) | u8 15 | "x-ignore-shared" ]
//! ```
//!
//! No section id, no footer. QEMU sends the capabilities subsection when a
//! capability it validates is on (`x-ignore-shared`, `mapped-ram`); this
//! crate knows `x-ignore-shared` only. The `target-page-bits` and `uuid`
//! subsections are not written (x86's page bits are the minimum; no UUID
//! validation), and are refused as unknown subsections.
//!
//! It announces `x-ignore-shared` so that a reader knows the block list of
//! the `ram` section carries each block's address, and a destination whose
//! capability differs refuses the stream as QEMU does
//! ([`Error::CapabilityMismatch`]).

use cpr_migration_file::QemuFile;

use crate::consts::{CAP_X_IGNORE_SHARED, MACHINE_TYPE, QEMU_VM_CONFIGURATION};
use crate::error::{Error, Result};
use crate::stream::get;
use crate::vmdesc::VmsdDesc;
use crate::vmstate::{FieldReader, FieldWriter, VmState, encode_vmstate};

/// Longest machine type name read (QEMU has no limit; its names are short).
const MAX_NAME: usize = 256;

/// The configuration section's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Configuration {
    /// Machine type.
    pub(crate) name: String,
    /// Whether `x-ignore-shared` is announced.
    pub(crate) ignore_shared: bool,
}

impl VmState for Configuration {
    const NAME: &'static str = "configuration";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        let len = u32::try_from(self.name.len()).map_err(|_| Error::InvalidState {
            vmsd: Self::NAME.to_owned(),
            reason: "the machine type name is too long".into(),
        })?;
        w.u32("len", len);
        w.buffer("name", self.name.as_bytes());
        w.subsection(&mut Capabilities {
            ignore_shared: self.ignore_shared,
        })
    }

    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        let len = r.u32("len")?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_NAME)
            .ok_or_else(|| {
                r.invalid(format!(
                    "a machine type name of {len} bytes (at most {MAX_NAME})"
                ))
            })?;
        let mut name = vec![0; len];
        r.buffer_into("name", &mut name)?;
        let name =
            String::from_utf8(name).map_err(|_| r.invalid("the machine type name is not UTF-8"))?;
        let caps = r.subsection::<Capabilities>()?;
        Ok(Configuration {
            name,
            ignore_shared: caps.is_some_and(|c| c.ignore_shared),
        })
    }

    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// `configuration/capabilities`: the validated capabilities that are on.
struct Capabilities {
    ignore_shared: bool,
}

impl VmState for Capabilities {
    const NAME: &'static str = "configuration/capabilities";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        self.ignore_shared
    }

    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u32("caps_count", 1);
        w.capability("capabilities", CAP_X_IGNORE_SHARED)
    }

    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        // The saver sends the subsection only with x-ignore-shared on, and
        // announces nothing else.
        let count = r.u32("caps_count")?;
        if count != 1 {
            return Err(r.invalid(format!(
                "caps_count {count}: the saver announces {CAP_X_IGNORE_SHARED} alone"
            )));
        }
        let name = r.capability("capabilities")?;
        if name != CAP_X_IGNORE_SHARED {
            return Err(Error::UnknownCapability { name });
        }
        Ok(Capabilities {
            ignore_shared: true,
        })
    }

    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// Write the configuration section announcing `ignore_shared`; returns its
/// description for the vmdesc.
pub(crate) fn write_configuration(f: &mut QemuFile, ignore_shared: bool) -> Result<VmsdDesc> {
    let mut config = Configuration {
        name: MACHINE_TYPE.to_owned(),
        ignore_shared,
    };
    let Some((payload, desc)) = encode_vmstate(&mut config)? else {
        return Err(Error::InvalidState {
            vmsd: Configuration::NAME.to_owned(),
            reason: "the configuration is always needed".into(),
        });
    };
    f.put_u8(QEMU_VM_CONFIGURATION);
    f.put_buffer(&payload);
    Ok(desc)
}

/// The configuration section, whatever capabilities it announces (only the machine type
/// is checked): for a tool that describes a stream it did not write.
pub(crate) fn read_configuration_any(f: &mut QemuFile) -> Result<Configuration> {
    read_section(f).map(|(config, _)| config)
}

/// Read the configuration section that must come next
/// ([`Error::MissingConfiguration`] otherwise), and check it against this
/// side: the machine type is [`MACHINE_TYPE`] and `x-ignore-shared` is
/// announced exactly when `ignore_shared` (QEMU's `configuration_post_load`
/// checks, with its wording). Returns what was read and its description
/// (the saver's vmdesc entry).
pub(crate) fn read_configuration(
    f: &mut QemuFile,
    ignore_shared: bool,
) -> Result<(Configuration, VmsdDesc)> {
    let (config, desc) = read_section(f)?;
    if config.ignore_shared != ignore_shared {
        return Err(Error::CapabilityMismatch {
            capability: CAP_X_IGNORE_SHARED,
            local: ignore_shared,
            received: config.ignore_shared,
        });
    }
    Ok((config, desc))
}

/// Reads the configuration section and checks its machine type.
fn read_section(f: &mut QemuFile) -> Result<(Configuration, VmsdDesc)> {
    let offset = f.position();
    let ty = get(f, "section type", QemuFile::get_u8)?;
    if ty != QEMU_VM_CONFIGURATION {
        return Err(Error::MissingConfiguration { found: ty, offset });
    }
    let mut r = FieldReader::new(f, Configuration::NAME, Configuration::VERSION_ID);
    let config = r.read_state::<Configuration>()?;
    let desc = r.into_description();
    if config.name != MACHINE_TYPE {
        return Err(Error::MachineTypeMismatch {
            received: config.name,
            local: MACHINE_TYPE,
        });
    }
    Ok((config, desc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(ignore_shared: bool) -> (Vec<u8>, VmsdDesc) {
        let mut f = QemuFile::memory_writer("t");
        let desc = write_configuration(&mut f, ignore_shared).expect("write");
        (f.into_bytes().expect("bytes"), desc)
    }

    #[test]
    fn bytes_and_description_are_qemus() {
        let (bytes, desc) = written(false);
        assert_eq!(bytes, b"\x07\x00\x00\x00\x06cpr-vm");
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&desc).expect("json")).expect("utf-8"),
            concat!(
                r#"{"vmsd_name":"configuration","version":1,"fields":["#,
                r#"{"name":"len","type":"uint32","size":4},"#,
                r#"{"name":"name","type":"buffer","size":6}]}"#
            )
        );
        let (bytes, desc) = written(true);
        let mut expected = b"\x07\x00\x00\x00\x06cpr-vm\x05\x1aconfiguration/capabilities".to_vec();
        expected.extend_from_slice(b"\x00\x00\x00\x01\x00\x00\x00\x01\x0fx-ignore-shared");
        assert_eq!(bytes, expected);
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&desc.subsections).expect("json")).expect("utf-8"),
            concat!(
                r#"[{"vmsd_name":"configuration/capabilities","version":1,"fields":["#,
                r#"{"name":"caps_count","type":"uint32","size":4},"#,
                r#"{"name":"capabilities","type":"capability","size":16}]}]"#
            )
        );
    }

    #[test]
    fn read_back_and_checked() {
        for ignore_shared in [false, true] {
            let (bytes, desc) = written(ignore_shared);
            let mut f = QemuFile::from_bytes(bytes.clone(), "t");
            let (config, read) = read_configuration(&mut f, ignore_shared).expect("read");
            assert_eq!(config.ignore_shared, ignore_shared);
            assert_eq!(read, desc);
            let mut f = QemuFile::from_bytes(bytes, "t");
            let e = read_configuration(&mut f, !ignore_shared).expect_err("mismatch");
            let (on, off) = if ignore_shared {
                ("off", "on")
            } else {
                ("on", "off")
            };
            assert_eq!(
                e.to_string(),
                format!("Capability x-ignore-shared is {on}, but received capability is {off}")
            );
        }
    }

    #[test]
    fn foreign_configurations_are_refused() {
        let refused = |bytes: &[u8]| {
            let mut f = QemuFile::from_bytes(bytes.to_vec(), "t");
            read_configuration(&mut f, true)
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(refused(b"\x01"), "Configuration section missing");
        assert_eq!(
            refused(b"\x07\x00\x00\x00\x0bpc-q35-10.0"),
            "Machine type received is 'pc-q35-10.0' and local is 'cpr-vm'"
        );
        let mut mapped = b"\x07\x00\x00\x00\x06cpr-vm\x05\x1aconfiguration/capabilities".to_vec();
        mapped.extend_from_slice(b"\x00\x00\x00\x01\x00\x00\x00\x01\x0amapped-ram");
        assert_eq!(refused(&mapped), "Received unknown capability mapped-ram");
        let mut two = b"\x07\x00\x00\x00\x06cpr-vm\x05\x1aconfiguration/capabilities".to_vec();
        two.extend_from_slice(b"\x00\x00\x00\x01\x00\x00\x00\x02");
        assert_eq!(
            refused(&two),
            "configuration/capabilities: caps_count 2: the saver announces x-ignore-shared alone"
        );
        let mut uuid = b"\x07\x00\x00\x00\x06cpr-vm\x05\x12configuration/uuid".to_vec();
        uuid.extend_from_slice(&[0; 20]);
        assert_eq!(
            refused(&uuid),
            "unknown subsection 'configuration/uuid' of 'configuration'"
        );
        assert_eq!(
            refused(b"\x07\xff\xff\xff\xff"),
            "configuration: a machine type name of 4294967295 bytes (at most 256)"
        );
    }
}
