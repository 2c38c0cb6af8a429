//! vCPU threads: the run loop, exit dispatch, prompt pausing and the command channel.
//!
//! Each vCPU runs on its own thread, which owns the `VcpuFd`. The machine talks to it
//! with [`Command`]s over a channel. A parked vCPU blocks in `recv()` (no spinning).
//!
//! **Kick / pause protocol.** To interrupt `KVM_RUN`, the machine first queues the
//! command, then sends the thread the kick signal (`SIGRTMIN + 1`). Its handler sets
//! `kvm_run.immediate_exit = 1` through a thread-local pointer, so the kick is never lost:
//! if it lands before `KVM_RUN` is entered, `KVM_RUN` returns `EINTR` at once. After an
//! `EINTR` the thread clears `immediate_exit`, then reads the commands. Before parking it
//! always does one more `KVM_RUN` with `immediate_exit = 1`: KVM then completes any
//! pending I/O (e.g. the MMIO read whose data we just filled in, or the `out` we just
//! handled) and returns `EINTR` without running guest code, so captured registers point
//! after the instruction.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once, RwLock};
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_MP_STATE_RUNNABLE, kvm_mp_state, kvm_regs, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::devices::pm::PmAction;
use super::devices::testdev::TestDevAction;
use super::devices::{Devices, IoAction, lock};
use super::error::{Error, Result};
use super::guest;
use super::vcpu_state::{VcpuState, capture_vcpu, restore_vcpu};
use super::{MachineEvent, ShutdownCause};

/// Offset of the kick signal from `SIGRTMIN`.
pub(crate) const KICK_SIGNAL_OFFSET: i32 = 1;
/// How long the machine waits for a vCPU to acknowledge a command.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's `kvm_run` mapping (null when the thread runs no vCPU).
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN_PTR.with(Cell::get);
    if p.is_null() {
        return;
    }
    // SAFETY: a non-null pointer is this thread's vCPU `kvm_run` mapping, registered by
    // `vcpu_thread` while it owns the `VcpuFd` and cleared before the fd is dropped.
    let field = unsafe { &raw mut (*p).immediate_exit };
    // SAFETY: `field` points into that live mapping; a volatile byte store is
    // async-signal-safe and KVM reads the field at the next KVM_RUN.
    unsafe { field.write_volatile(1) };
}

/// The kick signal number.
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Install the kick handler (once per process).
pub(crate) fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    static RESULT: RwLock<Option<i32>> = RwLock::new(None);
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler) {
            *RESULT
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.errno());
        }
    });
    match *RESULT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(errno) => Err(Error::Signal(vmm_sys_util::errno::Error::new(errno))),
        None => Ok(()),
    }
}

/// A command to a vCPU thread.
pub(crate) enum Command {
    /// Set up the fresh-boot entry state (vCPU must be parked).
    Boot {
        /// CPUID table.
        cpuid: Box<CpuId>,
        /// Reply.
        ack: Sender<Result<()>>,
    },
    /// Apply a saved state (vCPU must be parked).
    Restore {
        /// The state.
        state: Box<VcpuState>,
        /// Reply.
        ack: Sender<Result<()>>,
    },
    /// Set the CPUID table ahead of a restore (vCPU must be parked, never run): a restore
    /// that brings the same table need not set it again.
    SetCpuid {
        /// CPUID table.
        cpuid: Box<CpuId>,
        /// Reply.
        ack: Sender<Result<()>>,
    },
    /// Capture the state (vCPU must be parked).
    Capture {
        /// `KVM_GET_MSR_INDEX_LIST`.
        msr_list: Arc<Vec<u32>>,
        /// Reply.
        ack: Sender<Result<Box<VcpuState>>>,
    },
    /// Stop running and park; acknowledged once parked.
    Pause {
        /// Reply.
        ack: Sender<()>,
    },
    /// Leave the parked state and run.
    Resume,
    /// Terminate the thread.
    Exit,
}

/// The machine's handle on one vCPU thread.
#[derive(Debug)]
pub(crate) struct VcpuHandle {
    /// Command channel.
    pub tx: Sender<Command>,
    /// The thread, for the kick signal.
    pub pthread: libc::pthread_t,
}

