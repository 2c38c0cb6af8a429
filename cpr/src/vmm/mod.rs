//! The `cpr-vm` VMM: guest RAM, the KVM machine, the run-state machine and the QMP monitor,
//! driven from one main loop.
//!
//! The main loop owns everything; the QMP server and the vCPU threads only send it messages
//! ([`Msg`]). After each message the run-state machine's pending requests (suspend, wakeup)
//! are processed and its events (STOP, RESUME, SUSPEND, WAKEUP) go out over QMP.
//!
//! `cpr-save` and `cpr-load` (patch 6) live in `vmm/cpr_ops.rs`; see [`CprMode`]. The
//! mainline interface (`migrate`, `migrate-incoming`, capabilities and parameters) lives in
//! `vmm/migration.rs` and `vmm/mig_params.rs`.
//!
//! # The command boundary
//!
//! The VMM knows no JSON. It executes typed [`Command`]s ([`Vmm::command`], an exhaustive
//! `match`) and answers typed [`Response`]s; it reports [`Event`]s through the monitor's
//! [`EventSender::send`]. The `qmp` layer parses requests into commands (with QEMU's
//! messages for bad arguments) and serializes what comes back; HMP builds the same
//! commands. The list of commands is written once, in `api`. Arguments that QEMU checks
//! only once the command runs are checked here, in QEMU's order: a bad `uri`/`channels`
//! travels in the command as its [`TargetError`] and is reported after the run-state
//! checks; merged migration parameters are range-checked with QEMU's words
//! ([`ParamError`]). Tests drive the real `Vmm` in-process through [`Vmm::command`].
//!
//! Errors are typed per operation ([`MigrateError`], [`crate::error::ArgumentError`],
//! [`crate::error::CommandError`], [`crate::error::ConfigError`]); save and load failures
//! carry a [`nix::errno::Errno`], printed negated as QEMU prints it.

pub(crate) mod api;
#[cfg(test)]
mod command_tests;
mod cpr_ops;
pub(crate) mod epoch;
mod exec;
pub mod handoff;
mod mig_params;
mod migration;
mod ownership;
mod query_migrate;
mod ram_io;
#[cfg(test)]
mod rules_tests;
mod slot;
mod target;
mod transfer;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};

use cpr_memory::{Backing, GuestRam, OpenMode, RamBlock, RamBlockList, RamKind, pc_ram_windows};
use cpr_runstate::{RunState, VmRunState};
use cpr_vfio_info::{VfioDevice, VfioDevices};

use crate::checkpoint::{MachineLayout, RamBlockInfo};
use crate::config::{Incoming, MemBackend, OnOff, VmArgs};
use crate::error::{CommandError, ConfigError, Error, Result};
use crate::machine::{Machine, MachineConfig, MachineEvent, SerialOutput, ShutdownCause};
use crate::qmp::{EventSender, QmpError, QmpRequest, Responder};

pub use api::{
    CapabilityStatus, Command, CommandName, CprLoadArgs, CprSaveArgs, Event, MigrateArgs,
    MigrateIncomingArgs, MigrationAddress, MigrationCapability, MigrationTarget,
    RamPersistenceInfo, Response, TargetError,
};
pub use cpr_ops::CprMode;
pub use exec::{ExecError, ExecHelper};
pub use handoff::{HandoffError, Received};
pub use mig_params::{GlobalError, MigrationParameters, ParamError, SetParameters};
pub use migration::MigrateError;
pub(crate) use migration::MigrationState;
pub use migration::{FileTarget, MigMode};
pub(crate) use ownership::RamOwnership;
pub use ownership::{OwnershipError, is_locked_elsewhere};
pub use query_migrate::{MigrationInfo, MigrationStats, MigrationStatus};
pub(crate) use slot::{MachineSlot, SlotError};
pub use transfer::{IncomingStream, MonitorListener, TransferError};

/// Name of the main RAM block (QEMU's x86 `pc.ram`).
pub const MAIN_RAM: &str = "pc.ram";

