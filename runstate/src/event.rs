//! QMP run-state events.

use std::fmt;
use std::time::SystemTime;

/// A run-state QMP event (all four carry no `data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// `STOP`: a running VM was stopped.
    Stop,
    /// `RESUME`: `vm_start()` (re)started the VM.
    Resume,
    /// `SUSPEND`: the guest entered S3.
    Suspend,
    /// `WAKEUP`: the main loop finished waking the guest from S3.
    Wakeup,
}

impl Event {
    /// The QMP event name.
    pub const fn name(self) -> &'static str {
        match self {
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Suspend => "SUSPEND",
            Event::Wakeup => "WAKEUP",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event and the wall-clock time it was emitted.
///
/// Events are queued and drained by the VMM's main loop, so the time is
/// taken here, at emission, as QEMU takes it in `qapi_event_send_*()`; the
/// QMP layer turns it into `{"seconds", "microseconds"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedEvent {
    /// The event.
    pub event: Event,
    /// When it was emitted.
    pub timestamp: SystemTime,
}
