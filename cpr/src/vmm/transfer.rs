//! Mainline's `cpr-transfer` mode (QEMU 10.0, `migration/cpr-transfer.c`): a new process,
//! started beforehand with a `cpr` channel and a main channel, takes over the guest while
//! the old one is still alive.
//!
//! The hand-off, and who owns what at each step (`docs/DESIGN.md` has the picture):
//!
//! 1. The old process (`migrate`, mode `cpr-transfer`) checks everything it can first
//!    (QEMU's refusals: the `cpr` channel must be a UNIX socket, the main channel must
//!    stream, all RAM must be shareable), then connects to the `cpr` channel and sends its
//!    RAM descriptors and monitor listener (`handoff.rs`). The guest runs on.
//! 2. The new process maps the RAM, **builds its whole machine** (KVM VM, memslots,
//!    irqchip, PIT, vCPU threads, devices), listens on its main channel and answers
//!    `READY`. Only then does the old process stop the guest: the build is never inside
//!    the guest's pause. (QEMU builds the new machine only after the cpr state arrives
//!    and while the old guest runs too, but starts loading devices only after that.)
//! 3. The old process stops the guest (STOP), writes the device state (the same sections
//!    as every checkpoint; RAM stays in place) and sends it, framed, on the main channel.
//! 4. The new process reads and checks all of it before anything changes, then answers
//!    `ACCEPT` (or `REFUSE` and why). Only on `ACCEPT` does the old process release the RAM
//!    lock (`ownership.rs`) and say `GO`; the new one takes the lock and says `DONE`,
//!    restores the state into the machine it built and resumes the guest (RESUME).
//! 5. The old process completes (`postmigrate`), stops accepting on the monitor socket and
//!    says `MONITOR`; only then does the new one serve the monitor socket it was handed.
//!
//! Failure before `DONE` leaves the old VM running: the old process takes its lock back
//! and resumes the guest; its RAM was never written by the new one (whose vCPUs never ran)
//! and its monitor never stopped serving. A new process that fails exits with status 1.
//! The old process's exit (about 30 ms of kernel teardown) happens after all this, off
//! the critical path.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use cpr_memory::Backing;
use cpr_migration_file::QemuFile;
use cpr_runstate::RunState;
use nix::errno::Errno;

use super::cpr_ops::{Flavor, LoadStage};
use super::handoff::{self, HandoffError, READY, READY_OWN_MONITOR};
use super::query_migrate::{MigrationInfo, MigrationStatus};
use super::{Msg, Vmm};
use crate::error::{Error, Result};
use crate::qmp::socket::{bind_private, remove_if_ours};

/// The main channel's frame: magic, then the stream's length.
const FRAME_MAGIC: &[u8; 4] = b"CPRM";
/// Largest device-state stream accepted (RAM never travels on this channel).
const MAX_STREAM: u64 = 256 << 20;
/// The new process accepts the state.
const ACCEPT: u8 = b'A';
/// The new process refuses the state (followed by why, as text).
const REFUSE: u8 = b'N';
/// The old process has released the RAM.
const GO: u8 = b'G';
/// The new process holds the RAM.
const DONE: u8 = b'D';
/// The old process no longer accepts on the monitor socket.
const MONITOR: u8 = b'M';

/// How long the old process waits for the new one to build its machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the old process tries to reach the main channel (with `defer`, the new
/// process listens only once `migrate-incoming` is given).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long either side waits for an answer in the hand-over itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The monitor's listening socket, as the VMM sees it (the QMP server implements it).
pub trait MonitorListener: Send + Sync {
    /// The socket's path and a duplicate of the listening descriptor, while it listens.
    fn listener(&self) -> Option<(PathBuf, OwnedFd)>;
    /// Another process serves the socket from now on: stop accepting on it, and never
    /// remove its path.
    fn handed_over(&self);
    /// Stops (`true`) or resumes accepting clients, keeping the socket: connections wait
    /// in its backlog (for the image a cpr-exec is about to start).
    fn hold(&self, held: bool);
}

/// The new process's side of the main channel, as it reaches the main loop.
#[derive(Debug)]
pub struct IncomingStream {
    /// The connection to the old process.
    conn: UnixStream,
    /// The device-state stream it sent.
    stream: Vec<u8>,
}

