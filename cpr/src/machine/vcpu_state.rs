//! Per-vCPU KVM state ([`VcpuState`]): CPUID setup, capture and restore.
//!
//! Capture and restore follow Firecracker's `arch/x86_64/vcpu.rs` ordering rules; the
//! reasons are in the comments of [`capture_vcpu`] and [`restore_vcpu`].

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use zerocopy::IntoBytes;

use super::error::{Error, Result};

/// `IA32_TSC`.
pub(crate) const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`.
pub(crate) const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Words in a `kvm_xsave` region (4 KiB); `KVM_CAP_XSAVE2` must not ask for more.
pub(crate) const XSAVE_WORDS: usize = 1024;

/// Everything KVM holds for one vCPU.
#[derive(Clone, Debug, PartialEq)]
pub struct VcpuState {
    /// CPUID table as KVM reports it (`KVM_GET_CPUID2`; on this host PVM rewrites leaves 1/7).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST`, in list order.
    pub msrs: Vec<kvm_msr_entry>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers (includes the APIC base and pending interrupt bitmap).
    pub sregs: kvm_sregs,
    /// `KVM_GET_XSAVE` region (4096 bytes as 1024 words).
    pub xsave: Vec<u32>,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// In-kernel LAPIC registers.
    pub lapic: kvm_lapic_state,
    /// Multiprocessing state (runnable, halted, ...).
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// TSC frequency in kHz.
    pub tsc_khz: u32,
}

fn vcpu_err(vcpu: usize, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::VcpuIoctl { vcpu, op, source }
}

/// The CPUID table a freshly booted vCPU gets: KVM's supported table, with
/// * the initial APIC ID set to the vCPU index (leaves 1, 0xB, 0x1F, 0x8000001E),
/// * CX16 hidden (leaf 1 ECX bit 13): `cmpxchg16b` is an emulation failure at CPL0 here,
/// * all KVM paravirtual features cleared (leaf 0x4000_0001 EAX): PV hypercalls
///   (`vmcall`) hang the vCPU on this host, so the guest must never think it may use them.
///
/// PVM forces most of leaves 1 and 7 on anyway (`docs/HOST-KVM.md`, CPUID); only the bits above are
/// under the VMM's control.
pub(crate) fn boot_cpuid(kvm: &Kvm, index: usize) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error::Kvm {
            op: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let apic_id = u32::try_from(index).unwrap_or(0);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (apic_id << 24);
                e.ecx &= !(1 << 13);
            }
            0xb | 0x1f => e.edx = apic_id,
            0x8000_001e => e.eax = apic_id,
            0x4000_0001 => e.eax = 0,
            _ => {}
        }
    }
    Ok(cpuid)
}

fn get_msrs_chunked(vcpu: &VcpuFd, index: usize, list: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(list.len());
    for chunk in list.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| {
            Error::StateMismatch(format!("cannot build an MSR list of {}", entries.len()))
        })?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(vcpu_err(index, "KVM_GET_MSRS"))?;
        if n != entries.len() {
            return Err(Error::MsrsPartial {
                vcpu: index,
                op: "KVM_GET_MSRS",
                done: n,
                asked: entries.len(),
                first_refused: entries.get(n).map_or(0, |e| e.index),
            });
        }
        out.extend_from_slice(msrs.as_slice());
    }
    Ok(out)
}

fn set_msrs_chunked(vcpu: &VcpuFd, index: usize, entries: &[kvm_msr_entry]) -> Result<()> {
    for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| {
            Error::StateMismatch(format!("cannot build an MSR list of {}", chunk.len()))
        })?;
        let n = vcpu
            .set_msrs(&msrs)
            .map_err(vcpu_err(index, "KVM_SET_MSRS"))?;
        // KVM stops at the first MSR it refuses and returns how many it set: a short
        // count is a silent partial restore unless we check it (Firecracker #3164).
        if n != chunk.len() {
            return Err(Error::MsrsPartial {
                vcpu: index,
                op: "KVM_SET_MSRS",
                done: n,
                asked: chunk.len(),
                first_refused: chunk.get(n).map_or(0, |e| e.index),
            });
        }
    }
    Ok(())
}

