//! QMP errors: `{"class": ..., "desc": ...}` as QEMU's `qmp_build_error_object()`
//! produces them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// QEMU's `QapiErrorClass` (qapi/error.json).
///
/// Serialises to the exact class names QEMU sends on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Catch-all class; every cpr error is a `GenericError`.
    GenericError,
    /// Unknown command, or the wrong command for the negotiation state.
    CommandNotFound,
    /// A device exists but has no active driver.
    DeviceNotActive,
    /// A device could not be found.
    DeviceNotFound,
    /// KVM lacks a capability the command needs.
    #[serde(rename = "KVMMissingCap")]
    KvmMissingCap,
}

impl ErrorClass {
    /// The wire name (`"GenericError"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KvmMissingCap => "KVMMissingCap",
        }
    }

    /// Parses a wire name; `None` for a class this crate does not know.
    pub fn from_wire(s: &str) -> Option<ErrorClass> {
        Some(match s {
            "GenericError" => ErrorClass::GenericError,
            "CommandNotFound" => ErrorClass::CommandNotFound,
            "DeviceNotActive" => ErrorClass::DeviceNotActive,
            "DeviceNotFound" => ErrorClass::DeviceNotFound,
            "KVMMissingCap" => ErrorClass::KvmMissingCap,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A QMP error reply body: serialises to `{"class": "GenericError", "desc": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// Human-readable description (QEMU's `error_get_pretty()`).
    pub desc: String,
}

impl QmpError {
    /// An error of any class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError` (QEMU's `error_setg()`).
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::GenericError, desc)
    }

    /// `CommandNotFound`: `The command %s has not been found`.
    pub fn command_not_found(command: &str) -> QmpError {
        QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {command} has not been found"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_to_qemu_shape() {
        let e = QmpError::generic("boom");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"class":"GenericError","desc":"boom"}"#
        );
        let e = QmpError::new(ErrorClass::KvmMissingCap, "x");
        assert_eq!(
            serde_json::to_value(&e).unwrap()["class"],
            serde_json::json!("KVMMissingCap")
        );
        for c in [
            ErrorClass::GenericError,
            ErrorClass::CommandNotFound,
            ErrorClass::DeviceNotActive,
            ErrorClass::DeviceNotFound,
            ErrorClass::KvmMissingCap,
        ] {
            assert_eq!(ErrorClass::from_wire(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(ErrorClass::from_wire("Nope"), None);
    }
}
