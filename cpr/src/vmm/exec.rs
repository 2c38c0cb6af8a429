//! Mainline's `cpr-exec` mode (QEMU 10.2, `migration/cpr-exec.c`): `migrate` to a file
//! stops the guest and saves its device state, then the process `exec`s
//! `cpr-exec-command` in place (same pid). RAM (a memfd, or a shared `--mem-path` file)
//! stays mapped by descriptor across the `exec`, and so does the monitor's listening
//! socket; the CPR state naming those descriptors is in a memfd whose number is in
//! [`EXEC_STATE_ENV`](super::handoff::EXEC_STATE_ENV).
//!
//! Better than QEMU: the old image's teardown is not on the critical path. `exec` would
//! otherwise unmap the guest's RAM from the old address space and destroy the old KVM VM
//! (about 30 ms of kernel work) before the new image runs. A small helper process,
//! created with `CLONE_VM` just before the `exec`, shares the old address space and holds
//! copies of its descriptors, so the kernel has nothing to tear down at `exec`; the new
//! image lets the helper go once its guest runs, and the teardown happens in the helper,
//! next to the running guest.
//!
//! A failed `exec` (no such command, not executable) leaves the old image running its VM:
//! `migrate`'s status becomes `failed` and the guest resumes.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use cpr_runstate::RunState;

use super::Vmm;
use super::handoff::{self, EXEC_STATE_ENV};
use super::query_migrate::MigrationStatus;
use crate::error::Error;

/// The exec `migrate` scheduled: run once its reply is out.
#[derive(Debug)]
pub(super) struct ExecPlan {
    argv: Vec<String>,
    /// The run state before `migrate`.
    old: RunState,
}

/// The helper that holds the old image (see the module docs), as the new image sees it.
#[derive(Debug)]
pub struct ExecHelper {
    pid: i32,
    release: OwnedFd,
}

impl ExecHelper {
    /// Lets the old image go: its address space and KVM VM are torn down in the helper,
    /// which a thread then reaps.
    pub fn release(self) {
        drop(self.release);
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = std::thread::Builder::new()
            .name("cpr-exec-reaper".into())
            .spawn(move || {
                let _ = nix::sys::wait::waitpid(pid, None);
            });
    }
}

impl From<(i32, OwnedFd)> for ExecHelper {
    fn from((pid, release): (i32, OwnedFd)) -> Self {
        ExecHelper { pid, release }
    }
}