/// State shared by the machine and all vCPU threads.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The devices.
    pub devices: Devices,
    /// Event sink of the machine's owner.
    pub events: Sender<MachineEvent>,
    /// All vCPU handles (set once the threads exist).
    pub handles: std::sync::OnceLock<Vec<VcpuHandle>>,
    /// `true` while threads may be kicked; the machine's drop sets it to `false` (under
    /// the write lock) before joining, so no thread is signalled after it was joined.
    pub alive: RwLock<bool>,
    /// Set while a vCPU coordinates an S3/S5 stop of all vCPUs.
    pub stopping_all: std::sync::atomic::AtomicBool,
    /// Guest RAM (for instruction bytes in error reports).
    pub mem: GuestMemoryMmap,
}

impl Shared {
    /// Send the kick signal to vCPU `index` (no-op once the machine is being dropped).
    pub(crate) fn kick(&self, index: usize) {
        let alive = self
            .alive
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*alive {
            return;
        }
        if let Some(h) = self.handles.get().and_then(|h| h.get(index)) {
            // SAFETY: the thread is alive: threads are only joined after `alive` was set to
            // false under the write lock, and we hold the read lock.
            unsafe { libc::pthread_kill(h.pthread, kick_signal()) };
        }
    }

    /// Queue `cmd` for vCPU `index` and kick it.
    pub(crate) fn send(&self, index: usize, cmd: Command) -> Result<()> {
        let h = self
            .handles
            .get()
            .and_then(|h| h.get(index))
            .ok_or(Error::VcpuGone { vcpu: index })?;
        h.tx.send(cmd)
            .map_err(|_| Error::VcpuGone { vcpu: index })?;
        self.kick(index);
        Ok(())
    }

    /// Pause every vCPU except `except` and wait until they are parked.
    pub(crate) fn pause_all(&self, except: Option<usize>) -> Result<()> {
        let n = self.handles.get().map_or(0, Vec::len);
        let mut acks = Vec::new();
        for i in (0..n).filter(|&i| Some(i) != except) {
            let (tx, rx) = std::sync::mpsc::channel();
            self.send(i, Command::Pause { ack: tx })?;
            acks.push((i, rx));
        }
        for (i, rx) in acks {
            match rx.recv_timeout(ACK_TIMEOUT) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::VcpuTimeout {
                        vcpu: i,
                        what: "park",
                        timeout_ms: u64::try_from(ACK_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::VcpuGone { vcpu: i }),
            }
        }
        Ok(())
    }

    fn emit(&self, e: MachineEvent) {
        // The owner may have dropped the receiver; events are then discarded.
        let _ = self.events.send(e);
    }
}

struct VcpuThread {
    index: usize,
    vcpu: VcpuFd,
    shared: Arc<Shared>,
    running: bool,
    /// Stopped by a fatal exit (shutdown, internal error); `Resume` does not run it.
    stopped: bool,
    /// The CPUID table this thread last set (KVM returns it as set): a capture reads it
    /// from here, a restore of the same table skips setting it.
    cpuid: Option<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

/// The body of a vCPU thread.
pub(crate) fn vcpu_thread(
    index: usize,
    mut vcpu: VcpuFd,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
) {
    KVM_RUN_PTR.with(|p| p.set(vcpu.get_kvm_run() as *mut kvm_run));
    let mut t = VcpuThread {
        index,
        vcpu,
        shared,
        running: false,
        stopped: false,
        cpuid: None,
    };
    loop {
        let cmd = if t.running {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        match cmd {
            Some(Command::Exit) => break,
            Some(c) => t.handle_command(c),
            None => t.run_once(),
        }
    }
    KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
}

impl VcpuThread {
    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Pause { ack } => {
                self.park();
                let _ = ack.send(());
            }
            Command::Resume => {
                if !self.stopped {
                    self.running = true;
                }
            }
            Command::Capture { msr_list, ack } => {
                let r = if self.running {
                    Err(Error::NotPaused("capture"))
                } else {
                    capture_vcpu(&self.vcpu, self.index, &msr_list, self.cpuid.as_deref())
                        .map(Box::new)
                };
                let _ = ack.send(r);
            }
            Command::Restore { state, ack } => {
                let r = if self.running {
                    Err(Error::NotPaused("restore"))
                } else {
                    self.stopped = false;
                    let r = restore_vcpu(&self.vcpu, self.index, &state, self.cpuid.as_deref());
                    self.cpuid = r.is_ok().then(|| state.cpuid.clone());
                    r
                };
                let _ = ack.send(r);
            }
            Command::SetCpuid { cpuid, ack } => {
                let r = if self.running {
                    Err(Error::NotPaused("set CPUID"))
                } else {
                    let r = self
                        .vcpu
                        .set_cpuid2(&cpuid)
                        .map_err(self.ioctl_err("KVM_SET_CPUID2"));
                    self.cpuid = r.is_ok().then(|| cpuid.as_slice().to_vec());
                    r
                };
                let _ = ack.send(r);
            }
            Command::Boot { cpuid, ack } => {
                let r = if self.running {
                    Err(Error::NotPaused("boot"))
                } else {
                    self.stopped = false;
                    let r = self.setup_boot(&cpuid);
                    self.cpuid = r.is_ok().then(|| cpuid.as_slice().to_vec());
                    r
                };
                let _ = ack.send(r);
            }
            Command::Exit => {}
        }
    }

