//! Patch 6, `cpr: reboot mode`: `cpr-save` and `cpr-load` (QEMU `migration/cpr.c`).
//!
//! The steps and their order are V7's (`docs/V7-CHECKLIST.md`); each step is numbered
//! below as in the spec. Where V7 is hazardous we do better, and say so at the step:
//!
//! * the checkpoint is written to a temporary file, fsynced and renamed over the target, so
//!   a failed save never destroys the previous checkpoint (V7 truncates the target first);
//! * the close/flush error is reported (V7 ignores `qemu_fclose`'s result);
//! * on a failed save of a suspended guest the ticks are re-enabled (V7 leaves them off);
//! * RAM on a disk file is msynced before the save reports success, and a RAM backing that
//!   will not survive a host reboot is named in the reply (V7 checks neither);
//! * `cpr-load` reads and checks the whole file, that the machine matches it, and that its
//!   run state can be entered, before it changes anything; the new KVM machine is built
//!   before the old one (if any) is dropped. A bad file leaves the process as it was
//!   (`prelaunch`), ready for a good one. V7 applies sections as it reads them and aborts
//!   QEMU on an impossible run-state transition.

use std::path::Path;
use std::str::FromStr;

use cpr_migration_file::QemuFile;
use cpr_runstate::{RunState, check_transition};
use nix::errno::Errno;

use super::Vmm;
use super::api::{MigrationCapability, Response};
use super::epoch;
use super::ram_io::{GuestRamIo, stays_in_place};
use super::target;
use crate::checkpoint;
use crate::error::{ArgumentError, Error, Result};
use crate::machine::Machine;

/// QAPI `CprMode` (patch 6: only `reboot`; `restart` arrives with patch 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CprMode {
    /// The checkpoint can be loaded after the host reboots (or the VMM restarts).
    Reboot,
}

impl CprMode {
    /// Every mode, in QAPI order.
    pub const NAMES: &'static [&'static str] = &["reboot"];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CprMode::Reboot => "reboot",
        }
    }
}

impl FromStr for CprMode {
    type Err = ArgumentError;

    fn from_str(s: &str) -> std::result::Result<Self, ArgumentError> {
        match s {
            "reboot" => Ok(CprMode::Reboot),
            other => Err(ArgumentError::BadValue {
                name: "mode",
                value: other.to_string(),
            }),
        }
    }
}

/// Where a load is when it calls its commit hook ([`Vmm::load_stream_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoadStage {
    /// The whole stream is read and checked; nothing has changed.
    Checked,
    /// The state is restored into a machine that has not run; nothing else changed.
    Restored,
}

/// Which interface is loading: the run-state rules differ for a suspended guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// V7 `cpr-load`: a suspended guest comes back `suspended` with start-on-wakeup armed
    /// (patch 5); `system_wakeup` then gives RESUME and WAKEUP.
    V7,
    /// Mainline (9.0) `migrate-incoming`/`--incoming`: `vm_start` at load (RESUME), the run
    /// state goes back to `suspended`, and `system_wakeup` gives WAKEUP.
    Mainline,
}

/// A checkpoint written, not yet committed.
pub(super) struct Written {
    /// What the user should be told.
    pub warnings: Vec<String>,
    /// What was written.
    pub stats: cpr_savevm::SaveStats,
    /// The RAM files' new epoch, to put on them at commit.
    pub epoch: Option<epoch::Plan>,
}

impl Written {
    /// Tags the RAM files with the checkpoint's epoch, then commits the checkpoint with
    /// `commit`; if the commit fails, the RAM files get their old tags back. A failure to
    /// sync the directory after the rename leaves the new checkpoint in place (and its
    /// tags): it is reported as a warning, not as a failed save.
    pub(super) fn commit(
        mut self,
        commit: impl FnOnce() -> std::result::Result<(), cpr_migration_file::Error>,
    ) -> std::result::Result<(Vec<String>, cpr_savevm::SaveStats), SaveFailure> {
        if let Some(plan) = &self.epoch {
            plan.apply().map_err(|f| SaveFailure {
                errno: Errno::EOPNOTSUPP,
                source: format!("cannot tag {} with the checkpoint's epoch", f.display()).into(),
            })?;
        }
        match commit() {
            Ok(()) => {}
            Err(e @ cpr_migration_file::Error::DirSync { .. }) => self.warnings.push(format!(
                "the checkpoint is in place but its directory was not synced: {e}"
            )),
            Err(e) => {
                if let Some(plan) = &self.epoch {
                    plan.undo();
                }
                return Err(SaveFailure {
                    errno: e.errno().unwrap_or(Errno::EIO),
                    source: Box::new(e),
                });
            }
        }
        Ok((self.warnings, self.stats))
    }
}

