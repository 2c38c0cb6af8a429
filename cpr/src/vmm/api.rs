//! The VMM's typed command interface: what the monitor asks ([`Command`]), what the VMM
//! answers ([`Response`]) and what it reports on its own ([`Event`]).
//!
//! Nothing here is JSON. The `qmp` layer parses each request once into a [`Command`]
//! (checking the arguments with QEMU's messages), hands it to [`Vmm::command`], and
//! serializes the [`Response`]; HMP builds [`Command`]s from its own syntax. A test (or
//! another front end) can drive the real VMM in-process with the same values.
//!
//! The list of commands is written once, in the `commands!` invocation below: it defines
//! [`Command`] and [`CommandName`] together, the QMP schema takes its VMM commands from
//! [`CommandName::ALL`] (an exhaustive `match` gives each its arguments), the QMP parser
//! matches [`CommandName`] exhaustively, and [`Vmm::command`] matches [`Command`]
//! exhaustively: a command without a schema entry, a parser or a handler does not build.
//!
//! [`Vmm::command`]: super::Vmm::command

use std::path::PathBuf;

use super::query_migrate::{MigrationInfo, MigrationStatus};
use cpr_runstate::StatusInfo;

use super::CprMode;
use super::mig_params::{MigrationParameters, SetParameters};
use super::migration::FileTarget;
use crate::machine::GuestFault;
use crate::machine::GuestProgress;

/// Defines [`Command`] (with arguments) and [`CommandName`] (without) from one list of
/// `"wire-name" => Variant(ArgumentType)`.
macro_rules! commands {
    ($( $(#[$doc:meta])* $wire:literal => $variant:ident $(($args:ty))? ,)*) => {
        /// A command for the VMM, its arguments parsed and typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Command {
            $( $(#[$doc])* $variant $(($args))? ,)*
        }

        /// The name of a [`Command`] (QMP's `execute` value), without arguments.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CommandName {
            $( $(#[$doc])* $variant ,)*
        }

        impl CommandName {
            /// Every command the VMM executes, in `query-commands` order.
            pub const ALL: &'static [CommandName] = &[$(CommandName::$variant,)*];

            /// The QMP name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(CommandName::$variant => $wire,)*
                }
            }

            /// The command named `name` on the wire, if the VMM has one.
            pub fn from_wire(name: &str) -> Option<CommandName> {
                match name {
                    $($wire => Some(CommandName::$variant),)*
                    _ => None,
                }
            }
        }

        impl Command {
            /// The command's name.
            pub fn name(&self) -> CommandName {
                match self {
                    $(Command::$variant { .. } => CommandName::$variant,)*
                }
            }
        }
    };
}

commands! {
    /// `query-status`.
    "query-status" => QueryStatus,
    /// `stop`.
    "stop" => Stop,
    /// `cont`.
    "cont" => Cont,
    /// `system_wakeup`.
    "system_wakeup" => SystemWakeup,
    /// `quit`: answered once the monitor's socket is gone ([`Vmm::finish_quit`](super::Vmm::finish_quit)).
    "quit" => Quit,
    /// `cpr-save` (V7 patch 6).
    "cpr-save" => CprSave(CprSaveArgs),
    /// `cpr-load` (V7 patch 6).
    "cpr-load" => CprLoad(CprLoadArgs),
    /// `query-migrate`.
    "query-migrate" => QueryMigrate,
    /// `guest-suspend-ram` (the built-in guest enters S3).
    "guest-suspend-ram" => GuestSuspendRam,
    /// `query-guest-progress` (ours: the built-in guest's progress report).
    "query-guest-progress" => QueryGuestProgress,
    /// `query-ram-persistence` (ours: how long each RAM block lives).
    "query-ram-persistence" => QueryRamPersistence,
    /// `x-guest-fault` (ours, test only: the built-in guest fails on request).
    "x-guest-fault" => GuestFault(GuestFault),
    /// `migrate-set-capabilities`.
    "migrate-set-capabilities" => MigrateSetCapabilities(Vec<CapabilityStatus>),
    /// `migrate-set-parameters`.
    "migrate-set-parameters" => MigrateSetParameters(Box<SetParameters>),
    /// `query-migrate-capabilities`.
    "query-migrate-capabilities" => QueryMigrateCapabilities,
    /// `query-migrate-parameters`.
    "query-migrate-parameters" => QueryMigrateParameters,
    /// `migrate`.
    "migrate" => Migrate(MigrateArgs),
    /// `migrate-incoming`.
    "migrate-incoming" => MigrateIncoming(MigrateIncomingArgs),
}

/// `cpr-save` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CprSaveArgs {
    /// The checkpoint file.
    pub filename: PathBuf,
    /// The mode.
    pub mode: CprMode,
}

/// `cpr-load` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CprLoadArgs {
    /// The checkpoint file.
    pub filename: PathBuf,
}

