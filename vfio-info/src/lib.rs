//! VFIO statistics for `query-migrate` and the VFIO rule for cpr-reboot.
//!
//! Mirrors patch 2 of QEMU's "Live Update" V7 series (Steve Sistare,
//! Dec 2021), **"migration: fix populate_vfio_info"**, which touches
//! `migration/target.c`, plus the QAPI types that function fills
//! (`qapi/migration.json`) and one later mainline rule from
//! `hw/vfio/cpr.c`.
//!
//! # The bug and the fix
//!
//! `migration/target.c` is compiled once per target and guards its VFIO code
//! with `#ifdef CONFIG_VFIO`. `CONFIG_VFIO` is a per-target *device* symbol:
//! it is defined in the generated header whose name the `CONFIG_DEVICES`
//! macro holds, and `target.c` never included that header. The guard was
//! therefore always false, `populate_vfio_info()` was always the empty
//! function, and `query-migrate` never carried `vfio` (nor did HMP
//! `info migrate` print its VFIO line), even while VFIO devices were
//! migrating. The fix adds `#include CONFIG_DEVICES`. V7 also reshaped the
//! file into one `#ifdef CONFIG_VFIO` (the real function) `#else` (an empty
//! stub) `#endif`.
//!
//! The real function: if `vfio_mig_active()` (at least one VFIO device, and
//! all of them support migration), set `vfio` to a `VfioStats` whose
//! `transferred` is `vfio_mig_bytes_transferred()`.
//!
//! # QAPI
//!
//! `VfioStats` (since 5.2) has one member, `transferred` (bytes).
//! `MigrationInfo` has the optional member `*vfio`, "only returned if VFIO
//! device is present, migration is supported by all VFIO devices and status
//! is 'active' or 'completed'". HMP prints it as
//! `vfio device transferred: <kbytes> kbytes`, with kbytes = bytes `>> 10`.
//! [`VfioStats`] is in this crate, with QAPI names; `MigrationInfo` (and its
//! `MigrationStatus`, `MigrationStats`) belong to the VMM that answers `query-migrate`
//! (`cpr::vmm`): [`populate_vfio_info`] returns the `vfio` member for it to store.
//!
//! # Mainline history
//!
//! The V7 series was not merged as such. Reviewers asked why the whole file
//! was rewritten, and the fix was split out. It landed in QEMU 8.0 as a
//! one-line change (the include, plus dropping `has_vfio` after the QAPI
//! `has_` cleanup) in Juan Quintela's migration pull of 16 March 2023,
//! `Fixes: 43bd0bf30f ("migration: Move populate_vfio_info() into a
//! separate file")`. Mainline `target.c` later gained a
//! `reset_vfio_bytes_transferred()` pair, and both functions took a
//! `migration_` prefix.
//!
//! # How this crate mirrors it
//!
//! In Cargo, `#ifdef CONFIG_VFIO` becomes the `vfio` feature of this crate:
//! [`populate_vfio_info`] is the real function with `--features vfio` and the
//! empty stub without it, and [`VFIO_COMPILED_IN`] says which one was built.
//! The header QEMU forgot to include becomes *feature forwarding*: the `cpr`
//! crate's own `vfio` feature must forward to `cpr-vfio-info/vfio`, and so
//! does the `tests` crate's. The bug in Cargo terms is a crate that declares
//! `vfio = []` without forwarding it: building that crate with
//! `--features vfio` compiles, runs and never reports `vfio`, exactly like
//! the C code. The `tests` crate checks that its feature reaches this crate
//! by comparing [`VFIO_COMPILED_IN`] with its own `cfg!(feature = "vfio")`.
//!
//! As in QEMU, [`populate_vfio_info`] does not look at the migration status:
//! its caller (QEMU's `fill_source_migration_info`) calls it only for the
//! statuses that report statistics (`active`, the postcopy and switchover
//! ones, and `completed`), on a freshly built `MigrationInfo`.
//!
//! # The later cpr-reboot rule
//!
//! QEMU 9.0 ("allow cpr-reboot for vfio", 2024) lets a VM with VFIO devices
//! use `cpr-reboot` mode only if the guest is suspended, because then the
//! guest drivers have quiesced the devices and will reinitialise them, so no
//! device state needs to be carried. Each VFIO container registers a
//! cpr-reboot notifier that fails at precopy setup unless the runstate is
//! `suspended` or the VM was suspended before being stopped
//! (`vm_get_suspended()`). [`check_cpr_reboot`] is that rule.
//!
//! In QEMU that notifier only exists where VFIO is compiled in. But without
//! VFIO compiled in, QEMU cannot have VFIO devices either, so "compiled out"
//! and "no devices" agree there. In this crate the device list comes from
//! the VMM, whatever the features, so [`check_cpr_reboot`] does **not**
//! depend on the `vfio` feature: it decides from the devices it is given.
//! The feature only controls *reporting*, and a missing forward must not be
//! able to switch off a safety check.
//!
//! # No real VFIO device yet
//!
//! Nothing here binds a real device. Opening the VFIO container, group and
//! device file descriptors, querying `VFIO_DEVICE_FEATURE_MIGRATION` and
//! counting the bytes of a real migration data stream is **not implemented
//! yet**. The machines this project runs on have no `/dev/vfio`. Devices are
//! whatever implements [`VfioDevice`], and the tests use a test double.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod device;
mod qapi;