/// Why writing a checkpoint failed: the errno QEMU reports (negated) and the cause.
pub(super) struct SaveFailure {
    /// The errno of the failed write, else `EIO` (or `EINVAL` for a state that cannot be
    /// encoded, `EOPNOTSUPP` for RAM files that cannot be tagged).
    pub errno: Errno,
    /// Why.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SaveFailure {
    /// A failure with no errno of its own: `EIO`, as QEMU reports it.
    fn eio(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SaveFailure {
        SaveFailure {
            errno: Errno::EIO,
            source: source.into(),
        }
    }
}

/// The errno of the first file error in `e`'s chain (QEMU reports `-errno` of the failed
/// write), else `EIO`.
fn errno_in(e: &(dyn std::error::Error + 'static)) -> Errno {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<cpr_migration_file::Error>()
            .and_then(cpr_migration_file::Error::errno)
        {
            return n;
        }
        cur = err.source();
    }
    Errno::EIO
}

impl Vmm {
    /// `cpr-save filename mode` (V7 `qmp_cpr_save`).
    pub(super) fn cpr_save(&mut self, filename: &Path, mode: CprMode) -> Result<Response> {
        // 0. Was the VM running?
        let saved_vm_running = self.rs.is_running();
        // 1. Volatile RAM (checked for every mode).
        cpr_memory::check_ram_volatile(&self.blocks).map_err(Error::Volatile)?;
        // Better than V7, whose volatile rule passes a shared memfd: a memfd dies with the
        // process, so reboot mode cannot keep it.
        self.refuse_memfd_for_reboot()?;
        // 2. x-colo: V7 refuses a VM with the capability on.
        if self.migration.cap(MigrationCapability::XColo) {
            return Err(Error::Colo);
        }
        // 3. Record/replay: not implemented in this VMM, never active.
        // (Mainline 9.0) VFIO devices need a suspended guest.
        let state = self.rs.state();
        self.vfio.check_cpr_reboot(state == RunState::Suspended)?;
        if self.machine().is_none() {
            return Err(Error::NothingToSave);
        }
        // Better than V7, which saves whatever the state is: a checkpoint of a VM in
        // `save-vm` (a second cpr-save), `postmigrate`, `guest-panicked`... could never be
        // loaded, and must not replace a good checkpoint at `filename`.
        if !matches!(
            state,
            RunState::Running | RunState::Paused | RunState::Suspended
        ) {
            return Err(Error::Unrestorable {
                state,
                path: filename.to_path_buf(),
            });
        }
        // 4. global_state_store(): the run state *before* stopping.
        let global = state;
        // 5. Open the file: a temporary beside the target, 0600, channel name "cpr-save".
        //    Refused here (nothing stopped yet): someone else's symlink, this VM's RAM.
        let mut file = target::create_atomic(filename, "cpr-save", &self.ram_identities())?;
        // 6. A suspended guest's ticks are still enabled: disable them (V7).
        let suspended = state == RunState::Suspended;
        if suspended {
            cpr_runstate::VmControl::disable_ticks(self.rs.machine_mut())?;
        }
        // 7. vm_stop(SAVE_VM): STOP only if it was running.
        if let Err(e) = self.rs.vm_stop(RunState::SaveVm) {
            return Err(self.save_failed(saved_vm_running, suspended, SaveFailure::eio(e)));
        }
        // STOP goes out when the guest stops, not when the command ends.
        self.flush_events();
        // 8. cpr_set_mode(mode): a no-op in patch 6 (it becomes real with restart mode, patch
        //    13), and nothing here reads a mode: `reboot` is the only one.
        let CprMode::Reboot = mode;
        // 9. Write the device state, and make it durable.
        let written = self.write_checkpoint(file.file(), global, None);
        // The RAM files' tags change now: whatever runs next must tag them again.
        self.rs.machine_mut().ram.checkpoint_tagged();
        let written = match written {
            Ok(w) => w,
            Err(failure) => {
                drop(file); // removes the temporary; the old checkpoint is untouched
                return Err(self.save_failed(saved_vm_running, suspended, failure));
            }
        };
        let warnings = match written.commit(|| file.commit()) {
            Ok((w, _)) => w,
            Err(failure) => {
                return Err(self.save_failed(saved_vm_running, suspended, failure));
            }
        };
        // 11. Success: the VM stays stopped and the mode stays set; the caller quits.
        // Better than V7: the checkpoint hands the RAM over (see `ownership.rs`), so a new
        // process may load it while this one still exits; this one must take the RAM back
        // before it runs the guest again.
        self.rs.machine_mut().ram.release();
        for w in &warnings {
            log::warn!("{w}");
        }
        Ok(Response::Saved { warnings })
    }

