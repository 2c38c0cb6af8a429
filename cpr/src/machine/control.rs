//! [`Machine`]: creation, boot, pause/resume, capture/restore, suspend/wakeup.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;

use kvm_bindings::kvm_msi;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::MachineEvent;
use super::devices::pm::PmState;
use super::devices::serial::{SerialDeviceState, SerialWriter};
use super::devices::testdev::{GuestProgress, TestDevState};
use super::devices::{Devices, lock};
use super::error::{Error, Result};
use super::guest::{self, BootInfo};
use super::layout::{
    FAULT_PANIC_VECTOR, FAULT_TRIPLE_VECTOR, LAPIC_BASE, MAX_VCPUS, SUSPEND_VECTOR, US_PROGRESS,
    USER_STATE, USER_STATE_STRIDE,
};
use super::memory::memslots_of;
use super::vcpu::{self, ACK_TIMEOUT, Command, Shared, VcpuHandle};
use super::vcpu_state::{VcpuState, boot_cpuid};
use super::vm::{KvmVmState, capture_vm, create_vm, restore_vm};

/// A failure the built-in guest can be asked to cause (test only, QMP `x-guest-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFault {
    /// Load an empty IDT and raise an exception: the CPU shuts down.
    TripleFault,
    /// Raise an exception in kernel mode: the kernel reports it as fatal and halts.
    Panic,
}

/// Where the guest's COM1 output goes.
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// Discarded.
    Sink,
    /// Any writer (a file, a test buffer, ...).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stdout => "Stdout",
            Self::Sink => "Sink",
            Self::Writer(_) => "Writer",
        })
    }
}

impl SerialOutput {
    fn into_writer(self) -> SerialWriter {
        match self {
            Self::Stdout => Box::new(std::io::stdout()),
            Self::Sink => Box::new(std::io::sink()),
            Self::Writer(w) => w,
        }
    }
}

/// How to build a machine.
#[derive(Debug)]
pub struct MachineConfig {
    /// Number of vCPUs (1..=32).
    pub vcpus: usize,
    /// Guest RAM at QEMU's x86 layout (`cpr_memory::pc_ram_windows`: up to 3 GiB at 0,
    /// the rest from 4 GiB), as `cpr_memory::GuestRam::memory` gives it.
    pub memory: GuestMemoryMmap,
    /// COM1 output.
    pub serial: SerialOutput,
    /// LAPIC timer frequency (boot only; this host caps at ~4.8 kHz).
    pub timer_hz: u32,
    /// Milliseconds between two workload reports (boot only).
    pub report_interval_ms: u32,
    /// Workload region `(base, size)`, 2 MiB aligned; `None` = 4 MiB to the end of low RAM
    /// (boot only).
    pub workload: Option<(u64, u64)>,
}

impl MachineConfig {
    /// Defaults: 1 kHz timer, a report every 5 ms, default workload region, serial to stdout.
    pub fn new(vcpus: usize, memory: GuestMemoryMmap) -> Self {
        Self {
            vcpus,
            memory,
            serial: SerialOutput::Stdout,
            timer_hz: 1000,
            report_interval_ms: 5,
            workload: None,
        }
    }
}

/// Everything needed to continue the machine on a new VM over the same RAM.
#[derive(Debug, Clone)]
pub struct MachineState {
    /// One per vCPU, index order.
    pub vcpus: Vec<VcpuState>,
    /// Irqchips, PIT, kvmclock.
    pub vm: KvmVmState,
    /// COM1.
    pub serial: SerialDeviceState,
    /// PM1 control (includes "guest is suspended").
    pub pm: PmState,
    /// Test device (latest reports).
    pub testdev: TestDevState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Created,
    Running,
    Paused,
}

impl Lifecycle {
    fn name(self) -> &'static str {
        match self {
            Self::Created => "created (not booted or restored)",
            Self::Running => "running",
            Self::Paused => "paused",
        }
    }
}

/// A KVM virtual machine running the built-in guest.
#[derive(Debug)]
pub struct Machine {
    // Field order matters for drop: threads are joined in `Drop`, then the VM fd goes,
    // then the memory (which must outlive the VM's memslots).
    threads: Vec<JoinHandle<()>>,
    vm: VmFd,
    kvm: Kvm,
    shared: Arc<Shared>,
    events: Option<Receiver<MachineEvent>>,
    msr_list: Arc<Vec<u32>>,
    vcpus: usize,
    tsc_khz: u32,
    timer_hz: u32,
    report_interval_ms: u32,
    workload: Option<(u64, u64)>,
    lifecycle: Lifecycle,
    memory: GuestMemoryMmap,
}

