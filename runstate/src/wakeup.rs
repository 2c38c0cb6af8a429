//! Wakeup reasons (`WakeupReason` in include/sysemu/runstate.h) and the
//! enabled-reasons mask (`wakeup_reason_mask`).

use std::fmt;

bitflags::bitflags! {
    /// A set of [`WakeupReason`]s: bit `1 << reason`, as QEMU's
    /// `wakeup_reason_mask`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct WakeupReasons: u32 {
        /// [`WakeupReason::None`].
        const NONE = 1 << 0;
        /// [`WakeupReason::Rtc`].
        const RTC = 1 << 1;
        /// [`WakeupReason::PmTimer`].
        const PMTIMER = 1 << 2;
        /// [`WakeupReason::Other`].
        const OTHER = 1 << 3;
    }
}

impl WakeupReasons {
    /// QEMU's initial mask, `~(1 << QEMU_WAKEUP_REASON_NONE)`: every reason
    /// except `NONE`. (QEMU's value also sets the 28 undefined high bits;
    /// they never match a reason, so this is equivalent.) Machines narrow it
    /// at run time, e.g. x86 ACPI toggles `RTC` and `PMTIMER` as the guest
    /// writes the PM1 enable bits.
    pub const QEMU_DEFAULT: WakeupReasons = WakeupReasons::RTC
        .union(WakeupReasons::PMTIMER)
        .union(WakeupReasons::OTHER);
}

impl Default for WakeupReasons {
    fn default() -> Self {
        Self::QEMU_DEFAULT
    }
}

/// Why the guest is being woken from S3 (`QEMU_WAKEUP_REASON_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum WakeupReason {
    /// No wakeup pending (`QEMU_WAKEUP_REASON_NONE`, always 0).
    #[default]
    None = 0,
    /// The RTC alarm fired.
    Rtc = 1,
    /// The ACPI PM timer overflowed.
    PmTimer = 2,
    /// Anything else: QMP `system_wakeup`, a keyboard, a NIC...
    Other = 3,
}

impl WakeupReason {
    /// Every reason, in QEMU order.
    pub const ALL: [WakeupReason; 4] = [
        WakeupReason::None,
        WakeupReason::Rtc,
        WakeupReason::PmTimer,
        WakeupReason::Other,
    ];

    /// This reason's bit in a [`WakeupReasons`] mask.
    pub const fn flag(self) -> WakeupReasons {
        WakeupReasons::from_bits_retain(1 << self as u32)
    }
}

impl fmt::Display for WakeupReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WakeupReason::None => "none",
            WakeupReason::Rtc => "rtc",
            WakeupReason::PmTimer => "pmtimer",
            WakeupReason::Other => "other",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_match_qemu_bit_positions() {
        assert_eq!(WakeupReason::None.flag(), WakeupReasons::NONE);
        assert_eq!(WakeupReason::Rtc.flag(), WakeupReasons::RTC);
        assert_eq!(WakeupReason::PmTimer.flag(), WakeupReasons::PMTIMER);
        assert_eq!(WakeupReason::Other.flag(), WakeupReasons::OTHER);
    }

    #[test]
    fn default_mask_is_everything_but_none() {
        let qemu: u32 = !(1 << WakeupReason::None as u32);
        for r in WakeupReason::ALL {
            let in_qemu = qemu & (1 << r as u32) != 0;
            assert_eq!(WakeupReasons::default().contains(r.flag()), in_qemu, "{r}");
        }
    }
}