    /// Captures the machine, makes RAM durable where it can be, writes the stream.
    /// Returns what the user should be warned about.
    ///
    /// `ignore_shared` is `None` for V7 (no RAM in the stream), else mainline's
    /// `x-ignore-shared`: blocks that do not stay in place are copied into the stream.
    pub(super) fn write_checkpoint(
        &self,
        file: &mut QemuFile,
        global: RunState,
        ignore_shared: Option<bool>,
    ) -> std::result::Result<Written, SaveFailure> {
        let machine = self
            .machine()
            .ok_or_else(|| SaveFailure::eio("no machine"))?;
        let state = machine.capture().map_err(SaveFailure::eio)?;
        // RAM first: the checkpoint must not become visible before the RAM it describes
        // is durable. Only blocks on a disk (or DAX) need it; tmpfs cannot be made to
        // survive a reboot, so say so instead.
        // Only RAM left in place matters here: RAM copied into the stream travels with it.
        let mut warnings = Vec::new();
        let mut durable = 0;
        // cpr-transfer and cpr-exec hand the RAM over mapped: it need not survive anything.
        let handed_over = matches!(
            self.migration.mode(),
            super::MigMode::CprTransfer | super::MigMode::CprExec
        );
        for b in self.ram.blocks().iter().filter(|_| !handed_over) {
            if ignore_shared.is_some_and(|i| !stays_in_place(b, i)) {
                continue;
            }
            let report = cpr_memory::persistence(b.block()).map_err(SaveFailure::eio)?;
            if report.persistence.survives_host_reboot() {
                durable += 1;
            } else {
                warnings.push(report.to_string());
            }
        }
        if durable > 0 {
            self.ram.sync().map_err(SaveFailure::eio)?;
        }
        // The RAM left in place gets a fresh epoch, recorded in the checkpoint; the caller
        // puts it on the RAM files when it commits the checkpoint.
        let mut layout = self.layout_with_ram(ignore_shared);
        let in_place = self.ram_files(|b| ignore_shared.is_none_or(|i| stays_in_place(b, i)));
        let plan = epoch::Plan::new(&in_place, !self.rs.machine().ram.tagged_running());
        match &plan {
            Some(p) => layout.epoch = p.epoch.clone(),
            None if !in_place.is_empty() => warnings.push(format!(
                "{} cannot carry an epoch (no user extended attributes): cpr-load will not notice if this RAM is used again before it loads the checkpoint",
                in_place[0].display()
            )),
            None => {}
        }
        let mut registry =
            checkpoint::save_registry(layout, global, state).map_err(|e| SaveFailure {
                errno: Errno::EINVAL,
                source: e.into(),
            })?;
        let io = ignore_shared.map(|ignore| GuestRamIo::new(&self.ram, ignore, false));
        let ram = io.as_ref().map(|io| io as &dyn cpr_savevm::RamBlocks);
        let stats = cpr_savevm::save_state(file, &mut registry, ram).map_err(|e| SaveFailure {
            errno: errno_in(&e),
            source: e.into(),
        })?;
        Ok(Written {
            warnings,
            stats,
            epoch: plan,
        })
    }

    /// V7 step 10: restart the VM if it was running; report.
    fn save_failed(
        &mut self,
        saved_vm_running: bool,
        suspended: bool,
        failure: SaveFailure,
    ) -> Error {
        if saved_vm_running {
            if let Err(e) = self.rs.vm_start() {
                log::error!("cannot restart the VM after a failed save: {e}");
            }
        } else if suspended {
            // Better than V7: the ticks disabled in step 6 come back.
            let _ = cpr_runstate::VmControl::enable_ticks(self.rs.machine_mut());
        }
        Error::Save {
            errno: failure.errno,
            source: failure.source,
        }
    }

