//! How a VMM plugs its components in, with the layout the `cpr` crate
//! registers for one vCPU: "cpu" (instance = vCPU index), PIC, IOAPIC,
//! PIT, kvmclock, serial, a PM register, a test device, `globalstate` and
//! a RAM-layout section. The whole state file must stay under 16 KiB.

use std::sync::{Arc, Mutex};

use cpr_migration_file::QemuFile;
use cpr_savevm::*;

/// Per-vCPU state, as KVM hands it out (sizes of the kvm-bindings structs).
#[derive(Debug, Clone, PartialEq)]
struct CpuState {
    regs: [u64; 18],
    sregs: Vec<u8>,
    xsave: Vec<u8>,
    xcrs: Vec<u64>,
    debugregs: [u64; 6],
    lapic: Vec<u8>,
    msr_index: Vec<u32>,
    msr_value: Vec<u64>,
    mp_state: u32,
    events: Vec<u8>,
    tsc_khz: u32,
    /// function, index, flags, eax, ebx, ecx, edx per entry.
    cpuid: Vec<u32>,
}

const SREGS: usize = 312;
const XSAVE: usize = 4096;
const LAPIC: usize = 1024;
const EVENTS: usize = 64;
const MAX_MSRS: usize = 256;
const MAX_CPUID_WORDS: usize = 7 * 256;

impl CpuState {
    fn sample(seed: u8) -> Self {
        CpuState {
            regs: [u64::from(seed); 18],
            sregs: vec![seed; SREGS],
            xsave: vec![seed ^ 0x55; XSAVE],
            xcrs: vec![0, 7],
            debugregs: [0, 0, 0, 0, 0xffff_0ff0, 0x400],
            lapic: vec![seed ^ 0xaa; LAPIC],
            msr_index: (0..40).map(|i| 0xc000_0080 + i).collect(),
            msr_value: (0..40).map(|i| u64::from(seed) << 32 | i).collect(),
            mp_state: 0,
            events: vec![0; EVENTS],
            tsc_khz: 2_400_000,
            cpuid: (0..7 * 60).map(|i| i * u32::from(seed)).collect(),
        }
    }
}

impl VmState for CpuState {
    const NAME: &'static str = "cpu";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.array_fixed("regs", &self.regs)?;
        w.buffer("sregs", &self.sregs);
        w.buffer("xsave", &self.xsave);
        w.array("xcrs", &self.xcrs)?;
        w.array_fixed("debugregs", &self.debugregs)?;
        w.buffer("lapic", &self.lapic);
        w.array("msr_index", &self.msr_index)?;
        w.array("msr_value", &self.msr_value)?;
        w.u32("mp_state", self.mp_state);
        w.buffer("events", &self.events);
        w.u32("tsc_khz", self.tsc_khz);
        w.array("cpuid", &self.cpuid)
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        let regs = r.array_fixed::<u64>("regs", 18)?;
        let mut s = CpuState {
            regs: regs.try_into().map_err(|_| r.invalid("regs"))?,
            sregs: vec![0; SREGS],
            xsave: vec![0; XSAVE],
            xcrs: Vec::new(),
            debugregs: [0; 6],
            lapic: vec![0; LAPIC],
            msr_index: Vec::new(),
            msr_value: Vec::new(),
            mp_state: 0,
            events: vec![0; EVENTS],
            tsc_khz: 0,
            cpuid: Vec::new(),
        };
        r.buffer_into("sregs", &mut s.sregs)?;
        r.buffer_into("xsave", &mut s.xsave)?;
        s.xcrs = r.array("xcrs", 16)?;
        let dr = r.array_fixed::<u64>("debugregs", 6)?;
        s.debugregs = dr.try_into().map_err(|_| r.invalid("debugregs"))?;
        r.buffer_into("lapic", &mut s.lapic)?;
        s.msr_index = r.array("msr_index", MAX_MSRS)?;
        s.msr_value = r.array("msr_value", MAX_MSRS)?;
        s.mp_state = r.u32("mp_state")?;
        r.buffer_into("events", &mut s.events)?;
        s.tsc_khz = r.u32("tsc_khz")?;
        s.cpuid = r.array("cpuid", MAX_CPUID_WORDS)?;
        Ok(s)
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        if self.msr_index.len() != self.msr_value.len() || !self.cpuid.len().is_multiple_of(7) {
            return Err(Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: "inconsistent MSR or CPUID lists".into(),
            });
        }
        Ok(())
    }
}

