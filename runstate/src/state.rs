//! `RunState` (qapi/run-state.json) and `StatusInfo` (`query-status`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// QEMU's QAPI `RunState`, in schema order (the discriminant is QEMU's
/// `RUN_STATE_*` value).
///
/// Serde (de)serialises the QAPI name, so `StatusInfo` serialises to the
/// `query-status` return value as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum RunState {
    /// `debug`: QEMU is running on a debugger.
    Debug = 0,
    /// `inmigrate`: paused waiting for an incoming migration.
    Inmigrate,
    /// `internal-error`: an internal error prevents further guest execution.
    InternalError,
    /// `io-error`: the last I/O failed and the device pauses on I/O errors.
    IoError,
    /// `paused`: paused via the `stop` command.
    Paused,
    /// `postmigrate`: paused following a successful `migrate`.
    Postmigrate,
    /// `prelaunch`: started with `-S`, the guest has not run yet.
    Prelaunch,
    /// `finish-migrate`: paused to finish the migration process.
    FinishMigrate,
    /// `restore-vm`: paused to restore VM state.
    RestoreVm,
    /// `running`: the guest is actively running.
    Running,
    /// `save-vm`: paused to save VM state (cpr-save leaves a running VM here).
    SaveVm,
    /// `shutdown`: shut down with `-no-shutdown`.
    Shutdown,
    /// `suspended`: the guest is in ACPI S3.
    Suspended,
    /// `watchdog`: the watchdog fired with action `pause`.
    Watchdog,
    /// `guest-panicked`: the guest OS panicked.
    GuestPanicked,
    /// `colo`: paused for a COLO checkpoint.
    Colo,
}

impl RunState {
    /// Number of run states (QEMU's `RUN_STATE__MAX`).
    pub const COUNT: usize = 16;

    /// Every run state, in QAPI order.
    pub const ALL: [RunState; Self::COUNT] = [
        RunState::Debug,
        RunState::Inmigrate,
        RunState::InternalError,
        RunState::IoError,
        RunState::Paused,
        RunState::Postmigrate,
        RunState::Prelaunch,
        RunState::FinishMigrate,
        RunState::RestoreVm,
        RunState::Running,
        RunState::SaveVm,
        RunState::Shutdown,
        RunState::Suspended,
        RunState::Watchdog,
        RunState::GuestPanicked,
        RunState::Colo,
    ];

    /// The QAPI name (`RunState_str()`).
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Debug => "debug",
            RunState::Inmigrate => "inmigrate",
            RunState::InternalError => "internal-error",
            RunState::IoError => "io-error",
            RunState::Paused => "paused",
            RunState::Postmigrate => "postmigrate",
            RunState::Prelaunch => "prelaunch",
            RunState::FinishMigrate => "finish-migrate",
            RunState::RestoreVm => "restore-vm",
            RunState::Running => "running",
            RunState::SaveVm => "save-vm",
            RunState::Shutdown => "shutdown",
            RunState::Suspended => "suspended",
            RunState::Watchdog => "watchdog",
            RunState::GuestPanicked => "guest-panicked",
            RunState::Colo => "colo",
        }
    }

    /// QEMU's `RUN_STATE_*` value, usable as an index into `[_; COUNT]`.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `runstate_is_running()`: true only for `running` (not for
    /// `suspended`: a suspended guest's vCPUs are paused).
    pub const fn is_running(self) -> bool {
        matches!(self, RunState::Running)
    }

    /// `runstate_is_live()`: `running` or `suspended`.
    ///
    /// This is mainline QEMU 9.0's notion (added with `vm_was_suspended`,
    /// see the crate docs), not 6.2's: a suspended guest is live in that its
    /// clocks keep running and a wakeup resumes it without a `cont`.
    pub const fn is_live(self) -> bool {
        matches!(self, RunState::Running | RunState::Suspended)
    }

    /// `runstate_needs_reset()`: `internal-error` or `shutdown`; `cont` is
    /// refused in these states until `system_reset`.
    pub const fn needs_reset(self) -> bool {
        matches!(self, RunState::InternalError | RunState::Shutdown)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = Error;

    /// Exact, case-sensitive lookup of a QAPI name (`qapi_enum_parse()`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| Error::UnknownRunState {
                name: name.to_owned(),
            })
    }
}

/// The `query-status` return value (`StatusInfo`).
///
/// QEMU 6.2 also returned a deprecated `singlestep` member; it is not
/// modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// True only when `status` is `running`.
    pub running: bool,
    /// The current run state.
    pub status: RunState,
}

impl StatusInfo {
    /// The status of a VM in `state`.
    pub const fn new(state: RunState) -> Self {
        StatusInfo {
            running: state.is_running(),
            status: state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_all_sixteen() {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in RunState::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i, "ALL is in QAPI order");
            assert!(seen.insert(s.as_str()), "duplicate name {s}");
            assert_eq!(s.as_str().parse::<RunState>().ok(), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(seen.len(), RunState::COUNT);
    }

    #[test]
    fn qapi_names_in_schema_order() {
        let names: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "debug",
                "inmigrate",
                "internal-error",
                "io-error",
                "paused",
                "postmigrate",
                "prelaunch",
                "finish-migrate",
                "restore-vm",
                "running",
                "save-vm",
                "shutdown",
                "suspended",
                "watchdog",
                "guest-panicked",
                "colo",
            ]
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        for bad in [
            "",
            "Running",
            "RUNNING",
            "preconfig",
            "running ",
            "save_vm",
            "suspend",
        ] {
            match bad.parse::<RunState>() {
                Err(Error::UnknownRunState { name }) => assert_eq!(name, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        let err = "bogus".parse::<RunState>().unwrap_err();
        assert_eq!(err.to_string(), "invalid parameter value: bogus");
    }

    #[test]
    fn serde_uses_qapi_names() {
        for s in RunState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), s);
        }
        let info = serde_json::to_value(StatusInfo::new(RunState::Suspended)).unwrap();
        assert_eq!(
            info,
            serde_json::json!({"running": false, "status": "suspended"})
        );
    }

    #[test]
    fn only_running_is_running() {
        for s in RunState::ALL {
            assert_eq!(s.is_running(), s == RunState::Running);
            assert_eq!(StatusInfo::new(s).running, s == RunState::Running);
            assert_eq!(
                s.is_live(),
                matches!(s, RunState::Running | RunState::Suspended)
            );
        }
    }
}
