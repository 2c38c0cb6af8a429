//! Shared fakes for the cross-crate CPR scenarios: a counter device, fake
//! vCPUs, the `globalstate` section, a mock [`VmControl`], and a tiny VMM that
//! runs V7's `cpr-save` / `cpr-load` steps (patch 06, §6.2/§6.3/§13 of the
//! reference) composed only from the five library crates.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use cpr_memory::{
    GuestAddress, GuestRam, OpenMode, RamBlock, RamBlockList, check_ram_volatile, page_size,
};
use cpr_migration_file::{AtomicFile, QemuFile};
use cpr_runstate::{
    ControlOp, Event, GlobalState, RunState, VmControl, VmRunState, WakeupReason, check_transition,
};
use cpr_savevm::{
    BoxError, CHANNEL_CPR_LOAD, CHANNEL_CPR_SAVE, FieldReader, FieldWriter, InstanceId, OnLoad,
    Persist, Registration, Registry, SaveStats, SharedState, VmState, load_device_state_as,
    save_device_state,
};
use vm_memory::Bytes;

/// Guest RAM size in pages.
pub const RAM_PAGES: u64 = 16;

/// Guest RAM size in bytes.
pub fn ram_len() -> usize {
    usize::try_from(RAM_PAGES * page_size()).expect("RAM fits in usize")
}

/// A deterministic, seed-dependent byte pattern filling guest RAM.
pub fn ram_pattern(seed: u8) -> Vec<u8> {
    (0..ram_len())
        .map(|i| {
            let b = i.to_le_bytes();
            b[0] ^ b[1].rotate_left(3) ^ seed
        })
        .collect()
}

/// Lock a mutex in a test (a poisoned lock is a test failure anyway).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("mutex poisoned")
}

/// `err` and all its sources, joined with ": ".
pub fn chain(err: &dyn StdError) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

// ------------------------------------------------------------------ counter

/// The counter device's VMState (`counter`, version 2 added `step`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterState {
    /// The count.
    pub count: u64,
    /// Increment per tick (version 2; version 1 streams mean 1).
    pub step: u32,
}

impl VmState for CounterState {
    const NAME: &'static str = "counter";
    const VERSION_ID: u32 = 2;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<()> {
        w.u64("count", self.count);
        w.u32("step", self.step);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        Ok(CounterState {
            count: r.u64("count")?,
            step: r.since(2, |r| r.u32("step"))?.unwrap_or(1),
        })
    }
    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        if self.step == 0 {
            return Err(cpr_savevm::Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: "step must not be zero".into(),
            });
        }
        Ok(())
    }
}

/// A device with one register file; its save can be made to fail, like a
/// real device whose state query (an ioctl) fails.
#[derive(Debug)]
pub struct Counter {
    /// Live state.
    pub state: CounterState,
    /// Make the next saves fail.
    pub fail_save: bool,
}

impl Persist for Counter {
    type State = CounterState;
    fn save_state(&mut self) -> Result<CounterState, BoxError> {
        if self.fail_save {
            return Err("device busy".into());
        }
        Ok(self.state.clone())
    }
    fn restore_state(&mut self, state: CounterState) -> Result<(), BoxError> {
        self.state = state;
        Ok(())
    }
}

// --------------------------------------------------------------------- vCPU

/// Fake x86 register file (`cpu` vmsd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuRegs {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags; bit 1 is reserved and always set on x86.
    pub rflags: u64,
    /// rax, rbx, rcx, rdx.
    pub gprs: [u64; 4],
}

impl VmState for VcpuRegs {
    const NAME: &'static str = "cpu";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<()> {
        w.u64("rip", self.rip);
        w.u64("rsp", self.rsp);
        w.u64("rflags", self.rflags);
        w.array_fixed("gprs", &self.gprs)
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        let rip = r.u64("rip")?;
        let rsp = r.u64("rsp")?;
        let rflags = r.u64("rflags")?;
        let gprs = r.array_fixed::<u64>("gprs", 4)?;
        let gprs = <[u64; 4]>::try_from(gprs).map_err(|_| r.invalid("gprs: wrong length"))?;
        Ok(VcpuRegs {
            rip,
            rsp,
            rflags,
            gprs,
        })
    }
    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        if self.rflags & 2 == 0 {
            return Err(cpr_savevm::Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: format!("rflags {:#x} lacks the reserved bit 1", self.rflags),
            });
        }
        Ok(())
    }
}

