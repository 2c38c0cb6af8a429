//! The checkpoint file: which sections a `cpr-save` writes, and how `cpr-load` reads them
//! back into a [`MachineState`] without touching the machine.
//!
//! Stream layout (every section a savevm FULL section; order = save order):
//!
//! | idstr | instance | owner | content |
//! |---|---|---|---|
//! | `cpr-machine` | 0 | this module | vCPU count and RAM block layout (names, sizes, backing identity) |
//! | `globalstate` | 0 | this module | QEMU 6.2 layout: be32 size + 100-byte run-state name |
//! | `cpu` | vCPU index | [`VcpuState`] | registers, MSRs, LAPIC, XSAVE, events, CPUID, TSC rate |
//! | `i8259` | 0, 1 | `PicSection` | PIC master, slave |
//! | `ioapic` | 0 | `IoapicSection` | IOAPIC |
//! | `i8254` | 0 | `PitSection` | PIT |
//! | `kvmclock` | 0 | `KvmClockSection` | kvmclock |
//! | `serial` | 0 | `SerialSection` | COM1 |
//! | `cpr-pm` | 0 | [`PmState`] | PM1 control register, suspended flag |
//! | `cpr-testdev` | 0 | [`TestDevState`] | the guest's last progress reports |
//!
//! Guest RAM contents are never written: they stay in place in the shared RAM file.
//!
//! `cpr-machine` is saved first so that loading a file into a machine of another shape fails
//! with one clear sentence ("the checkpoint has 2 vCPUs, this VM has 1") before any other
//! section is looked at. Every section is required on load.
//!
//! Apart from `cpr-machine` (whose handler also checks the machine's shape), each section
//! is a plain value ([`cpr_savevm::ValueSection`]): [`save_registry`] saves the captured
//! values, and [`parse`] takes the parsed ones out of the loaded stream
//! ([`LoadedState::take`]) into a [`ParsedCheckpoint`], applying nothing.
//!
//! # The loader accepts exactly what the saver can write
//!
//! A checkpoint is hostile input: a file with a valid checksum can still hold values that
//! no `cpr-save` or `migrate` ever writes, and the loader must not make a VM of them. So
//! whatever [`parse`] accepts, the saver could have written, byte for byte:
//!
//! * **Encoding.** Every field is read back as it was written: bools are 0 or 1, counted
//!   arrays within their limits, `globalstate`'s buffer exactly as the saver pads it (no
//!   QEMU 9.0 flag, zeros after the name), the vmdesc exactly the saver's description of
//!   the sections read (`cpr_savevm`), nothing after the trailer. Re-saving what was loaded
//!   gives the same bytes (a property test, `checkpoint/saveable_tests.rs`, damages valid
//!   checkpoints, recomputes their checksum and checks that each is refused or re-saves
//!   identically).
//! * **Values.** [`check_saveable`] states what the saver guarantees about the values, in
//!   one place, and runs on the whole parsed stream (a [`Registry::set_stream_check`])
//!   before any guest RAM is written or anything applied. A violation refuses the file with
//!   an error that names the section (`error while loading state for instance 0x0 of device
//!   'i8259': ...`). The rules:
//!
//!   | section | what the saver always writes |
//!   |---|---|
//!   | `globalstate` | a run state in [`SAVED_RUN_STATES`] (`running`, `paused`, `suspended`): `cpr-save` and `migrate` refuse every other |
//!   | `cpr-machine` | each RAM block once; a block is `copied` exactly when the stream has a `ram` section that sends its pages (the vmdesc's `"ram"` entry, which `cpr_savevm` checks against this machine's blocks; a V7 `cpr-save` never copies, a `migrate` always writes the section); an epoch only for RAM left in place, and never `running`, the tag of RAM a guest runs on |
//!   | `cpu` | KVM's MSR list (non-empty, each index once) and CPUID table (non-empty) |
//!   | `i8259` | instance 0 is the master PIC (chip id 0), instance 1 the slave (chip id 1) |
//!   | `ioapic` | chip id 2 (the IOAPIC) |
//!   | `cpr-testdev` | one report per vCPU; a fatal report names one of them |
//!
//!   Some rules sit in the sections' own `post_load` (a `cpu` section's TSC rate is not 0)
//!   and in [`MachineLayout::mismatch`] (the machine is this machine, in-place RAM carries
//!   the checkpoint's epoch).
//!
//! [`inspect`] runs the same checks on a file without a machine (`cpr-vm inspect`): the
//! registry then takes the checkpoint's own `cpr-machine` section for the shape (as many
//! `cpu` sections as it lists vCPUs, no others), and copied RAM goes nowhere or to an
//! extractor.
//!
//! V7 applies sections as it reads them and checks none of this: an `i8259` section with
//! the slave's chip id in the master's place leaves the master PIC as KVM created it, a
//! `cpu` section without MSRs leaves KVM's defaults, and a `globalstate` of `inmigrate`
//! makes `cont` answer `{}` without the guest ever running.

