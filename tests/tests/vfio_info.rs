//! `query-migrate` carries `vfio` exactly when the `vfio` feature reaches
//! `cpr-vfio-info` (Live Update V7 patch 2, "migration: fix
//! populate_vfio_info").
//!
//! Run both ways:
//! `cargo test -p cpr-tests --test vfio_info` (no `vfio` member) and
//! `cargo test -p cpr-tests --features vfio --test vfio_info` (`vfio`
//! present). The first test is the Cargo form of the C bug: if this crate's
//! `vfio` feature stopped forwarding to `cpr-vfio-info/vfio`, the VMM would
//! silently run the stub, like QEMU without `#include CONFIG_DEVICES`.

use cpr::vmm::{MigrationInfo, MigrationStatus};
use cpr_vfio_info::{VFIO_COMPILED_IN, VfioDevice, VfioDevices, hmp_info_migrate_vfio};
use serde_json::json;

/// A VFIO device without hardware: no `/dev/vfio` on these machines.
struct FakeVfio {
    name: &'static str,
    migratable: bool,
    bytes: u64,
}

impl VfioDevice for FakeVfio {
    fn name(&self) -> &str {
        self.name
    }
    fn supports_migration(&self) -> bool {
        self.migratable
    }
    fn bytes_transferred(&self) -> u64 {
        self.bytes
    }
}

/// What `query-migrate` would send for a completed migration of a VM with
/// the given devices, wrapped in the QMP success envelope.
fn query_migrate(devices: &VfioDevices) -> serde_json::Value {
    let mut info = MigrationInfo {
        total_time: Some(250),
        downtime: Some(240),
        setup_time: Some(2),
        ..MigrationInfo::new(MigrationStatus::Completed)
    };
    info.vfio = devices.populate_vfio_info();
    json!({ "return": serde_json::to_value(&info).unwrap() })
}

#[test]
fn vfio_feature_is_forwarded() {
    assert_eq!(VFIO_COMPILED_IN, cfg!(feature = "vfio"));
}

#[test]
fn query_migrate_carries_vfio_only_with_feature() {
    let mut devices = VfioDevices::new();
    devices.add(Box::new(FakeVfio {
        name: "0000:01:00.0",
        migratable: true,
        bytes: 3 * 1024 * 1024,
    }));
    devices.add(Box::new(FakeVfio {
        name: "0000:02:00.0",
        migratable: true,
        bytes: 1024,
    }));

    let reply = query_migrate(&devices);

    #[cfg(feature = "vfio")]
    assert_eq!(
        reply,
        json!({ "return": {
            "status": "completed",
            "vfio": { "transferred": 3 * 1024 * 1024 + 1024 },
            "total-time": 250,
            "downtime": 240,
            "setup-time": 2
        }})
    );
    #[cfg(not(feature = "vfio"))]
    assert_eq!(
        reply,
        json!({ "return": {
            "status": "completed",
            "total-time": 250,
            "downtime": 240,
            "setup-time": 2
        }})
    );

    let info: MigrationInfo = serde_json::from_value(reply["return"].clone()).unwrap();
    let hmp = hmp_info_migrate_vfio(info.vfio.as_ref());
    #[cfg(feature = "vfio")]
    assert_eq!(hmp.as_deref(), Some("vfio device transferred: 3073 kbytes"));
    #[cfg(not(feature = "vfio"))]
    assert_eq!(hmp, None);
}

#[test]
fn query_migrate_omits_vfio_when_a_device_cannot_migrate() {
    let mut devices = VfioDevices::new();
    devices.add(Box::new(FakeVfio {
        name: "0000:01:00.0",
        migratable: true,
        bytes: 4096,
    }));
    devices.add(Box::new(FakeVfio {
        name: "0000:03:00.0",
        migratable: false,
        bytes: 0,
    }));
    let reply = query_migrate(&devices);
    assert_eq!(reply["return"].get("vfio"), None);
    assert_eq!(reply["return"]["status"], json!("completed"));
}

#[test]
fn query_migrate_without_vfio_devices_omits_vfio() {
    let reply = query_migrate(&VfioDevices::new());
    assert_eq!(reply["return"].get("vfio"), None);
}

#[test]
fn cpr_reboot_with_vfio_needs_suspended_guest_in_both_builds() {
    let mut devices = VfioDevices::new();
    assert_eq!(devices.check_cpr_reboot(false), Ok(()));
    devices.add(Box::new(FakeVfio {
        name: "0000:01:00.0",
        migratable: true,
        bytes: 0,
    }));
    let err = devices.check_cpr_reboot(false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VFIO device only supports cpr-reboot for runstate suspended"
    );
    assert_eq!(devices.check_cpr_reboot(true), Ok(()));
}