/// Where `migrate`/`migrate-incoming` write or read: the `uri` or `channels` argument,
/// parsed. A bad one is kept as its error, which the VMM reports at the step where QEMU
/// looks at the target (after the run-state checks).
pub type MigrationTarget = Result<MigrationAddress, TargetError>;

/// A migration channel's address, as far as this VMM speaks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationAddress {
    /// `file:PATH[,offset=N]`, or `{"transport": "file", ...}`.
    File(FileTarget),
    /// `unix:PATH`, or `{"transport": "socket", "type": "unix", "path": ...}`: the main
    /// channel of `cpr-transfer`, or its `cpr` channel.
    Unix(PathBuf),
}

impl From<FileTarget> for MigrationAddress {
    fn from(f: FileTarget) -> Self {
        MigrationAddress::File(f)
    }
}

/// `migrate` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateArgs {
    /// `uri`, or the `main` entry of `channels`.
    pub target: MigrationTarget,
    /// The `cpr` entry of `channels` (cpr-transfer), if there is one.
    pub cpr: Option<MigrationTarget>,
    /// `detach` (ignored, as in QEMU).
    pub detach: Option<bool>,
    /// `resume`.
    pub resume: bool,
}

/// `migrate-incoming` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateIncomingArgs {
    /// `uri` or `channels`.
    pub target: MigrationTarget,
    /// `exit-on-error` (ignored).
    pub exit_on_error: Option<bool>,
}

