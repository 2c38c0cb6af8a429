//! Integration tests of the KVM machine and the built-in guest (real KVM).
//!
//! Every test skips (with a printed reason) when `/dev/kvm` is absent. Tests run one at
//! a time (a process-wide lock): the host has 2 cores. Run with `--nocapture` to see the
//! measured numbers.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cpr::checkpoint::{self, MachineLayout, RamBlockInfo};
use cpr::machine::{
    GuestProgress, Machine, MachineConfig, MachineEvent, MachineState, SerialOutput,
};
use cpr_memory::{Backing, GuestRam, OpenMode, RamBlock, RamBlockList, pc_ram_windows};
use cpr_migration_file::QemuFile;
use cpr_runstate::RunState;
use vm_memory::GuestMemoryMmap;

const RAM: u64 = 128 << 20;
const WAIT: Duration = Duration::from_secs(10);

static SERIAL_TEST_LOCK: Mutex<()> = Mutex::new(());

fn serialize() -> MutexGuard<'static, ()> {
    SERIAL_TEST_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn have_kvm(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        println!("{test}: SKIPPED: /dev/kvm is absent");
        false
    }
}

/// A serial writer that keeps everything in memory and echoes it to stdout.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}

fn ram_file() -> tempfile::NamedTempFile {
    tempfile::Builder::new()
        .prefix("cpr-machine-test-")
        .tempfile_in("/dev/shm")
        .expect("temp file in /dev/shm")
}

/// Guest RAM the way `cpr-vm` maps it: one `pc.ram` block through QEMU's windows, in the
/// shared file `path` (sized on first use, reused after) or anonymous.
fn guest_ram(path: Option<&Path>, size: u64) -> GuestMemoryMmap {
    let mut b = RamBlock::builder("pc.ram", size).windows(pc_ram_windows(size));
    b = match path {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("RAM file");
            if f.metadata().expect("stat").len() == 0 {
                f.set_len(size).expect("size RAM file");
            }
            b.backing(Backing::File {
                path: p.to_path_buf(),
            })
            .shared(true)
        }
        None => b.backing(Backing::Anonymous).shared(false),
    };
    let list = RamBlockList::from_blocks([b.build().expect("RAM block")]).expect("block list");
    let ram = GuestRam::map(&list, OpenMode::OpenOrCreate).expect("map RAM");
    // The regions (and their files) are reference-counted: the clone keeps them mapped.
    ram.memory().clone()
}

fn config(vcpus: usize, ram: &Path, serial: &Capture) -> MachineConfig {
    let mem = guest_ram(Some(ram), RAM);
    let mut c = MachineConfig::new(vcpus, mem);
    c.serial = SerialOutput::Writer(Box::new(serial.clone()));
    c
}

