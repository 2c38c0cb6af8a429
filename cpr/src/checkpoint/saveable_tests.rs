//! The loader accepts exactly what the saver can write: one test per hole that a crafted
//! file (checksum recomputed) slipped through, and a property test over mutated valid
//! checkpoints. No KVM needed: the machine state is synthetic, the RAM a `Vec`.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};
use proptest::prelude::*;

use super::*;
use crate::machine::SerialDeviceState;
use crate::machine::devices::testdev::{GuestFatal, VcpuProgress};
use crate::machine::vcpu_state::{MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, XSAVE_WORDS};
use cpr_migration_file::QemuFile;
use cpr_savevm::{BoxError, RamBlockDesc, RamBlocks};

const PAGE: u64 = 4096;
const RAM_PAGES: u64 = 16;
const BACKING: &str = "/dev/shm/cpr-test.ram";
const EPOCH: &str = "18c0ffee-2a-0";

fn vcpu(i: u32) -> VcpuState {
    let mut v = VcpuState {
        cpuid: (0..4)
            .map(|f| kvm_cpuid_entry2 {
                function: f,
                eax: 0x10 + f,
                ebx: i << 24,
                ..Default::default()
            })
            .collect(),
        msrs: [MSR_IA32_TSC, 0x174, 0xc000_0080, MSR_IA32_TSC_DEADLINE]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                data: u64::from(index) * 3 + u64::from(i),
                ..Default::default()
            })
            .collect(),
        regs: kvm_regs {
            rip: 0x20_0000 + u64::from(i),
            rflags: 0x202,
            ..Default::default()
        },
        sregs: kvm_sregs {
            cr0: 0x8000_0011,
            apic_base: 0xfee0_0900,
            ..Default::default()
        },
        xsave: (0..XSAVE_WORDS)
            .map(|w| u32::try_from(w).unwrap_or(0))
            .collect(),
        xcrs: kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        },
        debugregs: kvm_debugregs {
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            ..Default::default()
        },
        lapic: kvm_lapic_state::default(),
        mp_state: kvm_mp_state { mp_state: 0 },
        vcpu_events: kvm_vcpu_events::default(),
        tsc_khz: 2_596_152,
    };
    v.xcrs.xcrs[0].value = 7;
    v.lapic.regs[0x20] = 1;
    v
}

fn chip(chip_id: u32) -> kvm_irqchip {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    // Something in the chip's state, so that a swapped chip is visible.
    zerocopy::IntoBytes::as_mut_bytes(&mut c)[8 + usize::try_from(chip_id).unwrap_or(0)] = 0x5a;
    c
}

fn machine(vcpus: u32) -> MachineState {
    let mut testdev = TestDevState {
        vcpus: vec![VcpuProgress::default(); vcpus as usize],
        staged: vec![[0; 10]; vcpus as usize],
        fatal: None,
    };
    testdev.vcpus[0].progress = 42;
    MachineState {
        vcpus: (0..vcpus).map(vcpu).collect(),
        vm: KvmVmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
            ioapic: chip(KVM_IRQCHIP_IOAPIC),
            pit: kvm_bindings::kvm_pit_state2::default(),
            clock: kvm_bindings::kvm_clock_data {
                clock: 123_456,
                ..Default::default()
            },
        },
        serial: SerialDeviceState {
            scratch: 0x5a,
            in_buffer: b"hi".to_vec(),
            ..SerialDeviceState::default()
        },
        pm: PmState {
            pm1_cnt: 1,
            suspended: false,
        },
        testdev,
    }
}

/// This machine's layout, as `cpr-load` passes it (`copied` false, the RAM file's epoch).
fn local(vcpus: u32) -> MachineLayout {
    MachineLayout {
        vcpus,
        ram: vec![RamBlockInfo {
            idstr: "pc.ram".into(),
            size: RAM_PAGES * PAGE,
            shared: true,
            backing: BACKING.into(),
            copied: false,
        }],
        epoch: EPOCH.into(),
    }
}

/// Guest RAM in a `Vec`: one block, kept in place (`ignored`) or copied.
struct TestRam {
    ignored: bool,
    mem: Vec<u8>,
}

