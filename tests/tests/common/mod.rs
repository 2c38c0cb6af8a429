//! Drives the real `cpr::vmm::Vmm` in-process, as `cpr-vm`'s main loop does: each command
//! is a [`QmpRequest`] handed to [`Vmm::handle`] (so the run-state machine's requests are
//! processed and its events sent, as after any monitor command), machine events are
//! forwarded to the same `handle`, and the VMM's events are captured, typed, through
//! [`EventSender::capture`]. Nothing of the VMM is re-implemented here.
//!
//! Tests that need a machine (KVM) run one at a time ([`serialize`]: the host has 2 cores)
//! and skip, saying why, when `/dev/kvm` is absent ([`have_kvm`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cpr::config::{Incoming, OnOff, Size, VmArgs};
use cpr::qmp::{EventSender, QmpRequest};
use cpr::vmm::{
    CapabilityStatus, Command, CprLoadArgs, CprMode, CprSaveArgs, Event, FileTarget, MigrateArgs,
    MigrateIncomingArgs, MigrationAddress, MigrationCapability, Msg, Response, Vmm,
};
use cpr_runstate::RunState;

/// Generous: the machines are shared and noisy. Only a hang runs into it.
pub const PATIENCE: Duration = Duration::from_secs(120);

static KVM_LOCK: Mutex<()> = Mutex::new(());

/// One test with a machine at a time.
pub fn serialize() -> MutexGuard<'static, ()> {
    KVM_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the test `test` can run a machine; prints why not.
pub fn have_kvm(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        println!("{test}: SKIPPED: /dev/kvm is absent");
        false
    }
}

/// A scratch directory on tmpfs (`/dev/shm`), removed on drop.
pub fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cpr-tests-")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

/// What every machine test starts with: the KVM tests' turn, and a fresh directory under
/// `/dev/shm` with the usual RAM and checkpoint names in it.
pub struct Scene {
    _turn: MutexGuard<'static, ()>,
    /// The directory (removed when the scene ends).
    pub dir: tempfile::TempDir,
    /// `guest.ram` in it.
    pub ram: PathBuf,
    /// `vm.state` in it.
    pub state: PathBuf,
}

/// The scene of machine test `test`, or `None` (said on stdout) when KVM is absent.
pub fn scene(test: &str) -> Option<Scene> {
    let turn = serialize();
    if !have_kvm(test) {
        return None;
    }
    let dir = shm_dir();
    let ram = dir.path().join("guest.ram");
    let state = dir.path().join("vm.state");
    Some(Scene {
        _turn: turn,
        dir,
        ram,
        state,
    })
}

/// Names of the entries of `dir`, sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// `cpr-vm --mem-size 64M --mem-path RAM --smp N --serial none` (a small workload).
pub fn args(ram: Option<&Path>, smp: u32) -> VmArgs {
    VmArgs {
        mem_size: Size(64 << 20),
        mem_path: ram.map(Path::to_path_buf),
        mem_backend: None,
        mem_share: OnOff::On,
        smp,
        serial: "none".into(),
        workload_size: Some(Size(4 << 20)),
        globals: Vec::new(),
    }
}

/// A migratable VFIO device without hardware (what `cpr-vm --x-vfio-test-device` attaches).
#[derive(Debug)]
pub struct TestVfio;

impl cpr_vfio_info::VfioDevice for TestVfio {
    fn name(&self) -> &str {
        "0000:01:00.0"
    }

    fn supports_migration(&self) -> bool {
        true
    }

    fn bytes_transferred(&self) -> u64 {
        0
    }
}

/// One VMM, as one `cpr-vm` process would hold it.
pub struct Vm {
    /// The VMM under test.
    pub vmm: Vmm,
    events: Receiver<Event>,
    msgs: Receiver<Msg>,
}

impl Vm {
    /// A VMM in `prelaunch` (`cpr-vm -S`).
    pub fn new(args: VmArgs) -> Vm {
        let (events, rx) = EventSender::capture();
        let (tx, msgs) = cpr::vmm::channel_pair();
        let vmm = Vmm::new(args, events, tx).expect("Vmm::new");
        Vm {
            vmm,
            events: rx,
            msgs,
        }
    }

    /// A VMM waiting for `migrate-incoming` (`cpr-vm --incoming defer`).
    pub fn incoming_defer(args: VmArgs) -> Vm {
        let mut vm = Vm::new(args);
        vm.vmm
            .start(false, Some(&Incoming::Defer))
            .expect("--incoming defer");
        vm
    }

    /// Handles what the machine reported so far.
    pub fn pump(&mut self) {
        while let Ok(msg) = self.msgs.try_recv() {
            self.vmm.handle(msg);
        }
    }

    /// Runs `command` as the main loop runs a monitor's: QMP's answer (`Err` is its
    /// `desc`).
    pub fn cmd(&mut self, command: Command) -> Result<Response, String> {
        self.pump();
        let (req, reply) = QmpRequest::new(command, false);
        self.vmm.handle(Msg::Qmp(req));
        let reply = reply
            .recv_timeout(PATIENCE)
            .expect("every command is answered");
        reply.result.map_err(|e| e.desc)
    }

