//! Incremental framing of a QMP input byte stream into JSON messages.
//!
//! QEMU's `json-streamer.c` splits the input into messages by counting braces
//! and brackets over the lexer's tokens; a message ends when the counts return
//! to zero, whatever line breaks there are. [`JsonStreamer`] does the same with
//! a small byte-level scanner (strings, escapes, nesting), buffers one message,
//! and hands the complete message to `serde_json`. So a client may send several
//! objects in one write, or one object split over many writes and lines.
//!
//! Error recovery is per message: a malformed message yields one
//! [`Frame::Error`] (`JSON parse error, ...`) and the scanner carries on with
//! the next byte, so the connection stays usable. Bytes that cannot start a
//! JSON value at top level are reported as `JSON parse error, stray '...'`
//! (one error per run of such bytes in one read).
//!
//! QEMU extension supported: single-quoted strings (`{'execute': 'stop'}`),
//! translated to ordinary JSON strings while buffering.
//!
//! Limits (QEMU's wording, smaller numbers): a message larger than the
//! configured maximum yields `JSON token size limit exceeded` and the rest of
//! that message is skipped without being buffered; nesting deeper than
//! [`MAX_NESTING`] yields `JSON nesting depth limit exceeded`.

use serde_json::Value;

/// Default bound on one message (1 MiB; QEMU allows 64 MiB).
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 1 << 20;

/// Maximum nesting of objects/arrays in one message (QEMU: 1024; lower here
/// so that `serde_json`'s own recursion limit of 128 is never the one hit).
pub(crate) const MAX_NESTING: usize = 100;

/// Maximum number of stray bytes quoted in one error message.
const STRAY_QUOTE_MAX: usize = 32;

/// One unit of input: a parsed JSON value or the description of a parse error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// A complete, syntactically valid JSON value (not necessarily an object).
    Message(Value),
    /// A malformed message; the string is the QMP error `desc`.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// In a top-level scalar (number, keyword, or string).
    Scalar,
    /// In an object or array.
    Compound,
}

/// Incremental message framer; see the module docs.
#[derive(Debug)]
pub(crate) struct JsonStreamer {
    max: usize,
    state: State,
    buf: Vec<u8>,
    depth: usize,
    /// Quote character of the string being scanned, if any.
    quote: Option<u8>,
    escape: bool,
    /// The current message already produced an error; skip it to its end.
    discard: bool,
    stray: Vec<u8>,
}

impl Default for JsonStreamer {
    fn default() -> Self {
        JsonStreamer::new(DEFAULT_MAX_MESSAGE)
    }
}