pub use device::{VfioDevice, VfioDevices, vfio_mig_active, vfio_mig_bytes_transferred};
pub use qapi::VfioStats;

/// Whether the real [`populate_vfio_info`] was compiled in (this crate's
/// `vfio` feature), i.e. QEMU's `CONFIG_VFIO` as `target.c` sees it.
pub const VFIO_COMPILED_IN: bool = cfg!(feature = "vfio");

/// Errors from this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// cpr-reboot was requested with VFIO devices present while the guest
    /// was neither suspended nor stopped from `suspended`.
    #[error("VFIO device only supports cpr-reboot for runstate suspended")]
    CprRebootNotSuspended {
        /// Names of the VFIO devices that were present.
        devices: Vec<String>,
    },
}

/// QEMU's `populate_vfio_info()`, built with the `vfio` feature: if
/// [`vfio_mig_active`], the `vfio` member of `query-migrate`'s `MigrationInfo`: the
/// bytes all devices have sent. The caller stores it (QEMU's function sets
/// `info->vfio`; the `MigrationInfo` type belongs to the VMM here).
#[cfg(feature = "vfio")]
pub fn populate_vfio_info(devices: &[&dyn VfioDevice]) -> Option<VfioStats> {
    vfio_mig_active(devices).then(|| VfioStats {
        transferred: vfio_mig_bytes_transferred(devices),
    })
}

/// QEMU's `populate_vfio_info()` stub, built without the `vfio` feature: it
/// returns nothing, so `query-migrate` never carries `vfio`.
///
/// This is what every QEMU build ran before the fix. Build with
/// `--features vfio` (or a forwarding feature) for the real function.
#[cfg(not(feature = "vfio"))]
pub fn populate_vfio_info(_devices: &[&dyn VfioDevice]) -> Option<VfioStats> {
    None
}

/// The mainline (QEMU 9.0) cpr-reboot rule for VFIO: with at least one VFIO
/// device present, cpr-reboot is refused unless `guest_suspended`.
///
/// `guest_suspended` is QEMU's "runstate is `suspended`, or
/// `vm_get_suspended()`" (the VM was suspended when it was stopped). Call
/// this only for cpr-reboot mode, before anything is saved; the rule is the
/// same with or without the `vfio` feature (see the crate docs).
///
/// # Errors
///
/// [`Error::CprRebootNotSuspended`] if `devices` is not empty and the guest
/// is not suspended.
pub fn check_cpr_reboot(devices: &[&dyn VfioDevice], guest_suspended: bool) -> Result<(), Error> {
    if devices.is_empty() || guest_suspended {
        return Ok(());
    }
    Err(Error::CprRebootNotSuspended {
        devices: devices.iter().map(|d| d.name().to_owned()).collect(),
    })
}

