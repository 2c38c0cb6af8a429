//! The built-in guest: its images (assembled by `build.rs` from `cpr/guest/*.s`), the
//! boot info, the boot page tables and GDT the VMM writes, and the register-level entry
//! state. See [`layout`](super::layout) for the memory map and boot protocol.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::error::{Error, Result};
use super::layout::{
    BI_LAPIC_COUNT, BI_MAGIC, BI_MAPPED_GIB, BI_RAM_SIZE, BI_REPORT_TSC, BI_TIMER_HZ, BI_TSC_KHZ,
    BI_VCPUS, BI_WL_BASE, BI_WL_SIZE, BOOT_GDT, BOOT_INFO, BOOT_MAGIC, BOOT_PD, BOOT_PDPT,
    BOOT_PML4, DEFAULT_WORKLOAD_BASE, HUGE_PAGE_SIZE, KERNEL_LOAD, KERNEL_STACK_SIZE,
    KERNEL_STACKS, MAX_MAPPED_GIB, PAGE_SIZE, USER_LOAD,
};

/// The guest kernel image (flat binary, loaded at [`KERNEL_LOAD`]).
pub(crate) static KERNEL_IMAGE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guest-kernel.bin"));
/// The user workload image (flat binary, loaded at [`USER_LOAD`]).
pub(crate) static USER_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-user.bin"));

const GIB: u64 = 1 << 30;

/// The boot parameters the VMM writes to [`BOOT_INFO`] (`BI_*` offsets, all `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BootInfo {
    /// RAM size in bytes.
    pub ram_size: u64,
    /// GiB of guest-physical space the kernel identity-maps.
    pub mapped_gib: u64,
    /// Number of vCPUs.
    pub vcpus: u64,
    /// Workload region base (2 MiB aligned).
    pub workload_base: u64,
    /// Workload region size (2 MiB multiple).
    pub workload_size: u64,
    /// LAPIC timer frequency in Hz.
    pub timer_hz: u64,
    /// LAPIC timer initial count (divide by 1, 1 GHz APIC bus in KVM).
    pub lapic_count: u64,
    /// TSC cycles between two workload reports.
    pub report_tsc: u64,
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
}

impl BootInfo {
    /// Compute and validate the boot info.
    ///
    /// `ram` are the `(start, size)` RAM ranges; `workload` is `(base, size)` or `None`
    /// for the default (from 4 MiB to the end of the first RAM range).
    pub(crate) fn new(
        ram: &[(u64, u64)],
        vcpus: usize,
        workload: Option<(u64, u64)>,
        timer_hz: u32,
        report_interval_ms: u32,
        tsc_khz: u32,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let ram_size: u64 = ram.iter().map(|r| r.1).sum();
        let top = ram.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        let mapped_gib = top.max(4 * GIB).div_ceil(GIB);
        if mapped_gib > MAX_MAPPED_GIB {
            return bad(format!(
                "RAM top {top:#x} above the guest's {MAX_MAPPED_GIB} GiB map"
            ));
        }
        let first_end = ram.first().map_or(0, |r| r.0 + r.1);
        let (base, size) = workload.unwrap_or((
            DEFAULT_WORKLOAD_BASE,
            first_end.saturating_sub(DEFAULT_WORKLOAD_BASE),
        ));
        if base < DEFAULT_WORKLOAD_BASE
            || !base.is_multiple_of(HUGE_PAGE_SIZE)
            || !size.is_multiple_of(HUGE_PAGE_SIZE)
        {
            return bad(format!(
                "workload {base:#x}+{size:#x} must be 2 MiB aligned and start at or above {DEFAULT_WORKLOAD_BASE:#x}"
            ));
        }
        if !ram
            .iter()
            .any(|&(s, l)| base >= s && base.saturating_add(size) <= s + l)
        {
            return bad(format!(
                "workload {base:#x}+{size:#x} is not inside one RAM range"
            ));
        }
        if timer_hz == 0 || timer_hz > 10_000 {
            return bad(format!("timer_hz {timer_hz} must be 1..=10000"));
        }
        Ok(Self {
            ram_size,
            mapped_gib,
            vcpus: vcpus as u64,
            workload_base: base,
            workload_size: size,
            timer_hz: u64::from(timer_hz),
            lapic_count: 1_000_000_000 / u64::from(timer_hz),
            report_tsc: u64::from(tsc_khz) * u64::from(report_interval_ms.max(1)),
            tsc_khz: u64::from(tsc_khz),
        })
    }

