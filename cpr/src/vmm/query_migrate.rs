//! The `query-migrate` result types, with QAPI member names (what `cpr::vmm` reports;
//! the `vfio` member's [`VfioStats`] is patch 2's, in `cpr-vfio-info`).
//!
//! Mirrors the `MigrationStatus`, `MigrationStats`, `VfioStats` and
//! `MigrationInfo` definitions in QEMU's `qapi/migration.json`. Serialising a
//! [`MigrationInfo`] with serde gives the object QMP returns in
//! `{"return": ...}`: member names are QAPI's kebab-case names, and optional
//! (`*name`) members are left out when they are `None`.
//!
//! Integer members that QAPI types as `int` (int64) are `u64` here: they are
//! byte counts, page counts and millisecond durations that a VMM never makes
//! negative, and [`VfioStats::transferred`] is a `u64` in QEMU's own
//! `vfio_mig_bytes_transferred()` too.
//!
//! Only the members a reboot-mode VMM can fill honestly are present. The
//! others are omitted from the Rust type altogether, which serialises exactly
//! as QEMU does when it leaves them out:
//!
//! | member | why it is not here |
//! | --- | --- |
//! | `xbzrle-cache` | no XBZRLE: cpr-reboot does not iterate over RAM |
//! | `expected-downtime` | only meaningful while a live precopy is iterating |
//! | `cpu-throttle-percentage`, `dirty-limit-*` | no auto-converge or dirty limit |
//! | `postcopy-blocktime`, `postcopy-vcpu-blocktime` | no postcopy |
//! | `socket-address` | the stream goes to a file, not a TCP socket |
//! | `disk` | block migration, deprecated in 8.2 and since removed |

use std::fmt;

use serde::{Deserialize, Serialize};

use cpr_vfio_info::VfioStats;

/// QAPI `MigrationStatus` (since 2.3): where a migration is in its life.
///
/// Serialised in QAPI's kebab-case, e.g. [`MigrationStatus::PostcopyActive`]
/// is `"postcopy-active"`. [`Display`](fmt::Display) prints the same name,
/// which is what HMP `info migrate` shows after `Migration status: `.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// `none`: no migration has ever happened.
    #[default]
    None,
    /// `setup`: the migration has been initiated.
    Setup,
    /// `cancelling`: the migration is being cancelled.
    Cancelling,
    /// `cancelled`: cancelling has finished.
    Cancelled,
    /// `active`: the migration is in progress.
    Active,
    /// `postcopy-active`: like `active`, but in postcopy mode (since 2.5).
    PostcopyActive,
    /// `postcopy-paused`: postcopy, but paused (since 3.0).
    PostcopyPaused,
    /// `postcopy-recover-setup`: setting up a postcopy recovery (since 9.1).
    PostcopyRecoverSetup,
    /// `postcopy-recover`: recovering from a paused postcopy (since 3.0).
    PostcopyRecover,
    /// `completed`: the migration has finished.
    Completed,
    /// `failed`: an error occurred during the migration.
    Failed,
    /// `colo`: COLO fault tolerance is running (since 2.8).
    Colo,
    /// `pre-switchover`: paused before device serialisation (since 2.11).
    PreSwitchover,
    /// `device`: serialising devices after `pre-switchover` (since 2.11).
    Device,
    /// `wait-unplug`: waiting for the guest to unplug devices (since 4.2).
    WaitUnplug,
}

impl MigrationStatus {
    /// Every status, in the order `qapi/migration.json` declares them.
    pub const ALL: [Self; 15] = [
        Self::None,
        Self::Setup,
        Self::Cancelling,
        Self::Cancelled,
        Self::Active,
        Self::PostcopyActive,
        Self::PostcopyPaused,
        Self::PostcopyRecoverSetup,
        Self::PostcopyRecover,
        Self::Completed,
        Self::Failed,
        Self::Colo,
        Self::PreSwitchover,
        Self::Device,
        Self::WaitUnplug,
    ];

    /// The QAPI name, e.g. `"postcopy-active"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Active => "active",
            Self::PostcopyActive => "postcopy-active",
            Self::PostcopyPaused => "postcopy-paused",
            Self::PostcopyRecoverSetup => "postcopy-recover-setup",
            Self::PostcopyRecover => "postcopy-recover",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Colo => "colo",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::WaitUnplug => "wait-unplug",
        }
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QAPI `MigrationStats` (since 0.14): RAM statistics, the `ram` member.
///
/// Every member is mandatory in QAPI, so every one is serialised. In
/// cpr-reboot mode with shared, file-backed guest RAM and `x-ignore-shared`,
/// RAM is not copied, so most of these stay zero; they are still reported,
/// as QEMU does.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationStats {
    /// `transferred`: bytes already sent to the target.
    pub transferred: u64,
    /// `remaining`: bytes still to send.
    pub remaining: u64,
    /// `total`: bytes involved in the migration.
    pub total: u64,
    /// `duplicate`: number of duplicate (zero) pages (since 1.2).
    pub duplicate: u64,
    /// `normal`: number of normal pages (since 1.2).
    pub normal: u64,
    /// `normal-bytes`: bytes of normal pages sent (since 1.2).
    pub normal_bytes: u64,
    /// `dirty-pages-rate`: pages dirtied per second by the guest (since 1.3).
    pub dirty_pages_rate: u64,
    /// `mbps`: throughput in megabits per second (since 1.6).
    pub mbps: f64,
    /// `dirty-sync-count`: times dirty RAM was synchronised (since 2.1).
    pub dirty_sync_count: u64,
    /// `postcopy-requests`: page requests from the destination (since 2.7).
    pub postcopy_requests: u64,
    /// `page-size`: bytes per page for the page counts (since 2.10).
    pub page_size: u64,
    /// `multifd-bytes`: bytes sent through multifd (since 3.0).
    pub multifd_bytes: u64,
    /// `pages-per-second`: pages transferred per second (since 4.0).
    pub pages_per_second: u64,
    /// `precopy-bytes`: bytes sent in the precopy phase (since 7.0).
    pub precopy_bytes: u64,
    /// `downtime-bytes`: bytes sent while the guest was paused (since 7.0).
    pub downtime_bytes: u64,
    /// `postcopy-bytes`: bytes sent during postcopy (since 7.0).
    pub postcopy_bytes: u64,
    /// `dirty-sync-missed-zero-copy`: dirty syncs that could not avoid
    /// copying (since 7.1).
    pub dirty_sync_missed_zero_copy: u64,
}

