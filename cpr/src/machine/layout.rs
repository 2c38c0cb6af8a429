//! The guest-physical memory map, boot-info layout, device addresses and register offsets.
//!
//! This file is the **single source of truth** shared by the VMM and the built-in guest:
//! `cpr/build.rs` includes it with `#[path]` and turns the constants listed there into
//! `.equ` lines (`layout.inc`) that the guest assembly sources `.include`. It must therefore
//! stay self-contained (no `crate::` paths, no dependencies).
//!
//! # Guest-physical memory map
//!
//! The guest uses 2 MiB pages, so privilege (user/supervisor) is decided per 2 MiB page.
//!
//! | GPA | size | what | who writes it |
//! |---|---|---|---|
//! | `0x0000_1000` | 4 KiB | boot GDT (null, code64 0x08, data 0x10) | VMM at boot |
//! | `0x0000_2000` | 4 KiB | boot PML4 | VMM at boot |
//! | `0x0000_3000` | 4 KiB | boot PDPT | VMM at boot |
//! | `0x0000_4000` | 16 KiB | boot PDs: identity map of the first 4 GiB, 2 MiB pages, supervisor | VMM at boot |
//! | `0x0001_0000` | ≤ 64 KiB | guest kernel image (code + GDT + IDT + TSSs) | VMM at boot |
//! | `0x0004_0000` | 16 KiB × [`MAX_VCPUS`] | kernel stacks, one per vCPU | guest |
//! | `0x0010_0000` | 4 KiB + 4 KiB + 4 KiB × n | final PML4, PDPT, PDs (n = mapped GiB ≤ 64) | guest kernel |
//! | `0x0020_0000` | ≤ 60 KiB | **user page** starts: user workload image | VMM at boot |
//! | `0x0020_F000` | 4 KiB | boot info (see `BI_*`), user-readable | VMM at boot |
//! | `0x0021_0000` | 8 B × [`MAX_VCPUS`] | timer tick counter per vCPU (kernel writes, user reads) | guest kernel |
//! | `0x0021_1000` | 64 B × [`MAX_VCPUS`] | workload state per vCPU (`US_*`) | guest user |
//! | `0x0022_0000` | 16 KiB × [`MAX_VCPUS`] | user stacks | guest user |
//! | `0x0040_0000` … | configurable | **workload region** (default: 4 MiB up to the end of low RAM) | guest user |
//! | `0xC000_0000` – `0xFFFF_FFFF` | 1 GiB | MMIO hole (no RAM) | |
//! | `0xD000_0000` | 8 KiB | test device (MMIO, user-accessible) | |
//! | `0xFEC0_0000` | 4 KiB | IOAPIC (in-kernel KVM) | |
//! | `0xFEE0_0000` | 4 KiB | xAPIC (in-kernel KVM), supervisor only | |
//! | `0x1_0000_0000` … | | RAM above 3 GiB continues here | |
//!
//! Everything below 2 MiB is supervisor-only; the 2 MiB page at `0x20_0000`, the workload
//! region and the test-device page are user-accessible. RAM is mapped up to
//! `max(RAM top, 4 GiB)` rounded up to 1 GiB (at most [`MAX_MAPPED_GIB`] GiB).
//!
//! # Boot protocol (register-level entry state)
//!
//! Every vCPU enters the kernel at [`KERNEL_LOAD`] in 64-bit long mode, CPL0, interrupts
//! off (RFLAGS = 0x2), paging on with the boot page tables (CR3 = [`BOOT_PML4`],
//! CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = LME|LMA), CS = 0x08 (64-bit code),
//! DS/ES/FS/GS/SS = 0x10, GDTR = [`BOOT_GDT`], and:
//! * `RSI` = [`BOOT_INFO`] (boot-info pointer), `RDI` = vCPU index (0 = BSP),
//! * `RSP` = top of that vCPU's kernel stack (`KERNEL_STACKS + (index + 1) * KERNEL_STACK_SIZE`).
//!
//! APs are made runnable directly (no INIT/SIPI); they spin until the BSP has built the
//! shared structures.

/// Maximum number of vCPUs the guest supports.
pub(crate) const MAX_VCPUS: u64 = 32;
/// Size of a 4 KiB page.
pub(crate) const PAGE_SIZE: u64 = 0x1000;
/// Size of a 2 MiB page (the guest maps everything with these).
pub(crate) const HUGE_PAGE_SIZE: u64 = 0x20_0000;

/// Boot GDT written by the VMM.
pub(crate) const BOOT_GDT: u64 = 0x1000;
/// Boot PML4 written by the VMM.
pub(crate) const BOOT_PML4: u64 = 0x2000;
/// Boot PDPT written by the VMM.
pub(crate) const BOOT_PDPT: u64 = 0x3000;
/// First of four boot page directories (identity map of 0..4 GiB).
pub(crate) const BOOT_PD: u64 = 0x4000;