    /// `cpr-load filename` (V7 `qmp_cpr_load`).
    pub(super) fn cpr_load(&mut self, filename: &Path) -> Result<()> {
        // 1. Only `running` is refused.
        if self.rs.is_running() {
            return Err(Error::LoadRunning);
        }
        self.load_checkpoint(filename, 0, Flavor::V7)
    }

    /// Steps 2–7 of cpr-load, shared with `--incoming`.
    ///
    /// Better than V7: the RAM must be this process's before anything is read into it or
    /// run over it (see `ownership.rs`), so a process whose RAM another one holds is
    /// refused first, whatever the file. A load that fails without having written RAM
    /// gives it back, so the process that handed it over can still take it.
    pub(super) fn load_checkpoint(
        &mut self,
        filename: &Path,
        offset: u64,
        flavor: Flavor,
    ) -> Result<()> {
        self.refuse_running()?;
        let held = self.rs.machine().ram.is_locked();
        self.rs.machine_mut().ram.acquire()?;
        let loaded = self.open_and_load(filename, offset, flavor);
        let ram = &mut self.rs.machine_mut().ram;
        if loaded.is_err() && !held && !ram.tagged_running() {
            ram.release();
        }
        loaded
    }

    fn open_and_load(&mut self, filename: &Path, offset: u64, flavor: Flavor) -> Result<()> {
        // 2. Open read-only, channel name "cpr-load". The file is opened once; every pass
        //    reads a duplicate of that descriptor from `offset`, so a file renamed over
        //    the path meanwhile cannot mix two checkpoints.
        let file = target::open_for_read(filename)?;
        // Mapped in place where it can be (see StreamSource).
        let source = checkpoint::StreamSource::new(&file, filename, offset, "cpr-load");
        let open = || source.open();
        // 3. Magic and version (a short or empty file reads as "not a vmstate file").
        //    A stream whose first section is QEMU's `ram` START section carries RAM (a
        //    mainline stream); otherwise it is a V7 device-state stream (RAM in place).
        let kind = open()
            .and_then(|mut f| cpr_savevm::probe(&mut f))
            .map_err(|_| Error::NotVmstate {
                path: filename.to_path_buf(),
            })?;
        // 4. cpr_set_mode(reboot): a no-op in patch 6, as at step 8 of cpr-save.
        let has_ram = kind.has_ram();
        // 7. cpr_set_mode(none): a no-op too.
        let loaded = self.load_stream(open, flavor, has_ram);
        // Off the command's path (the guest may already be running).
        source.release_in_background();
        loaded
    }

    /// Refuses to load into a running VM, whatever the interface (V7 step 1).
    fn refuse_running(&self) -> Result<()> {
        if self.rs.is_running() {
            return Err(Error::LoadRunning);
        }
        Ok(())
    }

    fn load_stream(
        &mut self,
        open: impl FnMut() -> cpr_savevm::Result<QemuFile>,
        flavor: Flavor,
        has_ram: bool,
    ) -> Result<()> {
        self.load_stream_with(open, flavor, has_ram, &mut |_, _| Ok(()))
    }

