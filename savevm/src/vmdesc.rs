//! The vmdesc JSON (`QEMU_VM_VMDESCRIPTION`) that QEMU's full-stream saver
//! writes after EOF and `scripts/analyze-migration.py` needs.
//!
//! Shape (as `vmstate_save_state` writes it, serialized compactly):
//!
//! ```json
//! {"page_size":4096,"devices":[
//!   {"name":"timer","instance_id":0,"vmsd_name":"timer","version":1,
//!    "fields":[{"name":"a","type":"uint32","size":4}, ...],
//!    "subsections":[{"vmsd_name":"timer/x","version":1,"fields":[...]}]}]}
//! ```
//!
//! Arrays are recorded as `vmstate_save_state` records them: an array of
//! two or more elements once, with `array_len` and the size of one element
//! (QEMU's compressed form); an array of one element as a plain field; an
//! empty array not at all (QEMU's loop over the elements records nothing,
//! and `analyze-migration.py` would read one element for any entry).
//! `subsections` is omitted when empty.
//!
//! A stream with RAM opens with QEMU's configuration section, which QEMU
//! describes first, under `"configuration"`:
//!
//! ```json
//! {"configuration":{"vmsd_name":"configuration","version":1,
//!   "fields":[{"name":"len","type":"uint32","size":4},
//!             {"name":"name","type":"buffer","size":6}],
//!   "subsections":[{"vmsd_name":"configuration/capabilities","version":1,
//!     "fields":[{"name":"caps_count","type":"uint32","size":4},
//!               {"name":"capabilities","type":"capability","size":16}]}]},
//!  "page_size":4096, ...}
//! ```
//!
//! The JSON is followed by spaces when its be32 length would hold a `{`
//! byte: `analyze-migration.py` finds the JSON as the first `{` after the
//! file's last NUL byte, which lies in that length.
//!
//! A stream with a `ram` section also has a top-level `"ram"` key (absent
//! otherwise, so device-state streams are unchanged):
//!
//! ```json
//! "ram":{"name":"ram","instance_id":0,"version":4,"total":12288,
//!        "blocks":[{"name":"pc.ram","used_length":12288,"ignored":false}]}
//! ```
//!
//! It is not one of the `"devices"`: QEMU does not list `ram` there, and
//! `scripts/analyze-migration.py` would then decode the section as a
//! VMState device instead of with its RAM parser (which ignores this key).
//! `ignored` is where the source says which blocks stay in place: QEMU's
//! `ram` section does not carry it (each side decides from its own blocks),
//! and the loader refuses a stream whose blocks this side would treat
//! otherwise ([`Error::RamIgnoredMismatch`]).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ram::RamBlockDesc;

/// One field's entry in the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDesc {
    /// Field name.
    pub name: Cow<'static, str>,
    /// Element count of an array field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_len: Option<u32>,
    /// VMStateInfo name: `uint32`, `bool`, `buffer`, ...
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Bytes written (of one element, for arrays).
    pub size: u64,
}

/// A vmsd's description: fields, then subsections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmsdDesc {
    /// The vmsd name.
    pub vmsd_name: &'static str,
    /// The version written.
    pub version: u32,
    /// Fields in stream order.
    pub fields: Vec<FieldDesc>,
    /// Subsections written, in stream order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsections: Vec<VmsdDesc>,
}

impl VmsdDesc {
    /// An empty description of `vmsd_name` at `version`.
    pub fn new(vmsd_name: &'static str, version: u32) -> Self {
        VmsdDesc {
            vmsd_name,
            version,
            fields: Vec::new(),
            subsections: Vec::new(),
        }
    }

    /// Records one field, in stream order (by the writer that writes it and by the reader
    /// that reads it, so the two descriptions can be compared).
    pub(crate) fn record(
        &mut self,
        name: Cow<'static, str>,
        array_len: Option<u32>,
        ty: &'static str,
        size: usize,
    ) {
        // As vmsd_desc_field_start: one entry per array, `array_len` only
        // when there is more than one element, nothing for none.
        let array_len = match array_len {
            Some(0) => return,
            Some(1) => None,
            n => n,
        };
        self.fields.push(FieldDesc {
            name,
            array_len,
            ty,
            size: size as u64,
        });
    }
}

/// One section (device) in the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceDesc {
    /// The section idstr.
    pub name: String,
    /// The instance id.
    pub instance_id: u32,
    /// The vmsd's description.
    #[serde(flatten)]
    pub vmsd: VmsdDesc,
}

/// One RAM block in the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamBlockJson {
    /// The block's idstr.
    pub name: String,
    /// Its used_length in bytes.
    pub used_length: u64,
    /// Whether it is kept in place (no pages in the stream).
    pub ignored: bool,
}

/// The `ram` section in the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamDesc {
    /// The section idstr, `ram`.
    pub name: &'static str,
    /// Its instance id (0).
    pub instance_id: u32,
    /// Its version (4).
    pub version: u32,
    /// Sum of the blocks' used_length.
    pub total: u64,
    /// The blocks, in stream order.
    pub blocks: Vec<RamBlockJson>,
}

