//! The QMP server: Unix socket, one client at a time, negotiation and
//! command mode, dispatch to the VMM over a channel.

use super::command;
use super::error::{ErrorClass, QmpError};
use super::hmp::{self, HmpPlan};
use super::protocol::{VersionInfo, VersionTriple, check_envelope, greeting_line, reply_line};
use super::request::{EventSender, QmpRequest, Queued};
use super::schema::{Handler, Schema, ServerCommand, validate};
use super::stream::{DEFAULT_MAX_MESSAGE, Frame, JsonStreamer};
use crate::vmm::Command;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::socket::{Shutdown as SockShutdown, shutdown as sock_shutdown};
use serde_json::{Map, Value, json};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// QEMU version the server claims in the greeting and `query-version`:
/// 6.2.0, the release the V7 series was based on (cpr-save/cpr-load are
/// "Since: 6.2").
pub const CLAIMED_QEMU_VERSION: VersionTriple = VersionTriple {
    micro: 0,
    minor: 2,
    major: 6,
};

/// How often blocked server threads check for shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Server configuration; [`ServerConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// Socket path.
    pub path: PathBuf,
    /// QEMU version claimed (default [`CLAIMED_QEMU_VERSION`]).
    pub version: VersionTriple,
    /// `package` string (default `cpr-vm <crate version>`).
    pub package: String,
    /// Command table (default [`Schema::builtin`]).
    pub schema: Schema,
    /// Largest accepted message in bytes (default 1 MiB).
    pub max_message: usize,
    /// Number of vCPUs, for `human-monitor-command`'s `cpu-index` (default 1).
    pub vcpus: u32,
    /// A client that does not read its output for this long is dropped
    /// (default 5 s).
    pub write_timeout: Duration,
    /// Output lines queued per client; an event that finds the queue full
    /// drops the client (default 1024).
    pub output_queue: usize,
    /// Called after each request is sent to the VMM (e.g. to kick an
    /// eventfd the VMM's main loop polls).
    pub notify: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("package", &self.package)
            .field("max_message", &self.max_message)
            .field("vcpus", &self.vcpus)
            .field("write_timeout", &self.write_timeout)
            .field("output_queue", &self.output_queue)
            .field("notify", &self.notify.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults for a socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            path: path.into(),
            version: CLAIMED_QEMU_VERSION,
            package: format!("cpr-vm {}", env!("CARGO_PKG_VERSION")),
            schema: Schema::builtin(),
            max_message: DEFAULT_MAX_MESSAGE,
            vcpus: 1,
            write_timeout: Duration::from_secs(5),
            output_queue: 1024,
            notify: None,
        }
    }

    fn version_info(&self) -> VersionInfo {
        VersionInfo {
            qemu: self.version,
            package: self.package.clone(),
        }
    }
}

/// The connected client, as seen by event emitters.
struct ClientSlot {
    id: u64,
    out: Outbox,
    negotiated: bool,
    stream: UnixStream,
}

