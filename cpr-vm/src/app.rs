//! The `cpr-vm` process: command line → RAM, QMP monitor, VMM main loop.
//!
//! # Exit statuses
//!
//! | status | meaning |
//! |---|---|
//! | 0 ([`EXIT_OK`]) | `quit`, or the guest powered off |
//! | 1 ([`EXIT_FAILURE`]) | `cpr-vm` failed (e.g. at start-up: RAM, KVM, socket, `--incoming`) |
//! | 2 ([`EXIT_USAGE`]) | bad command line (clap) |
//! | 3 ([`EXIT_GUEST_FAILED`]) | the guest failed: a triple fault ended it, or the process quit while the guest was `guest-panicked` or `internal-error` |
//!
//! QEMU exits 0 in all of these but the first two: a supervisor could not tell a crashed
//! guest from a clean `quit`.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use crate::error::AppError;
use cpr::config::IncomingChannels;
use cpr::qmp::{EventSender, QmpServer, ServerConfig};
use cpr::vmm::{ExecHelper, Msg, Vmm, channel_pair, forward, handoff};

use crate::cli::Cli;
use crate::vfio::TestVfioDevice;

/// Exit status: `quit`, or the guest powered off.
pub const EXIT_OK: u8 = 0;
/// Exit status: `cpr-vm` itself failed (start-up error).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: command-line usage error (clap's).
#[allow(
    dead_code,
    reason = "clap exits with it; named here for the docs and the tests"
)]
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the guest failed (triple fault, `guest-panicked`, `internal-error`).
pub const EXIT_GUEST_FAILED: u8 = 3;

/// The text of `cpr-vm --help` about exit statuses.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  quit, or the guest powered off
  1  cpr-vm failed (e.g. at start-up)
  2  bad command line
  3  the guest failed: a triple fault ended it, or cpr-vm quit while the guest was
     guest-panicked or internal-error";

/// How long the last words (the reply to `quit`, `SHUTDOWN`) may take to reach the client
/// before the process exits anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The exit status of a VM that ended, given whether its guest failed.
pub fn exit_status(guest_failed: bool) -> u8 {
    if guest_failed {
        EXIT_GUEST_FAILED
    } else {
        EXIT_OK
    }
}

