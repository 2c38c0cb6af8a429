//! End-to-end tests of the QMP server and client over a real Unix socket,
//! with a fake VMM thread answering requests.

use cpr::qmp::{
    ClientError, ErrorClass, EventSender, QmpClient, QmpError, QmpRequest, QmpServer, ServerConfig,
};
use cpr::vmm::{Command, CprMode, CprSaveArgs, Event, MigrationInfo, MigrationStatus, Response};
use cpr_runstate::{RunState, StatusInfo};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(5);

/// What the fake VMM saw: (command, via_hmp).
type Log = Arc<Mutex<Vec<(Command, bool)>>>;

struct Harness {
    server: Option<QmpServer>,
    path: PathBuf,
    log: Log,
    events: EventSender,
    vmm: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let mut config = ServerConfig::new(&path);
        tweak(&mut config);
        let (server, rx) = QmpServer::start(config).unwrap();
        let events = server.events();
        let log: Log = Arc::default();
        let vmm = {
            let (log, events) = (log.clone(), events.clone());
            thread::spawn(move || fake_vmm(rx, log, events))
        };
        Harness {
            server: Some(server),
            path,
            log,
            events,
            vmm: Some(vmm),
            _dir: dir,
        }
    }

    fn client(&self) -> QmpClient {
        QmpClient::connect(&self.path).unwrap()
    }

    fn commands(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.0.name().as_str().to_string())
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(vmm) = self.vmm.take() {
            vmm.join().unwrap();
        }
    }
}

/// The fake VMM: a run state, STOP/RESUME events, a slow and a hanging
/// command, a failing cpr-save.
fn fake_vmm(rx: Receiver<QmpRequest>, log: Log, events: EventSender) {
    let mut running = true;
    let mut hung = Vec::new();
    for req in rx {
        log.lock().unwrap().push((req.command.clone(), req.via_hmp));
        let result = match &req.command {
            Command::QueryStatus => Ok(Response::Status(StatusInfo::new(if running {
                RunState::Running
            } else {
                RunState::Paused
            }))),
            Command::Stop => {
                if running {
                    running = false;
                    events.send(Event::RunState(cpr_runstate::Event::Stop));
                }
                Ok(Response::Empty)
            }
            Command::Cont => {
                running = true;
                events.send(Event::RunState(cpr_runstate::Event::Resume));
                Ok(Response::Empty)
            }
            Command::CprSave(a) if a.filename == Path::new("/fail") => {
                Err(QmpError::generic("Memory region pc.ram is volatile"))
            }
            Command::CprLoad(a) => match a.filename.to_str() {
                Some("hang") => {
                    hung.push(req);
                    continue;
                }
                Some("slow") => {
                    thread::sleep(Duration::from_millis(300));
                    Ok(Response::Empty)
                }
                _ => Err(QmpError::generic(format!(
                    "{} is not a vmstate file",
                    a.filename.display()
                ))),
            },
            Command::QueryMigrate => Ok(Response::Migration(MigrationInfo {
                total_time: Some(12),
                ..MigrationInfo::new(MigrationStatus::Completed)
            })),
            _ => Ok(Response::Empty),
        };
        req.respond(result);
    }
}

/// Reads one CRLF-terminated line from a raw stream.
fn raw_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(T)).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        let n = s.read(&mut b).expect("read line");
        assert_eq!(n, 1, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn raw_json(s: &mut UnixStream) -> Value {
    serde_json::from_str(raw_line(s).trim_end()).unwrap()
}

/// A raw connection, greeting read and (optionally) negotiated.
fn raw(path: &Path, negotiate: bool) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    let g = raw_json(&mut s);
    assert!(g.get("QMP").is_some());
    if negotiate {
        s.write_all(b"{\"execute\": \"qmp_capabilities\"}\r\n")
            .unwrap();
        assert_eq!(raw_json(&mut s), json!({"return": {}}));
    }
    s
}

fn qmp_err(r: Result<Value, ClientError>) -> QmpError {
    match r {
        Err(ClientError::Qmp(e)) => e,
        other => panic!("expected a QMP error, got {other:?}"),
    }
}