impl TestRam {
    fn new(ignored: bool, fill: u8) -> Self {
        TestRam {
            ignored,
            mem: vec![fill; usize::try_from(RAM_PAGES * PAGE).expect("small")],
        }
    }

    fn range(&self, off: u64, len: usize) -> Result<std::ops::Range<usize>, BoxError> {
        let start = usize::try_from(off)?;
        let end = start.checked_add(len).ok_or("overflow")?;
        if end > self.mem.len() {
            return Err("out of range".into());
        }
        Ok(start..end)
    }
}

impl RamBlocks for TestRam {
    /// x-ignore-shared is on exactly when the block stays in place.
    fn ignore_shared(&self) -> bool {
        self.ignored
    }
    fn blocks(&self) -> Vec<RamBlockDesc> {
        let len = RAM_PAGES * PAGE;
        vec![if self.ignored {
            RamBlockDesc::ignored("pc.ram", len)
        } else {
            RamBlockDesc::copied("pc.ram", len)
        }]
    }
    fn read(&self, _b: usize, off: u64, buf: &mut [u8]) -> Result<(), BoxError> {
        let r = self.range(off, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }
    fn write(&mut self, _b: usize, off: u64, data: &[u8]) -> Result<(), BoxError> {
        let r = self.range(off, data.len())?;
        self.mem[r].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, _b: usize, off: u64, len: u64) -> Result<(), BoxError> {
        let r = self.range(off, usize::try_from(len)?)?;
        self.mem[r].fill(0);
        Ok(())
    }
    fn populated(&self, _b: usize) -> Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        Ok(None)
    }
}

/// What the saver writes for `layout`, `runstate` and `state` (with `ram`: a mainline
/// stream with a `ram` section).
fn save(
    layout: MachineLayout,
    runstate: RunState,
    state: MachineState,
    ram: Option<&TestRam>,
) -> Vec<u8> {
    let mut registry = save_registry(layout, runstate, state).expect("registry");
    let mut f = QemuFile::memory_writer("cpr-save");
    cpr_savevm::save_state(&mut f, &mut registry, ram.map(|r| r as &dyn RamBlocks)).expect("save");
    f.into_bytes().expect("memory file")
}

/// What a load hands out: the run state, the machine state, the recorded layout.
type Loaded = (RunState, MachineState, MachineLayout);

/// Loads `bytes` as `load_stream` does: into a machine of layout `local`, with `ram` for a
/// stream that has a `ram` section.
fn load(
    bytes: &[u8],
    local: MachineLayout,
    ram: Option<&mut TestRam>,
) -> cpr_savevm::Result<Loaded> {
    let open = || Ok(QemuFile::from_bytes(bytes.to_vec(), "cpr-load"));
    let parsed = parse(open, local, ram.map(|r| r as &mut dyn RamBlocks))?;
    Ok((parsed.runstate, parsed.state, parsed.layout))
}

/// `err` and its sources, joined with ": ".
fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Loads a V7 (device-state) checkpoint of 1 vCPU, expecting a refusal; returns its chain.
fn refused(bytes: &[u8]) -> String {
    match load(bytes, local(1), None) {
        Ok((rs, ..)) => panic!("a checkpoint the saver could not have written loaded ({rs})"),
        Err(e) => chain(&e),
    }
}

/// A V7 checkpoint of 1 vCPU after `edit`.
fn v7_with(edit: impl FnOnce(&mut MachineLayout, &mut RunState, &mut MachineState)) -> Vec<u8> {
    let (mut layout, mut rs, mut state) = (local(1), RunState::Running, machine(1));
    edit(&mut layout, &mut rs, &mut state);
    save(layout, rs, state, None)
}

/// Recomputes the trailer's CRC-32 (every byte from the magic to the end of the vmdesc)
/// after `bytes` were edited.
fn fix_crc(bytes: &mut [u8]) {
    let body = bytes.len() - cpr_savevm::consts::TRAILER_LEN;
    let mut f = QemuFile::memory_writer("crc");
    f.put_buffer(&bytes[..body]);
    let crc = f.crc32();
    bytes[body + 4..].copy_from_slice(format!("{crc:08x}").as_bytes());
}

