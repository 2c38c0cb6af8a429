//! The `cpr` crate's errors: QEMU's wording where patch 6 has one, with the cause chained.

use std::path::PathBuf;

use cpr_runstate::RunState;

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
    /// V7 step 10: writing the device state failed (QEMU's `Error %d while saving VM state`).
    #[error("Error {errno} while saving VM state")]
    Save {
        /// Negative errno, as QEMU prints it (-5 = EIO when there is no better one).
        errno: i32,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    #[error("Error {errno} while loading VM state")]
    Load {
        /// Negative errno (-22 = EINVAL for a bad stream).
        errno: i32,
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
    /// Anything else, already worded for the user.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The error and its causes, joined by `: ` (what QMP reports as `desc`).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
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

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_wording_and_chain() {
        let e = Error::Save {
            errno: -28,
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