use cpr_runstate::RunState;
use cpr_runstate::global_state::{GlobalState, RUNSTATE_BUF_LEN};
use cpr_savevm::{
    FieldReader, FieldWriter, InstanceId, LoadedState, OnLoad, Registration, Registry, Saved,
    SectionHandler, Staged, ValueSection, VmState,
};
use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};

use crate::machine::devices::serial::SerialSection;
use crate::machine::layout::MAX_VCPUS;
use crate::machine::vm::{IoapicSection, KvmClockSection, PicSection, PitSection};
use crate::machine::{KvmVmState, MachineState, PmState, TestDevState, VcpuState};

/// QEMU's `globalstate` section (migration/global_state.c, 6.2 layout): the run state the
/// VM was in when the checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalStateSection(pub RunState);

impl VmState for GlobalStateSection {
    const NAME: &'static str = "globalstate";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<()> {
        let (size, buf) = GlobalState::new(self.0).encode();
        w.u32("size", size);
        w.buffer("runstate", &buf);
        Ok(())
    }

    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        let size = r.u32("size")?;
        let buf = r.buffer::<RUNSTATE_BUF_LEN>("runstate")?;
        let state = GlobalState::decode(size, &buf).map_err(|e| r.invalid(e.to_string()))?;
        // Exactly the saver's encoding: QEMU 6.2's layout, zeros after the name.
        if GlobalState::new(state.runstate).encode() != (size, buf) {
            return Err(r.invalid(format!(
                "the runstate buffer holds more than the name {} (cpr-save writes QEMU 6.2's layout, zero-padded)",
                state.runstate
            )));
        }
        Ok(GlobalStateSection(state.runstate))
    }

    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        Ok(())
    }
}

/// One RAM block as the checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlockInfo {
    /// RAMBlock idstr (`pc.ram`).
    pub idstr: String,
    /// Size in bytes.
    pub size: u64,
    /// Mapped shared.
    pub shared: bool,
    /// What backs it: `anonymous`, or the file's canonical path.
    pub backing: String,
    /// Its pages are in the stream (mainline copy); otherwise the RAM is expected in place,
    /// in `backing`.
    pub copied: bool,
}

/// The shape of the machine: what `cpr-load` insists on before it touches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineLayout {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// RAM blocks, largest first.
    pub ram: Vec<RamBlockInfo>,
    /// The epoch the in-place RAM files were tagged with at save time (empty: none); at
    /// load time, the epoch the RAM files carry now (see `vmm/epoch.rs`).
    pub epoch: String,
}

/// Most RAM blocks a `cpr-machine` section may list.
const MAX_BLOCKS: usize = 64;
/// Longest backing path a `cpr-machine` section may hold.
const MAX_PATH: usize = 4096;

impl VmState for MachineLayout {
    const NAME: &'static str = "cpr-machine";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<()> {
        w.u32("vcpus", self.vcpus);
        w.u32(
            "nr_blocks",
            crate::machine::persist::count_u32(self.ram.len()),
        );
        for b in &self.ram {
            w.array("idstr", b.idstr.as_bytes())?;
            w.u64("size", b.size);
            w.bool("shared", b.shared);
            w.array("backing", b.backing.as_bytes())?;
            w.bool("copied", b.copied);
        }
        w.array("epoch", self.epoch.as_bytes())
    }

    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        let vcpus = r.u32("vcpus")?;
        let nr = usize::try_from(r.u32("nr_blocks")?).unwrap_or(usize::MAX);
        if nr > MAX_BLOCKS {
            return Err(r.invalid(format!("{nr} RAM blocks (at most {MAX_BLOCKS})")));
        }
        let text = |r: &mut FieldReader<'_>, name, max| -> cpr_savevm::Result<String> {
            let bytes = r.array::<u8>(name, max)?;
            String::from_utf8(bytes).map_err(|_| r.invalid(format!("{name} is not UTF-8")))
        };
        let mut ram = Vec::with_capacity(nr);
        for _ in 0..nr {
            ram.push(RamBlockInfo {
                idstr: text(r, "idstr", 256)?,
                size: r.u64("size")?,
                shared: r.bool("shared")?,
                backing: text(r, "backing", MAX_PATH)?,
                copied: r.bool("copied")?,
            });
        }
        let epoch = text(r, "epoch", 256)?;
        Ok(MachineLayout { vcpus, ram, epoch })
    }

    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        Ok(())
    }
}

