//! The mainline QEMU interface to reboot mode (8.2+): `migrate-set-capabilities`,
//! `migrate-set-parameters {mode: cpr-reboot}`, `migrate file:...`, `--incoming defer` +
//! `migrate-incoming`, `query-migrate`, MIGRATION events (patch-series.md §12).
//!
//! It reaches the same machinery as V7's `cpr-save`/`cpr-load` (`cpr_ops.rs`): the same
//! checkpoint sections, the same parse-everything-first loader, the same machine restore.
//! What differs is what mainline differs in:
//!
//! * RAM: with `x-ignore-shared`, a shared file-backed block stays in place (no pages);
//!   any other block (anonymous, private, or shared without the capability) is **copied**
//!   into the file, page by page with bounded memory, zero pages left out. There is no
//!   volatile-RAM refusal here (mainline has none); the V7 commands keep V7's rule.
//! * Run states: the source goes `finish-migrate` → `postmigrate`; the destination starts in
//!   `inmigrate`. A suspended guest comes back as QEMU 9.0 brings it back: RESUME at load,
//!   run state `suspended`, and `system_wakeup` then gives WAKEUP.
//! * Statuses and events: `setup` → `active` → `completed` (or `failed`), a MIGRATION
//!   event for each when the `events` capability is on.
//!
//! Differences from QEMU, all documented in the README: `migrate` runs to completion
//! before it replies (QEMU replies first and migrates in the background; a client polling
//! `query-migrate` sees the same sequence); `normal` mode is also stop-and-copy here (no
//! live pre-copy: this VMM has no dirty tracking); only `file:` URIs and `file` channels
//! are supported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use cpr_runstate::RunState;
use cpr_vfio_info::{MigrationInfo, MigrationStats, MigrationStatus};
use serde_json::{Map, Value, json};

use cpr_migration_file::{AtomicFile, QemuFile};

use super::Vmm;
use super::cpr_ops::Flavor;
use super::mig_params::{
    GlobalProperty, MigrationParameters, global_property, parse_bool, property_value,
};
use crate::config::Global;
use crate::error::{Error, Result};

/// `MigMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigMode {
    /// Ordinary migration (stop-and-copy here).
    #[default]
    Normal,
    /// CPR reboot mode.
    CprReboot,
}

impl MigMode {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            MigMode::Normal => "normal",
            MigMode::CprReboot => "cpr-reboot",
        }
    }
}

/// Where a migration stream goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// The file.
    pub path: PathBuf,
    /// Where the stream starts in it.
    pub offset: u64,
}

/// Migration settings and the last migration's outcome.
#[derive(Debug, Clone, Default)]
pub struct MigrationState {
    caps: BTreeMap<String, bool>,
    /// The parameters, checked as QEMU checks them.
    params: MigrationParameters,
    /// What `query-migrate` reports.
    pub info: MigrationInfo,
    /// Started with `--incoming` (any form).
    pub incoming_enabled: bool,
    /// Started with `--incoming defer` and nothing loaded yet.
    pub incoming_deferred: bool,
}

impl MigrationState {
    /// Whether capability `name` is on.
    pub fn cap(&self, name: &str) -> bool {
        self.caps.get(name).copied().unwrap_or(false)
    }

    /// The migration mode.
    pub fn mode(&self) -> MigMode {
        self.params.mode
    }

    /// `--global migration.<property>=<value>` (QEMU's `-global`), through the same
    /// checks as `migrate-set-capabilities` and `migrate-set-parameters`.
    pub fn apply_globals(&mut self, globals: &[Global]) -> Result<()> {
        for g in globals {
            let fail = |why: String| Error::Other(format!("can't apply global {g}: {why}"));
            let property = match g.driver.as_str() {
                "migration" => global_property(&g.property),
                _ => None,
            };
            match property {
                None => {
                    return Err(fail(format!(
                        "Property '{}.{}' not found",
                        g.driver, g.property
                    )));
                }
                Some(GlobalProperty::Capability(cap)) => {
                    let on = parse_bool(&g.value).map_err(fail)?;
                    self.caps.insert(cap.to_string(), on);
                }
                Some(GlobalProperty::Parameter(name, ty)) => {
                    let value = property_value(ty, &g.value).map_err(fail)?;
                    let args = Map::from_iter([(name.to_string(), value)]);
                    self.params.apply(&args).map_err(|e| fail(e.0))?;
                }
            }
        }
        Ok(())
    }

