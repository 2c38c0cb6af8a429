//! The run-state machine's view of the KVM machine ([`cpr_runstate::VmControl`]).
//!
//! Before the guest is booted or restored there is no KVM machine at all (QEMU's
//! `prelaunch` after `-S`): every operation is then a no-op, as pausing vCPUs that do not
//! exist is in QEMU.

use kvm_bindings::kvm_clock_data;

use super::ownership::{OwnershipError, RamOwnership};

use crate::machine::{self, Machine};

/// What the run-state machine's operations on the slot can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The KVM machine failed.
    #[error(transparent)]
    Machine(#[from] machine::Error),
    /// The RAM is not this process's to run on.
    #[error(transparent)]
    Ram(#[from] OwnershipError),
}

/// Holds the machine (if any) for [`cpr_runstate::VmRunState`].
#[derive(Debug, Default)]
pub(crate) struct MachineSlot {
    /// The KVM machine, once booted or restored.
    pub machine: Option<Machine>,
    /// The RAM files: their lock and epoch tags. The vCPUs never run without the lock.
    pub ram: RamOwnership,
    /// kvmclock when the ticks were disabled (see `disable_ticks`).
    stopped_clock: Option<kvm_clock_data>,
}

impl MachineSlot {
    /// The machine, if there is one.
    pub(crate) fn get(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// Drops the clock recorded at the last stop (it belongs to a machine that is gone).
    pub(crate) fn forget_stopped_clock(&mut self) {
        self.stopped_clock = None;
    }
}

impl cpr_runstate::VmControl for MachineSlot {
    type Error = SlotError;

    fn pause_vcpus(&mut self) -> Result<(), Self::Error> {
        match &mut self.machine {
            Some(m) if m.is_running() => Ok(m.pause()?),
            _ => Ok(()),
        }
    }

    /// Resumes the vCPUs, except in S3: a suspended guest's vCPUs stay parked until the
    /// wakeup hook (`wakeup`) runs.
    fn resume_vcpus(&mut self) -> Result<(), Self::Error> {
        match &mut self.machine {
            Some(m) if !m.is_running() && !m.is_suspended() => {
                self.ram.before_run()?;
                Ok(m.resume()?)
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
                self.ram.before_run()?;
                Ok(m.wakeup()?)
            }
            _ => Ok(()),
        }
    }
}
