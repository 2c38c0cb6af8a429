//! JSON to typed commands and back: where QMP's JSON stops.
//!
//! [`parse`] turns a request whose arguments passed [`validate`](super::schema::validate)
//! into a [`Command`] (paths, [`CprMode`], [`MigMode`], capabilities, parameters, targets,
//! all typed); [`response_value`] and [`event_data`] turn what the VMM answers and reports
//! into QEMU's JSON. The VMM below never sees a JSON value.
//!
//! Arguments the schema cannot check are checked here, with QEMU's messages:
//! `migrate-set-parameters`' integer widths (`Parameter 'cpu-throttle-initial' expects
//! uint8`; a negative `uint64`/`size` is taken modulo 2^64, as QEMU's input visitor does)
//! and the contents of `migrate`'s `channels`. A bad `uri`/`channels` is not an error
//! here: it travels in the command ([`MigrationTarget`]) and the VMM reports it where
//! QEMU looks at the target, after its run-state checks.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::error::QmpError;
use crate::machine::GuestFault;
use crate::vmm::{
    CapabilityStatus, Command, CommandName, CprLoadArgs, CprMode, CprSaveArgs, Event, FileTarget,
    MigMode, MigrateArgs, MigrateIncomingArgs, MigrationAddress, MigrationCapability,
    MigrationParameters, MigrationTarget, Response, SetParameters, TargetError,
};

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> &'a str {
    args.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn bool_arg(args: &Map<String, Value>, name: &str) -> Option<bool> {
    args.get(name).and_then(Value::as_bool)
}

fn bad_value(name: &str, value: &str) -> QmpError {
    QmpError::generic(format!(
        "Parameter '{name}' does not accept value '{value}'"
    ))
}

/// Parses the arguments of command `name`, already checked against the schema, into a
/// [`Command`].
pub(crate) fn parse(name: CommandName, args: &Map<String, Value>) -> Result<Command, QmpError> {
    Ok(match name {
        CommandName::QueryStatus => Command::QueryStatus,
        CommandName::Stop => Command::Stop,
        CommandName::Cont => Command::Cont,
        CommandName::SystemWakeup => Command::SystemWakeup,
        CommandName::Quit => Command::Quit,
        CommandName::CprSave => Command::CprSave(CprSaveArgs {
            filename: PathBuf::from(str_arg(args, "filename")),
            mode: str_arg(args, "mode")
                .parse::<CprMode>()
                .map_err(|e| QmpError::generic(e.to_string()))?,
        }),
        CommandName::CprLoad => Command::CprLoad(CprLoadArgs {
            filename: PathBuf::from(str_arg(args, "filename")),
        }),
        CommandName::QueryMigrate => Command::QueryMigrate,
        CommandName::GuestSuspendRam => Command::GuestSuspendRam,
        CommandName::QueryGuestProgress => Command::QueryGuestProgress,
        CommandName::QueryRamPersistence => Command::QueryRamPersistence,
        CommandName::GuestFault => Command::GuestFault(match str_arg(args, "kind") {
            "triple-fault" => GuestFault::TripleFault,
            "panic" => GuestFault::Panic,
            other => return Err(bad_value("kind", other)),
        }),
        CommandName::MigrateSetCapabilities => {
            let list = args.get("capabilities").and_then(Value::as_array);
            let mut caps = Vec::new();
            for c in list.into_iter().flatten() {
                let name = c
                    .get("capability")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let capability = MigrationCapability::from_wire(name)
                    .ok_or_else(|| bad_value("capability", name))?;
                let state = c.get("state").and_then(Value::as_bool).unwrap_or(false);
                caps.push(CapabilityStatus { capability, state });
            }
            Command::MigrateSetCapabilities(caps)
        }
        CommandName::MigrateSetParameters => {
            Command::MigrateSetParameters(Box::new(set_parameters(args)?))
        }
        CommandName::QueryMigrateCapabilities => Command::QueryMigrateCapabilities,
        CommandName::QueryMigrateParameters => Command::QueryMigrateParameters,
        CommandName::Migrate => {
            let (target, cpr) = target(args, true);
            Command::Migrate(MigrateArgs {
                target,
                cpr,
                detach: bool_arg(args, "detach"),
                resume: bool_arg(args, "resume") == Some(true),
            })
        }
        CommandName::MigrateIncoming => Command::MigrateIncoming(MigrateIncomingArgs {
            target: target(args, false).0,
            exit_on_error: bool_arg(args, "exit-on-error"),
        }),
    })
}

