//! QEMU's run-state machine, with Live Update V7 patch 5 applied.
//!
//! # The patch
//!
//! Patch 5 of Steve Sistare's "Live Update" V7 series (Dec 2021),
//! **"vl: start on wakeup request"**, touches `include/sysemu/runstate.h` and
//! `softmmu/runstate.c`. This crate mirrors those files (the transition
//! table, `runstate_set`, suspend/wakeup requests, `query-status`) plus the
//! run-state half of `softmmu/cpus.c` (`vm_start`, `vm_stop`) and the
//! `globalstate` payload of `migration/global_state.c`, which the `cpr`
//! crate needs.
//!
//! **Problem.** cpr-load restores a guest saved `suspended` with a bare
//! `runstate_set(suspended)`: this QEMU process never ran `vm_start()` for
//! it. The later wakeup (`system_wakeup`) only sets the run state to
//! `running` and lets the main loop pause vCPUs, run the machine's wakeup
//! hook, resume vCPUs and emit `WAKEUP`. Nothing emits `RESUME`, enables the
//! CPU ticks or runs the running=1 vm-change-state notifiers (e.g. kvmclock):
//! the run state says `running` but the guest isn't really — "fatal for the
//! guest", as the 2023 repost puts it.
//!
//! **Fix.** A flag, `start_on_wakeup_requested`, armed by the new
//! `qemu_system_start_on_wakeup_request()` (cpr-load calls it after restoring
//! a suspended guest). `qemu_system_wakeup_request()` then, once its existing
//! checks pass, clears the flag and does a full `vm_start()` instead of the
//! bare `runstate_set(running)`. The event order becomes `RESUME` (inside the
//! command) then `WAKEUP` (from the main loop). The transition table gains
//! `prelaunch -> suspended` and `prelaunch -> paused` (the latter moved to
//! patch 6, "cpr: reboot mode", after review).
//!
//! **Fate.** Never merged. Mainline QEMU 9.0 solved the same problem with
//! `vm_was_suspended`: `vm_stop` on a suspended VM fully stops it into
//! `paused` and remembers it was suspended, the flag travels in
//! `globalstate`, and the incoming side calls `vm_start()`, which restores
//! `suspended` rather than `running`. `RunState::is_live` and the 9.0
//! `globalstate` layout are provided for that world; the 9.0 transitions are
//! not.
//!
//! # This crate
//!
//! * [`RunState`] — the 16 QAPI run states with their names.
//! * [`TRANSITIONS`] — QEMU 6.2's `runstate_transitions_def[]` as data
//!   ([`QEMU_6_2_TRANSITIONS`]) plus the series' edges
//!   ([`SERIES_TRANSITIONS`]); [`check_transition`] consults it.
//! * [`VmRunState`] — the run state, the wakeup mask and pending reason, the
//!   start-on-wakeup, suspend and vmstop requests, the wakeup-support flag,
//!   and a [`VmControl`] (vCPUs, ticks, wakeup hook) it drives. Requests and
//!   their main-loop processing are separate calls, as in QEMU. Events
//!   ([`Event`]) are queued with a timestamp for the VMM's QMP monitor to
//!   drain.
//! * [`GlobalState`] — the `globalstate` section payload.
//! * [`Error`] — one error enum carrying QEMU's wording.
//!
//! ```
//! use cpr_runstate::{Event, RunState, VmControl, VmRunState, WakeupReason};
//! # #[derive(Default)] struct Kvm;
//! # impl VmControl for Kvm {
//! #     type Error = std::convert::Infallible;
//! #     fn pause_vcpus(&mut self) -> Result<(), Self::Error> { Ok(()) }
//! #     fn resume_vcpus(&mut self) -> Result<(), Self::Error> { Ok(()) }
//! #     fn enable_ticks(&mut self) -> Result<(), Self::Error> { Ok(()) }
//! #     fn disable_ticks(&mut self) -> Result<(), Self::Error> { Ok(()) }
//! #     fn wakeup(&mut self, _: WakeupReason) -> Result<(), Self::Error> { Ok(()) }
//! # }
//! // cpr-load of a guest saved `suspended`, into a fresh `-S` VMM.
//! let mut vm = VmRunState::new(Kvm::default());
//! vm.runstate_set(RunState::Suspended)?;
//! vm.start_on_wakeup_request();
//!
//! // QMP `system_wakeup`, then the main loop.
//! vm.register_wakeup_support();
//! vm.system_wakeup()?;
//! vm.process_requests()?;
//!
//! let events: Vec<Event> = vm.drain_events().map(|e| e.event).collect();
//! assert_eq!(events, [Event::Resume, Event::Wakeup]);
//! assert!(vm.query_status().running);
//! # Ok::<(), cpr_runstate::Error>(())
//! ```
//!
//! # Deliberate differences from QEMU
//!
//! * **Invalid transitions are errors, not aborts.** QEMU's `runstate_set()`
//!   calls `abort()`; here every operation checks the edge before touching
//!   the machine and returns [`Error::InvalidTransition`]. This matters for
//!   cpr-load: loading a file saved `suspended` into a VM that is already
//!   `paused` needs `paused -> suspended`, which is in neither the 6.2 table
//!   nor V7, so V7 QEMU aborts. The table is kept faithful; that load is an
//!   `Err` the cpr layer reports (as are saved `shutdown`, `guest-panicked`,
//!   `io-error`... states, which `prelaunch` cannot reach either).
//! * **Machine steps can fail** ([`Error::Machine`]); the run state is then
//!   left unchanged and no event is queued.
//! * **`vm_stop(running)`** on a running VM is rejected instead of pausing a
//!   VM that still claims to run.
//! * **`globalstate` decoding is strict** about `size` and the NUL
//!   terminator (see [`global_state`]).

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod control;
mod error;
mod event;
pub mod global_state;
mod state;
mod table;
mod vm;
mod wakeup;

pub use control::{ControlOp, VmControl};
pub use error::{Error, Result};
pub use event::{Event, TimedEvent};
pub use global_state::{GlobalState, decode_global_state, encode_global_state};
pub use state::{RunState, StatusInfo};
pub use table::{
    QEMU_6_2_TRANSITIONS, SERIES_TRANSITIONS, TRANSITIONS, Transition, check_transition, is_listed,
};
pub use vm::VmRunState;
pub use wakeup::{WakeupReason, WakeupReasons};
