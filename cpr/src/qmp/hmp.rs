//! HMP over QMP (`human-monitor-command`), patch 07 "cpr: reboot HMP
//! interfaces" plus the few HMP commands the cpr flow needs.
//!
//! Pure functions: [`translate`] turns a command line into either immediate
//! output text or a typed VMM command to run ([`HmpCall`]); [`render`] turns the
//! request's result into output text. The server glues them together. As in
//! QEMU, errors are output text (`Error: <desc>`), not QMP errors, and every
//! line ends in CRLF (QEMU's monitor turns `\n` into `\r\n`).
//!
//! Commands: `cpr-save <filename> <mode>`, `cpr-load <filename>`,
//! `info status`, `info migrate`, `stop|s`, `cont|c`, `system_wakeup`,
//! `quit|q`, `help|? [cmd]`, `info` (lists the `info` sub-commands).
//! Argument parsing follows QEMU's `monitor_parse_arguments()` for `s`/`S`
//! types (double quotes with `\n \r \\ \' \"` escapes), with its messages:
//! `<cmd>: string expected`, `<cmd>: extraneous characters at the end of
//! line`, then `Try "help <cmd>" for more information`;
//! an unknown command prints `unknown command: '<name>'`.

use super::error::QmpError;
use crate::vmm::{Command, CprLoadArgs, CprMode, CprSaveArgs};
use serde_json::Value;

/// A parsed HMP command that needs the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HmpCommand {
    /// `cpr-save <filename> <mode>`.
    CprSave {
        /// Checkpoint file.
        filename: String,
        /// Mode, already checked against `CprMode`.
        mode: String,
    },
    /// `cpr-load <filename>`.
    CprLoad {
        /// Checkpoint file.
        filename: String,
    },
    /// `stop`.
    Stop,
    /// `cont`.
    Cont,
    /// `system_wakeup`.
    SystemWakeup,
    /// `quit`.
    Quit,
    /// `info status`.
    InfoStatus,
    /// `info migrate`.
    InfoMigrate,
}

/// A VMM command an HMP command translates to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HmpCall {
    /// The HMP command (to [`render`] the result).
    pub command: HmpCommand,
    /// The command for the VMM.
    pub request: Command,
}

/// What to do for one HMP command line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HmpPlan {
    /// Output text, no request needed (help, parse errors, unknown command).
    Output(String),
    /// Make this request, then [`render`] its result.
    Call(HmpCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Help,
    Info,
    Quit,
    Stop,
    Cont,
    Wakeup,
    CprSave,
    CprLoad,
    InfoStatus,
    InfoMigrate,
}

/// One HMP table entry (`hmp-commands.hx` / `hmp-commands-info.hx`).
struct HmpDef {
    name: &'static str,
    args_type: &'static str,
    params: &'static str,
    help: &'static str,
    kind: Kind,
}

static MAIN: &[HmpDef] = &[
    HmpDef {
        name: "help|?",
        args_type: "name:S?",
        params: "[cmd]",
        help: "show the help",
        kind: Kind::Help,
    },
    HmpDef {
        name: "info",
        args_type: "item:s?",
        params: "[subcommand]",
        help: "show various information about the system state",
        kind: Kind::Info,
    },
    HmpDef {
        name: "quit|q",
        args_type: "",
        params: "",
        help: "quit the emulator",
        kind: Kind::Quit,
    },
    HmpDef {
        name: "stop|s",
        args_type: "",
        params: "",
        help: "stop emulation",
        kind: Kind::Stop,
    },
    HmpDef {
        name: "cont|c",
        args_type: "",
        params: "",
        help: "resume emulation",
        kind: Kind::Cont,
    },
    HmpDef {
        name: "system_wakeup",
        args_type: "",
        params: "",
        help: "wakeup guest from suspend",
        kind: Kind::Wakeup,
    },
    HmpDef {
        name: "cpr-save",
        args_type: "filename:s,mode:s",
        params: "filename 'reboot'",
        help: "create a checkpoint of the VM in file",
        kind: Kind::CprSave,
    },
    HmpDef {
        name: "cpr-load",
        args_type: "filename:s",
        params: "filename",
        help: "load VM checkpoint from file",
        kind: Kind::CprLoad,
    },
];

static INFO: &[HmpDef] = &[
    HmpDef {
        name: "status",
        args_type: "",
        params: "",
        help: "show the current VM status (running|paused)",
        kind: Kind::InfoStatus,
    },
    HmpDef {
        name: "migrate",
        args_type: "",
        params: "",
        help: "show migration status",
        kind: Kind::InfoMigrate,
    },
];

fn sub_table(def: &HmpDef) -> Option<&'static [HmpDef]> {
    (def.kind == Kind::Info).then_some(INFO)
}

