//! Driving real `cpr-vm` processes over QMP: used by `cpr-vm demo`, `cargo xtask e2e` and
//! `cargo xtask bench`, so all three exercise exactly what an operator does. A tool, not
//! part of the `cpr` library (`publish = false`).

mod cycle;
pub mod handoff;

pub use cycle::{Cycle, VmFiles, cycle};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use cpr::qmp::{ClientError, Event, QmpClient};

/// A harness failure, worded for the person watching.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QMP failed.
    #[error("{what}: {source}")]
    Qmp {
        /// What we were doing.
        what: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// A check failed.
    #[error("{0}")]
    Check(String),
}

/// Result alias for the harness.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// What `query-guest-progress` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Progress {
    /// Pages the workload processed since its fresh boot (all vCPUs).
    pub progress: u64,
    /// Timer interrupts the guest counted (all vCPUs).
    pub ticks: u64,
    /// RAM check failures.
    pub errors: u64,
    /// Reports received by this process (starts again in a new process).
    pub reports: u64,
    /// Per vCPU.
    #[serde(default)]
    pub vcpus: Vec<VcpuProgress>,
    /// The workload's counters read from guest RAM by this process (moves as the guest
    /// runs, with no report); absent while the process has no machine.
    #[serde(default, rename = "ram-progress")]
    pub ram_progress: Option<u64>,
}

/// One vCPU's part of [`Progress`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VcpuProgress {
    /// Pages processed.
    pub progress: u64,
    /// Timer ticks.
    pub ticks: u64,
    /// RAM check failures.
    pub errors: u64,
    /// Workload generation.
    pub generation: u64,
}

/// A running `cpr-vm` process with a negotiated QMP connection.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    qmp: QmpClient,
    /// When the process was spawned.
    pub spawned: Instant,
    /// When its QMP monitor answered.
    pub ready: Instant,
}

/// The `cpr-vm` binary next to the running executable (for `cpr-vm demo` that is itself;
/// for xtask it is `target/<profile>/cpr-vm`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(name));
    if exe.file_name().is_some_and(|f| f == name) {
        return exe;
    }
    exe.parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

impl VmProcess {
    /// Starts `binary args...` (which must include `--qmp qmp_path`) and connects.
    /// The child's stdout goes to `log` if given (the guest console), else is discarded.
    ///
    /// Whatever is at `qmp_path` is left alone: a stale socket is the new process's to
    /// handle, as it is when an operator starts it.
    pub fn spawn(
        binary: &Path,
        args: &[OsString],
        qmp_path: &Path,
        log: Option<&Path>,
    ) -> Result<VmProcess> {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        VmProcess::spawn_command(cmd, qmp_path, log)
    }

    /// Like [`spawn`](VmProcess::spawn), for a prepared command (e.g. `cpr-vm` run through
    /// `sh -c 'umask 000; exec "$0" "$@"'`).
    pub fn spawn_command(cmd: Command, qmp_path: &Path, log: Option<&Path>) -> Result<VmProcess> {
        let (child, spawned) = VmProcess::start_child(cmd, log)?;
        VmProcess::connect(child, spawned, qmp_path)
    }

    /// Starts `binary args...` without connecting to its monitor (a cpr-transfer target
    /// that serves the old process's socket only once it has taken over). Connect with
    /// [`connect`](VmProcess::connect).
    pub fn spawn_unconnected(
        binary: &Path,
        args: &[OsString],
        log: Option<&Path>,
    ) -> Result<(Child, Instant)> {
        let mut cmd = Command::new(binary);
        cmd.args(args);
        VmProcess::start_child(cmd, log)
    }