/// What reaches the main loop.
#[derive(Debug)]
pub enum Msg {
    /// A command from the monitor (QMP or HMP), parsed and typed.
    Qmp(QmpRequest),
    /// Something the machine reports.
    Machine(MachineEvent),
    /// cpr-transfer: the old process's device state arrived on the main channel.
    Transfer(std::result::Result<IncomingStream, HandoffError>),
}

/// The VMM.
pub struct Vmm {
    args: VmArgs,
    blocks: RamBlockList,
    ram: GuestRam,
    layout: MachineLayout,
    rs: VmRunState<MachineSlot>,
    events: EventSender,
    msgs: Sender<Msg>,
    migration: MigrationState,
    vfio: VfioDevices,
    autostart: bool,
    quit: bool,
    /// The answer to `quit`, sent by [`finish_quit`](Vmm::finish_quit).
    quit_reply: Option<Responder>,
    /// The guest ended itself with a reset request (a triple fault).
    guest_reset: bool,
    /// No one has written guest RAM since it was mapped (no boot, no RAM loaded).
    ram_pristine: bool,
    /// A machine built ahead, while this process waits for state (`-S`, `--incoming`):
    /// the load or boot that follows only applies state to it.
    spare: Option<Machine>,
    /// This process's RAM came from another process by descriptor (cpr-transfer/exec):
    /// it stays in place whatever `x-ignore-shared` says.
    handed_ram: bool,
    /// The monitor's listening socket, which cpr-transfer and cpr-exec hand over.
    monitor: Option<std::sync::Arc<dyn MonitorListener>>,
    /// cpr-transfer, incoming side: the main channel.
    transfer: transfer::TransferState,
    /// cpr-exec: what to do once `migrate`'s reply is out.
    exec: Option<exec::ExecPlan>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("state", &self.rs.state())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The RAM blocks `args` ask for: one `pc.ram` block, seen by the guest through QEMU's
/// below-4G/above-4G windows. A block the old process handed over (`handed`) is mapped
/// from its descriptor; the command line must ask for the same kind of RAM.
pub(crate) fn ram_blocks(args: &VmArgs, handed: Option<&mut Received>) -> Result<RamBlockList> {
    let size = args.mem_size.0;
    let handed = handed.and_then(|h| h.take_ram(MAIN_RAM));
    let backing = match (&args.mem_path, args.mem_backend, handed) {
        (None, Some(MemBackend::Memfd), Some(h)) => {
            if h.size != size {
                return Err(ConfigError::HandedRam(format!(
                    "the old process handed over {MAIN_RAM} with {} bytes; --mem-size asks for {size}",
                    h.size
                ))
                .into());
            }
            Backing::InheritedFd(std::sync::Arc::new(h.fd))
        }
        (_, _, Some(_)) => {
            return Err(ConfigError::HandedRam(format!(
                "the old process handed over {MAIN_RAM} as a memfd; start this one with --mem-backend memfd, as the old one"
            ))
            .into());
        }
        (Some(p), _, None) => Backing::File { path: p.clone() },
        (None, Some(MemBackend::Memfd), None) => Backing::Memfd {
            name: MAIN_RAM.to_string(),
        },
        (None, _, None) => Backing::Anonymous,
    };
    let builder = RamBlock::builder(MAIN_RAM, size)
        .kind(RamKind::Ram)
        .backing(backing)
        .shared(args.mem_share == OnOff::On)
        .windows(pc_ram_windows(size));
    let block = builder.build().map_err(Error::Memory)?;
    RamBlockList::from_blocks([block]).map_err(Error::Memory)
}

/// How a checkpoint names where a block's RAM is: a file's canonical path, or (RAM with
/// no path) the memory object's inode, the same in every process that maps it.
fn backing_identity(block: &cpr_memory::MappedBlock) -> String {
    use std::os::unix::fs::MetadataExt;
    match block.block().backing() {
        Backing::File { path } => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        Backing::Memfd { .. } | Backing::InheritedFd(_) => {
            let ino = block
                .fd()
                .and_then(|fd| fd.try_clone_to_owned().ok())
                .and_then(|fd| std::fs::File::from(fd).metadata().ok())
                .map(|m| m.ino());
            match ino {
                Some(ino) => format!("memfd:{} (inode {ino})", block.block().idstr()),
                None => format!("memfd:{}", block.block().idstr()),
            }
        }
        other => other.to_string(),
    }
}

/// The layout recorded in (and demanded from) a checkpoint.
pub(crate) fn machine_layout(args: &VmArgs, ram: &GuestRam) -> MachineLayout {
    let ram = ram
        .blocks()
        .iter()
        .map(|b| RamBlockInfo {
            idstr: b.block().idstr().to_string(),
            size: b.block().size(),
            shared: b.block().shared(),
            backing: backing_identity(b),
            copied: false,
        })
        .collect();
    MachineLayout {
        vcpus: args.smp,
        ram,
        epoch: String::new(),
    }
}

impl Vmm {
    /// Maps guest RAM (reusing an existing RAM file, never resizing it) and sets up an
    /// unstarted VM in `prelaunch`. Machine events and QMP requests are to be sent to `msgs`.
    pub fn new(args: VmArgs, events: EventSender, msgs: Sender<Msg>) -> Result<Vmm> {
        Vmm::with_handoff(args, events, msgs, None)
    }

