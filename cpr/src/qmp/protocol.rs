//! QMP wire format: output encoding, greeting, replies, events, and the
//! request envelope check (QEMU's `qmp_dispatch_check_obj()`).

use super::error::QmpError;
use serde::{Deserialize, Serialize};
use serde_json::ser::{CharEscape, Formatter};
use serde_json::{Map, Value};
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

/// QEMU version triple, as in `query-version` and the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Micro version.
    pub micro: u32,
    /// Minor version.
    pub minor: u32,
    /// Major version.
    pub major: u32,
}

/// `VersionInfo` (`query-version` return value, greeting `version` member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The QEMU version claimed.
    pub qemu: VersionTriple,
    /// Package string (`cpr-vm <crate version>`).
    pub package: String,
}

/// Event timestamp: host wall-clock time when the event was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (-1 if the host clock failed).
    pub seconds: i64,
    /// Microseconds within the second (-1 if the host clock failed).
    pub microseconds: i64,
}

impl Timestamp {
    /// The current wall-clock time (`{-1, -1}` if it is before the epoch,
    /// as QEMU does when `g_get_real_time()` fails).
    pub fn now() -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            Err(_) => Timestamp {
                seconds: -1,
                microseconds: -1,
            },
        }
    }
}

#[derive(Serialize)]
struct Greeting<'a> {
    #[serde(rename = "QMP")]
    qmp: GreetingBody<'a>,
}

#[derive(Serialize)]
struct GreetingBody<'a> {
    version: &'a VersionInfo,
    capabilities: [&'static str; 0],
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "return", skip_serializing_if = "Option::is_none")]
    ret: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a QmpError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct EventMsg<'a> {
    timestamp: Timestamp,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
}

/// The greeting line: `{"QMP": {"version": ..., "capabilities": []}}` + CRLF.
/// No capability is offered (no `oob`: there is no monitor I/O thread).
pub(crate) fn greeting_line(version: &VersionInfo) -> String {
    to_wire(&Greeting {
        qmp: GreetingBody {
            version,
            capabilities: [],
        },
    })
}

/// A reply line: `{"return": ...}` or `{"error": ...}`, with `id` if given.
pub(crate) fn reply_line(result: &Result<Value, QmpError>, id: Option<&Value>) -> String {
    let reply = match result {
        Ok(v) => Reply {
            ret: Some(v),
            error: None,
            id,
        },
        Err(e) => Reply {
            ret: None,
            error: Some(e),
            id,
        },
    };
    to_wire(&reply)
}

/// An event line: `{"timestamp": {...}, "event": NAME, "data": ...}` + CRLF.
pub(crate) fn event_line(name: &str, data: Option<&Value>, timestamp: Timestamp) -> String {
    to_wire(&EventMsg {
        timestamp,
        event: name,
        data,
    })
}

/// Serialises a message as QEMU does: compact with `", "` and `": "`
/// separators, ASCII only (non-ASCII and DEL escaped as `\uXXXX`, UTF-16
/// surrogate pairs above U+FFFF), terminated by CRLF.
pub(crate) fn to_wire<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
    // Serialising serde_json values and our derived types cannot fail
    // (string keys only); fall back to an empty object defensively.
    if value.serialize(&mut ser).is_err() {
        out = b"{}".to_vec();
    }
    out.extend_from_slice(b"\r\n");
    // The formatter emits ASCII only.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// serde_json formatter reproducing QEMU's `qobject_to_json()` layout.
struct QemuFormatter;

impl Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\u{7f}' {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{:04X}", u)?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{:04X}", b),
        };
        w.write_all(s)
    }
}

/// A request that passed the envelope check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    /// Value of `execute`.
    pub execute: String,
    /// Value of `arguments` (empty if absent).
    pub arguments: Map<String, Value>,
    /// Value of `id`, echoed verbatim in the reply.
    pub id: Option<Value>,
}