/// The VFIO line of HMP `info migrate`, if `query-migrate` carried `vfio`:
/// `vfio device transferred: <kbytes> kbytes` (no trailing newline).
pub fn hmp_info_migrate_vfio(vfio: Option<&VfioStats>) -> Option<String> {
    vfio.map(VfioStats::hmp_line)
}

impl VfioDevices {
    /// [`populate_vfio_info`] over this set.
    pub fn populate_vfio_info(&self) -> Option<VfioStats> {
        populate_vfio_info(&self.as_refs())
    }

    /// [`check_cpr_reboot`] over this set.
    ///
    /// # Errors
    ///
    /// As [`check_cpr_reboot`].
    pub fn check_cpr_reboot(&self, guest_suspended: bool) -> Result<(), Error> {
        check_cpr_reboot(&self.as_refs(), guest_suspended)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A VFIO device without hardware.
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

    const NIC: FakeVfio = FakeVfio {
        name: "0000:01:00.0",
        migratable: true,
        bytes: 5 * 1024 * 1024 + 1023,
    };
    const GPU: FakeVfio = FakeVfio {
        name: "0000:02:00.0",
        migratable: true,
        bytes: 2048,
    };
    const OLD: FakeVfio = FakeVfio {
        name: "0000:03:00.0",
        migratable: false,
        bytes: 4096,
    };

    fn populated(devices: &[&dyn VfioDevice]) -> Option<VfioStats> {
        populate_vfio_info(devices)
    }

    /// What the real function gives, or `None` from the stub.
    fn expected(transferred: u64) -> Option<VfioStats> {
        if cfg!(feature = "vfio") {
            Some(VfioStats { transferred })
        } else {
            None
        }
    }

    /// The constant tells which `populate_vfio_info` was built.
    #[test]
    fn compiled_in_matches_the_function_built() {
        assert_eq!(populated(&[&NIC]).is_some(), VFIO_COMPILED_IN);
    }

    #[test]
    fn mig_active_needs_a_device_and_all_migratable() {
        assert!(!vfio_mig_active(&[]));
        assert!(vfio_mig_active(&[&NIC]));
        assert!(vfio_mig_active(&[&NIC, &GPU]));
        assert!(!vfio_mig_active(&[&OLD]));
        assert!(!vfio_mig_active(&[&NIC, &OLD]));
        assert!(!vfio_mig_active(&[&OLD, &NIC]));
    }

    #[test]
    fn bytes_transferred_sums_and_saturates() {
        assert_eq!(vfio_mig_bytes_transferred(&[]), 0);
        assert_eq!(vfio_mig_bytes_transferred(&[&NIC, &GPU]), NIC.bytes + 2048);
        let huge = FakeVfio {
            name: "huge",
            migratable: true,
            bytes: u64::MAX - 1,
        };
        assert_eq!(vfio_mig_bytes_transferred(&[&huge, &GPU]), u64::MAX);
    }

    #[test]
    fn populate_without_devices_leaves_vfio_absent() {
        assert_eq!(populated(&[]), None);
    }

    #[test]
    fn populate_one_migratable_device() {
        #[cfg(feature = "vfio")]
        assert_eq!(
            populated(&[&NIC]),
            Some(VfioStats {
                transferred: 5 * 1024 * 1024 + 1023
            })
        );
        #[cfg(not(feature = "vfio"))]
        assert_eq!(populated(&[&NIC]), None);
    }

    #[test]
    fn populate_sums_all_devices() {
        assert_eq!(populated(&[&NIC, &GPU]), expected(NIC.bytes + 2048));
    }

    #[test]
    fn populate_with_a_non_migratable_device_leaves_vfio_absent() {
        assert_eq!(populated(&[&OLD]), None);
        assert_eq!(populated(&[&NIC, &OLD]), None);
    }

    #[test]
    fn device_set_matches_slice_functions() {
        let mut set = VfioDevices::new();
        assert!(set.is_empty());
        assert_eq!(set.populate_vfio_info(), None);
        assert_eq!(set.check_cpr_reboot(false), Ok(()));

        set.add(Box::new(NIC));
        set.add(Box::new(GPU));
        assert_eq!(set.len(), 2);
        assert_eq!(format!("{set:?}"), r#"["0000:01:00.0", "0000:02:00.0"]"#);
        assert_eq!(set.populate_vfio_info(), expected(NIC.bytes + 2048));
        assert_eq!(set.populate_vfio_info(), populated(&[&NIC, &GPU]));
        assert_eq!(
            set.check_cpr_reboot(false),
            Err(Error::CprRebootNotSuspended {
                devices: vec!["0000:01:00.0".into(), "0000:02:00.0".into()],
            })
        );
        assert_eq!(set.check_cpr_reboot(true), Ok(()));
    }

    #[test]
    fn json_vfio_stats() {
        let v = serde_json::to_value(VfioStats { transferred: 2048 }).unwrap();
        assert_eq!(v, json!({ "transferred": 2048 }));
        let back: VfioStats = serde_json::from_value(v).unwrap();
        assert_eq!(back, VfioStats { transferred: 2048 });
    }

    #[test]
    fn hmp_line_in_kbytes() {
        let line = |transferred| VfioStats { transferred }.hmp_line();
        assert_eq!(line(0), "vfio device transferred: 0 kbytes");
        assert_eq!(line(1023), "vfio device transferred: 0 kbytes");
        assert_eq!(line(1024), "vfio device transferred: 1 kbytes");
        assert_eq!(
            line(5 * 1024 * 1024 + 1023),
            "vfio device transferred: 5120 kbytes"
        );
        assert_eq!(
            line(u64::MAX),
            "vfio device transferred: 18014398509481983 kbytes"
        );
    }

    #[test]
    fn hmp_info_migrate_prints_vfio_only_when_present() {
        assert_eq!(hmp_info_migrate_vfio(None), None);
        #[cfg(feature = "vfio")]
        assert_eq!(
            hmp_info_migrate_vfio(populated(&[&NIC]).as_ref()).as_deref(),
            Some("vfio device transferred: 5120 kbytes")
        );
        #[cfg(not(feature = "vfio"))]
        assert_eq!(hmp_info_migrate_vfio(populated(&[&NIC]).as_ref()), None);
    }

    /// The rule is the same in both builds, so no `cfg` here.
    #[test]
    fn cpr_reboot_matrix() {
        const MSG: &str = "VFIO device only supports cpr-reboot for runstate suspended";
        let cases: [(&[&dyn VfioDevice], bool, bool); 8] = [
            (&[], false, true),
            (&[], true, true),
            (&[&NIC], false, false),
            (&[&NIC], true, true),
            (&[&OLD], false, false),
            (&[&OLD], true, true),
            (&[&NIC, &OLD], false, false),
            (&[&NIC, &OLD], true, true),
        ];
        for (devices, suspended, ok) in cases {
            let result = check_cpr_reboot(devices, suspended);
            if ok {
                assert_eq!(result, Ok(()), "{} devices, {suspended}", devices.len());
            } else {
                let err = result.expect_err("refused");
                assert_eq!(err.to_string(), MSG);
                let Error::CprRebootNotSuspended { devices: names } = err;
                let want: Vec<String> = devices.iter().map(|d| d.name().to_owned()).collect();
                assert_eq!(names, want);
            }
        }
    }
}