/// Lines queued for a client's writer thread but not yet written (or given up on).
#[derive(Default)]
struct Backlog {
    /// (lines queued and not yet written, writer gone).
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, (u64, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued(&self) {
        self.lock().0 += 1;
    }

    fn written(&self) {
        let mut g = self.lock();
        g.0 = g.0.saturating_sub(1);
        if g.0 == 0 {
            self.changed.notify_all();
        }
    }

    fn writer_gone(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }

    /// Waits until every queued line is written (true) or the writer gave up or
    /// `timeout` passed (false, unless nothing was left).
    fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.0 == 0 {
                return true;
            }
            let now = Instant::now();
            if g.1 || now >= deadline {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A client's output queue, counting what its writer has still to write.
#[derive(Clone)]
struct Outbox {
    tx: SyncSender<String>,
    backlog: Arc<Backlog>,
}

impl Outbox {
    /// Queues a line, waiting for room; false if the writer is gone.
    fn send(&self, line: String) -> bool {
        self.backlog.queued();
        if self.tx.send(line).is_ok() {
            return true;
        }
        self.backlog.written();
        false
    }

    /// Queues a line without waiting.
    fn try_send(&self, line: String) -> Result<(), TrySendError<String>> {
        self.backlog.queued();
        let r = self.tx.try_send(line);
        if r.is_err() {
            self.backlog.written();
        }
        r
    }
}

/// State shared by the server threads, the server handle and event senders.
pub(crate) struct Shared {
    client: Mutex<Option<ClientSlot>>,
    stop: AtomicBool,
    /// The listener is closed ([`QmpServer::close_listener`]): the accept thread ends once
    /// its current client (if any) is gone, which keeps its connection.
    closed: AtomicBool,
    /// Held across "still open?" and `accept`, so that once a hand-over has closed the
    /// listener (see [`MonitorListener`]) this process accepts no further client.
    accept_lock: Mutex<()>,
    /// The socket's path is this server's to remove (not while it serves a listener
    /// handed over by another process that has not let go of it, nor after handing it on).
    owns_path: AtomicBool,
    /// Accepting is held (cpr-exec): clients wait in the backlog.
    held: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn client(&self) -> MutexGuard<'_, Option<ClientSlot>> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event line for the negotiated client; never blocks.
    pub(crate) fn send_event(&self, line: String) -> bool {
        let mut guard = self.client();
        let Some(slot) = guard.as_mut().filter(|s| s.negotiated) else {
            return false;
        };
        match slot.out.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                // The client does not read: drop it rather than block the VMM.
                slot.negotiated = false;
                let _ = slot.stream.shutdown(Shutdown::Both);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// A running QMP server. Dropping it (or [`shutdown`](QmpServer::shutdown))
/// stops it, disconnects the client and removes the socket file (if it is still this
/// server's socket).
#[derive(Debug)]
pub struct QmpServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The listening socket, shared with the accept thread so that
    /// [`close_listener`](QmpServer::close_listener) need not wait for it; `None` once
    /// closed.
    listener: Option<Arc<UnixListener>>,
    path: PathBuf,
    ident: (u64, u64),
}

impl QmpServer {
    /// Binds the socket and starts serving; requests arrive on the returned
    /// receiver.
    pub fn start(config: ServerConfig) -> io::Result<(QmpServer, Receiver<QmpRequest>)> {
        let (tx, rx) = mpsc::channel();
        let server = QmpServer::start_with_sender(config, tx)?;
        Ok((server, rx))
    }

    /// Binds the socket and starts serving, sending requests to `requests`.
    pub fn start_with_sender(
        config: ServerConfig,
        requests: Sender<QmpRequest>,
    ) -> io::Result<QmpServer> {
        let (listener, ident) = super::socket::bind_private(&config.path)?;
        QmpServer::serve(config, listener, ident, requests, None, true)
    }

    /// Serves a listening socket another process handed over (cpr-transfer, cpr-exec),
    /// bound at `config.path`. With `hold`, nothing is accepted (and the path is not this
    /// server's to remove) until the returned release is called: in cpr-transfer, once the
    /// old process has stopped accepting on it.
    pub fn adopt(
        config: ServerConfig,
        listener: std::os::fd::OwnedFd,
        requests: Sender<QmpRequest>,
        hold: bool,
    ) -> io::Result<(QmpServer, Option<Release>)> {
        let md = fs::symlink_metadata(&config.path)?;
        let ident = (md.dev(), md.ino());
        let listener = UnixListener::from(listener);
        let (release, held) = if hold {
            let (tx, rx) = mpsc::channel::<()>();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let server = QmpServer::serve(config, listener, ident, requests, held, !hold)?;
        let release = release.map(|tx| {
            let shared = server.shared.clone();
            Box::new(move || {
                shared.owns_path.store(true, Ordering::SeqCst);
                let _ = tx.send(());
            }) as Release
        });
        Ok((server, release))
    }

    fn serve(
        config: ServerConfig,
        listener: UnixListener,
        ident: (u64, u64),
        requests: Sender<QmpRequest>,
        held: Option<Receiver<()>>,
        owns_path: bool,
    ) -> io::Result<QmpServer> {
        // Non-blocking: another process may accept a connection this one was woken for.
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            client: Mutex::new(None),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            accept_lock: Mutex::new(()),
            owns_path: AtomicBool::new(owns_path),
            held: AtomicBool::new(false),
        });
        let path = config.path.clone();
        let ctx = Ctx {
            config,
            shared: shared.clone(),
            requests,
        };
        let accept = listener.clone();
        let thread = thread::Builder::new()
            .name("qmp-server".into())
            .spawn(move || {
                if let Some(rx) = held
                    && rx.recv().is_err()
                {
                    return;
                }
                accept_loop(&accept, ctx);
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if owns_path {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        Ok(QmpServer {
            shared,
            thread: Some(thread),
            listener: Some(listener),
            path,
            ident,
        })
    }

    /// The listening socket as the VMM hands it over (cpr-transfer, cpr-exec).
    pub fn monitor_listener(&self) -> Arc<dyn crate::vmm::MonitorListener> {
        Arc::new(ListenerHandle {
            shared: self.shared.clone(),
            listener: self.listener.clone(),
            path: self.path.clone(),
        })
    }

    /// Stops listening at once, without waiting for the accept thread: the listening
    /// socket refuses new connections (`shutdown`; its descriptor is closed as soon as the
    /// accept thread lets go of it, at the latest when the process exits), and the socket
    /// file is removed, but only while it is still this server's socket (same device and
    /// inode): a socket another process bound there since is left alone. The connected
    /// client keeps its connection: it still gets replies and events. Idempotent.
    ///
    /// `quit` calls this before replying, so a new process started on the reply can bind
    /// the same path.
    pub fn close_listener(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        self.shared.closed.store(true, Ordering::SeqCst);
        if !self.shared.owns_path.load(Ordering::SeqCst) {
            // Another process's socket (handed over to us and not yet ours, or handed on):
            // neither shut down nor removed.
            return;
        }
        // Refuses connections from now on and wakes the accept thread's poll, which then
        // ends and drops the last reference (closing the descriptor) once its client is
        // gone.
        let _ = sock_shutdown(listener.as_raw_fd(), SockShutdown::Both);
        drop(listener);
        super::socket::remove_if_ours(&self.path, self.ident);
    }

    /// Waits up to `timeout` until everything queued for the connected client (replies,
    /// events) has been written to its socket; true if so (or if no client is connected).
    /// For the last words before the process exits.
    pub fn flush(&self, timeout: Duration) -> bool {
        let backlog = match self.shared.client().as_ref() {
            Some(slot) => slot.out.backlog.clone(),
            None => return true,
        };
        backlog.wait_empty(timeout)
    }

    /// A handle for emitting events.
    pub fn events(&self) -> EventSender {
        EventSender::new(self.shared.clone())
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a client is connected (negotiated or not).
    pub fn client_connected(&self) -> bool {
        self.shared.client().is_some()
    }

    /// Whether a client that completed negotiation is connected.
    pub fn client_negotiated(&self) -> bool {
        self.shared.client().as_ref().is_some_and(|s| s.negotiated)
    }

    /// Stops the server (same as dropping it).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.close_listener();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(slot) = self.shared.client().as_ref() {
            let _ = slot.stream.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lets an adopted listener's server start accepting ([`QmpServer::adopt`]).
pub type Release = Box<dyn FnOnce() + Send>;

/// [`crate::vmm::MonitorListener`] over a server's listening socket.
struct ListenerHandle {
    shared: Arc<Shared>,
    listener: Option<Arc<UnixListener>>,
    path: PathBuf,
}

impl crate::vmm::MonitorListener for ListenerHandle {
    fn listener(&self) -> Option<(PathBuf, std::os::fd::OwnedFd)> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return None;
        }
        let fd = self.listener.as_ref()?.as_fd().try_clone_to_owned().ok()?;
        Some((self.path.clone(), fd))
    }

    fn handed_over(&self) {
        let _guard = self
            .shared
            .accept_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shared.owns_path.store(false, Ordering::SeqCst);
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    fn hold(&self, held: bool) {
        let _guard = self
            .shared
            .accept_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shared.held.store(held, Ordering::SeqCst);
    }
}

/// What the accept thread owns.
struct Ctx {
    config: ServerConfig,
    shared: Arc<Shared>,
    requests: Sender<QmpRequest>,
}

fn accept_loop(listener: &UnixListener, ctx: Ctx) {
    let mut next_id = 0u64;
    while !ctx.shared.stop.load(Ordering::SeqCst) && !ctx.shared.closed.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, 100u16) {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => {
                thread::sleep(POLL_INTERVAL);
                continue;
            }
        }
        let accepted = {
            let _guard = ctx
                .shared
                .accept_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ctx.shared.closed.load(Ordering::SeqCst) {
                break;
            }
            if ctx.shared.held.load(Ordering::SeqCst) {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            } else {
                listener.accept()
            }
        };
        match accepted {
            Ok((stream, _)) => {
                next_id += 1;
                let _ = stream.set_nonblocking(false);
                serve_client(&ctx, stream, next_id);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1))
            }
            // E.g. EMFILE: the listener stays readable; do not spin.
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Serves one client until it disconnects or the server stops.
fn serve_client(ctx: &Ctx, stream: UnixStream, id: u64) {
    let (Ok(writer_stream), Ok(slot_stream)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let _ = stream.set_nonblocking(false);
    let _ = writer_stream.set_write_timeout(Some(ctx.config.write_timeout));
    let (tx, rx) = mpsc::sync_channel::<String>(ctx.config.output_queue.max(1));
    let out = Outbox {
        tx,
        backlog: Arc::new(Backlog::default()),
    };
    let backlog = out.backlog.clone();
    let Ok(writer) = thread::Builder::new()
        .name("qmp-writer".into())
        .spawn(move || writer_loop(writer_stream, rx, &backlog))
    else {
        return;
    };
    *ctx.shared.client() = Some(ClientSlot {
        id,
        out: out.clone(),
        negotiated: false,
        stream: slot_stream,
    });
    let mut session = Session {
        ctx,
        id,
        out,
        negotiated: false,
        queued: None,
    };
    if session.queue(greeting_line(&ctx.config.version_info())) {
        session.read_loop(&stream);
    }
    {
        let mut guard = ctx.shared.client();
        if guard.as_ref().is_some_and(|s| s.id == id) {
            *guard = None;
        }
    }
    // Dropping the last sender lets the writer flush what is queued and exit.
    drop(session);
    let _ = writer.join();
    let _ = stream.shutdown(Shutdown::Both);
}

/// Writes queued lines; on any error (peer gone, write timeout) closes the
/// socket so the reader notices, and exits. Uses MSG_NOSIGNAL: a client that
/// disconnected is not a SIGPIPE for the VMM.
fn writer_loop(stream: UnixStream, rx: Receiver<String>, backlog: &Backlog) {
    for line in rx.iter() {
        let sent = send_all(&stream, line.as_bytes());
        backlog.written();
        if sent.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            break;
        }
    }
    backlog.writer_gone();
}

fn send_all(stream: &UnixStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match send(stream.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

/// Per-connection protocol state.
struct Session<'a> {
    ctx: &'a Ctx,
    id: u64,
    out: Outbox,
    negotiated: bool,
    /// The VMM waits to hear that the reply of the command being handled is queued.
    queued: Option<Queued>,
}

impl Session<'_> {
    /// Queues a line for the writer; false if the client is gone.
    fn queue(&self, line: String) -> bool {
        self.out.send(line)
    }

    fn stopping(&self) -> bool {
        self.ctx.shared.stop.load(Ordering::SeqCst)
    }

    fn read_loop(&mut self, stream: &UnixStream) {
        let _ = stream.set_read_timeout(Some(POLL_INTERVAL));
        let mut streamer = JsonStreamer::new(self.ctx.config.max_message);
        let mut buf = vec![0u8; 16 * 1024];
        let mut reader = stream;
        while !self.stopping() {
            let n = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            };
            for frame in streamer.feed(&buf[..n]) {
                if !self.handle(frame) {
                    return;
                }
            }
        }
    }

    /// Handles one input message; false if the client is gone.
    fn handle(&mut self, frame: Frame) -> bool {
        let request = match frame {
            Frame::Error(desc) => {
                return self.queue(reply_line(&Err(QmpError::generic(desc)), None));
            }
            Frame::Message(v) => v,
        };
        let env = match check_envelope(request) {
            Ok(env) => env,
            Err((e, id)) => return self.queue(reply_line(&Err(e), id.as_ref())),
        };
        let (result, negotiated_now) = self.dispatch(&env.execute, env.arguments);
        let line = reply_line(&result, env.id.as_ref());
        if negotiated_now {
            return self.enter_command_mode(line);
        }
        let queued = self.queue(line);
        if let Some(signal) = self.queued.take()
            && queued
        {
            signal.done();
        }
        queued
    }

    /// Queues the successful `qmp_capabilities` reply and switches to command
    /// mode atomically with respect to event emitters: no event precedes the
    /// reply, and every event emitted after it is delivered (QEMU switches
    /// mode before sending the reply, on the same thread as its events).
    fn enter_command_mode(&mut self, line: String) -> bool {
        let mut guard = self.ctx.shared.client();
        let Some(slot) = guard.as_mut().filter(|s| s.id == self.id) else {
            return false;
        };
        // Never block while holding the lock emitters take; a full queue here
        // means the client does not read its replies: drop it.
        if slot.out.try_send(line).is_err() {
            return false;
        }
        slot.negotiated = true;
        self.negotiated = true;
        true
    }

    /// Runs a command; the flag says capabilities negotiation just completed.
    fn dispatch(
        &mut self,
        name: &str,
        args: Map<String, Value>,
    ) -> (Result<Value, QmpError>, bool) {
        if !self.negotiated && name != "qmp_capabilities" {
            let e = QmpError::new(
                ErrorClass::CommandNotFound,
                "Expecting capabilities negotiation with 'qmp_capabilities'",
            );
            return (Err(e), false);
        }
        let Some(def) = self.ctx.config.schema.get(name) else {
            return (Err(QmpError::command_not_found(name)), false);
        };
        if let Err(e) = validate(def, &args) {
            return (Err(e), false);
        }
        let command = match def.handler {
            Handler::Vmm(name) => {
                let result = command::parse(name, &args).and_then(|c| self.call_vmm(c, false));
                return (result, false);
            }
            Handler::Server(command) => command,
        };
        match command {
            ServerCommand::QmpCapabilities => self.capabilities(&args),
            ServerCommand::QueryVersion => (Ok(json!(self.ctx.config.version_info())), false),
            ServerCommand::QueryCommands => {
                let names: Vec<Value> = self
                    .ctx
                    .config
                    .schema
                    .commands()
                    .iter()
                    .map(|c| json!({ "name": c.name }))
                    .collect();
                (Ok(Value::Array(names)), false)
            }
            ServerCommand::HumanMonitorCommand => (self.human_monitor_command(&args), false),
        }
    }

    /// `qmp_capabilities` (monitor/qmp-cmds-control.c); no capability is
    /// offered, so any `enable` entry fails.
    fn capabilities(&self, args: &Map<String, Value>) -> (Result<Value, QmpError>, bool) {
        if self.negotiated {
            let e = QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            );
            return (Err(e), false);
        }
        let wanted: Vec<&str> = args
            .get("enable")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !wanted.is_empty() {
            let e = QmpError::generic(format!("Capability {} not available", wanted.join(", ")));
            return (Err(e), false);
        }
        (Ok(json!({})), true)
    }

    fn human_monitor_command(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        if let Some(cpu) = args.get("cpu-index").and_then(Value::as_i64)
            && (cpu < 0 || cpu >= i64::from(self.ctx.config.vcpus))
        {
            return Err(QmpError::generic(
                "Parameter 'cpu-index' expects a CPU number",
            ));
        }
        let line = args
            .get("command-line")
            .and_then(Value::as_str)
            .unwrap_or("");
        let text = match hmp::translate(line) {
            HmpPlan::Output(text) => text,
            HmpPlan::Call(call) => {
                let result = self.call_vmm(call.request, true);
                hmp::render(&call.command, result)
            }
        };
        Ok(Value::String(text))
    }

    /// Sends a command to the VMM, waits for its answer, and serializes it.
    fn call_vmm(&mut self, command: Command, via_hmp: bool) -> Result<Value, QmpError> {
        let name = command.name().as_str();
        let (req, rx) = QmpRequest::new(command, via_hmp);
        if self.ctx.requests.send(req).is_err() {
            return Err(QmpError::generic("The VMM is not accepting commands"));
        }
        if let Some(notify) = &self.ctx.config.notify {
            notify();
        }
        loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(reply) => {
                    let (result, queued) = reply.into_parts();
                    // Fired once `handle` has queued the reply line.
                    self.queued = Some(queued);
                    return result.and_then(|r| command::response_value(&r));
                }
                Err(RecvTimeoutError::Timeout) if self.stopping() => {
                    return Err(QmpError::generic("The QMP server is shutting down"));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(QmpError::generic(format!(
                        "Command {name} was dropped without a reply"
                    )));
                }
            }
        }
    }
}
