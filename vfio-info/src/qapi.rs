//! The QAPI type patch 2 fills: `VfioStats` (QEMU's `qapi/migration.json`), the `vfio`
//! member of `query-migrate`'s `MigrationInfo` (which the VMM owns: `cpr::vmm`).
//!
//! [`VfioStats::transferred`] is a `u64`, as in QEMU's own
//! `vfio_mig_bytes_transferred()`.

use serde::{Deserialize, Serialize};

/// QAPI `VfioStats` (since 5.2): migration statistics of the VFIO devices.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VfioStats {
    /// `transferred`: bytes sent to the target by VFIO devices.
    pub transferred: u64,
}

impl VfioStats {
    /// [`transferred`](Self::transferred) in KiB, rounded down (`>> 10`), as
    /// HMP prints it.
    pub const fn kbytes(&self) -> u64 {
        self.transferred >> 10
    }

    /// The HMP `info migrate` line, without the trailing newline:
    /// `vfio device transferred: <kbytes> kbytes`.
    pub fn hmp_line(&self) -> String {
        format!("vfio device transferred: {} kbytes", self.kbytes())
    }
}
