//! The mainline QEMU interface to reboot mode (8.2+): `migrate-set-capabilities`,
//! `migrate-set-parameters {mode: cpr-reboot}`, `migrate file:...`, `--incoming defer` +
//! `migrate-incoming`, `query-migrate`, MIGRATION events (`docs/V7-CHECKLIST.md`, mainline).
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

use super::query_migrate::{MigrationInfo, MigrationStats, MigrationStatus};
use cpr_runstate::RunState;

use cpr_migration_file::{AtomicFile, QemuFile};

use super::Vmm;
use super::api::{
    CapabilityStatus, Event, MigrateArgs, MigrateIncomingArgs, MigrationAddress,
    MigrationCapability, Response, TargetError,
};
use super::cpr_ops::Flavor;
use super::mig_params::{
    GlobalError, GlobalProperty, MigrationParameters, SetParameters, global_property, parse_bool,
};
use super::target::RamFile;
use crate::config::Global;
use crate::error::{ArgumentError, Error, Result};

/// `MigMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigMode {
    /// Ordinary migration (stop-and-copy here).
    #[default]
    Normal,
    /// CPR reboot mode.
    CprReboot,
    /// CPR transfer mode (10.0): a new process, started beforehand, takes the RAM by
    /// descriptor over a `cpr` channel and the device state over the main channel.
    CprTransfer,
    /// CPR exec mode (10.2): the process saves and `exec`s `cpr-exec-command` in place.
    CprExec,
}

impl MigMode {
    /// Every mode, in QAPI order.
    pub const NAMES: &'static [&'static str] =
        &["normal", "cpr-reboot", "cpr-transfer", "cpr-exec"];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MigMode::Normal => "normal",
            MigMode::CprReboot => "cpr-reboot",
            MigMode::CprTransfer => "cpr-transfer",
            MigMode::CprExec => "cpr-exec",
        }
    }

    /// The mode named `name` on the wire.
    pub fn from_wire(name: &str) -> Option<MigMode> {
        match name {
            "normal" => Some(MigMode::Normal),
            "cpr-reboot" => Some(MigMode::CprReboot),
            "cpr-transfer" => Some(MigMode::CprTransfer),
            "cpr-exec" => Some(MigMode::CprExec),
            _ => None,
        }
    }

    /// A CPR mode (`migrate_mode_is_cpr`).
    pub fn is_cpr(self) -> bool {
        self != MigMode::Normal
    }
}

/// Why a migration command is refused (QEMU's words where QEMU has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// A migration is in `setup` or `active`.
    #[error("There's a migration process in progress")]
    InProgress,
    /// `migrate {resume: true}`: there is never a paused migration here.
    #[error("Cannot resume if there is no paused migration")]
    NoPausedMigration,
    /// `migrate` in `inmigrate`.
    #[error("Guest is waiting for an incoming migration")]
    IncomingPending,
    /// `migrate` before the VM ever ran.
    #[error("migrate: the VM was never started, there is no state to migrate")]
    NeverStarted,
    /// `migrate` in a run state a load could never enter.
    #[error("cannot migrate a VM that is {0}: its state could never be loaded")]
    Unloadable(RunState),
    /// A capability CPR modes refuse (`migrate_mode_is_cpr` checks).
    #[error("Cannot use {0} with CPR")]
    NotWithCpr(&'static str),
    /// `migrate-incoming` without `--incoming`.
    #[error("'-incoming' was not specified on the command line")]
    NoIncoming,
    /// `migrate-incoming` a second time.
    #[error("The incoming migration has already been started")]
    IncomingStarted,
    /// cpr-transfer to a `file:` main channel.
    #[error("Migration requires streamable transport (eg unix)")]
    NeedsStream,
    /// cpr-transfer without a `cpr` channel (and so from HMP, which cannot name one).
    #[error("missing 'cpr' migration channel")]
    MissingCprChannel,
    /// A `cpr` channel that is not a UNIX socket.
    #[error("bad cpr channel address; must be unix")]
    BadCprChannel,
    /// cpr-exec to a socket: nothing reads it across the exec.
    #[error(
        "cpr-exec needs a file main channel: the exec'd process reads the state after the exec"
    )]
    ExecNeedsFile,
    /// A socket main channel outside cpr-transfer.
    #[error("a unix main channel is only supported in cpr-transfer mode")]
    SocketOutsideTransfer,
    /// cpr-reboot over RAM that has no path.
    #[error(
        "Memory region {0} is a memfd: it cannot outlive this process, so cpr-reboot cannot keep it (use cpr-transfer or cpr-exec, or --mem-path)"
    )]
    MemfdReboot(String),
}

