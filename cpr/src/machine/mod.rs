//! The KVM machine: VM, vCPU threads, devices and the built-in guest.
//!
//! A [`Machine`] is created over guest RAM that the caller provides (a vm-memory
//! `GuestMemoryMmap`, from `cpr_memory::GuestRam::memory`) and either **booted** fresh
//! ([`Machine::boot`]) or **restored** from a [`MachineState`] captured by another
//! machine over the same RAM ([`Machine::restore`]), without touching RAM contents.
//!
//! * Memory map, boot protocol and every shared constant: `layout`.
//! * Guest sources: `cpr/guest/kernel.s` (CPL0, emulated on this host, tiny) and
//!   `cpr/guest/user.s` (CPL3 workload, native speed); see `cpr/guest/README.md`.
//! * Devices and their registers: `devices` (COM1 `0x3f8`, PM1a_CNT `0x604`,
//!   test device MMIO `0xD000_0000`).
//! * Per-component state: [`VcpuState`] (next to the vCPU code), [`KvmVmState`] (irqchips,
//!   PIT, kvmclock), [`SerialDeviceState`], [`PmState`], [`TestDevState`], gathered in
//!   [`MachineState`].
//!
//! # Suspend (S3) design
//!
//! [`Machine::request_guest_suspend`] injects an MSI with vector
//! `layout::SUSPEND_VECTOR` into the BSP (`KVM_SIGNAL_MSI`). The guest's ISR writes
//! `SLP_TYP=S3 | SLP_EN` to PM1a_CNT; the vCPU thread that sees that write parks all
//! vCPUs and emits [`MachineEvent::Suspended`]. [`Machine::wakeup`] resumes them; the guest
//! continues right after the `out` (no reset, no waking vector, unlike real S3).
//!
//! # Lifecycle
//!
//! `new` → *Created* (vCPU threads exist, parked) → `boot` → *Running* ⇄ `pause`/`resume`
//! → *Paused* → `capture`. `restore`/`restore_state` → *Paused* → `resume` (or `wakeup`
//! when the saved guest was suspended).

pub(crate) mod devices;
pub(crate) mod error;
pub(crate) mod guest;
#[allow(
    dead_code,
    reason = "the guest's layout too: build.rs writes every constant for the guest's assembly"
)]
pub(crate) mod layout;
pub(crate) mod memory;
pub(crate) mod vcpu;
pub(crate) mod vcpu_state;
pub(crate) mod vm;

pub(crate) mod persist;

mod control;

pub use control::{GuestFault, Machine, MachineConfig, MachineState, SerialOutput};
pub use devices::pm::PmState;
pub use devices::serial::SerialDeviceState;
pub use devices::testdev::{GuestFatal, GuestProgress, TestDevState, VcpuProgress};
pub use error::{Error, Result};
pub use layout::DEFAULT_WORKLOAD_BASE;
pub use vcpu_state::VcpuState;
pub use vm::KvmVmState;

/// Something the machine's owner must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest entered S3; every vCPU is parked. Call [`Machine::wakeup`] to resume.
    Suspended,
    /// The guest powered off (PM1 S5) or a vCPU triple-faulted; the vCPU that saw it is
    /// stopped.
    Shutdown {
        /// The vCPU that caused it.
        vcpu: usize,
        /// Power-off or reset request.
        cause: ShutdownCause,
        /// What happened.
        reason: String,
    },
    /// The guest kernel reported a fatal exception through the test device.
    GuestPanicked {
        /// The report.
        fatal: GuestFatal,
    },
    /// A vCPU stopped on an exit the VMM cannot handle (e.g. an emulation failure),
    /// with the guest RIP and instruction bytes. The vCPU stays parked.
    InternalError {
        /// vCPU index.
        vcpu: usize,
        /// Description.
        reason: String,
    },
}

/// Why the guest stopped itself, as QEMU's `ShutdownCause` names it (qapi/run-state.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    /// `guest-shutdown`: the guest powered off (PM1 S5, `KVM_SYSTEM_EVENT_SHUTDOWN`).
    GuestShutdown,
    /// `guest-reset`: a reset request (a triple fault, `KVM_EXIT_SHUTDOWN`, or
    /// `KVM_SYSTEM_EVENT_RESET`). There is no reboot here, so, like QEMU with
    /// `-no-reboot`, it ends the VM.
    GuestReset,
}

impl ShutdownCause {
    /// QEMU's name for it (the `reason` of the `SHUTDOWN` event).
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownCause::GuestShutdown => "guest-shutdown",
            ShutdownCause::GuestReset => "guest-reset",
        }
    }
}
