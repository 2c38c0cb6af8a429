//! The machine the run-state machine drives.

use std::fmt;

use crate::wakeup::WakeupReason;

/// The VMM hooks QEMU's run-state code calls.
///
/// Every method is required (no default bodies) and fallible: pausing vCPU
/// threads or saving/restoring the guest clock (`KVM_GET_CLOCK` /
/// `KVM_SET_CLOCK`) can fail in a real VMM, where QEMU's counterparts
/// cannot. A failure is returned as [`Error::Machine`](crate::Error::Machine)
/// naming the [`ControlOp`].
pub trait VmControl {
    /// The machine's error type, boxed into [`Error::Machine`](crate::Error::Machine).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stop every vCPU and wait until they are stopped
    /// (`pause_all_vcpus()`).
    fn pause_vcpus(&mut self) -> Result<(), Self::Error>;

    /// Let every vCPU run again (`resume_all_vcpus()`). Only called when the
    /// run state is (about to be) `running`, as QEMU's early return ensures.
    fn resume_vcpus(&mut self) -> Result<(), Self::Error>;

    /// Start guest time (`cpu_enable_ticks()` plus the running=1 side of the
    /// vm-change-state notifiers, e.g. kvmclock's `KVM_SET_CLOCK`).
    fn enable_ticks(&mut self) -> Result<(), Self::Error>;

    /// Freeze guest time (`cpu_disable_ticks()` plus the running=0 side of
    /// the vm-change-state notifiers, e.g. kvmclock's `KVM_GET_CLOCK`).
    fn disable_ticks(&mut self) -> Result<(), Self::Error>;

    /// The machine's wakeup hook (`MachineClass::wakeup`) and the wakeup
    /// notifiers, which receive the reason (x86 ACPI sets the matching PM1
    /// status bit). Called with vCPUs paused.
    fn wakeup(&mut self, reason: WakeupReason) -> Result<(), Self::Error>;
}

/// Which [`VmControl`] step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlOp {
    /// [`VmControl::pause_vcpus`].
    PauseVcpus,
    /// [`VmControl::resume_vcpus`].
    ResumeVcpus,
    /// [`VmControl::enable_ticks`].
    EnableTicks,
    /// [`VmControl::disable_ticks`].
    DisableTicks,
    /// [`VmControl::wakeup`].
    Wakeup,
}

impl fmt::Display for ControlOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlOp::PauseVcpus => "pause vcpus",
            ControlOp::ResumeVcpus => "resume vcpus",
            ControlOp::EnableTicks => "enable ticks",
            ControlOp::DisableTicks => "disable ticks",
            ControlOp::Wakeup => "run the wakeup hook",
        })
    }
}