    /// [`Vmm::new`] for a process that takes over from another (`cpr-transfer`,
    /// `cpr-exec`): RAM comes from the descriptors in `handed`.
    pub fn with_handoff(
        args: VmArgs,
        events: EventSender,
        msgs: Sender<Msg>,
        handed: Option<&mut Received>,
    ) -> Result<Vmm> {
        Vmm::build(args, events, msgs, handed, false)
    }

    /// [`Vmm::new`] for a cpr-transfer target whose RAM is a memfd the old process will
    /// hand over: the RAM's address space is only reserved, so the whole machine can be
    /// built (`start`) before the descriptors arrive ([`Vmm::bind_handoff`]).
    pub fn awaiting_handoff(args: VmArgs, events: EventSender, msgs: Sender<Msg>) -> Result<Vmm> {
        Vmm::build(args, events, msgs, None, true)
    }

    fn build(
        args: VmArgs,
        events: EventSender,
        msgs: Sender<Msg>,
        handed: Option<&mut Received>,
        reserve: bool,
    ) -> Result<Vmm> {
        let max_vcpus = crate::machine::layout::MAX_VCPUS;
        if args.smp == 0 || u64::from(args.smp) > max_vcpus {
            return Err(ConfigError::Smp {
                smp: args.smp,
                max: max_vcpus,
            }
            .into());
        }
        let max_ram = crate::machine::layout::MAX_MAPPED_GIB * crate::config::GIB;
        if args.mem_size.0 < 64 * crate::config::MIB || args.mem_size.0 > max_ram {
            return Err(ConfigError::MemSize {
                size: args.mem_size.to_string(),
                max_gib: max_ram / crate::config::GIB,
            }
            .into());
        }
        let mut migration = MigrationState::default();
        migration.apply_globals(&args.globals)?;
        let handed_ram = handed.as_ref().is_some_and(|h| !h.ram.is_empty());
        let blocks = ram_blocks(&args, handed)?;
        let ram = if reserve {
            GuestRam::reserve(&blocks, OpenMode::OpenOrCreate)
        } else {
            GuestRam::map(&blocks, OpenMode::OpenOrCreate)
        }
        .map_err(Error::Memory)?;
        let layout = machine_layout(&args, &ram);
        let ram_pristine = ram_io::is_fresh(&ram);
        let vfio = VfioDevices::new();
        let mut rs = VmRunState::new(MachineSlot::default());
        rs.machine_mut().ram = RamOwnership::new(&ram)?;
        rs.register_wakeup_support();
        Ok(Vmm {
            args,
            blocks,
            ram,
            layout,
            rs,
            events,
            msgs,
            migration,
            vfio,
            autostart: true,
            quit: false,
            quit_reply: None,
            guest_reset: false,
            ram_pristine,
            spare: None,
            handed_ram,
            monitor: None,
            transfer: transfer::TransferState::default(),
            exec: None,
        })
    }