/// QEMU's `hmp_compare_cmd()`: `name` matches one of the `|` alternatives.
fn compare(name: &str, list: &str) -> bool {
    list.split('|').any(|alt| alt == name)
}

fn skip_space(s: &str, mut p: usize) -> usize {
    let b = s.as_bytes();
    while p < b.len() && b[p].is_ascii_whitespace() {
        p += 1;
    }
    p
}

/// QEMU's `get_str()`: a word or a double-quoted string. Returns the string
/// and the position after it, or `None` (nothing there, bad escape,
/// unterminated quote).
fn get_str(s: &str, p: usize) -> Option<(String, usize)> {
    let b = s.as_bytes();
    let mut p = skip_space(s, p);
    if p >= b.len() {
        return None;
    }
    let mut out = Vec::new();
    if b[p] == b'"' {
        p += 1;
        while p < b.len() && b[p] != b'"' {
            if b[p] == b'\\' {
                let c = *b.get(p + 1)?;
                out.push(match c {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'\\' | b'\'' | b'"' => c,
                    _ => return None,
                });
                p += 2;
            } else {
                out.push(b[p]);
                p += 1;
            }
        }
        if p >= b.len() {
            return None;
        }
        p += 1;
    } else {
        while p < b.len() && !b[p].is_ascii_whitespace() {
            out.push(b[p]);
            p += 1;
        }
    }
    Some((String::from_utf8_lossy(&out).into_owned(), p))
}

/// QEMU's `get_command_name()`: the name ends at whitespace or `/`.
fn command_name(s: &str, p: usize) -> Option<(&str, usize)> {
    let start = skip_space(s, p);
    let b = s.as_bytes();
    let mut end = start;
    while end < b.len() && b[end] != b'/' && !b[end].is_ascii_whitespace() {
        end += 1;
    }
    (end > start).then(|| (&s[start..end], end))
}

fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// Translates one HMP command line.
pub(crate) fn translate(line: &str) -> HmpPlan {
    HmpPlan::from_parts(translate_lf(line))
}

impl HmpPlan {
    fn from_parts(plan: Result<HmpCall, String>) -> HmpPlan {
        match plan {
            Ok(call) => HmpPlan::Call(call),
            Err(text) => HmpPlan::Output(crlf(&text)),
        }
    }
}

/// `translate`, with output text still using `\n`.
fn translate_lf(line: &str) -> Result<HmpCall, String> {
    let Some((name, end)) = command_name(line, 0) else {
        return Err(String::new());
    };
    let Some(mut def) = MAIN.iter().find(|d| compare(name, d.name)) else {
        return Err(format!("unknown command: '{}'\n", &line[..end]));
    };
    let mut p = skip_space(line, end);
    if let Some(table) = sub_table(def)
        && p < line.len()
    {
        let Some((sub, end)) = command_name(line, p) else {
            return Err(String::new());
        };
        let Some(found) = table.iter().find(|d| compare(sub, d.name)) else {
            return Err(format!("unknown command: '{}'\n", &line[..end]));
        };
        def = found;
        p = skip_space(line, end);
    }
    let cmd_end = p;
    let try_help = || {
        format!(
            "Try \"help {}\" for more information\n",
            line[..cmd_end].trim_end()
        )
    };
    let args = parse_arguments(line, &mut p, def).map_err(|e| e + &try_help())?;
    let arg = |key: &str| args.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    let call = |command: HmpCommand, request: Command| Ok(HmpCall { command, request });
    match def.kind {
        Kind::Help => Err(help_text(arg("name").as_deref())),
        Kind::Info => Err(help_text(Some("info"))),
        Kind::Quit => call(HmpCommand::Quit, Command::Quit),
        Kind::Stop => call(HmpCommand::Stop, Command::Stop),
        Kind::Cont => call(HmpCommand::Cont, Command::Cont),
        Kind::Wakeup => call(HmpCommand::SystemWakeup, Command::SystemWakeup),
        Kind::InfoStatus => call(HmpCommand::InfoStatus, Command::QueryStatus),
        Kind::InfoMigrate => call(HmpCommand::InfoMigrate, Command::QueryMigrate),
        Kind::CprLoad => {
            let filename = arg("filename").unwrap_or_default();
            let request = Command::CprLoad(CprLoadArgs {
                filename: filename.clone().into(),
            });
            call(HmpCommand::CprLoad { filename }, request)
        }
        Kind::CprSave => {
            let filename = arg("filename").unwrap_or_default();
            let mode = arg("mode").unwrap_or_default();
            // hmp_cpr_save(): qapi_enum_parse(&CprMode_lookup, ...).
            let Ok(cpr_mode) = mode.parse::<CprMode>() else {
                return Err(format!("Error: invalid parameter value: {mode}\n"));
            };
            let request = Command::CprSave(CprSaveArgs {
                filename: filename.clone().into(),
                mode: cpr_mode,
            });
            call(HmpCommand::CprSave { filename, mode }, request)
        }
    }
}