    fn start_child(mut cmd: Command, log: Option<&Path>) -> Result<(Child, Instant)> {
        let binary = cmd.get_program().to_string_lossy().into_owned();
        let spawn_err = |source| HarnessError::Spawn {
            binary: binary.clone(),
            source,
        };
        let stdout = match log {
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Stdio::from)
                .map_err(spawn_err)?,
            None => Stdio::null(),
        };
        let spawned = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .map_err(spawn_err)?;
        Ok((child, spawned))
    }

    /// Connects to the monitor of `child` (spawned at `spawned`) at `qmp_path`.
    pub fn connect(mut child: Child, spawned: Instant, qmp_path: &Path) -> Result<VmProcess> {
        let binary = format!("cpr-vm (pid {})", child.id());
        let deadline = spawned + Duration::from_secs(20);
        // Connect in short slices, so that a process that exits at start-up is reported
        // as such at once.
        let qmp = loop {
            match QmpClient::connect_with_retry(qmp_path, Duration::from_millis(100)) {
                Ok(q) => break q,
                Err(ClientError::Timeout(_)) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(HarnessError::Check(format!(
                            "{binary} exited ({status}) before its monitor {} answered",
                            qmp_path.display()
                        )));
                    }
                }
                Err(source) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(HarnessError::Qmp {
                        what: format!(
                            "connecting to {} (process exited: {status:?})",
                            qmp_path.display()
                        ),
                        source,
                    });
                }
            }
        };
        Ok(VmProcess {
            child,
            qmp,
            spawned,
            ready: Instant::now(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The QMP client.
    pub fn qmp(&mut self) -> &mut QmpClient {
        &mut self.qmp
    }

    /// Executes a command; a QMP error is an `Err` carrying the server's `desc`.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        self.qmp
            .execute(command, args)
            .map_err(|source| HarnessError::Qmp {
                what: command.to_string(),
                source,
            })
    }

    /// Executes a command that must fail; returns the error's `desc`.
    pub fn execute_err(&mut self, command: &str, args: Value) -> Result<String> {
        match self.qmp.execute(command, args) {
            Ok(v) => Err(HarnessError::Check(format!(
                "{command} succeeded ({v}) but should have failed"
            ))),
            Err(ClientError::Qmp(e)) => Ok(e.desc),
            Err(source) => Err(HarnessError::Qmp {
                what: command.to_string(),
                source,
            }),
        }
    }

    /// `query-status`'s `status`.
    pub fn status(&mut self) -> Result<String> {
        let v = self.execute("query-status", json!({}))?;
        Ok(v["status"].as_str().unwrap_or("?").to_string())
    }

    /// `query-guest-progress`.
    pub fn progress(&mut self) -> Result<Progress> {
        let v = self.execute("query-guest-progress", json!({}))?;
        serde_json::from_value(v).map_err(|e| HarnessError::Check(format!("bad progress: {e}")))
    }

    /// Mainline's CPR reboot mode: `x-ignore-shared` as `ignore_shared`, then
    /// `migrate-set-parameters {mode: cpr-reboot}`.
    pub fn set_cpr_reboot(&mut self, ignore_shared: bool) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]}),
        )?;
        self.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))
            .map(drop)
    }

    /// Polls `query-migrate` (every 500 µs, so that timings stay close) until `completed`
    /// and returns that answer; `failed`, or no completion within `timeout`, is an error.
    pub fn wait_migration_completed(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info["status"].as_str() {
                Some("completed") => return Ok(info),
                Some("failed") => {
                    return Err(HarnessError::Check(format!("migration failed: {info}")));
                }
                _ if Instant::now() >= deadline => {
                    return Err(HarnessError::Check(format!(
                        "migration did not complete: {info}"
                    )));
                }
                _ => std::thread::sleep(Duration::from_micros(500)),
            }
        }
    }

    /// Polls until the guest's progress exceeds `above` (and, if `ticks_above` is given,
    /// its ticks exceed that too); returns the first such report.
    pub fn wait_progress(
        &mut self,
        above: u64,
        ticks_above: Option<u64>,
        timeout: Duration,
    ) -> Result<Progress> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress()?;
            if p.progress > above && ticks_above.is_none_or(|t| p.ticks > t) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Check(format!(
                    "guest made no progress past {above} within {timeout:?} (last: {p:?})"
                )));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Waits for the guest's next report in this process (one the VMM had not seen when
    /// this was called) and returns it: the first proof that the guest runs here, and what
    /// it says about its progress (a guest that restarted would report a small value).
    pub fn wait_new_report(&mut self, timeout: Duration) -> Result<Progress> {
        let seen = self.progress()?.reports;
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress()?;
            if p.reports > seen {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Check(format!(
                    "the guest made no report within {timeout:?} (last: {p:?})"
                )));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Waits for an event.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event> {
        self.qmp
            .wait_event(name, timeout)
            .map_err(|source| HarnessError::Qmp {
                what: format!("waiting for {name}"),
                source,
            })
    }

    /// Events received so far.
    pub fn events(&mut self) -> Result<Vec<Event>> {
        self.qmp.events().map_err(|source| HarnessError::Qmp {
            what: "reading events".into(),
            source,
        })
    }

    /// `quit`, then waits for the process to exit.
    pub fn quit(mut self) -> Result<ExitStatus> {
        // The reply may or may not arrive before the process is gone; both are fine.
        let _ = self.qmp.execute("quit", json!({}));
        self.wait_exit(Duration::from_secs(20))
    }

    /// Connects again to the monitor at `qmp_path` (after a cpr-exec, whose `exec` closed
    /// the old connection; the process is the same).
    pub fn reconnect(&mut self, qmp_path: &Path) -> Result<()> {
        // The monitor serves one client at a time: let go of this one first.
        self.qmp.close();
        self.qmp =
            QmpClient::connect_with_retry(qmp_path, Duration::from_secs(20)).map_err(|source| {
                HarnessError::Qmp {
                    what: format!("reconnecting to {}", qmp_path.display()),
                    source,
                }
            })?;
        self.ready = Instant::now();
        Ok(())
    }

    /// `quit`, and returns as soon as its reply arrives, while the process is still
    /// exiting (the kernel tears its VM down): the monitor's path is free by then, and a
    /// completed checkpoint has handed the RAM over, so a new process can start and load
    /// at once. Reap it later with [`wait_exit`](Self::wait_exit).
    pub fn quit_on_reply(&mut self) -> Result<()> {
        self.execute("quit", json!({})).map(drop)
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(|e| HarnessError::Check(format!("cannot reap cpr-vm: {e}")))
    }

    /// Waits for the process to exit (killing it after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => {
                    let _ = self.child.kill();
                    return Err(HarnessError::Check(format!(
                        "cpr-vm did not exit within {timeout:?}"
                    )));
                }
            }
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
