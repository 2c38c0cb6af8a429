//! The machine's error type.

/// Errors of the KVM machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A VM-level (or system-level) KVM ioctl failed.
    #[error("KVM ioctl {op} failed")]
    Kvm {
        /// The operation that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU KVM ioctl failed.
    #[error("KVM ioctl {op} failed on vCPU {vcpu}")]
    VcpuIoctl {
        /// vCPU index.
        vcpu: usize,
        /// The operation that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM read or wrote fewer MSRs than asked (it stops at the first one it refuses).
    #[error(
        "{op} on vCPU {vcpu} handled {done} of {asked} MSRs (first refused: {first_refused:#x})"
    )]
    MsrsPartial {
        /// vCPU index.
        vcpu: usize,
        /// `get_msrs` or `set_msrs`.
        op: &'static str,
        /// MSRs handled.
        done: usize,
        /// MSRs asked.
        asked: usize,
        /// Index of the first MSR KVM did not handle.
        first_refused: u32,
    },
    /// The saved TSC rate differs from the host's and KVM cannot scale it.
    #[error("TSC rate differs: saved {saved_khz} kHz, host {host_khz} kHz; this host cannot scale")]
    TscRateDiffers {
        /// TSC rate in the saved state.
        saved_khz: u32,
        /// TSC rate of this host.
        host_khz: u32,
        /// The `KVM_SET_TSC_KHZ` error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The configuration is invalid.
    #[error("invalid machine configuration: {0}")]
    InvalidConfig(String),
    /// Guest memory access failed.
    #[error("guest memory access failed: {what}")]
    GuestMemory {
        /// What was accessed.
        what: &'static str,
        /// The vm-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A host I/O operation failed.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A vCPU did not acknowledge a command in time.
    #[error("vCPU {vcpu} did not {what} within {timeout_ms} ms")]
    VcpuTimeout {
        /// vCPU index.
        vcpu: usize,
        /// What it was asked to do.
        what: &'static str,
        /// The timeout.
        timeout_ms: u64,
    },
    /// A vCPU thread is gone (it panicked or exited).
    #[error("vCPU {vcpu} thread is gone")]
    VcpuGone {
        /// vCPU index.
        vcpu: usize,
    },
    /// The operation needs a paused machine.
    #[error("the machine must be paused for {0}")]
    NotPaused(&'static str),
    /// The operation is not valid in the machine's current lifecycle state.
    #[error("invalid machine state for {op}: {state}")]
    WrongState {
        /// The requested operation.
        op: &'static str,
        /// The current state.
        state: &'static str,
    },
    /// The guest is suspended: use `wakeup()` instead of `resume()`.
    #[error("the guest is suspended (S3); use wakeup()")]
    GuestSuspended,
    /// `wakeup()` was called but the guest is not suspended.
    #[error("the guest is not suspended")]
    NotSuspended,
    /// A saved state does not fit this machine.
    #[error("saved state does not match the machine: {0}")]
    StateMismatch(String),
    /// The serial device rejected its state.
    #[error("serial device error: {0}")]
    Serial(String),
}

/// Result alias for the machine.
pub type Result<T> = std::result::Result<T, Error>;