/// Load address and entry point of the guest kernel image.
pub(crate) const KERNEL_LOAD: u64 = 0x1_0000;
/// Maximum size of the kernel image.
pub(crate) const KERNEL_MAX_SIZE: u64 = 0x1_0000;
/// Base of the per-vCPU kernel stacks.
pub(crate) const KERNEL_STACKS: u64 = 0x4_0000;
/// Size of one kernel stack (must stay 16 KiB: the ISRs compute the vCPU index as
/// `(rsp - KERNEL_STACKS) >> 14`).
pub(crate) const KERNEL_STACK_SIZE: u64 = 0x4000;
/// Final PML4 built by the guest kernel.
pub(crate) const PT_PML4: u64 = 0x10_0000;
/// Final PDPT built by the guest kernel.
pub(crate) const PT_PDPT: u64 = 0x10_1000;
/// First final page directory (one per mapped GiB).
pub(crate) const PT_PD: u64 = 0x10_2000;
/// Maximum GiB of guest-physical space the guest maps.
pub(crate) const MAX_MAPPED_GIB: u64 = 64;

/// Load address and entry point of the user workload image (start of the user page).
pub(crate) const USER_LOAD: u64 = 0x20_0000;
/// Maximum size of the user image.
pub(crate) const USER_MAX_SIZE: u64 = 0xF000;
/// Boot-info page (user-readable).
pub(crate) const BOOT_INFO: u64 = 0x20_F000;
/// Per-vCPU timer tick counters (`u64` each), written by the kernel ISR.
pub(crate) const TICKS: u64 = 0x21_0000;
/// Per-vCPU workload state blocks.
pub(crate) const USER_STATE: u64 = 0x21_1000;
/// Stride of a workload state block.
pub(crate) const USER_STATE_STRIDE: u64 = 0x40;
/// Base of the per-vCPU user stacks.
pub(crate) const USER_STACKS: u64 = 0x22_0000;
/// Size of one user stack.
pub(crate) const USER_STACK_SIZE: u64 = 0x4000;
/// End of the low, fixed-layout part of RAM; the workload may start here.
pub const DEFAULT_WORKLOAD_BASE: u64 = 0x40_0000;

/// End of RAM below the MMIO hole.
pub(crate) const LOW_RAM_END: u64 = 0xC000_0000;
/// Where RAM continues above the MMIO hole.
pub(crate) const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// KVM's TSS area (`KVM_SET_TSS_ADDR`, 3 pages), inside the MMIO hole.
pub(crate) const KVM_TSS_ADDRESS: u64 = 0xFFFB_D000;
/// KVM's identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`), inside the MMIO hole.
pub(crate) const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;
/// IOAPIC MMIO base (in-kernel).
pub(crate) const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// xAPIC MMIO base (in-kernel).
pub(crate) const LAPIC_BASE: u64 = 0xFEE0_0000;

/// Magic in [`BI_MAGIC`]: `"CPRBOOT1"` little-endian.
pub(crate) const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"CPRBOOT1");
/// Boot info: magic (`u64`).
pub(crate) const BI_MAGIC: u64 = 0x00;
/// Boot info: RAM size in bytes.
pub(crate) const BI_RAM_SIZE: u64 = 0x08;
/// Boot info: GiB of guest-physical space to identity-map.
pub(crate) const BI_MAPPED_GIB: u64 = 0x10;
/// Boot info: number of vCPUs.
pub(crate) const BI_VCPUS: u64 = 0x18;
/// Boot info: workload region base (2 MiB aligned).
pub(crate) const BI_WL_BASE: u64 = 0x20;
/// Boot info: workload region size (2 MiB multiple).
pub(crate) const BI_WL_SIZE: u64 = 0x28;
/// Boot info: LAPIC timer frequency in Hz.
pub(crate) const BI_TIMER_HZ: u64 = 0x30;
/// Boot info: LAPIC timer initial count (divide-by-1; KVM's APIC bus is 1 GHz).
pub(crate) const BI_LAPIC_COUNT: u64 = 0x38;
/// Boot info: TSC cycles between two progress reports of the workload.
pub(crate) const BI_REPORT_TSC: u64 = 0x40;
/// Boot info: TSC frequency in kHz.
pub(crate) const BI_TSC_KHZ: u64 = 0x48;

/// Workload state: current generation.
pub(crate) const US_GENERATION: u64 = 0x00;
/// Workload state: next page index within the vCPU's slice.
pub(crate) const US_CURSOR: u64 = 0x08;
/// Workload state: pages processed since fresh boot (progress).
pub(crate) const US_PROGRESS: u64 = 0x10;
/// Workload state: words that did not hold the expected pattern.
pub(crate) const US_ERRORS: u64 = 0x18;
/// Workload state: TSC at the last report.
pub(crate) const US_LAST_REPORT: u64 = 0x20;