impl JsonStreamer {
    /// A streamer refusing messages larger than `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> JsonStreamer {
        JsonStreamer {
            max: max_message.max(2),
            state: State::Idle,
            buf: Vec::new(),
            depth: 0,
            quote: None,
            escape: false,
            discard: false,
            stray: Vec::new(),
        }
    }

    /// True when no partial message is buffered.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.state == State::Idle && self.stray.is_empty()
    }

    /// Feeds bytes; returns every message (or error) completed by them.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in data {
            self.byte(b, &mut out);
        }
        self.flush_stray(&mut out);
        out
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        match self.state {
            State::Idle => self.idle_byte(b, out),
            State::Scalar => {
                if self.quote.is_some() {
                    if self.string_byte(b, out) {
                        self.finish(out);
                    }
                } else if is_delimiter(b) {
                    self.finish(out);
                    self.idle_byte(b, out);
                } else {
                    self.push(&[b], out);
                }
            }
            State::Compound => {
                if self.quote.is_some() {
                    self.string_byte(b, out);
                    return;
                }
                match b {
                    b'"' | b'\'' => {
                        self.quote = Some(b);
                        self.push(b"\"", out);
                    }
                    b'{' | b'[' => {
                        self.depth += 1;
                        self.push(&[b], out);
                        if self.depth > MAX_NESTING {
                            self.fail("JSON nesting depth limit exceeded", out);
                        }
                    }
                    b'}' | b']' => {
                        self.depth -= 1;
                        self.push(&[b], out);
                        if self.depth == 0 {
                            self.finish(out);
                        }
                    }
                    _ => self.push(&[b], out),
                }
            }
        }
    }

    fn idle_byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        if is_stray(b) {
            self.stray.push(b);
            return;
        }
        self.flush_stray(out);
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'{' | b'[' => {
                self.state = State::Compound;
                self.depth = 1;
                self.push(&[b], out);
            }
            b'"' | b'\'' => {
                self.state = State::Scalar;
                self.quote = Some(b);
                self.push(b"\"", out);
            }
            // A closing bracket or separator cannot start a value: QEMU hands
            // the lone token to its parser, which reports "expecting value".
            b'}' | b']' | b',' | b':' => {
                out.push(Frame::Error("JSON parse error, expecting value".into()));
            }
            _ => {
                self.state = State::Scalar;
                self.push(&[b], out);
            }
        }
    }

    /// Handles one byte inside a string; returns true when the string closed.
    fn string_byte(&mut self, b: u8, out: &mut Vec<Frame>) -> bool {
        let quote = self.quote.unwrap_or(b'"');
        if self.escape {
            self.escape = false;
            if b == b'\'' {
                // `\'` is valid in QEMU's JSON dialect (both quote styles).
                self.push(b"'", out);
            } else {
                self.push(&[b'\\', b], out);
            }
            return false;
        }
        match b {
            b'\\' => {
                self.escape = true;
                false
            }
            _ if b == quote => {
                self.quote = None;
                self.push(b"\"", out);
                true
            }
            b'"' => {
                // Only reachable inside a single-quoted string.
                self.push(b"\\\"", out);
                false
            }
            _ => {
                self.push(&[b], out);
                false
            }
        }
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        if self.discard {
            return;
        }
        if self.buf.len() + bytes.len() > self.max {
            self.fail("JSON token size limit exceeded", out);
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Reports an error for the current message and skips the rest of it.
    fn fail(&mut self, desc: &str, out: &mut Vec<Frame>) {
        if !self.discard {
            out.push(Frame::Error(desc.to_string()));
            self.discard = true;
            self.buf = Vec::new();
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        let buf = std::mem::take(&mut self.buf);
        if !self.discard {
            out.push(parse_message(&buf));
        }
        self.state = State::Idle;
        self.depth = 0;
        self.quote = None;
        self.escape = false;
        self.discard = false;
    }

    fn flush_stray(&mut self, out: &mut Vec<Frame>) {
        if self.stray.is_empty() {
            return;
        }
        let n = self.stray.len().min(STRAY_QUOTE_MAX);
        let text = String::from_utf8_lossy(&self.stray[..n]).into_owned();
        out.push(Frame::Error(format!("JSON parse error, stray '{text}'")));
        self.stray.clear();
    }
}

/// Bytes that end a top-level scalar.
fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' | b'\''
    )
}

/// Bytes that cannot start any JSON token.
fn is_stray(b: u8) -> bool {
    !(b.is_ascii_alphanumeric()
        || matches!(
            b,
            b' ' | b'\t'
                | b'\r'
                | b'\n'
                | b'{'
                | b'}'
                | b'['
                | b']'
                | b','
                | b':'
                | b'"'
                | b'\''
                | b'-'
                | b'+'
                | b'.'
        ))
}

/// Parses one framed message.
fn parse_message(buf: &[u8]) -> Frame {
    match serde_json::from_slice::<Value>(buf) {
        Ok(v) => Frame::Message(v),
        Err(e) => {
            if !buf.is_empty() && buf.iter().all(u8::is_ascii_alphabetic) {
                let word = String::from_utf8_lossy(buf);
                return Frame::Error(format!("JSON parse error, invalid keyword '{word}'"));
            }
            Frame::Error(format!("JSON parse error, {}", serde_message(&e)))
        }
    }
}

