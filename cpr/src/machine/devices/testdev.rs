//! The MMIO test device at `0xD000_0000` (8 KiB, user-accessible in the guest).
//!
//! The guest has no port I/O at CPL3 on this host, so the workload reports through MMIO.
//! First page: one 0x80-byte register block per vCPU at `0xD000_0000 + 0x80 * index`
//! (writes of 8 bytes; narrower writes are zero-extended):
//!
//! | offset | register | writer |
//! |---|---|---|
//! | 0x00 | generation | user workload |
//! | 0x08 | ticks | user workload |
//! | 0x10 | errors | user workload |
//! | 0x18 | progress (**commits** a report: copies the staged values, `reports += 1`) | user workload |
//! | 0x20 | boot stage (1 entry, 2 shared built, 3 per-CPU done, 4 user, 0xBAD bad magic) | kernel |
//! | 0x28 | exception RIP | kernel |
//! | 0x30 | exception error code | kernel |
//! | 0x38 | exception CR2 | kernel |
//! | 0x40 | exception CS | kernel |
//! | 0x48 | exception vector (**commits** a fatal-exception report) | kernel |
//!
//! Second page: offset `0x1000` reads the magic `0x5452_5043` ("CPRT"). Reads of the
//! per-vCPU registers return their latest values.

use crate::machine::layout::{
    TD_ERRORS, TD_EXC_CR2, TD_EXC_CS, TD_EXC_ERROR, TD_EXC_RIP, TD_EXC_VECTOR, TD_GENERATION,
    TD_MAGIC, TD_PROGRESS, TD_STAGE, TD_TICKS, TESTDEV_BASE, TESTDEV_MAGIC, TESTDEV_SIZE,
    TESTDEV_VCPU_STRIDE,
};

/// Latest report of one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuProgress {
    /// Pages processed since the fresh boot (monotonic across restores).
    pub progress: u64,
    /// Timer ticks the kernel counted on this vCPU.
    pub ticks: u64,
    /// Words that did not hold the expected pattern.
    pub errors: u64,
    /// Workload generation.
    pub generation: u64,
    /// Number of reports the VMM received (monotonic across restores).
    pub reports: u64,
    /// Last boot stage the kernel reported.
    pub stage: u64,
}

/// A fatal exception the guest kernel reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestFatal {
    /// vCPU index.
    pub vcpu: usize,
    /// Exception vector.
    pub vector: u64,
    /// Faulting RIP.
    pub rip: u64,
    /// Error code (0 when the exception has none).
    pub error_code: u64,
    /// CR2 at the time of the exception.
    pub cr2: u64,
    /// CS at the time of the exception.
    pub cs: u64,
}

/// Snapshot of the guest's progress as seen by the test device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestProgress {
    /// Sum of the vCPUs' progress.
    pub progress: u64,
    /// Sum of the vCPUs' ticks.
    pub ticks: u64,
    /// Sum of the vCPUs' errors.
    pub errors: u64,
    /// Sum of the vCPUs' report counts.
    pub reports: u64,
    /// Per-vCPU values.
    pub per_vcpu: Vec<VcpuProgress>,
    /// The first fatal exception the guest reported, if any.
    pub fatal: Option<GuestFatal>,
    /// The vCPUs' progress counters read from guest RAM (no report needed; moves as the
    /// guest runs), summed; filled in by the VMM.
    pub ram_progress: Option<u64>,
}

/// Saved state of the test device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestDevState {
    /// Per-vCPU latest reports.
    pub vcpus: Vec<VcpuProgress>,
    /// Per-vCPU staged (written, not yet committed) values, 10 registers each.
    pub staged: Vec<[u64; 10]>,
    /// Guest-reported fatal exception.
    pub fatal: Option<GuestFatal>,
}

/// What an MMIO write asks the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestDevAction {
    /// Nothing.
    None,
    /// The guest reported a fatal exception.
    Fatal(GuestFatal),
}

/// The test device.
#[derive(Debug)]
pub(crate) struct TestDevice {
    state: TestDevState,
}

