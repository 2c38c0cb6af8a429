//! An ACPI-like PM1a control register at I/O port `0x604` (16 bit, like QEMU's ICH9
//! `PMBASE 0x600 + 4`).
//!
//! * Write with `SLP_EN` (bit 13) set and `SLP_TYP` (bits 10..12) = 1 → the guest enters
//!   **S3**: the vCPU that wrote it parks all vCPUs and the machine emits
//!   [`MachineEvent::Suspended`](crate::machine::MachineEvent::Suspended).
//! * `SLP_TYP` = 0 with `SLP_EN` → **S5** (soft off): [`MachineEvent::Shutdown`](crate::machine::MachineEvent::Shutdown).
//! * Other bits are stored and read back; `SLP_EN` reads as 0.
//!
//! Unlike real S3 there is no reset and no firmware waking vector: on `wakeup()` the
//! vCPUs simply continue after the `out` instruction.

use crate::machine::layout::{
    PM1_SLP_EN, PM1_SLP_TYP_S3, PM1_SLP_TYP_S5, PM1_SLP_TYP_SHIFT, PM1A_CNT_PORT,
};

/// Saved state of the PM device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PmState {
    /// PM1a_CNT value (without SLP_EN).
    pub pm1_cnt: u16,
    /// The guest is in S3 (set when the suspend completed, cleared by `wakeup()`).
    pub suspended: bool,
}

/// What a PM1 write asks the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PmAction {
    /// Nothing.
    None,
    /// Enter S3.
    Suspend,
    /// Enter S5 (power off).
    PowerOff,
}

/// The PM1a control register.
#[derive(Debug, Default)]
pub(crate) struct PmDevice {
    state: PmState,
}

impl PmDevice {
    /// I/O port of PM1a_CNT.
    #[allow(clippy::cast_possible_truncation)] // 0x604 fits in u16.
    pub(crate) const PORT: u16 = PM1A_CNT_PORT as u16;

    /// Whether `port` belongs to this device (both bytes of the 16-bit register).
    pub(crate) fn owns(port: u16) -> bool {
        port == Self::PORT || port == Self::PORT + 1
    }

    /// Guest read.
    pub(crate) fn read(&self, port: u16, data: &mut [u8]) {
        let bytes = self.state.pm1_cnt.to_le_bytes();
        let start = usize::from(port - Self::PORT);
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// Guest write; returns the requested action.
    pub(crate) fn write(&mut self, port: u16, data: &[u8]) -> PmAction {
        let mut bytes = self.state.pm1_cnt.to_le_bytes();
        let start = usize::from(port - Self::PORT);
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(start + i) {
                *slot = *b;
            }
        }
        let value = u16::from_le_bytes(bytes);
        let slp_en = u16::try_from(PM1_SLP_EN).unwrap_or(0);
        self.state.pm1_cnt = value & !slp_en;
        if value & slp_en == 0 {
            return PmAction::None;
        }
        match u64::from(value >> PM1_SLP_TYP_SHIFT) & 7 {
            PM1_SLP_TYP_S3 => PmAction::Suspend,
            PM1_SLP_TYP_S5 => PmAction::PowerOff,
            _ => PmAction::None,
        }
    }

    /// Whether the guest is in S3.
    pub(crate) fn suspended(&self) -> bool {
        self.state.suspended
    }

    /// Mark the guest as being in S3 or not.
    pub(crate) fn set_suspended(&mut self, suspended: bool) {
        self.state.suspended = suspended;
    }

    /// Capture the state.
    pub(crate) fn state(&self) -> PmState {
        self.state.clone()
    }

    /// Restore the state.
    pub(crate) fn restore(&mut self, state: &PmState) {
        self.state = state.clone();
    }
}

/// The `cpr-pm` section: be16 `pm1_cnt`, bool `suspended`.
impl cpr_savevm::VmState for PmState {
    const NAME: &'static str = "cpr-pm";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut cpr_savevm::FieldWriter<'_>) -> cpr_savevm::Result<()> {
        w.u16("pm1_cnt", self.pm1_cnt);
        w.bool("suspended", self.suspended);
        Ok(())
    }

    fn load(r: &mut cpr_savevm::FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        Ok(PmState {
            pm1_cnt: r.u16("pm1_cnt")?,
            suspended: r.bool("suspended")?,
        })
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
    fn pm_section_round_trips() {
        let mut s = PmState {
            pm1_cnt: 0x0400,
            suspended: true,
        };
        assert_eq!(round_trip(&mut s), s);
    }
}