#[test]
fn valid_checkpoints_load() {
    let bytes = v7_with(|_, _, _| {});
    let (rs, state, layout) = load(&bytes, local(1), None).expect("loads");
    assert_eq!((rs, layout), (RunState::Running, local(1)));
    assert_eq!(state.vcpus, machine(1).vcpus);
    for rs in SAVED_RUN_STATES {
        let bytes = v7_with(|_, r, _| *r = rs);
        assert_eq!(load(&bytes, local(1), None).expect("loads").0, rs);
    }
}

#[test]
fn cpu_without_msrs_is_refused() {
    let err = refused(&v7_with(|_, _, s| s.vcpus[0].msrs.clear()));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'cpu': cpu: no MSRs: cpr-save \
         always captures KVM's MSR list"
    );
}

#[test]
fn cpu_without_cpuid_is_refused() {
    let err = refused(&v7_with(|_, _, s| s.vcpus[0].cpuid.clear()));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'cpu': cpu: no CPUID entries: \
         cpr-save always captures the vCPU's CPUID table"
    );
    // The second vCPU of two is checked too.
    let mut state = machine(2);
    state.vcpus[1].cpuid.clear();
    let bytes = save(local(2), RunState::Running, state, None);
    let err = chain(&load(&bytes, local(2), None).expect_err("refused"));
    assert!(err.starts_with("error while loading state for instance 0x1 of device 'cpu'"));
}

#[test]
fn cpu_with_an_msr_twice_is_refused() {
    let err = refused(&v7_with(|_, _, s| {
        let tsc = s.vcpus[0].msrs[0];
        s.vcpus[0].msrs.push(tsc);
    }));
    assert!(err.ends_with("cpu: MSR 0x10 is listed twice"), "{err}");
}

#[test]
fn pic_chip_id_must_match_its_instance() {
    let err = refused(&v7_with(|_, _, s| {
        s.vm.pic_master.chip_id = KVM_IRQCHIP_PIC_SLAVE
    }));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'i8259': i8259: chip id 1, but \
         instance 0 is the master PIC (chip id 0)"
    );
    // Swapped: the master's state in the slave's place and the other way round.
    let err = refused(&v7_with(|_, _, s| {
        std::mem::swap(&mut s.vm.pic_master, &mut s.vm.pic_slave);
    }));
    assert!(err.contains("device 'i8259'"), "{err}");
    let err = refused(&v7_with(|_, _, s| {
        s.vm.pic_slave.chip_id = KVM_IRQCHIP_IOAPIC
    }));
    assert!(
        err.starts_with("error while loading state for instance 0x1 of device 'i8259'"),
        "{err}"
    );
    let err = refused(&v7_with(|_, _, s| {
        s.vm.ioapic.chip_id = KVM_IRQCHIP_PIC_MASTER;
    }));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'ioapic': ioapic: chip id 0, but \
         instance 0 is the IOAPIC (chip id 2)"
    );
}

#[test]
fn ram_block_listed_twice_is_refused() {
    let err = refused(&v7_with(|l, _, _| {
        let b = l.ram[0].clone();
        l.ram.push(b);
    }));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'cpr-machine': cpr-machine: RAM \
         block pc.ram is listed twice"
    );
}

#[test]
fn copied_ram_needs_a_ram_section() {
    // A V7 stream (no ram section) whose cpr-machine says the RAM travelled in the stream:
    // the epoch check would be skipped for RAM that is not in it.
    let err = refused(&v7_with(|l, _, _| {
        l.ram[0].copied = true;
        l.epoch.clear();
    }));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'cpr-machine': cpr-machine: RAM \
         block pc.ram is copied, but the stream has no ram section"
    );
    // The same, with a stale epoch: the RAM file's tag differs and nothing notices.
    let err = refused(&v7_with(|l, _, _| {
        l.ram[0].copied = true;
        l.epoch = "stale".into();
    }));
    assert!(
        err.contains("is copied, but the stream has no ram section"),
        "{err}"
    );
}