/// A fake vCPU.
#[derive(Debug)]
pub struct FakeVcpu {
    /// vCPU index (the section's instance id).
    pub index: u32,
    /// Registers.
    pub regs: VcpuRegs,
}

impl Persist for FakeVcpu {
    type State = VcpuRegs;
    fn save_state(&mut self) -> Result<VcpuRegs, BoxError> {
        Ok(self.regs.clone())
    }
    fn restore_state(&mut self, state: VcpuRegs) -> Result<(), BoxError> {
        self.regs = state;
        Ok(())
    }
}

// -------------------------------------------------------------- globalstate

/// The `globalstate` section (migration/global_state.c, 6.2 layout):
/// `size` (be32) and the 100-byte NUL-padded runstate name, encoded and
/// decoded by `cpr_runstate::global_state`. `None` until
/// `global_state_store()`; an unstored state is not needed and not written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobalStateSection {
    /// The stored state.
    pub state: Option<GlobalState>,
}

impl VmState for GlobalStateSection {
    const NAME: &'static str = "globalstate";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        self.state.is_some()
    }
    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<()> {
        let Some(g) = self.state else {
            return Err(cpr_savevm::Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: "global state was never stored".into(),
            });
        };
        let (size, buf) = g.encode();
        w.u32("size", size);
        w.buffer("runstate", &buf);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        let size = r.u32("size")?;
        let buf = r.buffer::<{ cpr_runstate::global_state::RUNSTATE_BUF_LEN }>("runstate")?;
        let g = GlobalState::decode(size, &buf).map_err(|e| r.invalid(e.to_string()))?;
        Ok(GlobalStateSection { state: Some(g) })
    }
    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ machine

/// A machine that records every step the run-state code asks of it.
#[derive(Debug, Default)]
pub struct MockMachine {
    /// Steps in call order.
    pub ops: Vec<ControlOp>,
    /// Whether the vCPUs run.
    pub vcpus_running: bool,
    /// Whether guest time runs.
    pub ticks_enabled: bool,
    /// Wakeup hook calls.
    pub wakeups: Vec<WakeupReason>,
}

impl VmControl for MockMachine {
    type Error = Infallible;
    fn pause_vcpus(&mut self) -> Result<(), Infallible> {
        self.ops.push(ControlOp::PauseVcpus);
        self.vcpus_running = false;
        Ok(())
    }
    fn resume_vcpus(&mut self) -> Result<(), Infallible> {
        self.ops.push(ControlOp::ResumeVcpus);
        self.vcpus_running = true;
        Ok(())
    }
    fn enable_ticks(&mut self) -> Result<(), Infallible> {
        self.ops.push(ControlOp::EnableTicks);
        self.ticks_enabled = true;
        Ok(())
    }
    fn disable_ticks(&mut self) -> Result<(), Infallible> {
        self.ops.push(ControlOp::DisableTicks);
        self.ticks_enabled = false;
        Ok(())
    }
    fn wakeup(&mut self, reason: WakeupReason) -> Result<(), Infallible> {
        self.ops.push(ControlOp::Wakeup);
        self.wakeups.push(reason);
        Ok(())
    }
}

// -------------------------------------------------------------------- VMM