/// COM1 16550 UART base port.
pub(crate) const COM1_PORT: u64 = 0x3f8;
/// ACPI-like PM1a control register (16 bit), same port as QEMU's ICH9 (`0x600 + 4`).
pub(crate) const PM1A_CNT_PORT: u64 = 0x604;
/// PM1 control: SLP_EN (bit 13) starts the sleep transition.
pub(crate) const PM1_SLP_EN: u64 = 1 << 13;
/// PM1 control: SLP_TYP field shift (bits 10..12).
pub(crate) const PM1_SLP_TYP_SHIFT: u64 = 10;
/// SLP_TYP value for S3 (suspend to RAM), as in QEMU's DSDT `_S3`.
pub(crate) const PM1_SLP_TYP_S3: u64 = 1;
/// SLP_TYP value for S5 (soft off), as in QEMU's DSDT `_S5`.
pub(crate) const PM1_SLP_TYP_S5: u64 = 0;

/// Test device MMIO base.
pub(crate) const TESTDEV_BASE: u64 = 0xD000_0000;
/// Test device MMIO size (per-vCPU blocks in the first page, global registers in the second).
pub(crate) const TESTDEV_SIZE: u64 = 0x2000;
/// Stride of a per-vCPU register block.
pub(crate) const TESTDEV_VCPU_STRIDE: u64 = 0x80;
/// Per-vCPU register: generation (W, u64).
pub(crate) const TD_GENERATION: u64 = 0x00;
/// Per-vCPU register: tick count (W, u64).
pub(crate) const TD_TICKS: u64 = 0x08;
/// Per-vCPU register: error count (W, u64).
pub(crate) const TD_ERRORS: u64 = 0x10;
/// Per-vCPU register: progress (W, u64); writing it completes one report.
pub(crate) const TD_PROGRESS: u64 = 0x18;
/// Per-vCPU register: kernel boot stage (W).
pub(crate) const TD_STAGE: u64 = 0x20;
/// Per-vCPU register: faulting RIP (W).
pub(crate) const TD_EXC_RIP: u64 = 0x28;
/// Per-vCPU register: exception error code (W).
pub(crate) const TD_EXC_ERROR: u64 = 0x30;
/// Per-vCPU register: CR2 at the exception (W).
pub(crate) const TD_EXC_CR2: u64 = 0x38;
/// Per-vCPU register: CS at the exception (W).
pub(crate) const TD_EXC_CS: u64 = 0x40;
/// Per-vCPU register: exception vector (W); writing it reports a fatal guest exception.
pub(crate) const TD_EXC_VECTOR: u64 = 0x48;
/// Global register (offset from the device base): magic (R, u32) = [`TESTDEV_MAGIC`].
pub(crate) const TD_MAGIC: u64 = 0x1000;
/// Value read from [`TD_MAGIC`]: `"CPRT"`.
pub(crate) const TESTDEV_MAGIC: u64 = 0x5452_5043;

/// Kernel boot stage: entered the kernel.
pub(crate) const STAGE_ENTRY: u64 = 1;
/// Kernel boot stage: BSP built shared structures (page tables, IDT).
pub(crate) const STAGE_SHARED: u64 = 2;
/// Kernel boot stage: this vCPU loaded GDT/TSS/IDT/CR3 and its LAPIC.
pub(crate) const STAGE_PERCPU: u64 = 3;
/// Kernel boot stage: about to enter user mode.
pub(crate) const STAGE_USER: u64 = 4;
/// Kernel boot stage: bad boot-info magic.
pub(crate) const STAGE_BAD_MAGIC: u64 = 0xBAD;

/// Interrupt vector of the LAPIC timer.
pub(crate) const TIMER_VECTOR: u64 = 0x40;
/// Interrupt vector of the suspend request (MSI from the VMM to the BSP).
pub(crate) const SUSPEND_VECTOR: u64 = 0x41;
/// Interrupt vector of the test-only `x-guest-fault {"kind": "triple-fault"}` request (MSI
/// from the VMM to the BSP): the ISR loads an empty IDT and raises `#UD`, so the CPU
/// shuts down (triple fault).
pub(crate) const FAULT_TRIPLE_VECTOR: u64 = 0x42;
/// Interrupt vector of the test-only `x-guest-fault {"kind": "panic"}` request: the ISR
/// raises `#UD` in kernel mode, which the kernel reports as a fatal exception.
pub(crate) const FAULT_PANIC_VECTOR: u64 = 0x43;
/// LAPIC spurious vector.
pub(crate) const SPURIOUS_VECTOR: u64 = 0xFF;

/// GDT selector: kernel code.
pub(crate) const SEL_KERNEL_CODE: u64 = 0x08;
/// GDT selector: kernel data.
pub(crate) const SEL_KERNEL_DATA: u64 = 0x10;
/// GDT selector: user data (RPL 3).
pub(crate) const SEL_USER_DATA: u64 = 0x1b;
/// GDT selector: user code (RPL 3).
pub(crate) const SEL_USER_CODE: u64 = 0x23;
/// GDT selector of vCPU 0's TSS; vCPU n uses `SEL_TSS0 + 16 * n`.
pub(crate) const SEL_TSS0: u64 = 0x28;