    fn ioctl_err(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error + use<> {
        let vcpu = self.index;
        move |source| Error::VcpuIoctl { vcpu, op, source }
    }

    fn setup_boot(&self, cpuid: &CpuId) -> Result<()> {
        self.vcpu
            .set_cpuid2(cpuid)
            .map_err(self.ioctl_err("KVM_SET_CPUID2"))?;
        let sregs = self
            .vcpu
            .get_sregs()
            .map_err(self.ioctl_err("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&guest::boot_sregs(sregs))
            .map_err(self.ioctl_err("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&guest::boot_regs(self.index))
            .map_err(self.ioctl_err("KVM_SET_REGS"))?;
        // APs start in "wait for INIT/SIPI" with the in-kernel LAPIC: make them runnable
        // so they enter at the same 64-bit entry point as the BSP.
        self.vcpu
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(self.ioctl_err("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// Stop running: complete pending I/O with an immediate-exit run, then park.
    fn park(&mut self) {
        if self.running && !self.stopped {
            self.complete_pending_io();
        }
        self.running = false;
    }

    fn complete_pending_io(&mut self) {
        let shared = Arc::clone(&self.shared);
        for _ in 0..4 {
            self.vcpu.set_kvm_immediate_exit(1);
            let exit = match self.vcpu.run() {
                Err(_) => break,
                Ok(exit) => dispatch(&shared, exit),
            };
            // A real exit while completing I/O: handle it and try again.
            self.vcpu.set_kvm_immediate_exit(0);
            self.handle_exit(exit);
        }
        self.vcpu.set_kvm_immediate_exit(0);
    }

    fn run_once(&mut self) {
        let shared = Arc::clone(&self.shared);
        let exit = match self.vcpu.run() {
            Ok(exit) => dispatch(&shared, exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.set_kvm_immediate_exit(0);
                return;
            }
            Err(e) => Exit::Fatal(format!("KVM_RUN failed: {e}")),
        };
        self.handle_exit(exit);
    }

    fn handle_exit(&mut self, exit: Exit) {
        match exit {
            Exit::Done => {}
            Exit::Action(IoAction::None) => {}
            Exit::Action(IoAction::TestDev(TestDevAction::Fatal(fatal))) => {
                // The guest halts itself after reporting; keep the vCPU as it is.
                self.shared.emit(MachineEvent::GuestPanicked { fatal });
            }
            Exit::Action(IoAction::TestDev(TestDevAction::None)) => {}
            Exit::Action(IoAction::Pm(PmAction::Suspend)) => self.stop_all(true),
            Exit::Action(IoAction::Pm(PmAction::PowerOff)) => self.stop_all(false),
            Exit::Action(IoAction::Pm(PmAction::None)) => {}
            Exit::Shutdown => {
                let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                self.stopped = true;
                self.running = false;
                self.shared.emit(MachineEvent::Shutdown {
                    vcpu: self.index,
                    cause: ShutdownCause::GuestReset,
                    reason: format!("triple fault (KVM_EXIT_SHUTDOWN), rip={rip:#x}"),
                });
            }
            Exit::SystemEvent(t) => {
                // KVM_SYSTEM_EVENT_SHUTDOWN (1) is a power-off; _RESET (2), _CRASH (3)
                // and anything newer end the guest as a failure (no reboot here).
                self.stopped = true;
                self.running = false;
                let cause = if t == kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN {
                    ShutdownCause::GuestShutdown
                } else {
                    ShutdownCause::GuestReset
                };
                self.shared.emit(MachineEvent::Shutdown {
                    vcpu: self.index,
                    cause,
                    reason: format!("KVM_EXIT_SYSTEM_EVENT type {t}"),
                });
            }
            Exit::InternalError => {
                let reason = self.describe_internal_error();
                self.fail(reason);
            }
            Exit::Fatal(reason) => self.fail(reason),
        }
    }

    fn fail(&mut self, reason: String) {
        let regs = self.vcpu.get_regs().unwrap_or_default();
        let bytes = self.instruction_bytes(&regs);
        self.stopped = true;
        self.running = false;
        self.shared.emit(MachineEvent::InternalError {
            vcpu: self.index,
            reason: format!("{reason}; rip={:#x} insn=[{bytes}]", regs.rip),
        });
    }

    /// `KVM_EXIT_INTERNAL_ERROR`: suberror and data words (for an emulation failure
    /// KVM puts the instruction length and bytes there).
    fn describe_internal_error(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the last exit reason was KVM_EXIT_INTERNAL_ERROR, for which KVM fills
        // the `internal` member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        let data: Vec<String> = internal.data[..n]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        let kind = match internal.suberror {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event",
            4 => "unexpected exit",
            _ => "unknown",
        };
        format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {} ({kind}), data [{}]",
            internal.suberror,
            data.join(", ")
        )
    }

    /// Up to 16 bytes at the guest RIP, for error reports.
    fn instruction_bytes(&self, regs: &kvm_regs) -> String {
        let Ok(t) = self.vcpu.translate_gva(regs.rip) else {
            return "rip not mapped".into();
        };
        if t.valid == 0 {
            return "rip not mapped".into();
        }
        let mut buf = [0u8; 16];
        match self
            .shared
            .mem
            .read_slice(&mut buf, GuestAddress(t.physical_address))
        {
            Ok(()) => buf
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "unreadable".into(),
        }
    }

    /// The guest entered S3 (`suspend`) or S5: park every vCPU, then report it.
    fn stop_all(&mut self, suspend: bool) {
        use std::sync::atomic::Ordering;
        if self.shared.stopping_all.swap(true, Ordering::AcqRel) {
            // Another vCPU is already coordinating; it will park us.
            self.park();
            return;
        }
        let r = self.shared.pause_all(Some(self.index));
        // Complete our own `out` so the guest continues after it on wakeup.
        self.park();
        if !suspend {
            self.stopped = true;
        }
        if suspend {
            lock(&self.shared.devices.pm).set_suspended(true);
        }
        self.shared.stopping_all.store(false, Ordering::Release);
        match r {
            Ok(()) if suspend => self.shared.emit(MachineEvent::Suspended),
            Ok(()) => self.shared.emit(MachineEvent::Shutdown {
                vcpu: self.index,
                cause: ShutdownCause::GuestShutdown,
                reason: "guest powered off (PM1 S5)".into(),
            }),
            Err(e) => self.shared.emit(MachineEvent::InternalError {
                vcpu: self.index,
                reason: format!("could not park all vCPUs: {e}"),
            }),
        }
    }
}

/// What the vCPU thread must do after an exit; device accesses are already done.
enum Exit {
    Done,
    Action(IoAction),
    Shutdown,
    InternalError,
    SystemEvent(u32),
    Fatal(String),
}

/// Perform the device access of an exit while `exit` still borrows `kvm_run` (read data
/// is written into it for KVM to complete the instruction at the next `KVM_RUN`).
fn dispatch(shared: &Shared, exit: VcpuExit<'_>) -> Exit {
    match exit {
        VcpuExit::IoIn(port, data) => {
            shared.devices.pio_read(port, data);
            Exit::Done
        }
        VcpuExit::IoOut(port, data) => Exit::Action(shared.devices.pio_write(port, data)),
        VcpuExit::MmioRead(addr, data) => {
            shared.devices.mmio_read(addr, data);
            Exit::Done
        }
        VcpuExit::MmioWrite(addr, data) => Exit::Action(shared.devices.mmio_write(addr, data)),
        // With the in-kernel LAPIC, HLT is handled by KVM; a stray one just re-enters.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => Exit::Done,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::SystemEvent(t, _) => Exit::SystemEvent(t),
        VcpuExit::FailEntry(reason, cpu) => Exit::Fatal(format!(
            "KVM_EXIT_FAIL_ENTRY reason {reason:#x} on host cpu {cpu}"
        )),
        other => Exit::Fatal(format!("unhandled exit {other:?}")),
    }
}