fn generic(desc: &str) -> QmpError {
    QmpError::generic(desc)
}

#[test]
fn greeting_shape_and_crlf() {
    let h = Harness::start();
    let mut s = UnixStream::connect(&h.path).unwrap();
    let line = raw_line(&mut s);
    assert!(line.ends_with("\r\n") && line.matches('\n').count() == 1);
    assert_eq!(
        line,
        format!(
            "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 0, \"minor\": 2, \"major\": 6}}, \
             \"package\": \"cpr-vm {}\"}}, \"capabilities\": []}}}}\r\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    // Replies are CRLF-terminated too.
    s.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    assert_eq!(raw_line(&mut s), "{\"return\": {}}\r\n");
}

#[test]
fn negotiation_mode_errors() {
    let h = Harness::start();
    let mut c = QmpClient::connect_unnegotiated(&h.path, T).unwrap();
    assert_eq!(c.greeting()["QMP"]["capabilities"], json!([]));
    let expecting = QmpError::new(
        ErrorClass::CommandNotFound,
        "Expecting capabilities negotiation with 'qmp_capabilities'",
    );
    assert_eq!(qmp_err(c.execute("query-status", Value::Null)), expecting);
    assert_eq!(
        qmp_err(c.execute("no-such-command", Value::Null)),
        expecting
    );
    assert_eq!(
        qmp_err(c.execute("qmp_capabilities", json!({"enable": ["oob"]}))),
        generic("Capability oob not available")
    );
    assert_eq!(
        qmp_err(c.execute("qmp_capabilities", json!({"enable": "oob"}))),
        generic("Invalid parameter type for 'enable', expected: array")
    );
    // Still in negotiation mode after the failed attempts.
    assert_eq!(qmp_err(c.execute("query-status", Value::Null)), expecting);
    assert_eq!(c.execute("qmp_capabilities", json!({})).unwrap(), json!({}));
    assert_eq!(
        qmp_err(c.execute("qmp_capabilities", Value::Null)),
        QmpError::new(
            ErrorClass::CommandNotFound,
            "Capabilities negotiation is already complete, command ignored"
        )
    );
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap(),
        json!({"status": "running", "running": true, "singlestep": false})
    );
    // Nothing reached the VMM before negotiation.
    assert_eq!(h.commands(), vec!["query-status"]);
}

#[test]
fn id_is_echoed_verbatim() {
    let h = Harness::start();
    let mut s = raw(&h.path, false);
    // Negotiation-mode error keeps the id.
    s.write_all(b"{\"execute\": \"stop\", \"id\": 7}").unwrap();
    assert_eq!(raw_json(&mut s)["id"], json!(7));
    s.write_all(b"{\"execute\": \"qmp_capabilities\", \"id\": \"caps\"}")
        .unwrap();
    assert_eq!(raw_json(&mut s), json!({"return": {}, "id": "caps"}));
    for id in [
        json!(1),
        json!(-3.5),
        json!("libvirt-12"),
        json!({"a": [1, {"b": null}], "c": "d"}),
        json!([1, 2]),
        json!(null),
        json!(true),
    ] {
        let req = json!({"execute": "query-status", "id": id});
        s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
        let reply = raw_json(&mut s);
        assert_eq!(reply["return"]["status"], "running");
        assert_eq!(reply.get("id"), Some(&id), "{reply}");
    }
    // Errors carry the id too, envelope errors included.
    s.write_all(b"{\"execute\": \"nope\", \"id\": {\"x\": 1}}")
        .unwrap();
    let r = raw_json(&mut s);
    assert_eq!(r["id"], json!({"x": 1}));
    assert_eq!(r["error"]["class"], "CommandNotFound");
    s.write_all(b"{\"id\": \"no-exec\"}").unwrap();
    assert_eq!(
        raw_json(&mut s),
        json!({"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}, "id": "no-exec"})
    );
    s.write_all(b"{\"execute\": 3, \"id\": [9]}").unwrap();
    assert_eq!(
        raw_json(&mut s),
        json!({"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}, "id": [9]})
    );
    // No id: no id member in the reply.
    s.write_all(b"{\"execute\": \"query-status\"}").unwrap();
    assert!(raw_json(&mut s).get("id").is_none());
}

#[test]
fn unknown_command() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(
        qmp_err(c.execute("frobnicate", Value::Null)),
        QmpError::new(
            ErrorClass::CommandNotFound,
            "The command frobnicate has not been found"
        )
    );
    assert!(h.commands().is_empty());
}

#[test]
fn envelope_errors() {
    let h = Harness::start();
    let mut s = raw(&h.path, true);
    for (input, desc) in [
        ("[1, 2]", "QMP input must be a JSON object"),
        ("\"str\"", "QMP input must be a JSON object"),
        ("{\"arguments\": {}}", "QMP input lacks member 'execute'"),
        (
            "{\"execute\": 3}",
            "QMP input member 'execute' must be a string",
        ),
        (
            "{\"execute\": \"stop\", \"arguments\": [1]}",
            "QMP input member 'arguments' must be an object",
        ),
        (
            "{\"execute\": \"stop\", \"foo\": 1}",
            "QMP input member 'foo' is unexpected",
        ),
        (
            "{\"exec-oob\": \"stop\"}",
            "QMP input member 'exec-oob' is unexpected",
        ),
    ] {
        s.write_all(format!("{input}\r\n").as_bytes()).unwrap();
        assert_eq!(
            raw_json(&mut s),
            json!({"error": {"class": "GenericError", "desc": desc}}),
            "{input}"
        );
    }
    assert!(h.commands().is_empty());
}

#[test]
fn argument_validation_messages_and_no_side_effects() {
    let h = Harness::start();
    let mut c = h.client();
    let cases = [
        ("cpr-save", json!({}), "Parameter 'filename' is missing"),
        (
            "cpr-save",
            json!({"filename": "f"}),
            "Parameter 'mode' is missing",
        ),
        (
            "cpr-save",
            json!({"filename": 1, "mode": "reboot"}),
            "Invalid parameter type for 'filename', expected: string",
        ),
        (
            "cpr-save",
            json!({"filename": "f", "mode": "restart"}),
            "Parameter 'mode' does not accept value 'restart'",
        ),
        (
            "cpr-save",
            json!({"filename": "f", "mode": "reboot", "extra": true}),
            "Parameter 'extra' is unexpected",
        ),
        (
            "stop",
            json!({"now": true}),
            "Parameter 'now' is unexpected",
        ),
        (
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": "0"}),
            "Invalid parameter type for 'cpu-index', expected: integer",
        ),
        (
            "migrate",
            json!({"uri": "file:/x", "detach": 1}),
            "Invalid parameter type for 'detach', expected: boolean",
        ),
        (
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared"}]}),
            "Parameter 'capabilities[0].state' is missing",
        ),
        (
            "migrate-set-parameters",
            json!({"mode": "cpr-transfer"}),
            "Parameter 'mode' does not accept value 'cpr-transfer'",
        ),
    ];
    for (cmd, args, desc) in cases {
        assert_eq!(
            qmp_err(c.execute(cmd, args.clone())),
            generic(desc),
            "{cmd} {args}"
        );
    }
    assert!(h.commands().is_empty(), "{:?}", h.commands());
    // Valid arguments do reach the VMM, typed.
    let args = json!({"filename": "/tmp/vm.state", "mode": "reboot"});
    assert_eq!(c.execute("cpr-save", args.clone()).unwrap(), json!({}));
    assert_eq!(
        h.log.lock().unwrap().clone(),
        vec![(
            Command::CprSave(CprSaveArgs {
                filename: "/tmp/vm.state".into(),
                mode: CprMode::Reboot
            }),
            false
        )]
    );
    // A VMM error is passed through.
    assert_eq!(
        qmp_err(c.execute("cpr-save", json!({"filename": "/fail", "mode": "reboot"}))),
        generic("Memory region pc.ram is volatile")
    );
}

#[test]
fn garbage_then_valid_command_on_same_connection() {
    let h = Harness::start();
    let mut s = raw(&h.path, true);
    s.write_all(b"garbage\r\n{\"execute\": \"query-status\", \"id\": 1}\r\n")
        .unwrap();
    assert_eq!(
        raw_json(&mut s),
        json!({"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}})
    );
    assert_eq!(raw_json(&mut s)["id"], 1);
    s.write_all(b"{\"execute\": }\r\n@@\r\n{'execute': 'query-status', 'id': 2}")
        .unwrap();
    let e = raw_json(&mut s);
    assert_eq!(e["error"]["desc"], "JSON parse error, expecting value");
    assert!(e.get("id").is_none());
    assert_eq!(
        raw_json(&mut s)["error"]["desc"],
        "JSON parse error, stray '@@'"
    );
    let r = raw_json(&mut s);
    assert_eq!(
        (r["id"].clone(), r["return"]["running"].clone()),
        (json!(2), json!(true))
    );
}

#[test]
fn two_objects_in_one_write_and_one_object_across_writes() {
    let h = Harness::start();
    let mut s = raw(&h.path, true);
    s.write_all(
        b"{\"execute\": \"stop\", \"id\": 1}{\"execute\": \"query-status\", \"id\": 2}\r\n",
    )
    .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let m = raw_json(&mut s);
        if m.get("event").is_none() {
            replies.push(m);
        }
    }
    assert_eq!(replies[0], json!({"return": {}, "id": 1}));
    assert_eq!(replies[1]["id"], 2);
    assert_eq!(replies[1]["return"]["status"], "paused");
    for part in [
        "{\"exec",
        "ute\": \"query-st",
        "atus\",\r\n \"id\"",
        ": 3}\r\n",
    ] {
        s.write_all(part.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(raw_json(&mut s)["id"], 3);
}

#[test]
fn disconnect_mid_command_then_reconnect() {
    let h = Harness::start();
    {
        let mut s = raw(&h.path, true);
        s.write_all(b"{\"execute\": \"cpr-load\", \"arguments\": {\"filename\": \"slow\"}}")
            .unwrap();
        // Closed before the reply is written.
    }
    let mut c = QmpClient::connect_unnegotiated(&h.path, T).unwrap();
    assert!(c.greeting().get("QMP").is_some());
    // A fresh connection must negotiate again.
    assert_eq!(
        qmp_err(c.execute("query-status", Value::Null)).class,
        ErrorClass::CommandNotFound
    );
    c.negotiate().unwrap();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap()["running"],
        true
    );
    assert_eq!(h.commands(), vec!["cpr-load", "query-status"]);
    // And once more, after a clean close.
    drop(c);
    let mut c = h.client();
    assert_eq!(c.execute("stop", Value::Null).unwrap(), json!({}));
}

#[test]
fn events_only_after_negotiation_with_timestamps() {
    let h = Harness::start();
    let mut c = QmpClient::connect_unnegotiated(&h.path, T).unwrap();
    // The server may not have registered the connection yet; wait for it.
    let deadline = Instant::now() + T;
    while !h.server.as_ref().unwrap().client_connected() {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !h.events.emit("EARLY", None),
        "delivered before negotiation"
    );
    c.negotiate().unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(h.events.emit("CUSTOM", Some(json!({"n": 1, "s": "x"}))));
    let ev = c.wait_event("CUSTOM", T).unwrap();
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(ev.data, Some(json!({"n": 1, "s": "x"})));
    let stamp = Duration::new(
        u64::try_from(ev.timestamp.seconds).unwrap(),
        u32::try_from(ev.timestamp.microseconds).unwrap() * 1000,
    );
    assert!(
        before - Duration::from_micros(1) <= stamp && stamp <= after,
        "{ev:?}"
    );
    // An event emitted while a command runs is queued by the client.
    c.execute("stop", Value::Null).unwrap();
    let evs = c.events().unwrap();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].event, "STOP");
    assert_eq!(evs[0].data, None);
    assert!(c.events().unwrap().is_empty());
    // Raw shape of an event line.
    let mut s = {
        drop(c);
        raw(&h.path, true)
    };
    h.events.emit("RAW", None);
    let line = raw_line(&mut s);
    assert!(
        line.starts_with("{\"timestamp\": {\"seconds\": ")
            && line.ends_with(", \"event\": \"RAW\"}\r\n"),
        "{line}"
    );
}

#[test]
fn no_client_drops_events() {
    let h = Harness::start();
    assert!(!h.events.emit("NOBODY", None));
    assert!(!EventSender::noop().emit("X", None));
    let mut c = h.client();
    assert!(c.events().unwrap().is_empty());
}

#[test]
fn socket_mode_is_0600() {
    let h = Harness::start();
    let md = std::fs::symlink_metadata(&h.path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o7777, 0o600);
    // No temporary directory left behind.
    let entries: Vec<_> = std::fs::read_dir(h.path.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn stale_socket_replaced_live_and_non_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    std::fs::write(&path, b"precious").unwrap();
    let err = QmpServer::start(ServerConfig::new(&path)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
    drop(UnixListener::bind(&path).unwrap()); // stale socket file
    let (server, _rx) = QmpServer::start(ServerConfig::new(&path)).unwrap();
    let err = QmpServer::start(ServerConfig::new(&path)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(path.exists());
    server.shutdown();
    assert!(!path.exists(), "socket removed on shutdown");
}

#[test]
fn oversize_input_is_refused_and_connection_survives() {
    let h = Harness::start();
    let mut s = raw(&h.path, true);
    let big = format!(
        "{{\"execute\": \"cpr-load\", \"arguments\": {{\"filename\": \"{}\"}}}}\r\n{{\"execute\": \"query-status\", \"id\": \"after\"}}\r\n",
        "x".repeat(2 << 20)
    );
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(big.as_bytes()).unwrap());
    assert_eq!(
        raw_json(&mut s),
        json!({"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}})
    );
    assert_eq!(raw_json(&mut s)["id"], "after");
    writer.join().unwrap();
    assert_eq!(h.commands(), vec!["query-status"]);
}

#[test]
fn client_times_out_against_a_server_that_never_answers() {
    // A bare socket that greets and then stays silent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent");
    let listener = UnixListener::bind(&path).unwrap();
    let silent = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut c = QmpClient::connect_unnegotiated(&path, Duration::from_millis(300)).unwrap();
    let t0 = Instant::now();
    assert!(matches!(c.negotiate(), Err(ClientError::Timeout(_))));
    assert!(t0.elapsed() < Duration::from_secs(3));
    drop(c);
    silent.join().unwrap();

    // Our server with a VMM that never answers this command.
    let h = Harness::start();
    let mut c = h.client();
    c.set_timeout(Duration::from_millis(300));
    let r = c.execute("cpr-load", json!({"filename": "hang"}));
    assert!(matches!(r, Err(ClientError::Timeout(_))), "{r:?}");
    // Nothing at all: the greeting never comes.
    let dead = dir.path().join("nobody");
    let _l = UnixListener::bind(&dead).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        QmpClient::connect_unnegotiated(&dead, Duration::from_millis(200)),
        Err(ClientError::Timeout(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn connect_with_retry_waits_for_a_late_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late");
    let p2 = path.clone();
    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        QmpServer::start(ServerConfig::new(&p2)).unwrap()
    });
    let mut c = QmpClient::connect_with_retry(&path, T).unwrap();
    let (_server, _rx) = starter.join().unwrap();
    assert_eq!(
        c.execute("query-version", Value::Null).unwrap()["qemu"],
        json!({"micro": 0, "minor": 2, "major": 6})
    );
    let nowhere = dir.path().join("nowhere");
    assert!(matches!(
        QmpClient::connect_with_retry(&nowhere, Duration::from_millis(100)),
        Err(ClientError::Timeout(_))
    ));
}

#[test]
fn query_version_and_commands() {
    let h = Harness::start();
    let mut c = h.client();
    let v = c.execute("query-version", Value::Null).unwrap();
    assert_eq!(
        v["package"],
        format!("cpr-vm {}", env!("CARGO_PKG_VERSION"))
    );
    let cmds = c.execute("query-commands", Value::Null).unwrap();
    let names: Vec<&str> = cmds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "qmp_capabilities",
        "cpr-save",
        "cpr-load",
        "human-monitor-command",
        "migrate",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(h.commands().is_empty(), "answered by the server itself");
}

#[test]
fn hmp_over_qmp() {
    let h = Harness::start();
    let mut c = h.client();
    assert_eq!(c.hmp("info status").unwrap(), "VM status: running\r\n");
    assert_eq!(c.hmp("stop").unwrap(), "");
    assert_eq!(c.hmp("info status").unwrap(), "VM status: paused\r\n");
    assert_eq!(
        c.hmp("cpr-save /tmp/x restart").unwrap(),
        "Error: invalid parameter value: restart\r\n"
    );
    assert_eq!(c.hmp("cpr-save /tmp/x reboot").unwrap(), "");
    assert_eq!(
        c.hmp("cpr-save /fail reboot").unwrap(),
        "Error: Memory region pc.ram is volatile\r\n"
    );
    assert_eq!(
        c.hmp("cpr-load /tmp/nope").unwrap(),
        "Error: /tmp/nope is not a vmstate file\r\n"
    );
    assert_eq!(c.hmp("bogus arg").unwrap(), "unknown command: 'bogus'\r\n");
    assert_eq!(
        c.hmp("info migrate").unwrap(),
        "Migration status: completed\r\ntotal time: 12 ms\r\n"
    );
    assert!(
        c.hmp("help")
            .unwrap()
            .contains("cpr-load filename -- load VM checkpoint from file\r\n")
    );
    assert_eq!(
        qmp_err(c.execute(
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": 4})
        )),
        generic("Parameter 'cpu-index' expects a CPU number")
    );
    assert_eq!(
        c.execute(
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": 0})
        )
        .unwrap(),
        "VM status: paused\r\n"
    );
    let log = h.log.lock().unwrap().clone();
    let saves: Vec<_> = log
        .iter()
        .filter(|e| matches!(e.0, Command::CprSave(_)))
        .collect();
    assert_eq!(saves.len(), 2, "the bad mode never reached the VMM");
    assert_eq!(
        saves[0].0,
        Command::CprSave(CprSaveArgs {
            filename: "/tmp/x".into(),
            mode: CprMode::Reboot
        })
    );
    assert!(log.iter().all(|e| e.1), "all via HMP");
    drop(c);
    // STOP was emitted while the first client was connected.
    let mut c = h.client();
    assert!(c.events().unwrap().is_empty());
}

#[test]
fn output_is_ascii_with_unicode_escapes() {
    let h = Harness::start();
    let mut s = raw(&h.path, true);
    s.write_all(
        "{\"execute\": \"cpr-load\", \"arguments\": {\"filename\": \"é😀\"}}\r\n".as_bytes(),
    )
    .unwrap();
    let line = raw_line(&mut s);
    assert!(line.is_ascii(), "{line}");
    assert!(
        line.contains("\\u00E9\\uD83D\\uDE00 is not a vmstate file"),
        "{line}"
    );
    let v: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(v["error"]["desc"], "é😀 is not a vmstate file");
}

#[test]
fn second_client_is_served_after_the_first_leaves() {
    let h = Harness::start();
    let first = h.client();
    let mut second = UnixStream::connect(&h.path).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(second.read(&mut b).is_err(), "no greeting while busy");
    drop(first);
    let g = raw_json(&mut second);
    assert!(g.get("QMP").is_some());
}

#[test]
fn client_that_does_not_read_is_dropped_and_vmm_never_blocks() {
    let h = Harness::start_with(|c| {
        c.output_queue = 8;
        c.write_timeout = Duration::from_millis(200);
    });
    let _lazy = raw(&h.path, true);
    let data = json!({"blob": "y".repeat(4096)});
    let t0 = Instant::now();
    let mut delivered = 0;
    while h.events.emit("FLOOD", Some(data.clone())) {
        delivered += 1;
        assert!(
            delivered < 10_000,
            "a client that never reads must be dropped"
        );
    }
    assert!(
        delivered >= 8,
        "dropped only once its queue (8) was full: {delivered}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "emit must not block");
    // The server serves the next client.
    let mut c = h.client();
    assert_eq!(
        c.execute("query-status", Value::Null).unwrap()["running"],
        true
    );
}

#[test]
fn shutdown_disconnects_client_and_removes_socket() {
    let mut h = Harness::start();
    let mut c = h.client();
    h.server.take().unwrap().shutdown();
    assert!(!h.path.exists());
    let r = c.execute("query-status", Value::Null);
    assert!(
        matches!(r, Err(ClientError::Closed) | Err(ClientError::Io(_))),
        "{r:?}"
    );
}

#[test]
fn notify_hook_runs_once_per_vmm_request() {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = {
        let count = count.clone();
        Harness::start_with(move |c| {
            c.notify = Some(Arc::new(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }));
        })
    };
    let mut c = h.client();
    c.execute("query-version", Value::Null).unwrap();
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
    c.execute("query-status", Value::Null).unwrap();
    c.hmp("info status").unwrap();
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// `quit` as `cpr-vm` does it: the listener is closed and the path removed before the
/// reply leaves (a new server binds the path while the old one still serves its client),
/// the client still gets the reply, then SHUTDOWN, and the old server, dropped, leaves the
/// new socket alone.
#[test]
fn close_listener_frees_the_path_and_the_client_gets_reply_then_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (mut server, rx) = QmpServer::start(ServerConfig::new(&path)).unwrap();
    let events = server.events();
    let mut s = raw(&path, true);
    s.write_all(b"{\"execute\": \"quit\", \"id\": \"q\"}\r\n")
        .unwrap();
    let req = rx.recv_timeout(T).expect("the quit request");
    assert_eq!(req.command, Command::Quit);
    server.close_listener();
    assert!(!path.exists(), "the path is free before the reply");
    let (next, _next_rx) = QmpServer::start(ServerConfig::new(&path)).expect("a new server binds");
    let (_, responder) = req.into_parts();
    assert!(
        responder.respond_queued(Ok(Response::Empty)).wait(T),
        "reply queued"
    );
    events.emit(
        "SHUTDOWN",
        Some(json!({"guest": false, "reason": "host-qmp-quit"})),
    );
    assert!(server.flush(T), "everything written");
    assert_eq!(raw_json(&mut s), json!({"return": {}, "id": "q"}));
    let ev = raw_json(&mut s);
    assert_eq!(ev["event"], "SHUTDOWN", "{ev}");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    server.close_listener(); // idempotent
    drop(server);
    assert!(path.exists(), "the old server removed the new one's socket");
    let mut c = QmpClient::connect(&path).expect("the new server answers");
    c.execute("query-version", Value::Null).unwrap();
    next.shutdown();
    assert!(!path.exists());
}

/// The socket at the path is no longer ours (the operator removed it and another server
/// bound there): closing leaves it in place, and so does dropping the server.
#[test]
fn close_listener_keeps_a_foreign_socket() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (mut server, _rx) = QmpServer::start(ServerConfig::new(&path)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let foreign = UnixListener::bind(&path).unwrap();
    let ino = std::fs::symlink_metadata(&path).unwrap().ino();
    server.close_listener();
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
    drop(server);
    assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino);
    let _c = UnixStream::connect(&path).unwrap();
    foreign
        .accept()
        .expect("the foreign server still gets connections");
}

/// A closed listener refuses connections at once, even while its accept thread serves
/// a client (closing does not wait for that thread, which would hang here).
#[test]
fn closed_listener_refuses_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let (mut server, _rx) = QmpServer::start(ServerConfig::new(&path)).unwrap();
    let _busy = raw(&path, true);
    // A second name for the same socket, to reach it after the path is removed.
    let alias = dir.path().join("alias.sock");
    std::fs::hard_link(&path, &alias).unwrap();
    server.close_listener();
    let err = UnixStream::connect(&alias).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
