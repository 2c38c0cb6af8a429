//! The QMP protocol over a real Unix socket, with a fake VMM thread answering requests:
//! greeting, negotiation, envelopes, argument validation, framing, events, HMP.

mod qmp_common;

use qmp_common::*;

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
            json!({"mode": "cpr-luo"}),
            "Parameter 'mode' does not accept value 'cpr-luo'",
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
