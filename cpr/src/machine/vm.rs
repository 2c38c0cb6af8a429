//! VM creation (memory first, then the in-kernel irqchip and PIT) and the per-VM KVM
//! state ([`KvmVmState`]): PIC master/slave, IOAPIC, PIT and kvmclock.

use cpr_memory::Memslot;
use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use super::error::{Error, Result};
use super::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use super::memory::register_ram;
use super::vcpu_state::XSAVE_WORDS;

/// The VM-wide in-kernel device state.
#[derive(Clone, Copy)]
pub struct KvmVmState {
    /// Master 8259 PIC (`KVM_GET_IRQCHIP` chip 0).
    pub pic_master: kvm_irqchip,
    /// Slave 8259 PIC (chip 1).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// i8254 PIT (`KVM_GET_PIT2`).
    pub pit: kvm_pit_state2,
    /// kvmclock (`KVM_GET_CLOCK`).
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for KvmVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

/// Create a VM over `ram`: memslots first (cheap before the irqchip exists on this host),
/// then TSS and identity-map addresses, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and
/// the PIT.
///
/// # Safety
///
/// The host ranges of `ram` must stay mapped read/write for as long as the VM exists.
pub(crate) unsafe fn create_vm(kvm: &Kvm, ram: &[Memslot]) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let xsave_size = vm.check_extension_int(Cap::Xsave2);
    if usize::try_from(xsave_size).unwrap_or(usize::MAX) > XSAVE_WORDS * 4 {
        return Err(Error::StateMismatch(format!(
            "KVM_CAP_XSAVE2 asks for {xsave_size} bytes; this VMM saves 4096"
        )));
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { register_ram(&vm, ram) }?;
    vm.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or(0))
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Capture the VM state (vCPUs must be paused).
pub(crate) fn capture_vm(vm: &VmFd) -> Result<KvmVmState> {
    Ok(KvmVmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
    })
}

/// Restore the VM state into a new VM (after its vCPUs are restored, before they run).
pub(crate) fn restore_vm(vm: &VmFd, state: &KvmVmState) -> Result<()> {
    // irqchips first: the PIT's output goes through them.
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    // kvmclock last, right before the vCPUs may run (Cloud Hypervisor #7932: vCPUs that
    // run before KVM_SET_CLOCK see a clock jump). The flags are cleared as Firecracker
    // does without `clock_realtime`: this host reports flags = 0 anyway (no TSC_STABLE,
    // no REALTIME), so guest time simply stops while the VM is down.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    Ok(())
}

use super::persist::kvm_struct_section;

kvm_struct_section!(
    /// An 8259 PIC as a savevm section: `i8259`, instance 0 (master) or 1 (slave); the raw
    /// `kvm_irqchip` (chip id + `kvm_pic_state`).
    PicSection,
    "i8259",
    "irqchip",
    kvm_irqchip
);
kvm_struct_section!(
    /// The IOAPIC as a savevm section: `ioapic`, instance 0; the raw `kvm_irqchip`.
    IoapicSection,
    "ioapic",
    "irqchip",
    kvm_irqchip
);
kvm_struct_section!(
    /// The i8254 PIT as a savevm section: `i8254`, instance 0; the raw `kvm_pit_state2`.
    PitSection,
    "i8254",
    "pit_state2",
    kvm_pit_state2
);
kvm_struct_section!(
    /// kvmclock as a savevm section: `kvmclock`, instance 0; the raw `kvm_clock_data`.
    KvmClockSection,
    "kvmclock",
    "clock_data",
    kvm_clock_data
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::persist::tests::round_trip;
    use zerocopy::IntoBytes;

    #[test]
    fn vm_sections_round_trip_byte_for_byte() {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        chip.as_mut_bytes()[100] = 0x5a;
        let back = round_trip(&mut IoapicSection(chip));
        assert_eq!(back.0.as_bytes(), chip.as_bytes());
        let back = round_trip(&mut PicSection(chip));
        assert_eq!(back.0.as_bytes(), chip.as_bytes());

        let mut pit = kvm_pit_state2::default();
        pit.channels[0].count = 1193;
        pit.flags = 1;
        let back = round_trip(&mut PitSection(pit));
        assert_eq!(back.0.as_bytes(), pit.as_bytes());

        let clock = kvm_clock_data {
            clock: 123_456_789,
            flags: 2,
            ..Default::default()
        };
        let back = round_trip(&mut KvmClockSection(clock));
        assert_eq!(back.0.clock, 123_456_789);
        assert_eq!(back.0.flags, 2);
    }
}