    fn in_progress(&self) -> bool {
        matches!(
            self.info.status,
            Some(MigrationStatus::Setup | MigrationStatus::Active)
        )
    }
}

/// Parses a `uri` or `channels` argument into a file target (QEMU's `file:` transport).
pub fn parse_target(args: &Map<String, Value>) -> Result<FileTarget> {
    match (args.get("uri"), args.get("channels")) {
        (Some(_), Some(_)) => Err(Error::Other(
            "need either 'uri' or 'channels' argument".into(),
        )),
        (None, None) => Err(Error::Other(
            "need either 'uri' or 'channels' argument".into(),
        )),
        (Some(uri), None) => {
            let uri = uri.as_str().unwrap_or_default();
            let Some(spec) = uri.strip_prefix("file:") else {
                return Err(Error::Other(format!("unknown migration protocol: {uri}")));
            };
            let (path, offset) = match spec.split_once(",offset=") {
                Some((p, o)) => (
                    p,
                    parse_offset(o)
                        .ok_or_else(|| Error::Other(format!("file URI has bad offset {o}")))?,
                ),
                None => (spec, 0),
            };
            if path.is_empty() {
                return Err(Error::Other(format!("unknown migration protocol: {uri}")));
            }
            Ok(FileTarget {
                path: PathBuf::from(path),
                offset,
            })
        }
        (None, Some(channels)) => {
            let list = channels.as_array().cloned().unwrap_or_default();
            if list.len() != 1 {
                return Err(Error::Other(
                    "Channel list must have exactly one entry, of type 'main'".into(),
                ));
            }
            let ch = &list[0];
            if ch.get("channel-type").and_then(Value::as_str) != Some("main") {
                return Err(Error::Other(
                    "Channel list must have exactly one entry, of type 'main'".into(),
                ));
            }
            let addr = ch.get("addr").cloned().unwrap_or(Value::Null);
            match addr.get("transport").and_then(Value::as_str) {
                Some("file") => {}
                Some(other) => {
                    return Err(Error::Other(format!(
                        "unknown migration protocol: {other} (only 'file' channels are supported)"
                    )));
                }
                None => return Err(Error::Other("Parameter 'transport' is missing".into())),
            }
            let path = addr
                .get("filename")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Other("Parameter 'filename' is missing".into()))?;
            let offset = match addr.get("offset") {
                None => 0,
                Some(v) => v.as_u64().ok_or_else(|| {
                    Error::Other("Invalid parameter type for 'offset', expected: integer".into())
                })?,
            };
            Ok(FileTarget {
                path: PathBuf::from(path),
                offset,
            })
        }
    }
}

/// An opened migration target.
enum OpenTarget {
    /// Offset 0: a temporary beside the target, renamed over it when complete.
    Atomic(AtomicFile),
    /// A non-zero offset: written in place (the file is someone else's container).
    InPlace(QemuFile),
}

impl OpenTarget {
    fn file(&mut self) -> &mut QemuFile {
        match self {
            OpenTarget::Atomic(a) => a.file(),
            OpenTarget::InPlace(f) => f,
        }
    }

    fn finish(self) -> std::result::Result<(), cpr_migration_file::Error> {
        match self {
            OpenTarget::Atomic(a) => a.commit(),
            OpenTarget::InPlace(mut f) => f.fsync().and_then(|()| f.close()),
        }
    }
}