/// Poll `f` every 2 ms until it returns true or `WAIT` passes; fail on guest errors.
fn wait_for(
    m: &Machine,
    events: &Receiver<MachineEvent>,
    what: &str,
    mut f: impl FnMut(&GuestProgress) -> bool,
) -> (GuestProgress, Duration) {
    let start = Instant::now();
    loop {
        while let Ok(e) = events.try_recv() {
            match e {
                MachineEvent::Suspended => {}
                other => panic!("{what}: unexpected machine event {other:?}"),
            }
        }
        let p = m.guest_progress();
        assert!(
            p.fatal.is_none(),
            "{what}: guest fatal exception {:?}",
            p.fatal
        );
        if f(&p) {
            return (p, start.elapsed());
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: timed out after {WAIT:?}; progress {p:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn boot_and_check(vcpus: usize) {
    let ram = ram_file();
    let serial = Capture::default();
    let t0 = Instant::now();
    let mut m = Machine::new(config(vcpus, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    let (first, t_first) = wait_for(&m, &events, "first report from every vCPU", |p| {
        p.per_vcpu.iter().all(|v| v.reports > 0)
    });
    println!(
        "{vcpus} vCPU(s): first report from every vCPU {t_first:?} after boot (machine created+booted in {:?})",
        t0.elapsed() - t_first
    );
    // Progress and ticks must keep increasing on every vCPU.
    let (later, _) = wait_for(&m, &events, "progress and ticks increase", |p| {
        p.per_vcpu
            .iter()
            .zip(&first.per_vcpu)
            .all(|(now, then)| now.progress > then.progress && now.ticks > then.ticks)
            && p.per_vcpu.iter().all(|v| v.generation >= 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    let end = m.guest_progress();
    for (i, v) in end.per_vcpu.iter().enumerate() {
        println!(
            "  vCPU {i}: progress {} pages, generation {}, ticks {}, errors {}, reports {}",
            v.progress, v.generation, v.ticks, v.errors, v.reports
        );
    }
    assert!(end.progress > later.progress);
    assert_eq!(end.errors, 0, "RAM check errors: {end:?}");
    assert!(
        serial.text().contains("cpr-guest: kernel up"),
        "no boot banner on the serial port: {:?}",
        serial.text()
    );
    assert!(serial.text().contains("entering user mode"));
}

#[test]
fn boot_one_vcpu() {
    let _g = serialize();
    if have_kvm("boot_one_vcpu") {
        boot_and_check(1);
    }
}

#[test]
fn boot_two_vcpus() {
    let _g = serialize();
    if have_kvm("boot_two_vcpus") {
        boot_and_check(2);
    }
}

/// Writes `state` as a checkpoint and reads it back as `cpr-load` does: a real capture is
/// something the saver writes, so the loader must accept it (every rule of
/// `checkpoint::check_saveable` holds for real KVM state), and re-saving what was loaded
/// gives the same bytes.
fn through_checkpoint(state: MachineState) -> MachineState {
    let vcpus = u32::try_from(state.vcpus.len()).expect("few vCPUs");
    let layout = MachineLayout {
        vcpus,
        ram: vec![RamBlockInfo {
            idstr: "pc.ram".into(),
            size: RAM,
            shared: true,
            backing: "/dev/shm/ram".into(),
            copied: false,
        }],
        epoch: String::new(),
    };
    let save = |state: MachineState| {
        let mut registry =
            checkpoint::save_registry(layout.clone(), RunState::Paused, state).expect("registry");
        let mut f = QemuFile::memory_writer("cpr-save");
        cpr_savevm::save_device_state(&mut f, &mut registry).expect("save");
        f.into_bytes().expect("bytes")
    };
    let bytes = save(state);
    let open = || Ok(QemuFile::from_bytes(bytes.clone(), "cpr-load"));
    let parsed = checkpoint::parse(open, layout.clone(), None).expect("a real capture loads");
    let loaded = parsed.state;
    assert_eq!(parsed.runstate, RunState::Paused);
    assert_eq!(parsed.layout, layout);
    assert!(save(loaded.clone()) == bytes, "re-saving changed the file");
    loaded
}

/// Boot, run, pause, capture, drop the VM, restore a new VM over the same RAM file.
#[test]
fn save_restore_in_process() {
    let _g = serialize();
    if !have_kvm("save_restore_in_process") {
        return;
    }
    let ram = ram_file();
    let serial = Capture::default();
    let mut m = Machine::new(config(2, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    wait_for(&m, &events, "two generations on every vCPU", |p| {
        p.per_vcpu.iter().all(|v| v.generation >= 2)
    });

    let t = Instant::now();
    m.pause().expect("pause");
    let t_pause = t.elapsed();
    let t = Instant::now();
    let state = m.capture().expect("capture");
    let t_capture = t.elapsed();
    let state = through_checkpoint(state);
    let before = m.guest_progress();
    let ram_before = m.guest_ram_progress().expect("RAM progress");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        m.guest_ram_progress().expect("RAM progress"),
        ram_before,
        "progress moved while paused"
    );
    let t = Instant::now();
    drop(m);
    let t_drop = t.elapsed();
    println!(
        "paused in {t_pause:?}, captured in {t_capture:?}, old VM dropped in {t_drop:?}; \
         reported progress {} (RAM: {ram_before:?}), rips {:x?}",
        before.progress,
        state.vcpus.iter().map(|v| v.regs.rip).collect::<Vec<_>>()
    );

    let serial2 = Capture::default();
    let cfg = config(2, ram.path(), &serial2);
    let t = Instant::now();
    let mut m = Machine::new(cfg).expect("new machine");
    let t_new = t.elapsed();
    m.restore_state(&state).expect("restore state");
    let t_restore = t.elapsed();
    println!(
        "restore: Machine::new (VM, memslots, irqchip, PIT, vCPU threads) {t_new:?} + restore_state {:?}",
        t_restore - t_new
    );
    let events = m.take_events().expect("events");
    assert_eq!(m.guest_progress(), before, "test device state restored");
    m.resume().expect("resume");
    let (first, t_first) = wait_for(&m, &events, "first report after restore", |p| {
        p.per_vcpu
            .iter()
            .zip(&before.per_vcpu)
            .all(|(now, then)| now.reports > then.reports)
    });
    println!(
        "restore (new VM + state) {t_restore:?}; first report from every vCPU {t_first:?} after resume ({:?} incl. restore)",
        t_restore + t_first
    );
    for (i, ((now, then), ram)) in first
        .per_vcpu
        .iter()
        .zip(&before.per_vcpu)
        .zip(&ram_before)
        .enumerate()
    {
        println!(
            "  vCPU {i}: before progress {} gen {} ticks {} | first after restore: progress {} gen {} ticks {}",
            then.progress, then.generation, then.ticks, now.progress, now.generation, now.ticks
        );
        assert!(
            now.progress >= *ram,
            "vCPU {i} progress went back: {now:?} < {ram}"
        );
        assert!(
            now.generation >= then.generation,
            "vCPU {i} generation went back"
        );
        assert!(now.ticks >= then.ticks, "vCPU {i} ticks went back");
    }
    // Run until every vCPU completed another full generation on the restored VM: every
    // page written before the checkpoint has then been verified.
    let (after, _) = wait_for(&m, &events, "a full generation after restore", |p| {
        p.per_vcpu
            .iter()
            .zip(&first.per_vcpu)
            .all(|(now, then)| now.generation >= then.generation + 2 && now.ticks > then.ticks)
    });
    assert_eq!(after.errors, 0, "RAM check errors after restore: {after:?}");
    assert!(
        !serial2.text().contains("kernel up"),
        "the guest rebooted instead of continuing"
    );
    println!("after restore: {after:?}");
}

/// Guest-driven S3: suspend stops progress, wakeup resumes it; also across a restore.
#[test]
fn suspend_and_wakeup() {
    let _g = serialize();
    if !have_kvm("suspend_and_wakeup") {
        return;
    }
    let ram = ram_file();
    let serial = Capture::default();
    let mut m = Machine::new(config(2, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    wait_for(&m, &events, "running", |p| {
        p.per_vcpu.iter().all(|v| v.generation >= 1)
    });

    let t = Instant::now();
    m.request_guest_suspend().expect("request suspend");
    let e = events
        .recv_timeout(WAIT)
        .expect("a Suspended event within 10 s");
    println!("suspend requested -> {e:?} after {:?}", t.elapsed());
    assert_eq!(e, MachineEvent::Suspended);
    assert!(m.is_suspended());
    let p1 = m.guest_ram_progress().expect("RAM progress");
    let r1 = m.guest_progress();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        m.guest_ram_progress().expect("RAM progress"),
        p1,
        "progress while suspended"
    );
    assert_eq!(m.guest_progress(), r1, "reports while suspended");
    assert!(matches!(
        m.resume(),
        Err(cpr::machine::Error::GuestSuspended)
    ));

    let t = Instant::now();
    m.wakeup().expect("wakeup");
    let (p, dt) = wait_for(&m, &events, "progress after wakeup", |p| {
        p.per_vcpu
            .iter()
            .zip(&r1.per_vcpu)
            .all(|(now, then)| now.progress > then.progress && now.ticks > then.ticks)
    });
    println!(
        "wakeup -> progress on every vCPU after {dt:?} ({:?})",
        t.elapsed()
    );
    assert_eq!(p.errors, 0);

    // Suspend again, checkpoint while suspended, restore on a new VM, wake up there.
    m.request_guest_suspend().expect("request suspend");
    assert_eq!(events.recv_timeout(WAIT), Ok(MachineEvent::Suspended));
    let state = m.capture().expect("capture while suspended");
    assert!(state.pm.suspended);
    let before = m.guest_progress();
    drop(m);
    let mut m =
        Machine::restore(config(2, ram.path(), &Capture::default()), &state).expect("restore");
    let events = m.take_events().expect("events");
    assert!(m.is_suspended(), "restored machine is suspended");
    m.wakeup().expect("wakeup after restore");
    let (p, dt) = wait_for(&m, &events, "progress after restore + wakeup", |p| {
        p.per_vcpu.iter().zip(&before.per_vcpu).all(|(now, then)| {
            now.progress > then.progress && now.generation >= then.generation + 2
        })
    });
    println!("restore while suspended + wakeup -> a full generation in {dt:?}");
    assert_eq!(p.errors, 0);
}

/// The RAM check can fail: corrupt a workload word while paused, expect errors.
#[test]
fn ram_corruption_is_detected() {
    let _g = serialize();
    if !have_kvm("ram_corruption_is_detected") {
        return;
    }
    use vm_memory::{Bytes, GuestAddress};
    let ram = ram_file();
    let serial = Capture::default();
    let mut m = Machine::new(config(1, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    wait_for(&m, &events, "running", |p| p.per_vcpu[0].generation >= 1);
    m.pause().expect("pause");
    let addr = GuestAddress(cpr::machine::DEFAULT_WORKLOAD_BASE + 0x1238);
    let v: u64 = m.memory().read_obj(addr).expect("read");
    m.memory().write_obj(!v, addr).expect("write");
    m.resume().expect("resume");
    let (p, dt) = wait_for(&m, &events, "error detected", |p| p.errors > 0);
    println!(
        "corrupted word detected after {dt:?}: {} error(s)",
        p.errors
    );
    assert_eq!(p.errors, 1);
}

/// A guest exception at CPL3 reaches the kernel's handler, which reports it.
#[test]
fn guest_exception_is_reported() {
    let _g = serialize();
    if !have_kvm("guest_exception_is_reported") {
        return;
    }
    use vm_memory::{Bytes, GuestAddress};
    let ram = ram_file();
    let serial = Capture::default();
    let mut m = Machine::new(config(1, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    wait_for(&m, &events, "running", |p| p.reports > 0);
    // Stop the vCPU in user mode: it also spends time in the (emulated) kernel, handling
    // its timer, and a ud2 patched there would be a kernel-mode fault.
    let mut rip = None;
    for _ in 0..1000 {
        m.pause().expect("pause");
        let vcpu = &m.capture().expect("capture").vcpus[0];
        if vcpu.sregs.cs.selector & 3 == 3 {
            rip = Some(vcpu.regs.rip);
            break;
        }
        m.resume().expect("resume");
        std::thread::sleep(std::time::Duration::from_micros(300));
    }
    let rip = rip.expect("the vCPU never stopped in user mode");
    // ud2 at the user workload's current instruction.
    m.memory()
        .write_slice(&[0x0f, 0x0b], GuestAddress(rip))
        .expect("patch");
    m.resume().expect("resume");
    let e = events.recv_timeout(WAIT).expect("an event");
    println!("patched ud2 at {rip:#x} -> {e:?}");
    match e {
        MachineEvent::GuestPanicked { fatal } => {
            assert_eq!(fatal.vector, 6, "#UD");
            assert_eq!(fatal.rip, rip);
            assert_eq!(fatal.cs & 3, 3, "raised at CPL3");
        }
        other => panic!("expected GuestPanicked, got {other:?}"),
    }
    assert!(m.guest_progress().fatal.is_some());
}

/// `x-guest-fault`'s two failures, through the guest's real paths: a triple fault is a
/// `KVM_EXIT_SHUTDOWN` (a reset request: `ShutdownCause::GuestReset`), a panic is the
/// kernel's own report of a kernel-mode `#UD`.
#[test]
fn guest_fault_requests() {
    let _g = serialize();
    if !have_kvm("guest_fault_requests") {
        return;
    }
    use cpr::machine::{GuestFault, ShutdownCause};
    for fault in [GuestFault::TripleFault, GuestFault::Panic] {
        let ram = ram_file();
        let serial = Capture::default();
        let mut m = Machine::new(config(2, ram.path(), &serial)).expect("machine");
        let events = m.take_events().expect("events");
        m.boot().expect("boot");
        wait_for(&m, &events, "running", |p| {
            p.per_vcpu.iter().all(|v| v.reports > 0)
        });
        let t = Instant::now();
        m.request_guest_fault(fault).expect("request the fault");
        let e = events.recv_timeout(WAIT).expect("an event");
        println!("{fault:?} -> {e:?} after {:?}", t.elapsed());
        match (fault, e) {
            (
                GuestFault::TripleFault,
                MachineEvent::Shutdown {
                    vcpu: 0,
                    cause: ShutdownCause::GuestReset,
                    reason,
                },
            ) => assert!(reason.contains("KVM_EXIT_SHUTDOWN"), "{reason}"),
            (GuestFault::Panic, MachineEvent::GuestPanicked { fatal }) => {
                assert_eq!((fatal.vcpu, fatal.vector), (0, 6), "#UD on the BSP");
                assert_eq!(fatal.cs & 3, 0, "raised in kernel mode");
            }
            (fault, other) => panic!("{fault:?}: unexpected {other:?}"),
        }
    }
}

/// An instruction the CPL0 emulator cannot run ends in an InternalError event with the
/// instruction bytes; the VMM survives and can still pause and capture.
#[test]
fn emulation_failure_is_reported() {
    let _g = serialize();
    if !have_kvm("emulation_failure_is_reported") {
        return;
    }
    use vm_memory::{Bytes, GuestAddress};
    let ram = ram_file();
    let serial = Capture::default();
    let mut m = Machine::new(config(1, ram.path(), &serial)).expect("machine");
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    wait_for(&m, &events, "running", |p| p.reports > 0);
    m.pause().expect("pause");
    let idt = m.capture().expect("capture").vcpus[0].sregs.idt.base;
    // Timer gate (vector 0x40): the handler address is split over the 16-byte gate.
    let gate = idt + 0x40 * 16;
    let lo: u16 = m.memory().read_obj(GuestAddress(gate)).expect("gate");
    let mid: u16 = m.memory().read_obj(GuestAddress(gate + 6)).expect("gate");
    let isr = u64::from(lo) | (u64::from(mid) << 16);
    // int3 as the timer ISR's first instruction: an emulation failure at CPL0 here.
    m.memory()
        .write_obj(0xccu8, GuestAddress(isr))
        .expect("patch");
    m.resume().expect("resume");
    let e = events.recv_timeout(WAIT).expect("an event");
    println!("int3 in the timer ISR at {isr:#x} -> {e:?}");
    match e {
        MachineEvent::InternalError { vcpu, reason } => {
            assert_eq!(vcpu, 0);
            assert!(reason.contains(&format!("rip={isr:#x}")), "{reason}");
            assert!(reason.contains("insn=[cc"), "{reason}");
        }
        other => panic!("expected InternalError, got {other:?}"),
    }
    m.pause().expect("pause after the failure");
    m.capture().expect("capture after the failure");
}

/// 16 GiB of (anonymous, sparse) RAM: the guest maps RAM above the 3–4 GiB hole; the
/// workload is placed at 16 GiB so only 64 MiB are ever touched.
#[test]
fn boot_16gib_ram_high_workload() {
    let _g = serialize();
    if !have_kvm("boot_16gib_ram_high_workload") {
        return;
    }
    let t = Instant::now();
    let mem = guest_ram(None, 16 << 30);
    let mut c = MachineConfig::new(2, mem);
    let serial = Capture::default();
    c.serial = SerialOutput::Writer(Box::new(serial.clone()));
    c.workload = Some((16 << 30, 64 << 20));
    let mut m = Machine::new(c).expect("machine");
    let t_new = t.elapsed();
    let events = m.take_events().expect("events");
    m.boot().expect("boot");
    let (p, dt) = wait_for(&m, &events, "two generations in high RAM", |p| {
        p.per_vcpu.iter().all(|v| v.generation >= 2)
    });
    println!("16 GiB: machine created in {t_new:?}, two generations after {dt:?}: {p:?}");
    assert_eq!(p.errors, 0);
    assert!(serial.text().contains("ram_mib=16384"));
}
