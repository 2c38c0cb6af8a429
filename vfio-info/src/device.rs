//! VFIO devices as this crate sees them: a name, a migration capability and
//! a byte counter.
//!
//! QEMU walks its global `vfio_group_list` (later the container and device
//! lists) from `vfio_mig_active()` and keeps one global byte counter for
//! `vfio_mig_bytes_transferred()`. Here the VMM owns the devices and hands
//! them in, either as a slice of trait objects or as a [`VfioDevices`] set.
//!
//! No type in this crate opens `/dev/vfio/*` yet; see the crate docs.

use std::fmt;

/// One VFIO device, as far as migration statistics and the cpr-reboot rule
/// need to know it.
///
/// All methods are required: a device that forgets to say whether it
/// supports migration must not silently count as migratable.
pub trait VfioDevice {
    /// The device's name, e.g. its PCI address or QOM id.
    fn name(&self) -> &str;

    /// Whether the device can migrate its state. QEMU's equivalent is
    /// "no `migration_blocker` set on the `VFIODevice`", which holds when the
    /// kernel driver offers `VFIO_DEVICE_FEATURE_MIGRATION`.
    fn supports_migration(&self) -> bool;

    /// Bytes of device state this device has sent in the current migration.
    fn bytes_transferred(&self) -> u64;
}

/// QEMU's `vfio_mig_active()`: at least one VFIO device is present and every
/// one of them supports migration.
pub fn vfio_mig_active(devices: &[&dyn VfioDevice]) -> bool {
    !devices.is_empty() && devices.iter().all(|d| d.supports_migration())
}

/// QEMU's `vfio_mig_bytes_transferred()`: the bytes sent by all VFIO devices.
///
/// Saturates at `u64::MAX` rather than wrapping; no real device gets near it.
pub fn vfio_mig_bytes_transferred(devices: &[&dyn VfioDevice]) -> u64 {
    devices
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(d.bytes_transferred()))
}

/// The VFIO devices of one VM, owned by the VMM and passed to
/// [`populate_vfio_info`](crate::populate_vfio_info) and
/// [`check_cpr_reboot`](crate::check_cpr_reboot) through
/// [`as_refs`](Self::as_refs).
///
/// Devices are `Send + Sync` so the set can be read from a migration thread
/// while the main loop owns the VM, as in QEMU.
#[derive(Default)]
pub struct VfioDevices {
    devices: Vec<Box<dyn VfioDevice + Send + Sync>>,
}

impl VfioDevices {
    /// An empty set: a VM without VFIO devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device (QEMU: realizing a `vfio-pci` device adds it to the
    /// global lists).
    pub fn add(&mut self, device: Box<dyn VfioDevice + Send + Sync>) {
        self.devices.push(device);
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the VM has no VFIO device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices as the slice of trait objects the free functions take.
    pub fn as_refs(&self) -> Vec<&dyn VfioDevice> {
        self.devices
            .iter()
            .map(|d| d.as_ref() as &dyn VfioDevice)
            .collect()
    }
}

impl fmt::Debug for VfioDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|d| d.name()))
            .finish()
    }
}