/// `MigrateSetParameters` as QEMU's input visitor reads it (members in the order the
/// object holds them).
fn set_parameters(args: &Map<String, Value>) -> Result<SetParameters, QmpError> {
    let mut set = SetParameters::default();
    for (name, v) in args {
        let r = match v {
            Value::String(mode) if name == "mode" => set.set_mode(mode),
            // The schema checked that it is a list of strings.
            Value::Array(items) if name == "cpr-exec-command" => {
                set.cpr_exec_command = Some(
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                );
                Ok(())
            }
            Value::Bool(on) => set.set_bool(name, *on),
            // QEMU takes a negative `uint64`/`size` modulo 2^64 (backward compatibility).
            v => match v.as_u64().or_else(|| v.as_i64().map(i64::cast_unsigned)) {
                Some(n) => set.set_uint(name, n),
                None => {
                    return Err(QmpError::generic(format!(
                        "Invalid parameter type for '{name}', expected: integer"
                    )));
                }
            },
        };
        r.map_err(|e| QmpError::generic(e.to_string()))?;
    }
    Ok(set)
}

/// A `uri` argument: `file:` or `unix:`.
fn uri_address(uri: &str) -> MigrationTarget {
    match uri.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(MigrationAddress::Unix(PathBuf::from(path))),
        _ => FileTarget::from_uri(uri).map(MigrationAddress::File),
    }
}

/// One channel's `addr` (QAPI `MigrationAddress`): `file`, or a UNIX `socket`.
fn channel_address(addr: &Value) -> MigrationTarget {
    match addr.get("transport").and_then(Value::as_str) {
        Some("file") => {}
        Some("socket") => {
            return match addr.get("type").and_then(Value::as_str) {
                Some("unix") => addr
                    .get("path")
                    .and_then(Value::as_str)
                    .map(|p| MigrationAddress::Unix(PathBuf::from(p)))
                    .ok_or(TargetError::Missing("path")),
                Some(other) => Err(TargetError::UnsupportedTransport(format!("socket {other}"))),
                None => Err(TargetError::Missing("type")),
            };
        }
        Some(other) => return Err(TargetError::UnsupportedTransport(other.to_string())),
        None => return Err(TargetError::Missing("transport")),
    }
    let path = addr
        .get("filename")
        .and_then(Value::as_str)
        .ok_or(TargetError::Missing("filename"))?;
    let offset = match addr.get("offset") {
        None => 0,
        Some(v) => v.as_u64().ok_or(TargetError::Type {
            name: "offset",
            expected: "integer",
        })?,
    };
    Ok(MigrationAddress::File(FileTarget {
        path: PathBuf::from(path),
        offset,
    }))
}