impl MachineLayout {
    /// Why a checkpoint of layout `saved` cannot be loaded into this machine, if it cannot.
    pub fn mismatch(&self, saved: &MachineLayout) -> Option<String> {
        if saved.vcpus != self.vcpus {
            return Some(format!(
                "the checkpoint has {} vCPUs, this VM has {}",
                saved.vcpus, self.vcpus
            ));
        }
        for b in &saved.ram {
            let Some(local) = self.ram.iter().find(|l| l.idstr == b.idstr) else {
                return Some(format!(
                    "the checkpoint has RAM block {}, this VM does not",
                    b.idstr
                ));
            };
            if local.size != b.size {
                return Some(format!(
                    "RAM block {}: the checkpoint has {} bytes, this VM {}",
                    b.idstr, b.size, local.size
                ));
            }
            // RAM that travels in the stream may land in any backing; RAM left in place
            // must be found where it was left.
            if !b.copied && (local.backing != b.backing || local.shared != b.shared) {
                return Some(format!(
                    "RAM block {}: the checkpoint's RAM is in {} (shared={}), this VM's in {} (shared={})",
                    b.idstr, b.backing, b.shared, local.backing, local.shared
                ));
            }
        }
        // RAM left in place must be the RAM this checkpoint left (vmm/epoch.rs).
        if let Some(b) = saved.ram.iter().find(|b| !b.copied)
            && !saved.epoch.is_empty()
            && self.epoch != saved.epoch
        {
            return Some(format!(
                "the RAM in {} is not the RAM this checkpoint left (checkpoint epoch {}, RAM {}): the guest ran on, or another VM used the file, after the checkpoint was taken",
                b.backing,
                saved.epoch,
                if self.epoch.is_empty() {
                    "untagged"
                } else {
                    self.epoch.as_str()
                }
            ));
        }
        if let Some(extra) = self
            .ram
            .iter()
            .find(|l| !saved.ram.iter().any(|b| b.idstr == l.idstr))
        {
            return Some(format!(
                "this VM has RAM block {}, the checkpoint does not",
                extra.idstr
            ));
        }
        None
    }
}

/// The `cpr-machine` handler: saves this machine's layout and, when parsing, refuses a
/// checkpoint taken on a machine of another shape (before anything is applied).
struct LayoutHandler {
    /// This machine's layout; `None` to accept any (inspecting a file without a machine).
    local: Option<MachineLayout>,
}

impl SectionHandler for LayoutHandler {
    fn vmsd_name(&self) -> &'static str {
        MachineLayout::NAME
    }

    fn version_id(&self) -> u32 {
        MachineLayout::VERSION_ID
    }

    fn minimum_version_id(&self) -> u32 {
        MachineLayout::MINIMUM_VERSION_ID
    }

    fn save(&mut self, w: &mut FieldWriter<'_>) -> cpr_savevm::Result<Saved> {
        match &self.local {
            Some(local) => local.clone().save(w)?,
            None => {
                return Err(cpr_savevm::Error::InvalidState {
                    vmsd: MachineLayout::NAME.to_owned(),
                    reason: "no machine layout to save".to_owned(),
                });
            }
        }
        Ok(Saved::Written)
    }

    fn parse(&self, r: &mut FieldReader<'_>, version_id: u32) -> cpr_savevm::Result<Staged> {
        let saved = MachineLayout::load(r, version_id)?;
        if let Some(why) = self.local.as_ref().and_then(|l| l.mismatch(&saved)) {
            return Err(r.invalid(format!("machine mismatch: {why}")));
        }
        if saved.vcpus == 0 || u64::from(saved.vcpus) > MAX_VCPUS {
            return Err(r.invalid(format!(
                "{} vCPUs (a machine has 1 to {MAX_VCPUS})",
                saved.vcpus
            )));
        }
        Ok(Box::new(saved))
    }

    fn apply(&mut self, _staged: Staged) -> cpr_savevm::Result<()> {
        Ok(())
    }
}

