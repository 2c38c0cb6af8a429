//! The machine's userspace devices and the I/O dispatch used by the vCPU threads.
//!
//! | device | where | module |
//! |---|---|---|
//! | 16550 UART (COM1) | I/O `0x3f8..=0x3ff` | [`serial`] |
//! | PM1a control register | I/O `0x604` (16 bit) | [`pm`] |
//! | test device | MMIO `0xD000_0000` (8 KiB) | [`testdev`] |
//!
//! The PIC, IOAPIC, LAPIC and PIT are KVM's in-kernel models (state in
//! [`KvmVmState`](super::KvmVmState) / [`VcpuState`](super::VcpuState)). Unclaimed port reads
//! return `0xff` bytes, unclaimed MMIO reads return `0xff` bytes; unclaimed writes are ignored.

pub(crate) mod pm;
pub(crate) mod serial;
pub(crate) mod testdev;

use std::sync::{Mutex, MutexGuard};

use pm::{PmAction, PmDevice};
use serial::SerialDevice;
use testdev::{TestDevAction, TestDevice};

/// What an I/O exit asks the vCPU thread to do after the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoAction {
    /// Nothing: keep running.
    None,
    /// A PM1 action (S3 / S5).
    Pm(PmAction),
    /// A test-device action (guest fatal exception).
    TestDev(TestDevAction),
}

/// All userspace devices, shared by the vCPU threads.
#[derive(Debug)]
pub(crate) struct Devices {
    /// COM1.
    pub serial: Mutex<SerialDevice>,
    /// PM1a control.
    pub pm: Mutex<PmDevice>,
    /// Test device.
    pub testdev: Mutex<TestDevice>,
}

/// Lock a device mutex, recovering from poisoning (a panicking vCPU thread must not take
/// the devices down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Devices {
    /// Fresh devices.
    pub(crate) fn new(vcpus: usize, serial_out: serial::SerialWriter) -> Self {
        Self {
            serial: Mutex::new(SerialDevice::new(serial_out)),
            pm: Mutex::new(PmDevice::default()),
            testdev: Mutex::new(TestDevice::new(vcpus)),
        }
    }

    /// Port read (`IN`).
    pub(crate) fn pio_read(&self, port: u16, data: &mut [u8]) {
        if SerialDevice::owns(port) {
            let mut s = lock(&self.serial);
            for (i, b) in data.iter_mut().enumerate() {
                let p = u16::try_from(i).map_or(port, |i| port.wrapping_add(i));
                *b = s.read(p);
            }
        } else if PmDevice::owns(port) {
            lock(&self.pm).read(port, data);
        } else {
            data.fill(0xff);
        }
    }

    /// Port write (`OUT`). `data` may hold several bytes of a `rep outsb`.
    pub(crate) fn pio_write(&self, port: u16, data: &[u8]) -> IoAction {
        if SerialDevice::owns(port) {
            let mut s = lock(&self.serial);
            for b in data {
                s.write(port, *b);
            }
            IoAction::None
        } else if PmDevice::owns(port) {
            match lock(&self.pm).write(port, data) {
                PmAction::None => IoAction::None,
                a => IoAction::Pm(a),
            }
        } else {
            IoAction::None
        }
    }

    /// MMIO read.
    pub(crate) fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if TestDevice::owns(addr) {
            lock(&self.testdev).read(addr, data);
        } else {
            data.fill(0xff);
        }
    }

    /// MMIO write.
    pub(crate) fn mmio_write(&self, addr: u64, data: &[u8]) -> IoAction {
        if TestDevice::owns(addr) {
            match lock(&self.testdev).write(addr, data) {
                TestDevAction::None => IoAction::None,
                a => IoAction::TestDev(a),
            }
        } else {
            IoAction::None
        }
    }
}
