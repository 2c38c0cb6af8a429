//! The QMP server's socket and its clients over a real Unix socket: mode, stale sockets,
//! time-outs, one client at a time, slow readers, shutdown and the hand-over at `quit`.

mod qmp_common;

use qmp_common::*;

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
