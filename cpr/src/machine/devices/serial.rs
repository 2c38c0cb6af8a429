//! COM1: a 16550 UART (vm-superio `Serial`) at I/O ports `0x3f8..=0x3ff`.
//!
//! Output goes to the writer chosen in the machine configuration. Its interrupt line is
//! not wired (the guest only writes, without waiting for THRE interrupts), so the
//! trigger is a no-op. State: vm-superio's [`SerialState`] (registers + input FIFO).

use std::io::Write;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::machine::error::{Error, Result};
use crate::machine::layout::COM1_PORT;

/// Saved state of the serial device.
pub type SerialDeviceState = SerialState;

/// An interrupt trigger that does nothing (the UART's IRQ is not connected).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> std::result::Result<(), Self::E> {
        Ok(())
    }
}

/// The serial output writer.
pub type SerialWriter = Box<dyn Write + Send>;

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<NoIrq, NoEvents, SerialWriter>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// First I/O port.
    #[allow(clippy::cast_possible_truncation)] // 0x3f8 fits in u16.
    pub const BASE: u16 = COM1_PORT as u16;

    /// A freshly reset UART writing to `out`.
    pub fn new(out: SerialWriter) -> Self {
        Self {
            uart: Serial::new(NoIrq, out),
        }
    }

    /// Whether `port` belongs to this device.
    pub fn owns(port: u16) -> bool {
        (Self::BASE..Self::BASE + 8).contains(&port)
    }

    /// Guest read of `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        self.uart.read(Self::offset(port))
    }

    /// Guest write of `value` to `port`.
    pub fn write(&mut self, port: u16, value: u8) {
        // The only error is a trigger error, and our trigger cannot fail.
        let _ = self.uart.write(Self::offset(port), value);
        if Self::offset(port) == 0 && value == b'\n' {
            let _ = self.uart.writer_mut().flush();
        }
    }

    fn offset(port: u16) -> u8 {
        u8::try_from(port.wrapping_sub(Self::BASE) & 7).unwrap_or(0)
    }

    /// Capture the UART state.
    pub fn state(&self) -> SerialDeviceState {
        self.uart.state()
    }

    /// Replace the UART by one in `state`, writing to `out`.
    pub fn restore(&mut self, state: &SerialDeviceState, out: SerialWriter) -> Result<()> {
        self.uart = Serial::from_state(state, NoIrq, NoEvents, out)
            .map_err(|e| Error::Serial(format!("{e:?}")))?;
        Ok(())
    }

    /// Replace the UART by one in `state`, keeping the current writer.
    pub fn restore_keep_output(&mut self, state: &SerialDeviceState) -> Result<()> {
        let old = std::mem::replace(
            &mut self.uart,
            Serial::new(NoIrq, Box::new(std::io::sink())),
        );
        self.restore(state, old.into_writer())
    }
}

/// Most bytes a saved receive FIFO may hold (vm-superio's FIFO is 64 bytes).
const MAX_IN_BUFFER: usize = 64;

/// The UART state as the `serial` section (QEMU's 16550 vmsd name): the nine 8-bit
/// registers, then the receive FIFO as a counted byte array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialSection(pub SerialDeviceState);

impl cpr_savevm::VmState for SerialSection {
    const NAME: &'static str = "serial";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut cpr_savevm::FieldWriter<'_>) -> cpr_savevm::Result<()> {
        let s = &self.0;
        w.u8("divisor_low", s.baud_divisor_low);
        w.u8("divisor_high", s.baud_divisor_high);
        w.u8("ier", s.interrupt_enable);
        w.u8("iir", s.interrupt_identification);
        w.u8("lcr", s.line_control);
        w.u8("lsr", s.line_status);
        w.u8("mcr", s.modem_control);
        w.u8("msr", s.modem_status);
        w.u8("scr", s.scratch);
        w.array("fifo", &s.in_buffer)
    }

    fn load(r: &mut cpr_savevm::FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        Ok(SerialSection(SerialState {
            baud_divisor_low: r.u8("divisor_low")?,
            baud_divisor_high: r.u8("divisor_high")?,
            interrupt_enable: r.u8("ier")?,
            interrupt_identification: r.u8("iir")?,
            line_control: r.u8("lcr")?,
            line_status: r.u8("lsr")?,
            modem_control: r.u8("mcr")?,
            modem_status: r.u8("msr")?,
            scratch: r.u8("scr")?,
            in_buffer: r.array("fifo", MAX_IN_BUFFER)?,
        }))
    }

    fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod persist_tests {
    use super::*;
    use crate::machine::persist::tests::round_trip;

    #[test]
    fn serial_section_round_trips() {
        let mut s = SerialSection(SerialState {
            scratch: 0x5a,
            line_control: 0x03,
            in_buffer: b"hi".to_vec(),
            ..SerialState::default()
        });
        assert_eq!(round_trip(&mut s), s);
    }
}
