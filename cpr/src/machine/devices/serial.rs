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
pub(crate) struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> std::result::Result<(), Self::E> {
        Ok(())
    }
}

/// The serial output writer.
pub(crate) type SerialWriter = Box<dyn Write + Send>;

/// Opens `--serial FILE` for appending. A file this creates is mode 0600 whatever the
/// umask (the guest console may say anything; like the checkpoint and the QMP socket, it
/// is for its owner only): it is created `O_EXCL` with 0600, then `fchmod`ed to 0600 (a
/// umask such as 0277 would have taken the owner's write bit). An existing file is
/// appended to with its mode untouched, so never widened. Like before, a symlink at
/// `path` is followed (a dangling one: its target is created, at most 0600).
pub(crate) fn open_output_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::fs::{OpenOptions, Permissions};
    use std::io::ErrorKind;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(Permissions::from_mode(0o600))?;
            return Ok(f);
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    match OpenOptions::new().append(true).open(path) {
        // Removed meanwhile, or a dangling symlink: create as `O_CREAT` would, at most
        // 0600 (the umask may only narrow it; someone else's link target is not chmod'ed).
        Err(e) if e.kind() == ErrorKind::NotFound => OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path),
        other => other,
    }
}

/// The COM1 device.
pub(crate) struct SerialDevice {
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
    pub(crate) const BASE: u16 = COM1_PORT as u16;

    /// A freshly reset UART writing to `out`.
    pub(crate) fn new(out: SerialWriter) -> Self {
        Self {
            uart: Serial::new(NoIrq, out),
        }
    }

    /// Whether `port` belongs to this device.
    pub(crate) fn owns(port: u16) -> bool {
        (Self::BASE..Self::BASE + 8).contains(&port)
    }

    /// Guest read of `port`.
    pub(crate) fn read(&mut self, port: u16) -> u8 {
        self.uart.read(Self::offset(port))
    }

    /// Guest write of `value` to `port`.
    pub(crate) fn write(&mut self, port: u16, value: u8) {
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
    pub(crate) fn state(&self) -> SerialDeviceState {
        self.uart.state()
    }

    /// Replace the UART by one in `state`, writing to `out`.
    pub(crate) fn restore(&mut self, state: &SerialDeviceState, out: SerialWriter) -> Result<()> {
        self.uart = Serial::from_state(state, NoIrq, NoEvents, out)
            .map_err(|e| Error::Serial(format!("{e:?}")))?;
        Ok(())
    }

    /// Replace the UART by one in `state`, keeping the current writer.
    pub(crate) fn restore_keep_output(&mut self, state: &SerialDeviceState) -> Result<()> {
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
pub(crate) struct SerialSection(pub SerialDeviceState);

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

#[cfg(test)]
mod output_file_tests {
    use super::open_output_file;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Set by the parent test for the child process that runs under another umask.
    const CHILD_UMASK: &str = "CPR_TEST_SERIAL_UMASK";

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    /// Runs this test binary again for `test` alone, with the umask set to `umask` in the
    /// child (the umask is process-wide: changing it here would race with other tests).
    fn run_child_under_umask(test: &str, umask: u32) {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_UMASK, format!("{umask:o}"))
            .output()
            .expect("run the child test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child under umask {umask:o}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new serial file is 0600 whatever the umask: 000 (the old code made it 0666) and
    /// 0277 (without the fchmod it would be 0400, unwritable by its owner).
    #[test]
    fn new_serial_file_is_0600_whatever_the_umask() {
        let name = "machine::devices::serial::output_file_tests::new_serial_file_is_0600_whatever_the_umask";
        let Ok(umask) = std::env::var(CHILD_UMASK) else {
            run_child_under_umask(name, 0o000);
            run_child_under_umask(name, 0o277);
            return;
        };
        let umask = u32::from_str_radix(&umask, 8).expect("octal umask");
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("serial.log");
        let mut f = open_output_file(&path).expect("create");
        f.write_all(b"cpr-guest: kernel up\n").expect("write");
        assert_eq!(mode(&path), 0o600, "under umask {umask:o}");
    }

    /// An existing file keeps its mode (never widened, never narrowed) and is appended to.
    #[test]
    fn existing_serial_file_keeps_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        for m in [0o400 | 0o200, 0o640, 0o644] {
            let path = dir.path().join(format!("serial-{m:o}.log"));
            std::fs::write(&path, b"old\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
            let mut f = open_output_file(&path).expect("open");
            f.write_all(b"new\n").expect("append");
            assert_eq!(mode(&path), m);
            assert_eq!(std::fs::read(&path).expect("read"), b"old\nnew\n");
        }
    }
}
