//! Unit tests for [`QemuFile`].

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use proptest::prelude::*;

use super::*;

/// One put and the get that must read it back.
#[derive(Debug, Clone)]
enum Op {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Buffer(Vec<u8>),
    Str(String),
}

fn put(f: &mut QemuFile, op: &Op) {
    match op {
        Op::U8(v) => f.put_u8(*v),
        Op::U16(v) => f.put_u16(*v),
        Op::U32(v) => f.put_u32(*v),
        Op::U64(v) => f.put_u64(*v),
        Op::I8(v) => f.put_i8(*v),
        Op::I16(v) => f.put_i16(*v),
        Op::I32(v) => f.put_i32(*v),
        Op::I64(v) => f.put_i64(*v),
        Op::Buffer(b) => f.put_buffer(b),
        Op::Str(s) => f.put_counted_string(s),
    }
}

/// Read `op` back; `Ok(false)` if a different value came back.
fn get(f: &mut QemuFile, op: &Op) -> Result<bool> {
    Ok(match op {
        Op::U8(v) => f.get_u8()? == *v,
        Op::U16(v) => f.get_u16()? == *v,
        Op::U32(v) => f.get_u32()? == *v,
        Op::U64(v) => f.get_u64()? == *v,
        Op::I8(v) => f.get_i8()? == *v,
        Op::I16(v) => f.get_i16()? == *v,
        Op::I32(v) => f.get_i32()? == *v,
        Op::I64(v) => f.get_i64()? == *v,
        Op::Buffer(b) => {
            let mut got = vec![0; b.len()];
            f.get_buffer(&mut got)?;
            got == *b
        }
        Op::Str(s) => f.get_counted_string()? == *s,
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::U8),
        4 => any::<u16>().prop_map(Op::U16),
        4 => any::<u32>().prop_map(Op::U32),
        4 => any::<u64>().prop_map(Op::U64),
        2 => any::<i8>().prop_map(Op::I8),
        2 => any::<i16>().prop_map(Op::I16),
        2 => any::<i32>().prop_map(Op::I32),
        2 => any::<i64>().prop_map(Op::I64),
        4 => prop::collection::vec(any::<u8>(), 0..100).prop_map(Op::Buffer),
        1 => prop::collection::vec(any::<u8>(), IO_BUF_SIZE - 9..IO_BUF_SIZE * 2 + 17)
            .prop_map(Op::Buffer),
        // At most 63 chars of at most 4 bytes: always a valid counted string.
        3 => "\\PC{0,63}".prop_map(Op::Str),
    ]
}

fn memory_stream(ops: &[Op]) -> (Vec<u8>, u64, u32) {
    let mut f = QemuFile::memory_writer("test-out");
    for op in ops {
        put(&mut f, op);
    }
    let (pos, crc) = (f.position(), f.crc32());
    let bytes = f
        .into_bytes()
        .unwrap_or_else(|e| panic!("memory writer failed: {e}"));
    (bytes, pos, crc)
}

/// Read all `ops` back and check the file is then exhausted.
fn read_all(f: &mut QemuFile, ops: &[Op]) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        assert!(get(f, op)?, "op {i} {op:?} read back a different value");
    }
    assert!(f.at_eof()?, "trailing bytes after the last op");
    Ok(())
}

pub(super) fn wronly_create() -> OFlag {
    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary puts round-trip through memory and through a real file
    /// opened with `open`, with equal bytes, CRC and position on all sides.
    #[test]
    fn roundtrip_memory_and_file(ops in prop::collection::vec(op_strategy(), 0..40)) {
        let (bytes, pos, crc) = memory_stream(&ops);
        prop_assert_eq!(pos, bytes.len() as u64);
        prop_assert_eq!(crc, crc32fast::hash(&bytes));

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stream");
        let mut out = QemuFile::open(&path, wronly_create(), Mode::from_bits_truncate(0o600), "t")?;
        prop_assert!(out.is_writable());
        for op in &ops {
            put(&mut out, op);
        }
        prop_assert_eq!(out.position(), pos);
        prop_assert_eq!(out.crc32(), crc);
        out.close()?;
        prop_assert!(std::fs::read(&path)? == bytes, "file and memory streams differ");

        for mut inp in [
            QemuFile::from_bytes(bytes.clone(), "mem-in"),
            QemuFile::open(&path, OFlag::O_RDONLY, Mode::empty(), "file-in")?,
        ] {
            prop_assert!(!inp.is_writable());
            read_all(&mut inp, &ops)?;
            prop_assert_eq!(inp.position(), pos);
            prop_assert_eq!(inp.crc32(), crc);
            prop_assert!(inp.error().is_none());
            inp.close()?;
        }
    }

    /// Cutting a valid stream anywhere makes some get fail with a latched
    /// `ShortRead` (never a panic, never a silent value).
    #[test]
    fn random_truncation_fails(ops in prop::collection::vec(op_strategy(), 1..20), cut in any::<prop::sample::Index>()) {
        let (bytes, _, _) = memory_stream(&ops);
        prop_assume!(!bytes.is_empty());
        let cut = cut.index(bytes.len());
        assert_truncation_fails(&bytes[..cut], &ops);
    }
}