/// The run states a checkpoint is taken in: `cpr-save` and `migrate` refuse to save a VM in
/// any other (see `vmm/cpr_ops.rs` and `vmm/migration.rs`), so the loader refuses any other.
pub const SAVED_RUN_STATES: [RunState; 3] =
    [RunState::Running, RunState::Paused, RunState::Suspended];

/// Why a parsed checkpoint could not have been written by the saver: the section
/// (idstr, instance) and the reason.
type Refusal = (&'static str, u32, String);

/// The saver's guarantees about a checkpoint's values (see the [module docs](self)), checked
/// on a whole parsed stream of a machine with `vcpus` vCPUs. Every section is present and
/// parsed (the registry requires them all), and the `cpr-machine` section already matches
/// this machine.
pub fn check_saveable(loaded: &LoadedState, vcpus: u32) -> cpr_savevm::Result<()> {
    saveable(loaded, vcpus).map_err(|(idstr, instance_id, reason)| {
        let section_id = loaded
            .sections()
            .find(|s| s.idstr == idstr && s.instance_id == instance_id)
            .map_or(0, |s| s.section_id);
        cpr_savevm::Error::LoadSection {
            idstr: idstr.to_owned(),
            instance_id,
            section_id,
            source: Box::new(cpr_savevm::Error::InvalidState {
                vmsd: idstr.to_owned(),
                reason,
            }),
        }
    })
}

fn saveable(loaded: &LoadedState, vcpus: u32) -> Result<(), Refusal> {
    fn get<'a, T: 'static>(
        loaded: &'a LoadedState,
        idstr: &'static str,
        instance: u32,
    ) -> Result<&'a T, Refusal> {
        loaded
            .staged::<T>(idstr, instance)
            .ok_or_else(|| (idstr, instance, "the section was not parsed".to_owned()))
    }

    // globalstate: cpr-save and migrate save only a VM that can be restored.
    let GlobalStateSection(runstate) = *get(loaded, GlobalStateSection::NAME, 0)?;
    if !SAVED_RUN_STATES.contains(&runstate) {
        return Err((
            GlobalStateSection::NAME,
            0,
            format!(
                "run state {runstate}: a checkpoint is only ever taken of a running, paused or suspended VM"
            ),
        ));
    }

    // cpr-machine: the machine's own block list, copied exactly when the ram section sends
    // the block's pages, an epoch only for RAM left in place.
    let layout: &MachineLayout = get(loaded, MachineLayout::NAME, 0)?;
    let refuse = |reason: String| Err((MachineLayout::NAME, 0, reason));
    for (i, b) in layout.ram.iter().enumerate() {
        if layout.ram[..i].iter().any(|o| o.idstr == b.idstr) {
            return refuse(format!("RAM block {} is listed twice", b.idstr));
        }
        let sent = loaded.ram().map(|r| {
            r.blocks
                .iter()
                .find(|s| s.idstr == b.idstr)
                .is_some_and(|s| !s.ignored)
        });
        match (b.copied, sent) {
            (true, None) => {
                return refuse(format!(
                    "RAM block {} is copied, but the stream has no ram section",
                    b.idstr
                ));
            }
            (true, Some(false)) => {
                return refuse(format!(
                    "RAM block {} is copied, but the ram section keeps it in place",
                    b.idstr
                ));
            }
            (false, Some(true)) => {
                return refuse(format!(
                    "RAM block {} is in place, but the ram section copies it",
                    b.idstr
                ));
            }
            _ => {}
        }
    }
    if !layout.epoch.is_empty() {
        if layout.epoch == crate::vmm::epoch::RUNNING {
            return refuse(format!(
                "epoch {}: that is the tag of RAM a guest runs on, not of a checkpoint",
                layout.epoch
            ));
        }
        if layout.ram.iter().all(|b| b.copied) {
            return refuse(format!(
                "epoch {}, but no RAM is left in place to carry it",
                layout.epoch
            ));
        }
    }

    // cpu: capture_vcpu always reads KVM's MSR index list and CPUID table.
    for i in 0..vcpus {
        let v: &VcpuState = get(loaded, VcpuState::NAME, i)?;
        let refuse = |reason: &str| Err((VcpuState::NAME, i, reason.to_owned()));
        if v.msrs.is_empty() {
            return refuse("no MSRs: cpr-save always captures KVM's MSR list");
        }
        if v.cpuid.is_empty() {
            return refuse("no CPUID entries: cpr-save always captures the vCPU's CPUID table");
        }
        for (j, m) in v.msrs.iter().enumerate() {
            if v.msrs[..j].iter().any(|o| o.index == m.index) {
                return Err((
                    VcpuState::NAME,
                    i,
                    format!("MSR {:#x} is listed twice", m.index),
                ));
            }
        }
    }

    // i8259, ioapic: restore_vm sets each irqchip by the chip id it carries.
    for (idstr, instance, chip_id, what) in [
        ("i8259", 0, KVM_IRQCHIP_PIC_MASTER, "the master PIC"),
        ("i8259", 1, KVM_IRQCHIP_PIC_SLAVE, "the slave PIC"),
        ("ioapic", 0, KVM_IRQCHIP_IOAPIC, "the IOAPIC"),
    ] {
        let found = if idstr == "ioapic" {
            get::<IoapicSection>(loaded, idstr, instance)?.0.chip_id
        } else {
            get::<PicSection>(loaded, idstr, instance)?.0.chip_id
        };
        if found != chip_id {
            return Err((
                idstr,
                instance,
                format!("chip id {found}, but instance {instance} is {what} (chip id {chip_id})"),
            ));
        }
    }

    // cpr-testdev: the device keeps one report per vCPU.
    let t: &TestDevState = get(loaded, TestDevState::NAME, 0)?;
    let n = vcpus as usize;
    if t.vcpus.len() != n {
        return Err((
            TestDevState::NAME,
            0,
            format!("reports for {} vCPUs, the machine has {n}", t.vcpus.len()),
        ));
    }
    if let Some(f) = t.fatal.filter(|f| f.vcpu >= n) {
        return Err((
            TestDevState::NAME,
            0,
            format!("a fatal report from vCPU {}, the machine has {n}", f.vcpu),
        ));
    }
    Ok(())
}

