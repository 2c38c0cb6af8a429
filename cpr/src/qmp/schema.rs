//! The command schema (data, not code) and argument validation with QEMU's
//! QObject-input-visitor messages.
//!
//! Each [`CommandDef`] lists its argument [`Member`]s; validation walks the
//! members in schema order like QEMU's generated marshallers: a missing
//! mandatory member, then a wrongly typed one, is reported at the first
//! offending member; members the schema does not know are reported after all
//! known members passed. Messages (qapi/qobject-input-visitor.c,
//! qapi/qapi-visit-core.c):
//!
//! * `Parameter '%s' is missing`
//! * `Parameter '%s' is unexpected`
//! * `Invalid parameter type for '%s', expected: %s` with `string`,
//!   `integer`, `boolean`, `number`, `object` or `array`
//! * `Parameter '%s' does not accept value '%s'` (bad enum value; as in
//!   QEMU the name is the member's own name, or `null` for a list element)
//!
//! Names are QEMU's "full names": `capabilities[0].capability`.
//!
//! The VMM's commands come from [`CommandName::ALL`] (the one list of commands, in
//! `vmm/api.rs`), each with the members [`vmm_args`] gives it: an exhaustive `match`, so a
//! command without a schema entry does not build. The server's own commands are
//! [`ServerCommand`]s. A [`Schema`] can hide commands ([`Schema::remove`]) or change their
//! members ([`Schema::add`]); every command it holds is one of those two kinds.

use super::error::QmpError;
use crate::vmm::{CommandName, CprMode, MigMode, MigrationCapability};
use serde_json::{Map, Value};

/// A QAPI enum: its name and allowed values.
#[derive(Debug)]
pub struct EnumType {
    /// QAPI type name (for documentation).
    pub name: &'static str,
    /// Allowed values, in QAPI order.
    pub values: &'static [&'static str],
}

impl EnumType {
    /// Whether `value` is one of the allowed values.
    pub fn contains(&self, value: &str) -> bool {
        self.values.contains(&value)
    }
}

/// Type of an argument.
#[derive(Debug, Clone, Copy)]
pub enum ArgType {
    /// `str`.
    Str,
    /// `int` (any JSON integer representable as i64).
    Int,
    /// `bool`.
    Bool,
    /// `number` (any JSON number).
    Number,
    /// `any`: not checked.
    Any,
    /// Any JSON object, members not checked.
    Dict,
    /// An enum (a string from a fixed set).
    Enum(&'static EnumType),
    /// A list whose elements all have the given type.
    List(&'static ArgType),
    /// A struct with the given members.
    Object(&'static [Member]),
}

/// One argument (struct member).
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// Name on the wire.
    pub name: &'static str,
    /// Type.
    pub ty: ArgType,
    /// Optional (`'*name'` in QAPI).
    pub optional: bool,
}

/// A mandatory member.
pub(crate) const fn req(name: &'static str, ty: ArgType) -> Member {
    Member {
        name,
        ty,
        optional: false,
    }
}

/// An optional member.
pub(crate) const fn opt(name: &'static str, ty: ArgType) -> Member {
    Member {
        name,
        ty,
        optional: true,
    }
}

/// A command the QMP server answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCommand {
    /// `qmp_capabilities`.
    QmpCapabilities,
    /// `query-version`.
    QueryVersion,
    /// `query-commands`.
    QueryCommands,
    /// `human-monitor-command` (its HMP commands go to the VMM as [`Command`]s).
    ///
    /// [`Command`]: crate::vmm::Command
    HumanMonitorCommand,
}

/// Who answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// The QMP server itself.
    Server(ServerCommand),
    /// The VMM: parsed into a [`Command`](crate::vmm::Command) and forwarded as a
    /// [`QmpRequest`](super::QmpRequest).
    Vmm(CommandName),
}

/// A command: name, arguments, handler.
#[derive(Debug, Clone, Copy)]
pub struct CommandDef {
    /// Command name (`execute` value).
    pub name: &'static str,
    /// Arguments, in schema order.
    pub args: &'static [Member],
    /// Who answers it.
    pub handler: Handler,
}

impl CommandDef {
    /// A VMM command with its built-in members.
    pub const fn vmm(name: CommandName) -> CommandDef {
        CommandDef {
            name: name.as_str(),
            args: vmm_args(name),
            handler: Handler::Vmm(name),
        }
    }

    const fn server(
        name: &'static str,
        args: &'static [Member],
        command: ServerCommand,
    ) -> CommandDef {
        CommandDef {
            name,
            args,
            handler: Handler::Server(command),
        }
    }
}

/// `QMPCapability` (qapi/control.json).
pub(crate) static QMP_CAPABILITY: EnumType = EnumType {
    name: "QMPCapability",
    values: &["oob"],
};

