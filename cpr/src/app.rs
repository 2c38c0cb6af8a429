//! The `cpr-vm` process: command line → RAM, QMP monitor, VMM main loop.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use crate::config::Cli;
use crate::error::{Error, Result};
use crate::qmp::{EventSender, QmpServer, ServerConfig};
use crate::vmm::{Msg, Vmm, channel_pair, forward};

/// Runs a VM until `quit` (or the guest powers off).
pub fn run(cli: &Cli) -> Result<()> {
    let (tx, rx) = channel_pair();
    let server = match &cli.qmp {
        Some(path) => {
            let mut cfg = ServerConfig::new(path);
            cfg.vcpus = cli.vm.smp;
            let (server, requests) = QmpServer::start(cfg).map_err(|e| {
                Error::Other(format!("cannot create QMP socket {}: {e}", path.display()))
            })?;
            forward(requests, tx.clone(), Msg::Qmp);
            Some(server)
        }
        None => None,
    };
    let events = server
        .as_ref()
        .map_or_else(EventSender::noop, QmpServer::events);
    let mut vmm = Vmm::new(cli.vm.clone(), events, tx)?;
    vmm.start(cli.no_start, cli.incoming.as_ref())?;
    while !vmm.should_quit() {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => vmm.handle(msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Give the writer thread a moment to deliver the reply to `quit` and the SHUTDOWN
    // event, then leave without tearing the VM down by hand: the kernel does that when the
    // process exits, and nobody waits for it.
    std::thread::sleep(Duration::from_millis(2));
    if let Some(server) = &server {
        // Joining the server's threads would only delay the exit; remove its socket.
        let _ = std::fs::remove_file(server.path());
    }
    std::process::exit(0)
}
