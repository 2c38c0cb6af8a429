//! The `cpr` crate's errors: QEMU's wording where patch 6 has one, with the cause chained.

use std::path::PathBuf;

use cpr_runstate::RunState;
use nix::errno::Errno;

use crate::vmm::{GlobalError, MigrateError, ParamError, TargetError};

/// Everything `cpr-save`, `cpr-load` and the VMM around them can fail with.
///
/// Over QMP every one of these is a `GenericError` whose `desc` is the whole chain
/// ([`Error::chain`]), so a user sees both QEMU's sentence and its cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// V7 step 1: some RAM block would not survive (`Memory region %s is volatile`).
    #[error(transparent)]
    Volatile(cpr_memory::Error),
    /// V7 step 2.
    #[error("cpr-save does not support x-colo")]
    Colo,
    /// The checkpoint file could not be created.
    #[error("cannot create checkpoint file {}", path.display())]
    Create {
        /// The target path.
        path: PathBuf,
        /// Why.
        #[source]
        source: cpr_migration_file::Error,
    },
    /// The checkpoint target is one of this VM's RAM backings (the same file: its path, a
    /// hard link or a symlink to it). Refused before the VM is stopped.
    #[error("cannot save to {}: it is this VM's RAM ({block})", path.display())]
    TargetIsRam {
        /// The target, as given.
        path: PathBuf,
        /// The RAM block backed by that file.
        block: String,
    },
    /// A checkpoint file that exists and is not a regular file (a device, FIFO, socket or
    /// directory): never written into, never read from.
    #[error("cannot {what} {}: not a regular file", path.display())]
    NotRegularFile {
        /// What was to be done (`save to`, `load`).
        what: &'static str,
        /// The file, as given.
        path: PathBuf,
    },
    /// V7 step 10: writing the device state failed (QEMU's `Error %d while saving VM state`).
    #[error("Error -{} while saving VM state", *errno as i32)]
    Save {
        /// The errno (`EIO` when there is no better one); QEMU prints it negated.
        errno: Errno,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// cpr-save in a run state no load could enter (better than V7, which writes it).
    #[error("cpr-save: a VM that is {state} cannot be restored from a checkpoint; {} is left as it was", path.display())]
    Unrestorable {
        /// The run state.
        state: RunState,
        /// The target, left as it was.
        path: PathBuf,
    },
    /// cpr-save asked for on a machine that was never started.
    #[error("cpr-save: the VM was never started, there is no state to save")]
    NothingToSave,
    /// V7 cpr-load step 1.
    #[error("cpr-load called for a running VM")]
    LoadRunning,
    /// The checkpoint cannot be opened.
    #[error("cannot open checkpoint file {}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// V7 cpr-load step 3 (bad magic or version): `%s is not a vmstate file`.
    #[error("{} is not a vmstate file", path.display())]
    NotVmstate {
        /// The path.
        path: PathBuf,
    },
    /// V7 cpr-load step 5 (QEMU's `Error %d while loading VM state`).
    #[error("Error -{} while loading VM state", *errno as i32)]
    Load {
        /// The errno (`EINVAL` for a bad stream); QEMU prints it negated.
        errno: Errno,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The checkpoint's run state cannot be entered from the current one. V7 aborts QEMU
    /// here (`runstate_set`); we refuse before anything is applied.
    #[error("cannot restore a {saved} VM into a VM that is {current}")]
    RunStateTransition {
        /// Run state in the checkpoint.
        saved: RunState,
        /// Run state of this VM.
        current: RunState,
    },
    /// The machine (KVM) failed.
    #[error("the virtual machine failed")]
    Machine(#[source] crate::machine::Error),
    /// A run-state operation failed.
    #[error(transparent)]
    RunState(#[from] cpr_runstate::Error),
    /// VFIO rule (mainline 9.0).
    #[error(transparent)]
    Vfio(#[from] cpr_vfio_info::Error),
    /// The RAM is not this process's to run on (another process holds its lock).
    #[error(transparent)]
    RamOwnership(#[from] crate::vmm::OwnershipError),
    /// Guest RAM could not be set up.
    #[error("guest RAM")]
    Memory(#[source] cpr_memory::Error),
    /// A command's arguments are refused.
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    /// A migration command is refused.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// A command is refused in the current state.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The command line asks for a machine this VMM cannot build.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// cpr-transfer failed or was refused.
    #[error(transparent)]
    Transfer(crate::vmm::TransferError),
    /// cpr-exec failed or was refused.
    #[error(transparent)]
    Exec(crate::vmm::ExecError),
    /// The CPR state handed over by another process is unusable.
    #[error(transparent)]
    Handoff(#[from] crate::vmm::HandoffError),
}

impl Error {
    /// The error and its causes, joined by `: ` (what QMP reports as `desc`).
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// `err` and its causes, joined by `: `, each cause left out when the text so far already
/// ends with it (a transparent wrapper repeats its source's words).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}

impl From<crate::machine::Error> for Error {
    fn from(e: crate::machine::Error) -> Self {
        Error::Machine(e)
    }
}

impl From<crate::vmm::SlotError> for Error {
    fn from(e: crate::vmm::SlotError) -> Self {
        match e {
            crate::vmm::SlotError::Machine(e) => Error::Machine(e),
            crate::vmm::SlotError::Ram(e) => Error::RamOwnership(e),
        }
    }
}

/// Arguments the VMM refuses (QEMU's words). The QMP layer refuses most bad arguments
/// before a command reaches the VMM; these are the ones QEMU checks later, or that come
/// from elsewhere (`--global`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentError {
    /// `uri` or `channels` names no file target.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A migration parameter is out of range.
    #[error(transparent)]
    Parameter(#[from] ParamError),
    /// `--global` (QEMU's `-global`) cannot be applied.
    #[error("can't apply global {global}")]
    Global {
        /// The `--global` as given.
        global: String,
        /// Why.
        #[source]
        source: GlobalError,
    },
    /// A value an enum argument does not have.
    #[error("Parameter '{name}' does not accept value '{value}'")]
    BadValue {
        /// The argument.
        name: &'static str,
        /// The value given.
        value: String,
    },
}

/// A command refused in the VM's current state (QEMU's words where QEMU has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// `cont` after a shutdown or a failure (`runstate_needs_reset`).
    #[error("Resetting the Virtual Machine is required")]
    ResetRequired,
    /// `cont` in `finish-migrate`.
    #[error("Migration is not finalized yet")]
    MigrationNotFinalized,
    /// A command that needs a running guest (`guest-suspend-ram`, `x-guest-fault`).
    #[error("{0}: the guest is not running")]
    GuestNotRunning(&'static str),
}

/// The `cpr-vm` command line asks for a machine this VMM cannot build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--smp` out of the built-in guest's range.
    #[error("--smp {smp}: the built-in guest runs 1 to {max} vCPUs")]
    Smp {
        /// What was asked for.
        smp: u32,
        /// The most the guest runs.
        max: u64,
    },
    /// `--mem-size` out of the built-in guest's range.
    #[error("--mem-size {size}: the built-in guest needs 64M to {max_gib}G of RAM")]
    MemSize {
        /// What was asked for, as given.
        size: String,
        /// The most the guest maps, in GiB.
        max_gib: u64,
    },
    /// RAM handed over by the old process does not fit this command line.
    #[error("{0}")]
    HandedRam(String),
    /// `--serial FILE` cannot be opened.
    #[error("cannot open serial output {path}")]
    Serial {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_wording_and_chain() {
        let e = Error::Save {
            errno: Errno::ENOSPC,
            source: "Unable to write to file 'cpr-save': No space left on device".into(),
        };
        assert_eq!(e.to_string(), "Error -28 while saving VM state");
        assert_eq!(
            e.chain(),
            "Error -28 while saving VM state: Unable to write to file 'cpr-save': No space left on device"
        );
        assert_eq!(
            Error::LoadRunning.to_string(),
            "cpr-load called for a running VM"
        );
        assert_eq!(
            Error::NotVmstate {
                path: "/tmp/x".into()
            }
            .to_string(),
            "/tmp/x is not a vmstate file"
        );
    }
}
