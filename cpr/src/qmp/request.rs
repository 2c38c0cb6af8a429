//! Requests, responders and events: what the server hands the VMM and takes back, typed: the VMM
//! sees a [`Command`] and answers a [`Response`]; JSON stays in this module's parent.

use super::command::event_data;
use super::error::QmpError;
use super::protocol::{Timestamp, event_line};
use super::server::Shared;
use crate::vmm::{Command, Event, Response};
use serde_json::Value;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

/// A command for the VMM to execute, parsed from a QMP (or HMP) request.
///
/// Arguments were checked against the schema and typed before this was sent. Answer with
/// [`respond`](QmpRequest::respond); dropping the request unanswered makes the client get
/// a `GenericError`.
#[derive(Debug)]
pub struct QmpRequest {
    /// The command and its arguments.
    pub command: Command,
    /// True if the request comes from `human-monitor-command`.
    pub via_hmp: bool,
    responder: Responder,
}

impl QmpRequest {
    /// A request and the receiving end of its reply (for the server, and for
    /// tests driving a VMM without a socket).
    pub fn new(command: Command, via_hmp: bool) -> (QmpRequest, Receiver<Reply>) {
        let (tx, rx) = sync_channel(1);
        let req = QmpRequest {
            command,
            via_hmp,
            responder: Responder { tx },
        };
        (req, rx)
    }

    /// Answers the request: `Ok(response)` becomes `{"return": ...}` (the server
    /// serializes it), `Err` becomes `{"error": ...}`. Never blocks; an answer for a client
    /// that went away is dropped.
    pub fn respond(self, result: Result<Response, QmpError>) {
        self.responder.respond(result);
    }

    /// Splits off the responder, to answer later from elsewhere.
    pub fn into_parts(self) -> (Command, Responder) {
        (self.command, self.responder)
    }
}

/// What the VMM answers to a [`QmpRequest`], as its requester receives it.
#[derive(Debug)]
pub struct Reply {
    /// The command's result.
    pub result: Result<Response, QmpError>,
    /// Set by [`Responder::respond_queued`]: the requester signals it once the reply is
    /// queued for the client (dropping it unsignalled means it never will be).
    queued: Option<SyncSender<()>>,
}

impl Reply {
    /// Splits the reply into its result and the "queued" signal, which the server fires
    /// (with [`Queued::done`]) right after putting the reply in the client's output queue.
    pub fn into_parts(self) -> (Result<Response, QmpError>, Queued) {
        (self.result, Queued(self.queued))
    }
}

/// The "reply is queued" signal of a [`Reply`]; dropping it without [`done`](Queued::done)
/// tells the VMM that the reply will never be sent.
#[derive(Debug)]
pub struct Queued(Option<SyncSender<()>>);

impl Queued {
    /// The reply is in the client's output queue: anything queued from now on (an event)
    /// reaches the client after it.
    pub fn done(self) {
        if let Some(tx) = self.0 {
            let _ = tx.try_send(());
        }
    }
}

/// One-shot reply channel of a [`QmpRequest`].
#[derive(Debug)]
pub struct Responder {
    tx: SyncSender<Reply>,
}

impl Responder {
    /// Sends the reply (never blocks; dropped if nobody waits any more).
    pub fn respond(self, result: Result<Response, QmpError>) {
        // Capacity 1 and a single send: try_send cannot be Full.
        let _ = self.tx.try_send(Reply {
            result,
            queued: None,
        });
    }

    /// Sends the reply and returns a handle that tells when it has been queued for the
    /// client, so that an event emitted after [`Delivery::wait`] follows the reply on the
    /// wire (QEMU's order for `quit`: the reply, then `SHUTDOWN`).
    pub fn respond_queued(self, result: Result<Response, QmpError>) -> Delivery {
        let (tx, rx) = sync_channel(1);
        let _ = self.tx.try_send(Reply {
            result,
            queued: Some(tx),
        });
        Delivery(rx)
    }
}

/// See [`Responder::respond_queued`].
#[derive(Debug)]
pub struct Delivery(Receiver<()>);

impl Delivery {
    /// Waits up to `timeout` for the reply to be queued; false if it was not (the client
    /// went away, or the server is stuck).
    pub fn wait(&self, timeout: Duration) -> bool {
        match self.0.recv_timeout(timeout) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }
}

/// Cloneable handle the VMM uses to emit QMP events.
///
/// Events are timestamped when [`emit`](EventSender::emit) is called and
/// delivered to the connected client only if it has completed capabilities
/// negotiation; with no such client they are dropped (as QEMU does). `emit`
/// never blocks on the socket: if the client's output queue is full (it does
/// not read), the client is disconnected instead.
#[derive(Debug, Clone, Default)]
pub struct EventSender {
    shared: Option<Arc<Shared>>,
    /// A copy of every [`Event`] sent, typed (see [`capture`](EventSender::capture)).
    tap: Option<Sender<Event>>,
}

impl EventSender {
    pub(crate) fn new(shared: Arc<Shared>) -> EventSender {
        EventSender {
            shared: Some(shared),
            tap: None,
        }
    }

    /// An `EventSender` connected to nothing (events are discarded).
    pub fn noop() -> EventSender {
        EventSender::default()
    }

    /// An `EventSender` connected to no client that hands every [`Event`] sent through
    /// [`send`](EventSender::send) to the returned receiver, typed and in order: for tests
    /// (and front ends) that drive a [`Vmm`](crate::vmm::Vmm) without a QMP server.
    pub fn capture() -> (EventSender, Receiver<Event>) {
        let (tx, rx) = channel();
        let sender = EventSender {
            shared: None,
            tap: Some(tx),
        };
        (sender, rx)
    }

    /// Emits a VMM event; returns whether it was queued for a client.
    pub fn send(&self, event: Event) -> bool {
        if let Some(tap) = &self.tap {
            // A receiver that is gone wants no more events.
            let _ = tap.send(event);
        }
        let (name, data) = event_data(event);
        self.emit(name, data)
    }

    /// Emits event `name` with optional `data`; returns whether it was
    /// queued for a client.
    pub fn emit(&self, name: &str, data: Option<Value>) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let line = event_line(name, data.as_ref(), Timestamp::now());
        shared.send_event(line)
    }
}
