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
//! Arrays are recorded once with `array_len` and the size of one element,
//! as QEMU's compressed form; `subsections` is omitted when empty.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

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

/// The whole description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmDesc {
    /// Target page size.
    pub page_size: u32,
    /// Sections in stream order.
    pub devices: Vec<DeviceDesc>,
}

impl VmDesc {
    /// Compact JSON (no whitespace).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Check that `json` is a vmdesc object whose `devices` list names exactly
/// `sections` ((idstr, instance id), in stream order). Returns the parsed
/// value.
pub(crate) fn check(json: &[u8], offset: u64, sections: &[(&str, u32)]) -> Result<Value> {
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
    for (i, (dev, &(idstr, instance_id))) in devices.iter().zip(sections).enumerate() {
        let name = dev.get("name").and_then(Value::as_str);
        let inst = dev.get("instance_id").and_then(Value::as_u64);
        if name != Some(idstr) || inst != Some(u64::from(instance_id)) {
            return Err(mismatch(format!(
                "device {i} is {name:?} instance {inst:?}, the stream has '{idstr}' instance {instance_id}"
            )));
        }
    }
    Ok(value)
}