    /// Maps the RAM the old process handed over (`received`) onto this process's
    /// reserved RAM ([`Vmm::awaiting_handoff`]), where the machine built ahead expects it.
    pub fn bind_handoff(&mut self, received: &mut Received) -> Result<()> {
        let reserved: Vec<String> = self
            .ram
            .blocks()
            .iter()
            .filter(|b| b.origin() == cpr_memory::Origin::Reserved)
            .map(|b| b.block().idstr().to_string())
            .collect();
        for idstr in reserved {
            let handed = received.take_ram(&idstr).ok_or_else(|| {
                ConfigError::HandedRam(format!(
                    "the old process handed over no memfd for {idstr}: start both with --mem-backend memfd"
                ))
            })?;
            self.ram.bind(&idstr, handed.fd).map_err(Error::Memory)?;
        }
        if let Some(extra) = received.ram.first() {
            return Err(ConfigError::HandedRam(format!(
                "the old process handed over {} as a memfd; start this one with --mem-backend memfd, as the old one",
                extra.idstr
            ))
            .into());
        }
        self.blocks =
            RamBlockList::from_blocks(self.ram.blocks().iter().map(|b| b.block().clone()))
                .map_err(Error::Memory)?;
        self.layout = machine_layout(&self.args, &self.ram);
        self.rs.machine_mut().ram = RamOwnership::new(&self.ram)?;
        self.handed_ram = true;
        self.ram_pristine = false;
        Ok(())
    }

    /// Where events go from now on (a monitor started after the VMM).
    pub fn set_events(&mut self, events: EventSender) {
        self.events = events;
    }

    /// Attaches a VFIO device: the VMM's caller owns the devices (none can be bound by this
    /// crate yet); they count in `query-migrate` and in the cpr-reboot VFIO rule.
    pub fn attach_vfio(&mut self, device: Box<dyn VfioDevice + Send + Sync>) {
        self.vfio.add(device);
    }

    /// The current run state.
    pub fn runstate(&self) -> RunState {
        self.rs.state()
    }

    /// Whether `quit` was asked for (or the guest powered off or reset itself).
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Whether the guest failed: it reset itself (a triple fault; there is no reboot), or
    /// it is `guest-panicked` or `internal-error`. The process then exits with a status
    /// that says so, not the one of a clean `quit`.
    pub fn guest_failed(&self) -> bool {
        self.guest_reset
            || matches!(
                self.rs.state(),
                RunState::GuestPanicked | RunState::InternalError
            )
    }

    /// Answers a pending `quit`, then emits `SHUTDOWN` once the answer is queued for the
    /// client (QEMU's order: the reply, then the event). The caller closes the monitor's
    /// listener before this, so the path is free when the reply arrives.
    pub fn finish_quit(&mut self) {
        if let Some(reply) = self.quit_reply.take() {
            reply
                .respond_queued(Ok(Response::Empty))
                .wait(std::time::Duration::from_secs(2));
            self.events.send(Event::Shutdown {
                guest: false,
                reason: "host-qmp-quit",
            });
        }
    }

    /// This machine's layout as a checkpoint records it: `ignore_shared` is `None` for a
    /// V7 checkpoint (no RAM in the file), else mainline's `x-ignore-shared`, which decides
    /// which blocks are copied into the stream.
    fn layout_with_ram(&self, ignore_shared: Option<bool>) -> MachineLayout {
        let mut layout = self.layout.clone();
        if let Some(ignore) = ignore_shared {
            for (info, block) in layout.ram.iter_mut().zip(self.ram.blocks()) {
                info.copied = !ram_io::stays_in_place(block, ignore);
            }
        }
        layout
    }

    fn machine(&self) -> Option<&Machine> {
        self.rs.machine().get()
    }

    fn serial_output(&self) -> Result<SerialOutput> {
        Ok(match self.args.serial.as_str() {
            "stdout" => SerialOutput::Stdout,
            "none" => SerialOutput::Sink,
            path => SerialOutput::Writer(Box::new(
                crate::machine::devices::serial::open_output_file(path.as_ref()).map_err(
                    |source| ConfigError::Serial {
                        path: path.into(),
                        source,
                    },
                )?,
            )),
        })
    }