/// Where a migration stream goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// The file.
    pub path: PathBuf,
    /// Where the stream starts in it.
    pub offset: u64,
}

impl FileTarget {
    /// Parses a `uri` argument: QEMU's `file:PATH[,offset=N]` (`N` decimal or `0x` hex).
    pub fn from_uri(uri: &str) -> std::result::Result<FileTarget, TargetError> {
        let Some(spec) = uri.strip_prefix("file:") else {
            return Err(TargetError::UnknownProtocol(uri.to_string()));
        };
        let (path, offset) = match spec.split_once(",offset=") {
            Some((p, o)) => (
                p,
                parse_offset(o).ok_or_else(|| TargetError::BadOffset(o.to_string()))?,
            ),
            None => (spec, 0),
        };
        if path.is_empty() {
            return Err(TargetError::UnknownProtocol(uri.to_string()));
        }
        Ok(FileTarget {
            path: PathBuf::from(path),
            offset,
        })
    }
}

/// Migration settings and the last migration's outcome.
#[derive(Debug, Clone, Default)]
pub(crate) struct MigrationState {
    caps: BTreeMap<MigrationCapability, bool>,
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
    /// Whether capability `cap` is on.
    pub(crate) fn cap(&self, cap: MigrationCapability) -> bool {
        self.caps.get(&cap).copied().unwrap_or(false)
    }

    /// The migration mode.
    pub(crate) fn mode(&self) -> MigMode {
        self.params.mode
    }

    /// The parameters.
    pub(crate) fn params(&self) -> &MigrationParameters {
        &self.params
    }