/// A `uri` or `channels` argument: the main channel's address, and the `cpr` channel's if
/// `channels` has one (`migrate` only: `cpr_allowed`).
pub(crate) fn target(
    args: &Map<String, Value>,
    cpr_allowed: bool,
) -> (MigrationTarget, Option<MigrationTarget>) {
    match (args.get("uri"), args.get("channels")) {
        (Some(_), Some(_)) | (None, None) => (Err(TargetError::NeedUriOrChannels), None),
        (Some(uri), None) => (uri_address(uri.as_str().unwrap_or_default()), None),
        (None, Some(channels)) => {
            let list = channels.as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() || (!cpr_allowed && list.len() != 1) {
                return (Err(TargetError::ChannelList), None);
            }
            let (mut main, mut cpr) = (None, None);
            for ch in list {
                let addr = ch.get("addr").unwrap_or(&Value::Null);
                let (slot, name) = match ch.get("channel-type").and_then(Value::as_str) {
                    Some("main") => (&mut main, "main"),
                    Some("cpr") if cpr_allowed => (&mut cpr, "cpr"),
                    Some("cpr") => return (Err(TargetError::CprChannelIncoming), None),
                    Some(other) if cpr_allowed => {
                        return (Err(TargetError::ChannelType(other.to_string())), None);
                    }
                    _ => return (Err(TargetError::ChannelList), None),
                };
                if slot.is_some() {
                    return (Err(TargetError::DuplicateChannel(name)), None);
                }
                *slot = Some(channel_address(addr));
            }
            match main {
                Some(main) => (main, cpr),
                None => (Err(TargetError::NoMainChannel), None),
            }
        }
    }
}

/// The `return` value of a response, as QEMU words it.
pub(crate) fn response_value(response: &Response) -> Result<Value, QmpError> {
    Ok(match response {
        Response::Empty => json!({}),
        Response::Saved { warnings } if warnings.is_empty() => json!({}),
        Response::Saved { warnings } => json!({ "warnings": warnings }),
        Response::Status(s) => {
            json!({"status": s.status.as_str(), "running": s.running, "singlestep": false})
        }
        Response::Migration(info) => {
            serde_json::to_value(info).map_err(|e| QmpError::generic(e.to_string()))?
        }
        Response::GuestProgress(p) => {
            let vcpus: Vec<Value> = p
                .per_vcpu
                .iter()
                .map(|v| {
                    json!({"progress": v.progress, "ticks": v.ticks, "errors": v.errors,
                           "generation": v.generation, "reports": v.reports})
                })
                .collect();
            let mut out = json!({"progress": p.progress, "ticks": p.ticks, "errors": p.errors,
                                 "reports": p.reports, "vcpus": vcpus});
            if let Some(f) = &p.fatal {
                out["fatal"] = json!({"vcpu": f.vcpu, "vector": f.vector, "rip": f.rip});
            }
            if let Some(r) = p.ram_progress {
                out["ram-progress"] = json!(r);
            }
            out
        }
        Response::RamPersistence(blocks) => Value::Array(
            blocks
                .iter()
                .map(|b| {
                    json!({
                        "block": b.block,
                        "backing": b.backing,
                        "shared": b.shared,
                        "persistence": b.persistence,
                        "survives-process-restart": b.survives_process_restart,
                        "survives-host-reboot": b.survives_host_reboot,
                        "description": b.description,
                    })
                })
                .collect(),
        ),
        Response::MigrationCapabilities(caps) => Value::Array(
            caps.iter()
                .map(|c| json!({"capability": c.capability.as_str(), "state": c.state}))
                .collect(),
        ),
        Response::MigrationParameters(p) => parameters_value(p),
    })
}

/// `query-migrate-parameters`.
fn parameters_value(p: &MigrationParameters) -> Value {
    json!({
        "announce-initial": p.announce_initial,
        "announce-max": p.announce_max,
        "announce-rounds": p.announce_rounds,
        "announce-step": p.announce_step,
        "throttle-trigger-threshold": p.throttle_trigger_threshold,
        "cpu-throttle-initial": p.cpu_throttle_initial,
        "cpu-throttle-increment": p.cpu_throttle_increment,
        "cpu-throttle-tailslow": p.cpu_throttle_tailslow,
        "max-bandwidth": p.max_bandwidth,
        "avail-switchover-bandwidth": p.avail_switchover_bandwidth,
        "downtime-limit": p.downtime_limit,
        "x-checkpoint-delay": p.x_checkpoint_delay,
        "multifd-channels": p.multifd_channels,
        "xbzrle-cache-size": p.xbzrle_cache_size,
        "max-postcopy-bandwidth": p.max_postcopy_bandwidth,
        "max-cpu-throttle": p.max_cpu_throttle,
        "mode": MigMode::as_str(p.mode),
        "direct-io": p.direct_io,
        "x-vcpu-dirty-limit-period": p.x_vcpu_dirty_limit_period,
        "cpr-exec-command": p.cpr_exec_command,
    })
}

