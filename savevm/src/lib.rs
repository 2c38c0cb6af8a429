//! The QEMU savevm device-state stream and VMState descriptions in Rust.
//!
//! Mirrors patch 4 of Steve Sistare's "Live Update" V7 series,
//! **"migration: simplify savevm"** (`migration/savevm.c`), together with
//! the parts of `migration/savevm.c` and `migration/vmstate.c` that write
//! and read the device-state stream that `cpr-save`/`cpr-load` use.
//!
//! # What the C patch does
//!
//! `qmp_xen_save_devices_state` and `qmp_xen_load_devices_state` each
//! created a `QIOChannelFile` from a path, set the channel name, wrapped it
//! in a `QEMUFile` and dropped the channel reference. The patch replaces
//! those steps with one call to `qemu_file_open(path, flags, mode,
//! channel name)` from patch 3: `O_WRONLY|O_CREAT|O_TRUNC`, 0660,
//! `"migration-xen-save-state"` and `O_RDONLY|O_BINARY`, 0,
//! `"migration-xen-load-state"`. "No functional change." Here the file is
//! opened by the VMM, whose checkpoint-file policy decides where a checkpoint may be
//! written and read (symlinks, targets, temporaries); this crate saves to and loads from
//! a [`cpr_migration_file::QemuFile`] and names the channels ([`CHANNEL_CPR_SAVE`],
//! [`CHANNEL_CPR_LOAD`], ...). Deliberate difference: no path helpers.
//!
//! Mainline QEMU's later `cpr-reboot` mode (8.2) reuses this machinery but
//! also copies guest RAM into the file. [`save_state`] and [`load_state`]
//! do that, with the
//! `ram` section described below and in [`ram`]; without RAM they are the
//! device-state functions.
//!
//! # The stream
//!
//! All integers big-endian; "str" is a counted string (length byte +
//! bytes). Constants are in [`consts`].
//!
//! ```text
//! "QEVM" (be32 0x5145564d) | be32 3
//! [configuration and ram sections, only when saved with RAM (save_state)]
//! per needed section, in registry order:
//!   0x04 | be32 section_id | str idstr | be32 instance_id | be32 version_id
//!   fields (scalars big-endian, bool 1 byte, buffers raw, arrays by element)
//!   per needed subsection: 0x05 | str name | be32 version | fields ...
//!   0x7e | be32 section_id                                  (footer)
//! 0x00                                                      (EOF)
//! 0x06 | be32 len | len bytes of compact JSON [+ spaces]    (vmdesc)
//! "CPRC" | 8 lowercase hex digits: CRC-32 of every byte from the magic
//!          to the end of the JSON
//! ```
//!
//! A stream with RAM (mainline QEMU's `cpr-reboot` copies guest RAM into
//! the file unless a block is shared and `x-ignore-shared` is on) is
//! written as QEMU 10 writes a migration stream: the configuration section,
//! then the `ram` section in QEMU's iterative framing, then device state.
//! A record word is a page offset ORed with flags (ZERO 0x02, MEM_SIZE
//! 0x04, PAGE 0x08, EOS 0x10, CONTINUE 0x20):
//!
//! ```text
//! 0x07 | be32 len | machine type "cpr-vm"                       (CONFIGURATION)
//!   [0x05 | str "configuration/capabilities" | be32 1 |
//!    be32 1 | str "x-ignore-shared"]                            (x-ignore-shared on)
//! 0x01 | be32 sid | str "ram" | be32 0 | be32 4                 (START)
//!   be64 total|0x04 | per block: str idstr, be64 used_length
//!                     [, be64 0 with x-ignore-shared]
//!   be64 0x10 | 0x7e | be32 sid
//! per about 1 MiB of records:
//! 0x02 | be32 sid                                               (PART)
//!   be64 offset|0x08[|0x20] [str idstr] | 4096 bytes            page
//!   be64 offset|0x02[|0x20] [str idstr] | u8 0                  zero page
//!   be64 0x10 | 0x7e | be32 sid
//! 0x03 | be32 sid | be64 0x10 | 0x7e | be32 sid                 (END)
//! ```
//!
//! Blocks kept in place carry no pages, and pages never populated at the
//! source are left out (they load as zeros). The guest's RAM is reached
//! through the VMM's [`RamBlocks`]; [`ram`] details the format.
//!
//! V7's `cpr-save` writes no configuration section, and neither does
//! [`save_device_state`].
//!
//! [`probe`] tells a caller which of the two kinds a file holds (device
//! state only, or RAM: a configuration section first, [`StreamKind`]) from its first
//! bytes, without consuming them, and refuses a file that is not a vmstate
//! stream as the loader does; a VMM needs no byte offsets of its own.
//! [`ram_blocks`] reads the block list a stream's `ram` section announces, for a tool
//! without RAM of its own (an inspector) to describe the RAM to [`load_state`].
//!
//! # VMState in Rust
//!
//! A state type implements [`VmState`]: `NAME`, `VERSION_ID`,
//! `MINIMUM_VERSION_ID` and the required hooks `needed`, `pre_save`,
//! `save`, `load`, `post_load`. `save` writes typed, named fields through a
//! [`FieldWriter`], which at the same time records them for the vmdesc;
//! `load` reads them back through a [`FieldReader`], gating fields on the
//! version that added them ([`FieldReader::since`]) and reading
//! subsections ([`FieldReader::subsection`]). The reader enforces QEMU's
//! rules: too-new and too-old versions, subsection peeking by name prefix,
//! unknown subsections as errors, missing ones left at their default,
//! `post_load` after the subsections.
//!
//! A component implements [`Persist`] (capture a `State`, restore one) and
//! is registered in a [`Registry`] under an (idstr, instance id); see
//! [`Registry`] for ordering, ids and presence rules:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use cpr_savevm::*;
//!
//! #[derive(Debug, Clone, Default, PartialEq)]
//! struct SerialState { ier: u8, lcr: u8, scratch: u8 }
//!
//! impl VmState for SerialState {
//!     const NAME: &'static str = "serial";
//!     const VERSION_ID: u32 = 1;
//!     const MINIMUM_VERSION_ID: u32 = 1;
//!     fn needed(&self) -> bool { true }
//!     fn pre_save(&mut self) -> Result<()> { Ok(()) }
//!     fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
//!         w.u8("ier", self.ier);
//!         w.u8("lcr", self.lcr);
//!         w.u8("scr", self.scratch);
//!         Ok(())
//!     }
//!     fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
//!         Ok(SerialState { ier: r.u8("ier")?, lcr: r.u8("lcr")?, scratch: r.u8("scr")? })
//!     }
//!     fn post_load(&mut self, _v: u32) -> Result<()> { Ok(()) }
//! }
//!
//! /// The device, shared with the VMM's event loop.
//! struct Serial { regs: SerialState }
//!
//! impl Persist for Serial {
//!     type State = SerialState;
//!     fn save_state(&mut self) -> std::result::Result<SerialState, BoxError> {
//!         Ok(self.regs.clone())
//!     }
//!     fn restore_state(&mut self, s: SerialState) -> std::result::Result<(), BoxError> {
//!         self.regs = s;
//!         Ok(())
//!     }
//! }
//!
//! let serial = Arc::new(Mutex::new(Serial { regs: SerialState { ier: 1, lcr: 3, scratch: 9 } }));
//! let mut registry = Registry::new();
//! registry.register_persist(
//!     Registration::new("serial", InstanceId::Any, OnLoad::Required),
//!     Arc::clone(&serial),
//! )?;
//!
//! let mut f = cpr_migration_file::QemuFile::memory_writer("cpr-save");
//! save_device_state(&mut f, &mut registry)?;
//! let bytes = f.into_bytes().expect("memory file");
//!
//! serial.lock().unwrap().regs = SerialState::default();
//! let mut f = cpr_migration_file::QemuFile::from_bytes(bytes, "cpr-load");
//! let loaded = load_device_state(&mut f, &registry)?;   // parse + check all
//! loaded.apply(&mut registry)?;                           // then commit
//! assert_eq!(serial.lock().unwrap().regs.scratch, 9);
//! # Ok::<(), cpr_savevm::Error>(())
//! ```
//!
//! A state that is a plain value rather than a live component (a machine
//! captured for a checkpoint, or one a loader builds from a checkpoint)
//! registers as a [`ValueSection`]: it saves the value it holds, and
//! [`LoadedState::take`] hands the parsed values out, typed, instead of
//! applying them:
//!
//! ```
//! # use cpr_savevm::*;
//! # #[derive(Debug, Clone, Default, PartialEq)]
//! # struct SerialState { scratch: u8 }
//! # impl VmState for SerialState {
//! #     const NAME: &'static str = "serial";
//! #     const VERSION_ID: u32 = 1;
//! #     const MINIMUM_VERSION_ID: u32 = 1;
//! #     fn needed(&self) -> bool { true }
//! #     fn pre_save(&mut self) -> Result<()> { Ok(()) }
//! #     fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> { w.u8("scr", self.scratch); Ok(()) }
//! #     fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> { Ok(SerialState { scratch: r.u8("scr")? }) }
//! #     fn post_load(&mut self, _v: u32) -> Result<()> { Ok(()) }
//! # }
//! let serial = |value: Option<SerialState>| -> Result<Registry> {
//!     let mut r = Registry::new();
//!     r.register(
//!         Registration::new("serial", InstanceId::Id(0), OnLoad::Required),
//!         Box::new(value.map_or_else(ValueSection::empty, ValueSection::new)),
//!     )?;
//!     Ok(r)
//! };
//! let mut f = cpr_migration_file::QemuFile::memory_writer("cpr-save");
//! save_device_state(&mut f, &mut serial(Some(SerialState { scratch: 9 }))?)?;
//! let bytes = f.into_bytes().expect("memory file");
//!
//! let mut f = cpr_migration_file::QemuFile::from_bytes(bytes, "cpr-load");
//! let mut loaded = load_device_state(&mut f, &serial(None)?)?;
//! assert_eq!(loaded.take::<SerialState>("serial", 0)?.scratch, 9);
//! # Ok::<(), cpr_savevm::Error>(())
//! ```
//!
//! # Where this crate deliberately does better than QEMU
//!
//! * **Parse everything, then apply.** QEMU loads each section into the
//!   live device as it reads it, so a bad byte in section 7 leaves
//!   sections 1–6 restored. [`load_device_state`] parses and checks the
//!   whole stream — framing, versions, every section known and present
//!   when required, footers, EOF, vmdesc, checksum, end of file — into a
//!   [`LoadedState`] without touching any handler; only
//!   [`LoadedState::apply`] commits. Handlers split `parse` (no side
//!   effects) from `apply` accordingly, and `post_load` runs at parse time.
//!   Rules that span sections go in the registry's
//!   [`stream check`](Registry::set_stream_check), run on the whole parsed
//!   stream before guest RAM is written or anything applied.
//! * **Checksum trailer.** A CRC-32 over the whole stream catches any
//!   corruption the framing would not; a missing trailer, a bad CRC or
//!   bytes after the trailer are refused. It is written as hex digits:
//!   `analyze-migration.py` finds the vmdesc by the file's last NUL byte,
//!   which a binary CRC would hold once in about 65 saves.
//! * **vmdesc after EOF**, although V7's `cpr-save` writes none, so that
//!   QEMU's `scripts/analyze-migration.py` can describe the file (`-d
//!   state`) and extract its RAM (`-x`). It is compact JSON recorded as
//!   `vmstate_save_state` records it (an array of two or more elements once,
//!   with `array_len`; of one element as a plain field; an empty one not at
//!   all), padded with spaces when its length would hold a `{` byte (see
//!   [`vmdesc`]). The [`FieldReader`] records the fields it reads as the
//!   [`FieldWriter`] records those it writes, and the loader refuses a
//!   vmdesc that is not, byte for byte, the one the saver writes for the
//!   sections read (QEMU skips the vmdesc on load).
//! * **Required hooks.** Every [`VmState`] and [`SectionHandler`] hook
//!   that touches state is a required method, and each registry entry
//!   states whether it must be present on load ([`OnLoad`]).
//! * Stricter input: `bool` bytes other than 0/1, over-long arrays,
//!   duplicate sections and section types that a device-state stream never
//!   holds (START/PART/END/COMMAND/CONFIGURATION) are errors.
//! * **Guest RAM with bounded memory, loaded in two passes.**
//!   [`save_state`] streams RAM in batches of [`consts::RAM_SAVE_BATCH`]
//!   bytes, each page read straight into its place in the batch and the
//!   batch hashed there, while a second thread writes the previous batch
//!   (QEMU's migration thread reads and writes in turn, through its 32 KiB
//!   buffer; the stream's bytes are the same). A zero page it reads
//!   is one ZERO record, as in QEMU, but pages the VMM knows were never
//!   populated are not written at all, so a sparse 16 GiB guest costs a few
//!   bytes; the loader zeroes what no record covers. [`load_state`] first
//!   checks the whole file — configuration, block list against the local
//!   blocks, every record in range and in order, device sections, vmdesc,
//!   checksum — skipping page data, and only then re-reads it to write
//!   guest RAM: a corrupt file (or one for the wrong machine) never
//!   half-overwrites a shared RAM file.
//! * **Copy mode at memory speed.** Where the input is read in place
//!   ([`QemuFile::from_shared_input`](cpr_migration_file::QemuFile::from_shared_input):
//!   a stream in memory, or a file mapped under a read lease), both passes
//!   read the same bytes with no copy out of the page cache, a large input is
//!   hashed once, in two halves on two threads, before it is parsed, and
//!   pass 2 is not hashed again; an input that reports a change (a mapped file
//!   truncated or opened for writing) is [`Error::InputChanged`] after either
//!   pass. Before pass 2, the VMM is told which ranges will be written
//!   ([`RamBlocks::will_write`]) so it can allocate them on another thread
//!   while the pages are copied. QEMU reads a file stream through a 32 KiB
//!   buffer, copying every page twice.
//! * **Which blocks stay in place.** QEMU's block list does not say (each
//!   side decides from its own blocks and capability); the vmdesc's `"ram"`
//!   entry does, and a destination that disagrees about a block refuses the
//!   stream, instead of silently loading a block it expected to share or
//!   keeping stale memory it expected to receive. The capability itself is
//!   checked as QEMU checks it, from the configuration section.
//!
//! # Compatibility with QEMU
//!
//! Every stream this crate writes is one QEMU's own
//! `scripts/analyze-migration.py` (QEMU 10) reads to the end: `-d state`
//! lists every section, `-x` extracts RAM identical to the guest's (the
//! e2e scenario `QEMU's analyze-migration.py` runs it on each kind of
//! stream `cpr-vm` writes). Without RAM, the bytes up to EOF are exactly
//! what QEMU frames, and the vmdesc is QEMU's record. With RAM, the
//! configuration and `ram` sections are written as QEMU 10 writes them;
//! the vmdesc gains a top-level `"ram"` entry (not a device, so that
//! `analyze-migration.py` keeps decoding `ram` by name).
//!
//! What changed to get there (files written by earlier versions of this
//! crate are refused): the trailer's CRC was 4 binary bytes (the script
//! took a NUL among them for the vmdesc's start); the vmdesc described an
//! empty array as an entry with `array_len` 0 (the script read one element,
//! then the footer for the next field); a stream with RAM had no
//! configuration section (`Configuration section missing`), a byte after
//! each block's length saying whether it stays in place (QEMU stopped
//! writing one in 2019), and zero pages as runs with a be64 page count
//! (QEMU writes one record and a fill byte per page).
//!
//! QEMU's own loader still refuses our files, as it should: they are not
//! the state of a QEMU machine. `qemu_loadvm_state` stops at the
//! configuration section (`Machine type received is 'cpr-vm' ...`), and
//! past that, or on a device-state file (V7's `qemu_load_device_state`,
//! which reads sections up to EOF), at the first of our device names
//! QEMU has no handler for: `cpr-machine`, then our KVM sections (`cpu`
//! holds KVM's registers, not QEMU's `X86CPU` fields) — `Unknown savevm
//! section or instance 'cpr-machine' 0`. Neither loader looks at the
//! vmdesc or the trailer. The other way round, QEMU-written files (no
//! vmdesc on device-state files, no trailer) are refused by this loader, as
//! is anything it cannot fully verify.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod channel;
mod config;
pub mod consts;
mod error;
mod handler;
mod probe;
pub mod ram;
mod registry;
mod stream;
pub mod vmdesc;
mod vmstate;

pub use channel::{CHANNEL_CPR_LOAD, CHANNEL_CPR_SAVE, CHANNEL_XEN_LOAD, CHANNEL_XEN_SAVE};
pub use error::{BoxError, Error, Result};
pub use handler::{
    Persist, PersistHandler, Saved, SectionHandler, SharedState, Staged, ValueSection,
};
pub use probe::{StreamKind, StreamRamLayout, probe, ram_blocks};
pub use ram::{RamBlockDesc, RamBlocks, RamSummary, load_state};
pub use registry::{InstanceId, OnLoad, Registration, Registry, SectionInfo, StreamCheck};
pub use stream::{
    FullHeader, LoadStats, LoadedSection, LoadedState, SaveStats, check_section_footer,
    load_device_state, load_device_state_as, read_full_header, read_stream_header,
    save_device_state, save_state, write_full_header, write_part_header, write_section_footer,
    write_stream_header,
};
pub use vmstate::{FieldReader, FieldWriter, Scalar, VmState, decode_vmstate, encode_vmstate};
