//! The VFIO test double behind the hidden `--x-vfio-test-device` flag: the `cpr` library
//! takes VFIO devices from its caller, and only this binary adds one that is not there.

/// A VFIO device that exists only for tests (`--x-vfio-test-device`): no real device can
/// be bound yet, but the cpr-reboot VFIO rule must be exercised end to end.
#[derive(Debug)]
pub(crate) struct TestVfioDevice {
    pub(crate) name: String,
}

impl cpr_vfio_info::VfioDevice for TestVfioDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn supports_migration(&self) -> bool {
        true
    }

    fn bytes_transferred(&self) -> u64 {
        0
    }
}