#[test]
fn copied_flag_must_agree_with_the_ram_section() {
    // Copied in cpr-machine, kept in place by the ram section.
    let mut layout = local(1);
    layout.ram[0].copied = true;
    layout.epoch.clear();
    let bytes = save(
        layout,
        RunState::Running,
        machine(1),
        Some(&TestRam::new(true, 0)),
    );
    let err = load(&bytes, local(1), Some(&mut TestRam::new(true, 0xff))).expect_err("refused");
    assert!(
        chain(&err).ends_with("RAM block pc.ram is copied, but the ram section keeps it in place"),
        "{}",
        chain(&err)
    );
    // In place in cpr-machine, copied by the ram section.
    let bytes = save(
        local(1),
        RunState::Running,
        machine(1),
        Some(&TestRam::new(false, 0)),
    );
    let mut ram = TestRam::new(false, 0xff);
    let err = load(&bytes, local(1), Some(&mut ram)).expect_err("refused");
    assert!(
        chain(&err).ends_with("RAM block pc.ram is in place, but the ram section copies it"),
        "{}",
        chain(&err)
    );
    assert!(
        ram.mem.iter().all(|&b| b == 0xff),
        "guest RAM was written before the checkpoint was refused"
    );
}

#[test]
fn epoch_is_one_the_saver_writes() {
    // RAM a guest ran on after the checkpoint is tagged `running`: a checkpoint claiming
    // that epoch would pass the epoch check on it.
    let mut ran_on = local(1);
    ran_on.epoch = "running".into();
    let bytes = v7_with(|l, _, _| l.epoch = "running".into());
    let err = chain(&load(&bytes, ran_on, None).expect_err("refused"));
    assert_eq!(
        err,
        "error while loading state for instance 0x0 of device 'cpr-machine': cpr-machine: \
         epoch running: that is the tag of RAM a guest runs on, not of a checkpoint"
    );
    // An epoch with no RAM left in place to carry it.
    let mut layout = local(1);
    layout.ram[0].copied = true;
    let bytes = save(
        layout,
        RunState::Running,
        machine(1),
        Some(&TestRam::new(false, 0)),
    );
    let err = load(&bytes, local(1), Some(&mut TestRam::new(false, 0xff))).expect_err("refused");
    assert!(
        chain(&err).ends_with("no RAM is left in place to carry it"),
        "{}",
        chain(&err)
    );
}

#[test]
fn globalstate_holds_only_states_the_saver_writes() {
    for rs in RunState::ALL {
        let bytes = v7_with(|_, r, _| *r = rs);
        let loaded = load(&bytes, local(1), None);
        if SAVED_RUN_STATES.contains(&rs) {
            assert_eq!(loaded.expect("loads").0, rs);
            continue;
        }
        let err = chain(&loaded.err().unwrap_or_else(|| panic!("{rs} loaded")));
        assert_eq!(
            err,
            format!(
                "error while loading state for instance 0x0 of device 'globalstate': \
                 globalstate: run state {rs}: a checkpoint is only ever taken of a running, \
                 paused or suspended VM"
            )
        );
    }
}

#[test]
fn globalstate_buffer_is_the_savers() {
    // QEMU 9.0's vm_was_suspended flag (byte 32 of the buffer), which cpr-save never sets.
    let mut bytes = v7_with(|_, _, _| {});
    let at = bytes
        .windows(8)
        .position(|w| w == b"running\0")
        .expect("globalstate");
    bytes[at + 32] = 1;
    fix_crc(&mut bytes);
    let err = refused(&bytes);
    assert!(
        err.starts_with("error while loading state for instance 0x0 of device 'globalstate'"),
        "{err}"
    );
}

#[test]
fn testdev_reports_match_the_vcpus() {
    let err = refused(&v7_with(|_, _, s| {
        s.testdev.vcpus.push(VcpuProgress::default());
        s.testdev.staged.push([0; 10]);
    }));
    assert!(
        err.ends_with("cpr-testdev: reports for 2 vCPUs, the machine has 1"),
        "{err}"
    );
    let err = refused(&v7_with(|_, _, s| {
        s.testdev.fatal = Some(GuestFatal {
            vcpu: 1,
            ..Default::default()
        });
    }));
    assert!(
        err.ends_with("a fatal report from vCPU 1, the machine has 1"),
        "{err}"
    );
}

// ---------------------------------------------------------------------- the property

/// A valid checkpoint of each kind `cpr-save` and `migrate` write, with what loads it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// V7 `cpr-save`: no ram section, RAM in place, 2 vCPUs, paused.
    V7,
    /// `migrate` with `x-ignore-shared`: a ram section that keeps the block in place.
    InPlace,
    /// `migrate` without it: the block's pages in the stream.
    Copied,
}