/// Errors of the scenario's `cpr-save` / `cpr-load`.
#[derive(Debug, thiserror::Error)]
pub enum CprError {
    /// Step 1 of cpr-save.
    #[error(transparent)]
    Volatile(cpr_memory::Error),
    /// Creating the checkpoint file.
    #[error(transparent)]
    Open(cpr_migration_file::Error),
    /// Making guest RAM durable failed.
    #[error("Error while syncing guest RAM")]
    SyncRam(#[source] cpr_memory::Error),
    /// Writing the device state failed.
    #[error("Error while saving VM state")]
    Save(#[source] cpr_savevm::Error),
    /// Committing (fsync/close/rename) the checkpoint failed.
    #[error("Error while saving VM state")]
    Commit(#[source] cpr_migration_file::Error),
    /// cpr-load step 1.
    #[error("cpr-load called for a running VM")]
    LoadRunning,
    /// Parsing or applying the checkpoint failed.
    #[error("Error while loading VM state")]
    Load(#[source] cpr_savevm::Error),
    /// The stream holds no stored global state.
    #[error("checkpoint has no globalstate")]
    NoGlobalState,
    /// A run-state step failed (e.g. an invalid transition).
    #[error(transparent)]
    Runstate(#[from] cpr_runstate::Error),
}

/// Pre-load "sentinel" values, distinct from anything a test saves.
pub const SENTINEL_COUNTER: CounterState = CounterState {
    count: 0xdead_beef,
    step: 99,
};

/// Sentinel registers for vCPU `index`.
pub fn sentinel_regs(index: u32) -> VcpuRegs {
    VcpuRegs {
        rip: 0xfff0,
        rsp: 0,
        rflags: 2,
        gprs: [u64::from(index); 4],
    }
}

/// Registers a test "runs" vCPU `index` to before saving.
pub fn running_regs(index: u32) -> VcpuRegs {
    let i = u64::from(index);
    VcpuRegs {
        rip: 0xffff_ffff_8100_0000 + i * 0x10,
        rsp: 0xffff_c900_0000_8000 - i * 0x1000,
        rflags: 0x246,
        gprs: [0x1111 * (i + 1), 0x2222, 0x3333, 0x4444_0000 + i],
    }
}

/// What the fake devices hold, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// The counter.
    pub counter: CounterState,
    /// Each vCPU's registers, by index.
    pub vcpus: Vec<VcpuRegs>,
}

/// A minimal VMM process: guest RAM, devices, registry, run state.
pub struct Vmm {
    /// The RAM block descriptions.
    pub blocks: RamBlockList,
    /// Guest RAM, mapped.
    pub ram: GuestRam,
    /// Save-state entries.
    pub registry: Registry,
    /// The counter device.
    pub counter: Arc<Mutex<Counter>>,
    /// The vCPUs.
    pub vcpus: Vec<Arc<Mutex<FakeVcpu>>>,
    /// The `globalstate` payload.
    pub global: Arc<Mutex<GlobalStateSection>>,
    /// The run state and the machine.
    pub vm: VmRunState<MockMachine>,
}

/// The usual guest RAM: `pc.ram`, file `path`, `share=on`.
pub fn shared_file_ram(path: &Path) -> RamBlock {
    RamBlock::builder("pc.ram", RAM_PAGES * page_size())
        .file(path)
        .shared(true)
        .build()
        .expect("valid block")
}

impl Vmm {
    /// Start a VMM process (`-S`: run state `prelaunch`) with `block` as its
    /// guest RAM (mapped `OpenOrCreate`, as a restarted VMM does) and
    /// `n_vcpus` vCPUs; devices hold the sentinel values.
    pub fn boot(block: RamBlock, n_vcpus: u32) -> Vmm {
        let blocks = RamBlockList::from_blocks([block]).expect("block list");
        let ram = GuestRam::map(&blocks, OpenMode::OpenOrCreate).expect("map guest RAM");
        let mut registry = Registry::new();
        let global = Arc::new(Mutex::new(GlobalStateSection::default()));
        registry
            .register_persist(
                Registration::new("globalstate", InstanceId::Id(0), OnLoad::Required),
                SharedState::new(Arc::clone(&global)),
            )
            .expect("register globalstate");
        let counter = Arc::new(Mutex::new(Counter {
            state: SENTINEL_COUNTER,
            fail_save: false,
        }));
        registry
            .register_persist(
                Registration::new("counter", InstanceId::Any, OnLoad::Required),
                Arc::clone(&counter),
            )
            .expect("register counter");
        let vcpus: Vec<_> = (0..n_vcpus)
            .map(|index| {
                let cpu = Arc::new(Mutex::new(FakeVcpu {
                    index,
                    regs: sentinel_regs(index),
                }));
                registry
                    .register_persist(
                        Registration::new("cpu", InstanceId::Id(index), OnLoad::Required),
                        Arc::clone(&cpu),
                    )
                    .expect("register cpu");
                cpu
            })
            .collect();
        Vmm {
            blocks,
            ram,
            registry,
            counter,
            vcpus,
            global,
            vm: VmRunState::new(MockMachine::default()),
        }
    }

    /// `cont` from `prelaunch`, then let the guest "run": devices and vCPUs
    /// get their running values and RAM is filled with `ram_pattern(seed)`.
    /// Drains the RESUME event and the machine log.
    pub fn start_and_run(&mut self, seed: u8, count: u64) {
        self.vm.vm_start().expect("vm_start");
        assert_eq!(self.events(), [Event::Resume]);
        self.vm.machine_mut().ops.clear();
        lock(&self.counter).state = CounterState { count, step: 3 };
        for cpu in &self.vcpus {
            let mut cpu = lock(cpu);
            cpu.regs = running_regs(cpu.index);
        }
        self.write_ram(&ram_pattern(seed));
    }

    /// Write guest RAM at guest address 0.
    pub fn write_ram(&self, bytes: &[u8]) {
        self.ram
            .memory()
            .write_slice(bytes, GuestAddress(0))
            .expect("write guest RAM");
    }

    /// Read all of guest RAM.
    pub fn read_ram(&self) -> Vec<u8> {
        let mut buf = vec![0u8; ram_len()];
        self.ram
            .memory()
            .read_slice(&mut buf, GuestAddress(0))
            .expect("read guest RAM");
        buf
    }

    /// Drain the queued QMP events.
    pub fn events(&mut self) -> Vec<Event> {
        self.vm.drain_events().map(|e| e.event).collect()
    }

    /// What the devices hold now.
    pub fn devices(&self) -> Devices {
        Devices {
            counter: lock(&self.counter).state.clone(),
            vcpus: self.vcpus.iter().map(|c| lock(c).regs.clone()).collect(),
        }
    }

    /// The devices as [`Vmm::boot`] leaves them.
    pub fn sentinel_devices(&self) -> Devices {
        Devices {
            counter: SENTINEL_COUNTER,
            vcpus: (0..self.vcpus.len())
                .map(|i| sentinel_regs(u32::try_from(i).expect("few vcpus")))
                .collect(),
        }
    }

    /// V7 `qmp_cpr_save(path, reboot)` (§6.2), with the atomic save
    /// (temporary file + fsync + rename) in place of `O_TRUNC`:
    ///
    /// * step 0: remember whether the VM was running;
    /// * step 1: the volatile-RAM check;
    /// * step 4: `global_state_store()`;
    /// * step 5: create the (temporary) file, mode 0600;
    /// * step 6: `cpu_disable_ticks()` if suspended;
    /// * step 7: `vm_stop(save-vm)` (STOP only if it was running);
    /// * step 9: make RAM durable, write the device state, commit;
    /// * step 10: on error, restart a VM that was running (RESUME).
    pub fn cpr_save(&mut self, path: &Path) -> Result<SaveStats, CprError> {
        let saved_vm_running = self.vm.is_running();
        check_ram_volatile(&self.blocks).map_err(CprError::Volatile)?;
        lock(&self.global).state = Some(GlobalState::new(self.vm.state()));
        let mut file = AtomicFile::create(path, CHANNEL_CPR_SAVE).map_err(CprError::Open)?;
        if self.vm.state() == RunState::Suspended {
            self.vm
                .machine_mut()
                .disable_ticks()
                .unwrap_or_else(|never| match never {});
        }
        self.vm.vm_stop(RunState::SaveVm)?;
        let result = self
            .ram
            .sync()
            .map_err(CprError::SyncRam)
            .and_then(|_| {
                save_device_state(file.file(), &mut self.registry).map_err(CprError::Save)
            })
            .and_then(|stats| file.commit().map(|()| stats).map_err(CprError::Commit));
        if result.is_err() && saved_vm_running {
            self.vm.vm_start()?;
        }
        result
    }

    /// V7 `qmp_cpr_load(path)` (§6.3), parse-then-apply:
    ///
    /// * step 1: refuse a running VM;
    /// * steps 2–5: open, check and parse the whole stream without touching
    ///   any device;
    /// * step 6: read the staged `globalstate` and check the run-state edge
    ///   *before* applying anything (V7 applies, then aborts in
    ///   `runstate_set`); apply; then `running` ⇒ `vm_start` (RESUME), else
    ///   `runstate_set` and, for `suspended`, arm start-on-wakeup.
    ///
    /// Returns the saved run state.
    pub fn cpr_load(&mut self, path: &Path) -> Result<RunState, CprError> {
        if self.vm.is_running() {
            return Err(CprError::LoadRunning);
        }
        let loaded = read_device_state_from_path(path, &self.registry, CHANNEL_CPR_LOAD)
            .map_err(CprError::Load)?;
        let saved = loaded
            .staged::<GlobalStateSection>("globalstate", 0)
            .and_then(|g| g.state)
            .ok_or(CprError::NoGlobalState)?
            .runstate;
        check_transition(self.vm.state(), saved)?;
        loaded.apply(&mut self.registry).map_err(CprError::Load)?;
        if saved == RunState::Running {
            self.vm.vm_start()?;
        } else {
            self.vm.runstate_set(saved)?;
            if saved == RunState::Suspended {
                self.vm.start_on_wakeup_request();
            }
        }
        Ok(saved)
    }
}

/// A scratch directory on tmpfs (`/dev/shm`), removed on drop.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cpr-tests-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

/// Paths of the RAM file and the checkpoint in `dir`.
pub fn paths(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    (dir.path().join("pc.ram"), dir.path().join("vm.cpr"))
}

/// Names of the entries of `dir`, sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Run an old VMM to a checkpoint: boot with `n_vcpus`, run, bring the VM
/// to `state` (`running`, `paused` or `suspended`), cpr-save to `state_path`.
/// Returns what the devices held when saved.
pub fn make_checkpoint(
    ram_path: &Path,
    state_path: &Path,
    n_vcpus: u32,
    state: RunState,
    seed: u8,
) -> Devices {
    let mut old = Vmm::boot(shared_file_ram(ram_path), n_vcpus);
    old.start_and_run(seed, 0x1122_3344_5566_7788);
    match state {
        RunState::Running => {}
        RunState::Paused => old.vm.vm_stop(RunState::Paused).expect("stop"),
        RunState::Suspended => {
            old.vm.suspend_request();
            assert!(old.vm.process_suspend().expect("suspend"));
        }
        RunState::Shutdown => old.vm.vm_stop(RunState::Shutdown).expect("shutdown"),
        other => panic!("make_checkpoint: unsupported state {other}"),
    }
    old.cpr_save(state_path).expect("cpr-save");
    old.devices()
}

/// Opens `path` read-only and parses it completely against `registry` without applying
/// anything; header errors name the path (opening a checkpoint file is the VMM's: savevm
/// has no path helpers).
pub fn read_device_state_from_path(
    path: &Path,
    registry: &Registry,
    channel_name: &str,
) -> Result<cpr_savevm::LoadedState, cpr_savevm::Error> {
    let mut f = QemuFile::open(
        path,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
        channel_name,
    )
    .map_err(|source| cpr_savevm::Error::Io {
        op: "opening the state file",
        source,
    })?;
    load_device_state_as(&mut f, registry, &path.display().to_string())
}
