//! The run-state transition table, as data (`runstate_transitions_def[]`).
//!
//! [`QEMU_6_2_TRANSITIONS`] is QEMU 6.2's table in QEMU's order, including
//! its one duplicated row. [`SERIES_TRANSITIONS`] holds the edges the Live
//! Update V7 series adds. [`TRANSITIONS`] is the two concatenated, and is what
//! [`check_transition`] consults (through a 16×16 matrix built at compile
//! time, as QEMU's `runstate_init()` builds `runstate_valid_transitions`).

use crate::error::{Error, Result};
use crate::state::RunState;
use crate::state::RunState::{
    Colo, Debug, FinishMigrate, GuestPanicked, Inmigrate, InternalError, IoError, Paused,
    Postmigrate, Prelaunch, RestoreVm, Running, SaveVm, Shutdown, Suspended, Watchdog,
};

/// A `(from, to)` edge.
pub type Transition = (RunState, RunState);

/// QEMU 6.2 `softmmu/runstate.c` `runstate_transitions_def[]`, row for row.
///
/// Notable absences, each a hazard for cpr-load (see the crate docs):
/// `paused -> suspended`, `suspended -> paused`, `prelaunch -> paused` and
/// `prelaunch -> suspended` (the last two come from [`SERIES_TRANSITIONS`]).
pub const QEMU_6_2_TRANSITIONS: &[Transition] = &[
    (Prelaunch, Inmigrate),
    //
    (Debug, Running),
    (Debug, FinishMigrate),
    (Debug, Prelaunch),
    //
    (Inmigrate, InternalError),
    (Inmigrate, IoError),
    (Inmigrate, Paused),
    (Inmigrate, Running),
    (Inmigrate, Shutdown),
    (Inmigrate, Suspended),
    (Inmigrate, Watchdog),
    (Inmigrate, GuestPanicked),
    (Inmigrate, FinishMigrate),
    (Inmigrate, Prelaunch),
    (Inmigrate, Postmigrate),
    (Inmigrate, Colo),
    //
    (InternalError, Paused),
    (InternalError, FinishMigrate),
    (InternalError, Prelaunch),
    //
    (IoError, Running),
    (IoError, FinishMigrate),
    (IoError, Prelaunch),
    //
    (Paused, Running),
    (Paused, FinishMigrate),
    (Paused, Postmigrate),
    (Paused, Prelaunch),
    (Paused, Colo),
    //
    (Postmigrate, Running),
    (Postmigrate, FinishMigrate),
    (Postmigrate, Prelaunch),
    //
    (Prelaunch, Running),
    (Prelaunch, FinishMigrate),
    // QEMU lists this row twice (also first in the table).
    (Prelaunch, Inmigrate),
    //
    (FinishMigrate, Running),
    (FinishMigrate, Paused),
    (FinishMigrate, Postmigrate),
    (FinishMigrate, Prelaunch),
    (FinishMigrate, Colo),
    //
    (RestoreVm, Running),
    (RestoreVm, Prelaunch),
    //
    (Colo, Running),
    (Colo, Prelaunch),
    (Colo, Shutdown),
    //
    (Running, Debug),
    (Running, InternalError),
    (Running, IoError),
    (Running, Paused),
    (Running, FinishMigrate),
    (Running, RestoreVm),
    (Running, SaveVm),
    (Running, Shutdown),
    (Running, Watchdog),
    (Running, GuestPanicked),
    (Running, Colo),
    //
    (SaveVm, Running),
    //
    (Shutdown, Paused),
    (Shutdown, FinishMigrate),
    (Shutdown, Prelaunch),
    (Shutdown, Colo),
    //
    (Debug, Suspended),
    (Running, Suspended),
    (Suspended, Running),
    (Suspended, FinishMigrate),
    (Suspended, Prelaunch),
    (Suspended, Colo),
    //
    (Watchdog, Running),
    (Watchdog, FinishMigrate),
    (Watchdog, Prelaunch),
    (Watchdog, Colo),
    //
    (GuestPanicked, Running),
    (GuestPanicked, FinishMigrate),
    (GuestPanicked, Prelaunch),
];

/// Edges the Live Update V7 series adds to the 6.2 table.
///
/// * `prelaunch -> suspended` (patch 5, "vl: start on wakeup request"):
///   cpr-load into a `-S` QEMU restores a guest that was saved `suspended`
///   with a bare `runstate_set(suspended)`, and arms start-on-wakeup.
/// * `prelaunch -> paused` (patch 5 in V7; in review Steve Sistare agreed it
///   belongs in patch 6, "cpr: reboot mode"): cpr-load restores a guest that
///   was saved `paused` into a `-S` QEMU.
///
/// Neither edge was merged into QEMU; 9.0 instead added `paused <-> suspended`
/// for its `vm_was_suspended` scheme, which this crate does not add.
pub const SERIES_TRANSITIONS: &[Transition] = &[(Prelaunch, Suspended), (Prelaunch, Paused)];