/// QEMU's `monitor_parse_arguments()` for `s`, `s?`, `S`, `S?` types.
fn parse_arguments(
    line: &str,
    p: &mut usize,
    def: &HmpDef,
) -> Result<Vec<(&'static str, String)>, String> {
    let mut args = Vec::new();
    for spec in def.args_type.split(',').filter(|s| !s.is_empty()) {
        let (key, ty) = spec.split_once(':').unwrap_or((spec, "s"));
        let optional = ty.ends_with('?');
        *p = skip_space(line, *p);
        if optional && *p >= line.len() {
            continue;
        }
        if ty.starts_with('S') {
            if *p >= line.len() {
                return Err(format!("{}: string expected\n", def.name));
            }
            args.push((key, line[*p..].to_string()));
            *p = line.len();
            continue;
        }
        match get_str(line, *p) {
            Some((value, next)) => {
                args.push((key, value));
                *p = next;
            }
            None => return Err(format!("{}: string expected\n", def.name)),
        }
    }
    if skip_space(line, *p) < line.len() {
        return Err(format!(
            "{}: extraneous characters at the end of line\n",
            def.name
        ));
    }
    Ok(args)
}

/// QEMU's `help_cmd()`: the help text for `name` (all commands if `None`).
fn help_text(name: Option<&str>) -> String {
    let mut words = Vec::new();
    let mut p = 0;
    if let Some(name) = name {
        loop {
            p = skip_space(name, p);
            if p >= name.len() {
                break;
            }
            match get_str(name, p) {
                Some((w, next)) => {
                    words.push(w);
                    p = next;
                }
                None => return String::new(),
            }
        }
    }
    let mut out = String::new();
    help_dump(&mut out, MAIN, &words, 0);
    out
}

fn help_dump(out: &mut String, table: &[HmpDef], words: &[String], index: usize) {
    let prefix: String = words[..index.min(words.len())]
        .iter()
        .map(|w| format!("{w} "))
        .collect();
    let Some(word) = words.get(index) else {
        for def in table {
            out.push_str(&format!(
                "{prefix}{} {} -- {}\n",
                def.name, def.params, def.help
            ));
        }
        return;
    };
    match table.iter().find(|d| compare(word, d.name)) {
        Some(def) => match sub_table(def) {
            Some(sub) => help_dump(out, sub, words, index + 1),
            None => out.push_str(&format!(
                "{prefix}{} {} -- {}\n",
                def.name, def.params, def.help
            )),
        },
        None => out.push_str(&format!(
            "unknown command: '{}'\n",
            words[..=index].join(" ")
        )),
    }
}

/// Output text for a command's result (CRLF line ends).
pub(crate) fn render(command: &HmpCommand, result: Result<Value, QmpError>) -> String {
    let text = match (command, result) {
        // hmp_handle_error(): error_reportf_err(err, "Error: ").
        (_, Err(e)) => format!("Error: {}\n", e.desc),
        (HmpCommand::InfoStatus, Ok(v)) => format_status(&v),
        (HmpCommand::InfoMigrate, Ok(v)) => format_migrate(&v),
        (_, Ok(_)) => String::new(),
    };
    crlf(&text)
}

/// `info status` text (`hmp_info_status()`, 6.2) from a `query-status`
/// result, with `\n` line ends.
pub(crate) fn format_status(v: &Value) -> String {
    let running = v["running"].as_bool().unwrap_or(false);
    let status = v["status"].as_str().unwrap_or("");
    let mut s = format!(
        "VM status: {}{}",
        if running { "running" } else { "paused" },
        if v["singlestep"].as_bool() == Some(true) {
            " (single step mode)"
        } else {
            ""
        }
    );
    if !running && status != "paused" {
        s.push_str(&format!(" ({status})"));
    }
    s.push('\n');
    s
}