    /// [`load_stream`](Vmm::load_stream) with a `commit` hook (cpr-transfer's hand-over),
    /// called at [`LoadStage::Checked`] (everything read and checked, nothing changed) and
    /// at [`LoadStage::Restored`] (the state is in the new machine, which has not run and
    /// has not touched guest RAM; nothing else changed). An error from either leaves the
    /// process as it was.
    pub(super) fn load_stream_with(
        &mut self,
        open: impl FnMut() -> cpr_savevm::Result<QemuFile>,
        flavor: Flavor,
        has_ram: bool,
        commit: &mut dyn FnMut(&mut Vmm, LoadStage) -> Result<()>,
    ) -> Result<()> {
        self.refuse_running()?;
        // 5. Read and check everything (framing, versions, sections, machine shape,
        //    checksum) before anything changes. V7 checkpoints hold no RAM; mainline
        //    streams have a `ram` section (pages copied in only after the checks).
        let pristine = self.ram_pristine;
        if has_ram {
            // Whatever happens next, RAM may have been written.
            self.ram_pristine = false;
        }
        let files = self.ram_files(|_| true);
        let ignore_shared = self.migration.cap(MigrationCapability::XIgnoreShared);
        let mut io = GuestRamIo::new(&self.ram, ignore_shared || self.handed_ram, pristine)
            .retag_on_write(files);
        let ram: Option<&mut dyn cpr_savevm::RamBlocks> = match flavor {
            Flavor::Mainline if has_ram => Some(&mut io),
            // V7's cpr-load takes cpr-save files only; a `ram` section is then refused.
            _ => None,
        };
        // The epoch the RAM files carry now, to compare with the checkpoint's.
        let mut local = self.layout.clone();
        local.epoch = self
            .ram_files(|_| true)
            .first()
            .and_then(|f| epoch::read(f))
            .unwrap_or_default();
        let parsed = checkpoint::parse(open, local, ram);
        let retagged = io.retagged();
        // Done with guest RAM (its helper threads joined).
        drop(io);
        if retagged {
            // RAM pages were copied in: the files are tagged `running` (see ram_io.rs).
            self.rs.machine_mut().ram.retagged_running();
        }
        let parsed = parsed.map_err(|e| Error::Load {
            errno: Errno::EINVAL,
            source: Box::new(e),
        })?;
        let saved = parsed.runstate;
        // 6 (checked first): can the saved run state be entered from ours? V7 would
        // abort in runstate_set; we refuse before touching anything.
        let current = self.rs.state();
        let target = if saved == RunState::Running && !self.autostart {
            RunState::Paused
        } else {
            saved
        };
        if check_transition(current, target).is_err() {
            return Err(Error::RunStateTransition { saved, current });
        }
        let state = parsed.state;
        // The guest's own word wins: a checkpoint taken while it was entering S3 may say
        // `running` while its PM register says suspended.
        let (saved, target) = if state.pm.suspended && saved == RunState::Running {
            (RunState::Suspended, RunState::Suspended)
        } else {
            (saved, target)
        };
        if check_transition(current, target).is_err() {
            return Err(Error::RunStateTransition { saved, current });
        }
        commit(self, LoadStage::Checked)?;
        // The new KVM machine over the same RAM (the one built ahead, if there is one);
        // the old one (if any) goes only once the new one exists, so a failure here leaves
        // the process as it was.
        let load_err = |e| Error::Load {
            errno: Errno::EIO,
            source: Box::new(e),
        };
        let machine = match self.spare.take() {
            Some(mut m) => match m.restore_state(&state) {
                Ok(()) => m,
                Err(e) => {
                    drop(m);
                    // A half-restored machine is never reused: build a fresh one for the
                    // next attempt, off this failure's path.
                    if let Err(again) = self.build_spare() {
                        log::warn!("cannot build a spare machine: {}", again.chain());
                    }
                    return Err(load_err(e));
                }
            },
            None => Machine::restore(self.machine_config()?, &state).map_err(load_err)?,
        };
        if let Err(e) = commit(self, LoadStage::Restored) {
            // The restored machine never ran: it goes, and a fresh one is built ahead.
            drop(machine);
            if let Err(again) = self.build_spare() {
                log::warn!("cannot build a spare machine: {}", again.chain());
            }
            return Err(e);
        }
        self.install_machine(machine);
        // Whatever was loaded, a deferred incoming migration is no longer waiting.
        self.migration.incoming_deferred = false;
        // 6. The run state from globalstate.
        match (saved, flavor) {
            (RunState::Running, _) if self.autostart => self.rs.vm_start()?,
            (RunState::Suspended, Flavor::Mainline) if self.autostart => {
                // QEMU 9.0: vm_start() (RESUME), and the VM stays suspended.
                self.rs.vm_start()?;
                self.rs.runstate_set(RunState::Suspended)?;
            }
            _ => {
                self.rs.runstate_set(target)?;
                if target == RunState::Suspended {
                    self.rs.start_on_wakeup_request();
                }
            }
        }
        // RESUME goes out as the guest resumes, not when the command ends.
        self.flush_events();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_qapi() {
        assert_eq!("reboot".parse::<CprMode>().ok(), Some(CprMode::Reboot));
        let err = "restart"
            .parse::<CprMode>()
            .expect_err("restart is patch 14");
        assert_eq!(
            err.to_string(),
            "Parameter 'mode' does not accept value 'restart'"
        );
    }
}
