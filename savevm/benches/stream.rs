//! Criterion benchmarks of the stream: saving and (two-phase) loading a checkpoint shaped
//! like a 1-vCPU `cpr-vm` one (~13 KiB), and saving guest RAM through the `ram` section
//! (64 MiB, mostly zero pages, as a freshly booted guest's).
//!
//! Run with `cargo bench -p cpr-savevm`.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use cpr_migration_file::QemuFile;
use cpr_savevm::{
    BoxError, FieldReader, FieldWriter, InstanceId, OnLoad, RamBlockDesc, RamBlocks, Registration,
    Registry, Result, SharedState, VmState, load_device_state, save_device_state, save_state,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A vCPU-sized state: registers, an XSAVE area, a LAPIC page, MSRs, CPUID.
#[derive(Clone)]
struct Cpu {
    regs: [u64; 18],
    xsave: Vec<u8>,
    lapic: Vec<u8>,
    msrs: Vec<u64>,
    cpuid: Vec<u32>,
}

impl VmState for Cpu {
    const NAME: &'static str = "cpu";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.array_fixed("regs", &self.regs)?;
        w.buffer("xsave", &self.xsave);
        w.buffer("lapic", &self.lapic);
        w.array("msrs", &self.msrs)?;
        w.array("cpuid", &self.cpuid)
    }
    fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
        let regs = r.array_fixed::<u64>("regs", 18)?;
        let mut xsave = vec![0; 4096];
        r.buffer_into("xsave", &mut xsave)?;
        let mut lapic = vec![0; 1024];
        r.buffer_into("lapic", &mut lapic)?;
        Ok(Cpu {
            regs: regs.try_into().map_err(|_| r.invalid("regs"))?,
            xsave,
            lapic,
            msrs: r.array("msrs", 1024)?,
            cpuid: r.array("cpuid", 2048)?,
        })
    }
    fn post_load(&mut self, _v: u32) -> Result<()> {
        Ok(())
    }
}

fn registry() -> Registry {
    let cpu = Cpu {
        regs: [7; 18],
        xsave: vec![0x55; 4096],
        lapic: vec![0xaa; 1024],
        msrs: (0..80).collect(),
        cpuid: (0..75 * 7).collect(),
    };
    let mut r = Registry::new();
    r.register_persist(
        Registration::new("cpu", InstanceId::Id(0), OnLoad::Required),
        SharedState::new(Arc::new(Mutex::new(cpu))),
    )
    .expect("register");
    r
}

/// Guest RAM in a Vec, every 64th page holding data.
struct Ram(Vec<u8>);

impl RamBlocks for Ram {
    fn blocks(&self) -> Vec<RamBlockDesc> {
        vec![RamBlockDesc::copied("pc.ram", self.0.len() as u64)]
    }
    fn ignore_shared(&self) -> bool {
        false
    }
    fn populated(
        &self,
        _b: usize,
    ) -> std::result::Result<Option<Vec<std::ops::Range<u64>>>, BoxError> {
        Ok(None)
    }
    fn read(&self, _b: usize, off: u64, buf: &mut [u8]) -> std::result::Result<(), BoxError> {
        let off = usize::try_from(off)?;
        buf.copy_from_slice(&self.0[off..off + buf.len()]);
        Ok(())
    }
    fn write(&mut self, _b: usize, off: u64, data: &[u8]) -> std::result::Result<(), BoxError> {
        let off = usize::try_from(off)?;
        self.0[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero(&mut self, _b: usize, off: u64, len: u64) -> std::result::Result<(), BoxError> {
        let (off, len) = (usize::try_from(off)?, usize::try_from(len)?);
        self.0[off..off + len].fill(0);
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let mut reg = registry();
    let mut f = QemuFile::memory_writer("bench");
    save_device_state(&mut f, &mut reg).expect("save");
    let bytes = f.into_bytes().expect("bytes");

    let mut g = c.benchmark_group("checkpoint");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("save 1-vCPU device state", |b| {
        b.iter(|| {
            let mut f = QemuFile::memory_writer("bench");
            save_device_state(&mut f, &mut reg).expect("save");
            black_box(f.into_bytes().expect("bytes"))
        })
    });
    g.bench_function("parse 1-vCPU device state", |b| {
        b.iter(|| {
            let mut f = QemuFile::from_bytes(bytes.clone(), "bench");
            black_box(load_device_state(&mut f, &reg).expect("load"))
        })
    });
    g.finish();

    let mut ram = Ram(vec![0; 64 << 20]);
    for page in ram.0.chunks_mut(4096).step_by(64) {
        page.fill(0x5a);
    }
    let mut g = c.benchmark_group("ram");
    g.throughput(Throughput::Bytes(ram.0.len() as u64));
    g.sample_size(20);
    g.bench_function("save 64 MiB, 1/64 pages with data", |b| {
        b.iter(|| {
            let mut f = QemuFile::memory_writer("bench");
            let mut reg = registry();
            black_box(save_state(&mut f, &mut reg, Some(&ram)).expect("save"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