/// The vCPU count of a stream parsed without a machine: its `cpr-machine` section's, with
/// exactly one `cpu` section for each of those vCPUs (the check a machine of that shape
/// makes by requiring them, and by knowing no others).
fn stream_vcpus(loaded: &LoadedState) -> cpr_savevm::Result<u32> {
    let refuse = |idstr: &str, instance_id, reason: String| cpr_savevm::Error::LoadSection {
        idstr: idstr.to_owned(),
        instance_id,
        section_id: loaded
            .sections()
            .find(|s| s.idstr == idstr && s.instance_id == instance_id)
            .map_or(0, |s| s.section_id),
        source: Box::new(cpr_savevm::Error::InvalidState {
            vmsd: idstr.to_owned(),
            reason,
        }),
    };
    let vcpus = loaded
        .staged::<MachineLayout>(MachineLayout::NAME, 0)
        .map(|l| l.vcpus)
        .ok_or_else(|| refuse(MachineLayout::NAME, 0, "the section was not parsed".into()))?;
    if let Some(extra) = loaded
        .sections()
        .find(|s| s.idstr == VcpuState::NAME && s.instance_id >= vcpus)
    {
        return Err(refuse(
            VcpuState::NAME,
            extra.instance_id,
            format!(
                "a section for vCPU {}, but the checkpoint's machine has {vcpus}",
                extra.instance_id
            ),
        ));
    }
    Ok(vcpus)
}

