//! The run-state machine: softmmu/runstate.c and the run-state half of
//! softmmu/cpus.c (`vm_start`, `vm_stop`), with patch 5 applied.

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::control::{ControlOp, VmControl};
use crate::error::{Error, Result};
use crate::event::{Event, TimedEvent};
use crate::state::{RunState, StatusInfo};
use crate::table::check_transition;
use crate::wakeup::{WakeupReason, WakeupReasons};

#[cfg(test)]
mod tests;

/// A VM's run state, the pending main-loop requests, and the machine they
/// drive.
///
/// QEMU keeps this in file-scope globals and splits each guest-triggered
/// operation in two: a *request* (any thread; sets a flag) and its
/// *processing* in `main_loop_should_exit()`. Both halves are kept and kept
/// separate here: [`suspend_request`](Self::suspend_request) /
/// [`process_suspend`](Self::process_suspend),
/// [`wakeup_request`](Self::wakeup_request) /
/// [`process_wakeup`](Self::process_wakeup),
/// [`vmstop_request`](Self::vmstop_request), with
/// [`process_requests`](Self::process_requests) running the processing steps
/// in QEMU's order. Events are queued; the VMM drains them with
/// [`drain_events`](Self::drain_events).
///
/// A new instance is in `prelaunch`, QEMU's initial state.
#[derive(Debug)]
pub struct VmRunState<M> {
    state: RunState,
    machine: M,
    wakeup_reason_mask: WakeupReasons,
    wakeup_reason: WakeupReason,
    start_on_wakeup_requested: bool,
    suspend_requested: bool,
    vmstop_requested: Option<RunState>,
    wakeup_suspend_enabled: bool,
    events: VecDeque<TimedEvent>,
}

impl<M: VmControl> VmRunState<M> {
    /// A VM in `prelaunch` with QEMU's default wakeup mask, no pending
    /// requests and no wakeup support registered.
    pub fn new(machine: M) -> Self {
        VmRunState {
            state: RunState::Prelaunch,
            machine,
            wakeup_reason_mask: WakeupReasons::QEMU_DEFAULT,
            wakeup_reason: WakeupReason::None,
            start_on_wakeup_requested: false,
            suspend_requested: false,
            vmstop_requested: None,
            wakeup_suspend_enabled: false,
            events: VecDeque::new(),
        }
    }

    /// The current run state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// `runstate_is_running()`.
    pub fn is_running(&self) -> bool {
        self.state.is_running()
    }