    fn fields(&self) -> [(u64, u64); 10] {
        [
            (BI_MAGIC, BOOT_MAGIC),
            (BI_RAM_SIZE, self.ram_size),
            (BI_MAPPED_GIB, self.mapped_gib),
            (BI_VCPUS, self.vcpus),
            (BI_WL_BASE, self.workload_base),
            (BI_WL_SIZE, self.workload_size),
            (BI_TIMER_HZ, self.timer_hz),
            (BI_LAPIC_COUNT, self.lapic_count),
            (BI_REPORT_TSC, self.report_tsc),
            (BI_TSC_KHZ, self.tsc_khz),
        ]
    }
}

fn write(mem: &GuestMemoryMmap, addr: u64, data: &[u8], what: &'static str) -> Result<()> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, source })
}

fn write_u64(mem: &GuestMemoryMmap, addr: u64, v: u64, what: &'static str) -> Result<()> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, source })
}

/// Load the guest for a fresh boot: zero the fixed low 4 MiB (kernel and user pages),
/// write the boot GDT and page tables, both images and the boot info. The workload
/// region is not touched (generation 0 does not check it).
pub(crate) fn load(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<()> {
    let zero = vec![0u8; usize::try_from(DEFAULT_WORKLOAD_BASE).unwrap_or(0)];
    write(mem, 0, &zero, "zero low RAM")?;
    // Boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18, for TR only).
    let gdt: [u64; 4] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x0080_8b00_0000_0067,
    ];
    for (i, d) in gdt.iter().enumerate() {
        write_u64(mem, BOOT_GDT + 8 * i as u64, *d, "boot GDT")?;
    }
    // Boot page tables: identity map of 0..4 GiB with 2 MiB pages (present|writable|PS).
    write_u64(mem, BOOT_PML4, BOOT_PDPT | 0x3, "boot PML4")?;
    for gib in 0..4u64 {
        write_u64(
            mem,
            BOOT_PDPT + 8 * gib,
            (BOOT_PD + gib * PAGE_SIZE) | 0x3,
            "boot PDPT",
        )?;
    }
    let mut pds = Vec::with_capacity(4 * 512 * 8);
    for i in 0..4 * 512u64 {
        pds.extend_from_slice(&((i * HUGE_PAGE_SIZE) | 0x83).to_le_bytes());
    }
    write(mem, BOOT_PD, &pds, "boot PDs")?;
    write(mem, KERNEL_LOAD, KERNEL_IMAGE, "kernel image")?;
    write(mem, USER_LOAD, USER_IMAGE, "user image")?;
    for (off, v) in info.fields() {
        write_u64(mem, BOOT_INFO + off, v, "boot info")?;
    }
    Ok(())
}

/// General-purpose registers at kernel entry for vCPU `index`.
pub(crate) fn boot_regs(index: usize) -> kvm_regs {
    kvm_regs {
        rip: KERNEL_LOAD,
        rsp: KERNEL_STACKS + (index as u64 + 1) * KERNEL_STACK_SIZE,
        rsi: BOOT_INFO,
        rdi: index as u64,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Segment/control registers at kernel entry, starting from KVM's reset `sregs` (which
/// keep the APIC base and the pending-interrupt bitmap).
pub(crate) fn boot_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    let tss = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x18,
        type_: 0xb,
        present: 1,
        s: 0,
        l: 0,
        g: 0,
        ..Default::default()
    };
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.gdt.base = BOOT_GDT;
    s.gdt.limit = 4 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    // PG | WP | NE | ET | MP | PE
    s.cr0 = 0x8005_0033;
    s.cr3 = BOOT_PML4;
    s.cr4 = 0x20; // PAE
    s.efer = 0x500; // LME | LMA
    s
}