/// cpr-transfer state of the VMM.
#[derive(Default)]
pub(super) struct TransferState {
    /// Incoming: the main channel's socket path and identity, while listening.
    listening: Option<(PathBuf, (u64, u64))>,
    /// Incoming: what to run once the old process has let go of the monitor socket.
    takeover: Option<Box<dyn FnOnce() + Send>>,
    /// Incoming: this process failed to take over and must exit.
    pub failed: bool,
}

/// Why a cpr-transfer `migrate` is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A RAM block the new process cannot take over (QEMU's words).
    #[error(
        "Memory region {0} is not compatible with CPR. share=on is required for memory-backend objects, and aux-ram-share=on is required."
    )]
    NotShareable(String),
    /// The `cpr` channel could not be reached.
    #[error("cannot connect to the cpr channel {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The main channel could not be reached.
    #[error("cannot connect to the main channel {}", path.display())]
    ConnectMain {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The new process did not become ready.
    #[error("the new process did not take the cpr state")]
    NotReady(#[source] HandoffError),
    /// The new process refused the state.
    #[error("the new process refused the state: {0}")]
    Refused(String),
    /// The hand-over broke down.
    #[error("the hand-over to the new process failed")]
    HandOver(#[source] HandoffError),
}

impl Vmm {
    /// Lets the VMM hand over the monitor's listening socket (cpr-transfer, cpr-exec).
    pub fn set_monitor_listener(&mut self, monitor: Arc<dyn MonitorListener>) {
        self.monitor = Some(monitor);
    }

    /// Runs `start` once this process has taken over from the old one and the old one no
    /// longer accepts on the monitor socket (the caller starts serving it then).
    pub fn on_takeover(&mut self, start: Box<dyn FnOnce() + Send>) {
        self.transfer.takeover = Some(start);
    }

    /// Whether this process, started to take over from another, failed to, and must exit.
    pub fn takeover_failed(&self) -> bool {
        self.transfer.failed
    }

    /// The RAM blocks a hand-over carries by descriptor (those with no path), after
    /// checking that every block can be taken over at all.
    pub(super) fn handed_ram(
        &self,
    ) -> std::result::Result<Vec<(String, u64, std::os::fd::BorrowedFd<'_>)>, TransferError> {
        let mut out = Vec::new();
        for b in self.ram.blocks() {
            let block = b.block();
            if !block.shared() || !block.backing().has_fd() {
                return Err(TransferError::NotShareable(block.mr_name().to_string()));
            }
            if let (Backing::Memfd { .. } | Backing::InheritedFd(_), Some(fd)) =
                (block.backing(), b.fd())
            {
                out.push((block.idstr().to_string(), block.size(), fd));
            }
        }
        Ok(out)
    }

    /// `migrate` in cpr-transfer mode (the checks common to every `migrate` are done).
    pub(super) fn migrate_transfer(
        &mut self,
        main: &Path,
        cpr: &Path,
        old: RunState,
    ) -> Result<()> {
        // Refused before anything happens: RAM the new process could not take over.
        let t = Instant::now();
        let ram = self.handed_ram().map_err(Error::Transfer)?;
        let monitor = self.monitor.as_ref().and_then(|m| m.listener());
        // 1. The cpr state, while the guest runs on.
        let cpr_conn = UnixStream::connect(cpr).map_err(|source| {
            Error::Transfer(TransferError::Connect {
                path: cpr.to_path_buf(),
                source,
            })
        })?;
        let out = handoff::Outgoing {
            ram,
            monitor: monitor.as_ref().map(|(p, fd)| (p.clone(), fd.as_fd())),
            helper: None,
        };
        handoff::send(&cpr_conn, &out).map_err(|e| Error::Transfer(TransferError::NotReady(e)))?;
        // 2. The new process builds its machine; the guest still runs.
        let adopted = match handoff::recv_byte(&cpr_conn, READY_TIMEOUT, "building the new machine")
        {
            Ok(Some(READY)) => true,
            Ok(Some(READY_OWN_MONITOR)) => false,
            Ok(_) => {
                return Err(Error::Transfer(TransferError::NotReady(
                    HandoffError::Closed("before it was ready"),
                )));
            }
            Err(e) => return Err(Error::Transfer(TransferError::NotReady(e))),
        };
        drop(cpr_conn);
        log::debug!(
            "cpr-transfer: the new process was ready after {:?}",
            t.elapsed()
        );
        let conn = connect_retry(main, CONNECT_TIMEOUT).map_err(|source| {
            Error::Transfer(TransferError::ConnectMain {
                path: main.to_path_buf(),
                source,
            })
        })?;
        // 3. Stop and write the device state.
        let start = Instant::now();
        self.migration.info = MigrationInfo::default();
        self.set_migration_status(MigrationStatus::Setup);
        if !self.stop_for_migration(old) {
            return Ok(());
        }
        let stop = Instant::now();
        log::debug!("cpr-transfer: stopped after {:?}", t.elapsed());
        match self.hand_over(&conn, old) {
            Ok(()) => {
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                self.migration.info.total_time = Some(ms(start.elapsed()));
                self.migration.info.downtime = Some(ms(stop.elapsed()));
                self.set_migration_status(MigrationStatus::Completed);
                self.enter_postmigrate();
                // 5. The monitor socket is the new process's now.
                if adopted
                    && monitor.is_some()
                    && let Some(m) = &self.monitor
                {
                    m.handed_over();
                }
                let _ = handoff::send_byte(&conn, MONITOR);
            }
            Err(e) => {
                // The new process never ran the guest: take the RAM back and run on.
                if let Err(lock) = self.rs.machine_mut().ram.acquire() {
                    log::error!("{}", Error::from(lock).chain());
                }
                self.migration_failed(old, &e);
            }
        }
        Ok(())
    }

    /// Steps 3–4 on the old side: write, send, and hand the RAM over on `ACCEPT`.
    fn hand_over(&mut self, conn: &UnixStream, old: RunState) -> Result<()> {
        let fail = |e| Error::Transfer(TransferError::HandOver(e));
        // The stream is small (RAM stays in place): it is written in memory and sent in
        // one frame.
        let mut qf = QemuFile::memory_writer("cpr-transfer");
        let written = self.write_checkpoint(&mut qf, old, None);
        self.rs.machine_mut().ram.checkpoint_tagged();
        let written = written.map_err(|f| Error::Save {
            errno: f.errno,
            source: f.source,
        })?;
        let stream = qf.into_bytes().map_err(|e| Error::Save {
            errno: e.errno().unwrap_or(Errno::EIO),
            source: Box::new(e),
        })?;
        if let Some(plan) = &written.epoch {
            plan.apply().map_err(|f| Error::Save {
                errno: Errno::EOPNOTSUPP,
                source: format!("cannot tag {} with the checkpoint's epoch", f.display()).into(),
            })?;
        }
        // A hand-over that does not complete leaves the RAM files' tags as they were.
        let undo = |e: Error| {
            if let Some(plan) = &written.epoch {
                plan.undo();
            }
            e
        };
        if let Err(e) = send_frame(conn, &stream) {
            return Err(undo(fail(e)));
        }
        match handoff::recv_byte(conn, ANSWER_TIMEOUT, "checking the state") {
            Ok(Some(ACCEPT)) => {}
            Ok(Some(REFUSE)) => {
                let mut why = String::new();
                let _ = conn.take(4096).read_to_string(&mut why);
                return Err(undo(Error::Transfer(TransferError::Refused(why))));
            }
            Ok(_) => {
                return Err(undo(fail(HandoffError::Closed("while checking the state"))));
            }
            Err(e) => return Err(undo(fail(e))),
        }
        // The RAM changes hands: ours until now, the new process's from `DONE`.
        self.rs.machine_mut().ram.release();
        if let Err(e) = handoff::send_byte(conn, GO) {
            return Err(undo(fail(e)));
        }
        match handoff::recv_byte(conn, ANSWER_TIMEOUT, "taking the RAM") {
            Ok(Some(DONE)) => Ok(()),
            Ok(_) => Err(undo(fail(HandoffError::Closed("before taking the RAM")))),
            Err(e) => Err(undo(fail(e))),
        }
    }

    /// `--incoming unix:PATH` or `migrate-incoming` with a UNIX main channel: listen, and
    /// let a thread read the old process's stream.
    pub(super) fn listen_transfer(&mut self, path: &Path) -> Result<()> {
        let (listener, ident) = bind_private(path).map_err(|source| {
            Error::Transfer(TransferError::ConnectMain {
                path: path.to_path_buf(),
                source,
            })
        })?;
        self.transfer.listening = Some((path.to_path_buf(), ident));
        self.migration.info = MigrationInfo::default();
        self.set_migration_status(MigrationStatus::Setup);
        let tx: Sender<Msg> = self.msgs.clone();
        let spawned = std::thread::Builder::new()
            .name("cpr-transfer-in".into())
            .spawn(move || {
                let got = accept_conn(&listener).and_then(|conn| {
                    let stream = read_frame(&conn)?;
                    Ok(IncomingStream { conn, stream })
                });
                let _ = tx.send(Msg::Transfer(got));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the main channel thread: {e}");
        }
        Ok(())
    }

    /// The old process's stream arrived (or could not be read): load it, taking over.
    pub(super) fn transfer_arrived(
        &mut self,
        got: std::result::Result<IncomingStream, HandoffError>,
    ) {
        if let Some((path, ident)) = self.transfer.listening.take() {
            remove_if_ours(&path, ident);
        }
        self.set_migration_status(MigrationStatus::Active);
        let result = match got {
            Ok(IncomingStream { conn, stream }) => self.take_over(conn, stream),
            Err(e) => Err(Error::Transfer(TransferError::HandOver(e))),
        };
        match result {
            Ok(()) => {
                self.migration.incoming_deferred = false;
                self.set_migration_status(MigrationStatus::Completed);
            }
            Err(e) => {
                log::error!("cpr-transfer: {}", e.chain());
                self.migration.info.error_desc = Some(e.chain());
                self.set_migration_status(MigrationStatus::Failed);
                self.transfer.failed = true;
                self.quit = true;
            }
        }
    }

    fn take_over(&mut self, conn: UnixStream, stream: Vec<u8>) -> Result<()> {
        // Every pass of the loader reads these very bytes, in place.
        let stream = Arc::new(stream);
        let open = || -> cpr_savevm::Result<QemuFile> {
            Ok(QemuFile::from_shared(Arc::clone(&stream), "cpr-transfer"))
        };
        let refuse = |conn: &UnixStream, e: Error| {
            let _ = (&*conn).write_all(&[REFUSE]);
            let _ = (&*conn).write_all(e.chain().as_bytes());
            e
        };
        let kind = match open().and_then(|mut f| cpr_savevm::probe(&mut f)) {
            Ok(k) => k,
            Err(e) => {
                return Err(refuse(
                    &conn,
                    Error::Load {
                        errno: Errno::EINVAL,
                        source: Box::new(e),
                    },
                ));
            }
        };
        if kind.has_ram() {
            return Err(refuse(
                &conn,
                Error::Transfer(TransferError::Refused(
                    "a cpr-transfer stream carries no RAM pages".into(),
                )),
            ));
        }
        // Everything is checked before the hook runs; the hook is the hand-over's commit.
        // Everything is checked before the hook first runs: ACCEPT. The old process then
        // releases the RAM while this one restores the state into the machine it built
        // (no RAM is touched); the hook's second call takes the RAM: the commit point.
        let mut accepted = false;
        let mut commit = |vmm: &mut Vmm, stage: LoadStage| -> Result<()> {
            let broke = |e| Error::Transfer(TransferError::HandOver(e));
            match stage {
                LoadStage::Checked => {
                    handoff::send_byte(&conn, ACCEPT).map_err(broke)?;
                    accepted = true;
                    Ok(())
                }
                LoadStage::Restored => {
                    match handoff::recv_byte(&conn, ANSWER_TIMEOUT, "the RAM") {
                        Ok(Some(GO)) => {}
                        Ok(_) => {
                            return Err(broke(HandoffError::Closed("before handing over the RAM")));
                        }
                        Err(e) => return Err(broke(e)),
                    }
                    vmm.rs.machine_mut().ram.acquire()?;
                    handoff::send_byte(&conn, DONE).map_err(broke)
                }
            }
        };
        let loaded = self.load_stream_with(open, Flavor::Mainline, false, &mut commit);
        if let Err(e) = loaded {
            // Refused before ACCEPT: say why. After it, the old process sees the channel
            // break before DONE, and runs on.
            if !accepted {
                return Err(refuse(&conn, e));
            }
            return Err(e);
        }
        // 5. Serve the monitor once the old process has let go of it.
        let takeover = self.transfer.takeover.take();
        std::thread::Builder::new()
            .name("cpr-transfer-monitor".into())
            .spawn(move || {
                match handoff::recv_byte(&conn, ANSWER_TIMEOUT, "the monitor") {
                    Ok(Some(MONITOR)) | Ok(None) => {}
                    other => log::warn!("cpr-transfer: no word on the monitor socket: {other:?}"),
                }
                if let Some(start) = takeover {
                    start();
                }
            })
            .map(drop)
            .map_err(|e| {
                Error::Transfer(TransferError::HandOver(HandoffError::Io {
                    op: "starting the monitor thread",
                    source: e,
                }))
            })
    }
}

/// Accepts the old process's connection.
fn accept_conn(listener: &UnixListener) -> std::result::Result<UnixStream, HandoffError> {
    let (conn, _) = listener.accept().map_err(|source| HandoffError::Io {
        op: "accepting the main channel",
        source,
    })?;
    Ok(conn)
}

/// Reads the old process's framed stream (it comes once the old process has stopped the
/// guest, right after it connected). A thread of its own waits for it, so that the main
/// loop (and the monitor) stay responsive.
fn read_frame(conn: &UnixStream) -> std::result::Result<Vec<u8>, HandoffError> {
    let io = |op| move |source| HandoffError::Io { op, source };
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(io("setting a timeout"))?;
    let mut head = [0u8; 12];
    (&*conn)
        .read_exact(&mut head)
        .map_err(io("reading the stream's frame"))?;
    if &head[..4] != FRAME_MAGIC {
        return Err(HandoffError::Invalid(
            "the main channel carries no cpr-transfer stream".into(),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[4..]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_STREAM {
        return Err(HandoffError::Invalid(format!(
            "a stream of {len} bytes (at most {MAX_STREAM})"
        )));
    }
    let mut bytes = Vec::new();
    conn.take(len)
        .read_to_end(&mut bytes)
        .map_err(io("reading the stream"))?;
    if bytes.len() as u64 != len {
        return Err(HandoffError::Closed("in the middle of the stream"));
    }
    Ok(bytes)
}

/// Sends `stream`, framed, in one write.
fn send_frame(conn: &UnixStream, stream: &[u8]) -> std::result::Result<(), HandoffError> {
    let len = u64::try_from(stream.len()).unwrap_or(u64::MAX);
    let mut frame = Vec::with_capacity(12 + stream.len());
    frame.extend_from_slice(FRAME_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(stream);
    (&*conn)
        .write_all(&frame)
        .map_err(|source| HandoffError::Io {
            op: "sending the stream",
            source,
        })
}

/// Connects to `path`, retrying while nothing listens there yet.
fn connect_retry(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hostile_frames_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("main.sock");
        let (listener, _) = bind_private(&path).expect("bind");
        let stream = b"QEVM stream".to_vec();
        let sender = std::thread::spawn({
            let path = path.clone();
            move || {
                let c = connect_retry(&path, Duration::from_secs(5)).expect("connect");
                send_frame(&c, &stream).expect("send");
                c
            }
        });
        let got = accept_conn(&listener).expect("accept");
        assert_eq!(read_frame(&got).expect("frame"), b"QEVM stream");
        drop(sender.join());
        // A frame that lies about its length, and one that is not ours.
        for (bytes, want) in [
            (b"CPRM\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(), "at most"),
            (b"HTTP/1.1 200".to_vec(), "no cpr-transfer stream"),
            (
                b"CPRM\x10\x00\x00\x00\x00\x00\x00\x00abc".to_vec(),
                "middle of the stream",
            ),
        ] {
            let path = path.clone();
            let t = std::thread::spawn(move || {
                let mut c = UnixStream::connect(&path).expect("connect");
                c.write_all(&bytes).expect("write");
            });
            let err = accept_conn(&listener)
                .and_then(|c| read_frame(&c))
                .expect_err("refused");
            assert!(err.to_string().contains(want), "{err}");
            t.join().expect("writer");
        }
        // A live socket is never replaced.
        bind_private(&path).expect_err("a live socket");
    }
}