/// A checkpoint's registry, in the order of the table above (`cpr-machine` first). With
/// `values` (the run state and a captured machine) it saves them; without, it parses a
/// checkpoint for a machine of shape `layout`: every section required, each parsed into a
/// value that [`parse`] takes out, and [`check_saveable`] run on the whole stream. Without
/// a `layout` (inspecting a file, no machine), it takes the checkpoint's own `cpr-machine`
/// section for the shape: any number of vCPU sections is parsed, and the stream check
/// requires exactly those of the vCPUs that section lists.
fn registry(
    layout: Option<MachineLayout>,
    values: Option<(RunState, MachineState)>,
) -> cpr_savevm::Result<Registry> {
    fn required(idstr: &str, instance: u32) -> Registration {
        Registration::new(idstr, InstanceId::Id(instance), OnLoad::Required)
    }
    /// Registers a section that saves `value`, or (`None`) that is parsed into a value.
    fn add<S: VmState + Send + 'static>(
        r: &mut Registry,
        reg: Registration,
        value: Option<S>,
    ) -> cpr_savevm::Result<()> {
        let section = value.map_or_else(ValueSection::empty, ValueSection::new);
        r.register(reg, Box::new(section)).map(drop)
    }

    let (runstate, state) = values.unzip();
    // Known here: the vCPU count of the machine saved or loaded into.
    let known = state
        .as_ref()
        .map(|s| crate::machine::persist::count_u32(s.vcpus.len()))
        .or(layout.as_ref().map(|l| l.vcpus));
    let (vcpu_states, vm, serial, pm, testdev) = match state {
        Some(MachineState {
            vcpus,
            vm,
            serial,
            pm,
            testdev,
        }) => (vcpus, Some(vm), Some(serial), Some(pm), Some(testdev)),
        None => (Vec::new(), None, None, None, None),
    };
    let mut vcpu_states = vcpu_states.into_iter();
    let vm = vm.as_ref();

    let mut r = Registry::new();
    r.set_stream_check(move |loaded| {
        let vcpus = match known {
            Some(v) => v,
            None => stream_vcpus(loaded)?,
        };
        check_saveable(loaded, vcpus)
    });
    r.register(
        required(MachineLayout::NAME, 0).priority(100),
        Box::new(LayoutHandler { local: layout }),
    )?;
    add(
        &mut r,
        required(GlobalStateSection::NAME, 0).priority(90),
        runstate.map(GlobalStateSection),
    )?;
    match known {
        Some(vcpus) => {
            for i in 0..vcpus {
                add(&mut r, required(VcpuState::NAME, i), vcpu_states.next())?;
            }
        }
        None => {
            for i in 0..u32::try_from(MAX_VCPUS).unwrap_or(u32::MAX) {
                let reg = Registration::new(VcpuState::NAME, InstanceId::Id(i), OnLoad::Optional);
                add::<VcpuState>(&mut r, reg, None)?;
            }
        }
    }
    add(
        &mut r,
        required(PicSection::NAME, 0),
        vm.map(|vm| PicSection(vm.pic_master)),
    )?;
    add(
        &mut r,
        required(PicSection::NAME, 1),
        vm.map(|vm| PicSection(vm.pic_slave)),
    )?;
    add(
        &mut r,
        required(IoapicSection::NAME, 0),
        vm.map(|vm| IoapicSection(vm.ioapic)),
    )?;
    add(
        &mut r,
        required(PitSection::NAME, 0),
        vm.map(|vm| PitSection(vm.pit)),
    )?;
    add(
        &mut r,
        required(KvmClockSection::NAME, 0),
        vm.map(|vm| KvmClockSection(vm.clock)),
    )?;
    add(
        &mut r,
        required(SerialSection::NAME, 0),
        serial.map(SerialSection),
    )?;
    add(&mut r, required(PmState::NAME, 0), pm)?;
    add(&mut r, required(TestDevState::NAME, 0), testdev)?;
    Ok(r)
}

/// The registry a `cpr-save` writes: `layout`, the run state, and a captured machine.
pub fn save_registry(
    layout: MachineLayout,
    runstate: RunState,
    state: MachineState,
) -> cpr_savevm::Result<Registry> {
    registry(Some(layout), Some((runstate, state)))
}

/// A checkpoint read and checked completely: what `cpr-load` builds the machine from.
/// Nothing has been applied to anything.
#[derive(Debug, Clone)]
pub struct ParsedCheckpoint {
    /// The machine layout the checkpoint records (its `cpr-machine` section).
    pub layout: MachineLayout,
    /// The run state the checkpoint was taken in (its `globalstate` section).
    pub runstate: RunState,
    /// The machine's state (every other section).
    pub state: MachineState,
}