/// Maps a `serde_json` error to QEMU's parser wording where one exists
/// (`qobject/json-parser.c`), else serde's own text without the position.
fn serde_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    match msg {
        "expected value" | "trailing comma" | "EOF while parsing a value" => "expecting value",
        "expected `:`" => "missing : in object pair",
        "key must be a string" => "key is not a string in object",
        "expected `,` or `}`" => "expected separator in dict",
        "expected `,` or `]`" => "expected separator in list",
        "invalid escape" => "invalid escape sequence in string",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs(frames: Vec<Frame>) -> Vec<Value> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Message(v) => v,
                Frame::Error(e) => panic!("unexpected error {e}"),
            })
            .collect()
    }

    #[test]
    fn several_objects_in_one_chunk() {
        let mut s = JsonStreamer::default();
        let f = s.feed(b"{\"a\": 1}{\"b\": [2, {\"c\": \"}\"}]}\r\n  {}");
        assert_eq!(
            msgs(f),
            vec![json!({"a": 1}), json!({"b": [2, {"c": "}"}]}), json!({})]
        );
        assert!(s.is_idle());
    }

    #[test]
    fn object_split_across_chunks_and_lines() {
        let mut s = JsonStreamer::default();
        let text = b"{\"execute\":\n \"query-status\", \"id\": \"a\\\"b\"}";
        let mut all = Vec::new();
        for chunk in text.chunks(3) {
            all.extend(s.feed(chunk));
        }
        assert_eq!(
            msgs(all),
            vec![json!({"execute": "query-status", "id": "a\"b"})]
        );
    }

    #[test]
    fn single_quoted_strings() {
        let mut s = JsonStreamer::default();
        let f = s.feed(br#"{'execute': 'stop', 'id': 'it\'s "x"'}"#);
        assert_eq!(
            msgs(f),
            vec![json!({"execute": "stop", "id": "it's \"x\""})]
        );
    }

    #[test]
    fn garbage_then_valid() {
        let mut s = JsonStreamer::default();
        let f = s.feed(b"garbage\r\n{\"execute\": \"stop\"}\r\n");
        assert_eq!(
            f,
            vec![
                Frame::Error("JSON parse error, invalid keyword 'garbage'".into()),
                Frame::Message(json!({"execute": "stop"})),
            ]
        );
        let f = s.feed(b"@@# {\"x\": } [1,] } 42 ");
        assert_eq!(
            f,
            vec![
                Frame::Error("JSON parse error, stray '@@#'".into()),
                Frame::Error("JSON parse error, expecting value".into()),
                Frame::Error("JSON parse error, expecting value".into()),
                Frame::Error("JSON parse error, expecting value".into()),
                Frame::Message(json!(42)),
            ]
        );
        let f = s.feed(b"{\"a\" 1}{1: 2}[1 2]{\"a\": 1 \"b\": 2}");
        let descs: Vec<_> = f
            .into_iter()
            .map(|f| match f {
                Frame::Error(e) => e,
                Frame::Message(v) => panic!("unexpected {v}"),
            })
            .collect();
        assert_eq!(
            descs,
            vec![
                "JSON parse error, missing : in object pair",
                "JSON parse error, key is not a string in object",
                "JSON parse error, expected separator in list",
                "JSON parse error, expected separator in dict",
            ]
        );
    }

    #[test]
    fn size_limit_skips_rest_of_message() {
        let mut s = JsonStreamer::new(64);
        let big = format!("{{\"execute\": \"{}\"}}{{\"ok\": true}}", "x".repeat(200));
        let f = s.feed(big.as_bytes());
        assert_eq!(
            f,
            vec![
                Frame::Error("JSON token size limit exceeded".into()),
                Frame::Message(json!({"ok": true})),
            ]
        );
        // A long top-level scalar is bounded too.
        let f = s.feed(format!("{} {{}}", "1".repeat(100)).as_bytes());
        assert_eq!(
            f,
            vec![
                Frame::Error("JSON token size limit exceeded".into()),
                Frame::Message(json!({})),
            ]
        );
    }

    #[test]
    fn nesting_limit() {
        let mut s = JsonStreamer::default();
        let deep = format!("{}{} {{}}", "[".repeat(200), "]".repeat(200));
        let f = s.feed(deep.as_bytes());
        assert_eq!(
            f,
            vec![
                Frame::Error("JSON nesting depth limit exceeded".into()),
                Frame::Message(json!({})),
            ]
        );
    }

    #[test]
    fn invalid_utf8_and_control_chars_are_errors() {
        let mut s = JsonStreamer::default();
        let f = s.feed(b"{\"a\": \"\xff\"}{\"a\": \"\x01\"}{}");
        assert_eq!(f.len(), 3);
        assert!(matches!(&f[0], Frame::Error(e) if e.starts_with("JSON parse error, ")));
        assert!(matches!(&f[1], Frame::Error(e) if e.starts_with("JSON parse error, ")));
        assert_eq!(f[2], Frame::Message(json!({})));
    }
}