impl Kind {
    fn vcpus(self) -> u32 {
        match self {
            Kind::V7 => 2,
            _ => 1,
        }
    }

    /// The loader's RAM, when the stream has a ram section.
    fn ram(self) -> Option<TestRam> {
        match self {
            Kind::V7 => None,
            Kind::InPlace => Some(TestRam::new(true, 0xff)),
            Kind::Copied => Some(TestRam::new(false, 0xff)),
        }
    }

    fn checkpoint(self) -> Vec<u8> {
        let n = self.vcpus();
        match self {
            Kind::V7 => save(local(n), RunState::Paused, machine(n), None),
            Kind::InPlace => save(
                local(n),
                RunState::Suspended,
                machine(n),
                Some(&TestRam::new(true, 0)),
            ),
            Kind::Copied => {
                let mut layout = local(n);
                layout.ram[0].copied = true;
                layout.ram[0].backing = "anonymous".into();
                layout.ram[0].shared = false;
                layout.epoch.clear();
                let mut ram = TestRam::new(false, 0);
                ram.mem[4096..8192].fill(0xab);
                ram.mem[5 * 4096 + 7] = 1;
                save(layout, RunState::Running, machine(n), Some(&ram))
            }
        }
    }
}

/// One damage to a valid file.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte (anywhere but the CRC itself).
    Flip { at: usize, xor: u8 },
    /// Overwrite a big-endian field of 1, 2, 4 or 8 bytes with a value (0, 1, all ones,
    /// a small number, or the field plus or minus one).
    Field {
        at: usize,
        width: usize,
        value: FieldValue,
    },
}

#[derive(Debug, Clone, Copy)]
enum FieldValue {
    Set(u64),
    Add(u64),
    Sub(u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        (
            any::<usize>(),
            prop::sample::select(vec![1usize, 2, 4, 8]),
            prop_oneof![
                prop::sample::select(vec![0u64, 1, 2, 3, u64::MAX, 0x7e, 4096])
                    .prop_map(FieldValue::Set),
                (1..4u64).prop_map(FieldValue::Add),
                (1..4u64).prop_map(FieldValue::Sub),
            ],
        )
            .prop_map(|(at, width, value)| Damage::Field { at, width, value }),
    ]
}

/// Applies `damage` to `bytes` (the CRC is recomputed afterwards).
fn apply(bytes: &mut [u8], damage: &Damage) {
    let body = bytes.len() - 4; // the CRC is recomputed; the "CPRC" tag may be hit
    match *damage {
        Damage::Flip { at, xor } => bytes[at % body] ^= xor,
        Damage::Field { at, width, value } => {
            let at = at % (body - width);
            let field = &mut bytes[at..at + width];
            let mut word = [0u8; 8];
            word[8 - width..].copy_from_slice(field);
            let old = u64::from_be_bytes(word);
            let new = match value {
                FieldValue::Set(v) => v,
                FieldValue::Add(d) => old.wrapping_add(d),
                FieldValue::Sub(d) => old.wrapping_sub(d),
            };
            field.copy_from_slice(&new.to_be_bytes()[8 - width..]);
        }
    }
}

/// The property: a damaged checkpoint (checksum recomputed) is refused, or re-saving what
/// was loaded gives the damaged file back byte for byte (the saver could have written it).
fn check_damaged(kind: Kind, valid: &[u8], damages: &[Damage]) -> Result<(), TestCaseError> {
    let mut bytes = valid.to_vec();
    for d in damages {
        apply(&mut bytes, d);
    }
    fix_crc(&mut bytes);
    let mut ram = kind.ram();
    let Ok((rs, state, layout)) = load(&bytes, local(kind.vcpus()), ram.as_mut()) else {
        return Ok(());
    };
    let again = save(layout, rs, state, ram.as_ref());
    prop_assert!(
        again == bytes,
        "accepted a file the saver does not write: first difference at byte {:?} of {}",
        again.iter().zip(&bytes).position(|(a, b)| a != b),
        bytes.len()
    );
    Ok(())
}

