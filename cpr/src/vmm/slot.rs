//! The run-state machine's view of the KVM machine ([`cpr_runstate::Machine`]).
//!
//! Before the guest is booted or restored there is no KVM machine at all (QEMU's
//! `prelaunch` after `-S`): every operation is then a no-op, as pausing vCPUs that do not
//! exist is in QEMU.

use std::path::PathBuf;

use kvm_bindings::kvm_clock_data;

use crate::machine::{self, Machine};

/// The RAM files' epoch tags (see `epoch.rs`): they say `running` before any vCPU runs,
/// so even a VMM killed a moment later never leaves changed RAM under an old epoch.
#[derive(Debug, Default)]
pub struct RamTags {
    /// The file-backed RAM files.
    pub files: Vec<PathBuf>,
    /// They are tagged `running` now.
    pub running: bool,
}

impl RamTags {
    /// Tags the files `running` (once).
    pub fn before_run(&mut self) {
        if !self.running {
            super::epoch::tag(&self.files, super::epoch::RUNNING);
            self.running = true;
        }
    }
}

/// Holds the machine (if any) for [`cpr_runstate::VmRunState`].
#[derive(Debug, Default)]
pub struct MachineSlot {
    /// The KVM machine, once booted or restored.
    pub machine: Option<Machine>,
    /// The RAM files' epoch tags.
    pub tags: RamTags,
    /// kvmclock when the ticks were disabled (see `disable_ticks`).
    stopped_clock: Option<kvm_clock_data>,
}

impl MachineSlot {
    /// The machine, if there is one.
    pub fn get(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// The machine, if there is one.
    pub fn get_mut(&mut self) -> Option<&mut Machine> {
        self.machine.as_mut()
    }

    /// Drops the clock recorded at the last stop (it belongs to a machine that is gone).
    pub fn forget_stopped_clock(&mut self) {
        self.stopped_clock = None;
    }
}

impl cpr_runstate::Machine for MachineSlot {
    type Error = machine::Error;

    fn pause_vcpus(&mut self) -> Result<(), Self::Error> {
        match &mut self.machine {
            Some(m) if m.is_running() => m.pause(),
            _ => Ok(()),
        }
    }

    /// Resumes the vCPUs, except in S3: a suspended guest's vCPUs stay parked until the
    /// wakeup hook (`wakeup`) runs.
    fn resume_vcpus(&mut self) -> Result<(), Self::Error> {
        match &mut self.machine {
            Some(m) if !m.is_running() && !m.is_suspended() => {
                self.tags.before_run();
                m.resume()
            }
            _ => Ok(()),
        }
    }

    /// QEMU's `cpu_enable_ticks` for a KVM guest is kvmclock's state-change hook: put back
    /// the clock read when the VM stopped, so guest kvmclock time does not include the
    /// stop (this host reports no TSC_STABLE, so KVM would not do it for us).
    fn enable_ticks(&mut self) -> Result<(), Self::Error> {
        if let (Some(m), Some(clock)) = (&self.machine, self.stopped_clock.take()) {
            let clock = kvm_clock_data {
                clock: clock.clock,
                ..Default::default()
            };
            m.vm_fd()
                .set_clock(&clock)
                .map_err(|source| machine::Error::Kvm {
                    op: "KVM_SET_CLOCK",
                    source,
                })?;
        }
        Ok(())
    }

    /// Records kvmclock (QEMU's kvmclock `vm_state_change` with running = 0).
    fn disable_ticks(&mut self) -> Result<(), Self::Error> {
        if let Some(m) = &self.machine {
            let clock = m
                .vm_fd()
                .get_clock()
                .map_err(|source| machine::Error::Kvm {
                    op: "KVM_GET_CLOCK",
                    source,
                })?;
            self.stopped_clock = Some(clock);
        }
        Ok(())
    }

    /// The machine's wakeup hook: leave S3 (the vCPUs continue after the PM1 write).
    fn wakeup(&mut self, _reason: cpr_runstate::WakeupReason) -> Result<(), Self::Error> {
        match &mut self.machine {
            Some(m) if m.is_suspended() => {
                self.tags.before_run();
                m.wakeup()
            }
            _ => Ok(()),
        }
    }
}