/// An event's QMP name and `data`.
pub(crate) fn event_data(event: Event) -> (&'static str, Option<Value>) {
    match event {
        Event::RunState(e) => (e.name(), None),
        Event::Shutdown { guest, reason } => {
            ("SHUTDOWN", Some(json!({"guest": guest, "reason": reason})))
        }
        Event::GuestPanicked { vcpu, vector, rip } => (
            "GUEST_PANICKED",
            Some(json!({"action": "pause", "info": {"type": "cpr-testdev",
                "vcpu": vcpu, "vector": vector, "rip": rip}})),
        ),
        Event::Migration(status) => ("MIGRATION", Some(json!({"status": status.as_str()}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::schema::{Handler, Schema, validate};

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// Validates and parses as the server does.
    fn request(name: &str, v: Value) -> Result<Command, String> {
        let schema = Schema::builtin();
        let def = schema.get(name).expect("in the schema");
        let Handler::Vmm(cmd) = def.handler else {
            panic!("{name} is not a VMM command");
        };
        let a = args(v);
        validate(def, &a).map_err(|e| e.desc.clone())?;
        parse(cmd, &a).map_err(|e| e.desc)
    }

    #[test]
    fn typed_arguments() {
        assert_eq!(
            request(
                "cpr-save",
                json!({"filename": "/tmp/vm.state", "mode": "reboot"})
            ),
            Ok(Command::CprSave(CprSaveArgs {
                filename: "/tmp/vm.state".into(),
                mode: CprMode::Reboot
            }))
        );
        assert_eq!(
            request(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
            ),
            Ok(Command::MigrateSetCapabilities(vec![CapabilityStatus {
                capability: MigrationCapability::XIgnoreShared,
                state: true
            }]))
        );
        assert_eq!(
            request("x-guest-fault", json!({"kind": "panic"})),
            Ok(Command::GuestFault(GuestFault::Panic))
        );
        let Ok(Command::MigrateSetParameters(set)) = request(
            "migrate-set-parameters",
            json!({"mode": "cpr-reboot", "max-bandwidth": -1, "cpu-throttle-tailslow": true}),
        ) else {
            panic!("parameters");
        };
        assert_eq!(set.mode, Some(MigMode::CprReboot));
        // QEMU takes a negative size modulo 2^64, and SIZE_MAX allows it.
        assert_eq!(set.max_bandwidth, Some(u64::MAX));
        assert_eq!(set.cpu_throttle_tailslow, Some(true));
        assert_eq!(set.downtime_limit, None);
        assert_eq!(
            request(
                "migrate-set-parameters",
                json!({"cpu-throttle-initial": 300})
            ),
            Err("Parameter 'cpu-throttle-initial' expects uint8".into())
        );
        assert_eq!(
            request("migrate-set-parameters", json!({"x-checkpoint-delay": -1})),
            Err("Parameter 'x-checkpoint-delay' expects uint32".into())
        );
    }

    #[test]
    fn file_targets() {
        let t = |v| match request("migrate", v) {
            Ok(Command::Migrate(a)) => match a.target {
                Ok(MigrationAddress::File(f)) => Ok(f),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(
            t(json!({"uri": "file:/tmp/vm.state"})),
            Ok(FileTarget {
                path: "/tmp/vm.state".into(),
                offset: 0
            })
        );
        assert_eq!(
            t(json!({"uri": "file:/tmp/x,offset=0x1000"})).map(|t| t.offset),
            Ok(4096)
        );
        let ch = json!({"channels": [{"channel-type": "main",
            "addr": {"transport": "file", "filename": "/tmp/y", "offset": 512}}]});
        assert_eq!(
            t(ch),
            Ok(FileTarget {
                path: "/tmp/y".into(),
                offset: 512
            })
        );
        let err = |v| t(v).expect_err("refused");
        assert_eq!(
            err(json!({"uri": "tcp:1.2.3.4:5"})),
            "unknown migration protocol: tcp:1.2.3.4:5"
        );
        assert_eq!(err(json!({})), "need either 'uri' or 'channels' argument");
        assert_eq!(
            err(json!({"uri": "file:/a", "channels": []})),
            "need either 'uri' or 'channels' argument"
        );
        assert_eq!(
            err(json!({"channels": []})),
            "Channel list must have exactly one entry, of type 'main'"
        );
        assert_eq!(
            err(json!({"channels": [{"channel-type": "main", "addr": {"transport": "rdma"}}]})),
            "unknown migration protocol: rdma (only 'file' channels are supported)"
        );
        assert_eq!(
            err(
                json!({"channels": [{"channel-type": "cpr", "addr": {"transport": "file", "filename": "f"}}]})
            ),
            "Channel list has no main entry"
        );
        let main = json!({"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "/m"}});
        let cpr = json!({"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/c"}});
        assert_eq!(
            err(json!({"channels": [main.clone(), main.clone()]})),
            "Channel list has more than one main entry"
        );
        let Ok(Command::Migrate(a)) = request("migrate", json!({"channels": [main, cpr.clone()]}))
        else {
            panic!("main + cpr");
        };
        assert_eq!(a.target, Ok(MigrationAddress::Unix("/m".into())));
        assert_eq!(a.cpr, Some(Ok(MigrationAddress::Unix("/c".into()))));
        let Ok(Command::MigrateIncoming(a)) =
            request("migrate-incoming", json!({"channels": [cpr]}))
        else {
            panic!("migrate-incoming");
        };
        assert_eq!(
            a.target.map_err(|e| e.to_string()),
            Err("cpr channel can only be specified on the command line (-incoming)".to_string())
        );
        assert_eq!(
            err(json!({"channels": [{"channel-type": "main", "addr": {}}]})),
            "Parameter 'transport' is missing"
        );
        assert_eq!(
            err(json!({"channels": [{"channel-type": "main", "addr": {"transport": "file"}}]})),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            err(json!({"channels": [{"channel-type": "main",
                "addr": {"transport": "file", "filename": "f", "offset": -1}}]})),
            "Invalid parameter type for 'offset', expected: integer"
        );
    }

    /// Every VMM command in the schema parses (with its mandatory arguments) into the
    /// command of the same name, and every command the VMM has is in the schema.
    #[test]
    fn schema_and_commands_are_one_list() {
        let schema = Schema::builtin();
        let mut seen = Vec::new();
        for def in schema.commands() {
            let Handler::Vmm(name) = def.handler else {
                continue;
            };
            assert_eq!(def.name, name.as_str());
            let sample: Map<String, Value> = def
                .args
                .iter()
                .filter(|m| !m.optional)
                .map(|m| {
                    let v = match m.name {
                        "filename" => json!("/tmp/f"),
                        "mode" => json!("reboot"),
                        "kind" => json!("panic"),
                        "capabilities" => json!([]),
                        other => panic!("no sample for {other}"),
                    };
                    (m.name.to_string(), v)
                })
                .collect();
            validate(def, &sample).expect("sample is valid");
            let cmd = parse(name, &sample).expect("parses");
            assert_eq!(cmd.name(), name);
            seen.push(name);
        }
        assert_eq!(seen, CommandName::ALL);
    }
}
