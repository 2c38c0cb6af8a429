//! The crate's single error type.
//!
//! Messages reuse QEMU's wording where QEMU has one, so a QMP layer can put
//! `err.to_string()` straight into a `GenericError` `desc`.

use crate::control::ControlOp;
use crate::state::RunState;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `from -> to` is not in the transition table.
    ///
    /// QEMU's `runstate_set()` prints this message and calls `abort()`; here
    /// it is a value the caller (e.g. cpr-load) reports.
    #[error("invalid runstate transition: '{from}' -> '{to}'")]
    InvalidTransition {
        /// The current run state.
        from: RunState,
        /// The requested run state.
        to: RunState,
    },

    /// A run-state name that is not one of the 16 QAPI `RunState` values
    /// (wording of QEMU 6.2's `qapi_enum_parse()`).
    #[error("invalid parameter value: {name}")]
    UnknownRunState {
        /// The rejected name.
        name: String,
    },

    /// `system_wakeup` / a wakeup request while the guest is not suspended.
    #[error("Unable to wake up: guest is not in suspended state")]
    NotSuspended {
        /// The run state at the time of the request.
        state: RunState,
    },

    /// `system_wakeup` on a machine that never registered wakeup support
    /// (QEMU's `qemu_register_wakeup_support()`).
    #[error("wake-up from suspend is not supported by this guest")]
    WakeupNotSupported,

    /// A [`VmControl`](crate::VmControl) step failed.
    ///
    /// The run state is committed only after every machine step of an
    /// operation succeeded, so after this error the run state and the event
    /// queue are as they were before the call; machine steps that already ran
    /// are not undone.
    #[error("machine failed to {op}")]
    Machine {
        /// The step that failed.
        op: ControlOp,
        /// The machine's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The `globalstate` runstate buffer has no NUL byte.
    #[error("globalstate runstate name is not NUL-terminated")]
    GlobalStateUnterminated,

    /// The `globalstate` runstate name is not UTF-8 (so it cannot be a
    /// run-state name).
    #[error("globalstate runstate name is not valid UTF-8")]
    GlobalStateNotUtf8,

    /// The `globalstate` `size` field is not `strlen(runstate) + 1`.
    #[error("globalstate size {size} does not match the runstate name (expected {expected})")]
    GlobalStateSize {
        /// The `size` field as read.
        size: u32,
        /// `strlen(runstate) + 1` for the buffer as read.
        expected: u32,
    },

    /// A `globalstate` payload of the wrong length.
    #[error("globalstate payload is {len} bytes, expected {expected}")]
    GlobalStateLength {
        /// Bytes supplied.
        len: usize,
        /// Bytes required.
        expected: usize,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
