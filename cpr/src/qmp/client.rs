//! A small synchronous QMP client (tests, the xtask e2e runner, the demo).
//!
//! Works with any QMP server (QEMU included): it reads the greeting,
//! negotiates, sends commands with numeric ids, matches replies by id,
//! queues events that arrive meanwhile, and fails with
//! [`ClientError::Timeout`] instead of hanging on a server that never answers.

use super::error::{ErrorClass, QmpError};
use super::protocol::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for connecting, reading the greeting and each command.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest line accepted from the server.
const MAX_LINE: usize = 64 << 20;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("QMP I/O error: {0}")]
    Io(#[from] io::Error),
    /// Nothing suitable arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The server closed the connection.
    #[error("QMP connection closed by the server")]
    Closed,
    /// The server sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// The command failed: the server's `{"error": {"class", "desc"}}`.
    #[error("QMP command failed: {0}")]
    Qmp(QmpError),
}

impl ClientError {
    /// The QMP error, if the command failed with one.
    pub fn qmp(&self) -> Option<&QmpError> {
        match self {
            ClientError::Qmp(e) => Some(e),
            _ => None,
        }
    }
}

/// An event received from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event name, e.g. `STOP`.
    pub event: String,
    /// Event data, if any.
    #[serde(default)]
    pub data: Option<Value>,
    /// When the server emitted it.
    pub timestamp: Timestamp,
}

/// A connected (normally negotiated) QMP client.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    buf: Vec<u8>,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
    greeting: Value,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub fn connect(path: impl AsRef<Path>) -> Result<QmpClient, ClientError> {
        let mut c = QmpClient::connect_unnegotiated(path, DEFAULT_TIMEOUT)?;
        c.negotiate()?;
        Ok(c)
    }

    /// Like [`connect`](QmpClient::connect), retrying while the socket does
    /// not exist or refuses connections (a process still starting), for up
    /// to `timeout`.
    pub fn connect_with_retry(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<QmpClient, ClientError> {
        let path = path.as_ref();
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    let mut c = QmpClient::from_stream(stream, DEFAULT_TIMEOUT)?;
                    c.negotiate()?;
                    return Ok(c);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    return Err(ClientError::Timeout(format!(
                        "{} to accept connections ({e})",
                        path.display()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Connects and reads the greeting, without negotiating (the client is
    /// in capabilities negotiation mode). `timeout` applies to the greeting
    /// and becomes the command timeout.
    pub fn connect_unnegotiated(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<QmpClient, ClientError> {
        let stream = UnixStream::connect(path)?;
        QmpClient::from_stream(stream, timeout)
    }

    fn from_stream(stream: UnixStream, timeout: Duration) -> Result<QmpClient, ClientError> {
        let mut c = QmpClient {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            greeting: Value::Null,
        };
        let greeting = c.read_message(timeout)?;
        if greeting.get("QMP").is_none() {
            return Err(ClientError::Protocol(format!("bad greeting: {greeting}")));
        }
        c.greeting = greeting;
        Ok(c)
    }

    /// Closes the connection (both directions); the client is unusable afterwards.
    pub fn close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The greeting the server sent.
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Sets the timeout for later commands.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `qmp_capabilities`.
    pub fn negotiate(&mut self) -> Result<(), ClientError> {
        self.execute("qmp_capabilities", Value::Null).map(drop)
    }

    /// Runs a command and returns its `return` value. `args` is sent as
    /// `arguments` unless it is `null`. A QMP error reply becomes
    /// [`ClientError::Qmp`]; events that arrive meanwhile are queued.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line =
            serde_json::to_vec(&msg).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.extend_from_slice(b"\r\n");
        self.send_raw(&line)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = self.read_until(deadline, &format!("the reply to {command}"))?;
            if self.queue_if_event(&msg)? {
                continue;
            }
            if msg.get("id") != Some(&json!(id)) {
                // A stale reply (an earlier command timed out) or an error
                // about raw input sent with send_raw(): not ours.
                continue;
            }
            return parse_reply(msg);
        }
    }

    /// Runs an HMP command through `human-monitor-command`; returns its output.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, ClientError> {
        let v = self.execute(
            "human-monitor-command",
            json!({ "command-line": command_line }),
        )?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol(format!("HMP output is not a string: {v}")))
    }

    /// Sends raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next message of any kind (reply, error or event) without
    /// queueing it.
    pub fn read_message(&mut self, timeout: Duration) -> Result<Value, ClientError> {
        self.read_until(Instant::now() + timeout, "a message")
    }

    /// Waits for event `name` (returning a queued one first); other events
    /// are queued, stray replies dropped.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(i) = self.events.iter().position(|e| e.event == name)
            && let Some(e) = self.events.remove(i)
        {
            return Ok(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_until(deadline, &format!("event {name}"))?;
            if self.queue_if_event(&msg)?
                && let Some(i) = self.events.iter().rposition(|e| e.event == name)
                && let Some(e) = self.events.remove(i)
            {
                return Ok(e);
            }
        }
    }

    /// Reads whatever the server already sent and drains the event queue.
    pub fn events(&mut self) -> Result<Vec<Event>, ClientError> {
        loop {
            match self.read_until(Instant::now() + Duration::from_millis(1), "") {
                Ok(msg) => {
                    self.queue_if_event(&msg)?;
                }
                Err(ClientError::Timeout(_)) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.events.drain(..).collect())
    }

    fn queue_if_event(&mut self, msg: &Value) -> Result<bool, ClientError> {
        if msg.get("event").is_none() {
            return Ok(false);
        }
        let ev: Event = serde_json::from_value(msg.clone())
            .map_err(|e| ClientError::Protocol(format!("bad event {msg}: {e}")))?;
        self.events.push_back(ev);
        Ok(true)
    }

    fn read_until(&mut self, deadline: Instant, what: &str) -> Result<Value, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text).map_err(|e| {
                    ClientError::Protocol(format!("bad JSON from server ({e}): {text}"))
                });
            }
            if self.buf.len() > MAX_LINE {
                return Err(ClientError::Protocol("line from server too long".into()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(what.to_string()));
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Turns a reply message into the command's result.
fn parse_reply(msg: Value) -> Result<Value, ClientError> {
    if let Some(ret) = msg.get("return") {
        return Ok(ret.clone());
    }
    if let Some(err) = msg.get("error") {
        let class = err["class"].as_str().unwrap_or("");
        let desc = err["desc"].as_str().unwrap_or("").to_string();
        return match ErrorClass::from_wire(class) {
            Some(class) => Err(ClientError::Qmp(QmpError::new(class, desc))),
            None => Err(ClientError::Protocol(format!(
                "unknown error class in {msg}"
            ))),
        };
    }
    Err(ClientError::Protocol(format!("not a reply: {msg}")))
}