#[test]
fn undamaged_checkpoints_re_save_identically() {
    for kind in [Kind::V7, Kind::InPlace, Kind::Copied] {
        let bytes = kind.checkpoint();
        let mut ram = kind.ram();
        let (rs, state, layout) =
            load(&bytes, local(kind.vcpus()), ram.as_mut()).expect("a valid checkpoint loads");
        assert!(save(layout, rs, state, ram.as_ref()) == bytes, "{kind:?}");
    }
}

/// The valid checkpoint of `kind`, made once.
fn checkpoint(kind: Kind) -> Vec<u8> {
    static MADE: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| [Kind::V7, Kind::InPlace, Kind::Copied].map(Kind::checkpoint));
    made[kind as usize].clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn damaged_checkpoints_are_refused_or_could_have_been_saved(
        kind in prop::sample::select(vec![Kind::V7, Kind::InPlace, Kind::Copied]),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        check_damaged(kind, &checkpoint(kind), &damages)?;
    }
}

// ---------------------------------------------------------------------- inspect

/// Inspects `bytes` without a machine; with `ram`, copied pages are extracted into it.
fn inspected(bytes: &[u8], ram: Option<&mut TestRam>) -> cpr_savevm::Result<Inspection> {
    let open = || Ok(QemuFile::from_bytes(bytes.to_vec(), "inspect"));
    inspect(open, ram.map(|r| r as &mut dyn RamBlocks))
}