    fn machine_config(&self) -> Result<MachineConfig> {
        let mut cfg = MachineConfig::new(self.args.smp as usize, self.ram.memory().clone());
        cfg.serial = self.serial_output()?;
        if let Some(size) = self.args.workload_size {
            cfg.workload = Some((crate::machine::layout::DEFAULT_WORKLOAD_BASE, size.0));
        }
        Ok(cfg)
    }

    /// Installs a new machine, forwarding its events to the main loop; the old one (if
    /// any) is dropped after the new one exists.
    fn install_machine(&mut self, mut machine: Machine) {
        if let Some(rx) = machine.take_events() {
            forward(rx, self.msgs.clone(), Msg::Machine);
        }
        let slot = self.rs.machine_mut();
        slot.machine = Some(machine);
        // A clock read from the old machine must not be put into the new one.
        slot.forget_stopped_clock();
    }

    /// Boots the built-in guest (fresh start, `cont` from `prelaunch`).
    fn boot(&mut self) -> Result<()> {
        // The RAM must be ours before the guest image is written into it; and no
        // checkpoint describes RAM a fresh guest is about to write.
        self.rs.machine_mut().ram.before_run()?;
        let mut machine = match self.spare.take() {
            Some(m) => m,
            None => Machine::new(self.machine_config()?)?,
        };
        self.ram_pristine = false;
        machine.boot()?;
        self.install_machine(machine);
        Ok(())
    }

    /// Builds the machine ahead (KVM VM, memslots, irqchip, PIT, vCPU threads, devices)
    /// while this process waits for state or for `cont`: the load or boot that follows
    /// only applies state to it. Nothing is written to guest RAM.
    pub(crate) fn build_spare(&mut self) -> Result<()> {
        if self.spare.is_none() && self.machine().is_none() {
            let mut spare = Machine::new(self.machine_config()?)?;
            // The CPUID a restore most likely brings (the one a boot gives), set now.
            if let Err(e) = spare.preset_cpuid() {
                log::warn!("cannot preset the spare machine's CPUID: {e}");
            }
            // Its events reach the main loop once it runs; the thread that forwards them
            // is started now, off the path of the load that will install it.
            if let Some(rx) = spare.take_events() {
                forward(rx, self.msgs.clone(), Msg::Machine);
            }
            self.spare = Some(spare);
        }
        Ok(())
    }

    /// Start-up: run the guest, stay in `prelaunch` (`-S`), or take state from
    /// `--incoming`. A process that waits builds its machine first.
    pub fn start(&mut self, no_start: bool, incoming: Option<&Incoming>) -> Result<()> {
        if no_start || incoming.is_some() {
            self.build_spare()?;
        }
        match incoming {
            Some(Incoming::Unix { path }) => {
                self.rs.runstate_set(RunState::Inmigrate)?;
                self.autostart = !no_start;
                self.migration.incoming_enabled = true;
                self.listen_transfer(path)?;
            }
            Some(Incoming::Defer) => {
                self.rs.runstate_set(RunState::Inmigrate)?;
                self.autostart = !no_start;
                self.migration.incoming_enabled = true;
                self.migration.incoming_deferred = true;
            }
            Some(Incoming::File { path, offset }) => {
                self.rs.runstate_set(RunState::Inmigrate)?;
                self.migration.incoming_enabled = true;
                self.autostart = !no_start;
                self.incoming(&FileTarget {
                    path: path.clone(),
                    offset: *offset,
                })?;
            }
            None if no_start => {}
            None => {
                self.boot()?;
                self.rs.vm_start()?;
            }
        }
        self.flush_events();
        Ok(())
    }