/// QEMU's `qmp_dispatch_check_obj()` (out-of-band never allowed): checks the
/// request envelope. On error returns the error and the `id` to echo, if any.
pub(crate) fn check_envelope(request: Value) -> Result<Envelope, (QmpError, Option<Value>)> {
    let Value::Object(mut dict) = request else {
        return Err((QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = dict.remove("id");
    for (key, value) in &dict {
        let err = match key.as_str() {
            "execute" if !value.is_string() => "QMP input member 'execute' must be a string".into(),
            "arguments" if !value.is_object() => {
                "QMP input member 'arguments' must be an object".into()
            }
            "execute" | "arguments" => continue,
            other => format!("QMP input member '{other}' is unexpected"),
        };
        return Err((QmpError::generic(err), id));
    }
    let execute = match dict.remove("execute") {
        Some(Value::String(s)) => s,
        _ => {
            return Err((QmpError::generic("QMP input lacks member 'execute'"), id));
        }
    };
    let arguments = match dict.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Envelope {
        execute,
        arguments,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_layout_matches_qemu() {
        let v = json!({"return": {"a": [1, 2], "b": "x"}});
        assert_eq!(
            to_wire(&v),
            "{\"return\": {\"a\": [1, 2], \"b\": \"x\"}}\r\n"
        );
        assert_eq!(to_wire(&json!([])), "[]\r\n");
        assert_eq!(to_wire(&json!({})), "{}\r\n");
    }

    #[test]
    fn output_is_ascii() {
        let line = to_wire(&json!({"s": "é€\u{1F600}\u{7f}\u{1}\"\\\n"}));
        assert!(line.is_ascii());
        assert_eq!(
            line,
            "{\"s\": \"\\u00E9\\u20AC\\uD83D\\uDE00\\u007F\\u0001\\\"\\\\\\n\"}\r\n"
        );
        let back: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back["s"], "é€\u{1F600}\u{7f}\u{1}\"\\\n");
    }

    #[test]
    fn greeting_shape() {
        let v = VersionInfo {
            qemu: VersionTriple {
                micro: 0,
                minor: 2,
                major: 6,
            },
            package: "cpr-vm 0.1.0".into(),
        };
        assert_eq!(
            greeting_line(&v),
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 6}, \
             \"package\": \"cpr-vm 0.1.0\"}, \"capabilities\": []}}\r\n"
        );
    }

    #[test]
    fn replies_and_events() {
        assert_eq!(
            reply_line(&Ok(json!({})), Some(&json!({"a": 1}))),
            "{\"return\": {}, \"id\": {\"a\": 1}}\r\n"
        );
        assert_eq!(
            reply_line(&Err(QmpError::generic("x")), None),
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\r\n"
        );
        let ts = Timestamp {
            seconds: 5,
            microseconds: 7,
        };
        assert_eq!(
            event_line("STOP", None, ts),
            "{\"timestamp\": {\"seconds\": 5, \"microseconds\": 7}, \"event\": \"STOP\"}\r\n"
        );
        assert!(event_line("X", Some(&json!({"k": 1})), ts).contains("\"data\": {\"k\": 1}"));
    }

    #[test]
    fn envelope_checks() {
        let e = |v: Value| check_envelope(v).unwrap_err();
        assert_eq!(e(json!([1])).0.desc, "QMP input must be a JSON object");
        assert_eq!(e(json!([1])).1, None);
        let (err, id) = e(json!({"id": 7}));
        assert_eq!(err.desc, "QMP input lacks member 'execute'");
        assert_eq!(id, Some(json!(7)));
        assert_eq!(
            e(json!({"execute": 1})).0.desc,
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            e(json!({"execute": "x", "arguments": []})).0.desc,
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            e(json!({"execute": "x", "foo": 1})).0.desc,
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            e(json!({"exec-oob": "x"})).0.desc,
            "QMP input member 'exec-oob' is unexpected"
        );
        let ok = check_envelope(json!({"execute": "stop", "id": "a"})).unwrap();
        assert_eq!(ok.execute, "stop");
        assert!(ok.arguments.is_empty());
        assert_eq!(ok.id, Some(json!("a")));
    }
}