/// `CprMode` as of V7 patch 06.
pub(crate) static CPR_MODE: EnumType = EnumType {
    name: "CprMode",
    values: CprMode::NAMES,
};

/// `MigMode` (mainline 8.2 `cpr-reboot`, 10.0 `cpr-transfer`, 10.2 `cpr-exec`).
pub(crate) static MIG_MODE: EnumType = EnumType {
    name: "MigMode",
    values: MigMode::NAMES,
};

/// `MigrationCapability` (mainline, about 9.x).
pub(crate) static MIGRATION_CAPABILITY: EnumType = EnumType {
    name: "MigrationCapability",
    values: MigrationCapability::NAMES,
};

/// Kinds of `x-guest-fault` (test only; not a QEMU type).
pub(crate) static GUEST_FAULT_KIND: EnumType = EnumType {
    name: "XGuestFaultKind",
    values: &["triple-fault", "panic"],
};

static CAPABILITY_STATUS: [Member; 2] = [
    req("capability", ArgType::Enum(&MIGRATION_CAPABILITY)),
    req("state", ArgType::Bool),
];

static NONE: [Member; 0] = [];

static QMP_CAPABILITIES_ARGS: [Member; 1] = [opt(
    "enable",
    ArgType::List(&ArgType::Enum(&QMP_CAPABILITY)),
)];

static CPR_SAVE_ARGS: [Member; 2] = [
    req("filename", ArgType::Str),
    req("mode", ArgType::Enum(&CPR_MODE)),
];

static CPR_LOAD_ARGS: [Member; 1] = [req("filename", ArgType::Str)];

static GUEST_FAULT_ARGS: [Member; 1] = [req("kind", ArgType::Enum(&GUEST_FAULT_KIND))];

static HMP_ARGS: [Member; 2] = [
    req("command-line", ArgType::Str),
    opt("cpu-index", ArgType::Int),
];

static SET_CAPS_ARGS: [Member; 1] = [req(
    "capabilities",
    ArgType::List(&ArgType::Object(&CAPABILITY_STATUS)),
)];

/// `MigrateSetParameters` (subset; integer widths not checked).
static SET_PARAMS_ARGS: [Member; 20] = [
    opt("announce-initial", ArgType::Int),
    opt("announce-max", ArgType::Int),
    opt("announce-rounds", ArgType::Int),
    opt("announce-step", ArgType::Int),
    opt("throttle-trigger-threshold", ArgType::Int),
    opt("cpu-throttle-initial", ArgType::Int),
    opt("cpu-throttle-increment", ArgType::Int),
    opt("cpu-throttle-tailslow", ArgType::Bool),
    opt("max-bandwidth", ArgType::Int),
    opt("avail-switchover-bandwidth", ArgType::Int),
    opt("downtime-limit", ArgType::Int),
    opt("x-checkpoint-delay", ArgType::Int),
    opt("multifd-channels", ArgType::Int),
    opt("xbzrle-cache-size", ArgType::Int),
    opt("max-postcopy-bandwidth", ArgType::Int),
    opt("max-cpu-throttle", ArgType::Int),
    opt("mode", ArgType::Enum(&MIG_MODE)),
    opt("direct-io", ArgType::Bool),
    opt("x-vcpu-dirty-limit-period", ArgType::Int),
    opt("cpr-exec-command", ArgType::List(&ArgType::Str)),
];

static MIGRATE_ARGS: [Member; 4] = [
    opt("uri", ArgType::Str),
    opt("channels", ArgType::List(&ArgType::Dict)),
    opt("detach", ArgType::Bool),
    opt("resume", ArgType::Bool),
];

static MIGRATE_INCOMING_ARGS: [Member; 3] = [
    opt("uri", ArgType::Str),
    opt("channels", ArgType::List(&ArgType::Dict)),
    opt("exit-on-error", ArgType::Bool),
];

/// The server's own commands, first in `query-commands`.
static SERVER_COMMANDS: [CommandDef; 4] = [
    CommandDef::server(
        "qmp_capabilities",
        &QMP_CAPABILITIES_ARGS,
        ServerCommand::QmpCapabilities,
    ),
    CommandDef::server("query-version", &NONE, ServerCommand::QueryVersion),
    CommandDef::server("query-commands", &NONE, ServerCommand::QueryCommands),
    CommandDef::server(
        "human-monitor-command",
        &HMP_ARGS,
        ServerCommand::HumanMonitorCommand,
    ),
];