    /// The RAM files of blocks that are file-backed (the only RAM a checkpoint can leave in
    /// place).
    fn ram_files(&self, only: impl Fn(&cpr_memory::MappedBlock) -> bool) -> Vec<PathBuf> {
        self.ram
            .blocks()
            .iter()
            .filter(|b| only(b))
            .filter_map(|b| match b.block().backing() {
                Backing::File { path } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Sends the run-state machine's events to the QMP client.
    fn flush_events(&mut self) {
        let pending: Vec<_> = self.rs.drain_events().collect();
        for e in pending {
            self.events.send(Event::RunState(e.event));
        }
    }

    /// Handles one message, then the run-state requests it caused.
    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Qmp(req) => {
                let (command, responder) = req.into_parts();
                let quit = matches!(command, Command::Quit);
                let result = self.command(command);
                if quit && result.is_ok() {
                    // Answered by `finish_quit`, once the monitor's socket is gone.
                    self.quit_reply = Some(responder);
                } else if self.exec.is_some() {
                    // A cpr-exec follows: the reply must be out before the exec, and a
                    // client that reconnects must wait for the new image.
                    if let Some(m) = &self.monitor {
                        m.hold(true);
                    }
                    responder
                        .respond_queued(result.map_err(|e| QmpError::generic(e.chain())))
                        .wait(std::time::Duration::from_secs(2));
                } else {
                    responder.respond(result.map_err(|e| QmpError::generic(e.chain())));
                }
            }
            Msg::Machine(event) => self.machine_event(event),
            Msg::Transfer(got) => self.transfer_arrived(got),
        }
        if let Err(e) = self.rs.process_requests() {
            log::error!("{}", Error::from(e).chain());
        }
        self.flush_events();
    }

    /// The guest may have entered S3 (its vCPUs all parked, the PM register says so)
    /// before its `Suspended` event reached the main loop: bring the run state in line
    /// before a command looks at it, so nothing saves or resumes a "running" guest that is
    /// in fact suspended.
    fn sync_suspend(&mut self) {
        if self.rs.state() == RunState::Running && self.machine().is_some_and(Machine::is_suspended)
        {
            self.rs.suspend_request();
            if let Err(e) = self.rs.process_requests() {
                log::error!("{}", Error::from(e).chain());
            }
        }
    }

    fn machine_event(&mut self, event: MachineEvent) {
        match event {
            // Handled here or already by `sync_suspend`.
            MachineEvent::Suspended => self.sync_suspend(),
            MachineEvent::Shutdown {
                vcpu,
                cause,
                reason,
            } => {
                log::warn!("guest shutdown (vCPU {vcpu}): {reason}");
                // No reboot: a reset request ends the VM, as QEMU's -no-reboot does.
                self.guest_reset |= cause == ShutdownCause::GuestReset;
                self.events.send(Event::Shutdown {
                    guest: true,
                    reason: cause.as_str(),
                });
                self.quit = true;
            }
            MachineEvent::GuestPanicked { fatal } => {
                log::warn!("guest panicked: {fatal:?}");
                if let Err(e) = self.rs.vm_stop(RunState::GuestPanicked) {
                    log::error!("{}", Error::from(e).chain());
                }
                self.events.send(Event::GuestPanicked {
                    vcpu: fatal.vcpu,
                    vector: fatal.vector,
                    rip: fatal.rip,
                });
            }
            MachineEvent::InternalError { vcpu, reason } => {
                log::error!("KVM internal error on vCPU {vcpu}: {reason}");
                if let Err(e) = self.rs.vm_stop(RunState::InternalError) {
                    log::error!("{}", Error::from(e).chain());
                }
            }
        }
    }

    /// Executes one command (a QMP or HMP request, or a test's).
    ///
    /// `quit` only marks the VMM as quitting: the main loop answers it with
    /// [`finish_quit`](Vmm::finish_quit) once the monitor's socket is gone.
    pub fn command(&mut self, command: Command) -> Result<Response> {
        self.sync_suspend();
        let empty = |r: Result<()>| r.map(|()| Response::Empty);
        match command {
            Command::QueryStatus => Ok(Response::Status(self.rs.query_status())),
            Command::Stop => {
                if self.rs.state() == RunState::Inmigrate {
                    self.autostart = false;
                } else {
                    self.rs.vm_stop(RunState::Paused)?;
                }
                Ok(Response::Empty)
            }
            Command::Cont => empty(self.cont()),
            Command::SystemWakeup => {
                if self.rs.state() == RunState::Suspended {
                    // The guest is about to run: the RAM must be ours (`ownership.rs`).
                    self.rs.machine_mut().ram.acquire()?;
                }
                self.rs.system_wakeup()?;
                Ok(Response::Empty)
            }
            Command::Quit => {
                // The reply, then SHUTDOWN: `finish_quit`.
                self.quit = true;
                Ok(Response::Empty)
            }
            Command::CprSave(args) => self.cpr_save(&args.filename, args.mode),
            Command::CprLoad(args) => empty(self.cpr_load(&args.filename)),
            Command::QueryMigrate => {
                let mut info = self.migration.info.clone();
                if let Some(vfio) = self.vfio.populate_vfio_info() {
                    info.vfio = Some(vfio);
                }
                Ok(Response::Migration(info))
            }
            Command::GuestSuspendRam => {
                self.running_machine("guest-suspend-ram")?
                    .request_guest_suspend()?;
                Ok(Response::Empty)
            }
            Command::GuestFault(fault) => {
                self.running_machine("x-guest-fault")?
                    .request_guest_fault(fault)?;
                Ok(Response::Empty)
            }
            Command::QueryGuestProgress => Ok(Response::GuestProgress(
                self.machine()
                    .map(|m| {
                        let mut p = m.guest_progress();
                        p.ram_progress = m.guest_ram_progress().ok().map(|v| v.iter().sum());
                        p
                    })
                    .unwrap_or_default(),
            )),
            Command::QueryRamPersistence => self.ram_persistence(),
            Command::MigrateSetCapabilities(caps) => empty(self.set_capabilities(&caps)),
            Command::MigrateSetParameters(set) => empty(self.set_parameters(&set)),
            Command::QueryMigrateCapabilities => Ok(self.query_capabilities()),
            Command::QueryMigrateParameters => Ok(self.query_parameters()),
            Command::Migrate(args) => empty(self.migrate(&args)),
            Command::MigrateIncoming(args) => empty(self.migrate_incoming(&args)),
        }
    }

    /// The machine, if the guest is running (`command` names the refused command).
    fn running_machine(&self, command: &'static str) -> Result<&Machine> {
        self.machine()
            .filter(|_| self.rs.state() == RunState::Running)
            .ok_or_else(|| CommandError::GuestNotRunning(command).into())
    }

    /// QEMU's `qmp_cont`.
    fn cont(&mut self) -> Result<()> {
        let state = self.rs.state();
        if state.needs_reset() {
            return Err(CommandError::ResetRequired.into());
        }
        match state {
            RunState::Suspended => return Ok(()),
            RunState::FinishMigrate => {
                return Err(CommandError::MigrationNotFinalized.into());
            }
            RunState::Inmigrate => {
                self.autostart = true;
                return Ok(());
            }
            _ => {}
        }
        if self.machine().is_none() {
            self.boot()?;
        }
        // The guest is about to run: the RAM must be ours (`ownership.rs`), refused before
        // the run state changes.
        self.rs.machine_mut().ram.acquire()?;
        self.rs.vm_start()?;
        Ok(())
    }

    fn ram_persistence(&self) -> Result<Response> {
        let mut out = Vec::new();
        for b in self.blocks.iter() {
            let r = cpr_memory::persistence(b).map_err(Error::Memory)?;
            out.push(RamPersistenceInfo {
                block: b.idstr().to_string(),
                backing: b.backing().to_string(),
                shared: b.shared(),
                persistence: format!("{:?}", r.persistence),
                survives_process_restart: r.persistence.survives_process_restart(),
                survives_host_reboot: r.persistence.survives_host_reboot(),
                description: r.to_string(),
            });
        }
        Ok(Response::RamPersistence(out))
    }
}

/// Forwards everything from `rx` to `tx`, wrapped by `wrap`, on a small thread.
pub fn forward<T: Send + 'static>(rx: Receiver<T>, tx: Sender<Msg>, wrap: fn(T) -> Msg) {
    let spawned = std::thread::Builder::new()
        .name("cpr-forward".into())
        .spawn(move || {
            for item in rx {
                if tx.send(wrap(item)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start an event thread: {e}");
    }
}

/// A message channel for [`Vmm::new`].
pub fn channel_pair() -> (Sender<Msg>, Receiver<Msg>) {
    channel()
}
