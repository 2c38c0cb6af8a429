//! The QMP test harness shared by `qmp.rs` and `qmp_socket.rs`: a real server on a Unix
//! socket in a temporary directory, a fake VMM thread answering typed requests, and raw
//! line helpers.
#![allow(dead_code, unused_imports)]

pub use cpr::qmp::{
    ClientError, ErrorClass, EventSender, QmpClient, QmpError, QmpRequest, QmpServer, ServerConfig,
};
pub use cpr::vmm::{
    Command, CprMode, CprSaveArgs, Event, MigrationInfo, MigrationStatus, Response,
};
pub use cpr_runstate::{RunState, StatusInfo};
pub use serde_json::{Value, json};
pub use std::io::{Read, Write};
pub use std::os::unix::fs::{FileTypeExt, PermissionsExt};
pub use std::os::unix::net::{UnixListener, UnixStream};
pub use std::path::{Path, PathBuf};
pub use std::sync::mpsc::Receiver;
pub use std::sync::{Arc, Mutex};
pub use std::thread::{self, JoinHandle};
pub use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const T: Duration = Duration::from_secs(5);

/// What the fake VMM saw: (command, via_hmp).
pub type Log = Arc<Mutex<Vec<(Command, bool)>>>;

pub struct Harness {
    pub server: Option<QmpServer>,
    pub path: PathBuf,
    pub log: Log,
    pub events: EventSender,
    vmm: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
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

    pub fn client(&self) -> QmpClient {
        QmpClient::connect(&self.path).unwrap()
    }

    pub fn commands(&self) -> Vec<String> {
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
pub fn fake_vmm(rx: Receiver<QmpRequest>, log: Log, events: EventSender) {
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
pub fn raw_line(s: &mut UnixStream) -> String {
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

pub fn raw_json(s: &mut UnixStream) -> Value {
    serde_json::from_str(raw_line(s).trim_end()).unwrap()
}

/// A raw connection, greeting read and (optionally) negotiated.
pub fn raw(path: &Path, negotiate: bool) -> UnixStream {
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

pub fn qmp_err(r: Result<Value, ClientError>) -> QmpError {
    match r {
        Err(ClientError::Qmp(e)) => e,
        other => panic!("expected a QMP error, got {other:?}"),
    }
}

pub fn generic(desc: &str) -> QmpError {
    QmpError::generic(desc)
}