/// Opens (creates) the migration target, before anything is stopped.
fn open_target(target: &FileTarget) -> Result<OpenTarget> {
    let create = |source| Error::Create {
        path: target.path.clone(),
        source,
    };
    if target.offset == 0 {
        return AtomicFile::create(&target.path, "migration-file")
            .map(OpenTarget::Atomic)
            .map_err(create);
    }
    let file = super::cpr_ops::open_regular_for_write(&target.path)?;
    let mut f = QemuFile::from_fd(file.into(), true, "migration-file");
    f.seek_to(target.offset).map_err(create)?;
    Ok(OpenTarget::InPlace(f))
}

/// `query-migrate`'s `ram` statistics from what the saver wrote.
fn ram_stats(s: &cpr_savevm::SaveStats) -> MigrationStats {
    let page = u64::from(cpr_savevm::consts::TARGET_PAGE_SIZE);
    MigrationStats {
        transferred: s.bytes,
        total: (s.ram_pages + s.ram_zero_pages) * page,
        duplicate: s.ram_zero_pages,
        normal: s.ram_pages,
        normal_bytes: s.ram_pages * page,
        ..MigrationStats::default()
    }
}

/// QEMU's `qemu_strtosz`-like offset: decimal or `0x` hex.
fn parse_offset(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Vmm {
    /// Emits a MIGRATION event (when the `events` capability is on) and records the status.
    pub(super) fn set_migration_status(&mut self, status: MigrationStatus) {
        self.migration.info.status = Some(status);
        if self.migration.cap("events") {
            self.events
                .emit("MIGRATION", Some(json!({"status": status.as_str()})));
        }
    }

    /// Dispatches the mainline migration commands; `None` if `command` is not one.
    pub(super) fn migration_command(
        &mut self,
        command: &str,
        args: &Map<String, Value>,
    ) -> Option<Result<Value>> {
        Some(match command {
            "migrate-set-capabilities" => self.set_capabilities(args),
            "query-migrate-capabilities" => Ok(self.query_capabilities()),
            "migrate-set-parameters" => self.set_parameters(args),
            "query-migrate-parameters" => Ok(self.query_parameters()),
            "migrate" => self.migrate(args).map(|()| json!({})),
            "migrate-incoming" => self.migrate_incoming(args).map(|()| json!({})),
            _ => return None,
        })
    }

    fn set_capabilities(&mut self, args: &Map<String, Value>) -> Result<Value> {
        if self.migration.in_progress() {
            return Err(Error::Other(
                "There's a migration process in progress".into(),
            ));
        }
        let list = args
            .get("capabilities")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Validate everything before changing anything.
        let mut updates = Vec::with_capacity(list.len());
        for c in &list {
            let name = c
                .get("capability")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let state = c.get("state").and_then(Value::as_bool).unwrap_or(false);
            updates.push((name.to_string(), state));
        }
        for (name, state) in updates {
            self.migration.caps.insert(name, state);
        }
        Ok(json!({}))
    }

    fn query_capabilities(&self) -> Value {
        let all = crate::qmp::schema::MIGRATION_CAPABILITY.values;
        Value::Array(
            all.iter()
                .map(|c| json!({"capability": c, "state": self.migration.cap(c)}))
                .collect(),
        )
    }

    fn set_parameters(&mut self, args: &Map<String, Value>) -> Result<Value> {
        if self.migration.in_progress() {
            return Err(Error::Other(
                "There's a migration process in progress".into(),
            ));
        }
        self.migration
            .params
            .apply(args)
            .map_err(|e| Error::Other(e.0))?;
        Ok(json!({}))
    }

    fn query_parameters(&self) -> Value {
        self.migration.params.to_json()
    }

    /// Mainline's refusals for CPR modes (`migrate_mode_is_cpr` checks).
    fn check_cpr_options(&self) -> Result<()> {
        if self.migration.mode() != MigMode::CprReboot {
            return Ok(());
        }
        for (cap, what) in [
            ("postcopy-ram", "postcopy"),
            ("background-snapshot", "background snapshot"),
            ("x-colo", "COLO"),
        ] {
            if self.migration.cap(cap) {
                return Err(Error::Other(format!("Cannot use {what} with CPR")));
            }
        }
        let state = self.rs.state();
        self.vfio.check_cpr_reboot(state == RunState::Suspended)?;
        Ok(())
    }

    /// `migrate`: open the target, stop the VM, write RAM (copied or in place) and device
    /// state, end in `postmigrate`. Anything that fails before the VM is stopped is the
    /// command's error (QEMU opens a `file:` target synchronously too); a failure after it
    /// is status `failed` with the VM back in the state it was in.
    fn migrate(&mut self, args: &Map<String, Value>) -> Result<()> {
        if args.get("resume").and_then(Value::as_bool) == Some(true) {
            return Err(Error::Other(
                "Cannot resume if there is no paused migration".into(),
            ));
        }
        if self.migration.in_progress() {
            return Err(Error::Other(
                "There's a migration process in progress".into(),
            ));
        }
        let old = self.rs.state();
        if old == RunState::Inmigrate {
            return Err(Error::Other(
                "Guest is waiting for an incoming migration".into(),
            ));
        }
        if self.machine().is_none() {
            return Err(Error::Other(
                "migrate: the VM was never started, there is no state to migrate".into(),
            ));
        }
        if !matches!(
            old,
            RunState::Running | RunState::Paused | RunState::Suspended
        ) {
            return Err(Error::Other(format!(
                "cannot migrate a VM that is {old}: its state could never be loaded"
            )));
        }
        let target = parse_target(args)?;
        self.check_cpr_options()?;
        let mut out = open_target(&target)?;
        let start = Instant::now();
        self.migration.info = MigrationInfo::default();
        self.set_migration_status(MigrationStatus::Setup);
        // Mainline stores the global state, then stops the VM (finish-migrate). A
        // suspended guest is already stopped; it stays `suspended` until the end.
        let stop = Instant::now();
        let stopped = match old {
            RunState::Running => self.rs.vm_stop(RunState::FinishMigrate),
            RunState::Paused => self.rs.runstate_set(RunState::FinishMigrate),
            _ => Ok(()),
        };
        if let Err(e) = stopped {
            self.migration_failed(old, &Error::from(e));
            return Ok(());
        }
        self.set_migration_status(MigrationStatus::Active);
        let setup_ms = stop.duration_since(start).as_millis();
        let ignore = self.migration.cap("x-ignore-shared");
        let written = self.write_checkpoint(out.file(), old, Some(ignore));
        self.rs.machine_mut().ram.checkpoint_tagged();
        let written = written
            .and_then(|w| w.commit(|| out.finish()))
            .map_err(|(errno, source)| Error::Save { errno, source })
            .map(|(warnings, stats)| {
                for w in warnings {
                    eprintln!("cpr-vm: warning: {w}");
                }
                stats
            });
        match written {
            Ok(stats) => {
                let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                self.migration.info.total_time = Some(ms(start.elapsed()));
                self.migration.info.downtime = Some(ms(stop.elapsed()));
                self.migration.info.setup_time = Some(u64::try_from(setup_ms).unwrap_or(u64::MAX));
                self.migration.info.ram = Some(ram_stats(&stats));
                self.set_migration_status(MigrationStatus::Completed);
                // The checkpoint hands the RAM over to the process that loads it.
                self.rs.machine_mut().ram.release();
                let done = if self.rs.state() == RunState::Suspended {
                    self.rs.runstate_set(RunState::FinishMigrate)
                } else {
                    Ok(())
                }
                .and_then(|()| self.rs.runstate_set(RunState::Postmigrate));
                if let Err(e) = done {
                    eprintln!("cpr-vm: {}", Error::from(e).chain());
                }
            }
            Err(e) => self.migration_failed(old, &e),
        }
        Ok(())
    }

    /// A failed outgoing migration: status `failed`, the error in `error-desc`, and the VM
    /// back in the state it was in (running again if it was running, as mainline's
    /// `migrate_fd_cleanup`; paused; or still suspended).
    fn migration_failed(&mut self, old: RunState, e: &Error) {
        self.migration.info.error_desc = Some(e.chain());
        self.set_migration_status(MigrationStatus::Failed);
        let back = match old {
            RunState::Running => self.rs.vm_start(),
            RunState::Paused if self.rs.state() == RunState::FinishMigrate => {
                self.rs.runstate_set(RunState::Paused)
            }
            _ => Ok(()),
        };
        if let Err(e) = back {
            eprintln!(
                "cpr-vm: cannot restore the VM's state: {}",
                Error::from(e).chain()
            );
        }
    }

    /// `migrate-incoming`: only after `--incoming defer`, once.
    fn migrate_incoming(&mut self, args: &Map<String, Value>) -> Result<()> {
        if !self.migration.incoming_enabled {
            return Err(Error::Other(
                "'-incoming' was not specified on the command line".into(),
            ));
        }
        if !self.migration.incoming_deferred || self.rs.state() != RunState::Inmigrate {
            return Err(Error::Other(
                "The incoming migration has already been started".into(),
            ));
        }
        let target = parse_target(args)?;
        self.incoming(&target)
    }

    /// Loads a migration stream into this (`inmigrate`) VM: shared with `--incoming file:`.
    pub(super) fn incoming(&mut self, target: &FileTarget) -> Result<()> {
        self.migration.info = MigrationInfo::default();
        self.set_migration_status(MigrationStatus::Setup);
        self.set_migration_status(MigrationStatus::Active);
        match self.read_stream(target) {
            Ok(()) => {
                self.migration.incoming_deferred = false;
                self.set_migration_status(MigrationStatus::Completed);
                Ok(())
            }
            Err(e) => {
                self.migration.info.error_desc = Some(e.chain());
                self.set_migration_status(MigrationStatus::Failed);
                Err(e)
            }
        }
    }

    /// Reads a migration stream (same loader as `cpr-load`, mainline run-state rules).
    fn read_stream(&mut self, target: &FileTarget) -> Result<()> {
        self.load_checkpoint(&target.path, target.offset, Flavor::Mainline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn file_targets() {
        assert_eq!(
            parse_target(&args(json!({"uri": "file:/tmp/vm.state"}))).ok(),
            Some(FileTarget {
                path: "/tmp/vm.state".into(),
                offset: 0
            })
        );
        assert_eq!(
            parse_target(&args(json!({"uri": "file:/tmp/x,offset=0x1000"})))
                .ok()
                .map(|t| t.offset),
            Some(4096)
        );
        let ch = json!({"channels": [{"channel-type": "main",
            "addr": {"transport": "file", "filename": "/tmp/y", "offset": 512}}]});
        assert_eq!(
            parse_target(&args(ch)).ok(),
            Some(FileTarget {
                path: "/tmp/y".into(),
                offset: 512
            })
        );
        let err = |v| parse_target(&args(v)).expect_err("refused").to_string();
        assert_eq!(
            err(json!({"uri": "tcp:1.2.3.4:5"})),
            "unknown migration protocol: tcp:1.2.3.4:5"
        );
        assert_eq!(err(json!({})), "need either 'uri' or 'channels' argument");
        assert_eq!(
            err(json!({"uri": "file:/a", "channels": []})),
            "need either 'uri' or 'channels' argument"
        );
        assert!(
            err(json!({"channels": [{"channel-type": "main", "addr": {"transport": "socket"}}]}))
                .starts_with("unknown migration protocol: socket")
        );
    }
}