    /// `query-status`.
    pub fn query_status(&self) -> StatusInfo {
        StatusInfo::new(self.state)
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, mutably.
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// Give the machine back.
    pub fn into_machine(self) -> M {
        self.machine
    }

    /// `runstate_set()`: change the bookkeeping only; the machine is not
    /// touched and no event is emitted.
    ///
    /// Setting the current state again succeeds and does nothing. An edge not
    /// in [`TRANSITIONS`](crate::TRANSITIONS) is
    /// [`Error::InvalidTransition`] and leaves the state unchanged, where
    /// QEMU aborts.
    pub fn runstate_set(&mut self, to: RunState) -> Result<()> {
        check_transition(self.state, to)?;
        self.state = to;
        Ok(())
    }

    /// `vm_start()` (6.2 `vm_prepare_start()` + `resume_all_vcpus()`).
    ///
    /// * Consumes a pending [`vmstop_request`](Self::vmstop_request).
    /// * Already `running`: nothing, unless a stop request was pending, in
    ///   which case `STOP` then `RESUME` are emitted (QEMU's guarantee that
    ///   e.g. `BLOCK_IO_ERROR` is always followed by `STOP`) and the VM keeps
    ///   running.
    /// * Otherwise: check the edge to `running` first (QEMU would abort
    ///   half-way, e.g. from `shutdown`; here nothing happens), then enable
    ///   ticks, resume vCPUs, set `running`, emit `RESUME`.
    pub fn vm_start(&mut self) -> Result<()> {
        let stop_was_requested = self.vmstop_requested.take().is_some();
        if self.state.is_running() {
            if stop_was_requested {
                self.emit(Event::Stop);
                self.emit(Event::Resume);
            }
            return Ok(());
        }
        check_transition(self.state, RunState::Running)?;
        machine_step(ControlOp::EnableTicks, self.machine.enable_ticks())?;
        machine_step(ControlOp::ResumeVcpus, self.machine.resume_vcpus())?;
        self.state = RunState::Running;
        self.emit(Event::Resume);
        Ok(())
    }

    /// `vm_stop(state)` from the main thread (`do_vm_stop(state, true)`).
    ///
    /// Only a *running* VM is stopped: ticks disabled, vCPUs paused, run
    /// state set to `state`, `STOP` emitted. When the VM is not running this
    /// does nothing at all — no run-state change, no event — which cpr-save
    /// relies on to leave a `suspended` or `paused` VM as it is. (Draining
    /// and flushing block devices, which QEMU does in both cases, is the
    /// caller's business.)
    ///
    /// `vm_stop(running)` on a running VM is rejected as
    /// `InvalidTransition { running, running }`: QEMU would pause the vCPUs
    /// and emit `STOP` while still claiming `running`.
    pub fn vm_stop(&mut self, state: RunState) -> Result<()> {
        if !self.state.is_running() {
            return Ok(());
        }
        if state.is_running() {
            return Err(Error::InvalidTransition {
                from: self.state,
                to: state,
            });
        }
        check_transition(self.state, state)?;
        machine_step(ControlOp::DisableTicks, self.machine.disable_ticks())?;
        machine_step(ControlOp::PauseVcpus, self.machine.pause_vcpus())?;
        self.state = state;
        self.emit(Event::Stop);
        Ok(())
    }

    /// `qemu_system_vmstop_request()`: ask the main loop to `vm_stop(state)`
    /// (a vCPU thread cannot stop the VM itself). A later request replaces an
    /// earlier one; [`vm_start`](Self::vm_start) consumes it.
    pub fn vmstop_request(&mut self, state: RunState) {
        self.vmstop_requested = Some(state);
    }

    /// `qemu_system_suspend_request()`: the guest asked for S3. Ignored when
    /// already `suspended`.
    pub fn suspend_request(&mut self) {
        if self.state != RunState::Suspended {
            self.suspend_requested = true;
        }
    }

    /// Whether a suspend request is pending.
    pub fn suspend_requested(&self) -> bool {
        self.suspend_requested
    }

    /// The main loop's `qemu_system_suspend()`, if a suspend was requested:
    /// pause vCPUs, set `suspended`, emit `SUSPEND`. Returns whether a
    /// request was processed.
    ///
    /// Ticks are left enabled, as in QEMU (cpr-save disables them itself for
    /// a suspended VM). The request is consumed even when the edge to
    /// `suspended` is invalid (e.g. the VM was stopped meanwhile), as QEMU
    /// clears it before acting.
    pub fn process_suspend(&mut self) -> Result<bool> {
        if !std::mem::take(&mut self.suspend_requested) {
            return Ok(false);
        }
        check_transition(self.state, RunState::Suspended)?;
        machine_step(ControlOp::PauseVcpus, self.machine.pause_vcpus())?;
        self.state = RunState::Suspended;
        self.emit(Event::Suspend);
        Ok(true)
    }

    /// `qemu_system_start_on_wakeup_request()` (patch 5): make the next
    /// accepted wakeup do a full [`vm_start`](Self::vm_start). cpr-load arms
    /// this after restoring a `suspended` guest, because this process never
    /// ran `vm_start()` for it.
    pub fn start_on_wakeup_request(&mut self) {
        self.start_on_wakeup_requested = true;
    }

    /// Whether start-on-wakeup is armed.
    pub fn start_on_wakeup_requested(&self) -> bool {
        self.start_on_wakeup_requested
    }

    /// `qemu_system_wakeup_request(reason)` with patch 5.
    ///
    /// * Not `suspended` → [`Error::NotSuspended`]
    ///   (`Unable to wake up: guest is not in suspended state`).
    /// * `reason` not enabled in the mask → `Ok(())`, nothing happens.
    /// * Start-on-wakeup armed → [`vm_start`](Self::vm_start) (`RESUME`,
    ///   ticks on, vCPUs resumed), then disarm; the flag stays armed if
    ///   `vm_start` fails, so the request can be retried.
    /// * Otherwise → the pre-patch bare `runstate_set(running)`.
    ///
    /// Then `reason` is recorded for [`process_wakeup`](Self::process_wakeup).
    pub fn wakeup_request(&mut self, reason: WakeupReason) -> Result<()> {
        if self.state != RunState::Suspended {
            return Err(Error::NotSuspended { state: self.state });
        }
        if !self.wakeup_reason_mask.contains(reason.flag()) {
            return Ok(());
        }
        if self.start_on_wakeup_requested {
            self.vm_start()?;
            self.start_on_wakeup_requested = false;
        } else {
            self.runstate_set(RunState::Running)?;
        }
        self.wakeup_reason = reason;
        Ok(())
    }

    /// The pending wakeup reason, if any (`WakeupReason::None` means none).
    pub fn wakeup_pending(&self) -> WakeupReason {
        self.wakeup_reason
    }

    /// The main loop's half of a wakeup, if one is pending: pause vCPUs, run
    /// the machine's wakeup hook with the reason, clear the reason, resume
    /// vCPUs (only if `running`, as `resume_all_vcpus()` checks), emit
    /// `WAKEUP`. Returns whether a wakeup was processed.
    ///
    /// On a machine error the reason stays pending.
    pub fn process_wakeup(&mut self) -> Result<bool> {
        let reason = self.wakeup_reason;
        if reason == WakeupReason::None {
            return Ok(false);
        }
        machine_step(ControlOp::PauseVcpus, self.machine.pause_vcpus())?;
        machine_step(ControlOp::Wakeup, self.machine.wakeup(reason))?;
        if self.state.is_running() {
            machine_step(ControlOp::ResumeVcpus, self.machine.resume_vcpus())?;
        }
        self.wakeup_reason = WakeupReason::None;
        self.emit(Event::Wakeup);
        Ok(true)
    }

    /// The run-state part of `main_loop_should_exit()`, in QEMU's order:
    /// suspend, wakeup, then a pending [`vmstop_request`](Self::vmstop_request).
    /// Stops at the first error.
    pub fn process_requests(&mut self) -> Result<()> {
        self.process_suspend()?;
        self.process_wakeup()?;
        if let Some(state) = self.vmstop_requested.take() {
            self.vm_stop(state)?;
        }
        Ok(())
    }

    /// `qemu_system_wakeup_enable()`.
    pub fn set_wakeup_reason_enabled(&mut self, reason: WakeupReason, enabled: bool) {
        self.wakeup_reason_mask.set(reason.flag(), enabled);
    }

    /// The enabled wakeup reasons.
    pub fn wakeup_reasons(&self) -> WakeupReasons {
        self.wakeup_reason_mask
    }

    /// `qemu_register_wakeup_support()`: the machine can wake from S3.
    pub fn register_wakeup_support(&mut self) {
        self.wakeup_suspend_enabled = true;
    }

    /// `qemu_wakeup_suspend_enabled()`.
    pub fn wakeup_suspend_enabled(&self) -> bool {
        self.wakeup_suspend_enabled
    }

    /// QMP `system_wakeup`: [`Error::WakeupNotSupported`] unless wakeup
    /// support was registered, else [`wakeup_request`](Self::wakeup_request)
    /// with [`WakeupReason::Other`]. The `WAKEUP` event follows from
    /// [`process_wakeup`](Self::process_wakeup).
    pub fn system_wakeup(&mut self) -> Result<()> {
        if !self.wakeup_suspend_enabled {
            return Err(Error::WakeupNotSupported);
        }
        self.wakeup_request(WakeupReason::Other)
    }

    /// Take every queued event, oldest first.
    pub fn drain_events(&mut self) -> impl Iterator<Item = TimedEvent> + '_ {
        self.events.drain(..)
    }

    fn emit(&mut self, event: Event) {
        self.events.push_back(TimedEvent {
            event,
            timestamp: SystemTime::now(),
        });
    }
}

fn machine_step<E>(op: ControlOp, r: std::result::Result<(), E>) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    r.map_err(|e| Error::Machine {
        op,
        source: Box::new(e),
    })
}
