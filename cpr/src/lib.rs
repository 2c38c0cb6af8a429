//! # cpr — patches 6 and 7 of QEMU's Live Update V7: `cpr: reboot mode`, `cpr: reboot HMP interfaces`
//!
//! QEMU files: `migration/cpr.c`, `include/migration/cpr.h`, `qapi/cpr.json` (patch 6);
//! `hmp-commands.hx`, `monitor/hmp-cmds.c` (patch 7).
//!
//! ## What the C patches do
//!
//! Patch 6 adds the QMP commands `cpr-save {filename, mode}` and `cpr-load {filename}`
//! (`CprMode` = `reboot`). `cpr-save` checks that no RAM is volatile, refuses COLO and
//! record/replay, stores the run state in the `globalstate` section, opens the file (0600),
//! stops the VM and writes the device state (no RAM: it stays in place in shared, persistent
//! memory). The caller then quits QEMU, reboots the host (kexec) or updates QEMU, starts the
//! same command line with `-S`, and `cpr-load`s the file: the VM resumes if it was running,
//! comes back paused if it was paused, and comes back suspended (with the patch-5
//! start-on-wakeup armed) if it was suspended. Patch 7 adds the same two commands to HMP.
//!
//! ## How this crate does it
//!
//! `cpr-vm` is a small KVM VMM composed of the five patch crates:
//!
//! * [`machine`]: the KVM machine (kvm-ioctls): guest RAM registered first, in-kernel
//!   irqchip and PIT, vCPU threads that pause promptly (signal + `immediate_exit`), a 16550
//!   (vm-superio) on COM1 `0x3f8`, an ACPI-like PM1a control register on port `0x604`
//!   through which the guest suspends itself, and an MMIO test device at `0xD000_0000`
//!   through which the built-in guest (`cpr/guest/`, assembled at build time) reports its
//!   progress. Every component's state is a [`cpr_savevm::VmState`] next to it.
//! * [`checkpoint`]: which sections a checkpoint holds, and reading one back into a
//!   `MachineState` without touching the machine.
//! * [`vmm`]: the main loop; `cpr-save`/`cpr-load` in V7's order (`vmm/cpr_ops.rs`). It
//!   executes typed [`vmm::Command`]s and answers typed [`vmm::Response`]s: no JSON.
//! * [`qmp`]: QEMU's monitor protocol (server, client, HMP over `human-monitor-command`:
//!   `cpr-save <file> <mode>`, `cpr-load <file>` as patch 7 adds them); the only place
//!   JSON is parsed into commands and results are serialized.
//! * [`config`]: what the VMM is asked to run (the machine, `--incoming`, `--global`).
//!
//! What another VMM uses: [`vmm::Vmm`] and its typed [`vmm::Command`]s, [`vmm::Response`]s
//! and [`vmm::Event`]s; [`config`]; the QMP server and client ([`qmp::QmpServer`],
//! [`qmp::QmpClient`]); the checkpoint format ([`checkpoint`]); the errors ([`Error`]).
//! Everything else is `pub(crate)` (`unreachable_pub` is on). The library does not print:
//! warnings (a save's `warnings`, a guest that failed) and errors it cannot return go to
//! the `log` facade; `cpr-vm` installs a logger that prints them on stderr.
//!
//! The `cpr-vm` binary (its command line, process and exit statuses, `cpr-vm demo`) is
//! the `cpr-vm` package; the process driver shared by the demo and `cargo xtask e2e`/`bench`
//! is the `cpr-harness` package. Neither is part of this library.
//!
//! ## The mainline interface (QEMU 8.2+), same machinery
//!
//! `migrate-set-capabilities` (`x-ignore-shared`, `events`), `migrate-set-parameters
//! {mode: cpr-reboot}`, `migrate file:...`, `--incoming defer` + `migrate-incoming`,
//! `query-migrate`, MIGRATION events (`vmm/migration.rs`). It writes and reads the same
//! checkpoint sections through the same loader; what mainline adds is RAM that is not
//! shared: it is copied into the stream as QEMU's `ram` section ([`cpr_savevm::RamBlocks`],
//! `vmm/ram_io.rs`), after QEMU's configuration section, both as QEMU 10 writes them, page
//! by page with bounded memory (a zero page is one ZERO record; pages the guest never
//! populated are left out and load as zeros: found with `PAGEMAP_SCAN` for anonymous RAM,
//! a few calls whatever the RAM size, where QEMU reads every page to find its zero pages),
//! and loaded only after the whole file has been checked. QEMU's
//! `scripts/analyze-migration.py` reads every stream `cpr-vm` writes (e2e "QEMU's
//! analyze-migration.py reads every stream").
//! A load costs what the stream carries, not the RAM size, and copies each page once: the
//! checkpoint is mapped in place under a read lease (`checkpoint::StreamSource`, with
//! `cpr_migration_file::MappedFile`), hashed once on two threads, then its pages go into
//! anonymous RAM that a thread allocates ahead of the copies, or through a shared file's
//! descriptor onto its old pages, whose zero runs are punched out. Private anonymous
//! blocks drop their old pages first ([`cpr_memory::MappedBlock::discard`]). QEMU reads
//! the file through a 32 KiB buffer and, into a shared file, reads and clears every page.
//!
//! ## Live update by hand-off: `cpr-transfer` (QEMU 10.0) and `cpr-exec` (QEMU 10.2)
//!
//! Guest RAM in a memfd (`--mem-backend memfd`) has no path: it survives a process only
//! by its descriptor being handed on. `vmm/handoff.rs` is the CPR state that carries it
//! (and the monitor's listening socket): over a `cpr` channel with `SCM_RIGHTS`, or in a
//! memfd named by `CPR_VM_EXEC_STATE` across `exec`. `vmm/transfer.rs` is `migrate` in
//! `cpr-transfer` mode and the new process's side; `vmm/exec.rs` is `cpr-exec`. The main
//! channel carries the same checkpoint sections as every other path, through the same
//! whole-file check. Where we do better than QEMU:
//!
//! * **The machine is built before the state arrives.** A process waiting for state
//!   (`-S`, `--incoming`) builds its KVM VM, memslots, irqchip, PIT, vCPU threads and
//!   devices at start-up; a cpr-transfer target does it on reserved address space
//!   ([`cpr_memory::GuestRam::reserve`]) before the memfd arrives, and says READY only
//!   then. The old process stops its guest after READY, so the guest pauses for the
//!   state's transfer and restore only (under a millisecond here). QEMU builds the new
//!   machine after the cpr state arrives.
//! * **The hand-over has a commit point.** The new process checks the whole stream, then
//!   ACCEPTs; only then does the old one release the RAM lock (`vmm/ownership.rs`) and the
//!   new one take it. A new process that dies or refuses before that leaves the old VM
//!   running, its RAM untouched and its lock kept. QEMU's source cannot tell.
//! * **The old process's teardown is off the critical path.** In cpr-transfer the new
//!   guest runs while the old process exits; in cpr-exec a `CLONE_VM` helper keeps the old
//!   address space and KVM VM alive across the `exec` and tears them down after the new
//!   image runs.
//! * cpr-reboot refuses memfd RAM (`Memory region pc.ram is a memfd: ...`): it would be
//!   lost with the process. QEMU copies it.
//!
//! ## The V7 checklist, and where we differ
//!
//! The V7 checklist (each step of `cpr-save` and `cpr-load`, the code that does it and the
//! test that guards it) is `docs/V7-CHECKLIST.md` in the repository; the data flow and where
//! each piece of state lives are in `docs/DESIGN.md`.
//!
//! Deliberate differences, each for a V7 hazard:
//!
//! * **Atomic checkpoint.** V7 truncates the target and ignores `qemu_fclose`'s error; a
//!   failed save destroys the previous checkpoint and a late write error is lost. We write
//!   a temporary beside the target, fsync, rename, fsync the directory, and report every
//!   error.
//! * **Nothing changes until the whole file is checked.** V7 applies each section as it
//!   reads it; we parse everything, verify a CRC-32 trailer, check that the checkpoint's
//!   machine (vCPUs, RAM blocks, backing files) is this machine, and that its run state can
//!   be entered, before building a new KVM machine, which replaces the old one only once it
//!   exists. A bad file leaves the process in `prelaunch`, ready for a good one. (A
//!   mainline stream that copies RAM writes it after the whole file is checked and before
//!   the machine is built, into a VM that is still `inmigrate`; a later failure leaves it
//!   there, and a retry rewrites every page.)
//! * **No aborts.** V7's `runstate_set` aborts QEMU on an impossible transition (loading a
//!   suspended checkpoint into a `paused` VM); here it is an error:
//!   `cannot restore a suspended VM into a VM that is paused`.
//! * **Ticks after a failed save.** V7 disables a suspended guest's ticks and never
//!   re-enables them if the save fails; we do.
//! * **Persistence.** V7 lets a tmpfs (`/dev/shm`) RAM file pass, though it does not
//!   survive a host reboot. `cpr-save` still succeeds (a VMM binary upgrade without reboot
//!   is fine) but its reply carries `warnings` naming the block, and
//!   `query-ram-persistence` reports each block's lifetime; RAM on a disk file is msynced
//!   before the save reports success.
//! * **No configuration section, but a `cpr-machine` section** with the vCPU count and RAM
//!   layout: V7 does not validate the machine at all. (A mainline stream opens with QEMU's
//!   configuration section, machine type `cpr-vm`, as QEMU writes it; which blocks stay in
//!   place and the epoch are still ours, in `cpr-machine` and the vmdesc. QEMU's own
//!   loader refuses our files at the machine type, or at `cpr-machine`.)
//! * **Ticks** are kvmclock here (QEMU's kvmclock state-change hook): the built-in guest
//!   uses the LAPIC timer and the TSC, which KVM keeps running while the VM is stopped;
//!   guest time simply stops while no process runs it (this host has no TSC scaling and no
//!   stable kvmclock, see `docs/HOST-KVM.md`).
//! * **S3** is resume-in-place: there is no firmware waking vector; on wakeup the guest
//!   continues after its PM1 write.
//! * **COLO and record/replay** do not exist in this VMM. Step 2 still refuses a VM with
//!   the `x-colo` capability on (`cpr-save does not support x-colo`), as V7 does; step 3
//!   never fires.
//! * **VFIO**: no real device can be bound yet (see [`cpr_vfio_info`]); the mainline rule
//!   (`VFIO device only supports cpr-reboot for runstate suspended`) is checked with the
//!   (empty) device list.
//! * **`cpr-save` with no machine** (`-S` and never started) is refused: there is no state.
//! * **A checkpoint that could never be loaded is refused**: `cpr-save` in `save-vm` (a
//!   second save), `postmigrate`, `guest-panicked`... V7 writes it, replacing a good one.
//! * **Targets** (`vmm/target.rs`): a `cpr-save`/`migrate` target that exists and is not a
//!   regular file (a device, FIFO, directory) is refused. A `cpr-load` file that is not a
//!   regular file is refused without blocking (a FIFO would hang V7's open).
//! * **The symlink rule.** V7 writes wherever a symlink points, unless the host enables
//!   `fs.protected_symlinks`. Here every checkpoint path (written, written in place at an
//!   offset, or read) is resolved as the kernel would and a symlink that the kernel's
//!   `fs.protected_symlinks` would refuse to follow (in a sticky, world-writable directory
//!   like `/tmp`, owned neither by us nor by the directory's owner) is refused, naming it
//!   and saying why, whatever the sysctl says. A link the user made is followed: the file
//!   it leads to is replaced, the link stays. The temporary file is an unnamed
//!   `O_TMPFILE` (or a random name), so a killed save leaves nothing behind and no one can
//!   squat on its name ([`cpr_migration_file::AtomicFile`]).
//! * **Never the VM's own RAM.** V7 happily renames a checkpoint over the `--mem-path`
//!   file (the guest is lost at the next start), and mainline writes `file:<ram>,offset=N`
//!   into live guest RAM. A target that is the same file (device and inode: its path, a
//!   hard link or a symlink) as a RAM backing is refused before the VM is stopped:
//!   `cannot save to /dev/shm/vm0.ram: it is this VM's RAM (pc.ram)`.
//! * **A guest entering S3 while a command arrives** is seen as suspended first (its PM
//!   register is the authority), so a checkpoint never says `running` for a suspended guest.
//!
//! * **Exit statuses tell a failed guest from `quit`** (`cpr-vm`'s `app` module): 0 `quit` or the
//!   guest powered off, 1 `cpr-vm` failed (start-up), 2 bad command line, 3 the guest
//!   failed (a triple fault ended it, or the process quit while the guest was
//!   `guest-panicked` or `internal-error`). QEMU exits 0 for all but start-up and usage
//!   errors. Events are QEMU's: a triple fault is a reset request, which with no reboot
//!   here ends the VM as QEMU's `-no-reboot` does (`SHUTDOWN {guest: true, reason:
//!   guest-reset}`); a KVM internal error stops the VM in `internal-error` (STOP, as in
//!   `kvm-all.c`); a guest panic is `GUEST_PANICKED` and `guest-panicked`. The test-only
//!   `x-guest-fault {kind: triple-fault | panic}` makes the built-in guest fail on request.
//! * **The monitor socket is released at `quit`, before the reply.** The listener is shut
//!   down and the path removed (only while it is still this process's socket: device and
//!   inode) before the reply to `quit` is sent, so a new process started on the reply binds
//!   the same path every time, and an exiting process never removes another's socket. The
//!   client keeps its connection: the reply, then `SHUTDOWN` (QEMU's order), then EOF.
//! * **`--serial FILE` is created 0600** whatever the umask (an existing file keeps its
//!   mode).
//!
//! * **Only what the saver can write is loaded.** V7 applies each section as it reads it
//!   and believes every value: a `cpu` section without MSRs or CPUID leaves the vCPU with
//!   KVM's defaults, an `i8259` section carrying the slave's chip id leaves the master PIC
//!   unrestored, a `globalstate` of `inmigrate` makes `cont` answer `{}` while the guest
//!   never runs. Here a checkpoint is refused, with an error naming the section, unless the
//!   saver could have written it byte for byte: the encoding is the saver's (vmdesc
//!   included), and [`checkpoint::check_saveable`] states in one place what the saver
//!   guarantees about the values (run state `running`, `paused` or `suspended`; every
//!   vCPU with its MSRs and CPUID; PIC instances 0/1 with chip ids master/slave; each RAM
//!   block once; copied RAM only with a `ram` section that sends it; ...), before any guest
//!   RAM is written or anything applied. A property test mutates valid checkpoints
//!   (checksum recomputed) and checks that each is refused or re-saves identically.
//! * **A stale checkpoint is refused.** A checkpoint describes RAM it does not contain. V7
//!   happily loads it after the guest ran on (`cont` after `cpr-save`) or after another VM
//!   booted over the same RAM file, and the guest corrupts itself. Here each save tags the
//!   in-place RAM files with a fresh epoch (`user.cpr.epoch`), recorded in the checkpoint;
//!   a running guest replaces the tag; `cpr-load` refuses a checkpoint whose epoch is not
//!   the RAM's (`vmm/epoch.rs`). A file system without user xattrs gets a warning instead.
//! * **One guest, one process: the RAM lock.** Neither V7 nor mainline QEMU stops two
//!   processes from running guests on one RAM file (a second VMM on the same `--mem-path`,
//!   or a new process that loads while the old one can still `cont`). Here a process that
//!   runs, or can run, a guest holds an open-file-description lock on each RAM file
//!   (`vmm/ownership.rs`): taken before the boot, `cont`, `system_wakeup` and every load,
//!   refused with an error naming the file when another process holds it, and released
//!   by a completed checkpoint (`cpr-save`, `migrate`), which hands the RAM over to the
//!   process that loads it, even while the old one is still exiting.
//!
//! Mainline's interface is QEMU's down to its checks: `migrate-set-parameters` refuses
//! out-of-range values with QEMU's messages and changes nothing (`vmm/mig_params.rs`), and
//! `--global migration.<property>=<value>` sets capabilities and parameters at start-up
//! with QEMU's property names (`-global migration.x-ignore-shared=on`,
//! `-global migration.mode=cpr-reboot`), so `--incoming file:` can load an in-place stream.

#![warn(unreachable_pub)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod machine;
pub mod qmp;
pub mod vmm;

pub use error::{Error, Result};
