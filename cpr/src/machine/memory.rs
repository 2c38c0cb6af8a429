//! Guest RAM as KVM sees it: the crate `cpr-memory` maps it (one `pc.ram` block seen
//! through its below-4G/above-4G windows); the KVM side only needs [`RamRegion`]s (guest
//! address, host address, size), see [`register_ram`].

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{Error, Result};

/// One contiguous piece of guest RAM as KVM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RamRegion {
    /// Guest-physical start address.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the mapping.
    pub host_addr: u64,
}

/// The [`RamRegion`]s of a vm-memory guest memory.
pub(crate) fn ram_regions_of(mem: &GuestMemoryMmap) -> Vec<RamRegion> {
    mem.iter()
        .map(|r| RamRegion {
            guest_addr: r.start_addr().0,
            size: r.len(),
            host_addr: r.as_ptr() as u64,
        })
        .collect()
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
pub(crate) unsafe fn register_ram(vm: &VmFd, regions: &[RamRegion]) -> Result<()> {
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