/// Reads and checks the whole checkpoint for a machine of shape `layout`. `open` gives the
/// stream from its start (called again for a second pass when RAM is copied in). With
/// `ram`, a `ram` section is expected and copied RAM is written into it, but only after the
/// whole stream has been checked; without, the stream must be a device-state stream.
pub fn parse(
    open: impl FnMut() -> cpr_savevm::Result<cpr_migration_file::QemuFile>,
    layout: MachineLayout,
    ram: Option<&mut dyn cpr_savevm::RamBlocks>,
) -> cpr_savevm::Result<ParsedCheckpoint> {
    let vcpus = layout.vcpus;
    let registry = registry(Some(layout), None)?;
    let mut loaded = cpr_savevm::load_state(open, &registry, ram)?;
    let vcpus = (0..vcpus)
        .map(|i| loaded.take::<VcpuState>(VcpuState::NAME, i))
        .collect::<cpr_savevm::Result<Vec<_>>>()?;
    let vm = KvmVmState {
        pic_master: loaded.take::<PicSection>(PicSection::NAME, 0)?.0,
        pic_slave: loaded.take::<PicSection>(PicSection::NAME, 1)?.0,
        ioapic: loaded.take::<IoapicSection>(IoapicSection::NAME, 0)?.0,
        pit: loaded.take::<PitSection>(PitSection::NAME, 0)?.0,
        clock: loaded.take::<KvmClockSection>(KvmClockSection::NAME, 0)?.0,
    };
    let state = MachineState {
        vcpus,
        vm,
        serial: loaded.take::<SerialSection>(SerialSection::NAME, 0)?.0,
        pm: loaded.take(PmState::NAME, 0)?,
        testdev: loaded.take(TestDevState::NAME, 0)?,
    };
    Ok(ParsedCheckpoint {
        layout: loaded.take(MachineLayout::NAME, 0)?,
        runstate: loaded
            .take::<GlobalStateSection>(GlobalStateSection::NAME, 0)?
            .0,
        state,
    })
}

mod inspect;
mod source;

pub use inspect::{CheckpointKind, Inspection, inspect, stream_ram_blocks};
pub use source::StreamSource;

#[cfg(test)]
mod saveable_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(vcpus: u32, size: u64, backing: &str, epoch: &str) -> MachineLayout {
        MachineLayout {
            vcpus,
            ram: vec![RamBlockInfo {
                idstr: "pc.ram".into(),
                size,
                shared: true,
                backing: backing.into(),
                copied: false,
            }],
            epoch: epoch.into(),
        }
    }

    #[test]
    fn layout_and_globalstate_round_trip() {
        let mut l = layout(2, 1 << 30, "/dev/shm/vm0.ram", "e1");
        let (payload, _) = cpr_savevm::encode_vmstate(&mut l)
            .expect("encode")
            .expect("needed");
        let back: MachineLayout = cpr_savevm::decode_vmstate(payload, 1).expect("decode");
        assert_eq!(back, l);
        let mut g = GlobalStateSection(RunState::Suspended);
        let (payload, _) = cpr_savevm::encode_vmstate(&mut g)
            .expect("encode")
            .expect("needed");
        assert_eq!(payload.len(), 4 + 100, "QEMU 6.2 globalstate layout");
        let back: GlobalStateSection = cpr_savevm::decode_vmstate(payload, 1).expect("decode");
        assert_eq!(back, g);
    }

    #[test]
    fn machine_mismatches_are_explained() {
        let here = layout(1, 1 << 30, "/dev/shm/a.ram", "e1");
        assert_eq!(
            here.mismatch(&layout(1, 1 << 30, "/dev/shm/a.ram", "e1")),
            None
        );
        let why = |saved: MachineLayout| here.mismatch(&saved).unwrap_or_default();
        assert_eq!(
            why(layout(2, 1 << 30, "/dev/shm/a.ram", "e1")),
            "the checkpoint has 2 vCPUs, this VM has 1"
        );
        assert!(why(layout(1, 1 << 29, "/dev/shm/a.ram", "e1")).contains("536870912 bytes"));
        assert!(why(layout(1, 1 << 30, "/dev/shm/b.ram", "e1")).contains("/dev/shm/b.ram"));
        assert!(
            why(layout(1, 1 << 30, "/dev/shm/a.ram", "e0"))
                .contains("is not the RAM this checkpoint left")
        );
        // A checkpoint without an epoch (file system without xattrs) is not refused for it.
        assert_eq!(
            here.mismatch(&layout(1, 1 << 30, "/dev/shm/a.ram", "")),
            None
        );
        // Copied RAM may land anywhere, whatever its epoch.
        let mut copied = layout(1, 1 << 30, "anonymous", "e0");
        copied.ram[0].copied = true;
        assert_eq!(here.mismatch(&copied), None);
    }
}