    /// `--global migration.<property>=<value>` (QEMU's `-global`), through the same
    /// checks as `migrate-set-capabilities` and `migrate-set-parameters`.
    pub(crate) fn apply_globals(&mut self, globals: &[Global]) -> Result<()> {
        for g in globals {
            self.apply_global(g)
                .map_err(|source| ArgumentError::Global {
                    global: g.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    fn apply_global(&mut self, g: &Global) -> std::result::Result<(), GlobalError> {
        let property = match g.driver.as_str() {
            "migration" => global_property(&g.property),
            _ => None,
        };
        match property {
            None => Err(GlobalError::NotFound {
                driver: g.driver.clone(),
                property: g.property.clone(),
            }),
            Some(GlobalProperty::Capability(cap)) => {
                self.caps.insert(cap, parse_bool(&g.value)?);
                Ok(())
            }
            Some(GlobalProperty::Parameter(name, ty)) => {
                let mut set = SetParameters::default();
                set.set_text(name, ty, &g.value)?;
                Ok(self.params.apply(&set)?)
            }
        }
    }

    fn in_progress(&self) -> bool {
        matches!(
            self.info.status,
            Some(MigrationStatus::Setup | MigrationStatus::Active)
        )
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

/// Opens (creates) the migration target, before anything is stopped; never one of `ram`.
fn open_target(target: &FileTarget, ram: &[RamFile]) -> Result<OpenTarget> {
    let create = |source| Error::Create {
        path: target.path.clone(),
        source,
    };
    if target.offset == 0 {
        return super::target::create_atomic(&target.path, "migration-file", ram)
            .map(OpenTarget::Atomic);
    }
    let file = super::target::open_in_place(&target.path, ram)?;
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
        if self.migration.cap(MigrationCapability::Events) {
            self.events.send(Event::Migration(status));
        }
    }

    /// `migrate-set-capabilities`.
    pub(super) fn set_capabilities(&mut self, caps: &[CapabilityStatus]) -> Result<()> {
        if self.migration.in_progress() {
            return Err(MigrateError::InProgress.into());
        }
        for c in caps {
            self.migration.caps.insert(c.capability, c.state);
        }
        Ok(())
    }

    /// `query-migrate-capabilities`: every capability, in QAPI order.
    pub(super) fn query_capabilities(&self) -> Response {
        Response::MigrationCapabilities(
            MigrationCapability::ALL
                .iter()
                .map(|&capability| CapabilityStatus {
                    capability,
                    state: self.migration.cap(capability),
                })
                .collect(),
        )
    }

    /// `migrate-set-parameters`.
    pub(super) fn set_parameters(&mut self, set: &SetParameters) -> Result<()> {
        if self.migration.in_progress() {
            return Err(MigrateError::InProgress.into());
        }
        self.migration
            .params
            .apply(set)
            .map_err(ArgumentError::Parameter)?;
        Ok(())
    }

    /// `query-migrate-parameters`.
    pub(super) fn query_parameters(&self) -> Response {
        Response::MigrationParameters(self.migration.params.clone())
    }

    /// Mainline's refusals for CPR modes (`migrate_mode_is_cpr` checks).
    fn check_cpr_options(&self) -> Result<()> {
        if !self.migration.mode().is_cpr() {
            return Ok(());
        }
        for (cap, what) in [
            (MigrationCapability::PostcopyRam, "postcopy"),
            (
                MigrationCapability::BackgroundSnapshot,
                "background snapshot",
            ),
            (MigrationCapability::XColo, "COLO"),
        ] {
            if self.migration.cap(cap) {
                return Err(MigrateError::NotWithCpr(what).into());
            }
        }
        if self.migration.mode() == MigMode::CprReboot {
            self.refuse_memfd_for_reboot()?;
            let state = self.rs.state();
            self.vfio.check_cpr_reboot(state == RunState::Suspended)?;
        }
        Ok(())
    }

    /// cpr-reboot cannot keep RAM that has no path: the process's exit frees it.
    pub(super) fn refuse_memfd_for_reboot(&self) -> Result<()> {
        for b in self.ram.blocks() {
            if matches!(
                b.block().backing(),
                cpr_memory::Backing::Memfd { .. } | cpr_memory::Backing::InheritedFd(_)
            ) {
                return Err(MigrateError::MemfdReboot(b.block().mr_name().to_string()).into());
            }
        }
        Ok(())
    }

    /// `migrate`: open the target, stop the VM, write RAM (copied or in place) and device
    /// state, end in `postmigrate`. Anything that fails before the VM is stopped is the
    /// command's error (QEMU opens a `file:` target synchronously too); a failure after it
    /// is status `failed` with the VM back in the state it was in.
    pub(super) fn migrate(&mut self, args: &MigrateArgs) -> Result<()> {
        if args.resume {
            return Err(MigrateError::NoPausedMigration.into());
        }
        if self.migration.in_progress() {
            return Err(MigrateError::InProgress.into());
        }
        let old = self.rs.state();
        if old == RunState::Inmigrate {
            return Err(MigrateError::IncomingPending.into());
        }
        if self.machine().is_none() {
            return Err(MigrateError::NeverStarted.into());
        }
        if !matches!(
            old,
            RunState::Running | RunState::Paused | RunState::Suspended
        ) {
            return Err(MigrateError::Unloadable(old).into());
        }
        let target = args.target.clone().map_err(ArgumentError::Target)?;
        let mode = self.migration.mode();
        // QEMU's transport check, then the cpr channel, then the blockers.
        let target = match (target, mode) {
            (MigrationAddress::File(_), MigMode::CprTransfer) => {
                return Err(MigrateError::NeedsStream.into());
            }
            (MigrationAddress::Unix(_), MigMode::CprExec) => {
                return Err(MigrateError::ExecNeedsFile.into());
            }
            (MigrationAddress::Unix(main), MigMode::CprTransfer) => {
                let cpr = match args.cpr.clone() {
                    None => return Err(MigrateError::MissingCprChannel.into()),
                    Some(Err(e)) => return Err(ArgumentError::Target(e).into()),
                    Some(Ok(MigrationAddress::Unix(p))) => p,
                    Some(Ok(MigrationAddress::File(_))) => {
                        return Err(MigrateError::BadCprChannel.into());
                    }
                };
                self.check_cpr_options()?;
                return self.migrate_transfer(&main, &cpr, old);
            }
            (MigrationAddress::Unix(_), _) => {
                return Err(MigrateError::SocketOutsideTransfer.into());
            }
            (MigrationAddress::File(f), _) => f,
        };
        self.check_cpr_options()?;
        let exec = mode == MigMode::CprExec;
        if exec {
            super::exec::check_command(&self.migration.params().cpr_exec_command)
                .map_err(Error::Exec)?;
            self.handed_ram().map_err(Error::Transfer)?;
        }
        let mut out = open_target(&target, &self.ram_identities())?;
        let start = Instant::now();
        self.migration.info = MigrationInfo::default();
        self.set_migration_status(MigrationStatus::Setup);
        // Mainline stores the global state, then stops the VM (finish-migrate). A
        // suspended guest is already stopped; it stays `suspended` until the end.
        let stop = Instant::now();
        if !self.stop_for_migration(old) {
            return Ok(());
        }
        let setup_ms = stop.duration_since(start).as_millis();
        let ignore = self.migration.cap(MigrationCapability::XIgnoreShared);
        // cpr-exec keeps all RAM mapped across the exec: a device-state stream, as V7's.
        let ram_mode = if exec { None } else { Some(ignore) };
        let written = self.write_checkpoint(out.file(), old, ram_mode);
        self.rs.machine_mut().ram.checkpoint_tagged();
        let written = written
            .and_then(|w| w.commit(|| out.finish()))
            .map_err(|f| Error::Save {
                errno: f.errno,
                source: f.source,
            })
            .map(|(warnings, stats)| {
                for w in warnings {
                    log::warn!("{w}");
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
                self.enter_postmigrate();
                if exec {
                    self.schedule_exec(old);
                }
            }
            Err(e) => self.migration_failed(old, &e),
        }
        Ok(())
    }

    /// Status `setup` is set: stop the guest (`finish-migrate`; a suspended guest is
    /// stopped already and stays `suspended` until the end), send STOP as it happens
    /// (QEMU: between `setup` and `active`), then status `active`. False if the stop
    /// failed, which ends the migration as `failed`.
    pub(super) fn stop_for_migration(&mut self, old: RunState) -> bool {
        let stopped = match old {
            RunState::Running => self.rs.vm_stop(RunState::FinishMigrate),
            RunState::Paused => self.rs.runstate_set(RunState::FinishMigrate),
            _ => Ok(()),
        };
        if let Err(e) = stopped {
            self.migration_failed(old, &Error::from(e));
            return false;
        }
        self.flush_events();
        self.set_migration_status(MigrationStatus::Active);
        true
    }

    /// A failed outgoing migration: status `failed`, the error in `error-desc`, and the VM
    /// back in the state it was in (running again if it was running, as mainline's
    /// `migrate_fd_cleanup`; paused; or still suspended).
    pub(super) fn migration_failed(&mut self, old: RunState, e: &Error) {
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
            log::error!("cannot restore the VM's state: {}", Error::from(e).chain());
        }
    }

    /// After a completed outgoing migration: `postmigrate` (a suspended guest goes
    /// through `finish-migrate` first).
    pub(super) fn enter_postmigrate(&mut self) {
        let done = if self.rs.state() == RunState::Suspended {
            self.rs.runstate_set(RunState::FinishMigrate)
        } else {
            Ok(())
        }
        .and_then(|()| self.rs.runstate_set(RunState::Postmigrate));
        if let Err(e) = done {
            log::error!("{}", Error::from(e).chain());
        }
    }

    /// `migrate-incoming`: only after `--incoming defer`, once.
    pub(super) fn migrate_incoming(&mut self, args: &MigrateIncomingArgs) -> Result<()> {
        if !self.migration.incoming_enabled {
            return Err(MigrateError::NoIncoming.into());
        }
        if !self.migration.incoming_deferred || self.rs.state() != RunState::Inmigrate {
            return Err(MigrateError::IncomingStarted.into());
        }
        match args.target.clone().map_err(ArgumentError::Target)? {
            MigrationAddress::File(target) => self.incoming(&target),
            MigrationAddress::Unix(path) => self.listen_transfer(&path),
        }
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

    #[test]
    fn file_uris() {
        assert_eq!(
            FileTarget::from_uri("file:/tmp/vm.state"),
            Ok(FileTarget {
                path: "/tmp/vm.state".into(),
                offset: 0
            })
        );
        assert_eq!(
            FileTarget::from_uri("file:/tmp/x,offset=0x1000").map(|t| t.offset),
            Ok(4096)
        );
        let err = |uri| FileTarget::from_uri(uri).expect_err("refused").to_string();
        assert_eq!(
            err("tcp:1.2.3.4:5"),
            "unknown migration protocol: tcp:1.2.3.4:5"
        );
        assert_eq!(err("file:"), "unknown migration protocol: file:");
        assert_eq!(err("file:/a,offset=zz"), "file URI has bad offset zz");
    }
}