/// Stand-in for a vCPU (the real one calls KVM_GET_*/KVM_SET_*).
struct Vcpu {
    state: CpuState,
}

impl Persist for Vcpu {
    type State = CpuState;
    fn save_state(&mut self) -> std::result::Result<CpuState, BoxError> {
        Ok(self.state.clone())
    }
    fn restore_state(&mut self, s: CpuState) -> std::result::Result<(), BoxError> {
        self.state = s;
        Ok(())
    }
}

/// A VM-level or device state made of fixed buffers and scalars.
macro_rules! blob_state {
    ($t:ident, $name:literal, $($field:ident: $len:literal),*) => {
        #[derive(Debug, Clone, PartialEq)]
        struct $t { $($field: Vec<u8>),* }
        impl $t {
            fn sample(b: u8) -> Self { $t { $($field: vec![b; $len]),* } }
        }
        impl VmState for $t {
            const NAME: &'static str = $name;
            const VERSION_ID: u32 = 1;
            const MINIMUM_VERSION_ID: u32 = 1;
            fn needed(&self) -> bool { true }
            fn pre_save(&mut self) -> Result<()> { Ok(()) }
            fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
                $(w.buffer(stringify!($field), &self.$field);)*
                Ok(())
            }
            fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
                Ok($t { $($field: { let mut b = vec![0; $len]; r.buffer_into(stringify!($field), &mut b)?; b }),* })
            }
            fn post_load(&mut self, _v: u32) -> Result<()> { Ok(()) }
        }
    };
}

blob_state!(Pic, "kvm-i8259", master: 32, slave: 32);
blob_state!(Ioapic, "kvm-ioapic", state: 216);
blob_state!(Pit, "kvm-pit", state: 112);
blob_state!(Kvmclock, "kvmclock", clock: 48);
blob_state!(Serial, "serial", regs: 12);
blob_state!(PmReg, "pm-reg", regs: 2);
blob_state!(TestDev, "test-dev", regs: 4);

/// QEMU's `globalstate`: be32 size, then a fixed 100-byte runstate name.
#[derive(Debug, Clone, PartialEq)]
struct GlobalState {
    runstate: String,
}

impl VmState for GlobalState {
    const NAME: &'static str = "globalstate";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        let mut buf = [0u8; 100];
        let name = self.runstate.as_bytes();
        buf.get_mut(..name.len())
            .ok_or_else(|| Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: "runstate name too long".into(),
            })?
            .copy_from_slice(name);
        w.u32("size", u32::try_from(name.len() + 1).unwrap_or(u32::MAX));
        w.buffer("runstate", &buf);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
        let _size = r.u32("size")?;
        let buf = r.buffer::<100>("runstate")?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let runstate = std::str::from_utf8(&buf[..end])
            .map_err(|_| r.invalid("runstate is not UTF-8"))?
            .to_owned();
        Ok(GlobalState { runstate })
    }
    fn post_load(&mut self, _v: u32) -> Result<()> {
        match self.runstate.as_str() {
            "running" | "paused" | "suspended" => Ok(()),
            other => Err(Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: format!("unknown runstate '{other}'"),
            }),
        }
    }
}

/// RAM layout: (guest address, size) pairs.
#[derive(Debug, Clone, PartialEq)]
struct RamLayout {
    regions: Vec<u64>,
}

impl VmState for RamLayout {
    const NAME: &'static str = "ram-layout";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.array("regions", &self.regions)
    }
    fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
        Ok(RamLayout {
            regions: r.array("regions", 64)?,
        })
    }
    fn post_load(&mut self, _v: u32) -> Result<()> {
        Ok(())
    }
}

/// Plain-data states wrapped for `Persist` without a device type.
type Cell<S> = SharedState<S>;

struct Vmm {
    registry: Registry,
    vcpu: Arc<Mutex<Vcpu>>,
    global: Arc<Mutex<GlobalState>>,
    serial: Arc<Mutex<Serial>>,
}