/// Runs a VM until `quit` (or the guest powers off or fails), then exits the process with
/// its [exit status](self); returns only on a start-up error.
pub fn run(cli: &Cli) -> Result<(), AppError> {
    // cpr-exec: the image that exec'd this one left its CPR state (read before any thread
    // starts, and removed from the environment).
    let mut handed = handoff::take_exec_state()?;
    let from_exec = handed.is_some();
    let t_start = std::time::Instant::now();
    let channels = IncomingChannels::from_args(&cli.incoming).map_err(AppError::Incoming)?;
    let (tx, rx) = channel_pair();
    // cpr-transfer: a monitor on a path of its own is up at once; on the old process's
    // path (where the old process still listens) it comes with the CPR state.
    let monitor_busy = channels.cpr.is_some()
        && cli
            .qmp
            .as_ref()
            .is_some_and(|p| std::os::unix::net::UnixStream::connect(p).is_ok());
    let mut release_monitor = None;
    let mut server = if monitor_busy {
        None
    } else {
        start_monitor(cli, handed.as_mut(), from_exec, &tx, &mut release_monitor)?
    };
    let events = server
        .as_ref()
        .map_or_else(EventSender::noop, QmpServer::events);
    let helper = handed
        .as_mut()
        .and_then(|h| h.helper.take())
        .map(ExecHelper::from);
    let mut vmm = if channels.cpr.is_some() {
        // The machine is built before the old process hands anything over: a memfd's
        // address space is only reserved until then.
        Vmm::awaiting_handoff(cli.vm.clone(), events, tx.clone())?
    } else {
        Vmm::with_handoff(cli.vm.clone(), events, tx.clone(), handed.as_mut())?
    };
    if let Some(h) = handed.as_mut() {
        // A listening socket handed over and not adopted (another path) is closed at once.
        h.monitor = None;
    }
    if let Some(server) = &server {
        vmm.set_monitor_listener(server.monitor_listener());
    }
    for name in &cli.vfio_test_devices {
        vmm.attach_vfio(Box::new(TestVfioDevice { name: name.clone() }));
    }
    log::debug!("start-up: VMM set up after {:?}", t_start.elapsed());
    vmm.start(cli.no_start, channels.main.as_ref())?;
    log::debug!("start-up: started after {:?}", t_start.elapsed());
    if let Some(path) = &channels.cpr {
        log::info!("waiting for the CPR state on {}", path.display());
        let (mut received, conn) = handoff::receive_on(path)?;
        let t = std::time::Instant::now();
        vmm.bind_handoff(&mut received)?;
        log::debug!("cpr-transfer: RAM bound in {:?}", t.elapsed());
        if monitor_busy {
            server = start_monitor(cli, Some(&mut received), false, &tx, &mut release_monitor)?;
            if let Some(server) = &server {
                vmm.set_events(server.events());
                vmm.set_monitor_listener(server.monitor_listener());
            }
        }
        // A listening socket handed over and not adopted is closed here: holding it would
        // leave clients of the old path waiting on a socket no one serves.
        drop(received);
        let adopted = release_monitor.is_some();
        if let Some(release) = release_monitor.take() {
            vmm.on_takeover(release);
        }
        // The machine is built and the main channel listens: the old process may stop
        // its guest now.
        handoff::ready(conn, adopted)?;
        log::debug!(
            "cpr-transfer: ready {:?} after the CPR state arrived",
            t.elapsed()
        );
    }
    if let Some(helper) = helper {
        // This image runs: the old one can be torn down (in its helper, off this path).
        helper.release();
    }
    while !vmm.should_quit() {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => vmm.handle(msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if vmm.exec_pending() {
            // `migrate`'s reply and its events reach the client before the exec.
            if let Some(server) = &server {
                server.flush(FLUSH_TIMEOUT);
            }
            vmm.run_exec();
        }
    }
    // The monitor's path is free before the reply to `quit` leaves: a new process started
    // on the reply binds it. Only our own socket is removed; the client keeps its
    // connection for the reply and SHUTDOWN.
    if let Some(server) = &mut server {
        server.close_listener();
    }
    vmm.finish_quit();
    if let Some(server) = &server {
        server.flush(FLUSH_TIMEOUT);
    }
    let status = if vmm.takeover_failed() {
        EXIT_FAILURE
    } else {
        exit_status(vmm.guest_failed())
    };
    // Leave without tearing the VM down by hand: the kernel does that when the process
    // exits, and nobody waits for it. The client sees EOF then.
    std::process::exit(i32::from(status))
}

/// Starts the QMP monitor (if `--qmp`): on the listening socket the old process handed
/// over when it is for the same path (served at once after an exec; after a transfer
/// only once `release` is called), else on a socket of its own.
fn start_monitor(
    cli: &Cli,
    handed: Option<&mut handoff::Received>,
    from_exec: bool,
    tx: &std::sync::mpsc::Sender<Msg>,
    release: &mut Option<cpr::qmp::Release>,
) -> Result<Option<QmpServer>, AppError> {
    let Some(path) = &cli.qmp else {
        return Ok(None);
    };
    let mut cfg = ServerConfig::new(path);
    cfg.vcpus = cli.vm.smp;
    let (requests_tx, requests) = std::sync::mpsc::channel();
    let handed_listener = handed
        .and_then(|h| h.monitor.take())
        .filter(|(p, _)| same_path(p, path));
    let started = match handed_listener {
        Some((_, fd)) => QmpServer::adopt(cfg, fd, requests_tx, !from_exec).map(|(server, r)| {
            *release = r;
            server
        }),
        None => QmpServer::start_with_sender(cfg, requests_tx),
    };
    let server = started.map_err(|source| AppError::QmpSocket {
        path: path.clone(),
        source,
    })?;
    forward(requests, tx.clone(), Msg::Qmp);
    Ok(Some(server))
}

/// Whether two socket paths name the same place (as given, or once canonicalized).
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_guest_does_not_exit_like_quit() {
        assert_eq!(exit_status(false), EXIT_OK);
        assert_eq!(exit_status(true), EXIT_GUEST_FAILED);
        let all = [EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_GUEST_FAILED];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "{all:?}");
            assert!(EXIT_STATUS_HELP.contains(&format!("  {a}  ")), "{a}");
        }
    }
}
