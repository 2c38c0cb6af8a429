//! QMP, QEMU's JSON monitor protocol: a server for the `cpr-vm` VMM, a
//! client, and HMP-over-QMP (`human-monitor-command`).
//!
//! Existing QMP clients (qmp-shell, libvirt-style scripts, Python
//! `qemu.qmp`) talk to [`QmpServer`] unchanged.
//!
//! # Protocol subset (docs/interop/qmp-spec.rst)
//!
//! * Transport: a Unix stream socket, created mode 0600 whatever the umask
//!   (bound in a private 0700 directory, chmod'ed, then linked into place).
//!   A stale socket at the path is removed; a live one (something accepts
//!   connections) or a non-socket file is refused.
//! * Greeting: `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2,
//!   "major": 6}, "package": "cpr-vm <crate version>"}, "capabilities": []}}`.
//! * Output: one message per line, CRLF-terminated, ASCII only (non-ASCII
//!   characters escaped as `\uXXXX`), laid out like QEMU's compact JSON
//!   (`{"return": {}, "id": 1}`).
//! * Input: a stream of JSON values split by bracket counting (see
//!   `stream`): several objects per write or one object across writes and
//!   lines both work; single-quoted strings (QEMU's extension) are accepted.
//! * Capabilities negotiation mode: only `qmp_capabilities`; anything else is
//!   `CommandNotFound` `Expecting capabilities negotiation with
//!   'qmp_capabilities'`; events are not delivered; `{"enable": ["oob"]}` is
//!   `GenericError` `Capability oob not available`.
//! * Command mode: `qmp_capabilities` again is `CommandNotFound`
//!   `Capabilities negotiation is already complete, command ignored`; an
//!   unknown command is `CommandNotFound` `The command %s has not been found`.
//! * `id` (any JSON value) is echoed verbatim, also on envelope errors;
//!   errors for input that did not parse as an object carry no `id`.
//! * Envelope errors (`qmp_dispatch_check_obj()`, GenericError):
//!   `QMP input must be a JSON object`, `QMP input lacks member 'execute'`,
//!   `QMP input member 'execute' must be a string`, `QMP input member
//!   'arguments' must be an object`, `QMP input member '%s' is unexpected`
//!   (`exec-oob` included, as OOB is never enabled).
//! * JSON errors (GenericError, connection stays usable): `JSON parse error,
//!   <what>` with QEMU's parser wording where it maps (`expecting value`,
//!   `invalid keyword '%s'`, `stray '%s'`, `missing : in object pair`,
//!   `key is not a string in object`, `expected separator in dict|list`), else
//!   serde_json's description; `JSON token size limit exceeded` (message over
//!   [`ServerConfig::max_message`], default 1 MiB; the rest of that message is
//!   skipped); `JSON nesting depth limit exceeded` (over 100 levels).
//! * Arguments are validated against the `schema` table before anything
//!   runs, with the QObject input visitor's messages, then parsed once into a
//!   typed [`Command`](crate::vmm::Command) (`command`).
//! * Events: `{"timestamp": {"seconds": S, "microseconds": U}, "event": NAME,
//!   "data": ...}`, stamped when [`EventSender::emit`] is called.
//!
//! # The boundary: JSON stops here
//!
//! This module is the only part of `cpr` that sees JSON. A VMM command is checked against
//! the `schema`, parsed by `command::parse` into a [`crate::vmm::Command`] (paths as
//! `PathBuf`, `CprMode`, `MigMode`, `MigrationCapability`, the parameters to set as a
//! struct of `Option`s read with QAPI's integer widths, `uri`/`channels` as a file target
//! or its error), and sent to the VMM in a [`QmpRequest`]. The VMM answers a typed
//! [`crate::vmm::Response`] and reports typed [`crate::vmm::Event`]s;
//! `command::response_value` and `command::event_data` give them QEMU's JSON shape.
//! HMP (`hmp`) builds the same [`crate::vmm::Command`]s from its own syntax.
//!
//! The commands are listed once (`vmm/api.rs`): the schema's VMM entries come from
//! [`crate::vmm::CommandName::ALL`] (`schema::vmm_args` gives each its members, by an
//! exhaustive `match`), the parser and the VMM match exhaustively, so a command without a
//! schema entry, a parser or a handler does not build; a test checks that every schema
//! entry parses into the command of its name.
//!
//! # Threading model
//!
//! The VMM's main loop owns the machine; the server never touches it.
//! [`QmpServer::start`] binds the socket and spawns an accept thread, which
//! serves one connection at a time; each connection also gets a writer
//! thread draining a bounded output queue. For a command, the connection
//! thread checks the envelope and the arguments, then either answers itself
//! (`qmp_capabilities`, `query-version`, `query-commands`,
//! `human-monitor-command`'s parsing) or sends a typed [`QmpRequest`] over an
//! `std::sync::mpsc` channel and waits for the VMM's
//! [`respond`](QmpRequest::respond) (a one-shot channel); it does not read
//! further input meanwhile (like QEMU without OOB: commands run one at a
//! time, in order). `quit`, `stop`, `cont`, `cpr-save`... are ordinary
//! requests; the VMM decides what they do. [`ServerConfig::notify`] can wake
//! the VMM's loop when a request is queued.
//!
//! The VMM never blocks on a client: `respond` and [`EventSender::emit`] only
//! queue (emit drops a client whose queue is full), writes use
//! `MSG_NOSIGNAL` and a write timeout, and a reply for a client that
//! disconnected mid-command is dropped quietly.
//!
//! `quit` (see `cpr-vm`'s `app` module): the VMM first calls [`QmpServer::close_listener`]
//! (the listening socket refuses connections and the path is removed if it is
//! still this server's socket, without waiting for the accept thread; the
//! client keeps its connection), then answers with
//! [`Responder::respond_queued`] and waits for the [`Delivery`] before it
//! emits `SHUTDOWN`, so the reply comes first, as in QEMU; then
//! [`QmpServer::flush`] waits (bounded) until both are written.
//!
//! # Differences from QEMU
//!
//! * No out-of-band execution: `oob` is never offered, `exec-oob` is an
//!   unexpected member.
//! * One client at a time, like QEMU's socket chardev monitor: a second
//!   client's connect succeeds (listen backlog) but it gets its greeting
//!   only when the current client disconnects. Every connection starts in
//!   negotiation mode with a fresh greeting.
//! * Events emitted while no negotiated client is connected are dropped (as
//!   QEMU does); there is no event buffering or rate limiting.
//! * Version claimed: QEMU 6.2.0 (the base of the V7 series), package
//!   `cpr-vm <version>`; see [`CLAIMED_QEMU_VERSION`].
//! * Message size limit 1 MiB (QEMU: 64 MiB), nesting limit 100 (QEMU:
//!   1024), same error texts. A malformed message produces one error; QEMU's
//!   token-level recovery may produce several.
//! * Only the commands in `schema::builtin_commands`; `query-commands`
//!   lists them. No `query-qmp-schema`. `x-guest-fault` is ours and test
//!   only (the built-in guest fails on request).
//! * Schema integer types are not width-checked (`uint8` etc. are `int`);
//!   `migrate`'s `channels` elements are only checked to be objects;
//!   `migrate-set-parameters` knows a subset of `MigrateSetParameters`.
//! * `human-monitor-command` knows only the HMP commands listed in `hmp`;
//!   `info migrate` prints a subset of QEMU's text.
//! * A command the VMM never answers keeps the monitor busy (as in QEMU): the
//!   client can time out and leave, but the next client is served only once
//!   the VMM answers or the server shuts down.
//!
//! # Provenance of the strings
//!
//! Checked against QEMU sources: every envelope error (qapi/qmp-dispatch.c),
//! the negotiation messages (monitor/qmp.c, monitor/qmp-cmds-control.c),
//! the visitor messages and type names (qapi/qobject-input-visitor.c,
//! qapi/qapi-visit-core.c; the enum message with the member name or `null`),
//! `JSON parse error, %s` and the parser's phrases (an older
//! qobject/json-parser.c), the streamer's `stray '%s'` and limit messages,
//! HMP's `unknown command`, `string expected`, `extraneous characters`,
//! `Try "help ..."`, help line layout, `Error: ` prefix (hmp_handle_error),
//! `invalid parameter value: %s` (qapi_enum_parse), `info status` layout,
//! and `Parameter 'cpu-index' expects a CPU number`. Not confirmed: whether
//! current QEMU appends the list of valid values to the bad-enum message
//! (a patch doing so was seen), the exact HMP help texts of `stop`, `cont`,
//! `quit`, `system_wakeup`, `info status`, `info migrate` (from memory),
//! the `info migrate` layout, and upper-case hex in `\uXXXX` escapes.

pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod error;
pub(crate) mod hmp;
pub(crate) mod protocol;
pub(crate) mod request;
pub(crate) mod schema;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod stream;

pub use client::{ClientError, Event, QmpClient};
pub use error::{ErrorClass, QmpError};
pub use protocol::{Timestamp, VersionInfo, VersionTriple};
pub use request::{Delivery, EventSender, QmpRequest, Queued, Reply, Responder};
pub use schema::{ArgType, CommandDef, EnumType, Handler, Member, Schema, ServerCommand};
pub use server::{CLAIMED_QEMU_VERSION, QmpServer, Release, ServerConfig};
