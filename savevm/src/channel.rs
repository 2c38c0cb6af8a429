//! The channel names of patch 4's "simplify" (V7 opens, names and wraps a channel in one
//! `qemu_file_open` call). Opening the file is the VMM's: its checkpoint-file policy
//! (`cpr::vmm`'s target module) decides where a checkpoint may be written and read, so
//! this crate offers no path helpers; it saves to and loads from a [`QemuFile`].
//!
//! V7's callers and their channel names:
//!
//! | caller | flags, mode | channel name |
//! | --- | --- | --- |
//! | `qmp_xen_save_devices_state` | `O_WRONLY\|O_CREAT\|O_TRUNC`, 0660 | [`CHANNEL_XEN_SAVE`] |
//! | `qmp_xen_load_devices_state` | `O_RDONLY\|O_BINARY`, 0 | [`CHANNEL_XEN_LOAD`] |
//! | `qmp_cpr_save` (patch 6) | `O_WRONLY\|O_CREAT\|O_TRUNC`, 0600 | [`CHANNEL_CPR_SAVE`] |
//! | `qmp_cpr_load` (patch 6) | `O_RDONLY`, 0 | [`CHANNEL_CPR_LOAD`] |
//!
//! `cpr` saves through `cpr_migration_file::AtomicFile` (temporary file, mode 0600,
//! fsync, rename, directory fsync) instead of truncating the target in place, so a failed
//! save leaves the previous file byte-identical.

#[cfg(doc)]
use cpr_migration_file::QemuFile;

/// Channel name of `xen-save-devices-state`.
pub const CHANNEL_XEN_SAVE: &str = "migration-xen-save-state";
/// Channel name of `xen-load-devices-state`.
pub const CHANNEL_XEN_LOAD: &str = "migration-xen-load-state";
/// Channel name of `cpr-save`.
pub const CHANNEL_CPR_SAVE: &str = "cpr-save";
/// Channel name of `cpr-load`.
pub const CHANNEL_CPR_LOAD: &str = "cpr-load";