impl TestDevice {
    /// A device for `vcpus` vCPUs with no reports yet.
    pub(crate) fn new(vcpus: usize) -> Self {
        Self {
            state: TestDevState {
                vcpus: vec![VcpuProgress::default(); vcpus],
                staged: vec![[0; 10]; vcpus],
                fatal: None,
            },
        }
    }

    /// Whether `addr` belongs to this device.
    pub(crate) fn owns(addr: u64) -> bool {
        (TESTDEV_BASE..TESTDEV_BASE + TESTDEV_SIZE).contains(&addr)
    }

    fn decode(addr: u64) -> Option<(usize, u64)> {
        let off = addr.checked_sub(TESTDEV_BASE)?;
        if off >= TD_MAGIC {
            return None;
        }
        let vcpu = usize::try_from(off / TESTDEV_VCPU_STRIDE).ok()?;
        Some((vcpu, off % TESTDEV_VCPU_STRIDE))
    }

    /// Guest read.
    pub(crate) fn read(&self, addr: u64, data: &mut [u8]) {
        let value = if addr - TESTDEV_BASE == TD_MAGIC {
            TESTDEV_MAGIC
        } else if let Some((vcpu, reg)) = Self::decode(addr) {
            match (self.state.vcpus.get(vcpu), reg) {
                (Some(v), TD_GENERATION) => v.generation,
                (Some(v), TD_TICKS) => v.ticks,
                (Some(v), TD_ERRORS) => v.errors,
                (Some(v), TD_PROGRESS) => v.progress,
                (Some(v), TD_STAGE) => v.stage,
                _ => 0,
            }
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// Guest write.
    pub(crate) fn write(&mut self, addr: u64, data: &[u8]) -> TestDevAction {
        let Some((vcpu, reg)) = Self::decode(addr) else {
            return TestDevAction::None;
        };
        let mut bytes = [0u8; 8];
        for (slot, b) in bytes.iter_mut().zip(data) {
            *slot = *b;
        }
        let value = u64::from_le_bytes(bytes);
        let (Some(v), Some(staged)) = (
            self.state.vcpus.get_mut(vcpu),
            self.state.staged.get_mut(vcpu),
        ) else {
            return TestDevAction::None;
        };
        let idx = usize::try_from(reg / 8).unwrap_or(usize::MAX);
        if let Some(slot) = staged.get_mut(idx) {
            *slot = value;
        }
        match reg {
            TD_PROGRESS => {
                v.generation = staged[0];
                v.ticks = staged[1];
                v.errors = staged[2];
                v.progress = value;
                v.reports += 1;
            }
            TD_STAGE => v.stage = value,
            TD_EXC_VECTOR => {
                let fatal = GuestFatal {
                    vcpu,
                    vector: value,
                    rip: staged[usize::try_from(TD_EXC_RIP / 8).unwrap_or(0)],
                    error_code: staged[usize::try_from(TD_EXC_ERROR / 8).unwrap_or(0)],
                    cr2: staged[usize::try_from(TD_EXC_CR2 / 8).unwrap_or(0)],
                    cs: staged[usize::try_from(TD_EXC_CS / 8).unwrap_or(0)],
                };
                if self.state.fatal.is_none() {
                    self.state.fatal = Some(fatal);
                }
                return TestDevAction::Fatal(fatal);
            }
            _ => {}
        }
        TestDevAction::None
    }

    /// The latest progress.
    pub(crate) fn progress(&self) -> GuestProgress {
        let per_vcpu = self.state.vcpus.clone();
        GuestProgress {
            progress: per_vcpu.iter().map(|v| v.progress).sum(),
            ticks: per_vcpu.iter().map(|v| v.ticks).sum(),
            errors: per_vcpu.iter().map(|v| v.errors).sum(),
            reports: per_vcpu.iter().map(|v| v.reports).sum(),
            per_vcpu,
            fatal: self.state.fatal,
            ram_progress: None,
        }
    }

    /// Capture the state.
    pub(crate) fn state(&self) -> TestDevState {
        self.state.clone()
    }

    /// Restore the state (the vCPU count must match).
    pub(crate) fn restore(&mut self, state: &TestDevState) -> bool {
        if state.vcpus.len() != self.state.vcpus.len() || state.staged.len() != state.vcpus.len() {
            return false;
        }
        self.state = state.clone();
        true
    }
}

/// Words per vCPU in the `progress` array: progress, ticks, errors, generation, reports, stage.
const PROGRESS_WORDS: usize = 6;
/// Staged registers per vCPU.
const STAGED_WORDS: usize = 10;
/// Most vCPUs a `cpr-testdev` section may describe.
#[allow(clippy::cast_possible_truncation)] // 32 fits in usize.
const MAX_SECTION_VCPUS: usize = crate::machine::layout::MAX_VCPUS as usize;

/// The `cpr-testdev` section: counted be64 arrays `progress` (6 words per vCPU) and
/// `staged` (10 words per vCPU), then bool `has_fatal` and, if set, 6 × be64
/// (vcpu, vector, rip, error_code, cr2, cs).
impl cpr_savevm::VmState for TestDevState {
    const NAME: &'static str = "cpr-testdev";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;

    fn needed(&self) -> bool {
        true
    }

    fn pre_save(&mut self) -> cpr_savevm::Result<()> {
        Ok(())
    }

    fn save(&mut self, w: &mut cpr_savevm::FieldWriter<'_>) -> cpr_savevm::Result<()> {
        let progress: Vec<u64> = self
            .vcpus
            .iter()
            .flat_map(|v| {
                [
                    v.progress,
                    v.ticks,
                    v.errors,
                    v.generation,
                    v.reports,
                    v.stage,
                ]
            })
            .collect();
        w.array("progress", &progress)?;
        let staged: Vec<u64> = self.staged.iter().flatten().copied().collect();
        w.array("staged", &staged)?;
        w.bool("has_fatal", self.fatal.is_some());
        if let Some(f) = self.fatal {
            let vcpu = u64::try_from(f.vcpu).unwrap_or(u64::MAX);
            w.array_fixed("fatal", &[vcpu, f.vector, f.rip, f.error_code, f.cr2, f.cs])?;
        }
        Ok(())
    }

    fn load(r: &mut cpr_savevm::FieldReader<'_>, _version_id: u32) -> cpr_savevm::Result<Self> {
        let progress = r.array::<u64>("progress", MAX_SECTION_VCPUS * PROGRESS_WORDS)?;
        let staged = r.array::<u64>("staged", MAX_SECTION_VCPUS * STAGED_WORDS)?;
        if progress.len() % PROGRESS_WORDS != 0
            || staged.len() % STAGED_WORDS != 0
            || progress.len() / PROGRESS_WORDS != staged.len() / STAGED_WORDS
        {
            return Err(r.invalid("progress and staged describe different vCPU counts"));
        }
        let vcpus = progress
            .chunks_exact(PROGRESS_WORDS)
            .map(|p| VcpuProgress {
                progress: p[0],
                ticks: p[1],
                errors: p[2],
                generation: p[3],
                reports: p[4],
                stage: p[5],
            })
            .collect();
        let staged = staged
            .chunks_exact(STAGED_WORDS)
            .map(|s| {
                let mut regs = [0u64; STAGED_WORDS];
                regs.copy_from_slice(s);
                regs
            })
            .collect();
        let fatal = if r.bool("has_fatal")? {
            let f = r.array_fixed::<u64>("fatal", 6)?;
            Some(GuestFatal {
                vcpu: usize::try_from(f[0]).map_err(|_| r.invalid("fatal vCPU index"))?,
                vector: f[1],
                rip: f[2],
                error_code: f[3],
                cr2: f[4],
                cs: f[5],
            })
        } else {
            None
        };
        Ok(TestDevState {
            vcpus,
            staged,
            fatal,
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
    fn testdev_section_round_trips() {
        let mut dev = TestDevice::new(2);
        let mut s = dev.state();
        s.vcpus[1] = VcpuProgress {
            progress: 33_728,
            ticks: 950,
            errors: 0,
            generation: 3,
            reports: 77,
            stage: 9,
        };
        s.staged[0][4] = 42;
        assert_eq!(round_trip(&mut s), s);
        s.fatal = Some(GuestFatal {
            vcpu: 1,
            vector: 6,
            rip: 0x20_0000,
            ..Default::default()
        });
        let back = round_trip(&mut s);
        assert_eq!(back, s);
        assert!(dev.restore(&back));
    }
}