/// Capture the state of a vCPU that is not running (its thread is parked and any
/// pending I/O was completed with an `immediate_exit` run).
///
/// `msr_list` is `Kvm::get_msr_index_list()`.
/// `known_cpuid` is the CPUID table the vCPU was given, if the caller knows it (KVM
/// returns a table as it was set): it is used instead of a `KVM_GET_CPUID2`, one of the
/// slowest reads here and one that never changes.
pub(crate) fn capture_vcpu(
    vcpu: &VcpuFd,
    index: usize,
    msr_list: &[u32],
    known_cpuid: Option<&[kvm_cpuid_entry2]>,
) -> Result<VcpuState> {
    // Order (Firecracker's save_state):
    // * KVM_GET_MP_STATE first: it calls kvm_apic_accept_events(), which may change
    //   vCPU/LAPIC state, so everything read afterwards is consistent with it.
    // * regs/sregs/xsave/xcrs/debugregs/lapic next; GET_LAPIC may itself update the LAPIC
    //   (e.g. the timer current count) before returning it.
    // * MSRs after the LAPIC (TSC_DEADLINE is a LAPIC timer register in disguise).
    // * KVM_GET_VCPU_EVENTS last: the other gets may flush pending exceptions into it.
    let mp_state = vcpu
        .get_mp_state()
        .map_err(vcpu_err(index, "KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(vcpu_err(index, "KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(vcpu_err(index, "KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(vcpu_err(index, "KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(vcpu_err(index, "KVM_GET_XCRS"))?;
    let debugregs = vcpu
        .get_debug_regs()
        .map_err(vcpu_err(index, "KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(vcpu_err(index, "KVM_GET_LAPIC"))?;
    let tsc_khz = vcpu
        .get_tsc_khz()
        .map_err(vcpu_err(index, "KVM_GET_TSC_KHZ"))?;
    let cpuid = match known_cpuid {
        Some(known) => known.to_vec(),
        None => vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(vcpu_err(index, "KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec(),
    };
    let mut msrs = get_msrs_chunked(vcpu, index, msr_list)?;
    // Firecracker's quirk: a TSC_DEADLINE of 0 is saved as the current TSC. On restore
    // the deadline is then "now", so a guest that armed the deadline timer gets its
    // interrupt instead of losing it. KVM ignores the MSR when the LVT timer is not in
    // deadline mode (this guest uses periodic mode), so it is harmless otherwise.
    let tsc = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data);
    if let (Some(tsc), Some(dl)) = (
        tsc,
        msrs.iter_mut()
            .find(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0),
    ) {
        dl.data = tsc;
    }
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(vcpu_err(index, "KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        cpuid,
        msrs,
        regs,
        sregs,
        xsave: xsave.region.to_vec(),
        xcrs,
        debugregs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz,
    })
}

/// Restore `state` into a freshly created vCPU of a new VM.
/// `set_cpuid` is the CPUID table the vCPU already has, if any (set ahead on a machine
/// built before the state arrived): when it is the state's, it is not set again.
pub(crate) fn restore_vcpu(
    vcpu: &VcpuFd,
    index: usize,
    state: &VcpuState,
    set_cpuid: Option<&[kvm_cpuid_entry2]>,
) -> Result<()> {
    // 1. CPUID first: KVM derives the vCPU's feature set (XSAVE size, LAPIC features,
    //    MSR validity) from it; every later set is checked against it.
    let same = set_cpuid.is_some_and(|set| {
        set.len() == state.cpuid.len()
            && set
                .iter()
                .zip(&state.cpuid)
                .all(|(a, b)| a.as_bytes() == b.as_bytes())
    });
    if !same {
        let cpuid = CpuId::from_entries(&state.cpuid)
            .map_err(|_| Error::StateMismatch(format!("{} CPUID entries", state.cpuid.len())))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(vcpu_err(index, "KVM_SET_CPUID2"))?;
    }
    // TSC rate: must match before the TSC MSR is written. Without TSC scaling
    // (KVM_CAP_TSC_CONTROL = 0 here) a different rate cannot be restored.
    let host_khz = vcpu
        .get_tsc_khz()
        .map_err(vcpu_err(index, "KVM_GET_TSC_KHZ"))?;
    if !tsc_khz_close(state.tsc_khz, host_khz) {
        vcpu.set_tsc_khz(state.tsc_khz)
            .map_err(|source| Error::TscRateDiffers {
                saved_khz: state.tsc_khz,
                host_khz,
                source,
            })?;
    }
    // 2. mp_state early: calls that depend on whether this vCPU is the BSP / runnable
    //    come after it.
    vcpu.set_mp_state(state.mp_state)
        .map_err(vcpu_err(index, "KVM_SET_MP_STATE"))?;
    // 3. regs before vcpu_events: KVM_SET_REGS clears pending exceptions.
    vcpu.set_regs(&state.regs)
        .map_err(vcpu_err(index, "KVM_SET_REGS"))?;
    // 4. sregs: carries the APIC base MSR (BSP flag, xAPIC enable), needed by the LAPIC.
    vcpu.set_sregs(&state.sregs)
        .map_err(vcpu_err(index, "KVM_SET_SREGS"))?;
    // 5./6. xsave, then xcrs.
    let mut xsave = Box::<kvm_xsave>::default();
    for (dst, src) in xsave.region.iter_mut().zip(&state.xsave) {
        *dst = *src;
    }
    // SAFETY: `xsave` is a full 4096-byte `kvm_xsave`, and `Vm::new` checked that
    // KVM_CAP_XSAVE2 asks for at most 4096 bytes, so KVM reads nothing beyond it.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(vcpu_err(index, "KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs)
        .map_err(vcpu_err(index, "KVM_SET_XCRS"))?;
    // 7. debug registers.
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(vcpu_err(index, "KVM_SET_DEBUGREGS"))?;
    // 8. LAPIC after sregs (APIC base) and before the MSRs: TSC_DEADLINE only lands in
    //    a LAPIC whose timer is already configured for deadline mode.
    vcpu.set_lapic(&state.lapic)
        .map_err(vcpu_err(index, "KVM_SET_LAPIC"))?;
    // 9. MSRs, TSC_DEADLINE deferred: it is relative to the TSC, so TSC must be set first
    //    or the deadline would be judged against the new VM's TSC (Firecracker's
    //    DEFERRED_MSRS). A short count from KVM_SET_MSRS is an error.
    let (deferred, normal): (Vec<_>, Vec<_>) = state
        .msrs
        .iter()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    set_msrs_chunked(vcpu, index, &normal)?;
    set_msrs_chunked(vcpu, index, &deferred)?;
    // 10. vcpu_events last: pending exception/interrupt/NMI injection state, which the
    //     sets above (regs in particular) would otherwise clear.
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(vcpu_err(index, "KVM_SET_VCPU_EVENTS"))?;
    // 11. KVMCLOCK_CTRL tells a kvmclock guest it was stopped (avoids soft-lockup
    //     warnings). EINVAL when the guest never enabled kvmclock (ours does not).
    let _ = vcpu.kvmclock_ctrl();
    Ok(())
}

/// Firecracker's tolerance: rates within 250 ppm count as equal.
fn tsc_khz_close(a: u32, b: u32) -> bool {
    u64::from(a.abs_diff(b)) * 1_000_000 <= u64::from(b) * 250
}

/// Most MSRs a `cpu` section may carry (KVM's index list here has 40).
const MAX_MSRS: usize = KVM_MAX_MSR_ENTRIES;
/// Most CPUID entries a `cpu` section may carry.
const MAX_CPUID: usize = KVM_MAX_CPUID_ENTRIES;
/// Words per CPUID entry in the stream: function, index, flags, eax, ebx, ecx, edx.
const CPUID_WORDS: usize = 7;
/// Most XCRs (`KVM_MAX_XCRS`).
const MAX_XCRS: usize = 16;

/// The `cpu` section (instance = vCPU index), version 1.
///
/// | field | encoding |
/// |---|---|
/// | `regs` | 18 × be64: rax rbx rcx rdx rsi rdi rsp rbp r8–r15 rip rflags |
/// | `sregs` | raw `kvm_sregs` (312 B, KVM ABI) |
/// | `xsave` | raw 4096-byte XSAVE area |
/// | `xcr_index`, `xcr_value` | counted be32 / be64 arrays (`kvm_xcrs`) |
/// | `debugregs` | 7 × be64: db0–db3, dr6, dr7, flags |
/// | `lapic` | raw 1024-byte LAPIC register page |
/// | `msr_index`, `msr_value` | counted be32 / be64 arrays, KVM's index-list order |
/// | `mp_state` | be32 |
/// | `vcpu_events` | raw `kvm_vcpu_events` (64 B) |
/// | `tsc_khz` | be32 |
/// | `cpuid` | counted be32 array, 7 words per entry |
impl cpr_savevm::VmState for VcpuState {
    const NAME: &'static str = "cpu";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut cpr_savevm::FieldWriter<'_>) -> cpr_savevm::Result<()> {
        use super::persist::{count_u32, put_kvm};
        let r = &self.regs;
        w.array_fixed(
            "regs",
            &[
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
            ],
        )?;
        put_kvm(w, "sregs", &self.sregs);
        if self.xsave.len() != XSAVE_WORDS {
            return Err(cpr_savevm::Error::InvalidState {
                vmsd: "cpu".into(),
                reason: format!(
                    "xsave has {} words, expected {XSAVE_WORDS}",
                    self.xsave.len()
                ),
            });
        }
        w.buffer("xsave", self.xsave.as_slice().as_bytes());
        let nr = usize::try_from(self.xcrs.nr_xcrs)
            .unwrap_or(usize::MAX)
            .min(self.xcrs.xcrs.len());
        let xcrs = &self.xcrs.xcrs[..nr];
        w.array("xcr_index", &xcrs.iter().map(|x| x.xcr).collect::<Vec<_>>())?;
        w.array(
            "xcr_value",
            &xcrs.iter().map(|x| x.value).collect::<Vec<_>>(),
        )?;
        let d = &self.debugregs;
        w.array_fixed(
            "debugregs",
            &[d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7, d.flags],
        )?;
        put_kvm(w, "lapic", &self.lapic);
        w.array(
            "msr_index",
            &self.msrs.iter().map(|m| m.index).collect::<Vec<_>>(),
        )?;
        w.array(
            "msr_value",
            &self.msrs.iter().map(|m| m.data).collect::<Vec<_>>(),
        )?;
        w.u32("mp_state", self.mp_state.mp_state);
        put_kvm(w, "vcpu_events", &self.vcpu_events);
        w.u32("tsc_khz", self.tsc_khz);
        let mut cpuid = Vec::with_capacity(self.cpuid.len() * CPUID_WORDS);
        for e in &self.cpuid {
            cpuid.extend_from_slice(&[e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]);
        }
        debug_assert_eq!(count_u32(cpuid.len()) % 7, 0);
        w.array("cpuid", &cpuid)
    }

    fn load(r: &mut cpr_savevm::FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        use super::persist::get_kvm;
        let g = r.array_fixed::<u64>("regs", 18)?;
        let regs = kvm_regs {
            rax: g[0],
            rbx: g[1],
            rcx: g[2],
            rdx: g[3],
            rsi: g[4],
            rdi: g[5],
            rsp: g[6],
            rbp: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: g[16],
            rflags: g[17],
        };
        let sregs: kvm_sregs = get_kvm(r, "sregs")?;
        let mut xsave = vec![0u32; XSAVE_WORDS];
        r.buffer_into("xsave", xsave.as_mut_slice().as_mut_bytes())?;
        let xcr_index = r.array::<u32>("xcr_index", MAX_XCRS)?;
        let xcr_value = r.array::<u64>("xcr_value", MAX_XCRS)?;
        if xcr_index.len() != xcr_value.len() {
            return Err(r.invalid("xcr_index and xcr_value differ in length"));
        }
        let mut xcrs = kvm_xcrs {
            nr_xcrs: super::persist::count_u32(xcr_index.len()),
            ..Default::default()
        };
        for ((slot, index), value) in xcrs.xcrs.iter_mut().zip(xcr_index).zip(xcr_value) {
            slot.xcr = index;
            slot.value = value;
        }
        let d = r.array_fixed::<u64>("debugregs", 7)?;
        let debugregs = kvm_debugregs {
            db: [d[0], d[1], d[2], d[3]],
            dr6: d[4],
            dr7: d[5],
            flags: d[6],
            ..Default::default()
        };
        let lapic: kvm_lapic_state = get_kvm(r, "lapic")?;
        let msr_index = r.array::<u32>("msr_index", MAX_MSRS)?;
        let msr_value = r.array::<u64>("msr_value", MAX_MSRS)?;
        if msr_index.len() != msr_value.len() {
            return Err(r.invalid("msr_index and msr_value differ in length"));
        }
        let msrs = msr_index
            .into_iter()
            .zip(msr_value)
            .map(|(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let mp_state = kvm_mp_state {
            mp_state: r.u32("mp_state")?,
        };
        let vcpu_events: kvm_vcpu_events = get_kvm(r, "vcpu_events")?;
        let tsc_khz = r.u32("tsc_khz")?;
        let words = r.array::<u32>("cpuid", MAX_CPUID * CPUID_WORDS)?;
        if words.len() % CPUID_WORDS != 0 {
            return Err(r.invalid("cpuid is not a whole number of entries"));
        }
        let cpuid = words
            .chunks_exact(CPUID_WORDS)
            .map(|w| kvm_cpuid_entry2 {
                function: w[0],
                index: w[1],
                flags: w[2],
                eax: w[3],
                ebx: w[4],
                ecx: w[5],
                edx: w[6],
                ..Default::default()
            })
            .collect();
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }

    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        if self.tsc_khz == 0 {
            return Err(cpr_savevm::Error::InvalidState {
                vmsd: "cpu".into(),
                reason: "tsc_khz is 0".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::persist::tests::{decode_err, round_trip};
    use cpr_savevm::{VmState, encode_vmstate};

    fn sample() -> VcpuState {
        let mut s = VcpuState {
            cpuid: (0..3)
                .map(|i| kvm_cpuid_entry2 {
                    function: i,
                    index: i + 1,
                    flags: 1,
                    eax: 0x11 * i,
                    ebx: 2,
                    ecx: 3,
                    edx: 4,
                    ..Default::default()
                })
                .collect(),
            msrs: vec![
                kvm_msr_entry {
                    index: MSR_IA32_TSC,
                    data: 123_456_789,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: MSR_IA32_TSC_DEADLINE,
                    data: 987,
                    ..Default::default()
                },
            ],
            regs: kvm_regs {
                rax: 1,
                r15: 15,
                rip: 0x20_0000,
                rflags: 0x202,
                ..Default::default()
            },
            sregs: kvm_sregs {
                cr0: 0x8000_0011,
                cr3: 0x10_0000,
                efer: 0x500,
                apic_base: 0xfee0_0900,
                ..Default::default()
            },
            xsave: (0..1024u32).collect(),
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
        s.xcrs.xcrs[0].value = 1;
        s.lapic.regs[0x20] = 1;
        s.vcpu_events.exception.injected = 1;
        s
    }

    #[test]
    fn cpu_section_round_trips() {
        let mut s = sample();
        let back = round_trip(&mut s);
        assert_eq!(back, s);
    }

    #[test]
    fn cpu_section_is_compact() {
        let mut s = sample();
        let (payload, _) = encode_vmstate(&mut s).expect("encode").expect("needed");
        // 18 regs + sregs + xsave + lapic + events dominate; no per-entry overhead.
        assert!(payload.len() < 6000, "{} bytes", payload.len());
    }

    #[test]
    fn hostile_cpu_sections_are_refused() {
        let mut s = sample();
        let (payload, _) = encode_vmstate(&mut s).expect("encode").expect("needed");
        // Truncated.
        let err = decode_err::<VcpuState>(payload[..payload.len() - 3].to_vec());
        assert!(!err.to_string().is_empty());
        // tsc_khz = 0 fails post_load.
        let mut zero = sample();
        zero.tsc_khz = 0;
        let (payload, _) = encode_vmstate(&mut zero).expect("encode").expect("needed");
        let err = decode_err::<VcpuState>(payload);
        assert!(err.to_string().contains("tsc_khz is 0"), "{err}");
        assert_eq!(VcpuState::NAME, "cpu");
    }
}