fn assert_truncation_fails(truncated: &[u8], ops: &[Op]) {
    let mut f = QemuFile::from_bytes(truncated.to_vec(), "cut");
    let err = match read_all(&mut f, ops) {
        Ok(()) => panic!("a stream cut at {} read back completely", truncated.len()),
        Err(e) => e,
    };
    assert!(
        matches!(&err, Error::ShortRead { name, got, wanted, .. } if name == "cut" && got < wanted),
        "cut at {}: {err:?}",
        truncated.len()
    );
    assert!(f.error().is_some(), "short read not latched");
    // Latched: every later read fails with the same error.
    let again = f
        .get_u8()
        .expect_err("read after a latched error succeeded");
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(f.check().map_err(|e| e.to_string()), Err(err.to_string()));
}

#[test]
fn every_truncation_fails() {
    let ops = [
        Op::U8(0x07),
        Op::Str("0000:00:1f.0/ICH9LPC".to_owned()),
        Op::I16(-2),
        Op::U32(0x5145_564d),
        Op::Buffer((0..=255).cycle().take(IO_BUF_SIZE + 3).collect()),
        Op::I64(i64::MIN),
        Op::U64(u64::MAX),
        Op::Str(String::new()),
        Op::I32(-1),
        Op::U16(0xbeef),
        Op::I8(-128),
    ];
    let (bytes, _, _) = memory_stream(&ops);
    // Every cut near both ends and around the buffer boundary, and a
    // stride through the large buffer.
    let cuts = (0..bytes.len()).filter(|&c| {
        c < 64 || c + 64 > bytes.len() || c.abs_diff(IO_BUF_SIZE) < 64 || c % 509 == 0
    });
    for cut in cuts {
        assert_truncation_fails(&bytes[..cut], &ops);
    }
}

#[test]
fn golden_big_endian_bytes() -> Result<()> {
    let mut f = QemuFile::memory_writer("golden");
    f.put_u8(0x01);
    f.put_u16(0x0203);
    f.put_u32(0x0405_0607);
    f.put_u64(0x0809_0a0b_0c0d_0e0f);
    f.put_i8(-1);
    f.put_i16(-2);
    f.put_i32(-3);
    f.put_i64(-4);
    f.put_counted_string("ab");
    f.put_buffer(&[0xaa]);
    #[rustfmt::skip]
    let want: &[u8] = &[
        0x01,                                           // u8
        0x02, 0x03,                                     // be16
        0x04, 0x05, 0x06, 0x07,                         // be32
        0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, // be64
        0xff,                                           // i8 -1
        0xff, 0xfe,                                     // i16 -2
        0xff, 0xff, 0xff, 0xfd,                         // i32 -3
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc, // i64 -4
        0x02, b'a', b'b',                               // counted string
        0xaa,                                           // raw buffer
    ];
    assert_eq!(f.into_bytes()?, want);
    Ok(())
}

#[test]
fn counted_string_255_ok_256_latches() -> Result<()> {
    let ok = "x".repeat(255);
    let mut f = QemuFile::memory_writer("strings");
    f.put_counted_string(&ok);
    assert!(f.error().is_none());
    let bytes = f.into_bytes()?;
    assert_eq!((bytes.len(), bytes.first()), (256, Some(&255)));
    assert_eq!(QemuFile::from_bytes(bytes, "in").get_counted_string()?, ok);

    let mut f = QemuFile::memory_writer("strings");
    f.put_counted_string(&"y".repeat(256));
    assert!(matches!(
        f.error(),
        Some(Error::StringTooLong { len: 256, .. })
    ));
    assert_eq!(f.position(), 0, "part of an oversized string was written");
    f.put_u8(1);
    assert_eq!(f.position(), 0, "put after a latched error");
    assert!(matches!(
        f.into_bytes(),
        Err(Error::StringTooLong { len: 256, .. })
    ));
    Ok(())
}