/// `info migrate` text (subset of `hmp_info_migrate()`: status, error,
/// times) from a `query-migrate` result, with `\n` line ends.
pub(crate) fn format_migrate(v: &Value) -> String {
    let mut s = String::new();
    let Some(status) = v["status"].as_str() else {
        return s;
    };
    s.push_str(&format!("Migration status: {status}"));
    match v["error-desc"].as_str() {
        Some(desc) if status == "failed" => s.push_str(&format!(" ({desc})\n")),
        _ => s.push('\n'),
    }
    for (key, label) in [
        ("total-time", "total time"),
        ("downtime", "downtime"),
        ("setup-time", "setup"),
    ] {
        if let Some(n) = v[key].as_i64() {
            s.push_str(&format!("{label}: {n} ms\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(line: &str) -> String {
        match translate(line) {
            HmpPlan::Output(s) => s,
            HmpPlan::Call(c) => panic!("expected output, got {c:?}"),
        }
    }

    fn call(line: &str) -> HmpCall {
        match translate(line) {
            HmpPlan::Call(c) => c,
            HmpPlan::Output(s) => panic!("expected call, got {s:?}"),
        }
    }

    #[test]
    fn cpr_commands_translate() {
        let save = |filename: &str| {
            Command::CprSave(CprSaveArgs {
                filename: filename.into(),
                mode: CprMode::Reboot,
            })
        };
        let c = call("cpr-save /tmp/vm.state reboot");
        assert_eq!(c.request, save("/tmp/vm.state"));
        let c = call("  cpr-save \"/tmp/a b\\\"c\"   reboot  ");
        assert_eq!(c.request, save("/tmp/a b\"c"));
        let c = call("cpr-load f");
        assert_eq!(
            c.request,
            Command::CprLoad(CprLoadArgs {
                filename: "f".into()
            })
        );
        assert_eq!(
            output("cpr-save f restart"),
            "Error: invalid parameter value: restart\r\n"
        );
    }

    #[test]
    fn argument_errors() {
        assert_eq!(
            output("cpr-save f"),
            "cpr-save: string expected\r\nTry \"help cpr-save\" for more information\r\n"
        );
        assert_eq!(
            output("cpr-load"),
            "cpr-load: string expected\r\nTry \"help cpr-load\" for more information\r\n"
        );
        assert_eq!(
            output("cpr-load a b"),
            "cpr-load: extraneous characters at the end of line\r\n\
             Try \"help cpr-load\" for more information\r\n"
        );
        assert_eq!(
            output("stop now"),
            "stop|s: extraneous characters at the end of line\r\n\
             Try \"help stop\" for more information\r\n"
        );
        assert_eq!(
            output("cpr-load \"unterminated"),
            "cpr-load: string expected\r\nTry \"help cpr-load\" for more information\r\n"
        );
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(
            output("frobnicate 1 2"),
            "unknown command: 'frobnicate'\r\n"
        );
        assert_eq!(output("info frob"), "unknown command: 'info frob'\r\n");
        assert_eq!(output(""), "");
        assert_eq!(output("   "), "");
    }

    #[test]
    fn simple_commands_and_aliases() {
        for (line, req) in [
            ("stop", "stop"),
            ("s", "stop"),
            ("cont", "cont"),
            ("c", "cont"),
            ("system_wakeup", "system_wakeup"),
            ("quit", "quit"),
            ("q", "quit"),
            ("info status", "query-status"),
            ("info migrate", "query-migrate"),
        ] {
            let c = call(line);
            assert_eq!(c.request.name().as_str(), req, "{line}");
        }
    }

    #[test]
    fn help() {
        let all = output("help");
        assert!(
            all.contains("cpr-save filename 'reboot' -- create a checkpoint of the VM in file\r\n")
        );
        assert!(all.contains("cont|c  -- resume emulation\r\n"));
        assert_eq!(
            output("help cpr-load"),
            "cpr-load filename -- load VM checkpoint from file\r\n"
        );
        assert_eq!(output("? quit"), "quit|q  -- quit the emulator\r\n");
        assert_eq!(output("help nope"), "unknown command: 'nope'\r\n");
        assert_eq!(output("help info nope"), "unknown command: 'info nope'\r\n");
        let info = output("info");
        assert_eq!(info, output("help info"));
        assert!(info.contains("info status  -- show the current VM status (running|paused)\r\n"));
    }

    #[test]
    fn render_results() {
        let st = |status: &str, running: bool| {
            render(
                &HmpCommand::InfoStatus,
                Ok(json!({"status": status, "running": running})),
            )
        };
        assert_eq!(st("running", true), "VM status: running\r\n");
        assert_eq!(st("paused", false), "VM status: paused\r\n");
        assert_eq!(st("prelaunch", false), "VM status: paused (prelaunch)\r\n");
        assert_eq!(st("suspended", false), "VM status: paused (suspended)\r\n");
        assert_eq!(
            render(&HmpCommand::Stop, Err(QmpError::generic("nope"))),
            "Error: nope\r\n"
        );
        assert_eq!(render(&HmpCommand::Cont, Ok(json!({}))), "");
        assert_eq!(
            render(
                &HmpCommand::InfoMigrate,
                Ok(json!({"status": "failed", "error-desc": "boom", "total-time": 5}))
            ),
            "Migration status: failed (boom)\r\ntotal time: 5 ms\r\n"
        );
        assert_eq!(render(&HmpCommand::InfoMigrate, Ok(json!({}))), "");
    }
}