impl Machine {
    /// Create the VM (memory registered first), its vCPUs (threads parked) and devices.
    /// Nothing is written to guest RAM.
    pub fn new(config: MachineConfig) -> Result<Self> {
        if config.vcpus == 0 || config.vcpus as u64 > MAX_VCPUS {
            return Err(Error::InvalidConfig(format!(
                "{} vCPUs; the guest supports 1..={MAX_VCPUS}",
                config.vcpus
            )));
        }
        vcpu::install_kick_handler()?;
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        let ram = memslots_of(&config.memory);
        // SAFETY: the regions come from `config.memory`, which the machine keeps (field
        // `memory`, dropped after `vm`), so the mappings outlive the VM.
        let vm = unsafe { create_vm(&kvm, &ram) }?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(|source| Error::Kvm {
                op: "KVM_GET_MSR_INDEX_LIST",
                source,
            })?
            .as_slice()
            .to_vec();
        let (events_tx, events_rx) = channel();
        let shared = Arc::new(Shared {
            devices: Devices::new(config.vcpus, config.serial.into_writer()),
            events: events_tx,
            handles: OnceLock::new(),
            alive: RwLock::new(true),
            stopping_all: AtomicBool::new(false),
            mem: config.memory.clone(),
        });
        let mut threads = Vec::with_capacity(config.vcpus);
        let mut handles = Vec::with_capacity(config.vcpus);
        let mut tsc_khz = 0;
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(index as u64)
                .map_err(|source| Error::VcpuIoctl {
                    vcpu: index,
                    op: "KVM_CREATE_VCPU",
                    source,
                })?;
            if index == 0 {
                tsc_khz = fd.get_tsc_khz().map_err(|source| Error::VcpuIoctl {
                    vcpu: 0,
                    op: "KVM_GET_TSC_KHZ",
                    source,
                })?;
            }
            let (tx, rx) = channel();
            let sh = Arc::clone(&shared);
            let t = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu::vcpu_thread(index, fd, rx, sh))
                .map_err(|source| Error::Io {
                    what: format!("cannot spawn the thread of vCPU {index}"),
                    source,
                })?;
            handles.push(VcpuHandle {
                tx,
                pthread: t.as_pthread_t(),
            });
            threads.push(t);
        }
        let _ = shared.handles.set(handles);
        Ok(Self {
            threads,
            vm,
            kvm,
            shared,
            events: Some(events_rx),
            msr_list: Arc::new(msr_list),
            vcpus: config.vcpus,
            tsc_khz,
            timer_hz: config.timer_hz,
            report_interval_ms: config.report_interval_ms,
            workload: config.workload,
            lifecycle: Lifecycle::Created,
            memory: config.memory,
        })
    }

    /// Create a machine on `config` and restore `state` into it (RAM untouched). The vCPUs
    /// stay paused until [`resume`](Self::resume) (or [`wakeup`](Self::wakeup) if the
    /// guest was suspended).
    pub fn restore(config: MachineConfig, state: &MachineState) -> Result<Self> {
        let mut m = Self::new(config)?;
        m.restore_state(state)?;
        Ok(m)
    }

    /// Gives every vCPU of this machine, which has not run, the CPUID table a boot gives
    /// it: a machine built ahead of a restore then need not set it when the state
    /// arrives, if the state carries the same table (a restore of another table sets
    /// that one). Nothing else changes.
    pub fn preset_cpuid(&mut self) -> Result<()> {
        self.expect(Lifecycle::Created, "preset CPUID")?;
        let mut acks = Vec::with_capacity(self.vcpus);
        for index in 0..self.vcpus {
            let cpuid = Box::new(boot_cpuid(&self.kvm, index)?);
            let (ack, rx) = channel();
            self.shared.send(index, Command::SetCpuid { cpuid, ack })?;
            acks.push(rx);
        }
        for (index, rx) in acks.iter().enumerate() {
            wait_ack(index, "set its CPUID", rx)??;
        }
        Ok(())
    }

    /// Load the built-in guest into RAM and start every vCPU at its entry point.
    pub fn boot(&mut self) -> Result<()> {
        self.expect(Lifecycle::Created, "boot")?;
        let ranges: Vec<(u64, u64)> = memslots_of(&self.memory)
            .iter()
            .map(|r| (r.guest_addr.0, r.size))
            .collect();
        let info = BootInfo::new(
            &ranges,
            self.vcpus,
            self.workload,
            self.timer_hz,
            self.report_interval_ms,
            self.tsc_khz,
        )?;
        guest::load(&self.memory, &info)?;
        for index in 0..self.vcpus {
            let cpuid = Box::new(boot_cpuid(&self.kvm, index)?);
            let (ack, rx) = channel();
            self.shared.send(index, Command::Boot { cpuid, ack })?;
            wait_ack(index, "set up boot state", &rx)??;
        }
        self.lifecycle = Lifecycle::Paused;
        self.resume()
    }

    /// Apply `state` to this not-yet-started machine (RAM untouched); vCPUs stay paused.
    pub fn restore_state(&mut self, state: &MachineState) -> Result<()> {
        if self.lifecycle == Lifecycle::Running {
            return Err(Error::NotPaused("restore"));
        }
        if state.vcpus.len() != self.vcpus {
            return Err(Error::StateMismatch(format!(
                "state has {} vCPUs, machine has {}",
                state.vcpus.len(),
                self.vcpus
            )));
        }
        // vCPUs first (each in Firecracker's order, see vcpu_state.rs), then the VM-wide
        // state, whose kvmclock should be set last before the vCPUs may run.
        // Every vCPU thread restores its own state at once; then all are waited for.
        let mut acks = Vec::with_capacity(self.vcpus);
        for (index, vs) in state.vcpus.iter().enumerate() {
            let (ack, rx) = channel();
            let cmd = Command::Restore {
                state: Box::new(vs.clone()),
                ack,
            };
            self.shared.send(index, cmd)?;
            acks.push(rx);
        }
        for (index, rx) in acks.iter().enumerate() {
            wait_ack(index, "restore its state", rx)??;
        }
        restore_vm(&self.vm, &state.vm)?;
        let d = &self.shared.devices;
        lock(&d.serial).restore_keep_output(&state.serial)?;
        lock(&d.pm).restore(&state.pm);
        if !lock(&d.testdev).restore(&state.testdev) {
            return Err(Error::StateMismatch("test device vCPU count".into()));
        }
        self.lifecycle = Lifecycle::Paused;
        Ok(())
    }

    /// Capture the whole machine state. The machine must be paused (or suspended).
    pub fn capture(&self) -> Result<MachineState> {
        if self.lifecycle != Lifecycle::Paused && !self.is_suspended() {
            return Err(Error::NotPaused("capture"));
        }
        // Every vCPU thread captures its own state at once; then all are collected.
        let mut acks = Vec::with_capacity(self.vcpus);
        for index in 0..self.vcpus {
            let (ack, rx) = channel();
            let cmd = Command::Capture {
                msr_list: Arc::clone(&self.msr_list),
                ack,
            };
            self.shared.send(index, cmd)?;
            acks.push(rx);
        }
        // Meanwhile, this thread reads the VM-wide and device state.
        let vm = capture_vm(&self.vm)?;
        let d = &self.shared.devices;
        let (serial, pm, testdev) = (
            lock(&d.serial).state(),
            lock(&d.pm).state(),
            lock(&d.testdev).state(),
        );
        let mut vcpus = Vec::with_capacity(self.vcpus);
        for (index, rx) in acks.iter().enumerate() {
            vcpus.push(*wait_ack(index, "capture its state", rx)??);
        }
        Ok(MachineState {
            vcpus,
            vm,
            serial,
            pm,
            testdev,
        })
    }

    /// Stop every vCPU; returns once all are parked with I/O completed.
    pub fn pause(&mut self) -> Result<()> {
        if self.lifecycle == Lifecycle::Created {
            return Err(Error::WrongState {
                op: "pause",
                state: self.lifecycle.name(),
            });
        }
        self.shared.pause_all(None)?;
        self.lifecycle = Lifecycle::Paused;
        Ok(())
    }

    /// Let every vCPU run. Fails with [`Error::GuestSuspended`] while the guest is in S3.
    pub fn resume(&mut self) -> Result<()> {
        if self.lifecycle == Lifecycle::Created {
            return Err(Error::WrongState {
                op: "resume",
                state: self.lifecycle.name(),
            });
        }
        if self.is_suspended() {
            return Err(Error::GuestSuspended);
        }
        self.resume_all()
    }

    fn resume_all(&mut self) -> Result<()> {
        for index in 0..self.vcpus {
            self.shared.send(index, Command::Resume)?;
        }
        self.lifecycle = Lifecycle::Running;
        Ok(())
    }

    /// Ask the guest to suspend itself (S3): an MSI with `SUSPEND_VECTOR` to the BSP.
    /// Completion is signalled by [`MachineEvent::Suspended`].
    pub fn request_guest_suspend(&self) -> Result<()> {
        self.interrupt_bsp("request_guest_suspend", SUSPEND_VECTOR)
    }

    /// Test only: ask the built-in guest to fail (an MSI to the BSP). A triple fault ends
    /// in [`MachineEvent::Shutdown`] with [`ShutdownCause::GuestReset`]
    /// (`KVM_EXIT_SHUTDOWN`); a panic in [`MachineEvent::GuestPanicked`] (the kernel's own
    /// exception report).
    ///
    /// [`ShutdownCause::GuestReset`]: super::ShutdownCause::GuestReset
    pub fn request_guest_fault(&self, fault: GuestFault) -> Result<()> {
        let vector = match fault {
            GuestFault::TripleFault => FAULT_TRIPLE_VECTOR,
            GuestFault::Panic => FAULT_PANIC_VECTOR,
        };
        self.interrupt_bsp("request_guest_fault", vector)
    }

    /// Sends interrupt `vector` to the BSP (the guest must be running).
    fn interrupt_bsp(&self, op: &'static str, vector: u64) -> Result<()> {
        if self.lifecycle != Lifecycle::Running {
            return Err(Error::WrongState {
                op,
                state: self.lifecycle.name(),
            });
        }
        let msi = kvm_msi {
            // Destination APIC ID 0 (bits 12..19), physical mode.
            address_lo: u32::try_from(LAPIC_BASE).unwrap_or(0),
            address_hi: 0,
            // Fixed delivery, edge triggered.
            data: u32::try_from(vector).unwrap_or(0),
            ..Default::default()
        };
        self.vm.signal_msi(msi).map_err(|source| Error::Kvm {
            op: "KVM_SIGNAL_MSI",
            source,
        })?;
        Ok(())
    }

    /// Wake the guest from S3: the vCPUs continue after the PM1 write.
    pub fn wakeup(&mut self) -> Result<()> {
        if !self.is_suspended() {
            return Err(Error::NotSuspended);
        }
        lock(&self.shared.devices.pm).set_suspended(false);
        self.resume_all()
    }

    /// Whether the guest is in S3.
    pub fn is_suspended(&self) -> bool {
        lock(&self.shared.devices.pm).suspended()
    }

    /// Whether the vCPUs are running (booted or resumed, not paused).
    pub fn is_running(&self) -> bool {
        self.lifecycle == Lifecycle::Running && !self.is_suspended()
    }

    /// The latest progress reports of the guest workload (test device).
    pub fn guest_progress(&self) -> GuestProgress {
        lock(&self.shared.devices.testdev).progress()
    }

    /// Progress counters read directly from guest RAM (the workload's own state), one per
    /// vCPU. Unlike [`guest_progress`](Self::guest_progress) this needs no report.
    pub fn guest_ram_progress(&self) -> Result<Vec<u64>> {
        (0..self.vcpus as u64)
            .map(|i| {
                self.memory
                    .read_obj::<u64>(GuestAddress(
                        USER_STATE + i * USER_STATE_STRIDE + US_PROGRESS,
                    ))
                    .map_err(|source| Error::GuestMemory {
                        what: "workload state",
                        source,
                    })
            })
            .collect()
    }

    /// The event receiver (once): suspend, shutdown, guest panic, internal errors.
    pub fn take_events(&mut self) -> Option<Receiver<MachineEvent>> {
        self.events.take()
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus
    }

    /// Host TSC rate seen by the vCPUs.
    pub fn tsc_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM fd (for the owner's own ioctls, e.g. dirty logging).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    fn expect(&self, want: Lifecycle, op: &'static str) -> Result<()> {
        if self.lifecycle == want {
            Ok(())
        } else {
            Err(Error::WrongState {
                op,
                state: self.lifecycle.name(),
            })
        }
    }
}

fn wait_ack<T>(vcpu: usize, what: &'static str, rx: &Receiver<T>) -> Result<T> {
    rx.recv_timeout(ACK_TIMEOUT).map_err(|e| match e {
        RecvTimeoutError::Timeout => Error::VcpuTimeout {
            vcpu,
            what,
            timeout_ms: u64::try_from(ACK_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        },
        RecvTimeoutError::Disconnected => Error::VcpuGone { vcpu },
    })
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Tell every thread to exit and kick it out of KVM_RUN, then forbid further kicks
        // (a vCPU coordinating a suspend may try) before any thread is joined.
        for index in 0..self.vcpus {
            let _ = self.shared.send(index, Command::Exit);
        }
        *self
            .shared
            .alive
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