#[test]
fn counted_string_invalid_utf8_is_latched() {
    let mut f = QemuFile::from_bytes(vec![0, 2, 0xff, 0xfe], "bad");
    assert_eq!(f.get_u8().ok(), Some(0));
    let err = f.get_counted_string().expect_err("accepted non-UTF-8");
    assert!(
        matches!(err, Error::InvalidUtf8 { offset: 1, .. }),
        "{err:?}"
    );
    assert!(matches!(f.error(), Some(Error::InvalidUtf8 { .. })));
}

#[test]
fn writes_to_input_and_reads_from_output_latch() {
    let mut inp = QemuFile::from_bytes(vec![1, 2, 3], "in");
    inp.put_u8(1);
    assert!(matches!(inp.error(), Some(Error::NotWritable { .. })));
    assert!(matches!(inp.get_u8(), Err(Error::NotWritable { .. })));

    let mut out = QemuFile::memory_writer("out");
    assert!(matches!(out.get_u8(), Err(Error::NotReadable { .. })));
    assert!(matches!(out.error(), Some(Error::NotReadable { .. })));
}

/// A reader handing out at most `chunk` bytes per call, then failing if
/// `fail` is set.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
    fail: bool,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len() - self.at);
        if n == 0 && self.fail {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn libc_eio() -> i32 {
    Errno::EIO as i32
}

pub(super) fn counting(n: usize) -> Vec<u8> {
    (0..=250u8).cycle().take(n).collect()
}

#[test]
fn peek_does_not_consume() -> Result<()> {
    let mut f = QemuFile::from_bytes(vec![5, 6, 7], "peek");
    assert_eq!(f.peek(2)?, &[5, 6]);
    assert_eq!(f.peek_u8()?, 5);
    assert_eq!((f.position(), f.crc32()), (0, crc32fast::hash(&[])));
    assert_eq!(f.get_u8()?, 5);
    assert_eq!(f.peek_u8()?, 6);
    assert_eq!(f.position(), 1);
    assert_eq!(f.crc32(), crc32fast::hash(&[5]));
    // At the end, peek returns fewer bytes rather than failing.
    assert_eq!(f.peek(8)?, &[6, 7]);
    f.skip(2)?;
    assert_eq!(f.peek(4)?, &[] as &[u8]);
    assert!(f.error().is_none(), "peek at EOF latched an error");
    assert!(matches!(
        f.peek_u8(),
        Err(Error::ShortRead {
            wanted: 1,
            got: 0,
            ..
        })
    ));
    assert!(f.error().is_some());
    Ok(())
}

#[test]
fn peek_across_buffer_refill() -> Result<()> {
    let data = counting(IO_BUF_SIZE * 2 + 100);
    let mut f = QemuFile::from_reader(
        Trickle {
            data: data.clone(),
            at: 0,
            chunk: 1000,
            fail: false,
        },
        "trickle",
    );
    let mut head = vec![0; IO_BUF_SIZE - 3];
    f.get_buffer(&mut head)?;
    assert_eq!(head, data[..IO_BUF_SIZE - 3]);
    // Straddles the end of the first buffer: needs a compaction + refill.
    let at = IO_BUF_SIZE - 3;
    assert_eq!(f.peek(10)?, &data[at..at + 10]);
    // A whole buffer's worth of look-ahead.
    assert_eq!(f.peek(IO_BUF_SIZE)?, &data[at..at + IO_BUF_SIZE]);
    assert_eq!(f.position(), at as u64);
    assert!(matches!(
        f.peek(IO_BUF_SIZE + 1),
        Err(Error::PeekTooLarge { .. })
    ));
    Ok(())
}

#[test]
fn skip_consumes_counts_and_hashes() -> Result<()> {
    let data = counting(IO_BUF_SIZE * 3);
    let mut f = QemuFile::from_reader(
        Trickle {
            data: data.clone(),
            at: 0,
            chunk: 4096,
            fail: false,
        },
        "skip",
    );
    f.skip(0)?;
    f.skip(IO_BUF_SIZE as u64 + 5)?;
    assert_eq!(f.position(), IO_BUF_SIZE as u64 + 5);
    assert_eq!(f.get_u8()?, data[IO_BUF_SIZE + 5]);
    assert_eq!(f.crc32(), crc32fast::hash(&data[..IO_BUF_SIZE + 6]));
    f.reset_crc();
    let rest = (data.len() - IO_BUF_SIZE - 6) as u64;
    let err = f.skip(rest + 1).expect_err("skipped past the end");
    assert!(
        matches!(err, Error::ShortRead { wanted, got, .. } if wanted == rest + 1 && got == rest),
        "{err:?}"
    );
    assert!(f.error().is_some());
    Ok(())
}

#[test]
fn read_error_is_returned_and_latched() {
    let mut f = QemuFile::from_reader(
        Trickle {
            data: vec![1, 2],
            at: 0,
            chunk: 1,
            fail: true,
        },
        "eio",
    );
    assert_eq!(f.get_u8().ok(), Some(1));
    let err = f.get_u16().expect_err("read past a failing reader");
    assert!(
        matches!(&err, Error::Read { name, .. } if name == "eio"),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(Errno::EIO));
    assert!(
        err.to_string()
            .starts_with("Unable to read from file 'eio'")
    );
    assert!(matches!(f.at_eof(), Err(Error::Read { .. })));
    assert!(matches!(f.check(), Err(Error::Read { .. })));
}

/// A writer accepting `limit` bytes in total, then failing.
struct Limited(Arc<Mutex<Vec<u8>>>, usize);

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut v = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let n = buf.len().min(self.1 - v.len());
        if n == 0 {
            return Err(io::Error::from_raw_os_error(Errno::ENOSPC as i32));
        }
        v.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_error_reports_offset() {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let mut f = QemuFile::from_writer(Limited(sink.clone(), 10), "limited");
    f.put_buffer(&[0; 16]);
    let err = f.flush().expect_err("write past the limit succeeded");
    assert!(matches!(err, Error::Write { offset: 10, .. }), "{err:?}");
    assert!(matches!(f.into_bytes(), Err(Error::Write { .. })));
}

#[test]
fn drop_flushes_best_effort_and_into_bytes_needs_memory() {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let mut f = QemuFile::from_writer(Limited(sink.clone(), 100), "dropped");
    f.put_u32(0xdead_beef);
    drop(f);
    assert_eq!(
        sink.lock().map(|v| v.clone()).ok(),
        Some(vec![0xde, 0xad, 0xbe, 0xef])
    );

    let f = QemuFile::from_writer(Limited(sink, 100), "w");
    assert!(matches!(f.into_bytes(), Err(Error::NotMemory { .. })));
}

#[test]
fn qemu_file_is_send() {
    fn send<T: Send>() {}
    send::<QemuFile>();
    send::<Error>();
    fn sync<T: Sync>() {}
    sync::<Error>();
}

/// Shared input: the same gets as a buffered one, `get_slice` borrows, no seeking.
#[test]
fn shared_input_reads_in_place() {
    let mut w = QemuFile::memory_writer("w");
    w.put_u32(0xdead_beef);
    w.put_counted_string("abc");
    w.put_buffer(&[7; 5000]);
    w.put_u8(9);
    let bytes = Arc::new(w.into_bytes().expect("bytes"));
    let mut plain = QemuFile::from_bytes(bytes.to_vec(), "p");
    let mut f = QemuFile::from_shared(bytes.clone(), "s");
    let shared: Arc<dyn crate::SharedInput> = bytes.clone();
    assert!(f.shared_bytes().is_some_and(|b| Arc::ptr_eq(b, &shared)));
    assert!(plain.shared_bytes().is_none());
    assert!(matches!(f.seek_to(0), Err(Error::NotSeekable { .. })));
    for g in [&mut plain, &mut f] {
        assert_eq!(g.get_u32().expect("u32"), 0xdead_beef);
        assert_eq!(g.get_counted_string().expect("str"), "abc");
        assert_eq!(g.peek(2).expect("peek"), &[7, 7]);
        assert_eq!(g.get_slice(4096).expect("slice"), &[7; 4096][..]);
        g.skip(904).expect("skip");
        assert_eq!(g.peek(10).expect("peek"), &[9]);
        assert!(matches!(
            g.get_slice(2),
            Err(Error::ShortRead {
                wanted: 2,
                got: 1,
                ..
            })
        ));
    }
    assert_eq!(f.position(), plain.position());
    assert_eq!(f.crc32(), plain.crc32());
    assert_eq!(f.crc32(), crc32fast::hash(&bytes[..bytes.len() - 1]));

    // Not hashed any more once disabled.
    let mut f = QemuFile::from_shared(bytes.clone(), "s");
    f.get_u32().expect("u32");
    let after_four = f.crc32();
    f.disable_crc();
    f.skip(100).expect("skip");
    assert_eq!(f.crc32(), after_four);
}
