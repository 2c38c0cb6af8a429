//! Guest RAM as KVM sees it: the crate `cpr-memory` maps it (one `pc.ram` block seen
//! through its below-4G/above-4G windows); the KVM side only needs its
//! [`Memslot`]s (guest address, host address, size), see [`register_ram`].

use cpr_memory::Memslot;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{Error, Result};

/// The [`Memslot`]s of a vm-memory guest memory (as [`cpr_memory::GuestRam::memslots`]
/// gives them for the memory it maps).
pub(crate) fn memslots_of(mem: &GuestMemoryMmap) -> Vec<Memslot> {
    mem.iter()
        .map(|r| Memslot {
            guest_addr: r.start_addr(),
            size: r.len(),
            host_addr: r.as_ptr() as u64,
        })
        .collect()
}

/// Register guest RAM with KVM, one memslot per region (slot = index).
///
/// Call this **before** `create_irq_chip`: on this host a memslot added after the
/// irqchip costs 4–8 ms instead of ~0.1 ms (`docs/HOST-KVM.md`).
///
/// # Safety
///
/// Every region's `host_addr..host_addr + size` must be a readable and writable mapping
/// that stays mapped for as long as `vm` exists.
pub(crate) unsafe fn register_ram(vm: &VmFd, regions: &[Memslot]) -> Result<()> {
    for (slot, r) in regions.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: u32::try_from(slot)
                .map_err(|_| Error::InvalidConfig("too many RAM regions".into()))?,
            flags: 0,
            guest_phys_addr: r.guest_addr.0,
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