const TOTAL: usize = QEMU_6_2_TRANSITIONS.len() + SERIES_TRANSITIONS.len();

const fn concat() -> [Transition; TOTAL] {
    let mut out = [(Debug, Debug); TOTAL];
    let mut i = 0;
    while i < QEMU_6_2_TRANSITIONS.len() {
        out[i] = QEMU_6_2_TRANSITIONS[i];
        i += 1;
    }
    let mut j = 0;
    while j < SERIES_TRANSITIONS.len() {
        out[i + j] = SERIES_TRANSITIONS[j];
        j += 1;
    }
    out
}

const COMBINED: [Transition; TOTAL] = concat();

/// The table this crate enforces: [`QEMU_6_2_TRANSITIONS`] followed by
/// [`SERIES_TRANSITIONS`].
pub const TRANSITIONS: &[Transition] = &COMBINED;

const fn build_matrix() -> [[bool; RunState::COUNT]; RunState::COUNT] {
    let mut m = [[false; RunState::COUNT]; RunState::COUNT];
    let mut i = 0;
    while i < TRANSITIONS.len() {
        let (from, to) = TRANSITIONS[i];
        m[from.index()][to.index()] = true;
        i += 1;
    }
    m
}

const VALID: [[bool; RunState::COUNT]; RunState::COUNT] = build_matrix();

/// Whether `(from, to)` is listed in [`TRANSITIONS`]. No state is listed as
/// a transition to itself.
pub const fn is_listed(from: RunState, to: RunState) -> bool {
    VALID[from.index()][to.index()]
}

/// The check `runstate_set()` makes: setting the current state again is a
/// no-op success (QEMU returns early before consulting the table); any other
/// edge must be listed.
pub const fn check_transition(from: RunState, to: RunState) -> Result<()> {
    if from as u8 == to as u8 || is_listed(from, to) {
        Ok(())
    } else {
        Err(Error::InvalidTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_sizes_pin_the_transcription() {
        // 72 rows in QEMU 6.2, one of them (prelaunch -> inmigrate) twice.
        assert_eq!(QEMU_6_2_TRANSITIONS.len(), 72);
        let distinct: HashSet<_> = QEMU_6_2_TRANSITIONS.iter().collect();
        assert_eq!(distinct.len(), 71);
        assert_eq!(TRANSITIONS.len(), 74);
        let all: HashSet<_> = TRANSITIONS.iter().collect();
        assert_eq!(all.len(), 73);
    }

    #[test]
    fn no_self_loops_and_series_edges_are_new() {
        for &(f, t) in TRANSITIONS {
            assert_ne!(f, t);
        }
        for e in SERIES_TRANSITIONS {
            assert!(!QEMU_6_2_TRANSITIONS.contains(e), "{e:?} already in 6.2");
        }
    }

    #[test]
    fn full_matrix_against_table() {
        let mut accepted = 0;
        for from in RunState::ALL {
            for to in RunState::ALL {
                let listed = TRANSITIONS.contains(&(from, to));
                assert_eq!(is_listed(from, to), listed, "{from} -> {to}");
                match check_transition(from, to) {
                    Ok(()) => {
                        assert!(listed || from == to, "{from} -> {to} accepted");
                        accepted += 1;
                    }
                    Err(Error::InvalidTransition { from: f, to: t }) => {
                        assert!(!listed && from != to, "{from} -> {to} rejected");
                        assert_eq!((f, t), (from, to));
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
        // 73 distinct edges plus 16 same-state no-ops.
        assert_eq!(accepted, 73 + 16);
    }

    #[test]
    fn cpr_hazard_edges() {
        // Present thanks to the series.
        assert!(is_listed(Prelaunch, Suspended));
        assert!(is_listed(Prelaunch, Paused));
        // Absent in 6.2 and not added by V7: cpr-load of a suspended file
        // into a paused VM (and the reverse) is invalid.
        assert!(!is_listed(Paused, Suspended));
        assert!(!is_listed(Suspended, Paused));
        // Absent: a saved shutdown / guest-panicked / io-error state cannot
        // be restored into prelaunch.
        for to in [
            Shutdown,
            GuestPanicked,
            IoError,
            InternalError,
            Watchdog,
            Debug,
        ] {
            assert!(!is_listed(Prelaunch, to), "prelaunch -> {to}");
        }
        assert_eq!(
            check_transition(Paused, Suspended).unwrap_err().to_string(),
            "invalid runstate transition: 'paused' -> 'suspended'"
        );
    }
}