/// The members of a VMM command.
pub(crate) const fn vmm_args(name: CommandName) -> &'static [Member] {
    match name {
        CommandName::QueryStatus
        | CommandName::Stop
        | CommandName::Cont
        | CommandName::SystemWakeup
        | CommandName::Quit
        | CommandName::QueryMigrate
        | CommandName::GuestSuspendRam
        | CommandName::QueryGuestProgress
        | CommandName::QueryRamPersistence
        | CommandName::QueryMigrateCapabilities
        | CommandName::QueryMigrateParameters => &NONE,
        CommandName::CprSave => &CPR_SAVE_ARGS,
        CommandName::CprLoad => &CPR_LOAD_ARGS,
        // Test only, as QEMU's `x-` prefix says: the built-in guest fails on request
        // (`triple-fault`: an empty IDT and an exception; `panic`: a fatal kernel exception).
        CommandName::GuestFault => &GUEST_FAULT_ARGS,
        CommandName::MigrateSetCapabilities => &SET_CAPS_ARGS,
        CommandName::MigrateSetParameters => &SET_PARAMS_ARGS,
        CommandName::Migrate => &MIGRATE_ARGS,
        CommandName::MigrateIncoming => &MIGRATE_INCOMING_ARGS,
    }
}

/// The built-in command table: the server's commands, then every VMM command
/// ([`CommandName::ALL`]).
pub(crate) fn builtin_commands() -> Vec<CommandDef> {
    SERVER_COMMANDS
        .iter()
        .copied()
        .chain(CommandName::ALL.iter().map(|&n| CommandDef::vmm(n)))
        .collect()
}

/// A command table.
#[derive(Debug, Clone)]
pub struct Schema {
    commands: Vec<CommandDef>,
}

impl Default for Schema {
    fn default() -> Self {
        Schema::builtin()
    }
}

impl Schema {
    /// The built-in table (`builtin_commands`).
    pub fn builtin() -> Schema {
        Schema {
            commands: builtin_commands(),
        }
    }

    /// Adds a command, replacing one of the same name.
    pub fn add(&mut self, def: CommandDef) -> &mut Schema {
        match self.commands.iter_mut().find(|c| c.name == def.name) {
            Some(slot) => *slot = def,
            None => self.commands.push(def),
        }
        self
    }

    /// Removes a command; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.commands.len();
        self.commands.retain(|c| c.name != name);
        before != self.commands.len()
    }

    /// Looks a command up.
    pub fn get(&self, name: &str) -> Option<&CommandDef> {
        self.commands.iter().find(|c| c.name == name)
    }

    /// All commands, in table order.
    pub fn commands(&self) -> &[CommandDef] {
        &self.commands
    }
}

/// Validates `args` against a command's members (no side effects).
pub(crate) fn validate(def: &CommandDef, args: &Map<String, Value>) -> Result<(), QmpError> {
    check_members(def.args, args, "")
}

fn full_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn type_error(full: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{full}', expected: {expected}"
    ))
}

fn check_members(
    members: &[Member],
    obj: &Map<String, Value>,
    prefix: &str,
) -> Result<(), QmpError> {
    for m in members {
        let full = full_name(prefix, m.name);
        match obj.get(m.name) {
            None if m.optional => {}
            None => {
                return Err(QmpError::generic(format!("Parameter '{full}' is missing")));
            }
            Some(v) => check_value(&m.ty, v, &full, Some(m.name))?,
        }
    }
    if let Some(extra) = obj
        .keys()
        .find(|k| !members.iter().any(|m| m.name == k.as_str()))
    {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            full_name(prefix, extra)
        )));
    }
    Ok(())
}