/// QAPI `MigrationInfo` (since 0.14): the result of `query-migrate`.
///
/// [`MigrationInfo::default()`] is the "no migration has ever happened"
/// answer, which serialises to `{}`; [`MigrationInfo::new`] sets the status.
/// The fields are public so a caller can use struct-update syntax:
///
/// ```
/// use cpr::vmm::{MigrationInfo, MigrationStatus};
///
/// let info = MigrationInfo {
///     total_time: Some(42),
///     downtime: Some(40),
///     setup_time: Some(1),
///     ..MigrationInfo::new(MigrationStatus::Completed)
/// };
/// assert_eq!(info.status, Some(MigrationStatus::Completed));
/// assert_eq!(info.vfio, None);
/// ```
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `status`; absent if no migration has been initiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// `ram`: RAM statistics, only while `active` or once `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// `vfio` (since 5.2): only when a VFIO device is present, all VFIO
    /// devices support migration, and status is `active` or `completed`.
    /// Filled from [`cpr_vfio_info::populate_vfio_info`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<VfioStats>,
    /// `total-time`: milliseconds since the migration started, or its total
    /// duration once it has ended (since 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// `downtime`: milliseconds the guest was stopped; only once the
    /// migration has completed (since 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// `setup-time`: milliseconds between the command and the first
    /// iteration (since 1.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// `error-desc`: human-readable error of a `failed` migration (since 2.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// `blocked-reasons`: present and non-empty when outgoing migration is
    /// blocked (since 6.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
}

impl MigrationInfo {
    /// A result with only `status` set.
    pub fn new(status: MigrationStatus) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_before_any_migration_is_empty_object() {
        let v = serde_json::to_value(MigrationInfo::default()).unwrap();
        assert_eq!(v, json!({}));
    }

    #[test]
    fn json_status_only() {
        let v = serde_json::to_value(MigrationInfo::new(MigrationStatus::Failed)).unwrap();
        assert_eq!(v, json!({ "status": "failed" }));
    }

    #[test]
    fn json_completed_with_every_member() {
        let info = MigrationInfo {
            ram: Some(MigrationStats {
                transferred: 123,
                total: 246,
                page_size: 4096,
                mbps: 1.5,
                ..MigrationStats::default()
            }),
            vfio: Some(VfioStats { transferred: 2048 }),
            total_time: Some(12345),
            downtime: Some(12),
            setup_time: Some(3),
            error_desc: Some("oops".into()),
            blocked_reasons: Some(vec!["a blocker".into()]),
            ..MigrationInfo::new(MigrationStatus::Completed)
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(
            v,
            json!({
                "status": "completed",
                "ram": {
                    "transferred": 123,
                    "remaining": 0,
                    "total": 246,
                    "duplicate": 0,
                    "normal": 0,
                    "normal-bytes": 0,
                    "dirty-pages-rate": 0,
                    "mbps": 1.5,
                    "dirty-sync-count": 0,
                    "postcopy-requests": 0,
                    "page-size": 4096,
                    "multifd-bytes": 0,
                    "pages-per-second": 0,
                    "precopy-bytes": 0,
                    "downtime-bytes": 0,
                    "postcopy-bytes": 0,
                    "dirty-sync-missed-zero-copy": 0
                },
                "vfio": { "transferred": 2048 },
                "total-time": 12345,
                "downtime": 12,
                "setup-time": 3,
                "error-desc": "oops",
                "blocked-reasons": ["a blocker"]
            })
        );
        let back: MigrationInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn json_status_is_kebab_case() {
        for status in MigrationStatus::ALL {
            let v = serde_json::to_value(status).unwrap();
            assert_eq!(v, json!(status.as_str()));
            assert_eq!(status.to_string(), status.as_str());
            let back: MigrationStatus = serde_json::from_value(v).unwrap();
            assert_eq!(back, status);
        }
        assert_eq!(
            serde_json::to_value(MigrationStatus::PostcopyRecoverSetup).unwrap(),
            json!("postcopy-recover-setup")
        );
        assert_eq!(
            serde_json::to_value(MigrationStatus::WaitUnplug).unwrap(),
            json!("wait-unplug")
        );
        assert_eq!(
            serde_json::to_value(MigrationStatus::PreSwitchover).unwrap(),
            json!("pre-switchover")
        );
        assert_eq!(MigrationStatus::default(), MigrationStatus::None);
    }

    #[test]
    fn json_parses_qemu_reply_and_ignores_unknown_members() {
        let text = r#"{"status": "active", "total-time": 5, "expected-downtime": 300,
                       "vfio": {"transferred": 1024}}"#;
        let info: MigrationInfo = serde_json::from_str(text).unwrap();
        assert_eq!(
            info,
            MigrationInfo {
                vfio: Some(VfioStats { transferred: 1024 }),
                total_time: Some(5),
                ..MigrationInfo::new(MigrationStatus::Active)
            }
        );
    }
}