    /// `command`, which must succeed with `{}`.
    pub fn ok(&mut self, command: Command) {
        let name = command.name();
        assert_eq!(self.cmd(command), Ok(Response::Empty), "{}", name.as_str());
    }

    /// `command`'s refusal.
    pub fn refused(&mut self, command: Command) -> String {
        match self.cmd(command) {
            Ok(r) => panic!("expected a refusal, got {r:?}"),
            Err(e) => e,
        }
    }

    /// The events sent since the last call.
    pub fn events(&mut self) -> Vec<Event> {
        self.pump();
        self.events.try_iter().collect()
    }

    /// The run state.
    pub fn state(&mut self) -> RunState {
        self.pump();
        self.vmm.runstate()
    }

    /// `query-migrate`.
    pub fn query_migrate(&mut self) -> cpr::vmm::MigrationInfo {
        match self.cmd(Command::QueryMigrate) {
            Ok(Response::Migration(info)) => info,
            other => panic!("query-migrate: {other:?}"),
        }
    }

    /// `query-guest-progress`: the pages the guest's workload has processed, checking
    /// that it found its RAM intact and did not fail.
    pub fn progress(&mut self) -> u64 {
        match self.cmd(Command::QueryGuestProgress) {
            Ok(Response::GuestProgress(p)) => {
                assert_eq!(p.errors, 0, "the guest found its RAM changed: {p:?}");
                assert_eq!(p.fatal, None, "the guest failed: {p:?}");
                p.progress
            }
            other => panic!("query-guest-progress: {other:?}"),
        }
    }

    /// Waits (generously) until the guest's workload has gone past `beyond` pages.
    pub fn wait_progress(&mut self, beyond: u64) -> u64 {
        let start = Instant::now();
        loop {
            let p = self.progress();
            if p > beyond {
                return p;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the guest made no progress beyond {beyond}: {p:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (generously) for run state `want`.
    pub fn wait_state(&mut self, want: RunState) {
        let start = Instant::now();
        while self.state() != want {
            assert!(
                start.elapsed() < PATIENCE,
                "still {} (waiting for {want})",
                self.vmm.runstate()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `cont` from `prelaunch`: boots the built-in guest and waits until it works.
    pub fn boot(&mut self) -> u64 {
        self.ok(Command::Cont);
        assert_eq!(self.events(), [RESUME]);
        self.wait_progress(0)
    }

    /// Turns capability `cap` on.
    pub fn cap(&mut self, cap: MigrationCapability) {
        self.ok(Command::MigrateSetCapabilities(vec![CapabilityStatus {
            capability: cap,
            state: true,
        }]));
    }
}

/// `cpr-save FILE reboot`.
pub fn save(path: &Path) -> Command {
    Command::CprSave(CprSaveArgs {
        filename: path.to_path_buf(),
        mode: CprMode::Reboot,
    })
}

/// `cpr-load FILE`.
pub fn load(path: &Path) -> Command {
    Command::CprLoad(CprLoadArgs {
        filename: path.to_path_buf(),
    })
}

/// `migrate file:PATH`.
pub fn migrate(path: &Path) -> Command {
    Command::Migrate(MigrateArgs {
        cpr: None,
        target: Ok(MigrationAddress::File(file(path))),
        detach: None,
        resume: false,
    })
}

/// `migrate-incoming file:PATH`.
pub fn migrate_incoming(path: &Path) -> Command {
    Command::MigrateIncoming(MigrateIncomingArgs {
        target: Ok(MigrationAddress::File(file(path))),
        exit_on_error: None,
    })
}

fn file(path: &Path) -> FileTarget {
    FileTarget {
        path: PathBuf::from(path),
        offset: 0,
    }
}

/// `STOP`.
pub const STOP: Event = Event::RunState(cpr_runstate::Event::Stop);
/// `RESUME`.
pub const RESUME: Event = Event::RunState(cpr_runstate::Event::Resume);
/// `SUSPEND`.
pub const SUSPEND: Event = Event::RunState(cpr_runstate::Event::Suspend);
/// `WAKEUP`.
pub const WAKEUP: Event = Event::RunState(cpr_runstate::Event::Wakeup);

/// Whether `path`'s RAM is held by some `Vmm` (its lock).
pub fn ram_held(path: &Path) -> bool {
    cpr::vmm::is_locked_elsewhere(path).expect("F_OFD_GETLK")
}

/// Runs `f` with this process's file-size limit (`RLIMIT_FSIZE`) at `bytes` and `SIGXFSZ`
/// ignored: a write past `bytes` fails with `EFBIG`, as on a full disk. Only for tests
/// that hold [`serialize`] (the limit is the whole process's); RAM is mapped and never
/// grows, so only the checkpoint hits it.
pub fn with_file_size_limit<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: `SIG_IGN` installs no handler, so there is no handler code whose
    // async-signal safety could matter; ignoring SIGXFSZ only turns the signal a write
    // past the limit raises into that write's `EFBIG`.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.expect("ignore SIGXFSZ");
    let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_FSIZE, bytes, hard).expect("setrlimit");
    let out = f();
    setrlimit(Resource::RLIMIT_FSIZE, soft, hard).expect("restore the limit");
    out
}