fn check_value(ty: &ArgType, v: &Value, full: &str, name: Option<&str>) -> Result<(), QmpError> {
    match ty {
        ArgType::Str if !v.is_string() => Err(type_error(full, "string")),
        ArgType::Int if v.as_i64().is_none() => Err(type_error(full, "integer")),
        ArgType::Bool if !v.is_boolean() => Err(type_error(full, "boolean")),
        ArgType::Number if !v.is_number() => Err(type_error(full, "number")),
        ArgType::Dict if !v.is_object() => Err(type_error(full, "object")),
        ArgType::Enum(e) => match v.as_str() {
            None => Err(type_error(full, "string")),
            Some(s) if !e.contains(s) => Err(QmpError::generic(format!(
                "Parameter '{}' does not accept value '{s}'",
                name.unwrap_or("null")
            ))),
            Some(_) => Ok(()),
        },
        ArgType::List(elem) => {
            let Some(items) = v.as_array() else {
                return Err(type_error(full, "array"));
            };
            for (i, item) in items.iter().enumerate() {
                check_value(elem, item, &format!("{full}[{i}]"), None)?;
            }
            Ok(())
        }
        ArgType::Object(members) => match v.as_object() {
            None => Err(type_error(full, "object")),
            Some(obj) => check_members(members, obj, full),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(cmd: &str, args: Value) -> Result<(), String> {
        let schema = Schema::builtin();
        let def = schema.get(cmd).expect("command in schema");
        validate(def, args.as_object().unwrap()).map_err(|e| e.desc)
    }

    #[test]
    fn cpr_save_arguments() {
        assert_eq!(
            check("cpr-save", json!({"filename": "f", "mode": "reboot"})),
            Ok(())
        );
        assert_eq!(
            check("cpr-save", json!({})),
            Err("Parameter 'filename' is missing".into())
        );
        assert_eq!(
            check("cpr-save", json!({"filename": "f"})),
            Err("Parameter 'mode' is missing".into())
        );
        assert_eq!(
            check("cpr-save", json!({"filename": 3, "mode": "reboot"})),
            Err("Invalid parameter type for 'filename', expected: string".into())
        );
        assert_eq!(
            check("cpr-save", json!({"filename": "f", "mode": "restart"})),
            Err("Parameter 'mode' does not accept value 'restart'".into())
        );
        assert_eq!(
            check("cpr-save", json!({"filename": "f", "mode": 1})),
            Err("Invalid parameter type for 'mode', expected: string".into())
        );
        assert_eq!(
            check(
                "cpr-save",
                json!({"filename": "f", "mode": "reboot", "x": 1})
            ),
            Err("Parameter 'x' is unexpected".into())
        );
        assert_eq!(
            check("stop", json!({"x": 1})),
            Err("Parameter 'x' is unexpected".into())
        );
    }

    #[test]
    fn scalar_types() {
        assert_eq!(
            check(
                "human-monitor-command",
                json!({"command-line": "x", "cpu-index": 1.5})
            ),
            Err("Invalid parameter type for 'cpu-index', expected: integer".into())
        );
        assert_eq!(
            check(
                "human-monitor-command",
                json!({"command-line": "x", "cpu-index": u64::MAX})
            ),
            Err("Invalid parameter type for 'cpu-index', expected: integer".into())
        );
        assert_eq!(
            check(
                "human-monitor-command",
                json!({"command-line": "x", "cpu-index": -1})
            ),
            Ok(())
        );
        assert_eq!(
            check("migrate", json!({"detach": "yes"})),
            Err("Invalid parameter type for 'detach', expected: boolean".into())
        );
        assert_eq!(
            check("migrate", json!({"channels": {}})),
            Err("Invalid parameter type for 'channels', expected: array".into())
        );
        assert_eq!(
            check("migrate", json!({"channels": [1]})),
            Err("Invalid parameter type for 'channels[0]', expected: object".into())
        );
        // Optional members present as null are type errors, as in QEMU.
        assert_eq!(
            check("migrate", json!({"uri": null})),
            Err("Invalid parameter type for 'uri', expected: string".into())
        );
    }

    #[test]
    fn nested_names() {
        let ok = json!({"capabilities": [{"capability": "events", "state": true}]});
        assert_eq!(check("migrate-set-capabilities", ok), Ok(()));
        assert_eq!(
            check(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "events", "state": true}, {"state": true}]})
            ),
            Err("Parameter 'capabilities[1].capability' is missing".into())
        );
        assert_eq!(
            check(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "nope", "state": true}]})
            ),
            Err("Parameter 'capability' does not accept value 'nope'".into())
        );
        assert_eq!(
            check(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "events", "state": 1}]})
            ),
            Err("Invalid parameter type for 'capabilities[0].state', expected: boolean".into())
        );
        assert_eq!(
            check(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "events", "state": true, "z": 0}]})
            ),
            Err("Parameter 'capabilities[0].z' is unexpected".into())
        );
        assert_eq!(
            check("qmp_capabilities", json!({"enable": ["foo"]})),
            Err("Parameter 'null' does not accept value 'foo'".into())
        );
        assert_eq!(
            check("migrate-set-parameters", json!({"mode": "cpr-reboot"})),
            Ok(())
        );
        assert_eq!(
            check("migrate-set-parameters", json!({"mode": "cpr-luo"})),
            Err("Parameter 'mode' does not accept value 'cpr-luo'".into())
        );
    }

    #[test]
    fn schema_can_hide_and_change_commands() {
        static ARGS: [Member; 1] = [req("name", ArgType::Str)];
        let mut s = Schema::builtin();
        assert!(s.remove("x-guest-fault"));
        assert!(!s.remove("x-guest-fault"));
        assert!(s.get("x-guest-fault").is_none());
        s.add(CommandDef {
            args: &ARGS,
            ..CommandDef::vmm(CommandName::Stop)
        });
        let def = s.get("stop").unwrap();
        assert_eq!(def.handler, Handler::Vmm(CommandName::Stop));
        assert!(validate(def, &Map::new()).is_err());
        // Names are unique.
        let all = builtin_commands();
        let mut names: Vec<_> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
