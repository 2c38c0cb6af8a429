//! The "simplify" of patch 4: one helper each to save to and load from a
//! path, instead of opening, naming and wrapping a channel at every caller.
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
//! Saving here goes through [`AtomicFile`] (temporary file, mode 0600,
//! fsync, rename, directory fsync) instead of truncating the target in
//! place, so a failed save leaves the previous file byte-identical.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use cpr_migration_file::{AtomicFile, Error as FileError, QemuFile};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::ram::{RamBlocks, load_state_as};
use crate::registry::Registry;
use crate::stream::{
    LoadStats, LoadedState, SaveStats, load_device_state_as, save_device_state, save_state,
};

/// Channel name of `xen-save-devices-state`.
pub const CHANNEL_XEN_SAVE: &str = "migration-xen-save-state";
/// Channel name of `xen-load-devices-state`.
pub const CHANNEL_XEN_LOAD: &str = "migration-xen-load-state";
/// Channel name of `cpr-save`.
pub const CHANNEL_CPR_SAVE: &str = "cpr-save";
/// Channel name of `cpr-load`.
pub const CHANNEL_CPR_LOAD: &str = "cpr-load";

/// Save the device state of `registry` to `path` atomically. On any error
/// the previous content of `path` (or its absence) is untouched.
pub fn save_device_state_to_path(
    path: impl AsRef<Path>,
    registry: &mut Registry,
    channel_name: &str,
) -> Result<SaveStats> {
    let mut file = AtomicFile::create(path, channel_name).map_err(|source| Error::Io {
        op: "creating the state file",
        source,
    })?;
    let stats = save_device_state(file.file(), registry)?;
    file.commit().map_err(|source| Error::Io {
        op: "committing the state file",
        source,
    })?;
    Ok(stats)
}

/// [`save_device_state_to_path`] with guest RAM ([`save_state`]).
pub fn save_state_to_path(
    path: impl AsRef<Path>,
    registry: &mut Registry,
    ram: Option<&dyn RamBlocks>,
    channel_name: &str,
) -> Result<SaveStats> {
    let mut file = AtomicFile::create(path, channel_name).map_err(|source| Error::Io {
        op: "creating the state file",
        source,
    })?;
    let stats = save_state(file.file(), registry, ram)?;
    file.commit().map_err(|source| Error::Io {
        op: "committing the state file",
        source,
    })?;
    Ok(stats)
}

/// [`load_state`](crate::load_state) from `path`: the file is opened once
/// and each pass reads a duplicate of that fd from offset 0, so both passes
/// see the same file even if `path` is renamed over in between. Header
/// errors name the path. Guest RAM is written; device state is returned
/// for [`LoadedState::apply`].
pub fn read_state_from_path(
    path: impl AsRef<Path>,
    registry: &Registry,
    ram: Option<&mut dyn RamBlocks>,
    channel_name: &str,
) -> Result<LoadedState> {
    let path = path.as_ref();
    let open_err = |source| Error::Io {
        op: "opening the state file",
        source,
    };
    let fd: OwnedFd = loop {
        match nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::EINTR) => {}
            Err(source) => {
                return Err(open_err(FileError::Open {
                    path: path.to_owned(),
                    source,
                }));
            }
        }
    };
    let open = || {
        let dup = fd.try_clone().map_err(|e| {
            open_err(FileError::Read {
                name: channel_name.to_owned(),
                offset: 0,
                source: Arc::new(e),
            })
        })?;
        let mut f = QemuFile::from_fd(dup, false, channel_name);
        f.seek_to(0).map_err(open_err)?;
        Ok(f)
    };
    load_state_as(open, registry, ram, Some(&path.display().to_string()))
}

/// Open `path` read-only and parse it completely against `registry`
/// without applying anything. Header errors name the path
/// (`<path> is not a vmstate file`).
pub fn read_device_state_from_path(
    path: impl AsRef<Path>,
    registry: &Registry,
    channel_name: &str,
) -> Result<LoadedState> {
    let path = path.as_ref();
    let mut f =
        QemuFile::open(path, OFlag::O_RDONLY, Mode::empty(), channel_name).map_err(|source| {
            Error::Io {
                op: "opening the state file",
                source,
            }
        })?;
    load_device_state_as(&mut f, registry, &path.display().to_string())
}

/// [`read_device_state_from_path`], then [`LoadedState::apply`].
pub fn load_device_state_from_path(
    path: impl AsRef<Path>,
    registry: &mut Registry,
    channel_name: &str,
) -> Result<LoadStats> {
    read_device_state_from_path(path, registry, channel_name)?.apply(registry)
}
