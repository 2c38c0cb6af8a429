//! Guest RAM: the RAM layout around the MMIO hole, helpers that map it (anonymous or a
//! `MAP_SHARED` file), and the one function that registers host mappings with KVM.
//!
//! The crate `cpr-memory` will later own the mapping; the KVM side only needs
//! [`RamRegion`]s (guest address, host address, size), see [`register_ram`].

use std::fs::OpenOptions;
use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{Error, Result};
use super::layout::{HIGH_RAM_START, LOW_RAM_END};

/// One contiguous piece of guest RAM as KVM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start address.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the mapping.
    pub host_addr: u64,
}

/// The guest-physical ranges `(start, size)` for `ram_size` bytes of RAM: up to 3 GiB at
/// address 0, the rest above 4 GiB (the MMIO hole `0xC000_0000..0x1_0000_0000` has no RAM).
pub fn ram_ranges(ram_size: u64) -> Vec<(u64, u64)> {
    if ram_size <= LOW_RAM_END {
        vec![(0, ram_size)]
    } else {
        vec![(0, LOW_RAM_END), (HIGH_RAM_START, ram_size - LOW_RAM_END)]
    }
}

fn checked_ranges(ram_size: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if ram_size == 0 || !ram_size.is_multiple_of(2 << 20) {
        return Err(Error::InvalidConfig(format!(
            "RAM size {ram_size:#x} must be a non-zero multiple of 2 MiB"
        )));
    }
    ram_ranges(ram_size)
        .into_iter()
        .map(|(start, size)| {
            usize::try_from(size)
                .map(|s| (GuestAddress(start), s))
                .map_err(|_| Error::InvalidConfig(format!("RAM size {size:#x} too large")))
        })
        .collect()
}

/// Anonymous (private) guest RAM of `ram_size` bytes laid out by [`ram_ranges`].
pub fn anonymous_ram(ram_size: u64) -> Result<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&checked_ranges(ram_size)?).map_err(Error::MemoryCreate)
}

/// Guest RAM backed by the file at `path` (created if missing, extended to `ram_size`),
/// mapped `MAP_SHARED` so its contents outlive the process: the file offset of each
/// range equals its position in RAM (low RAM first, then high RAM).
pub fn file_backed_ram(path: &Path, ram_size: u64) -> Result<GuestMemoryMmap> {
    let ranges = checked_ranges(ram_size)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("cannot open RAM file {}", path.display()),
            source,
        })?;
    let len = file.metadata().map_err(|source| Error::Io {
        what: format!("cannot stat RAM file {}", path.display()),
        source,
    })?;
    if len.len() < ram_size {
        file.set_len(ram_size).map_err(|source| Error::Io {
            what: format!("cannot size RAM file {}", path.display()),
            source,
        })?;
    }
    let mut offset = 0u64;
    let mut with_files = Vec::with_capacity(ranges.len());
    for (addr, size) in ranges {
        let fo = FileOffset::new(
            file.try_clone().map_err(|source| Error::Io {
                what: "cannot dup RAM file".into(),
                source,
            })?,
            offset,
        );
        with_files.push((addr, size, Some(fo)));
        offset += size as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(&with_files).map_err(Error::MemoryCreate)
}

/// The [`RamRegion`]s of a vm-memory guest memory.
pub fn ram_regions_of(mem: &GuestMemoryMmap) -> Vec<RamRegion> {
    mem.iter()
        .map(|r| RamRegion {
            guest_addr: r.start_addr().0,
            size: r.len(),
            host_addr: r.as_ptr() as u64,
        })
        .collect()
}

/// Total RAM bytes and the highest guest-physical address + 1.
pub fn ram_size_and_top(regions: &[RamRegion]) -> (u64, u64) {
    let size = regions.iter().map(|r| r.size).sum();
    let top = regions
        .iter()
        .map(|r| r.guest_addr + r.size)
        .max()
        .unwrap_or(0);
    (size, top)
}

/// Register guest RAM with KVM, one memslot per region (slot = index).
///
/// Call this **before** `create_irq_chip`: on this host a memslot added after the
/// irqchip costs 4–8 ms instead of ~0.1 ms (host-kvm.md §6).
///
/// # Safety
///
/// Every region's `host_addr..host_addr + size` must be a readable and writable mapping
/// that stays mapped for as long as `vm` exists.
pub unsafe fn register_ram(vm: &VmFd, regions: &[RamRegion]) -> Result<()> {
    for (slot, r) in regions.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot)
                .map_err(|_| Error::InvalidConfig("too many RAM regions".into()))?,
            flags: 0,
            guest_phys_addr: r.guest_addr,
            memory_size: r.size,
            userspace_addr: r.host_addr,
        };
        // SAFETY: the caller guarantees that the host range is a valid mapping that
        // outlives the VM (this function's safety contract).
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| Error::Kvm {
            op: "KVM_SET_USER_MEMORY_REGION",
            source,
        })?;
    }
    Ok(())
}