#[test]
fn inspect_describes_each_kind_without_a_machine() {
    for (kind, expected, runstate) in [
        (Kind::V7, CheckpointKind::CprSave, RunState::Paused),
        (
            Kind::InPlace,
            CheckpointKind::MainlineInPlace,
            RunState::Suspended,
        ),
        (
            Kind::Copied,
            CheckpointKind::MainlineCopied,
            RunState::Running,
        ),
    ] {
        let i = inspected(&checkpoint(kind), None).expect("a valid checkpoint");
        assert_eq!(i.kind, expected, "{kind:?}");
        assert_eq!(i.runstate, runstate, "{kind:?}");
        assert_eq!(i.layout.vcpus, kind.vcpus(), "{kind:?}");
        assert_eq!(i.layout.ram[0].idstr, "pc.ram");
        assert_eq!(i.layout.ram[0].copied, matches!(kind, Kind::Copied));
        let names: Vec<_> = i
            .sections
            .iter()
            .map(|s| (s.idstr.as_str(), s.instance_id))
            .collect();
        assert_eq!(names[..2], [("cpr-machine", 0), ("globalstate", 0)]);
        assert_eq!(
            names.iter().filter(|(n, _)| *n == "cpu").count(),
            kind.vcpus() as usize
        );
        // Sections follow each other: each starts where the previous one ended.
        for w in i.sections.windows(2) {
            assert_eq!(w[0].offset + w[0].size, w[1].offset, "{kind:?}");
        }
        match (&i.ram, kind) {
            (None, Kind::V7) => {}
            (Some(r), Kind::InPlace) => assert_eq!((r.pages, r.zero_pages), (0, 0)),
            (Some(r), Kind::Copied) => {
                assert_eq!((r.pages, r.zero_pages), (2, RAM_PAGES - 2));
                assert_eq!(r.offset + r.size, i.sections[0].offset);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn inspect_extracts_copied_ram_only_from_a_sound_file() {
    let bytes = checkpoint(Kind::Copied);
    let open = || Ok(QemuFile::from_bytes(bytes.clone(), "inspect"));
    let blocks = stream_ram_blocks(open).expect("blocks").blocks;
    assert_eq!(blocks, [RamBlockDesc::copied("pc.ram", RAM_PAGES * PAGE)]);
    let mut ram = TestRam::new(false, 0xff);
    inspected(&bytes, Some(&mut ram)).expect("extracted");
    let mut expected = vec![0u8; ram.mem.len()];
    expected[4096..8192].fill(0xab);
    expected[5 * 4096 + 7] = 1;
    assert!(
        ram.mem == expected,
        "the extracted RAM is not the saved RAM"
    );
    // A flipped byte in a page: the checksum refuses it before any page is written.
    let mut bad = bytes.clone();
    let at = bad
        .windows(8)
        .position(|w| w == [0xab; 8])
        .expect("the page's data");
    bad[at] ^= 1;
    let mut ram = TestRam::new(false, 0xff);
    let err = inspected(&bad, Some(&mut ram)).expect_err("damaged");
    assert!(
        matches!(err, cpr_savevm::Error::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(
        ram.mem.iter().all(|&b| b == 0xff),
        "RAM written from a damaged file"
    );
    // Streams without pages have nothing to extract.
    let open = || Ok(QemuFile::from_bytes(checkpoint(Kind::V7), "inspect"));
    assert_eq!(stream_ram_blocks(open).expect("v7").blocks, []);
}

#[test]
fn inspect_refuses_damaged_files_with_the_loaders_errors() {
    for kind in [Kind::V7, Kind::InPlace, Kind::Copied] {
        let good = checkpoint(kind);
        // Truncated anywhere.
        for cut in (0..good.len()).step_by(97).chain([good.len() - 1]) {
            assert!(
                inspected(&good[..cut], None).is_err(),
                "{kind:?} cut at {cut}"
            );
        }
        // Wrong magic.
        let mut bad = good.clone();
        bad[3] ^= 0x20;
        let err = inspected(&bad, None).expect_err("magic");
        assert!(
            matches!(err, cpr_savevm::Error::NotVmstateFile { .. }),
            "{err:?}"
        );
        // A flipped byte, and a wrong checksum.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        assert!(inspected(&bad, None).is_err(), "{kind:?} flipped byte");
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let err = inspected(&bad, None).expect_err("checksum");
        assert!(
            matches!(err, cpr_savevm::Error::ChecksumMismatch { .. }),
            "{err:?}"
        );
    }
    // What the loader refuses for a value the saver never writes, inspect refuses alike.
    let bytes = v7_with(|_, _, s| s.vcpus[0].msrs.clear());
    let err = inspected(&bytes, None).expect_err("no MSRs");
    assert_eq!(chain(&err), refused(&bytes));
}

#[test]
fn inspect_wants_one_cpu_section_per_vcpu_of_the_checkpoint() {
    // cpr-machine says 1 vCPU, the stream holds 2 cpu sections: a machine of 1 vCPU
    // knows no second one, and inspect takes the checkpoint's own word for the shape.
    let bytes = save(local(1), RunState::Running, machine(2), None);
    load(&bytes, local(1), None).expect_err("a second vCPU this machine has not");
    let err = chain(&inspected(&bytes, None).expect_err("two cpus for one"));
    assert!(
        err.ends_with("a section for vCPU 1, but the checkpoint's machine has 1"),
        "{err}"
    );
    // And 2 vCPUs with one cpu section.
    let mut state = machine(2);
    state.vcpus.pop();
    let bytes = save(local(2), RunState::Running, state, None);
    inspected(&bytes, None).expect_err("a vCPU without its section");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever a machine of the checkpoint's shape loads, inspect accepts with the same
    /// values; and a damaged file never makes it panic.
    #[test]
    fn inspect_accepts_what_the_loader_accepts(
        kind in prop::sample::select(vec![Kind::V7, Kind::InPlace, Kind::Copied]),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let mut bytes = checkpoint(kind);
        for d in &damages {
            apply(&mut bytes, d);
        }
        fix_crc(&mut bytes);
        let inspected = inspected(&bytes, None);
        let mut ram = kind.ram();
        if let Ok((rs, _, layout)) = load(&bytes, local(kind.vcpus()), ram.as_mut()) {
            let i = inspected.map_err(|e| TestCaseError::fail(chain(&e)))?;
            prop_assert_eq!((i.runstate, i.layout), (rs, layout));
        }
    }
}

/// How long a whole-file check of a V7 checkpoint takes (run by hand: `--ignored`).
#[test]
#[ignore = "a timing probe, run by hand"]
fn parse_timing_probe() {
    let bytes = checkpoint(Kind::V7);
    let n = 2000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let open = || Ok(QemuFile::from_bytes(bytes.clone(), "cpr-load"));
        parse(open, local(Kind::V7.vcpus()), None).expect("parse");
    }
    println!("parse: {:?} per checkpoint", t.elapsed() / n);
    let t = std::time::Instant::now();
    for _ in 0..n {
        save(local(2), RunState::Paused, machine(2), None);
    }
    println!("save: {:?} per checkpoint", t.elapsed() / n);
}