fn vmm(seed: u8, runstate: &str) -> Vmm {
    let mut registry = Registry::new();
    let req = |name: &str, inst| Registration::new(name, inst, OnLoad::Required);
    let vcpu = Arc::new(Mutex::new(Vcpu {
        state: CpuState::sample(seed),
    }));
    let global = Arc::new(Mutex::new(GlobalState {
        runstate: runstate.into(),
    }));
    let serial = Arc::new(Mutex::new(Serial::sample(seed)));
    registry
        .register_persist(
            req("ram-layout", InstanceId::Id(0)).priority(10),
            Cell::new(Arc::new(Mutex::new(RamLayout {
                regions: vec![0, 0xa_0000, 0x10_0000, 0x7ff0_0000],
            }))),
        )
        .unwrap();
    registry
        .register_persist(req("cpu", InstanceId::Id(0)), Arc::clone(&vcpu))
        .unwrap();
    macro_rules! reg {
        ($t:ident, $name:literal) => {
            registry
                .register_persist(
                    req($name, InstanceId::Any),
                    Cell::new(Arc::new(Mutex::new($t::sample(seed)))),
                )
                .unwrap()
        };
    }
    reg!(Pic, "kvm-i8259");
    reg!(Ioapic, "kvm-ioapic");
    reg!(Pit, "kvm-pit");
    reg!(Kvmclock, "kvmclock");
    registry
        .register_persist(
            req("serial", InstanceId::Any),
            Cell::new(Arc::clone(&serial)),
        )
        .unwrap();
    reg!(PmReg, "pm-reg");
    reg!(TestDev, "test-dev");
    registry
        .register_persist(
            req("globalstate", InstanceId::Id(0)),
            Cell::new(Arc::clone(&global)),
        )
        .unwrap();
    Vmm {
        registry,
        vcpu,
        global,
        serial,
    }
}

fn save(v: &mut Vmm) -> Vec<u8> {
    let mut f = QemuFile::memory_writer(CHANNEL_CPR_SAVE);
    save_device_state(&mut f, &mut v.registry).unwrap();
    f.into_bytes().unwrap()
}

#[test]
fn one_vcpu_state_file_stays_under_16_kib() {
    let bytes = save(&mut vmm(3, "running"));
    eprintln!("1-vCPU state file: {} bytes", bytes.len());
    assert!(
        bytes.len() < 16 * 1024,
        "state file is {} bytes",
        bytes.len()
    );
}

#[test]
fn vmm_layout_round_trips_and_globalstate_is_readable_before_apply() {
    let bytes = save(&mut vmm(3, "suspended"));
    let mut target = vmm(9, "running");
    let mut f = QemuFile::from_bytes(bytes, CHANNEL_CPR_LOAD);
    let loaded = load_device_state(&mut f, &target.registry).unwrap();
    // The VMM can decide on the runstate before committing anything.
    let gs = loaded.staged::<GlobalState>("globalstate", 0).unwrap();
    assert_eq!(gs.runstate, "suspended");
    assert_eq!(target.global.lock().unwrap().runstate, "running");
    // RAM layout (priority 10) comes first in the stream.
    assert_eq!(loaded.sections().next().unwrap().idstr, "ram-layout");
    loaded.apply(&mut target.registry).unwrap();
    assert_eq!(target.vcpu.lock().unwrap().state, CpuState::sample(3));
    assert_eq!(*target.serial.lock().unwrap(), Serial::sample(3));
    assert_eq!(target.global.lock().unwrap().runstate, "suspended");
}

#[test]
fn invalid_globalstate_fails_at_parse_time_and_nothing_is_applied() {
    let bytes = save(&mut vmm(3, "bogus"));
    let target = vmm(9, "running");
    let mut f = QemuFile::from_bytes(bytes, CHANNEL_CPR_LOAD);
    let e = load_device_state(&mut f, &target.registry).unwrap_err();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    assert_eq!(
        msg,
        "error while loading state for instance 0x0 of device 'globalstate': \
         globalstate: unknown runstate 'bogus'"
    );
    assert_eq!(target.vcpu.lock().unwrap().state, CpuState::sample(9));
}

#[test]
fn missing_vcpu_section_is_fatal() {
    let mut src = vmm(3, "running");
    src.registry.unregister("cpu", 0).unwrap();
    let bytes = save(&mut src);
    let target = vmm(9, "running");
    let mut f = QemuFile::from_bytes(bytes, CHANNEL_CPR_LOAD);
    assert!(matches!(
        load_device_state(&mut f, &target.registry),
        Err(Error::MissingSection { instance_id: 0, .. })
    ));
}