impl RamDesc {
    /// The description of a `ram` section holding `blocks`.
    pub fn new(blocks: &[RamBlockDesc]) -> Self {
        RamDesc {
            name: crate::consts::RAM_IDSTR,
            instance_id: crate::consts::RAM_INSTANCE_ID,
            version: crate::consts::RAM_VERSION_ID,
            total: blocks
                .iter()
                .fold(0u64, |t, b| t.saturating_add(b.used_length)),
            blocks: blocks
                .iter()
                .map(|b| RamBlockJson {
                    name: b.idstr.clone(),
                    used_length: b.used_length,
                    ignored: b.ignored,
                })
                .collect(),
        }
    }
}

/// The whole description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmDesc {
    /// The configuration section, when the stream has one (first, as QEMU
    /// writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<VmsdDesc>,
    /// Target page size.
    pub page_size: u32,
    /// The `ram` section, when the stream has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamDesc>,
    /// Sections in stream order.
    pub devices: Vec<DeviceDesc>,
}

impl VmDesc {
    /// Compact JSON, as written after `0x06` and its be32 length: no
    /// whitespace, except spaces at the end while a byte of the length
    /// would be `{` (see the [module docs](self)).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs with string keys cannot fail.
        let mut json = serde_json::to_vec(self).unwrap_or_default();
        while u32::try_from(json.len()).is_ok_and(|len| len.to_be_bytes().contains(&b'{')) {
            json.push(b' ');
        }
        json
    }
}

/// Check that `json` is exactly the vmdesc the saver writes for a stream
/// holding `configuration` (as read), `sections` (in stream order, each
/// described by the fields its handler read) and `ram` (the local blocks;
/// no `ram` entry when `None`): its `devices` list names the sections, its
/// `ram` entry keeps in place the blocks this side keeps in place
/// ([`Error::RamIgnoredMismatch`] otherwise), and, byte for byte, it is
/// [`VmDesc::to_json`] of them.
///
/// The description the saver would write is built first: when the stream holds exactly
/// that, nothing needs parsing (the common case, and the one on cpr-transfer's critical
/// path); otherwise the JSON is parsed to say what differs.
pub(crate) fn check(
    json: &[u8],
    offset: u64,
    configuration: Option<&VmsdDesc>,
    sections: &[DeviceDesc],
    ram: Option<&[RamBlockDesc]>,
) -> Result<()> {
    let expected = VmDesc {
        configuration: configuration.cloned(),
        page_size: crate::consts::TARGET_PAGE_SIZE,
        ram: ram.map(RamDesc::new),
        devices: sections.to_vec(),
    }
    .to_json();
    if json == expected.as_slice() {
        return Ok(());
    }
    let value: Value =
        serde_json::from_slice(json).map_err(|source| Error::VmdescJson { offset, source })?;
    let mismatch = |reason: String| Error::VmdescMismatch { reason };
    let devices = value
        .get("devices")
        .and_then(Value::as_array)
        .ok_or_else(|| mismatch("no \"devices\" array".into()))?;
    if devices.len() != sections.len() {
        return Err(mismatch(format!(
            "it lists {} devices, the stream holds {} sections",
            devices.len(),
            sections.len()
        )));
    }
    for (i, (dev, section)) in devices.iter().zip(sections).enumerate() {
        let (idstr, instance_id) = (section.name.as_str(), section.instance_id);
        let name = dev.get("name").and_then(Value::as_str);
        let inst = dev.get("instance_id").and_then(Value::as_u64);
        if name != Some(idstr) || inst != Some(u64::from(instance_id)) {
            return Err(mismatch(format!(
                "device {i} is {name:?} instance {inst:?}, the stream has '{idstr}' instance {instance_id}"
            )));
        }
    }
    check_ram(&value, ram)?;
    let reason = match sections
        .iter()
        .enumerate()
        .find(|(i, s)| serde_json::to_value(s).ok().as_ref() != devices.get(*i))
    {
        Some((i, s)) => format!(
            "device {i} ('{}' instance {}) does not describe the fields its section holds",
            s.name, s.instance_id
        ),
        None => "it is not the description the saver writes for this stream".into(),
    };
    Err(mismatch(reason))
}

fn check_ram(value: &Value, ram: Option<&[RamBlockDesc]>) -> Result<()> {
    let mismatch = |reason: String| Error::VmdescMismatch { reason };
    let found = value.get("ram");
    let Some(blocks) = ram else {
        return match found {
            None => Ok(()),
            Some(_) => Err(mismatch(
                "it has a \"ram\" entry, the stream has no ram section".into(),
            )),
        };
    };
    let Some(found) = found else {
        return Err(mismatch(
            "no \"ram\" entry, the stream has a ram section".into(),
        ));
    };
    // Which blocks stay in place is not in QEMU's ram section (QEMU decides
    // it on each side): the source says it here, and both sides must agree.
    let listed = found.get("blocks").and_then(Value::as_array);
    for b in blocks {
        let entry = listed.and_then(|l| {
            l.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(b.idstr.as_str()))
        });
        if let Some(stream_ignored) = entry.and_then(|e| e.get("ignored")?.as_bool())
            && stream_ignored != b.ignored
        {
            return Err(Error::RamIgnoredMismatch {
                idstr: b.idstr.clone(),
                local_ignored: b.ignored,
                stream_ignored,
            });
        }
    }
    let expected = serde_json::to_value(RamDesc::new(blocks)).unwrap_or_default();
    if *found != expected {
        return Err(mismatch(format!(
            "its \"ram\" entry is {found}, the stream's ram section is {expected}"
        )));
    }
    Ok(())
}