/// Why a `uri` or `channels` argument names no file target (QEMU's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither or both of `uri` and `channels`.
    #[error("need either 'uri' or 'channels' argument")]
    NeedUriOrChannels,
    /// A URI that is not `file:PATH[,offset=N]`.
    #[error("unknown migration protocol: {0}")]
    UnknownProtocol(String),
    /// `file:PATH,offset=N` with a bad `N`.
    #[error("file URI has bad offset {0}")]
    BadOffset(String),
    /// Not exactly one channel, of type `main`.
    #[error("Channel list must have exactly one entry, of type 'main'")]
    ChannelList,
    /// `migrate`'s channels: no `main` entry.
    #[error("Channel list has no main entry")]
    NoMainChannel,
    /// `migrate`'s channels: two entries of one type.
    #[error("Channel list has more than one {0} entry")]
    DuplicateChannel(&'static str),
    /// An unknown `channel-type`.
    #[error("Parameter 'channel-type' does not accept value '{0}'")]
    ChannelType(String),
    /// A `migrate-incoming` `cpr` channel (QEMU: it is only given on the command line).
    #[error("cpr channel can only be specified on the command line (-incoming)")]
    CprChannelIncoming,
    /// A channel whose transport is not `file`.
    #[error("unknown migration protocol: {0} (only 'file' channels are supported)")]
    UnsupportedTransport(String),
    /// A channel member is missing.
    #[error("Parameter '{0}' is missing")]
    Missing(&'static str),
    /// A channel member has the wrong type.
    #[error("Invalid parameter type for '{name}', expected: {expected}")]
    Type {
        /// The member.
        name: &'static str,
        /// The QAPI type it needs.
        expected: &'static str,
    },
}

/// Defines an enum of QAPI enum values with their wire names.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $wire:literal ,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant ,)*
        }

        impl $name {
            /// Every value, in QAPI order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// Every wire name, in QAPI order.
            pub const NAMES: &'static [&'static str] = &[$($wire,)*];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }

            /// The value named `name` on the wire.
            pub fn from_wire(name: &str) -> Option<$name> {
                match name {
                    $($wire => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// `MigrationCapability` (mainline, about 9.x). Only `events`, `x-ignore-shared` and
    /// the CPR refusals (`postcopy-ram`, `background-snapshot`, `x-colo`) change anything
    /// here; the others are remembered and reported.
    MigrationCapability {
        /// `xbzrle`.
        Xbzrle = "xbzrle",
        /// `rdma-pin-all`.
        RdmaPinAll = "rdma-pin-all",
        /// `auto-converge`.
        AutoConverge = "auto-converge",
        /// `zero-blocks`.
        ZeroBlocks = "zero-blocks",
        /// `events`: MIGRATION events.
        Events = "events",
        /// `postcopy-ram`.
        PostcopyRam = "postcopy-ram",
        /// `x-colo`.
        XColo = "x-colo",
        /// `release-ram`.
        ReleaseRam = "release-ram",
        /// `return-path`.
        ReturnPath = "return-path",
        /// `pause-before-switchover`.
        PauseBeforeSwitchover = "pause-before-switchover",
        /// `multifd`.
        Multifd = "multifd",
        /// `dirty-bitmaps`.
        DirtyBitmaps = "dirty-bitmaps",
        /// `postcopy-blocktime`.
        PostcopyBlocktime = "postcopy-blocktime",
        /// `late-block-activate`.
        LateBlockActivate = "late-block-activate",
        /// `x-ignore-shared`: shared file-backed RAM stays in place.
        XIgnoreShared = "x-ignore-shared",
        /// `validate-uuid`.
        ValidateUuid = "validate-uuid",
        /// `background-snapshot`.
        BackgroundSnapshot = "background-snapshot",
        /// `zero-copy-send`.
        ZeroCopySend = "zero-copy-send",
        /// `postcopy-preempt`.
        PostcopyPreempt = "postcopy-preempt",
        /// `switchover-ack`.
        SwitchoverAck = "switchover-ack",
        /// `dirty-limit`.
        DirtyLimit = "dirty-limit",
        /// `mapped-ram`.
        MappedRam = "mapped-ram",
    }
}

/// One `MigrationCapabilityStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityStatus {
    /// The capability.
    pub capability: MigrationCapability,
    /// On or off.
    pub state: bool,
}

/// One RAM block's lifetime (`query-ram-persistence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamPersistenceInfo {
    /// The block's idstr.
    pub block: String,
    /// Its backing, as text.
    pub backing: String,
    /// Mapped shared.
    pub shared: bool,
    /// The persistence class (its Rust name).
    pub persistence: String,
    /// Whether the RAM survives this process.
    pub survives_process_restart: bool,
    /// Whether the RAM survives a host reboot.
    pub survives_host_reboot: bool,
    /// A sentence for the user.
    pub description: String,
}

/// What a [`Command`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Nothing (`{}`).
    Empty,
    /// `cpr-save`: what the user should be warned about (`{}` when nothing).
    Saved {
        /// The warnings.
        warnings: Vec<String>,
    },
    /// `query-status`.
    Status(StatusInfo),
    /// `query-migrate`.
    Migration(MigrationInfo),
    /// `query-guest-progress`.
    GuestProgress(GuestProgress),
    /// `query-ram-persistence`.
    RamPersistence(Vec<RamPersistenceInfo>),
    /// `query-migrate-capabilities`, every capability in QAPI order.
    MigrationCapabilities(Vec<CapabilityStatus>),
    /// `query-migrate-parameters`.
    MigrationParameters(MigrationParameters),
}

/// Something the VMM reports without being asked (a QMP event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `STOP`, `RESUME`, `SUSPEND`, `WAKEUP` from the run-state machine.
    RunState(cpr_runstate::Event),
    /// `SHUTDOWN`.
    Shutdown {
        /// The guest asked for it.
        guest: bool,
        /// QEMU's `ShutdownCause` name.
        reason: &'static str,
    },
    /// `GUEST_PANICKED` (action `pause`).
    GuestPanicked {
        /// vCPU index.
        vcpu: usize,
        /// Exception vector.
        vector: u64,
        /// Faulting RIP.
        rip: u64,
    },
    /// `MIGRATION`.
    Migration(MigrationStatus),
}