/// Why the exec failed (the old image runs on).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `cpr-exec-command` is unusable.
    #[error("cpr-exec-command {0}")]
    Command(&'static str),
    /// Setting up the descriptors failed.
    #[error("cpr-exec")]
    Handoff(#[source] handoff::HandoffError),
    /// `exec` itself failed.
    #[error("cannot exec {program}")]
    Exec {
        /// The command.
        program: String,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Checks `cpr-exec-command` as `migrate` starts.
pub(super) fn check_command(argv: &[String]) -> Result<(), ExecError> {
    if argv.is_empty() {
        return Err(ExecError::Command("is not set"));
    }
    if !argv
        .iter()
        .any(|a| a == "--incoming" || a.starts_with("--incoming=") || a == "-incoming")
    {
        return Err(ExecError::Command("must include --incoming"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ExecError::Command("contains a NUL byte"));
    }
    Ok(())
}

/// The helper's code: wait until the pipe's write end is closed everywhere, then exit
/// (taking the old image's address space and descriptors with it).
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked `[RawFd; 2]` made for this helper (read end, write
    // end); it is never freed.
    let fds = unsafe { *arg.cast::<[libc::c_int; 2]>() };
    // SAFETY: closes this process's own copy of the write end (its descriptor table is
    // its own: no CLONE_FILES).
    unsafe { libc::close(fds[1]) };
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads into a local one-byte buffer.
        let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
        if n <= 0 {
            break;
        }
    }
    0
}

/// Starts the helper: a process sharing this address space (`CLONE_VM`) with a copy of
/// the descriptor table. Returns its pid and the pipe end that releases it.
fn spawn_helper() -> Result<(i32, OwnedFd), ExecError> {
    let err = |op| {
        move |e: nix::errno::Errno| {
            ExecError::Handoff(handoff::HandoffError::Io {
                op,
                source: e.into(),
            })
        }
    };
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    let fds: &'static mut [libc::c_int; 2] = Box::leak(Box::new([rd.as_raw_fd(), wr.as_raw_fd()]));
    let stack: &'static mut [u8] = Box::leak(vec![0u8; 64 << 10].into_boxed_slice());
    // The stack grows down: pass its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `helper_main` only makes raw syscalls (no allocation, no locks), on a stack
    // and an argument that are leaked, so they outlive the helper in the shared address
    // space; SIGCHLD makes it a child this image (or the next) can reap.
    let pid = unsafe {
        libc::clone(
            helper_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::from_mut(fds).cast(),
        )
    };
    if pid < 0 {
        return Err(err("clone")(nix::errno::Errno::last()));
    }
    drop(rd);
    let wr = handoff::inheritable(wr.as_fd()).map_err(ExecError::Handoff)?;
    Ok((pid, wr))
}

impl Vmm {
    /// Schedules the exec of a completed cpr-exec `migrate`.
    pub(super) fn schedule_exec(&mut self, old: RunState) {
        self.exec = Some(ExecPlan {
            argv: self.migration.params().cpr_exec_command.clone(),
            old,
        });
    }

    /// Whether a cpr-exec is due (the caller flushes `migrate`'s reply, then calls
    /// [`run_exec`](Vmm::run_exec)).
    pub fn exec_pending(&self) -> bool {
        self.exec.is_some()
    }

    /// Execs `cpr-exec-command` in place. Returns only if that failed; the VM then runs on
    /// as it was before `migrate`.
    pub fn run_exec(&mut self) {
        let Some(plan) = self.exec.take() else {
            return;
        };
        let err = self.try_exec(&plan);
        log::error!("cpr-exec: {}", crate::error::chain(&err));
        self.migration.info.error_desc = Some(crate::error::chain(&err));
        self.set_migration_status(MigrationStatus::Failed);
        if let Some(m) = &self.monitor {
            m.hold(false);
        }
        if let Err(e) = self.rs.machine_mut().ram.acquire() {
            log::error!("{}", Error::from(e).chain());
        }
        let back = match plan.old {
            RunState::Running => self.rs.vm_start(),
            other => self.rs.runstate_set(other),
        };
        if let Err(e) = back {
            log::error!("cannot restore the VM's state: {}", Error::from(e).chain());
        }
        self.flush_events();
    }

    fn try_exec(&mut self, plan: &ExecPlan) -> ExecError {
        let mut keep: Vec<OwnedFd> = Vec::new();
        let mut inheritable = |fd: std::os::fd::BorrowedFd<'_>| -> Result<i32, ExecError> {
            let dup = handoff::inheritable(fd).map_err(ExecError::Handoff)?;
            let n = dup.as_raw_fd();
            keep.push(dup);
            Ok(n)
        };
        let mut ram = Vec::new();
        for b in self.ram.blocks() {
            if let (
                cpr_memory::Backing::Memfd { .. } | cpr_memory::Backing::InheritedFd(_),
                Some(fd),
            ) = (b.block().backing(), b.fd())
            {
                match inheritable(fd) {
                    Ok(n) => ram.push((b.block().idstr().to_string(), b.block().size(), n)),
                    Err(e) => return e,
                }
            }
        }
        let monitor = match self.monitor.as_ref().and_then(|m| m.listener()) {
            Some((path, fd)) => match inheritable(fd.as_fd()) {
                Ok(n) => Some((path, n)),
                Err(e) => return e,
            },
            None => None,
        };
        let (helper_pid, helper_fd) = match spawn_helper() {
            Ok(h) => h,
            Err(e) => return e,
        };
        // SAFETY (of the borrows below): every number was just made by `inheritable` or
        // `spawn_helper` and stays open in `keep` / `helper_fd` until the exec.
        let borrow = |n: i32| {
            // SAFETY: see above: `n` is open for the whole of this function.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(n) }
        };
        let out = handoff::Outgoing {
            ram: ram
                .iter()
                .map(|(id, size, n)| (id.clone(), *size, borrow(*n)))
                .collect(),
            monitor: monitor.as_ref().map(|(p, n)| (p.clone(), borrow(*n))),
            helper: Some((helper_pid, helper_fd.as_fd())),
        };
        let state = match handoff::exec_state(&out) {
            Ok(fd) => fd,
            Err(e) => {
                release_helper(helper_pid, helper_fd);
                return ExecError::Handoff(e);
            }
        };
        let program = plan.argv[0].clone();
        let cstr = |s: &str| CString::new(s).unwrap_or_default();
        let args: Vec<CString> = plan.argv.iter().map(|a| cstr(a)).collect();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != EXEC_STATE_ENV)
            .filter_map(|(k, v)| {
                let mut kv: OsString = k;
                kv.push("=");
                kv.push(v);
                CString::new(kv.into_vec()).ok()
            })
            .collect();
        env.push(cstr(&format!("{EXEC_STATE_ENV}={}", state.as_raw_fd())));
        log::info!("cpr-exec: exec {}", plan.argv.join(" "));
        let e = match nix::unistd::execvpe(&args[0], &args, &env) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        release_helper(helper_pid, helper_fd);
        drop(keep);
        ExecError::Exec { program, source: e }
    }
}

/// A failed exec: the helper goes (it only held copies) and is reaped.
fn release_helper(pid: i32, fd: OwnedFd) {
    ExecHelper { pid, release: fd }.release();
}
