//! VMState rules: field encodings, version gating, subsections.

use super::*;

/// Version 3 state: `b` added in v2, `c` in v3; subsections `s/one` and
/// `s/two` (needed when non-zero), `s/one` has its own `s/one/deep`.
#[derive(Debug, Clone, Default, PartialEq)]
struct S {
    a: u32,
    b: Option<u16>,
    c: i64,
    one: One,
    two: Two,
    pre_saved: bool,
    post_loaded: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct One {
    v: u8,
    deep: Deep,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Two {
    v: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Deep {
    v: i8,
}

impl VmState for S {
    const NAME: &'static str = "s";
    const VERSION_ID: u32 = 3;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        self.pre_saved = true;
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u32("a", self.a);
        w.u16("b", self.b.unwrap_or(0));
        w.i64("c", self.c);
        w.subsection(&mut self.one)?;
        w.subsection(&mut self.two)
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        Ok(S {
            a: r.u32("a")?,
            b: r.since(2, |r| r.u16("b"))?,
            c: r.since(3, |r| r.i64("c"))?.unwrap_or(-1),
            one: r.subsection()?.unwrap_or_default(),
            two: r.subsection()?.unwrap_or_default(),
            pre_saved: false,
            post_loaded: None,
        })
    }
    fn post_load(&mut self, version_id: u32) -> Result<()> {
        // Runs after the subsections.
        if self.one.v == 0xff {
            return Err(Error::InvalidState {
                vmsd: Self::NAME.into(),
                reason: "one.v is 0xff".into(),
            });
        }
        self.post_loaded = Some(version_id);
        Ok(())
    }
}

macro_rules! plain_sub {
    ($t:ty, $name:literal, $field:ident : $ft:ident) => {
        impl VmState for $t {
            const NAME: &'static str = $name;
            const VERSION_ID: u32 = 1;
            const MINIMUM_VERSION_ID: u32 = 1;
            fn needed(&self) -> bool {
                self.$field != 0
            }
            fn pre_save(&mut self) -> Result<()> {
                Ok(())
            }
            fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
                w.$ft("v", self.$field);
                Ok(())
            }
            fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
                Ok(Self {
                    $field: r.$ft("v")?,
                })
            }
            fn post_load(&mut self, _version_id: u32) -> Result<()> {
                Ok(())
            }
        }
    };
}

plain_sub!(Two, "s/two", v: u64);
plain_sub!(Deep, "s/one/deep", v: i8);

impl VmState for One {
    const NAME: &'static str = "s/one";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        self.v != 0
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u8("v", self.v);
        w.subsection(&mut self.deep)
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        Ok(One {
            v: r.u8("v")?,
            deep: r.subsection()?.unwrap_or_default(),
        })
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

fn sub_header(name: &str, version: u32) -> Vec<u8> {
    let mut v = vec![QEMU_VM_SUBSECTION, u8::try_from(name.len()).unwrap()];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v
}

fn encode(s: &mut S) -> Vec<u8> {
    encode_vmstate(s).unwrap().unwrap().0
}

/// `a`, `b`, `c` of a plain `S { a: 7, b: 8, c: -2 }`.
const FIELDS_V3: &[u8] = &[
    0, 0, 0, 7, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
];

fn plain() -> S {
    S {
        a: 7,
        b: Some(8),
        c: -2,
        ..S::default()
    }
}

#[test]
fn fields_are_big_endian_and_pre_save_runs() {
    let mut s = plain();
    assert_eq!(encode(&mut s), FIELDS_V3);
    assert!(s.pre_saved);
}

#[test]
fn round_trip_runs_post_load_with_stream_version() {
    let mut s = plain();
    s.one.v = 5;
    s.one.deep.v = -3;
    s.two.v = u64::MAX;
    let bytes = encode(&mut s);
    let back = decode_vmstate::<S>(bytes, 3).unwrap();
    assert_eq!(back.post_loaded, Some(3));
    assert_eq!((back.a, back.b, back.c), (7, Some(8), -2));
    assert_eq!(back.one, s.one);
    assert_eq!(back.two, s.two);
}

#[test]
fn version_too_new_is_refused() {
    let e = decode_vmstate::<S>(FIELDS_V3.to_vec(), 4).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s: incoming version_id 4 is too new for local version_id 3"
    );
    assert!(matches!(
        e,
        Error::VersionTooNew {
            version_id: 4,
            local_version_id: 3,
            ..
        }
    ));
}

#[test]
fn version_too_old_is_refused() {
    let e = decode_vmstate::<S>(FIELDS_V3.to_vec(), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s: incoming version_id 0 is too old for local minimum version_id  1"
    );
    assert!(matches!(
        e,
        Error::VersionTooOld {
            version_id: 0,
            minimum_version_id: 1,
            ..
        }
    ));
}

#[test]
fn fields_added_later_are_absent_in_older_streams() {
    // Version 1: only `a`.
    let v1 = decode_vmstate::<S>(vec![0, 0, 0, 7], 1).unwrap();
    assert_eq!((v1.a, v1.b, v1.c, v1.post_loaded), (7, None, -1, Some(1)));
    // Version 2: `a`, `b`.
    let v2 = decode_vmstate::<S>(vec![0, 0, 0, 7, 0, 9], 2).unwrap();
    assert_eq!((v2.b, v2.c), (Some(9), -1));
}

#[test]
fn needed_subsection_is_written_and_not_needed_is_absent() {
    let mut s = plain();
    s.two.v = 0x0102;
    let mut expect = FIELDS_V3.to_vec();
    expect.extend(sub_header("s/two", 1));
    expect.extend_from_slice(&0x0102u64.to_be_bytes());
    assert_eq!(encode(&mut s), expect);

    // Neither needed: fields only, and both default on load.
    let back = decode_vmstate::<S>(FIELDS_V3.to_vec(), 3).unwrap();
    assert_eq!(
        (back.one.clone(), back.two.clone()),
        (One::default(), Two::default())
    );
}

#[test]
fn nested_subsection_round_trips_and_is_described() {
    let mut s = plain();
    s.one = One {
        v: 1,
        deep: Deep { v: 2 },
    };
    let (bytes, desc) = encode_vmstate(&mut s).unwrap().unwrap();
    let mut expect = FIELDS_V3.to_vec();
    expect.extend(sub_header("s/one", 1));
    expect.push(1);
    expect.extend(sub_header("s/one/deep", 1));
    expect.push(2);
    assert_eq!(bytes, expect);
    assert_eq!(desc.subsections.len(), 1);
    assert_eq!(desc.subsections[0].subsections[0].vmsd_name, "s/one/deep");
    assert_eq!(decode_vmstate::<S>(bytes, 3).unwrap().one, s.one);
}

#[test]
fn unknown_subsection_with_parent_prefix_is_an_error() {
    let mut bytes = FIELDS_V3.to_vec();
    bytes.extend(sub_header("s/three", 1));
    bytes.push(0);
    match decode_vmstate::<S>(bytes, 3) {
        Err(Error::UnknownSubsection {
            parent,
            name,
            offset,
        }) => {
            assert_eq!(
                (parent.as_str(), name.as_str(), offset),
                ("s", "s/three", 14)
            );
        }
        other => panic!("expected UnknownSubsection, got {other:?}"),
    }
}

#[test]
fn subsection_out_of_declared_order_is_unknown() {
    // `s/two` then `s/one`: the reader takes them in declaration order.
    let mut bytes = FIELDS_V3.to_vec();
    bytes.extend(sub_header("s/two", 1));
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend(sub_header("s/one", 1));
    bytes.push(1);
    assert!(matches!(
        decode_vmstate::<S>(bytes, 3),
        Err(Error::UnknownSubsection { .. })
    ));
}

#[test]
fn subsection_with_wrong_prefix_stops_without_consuming() {
    let mut bytes = FIELDS_V3.to_vec();
    let foreign = sub_header("other/x", 1);
    bytes.extend(&foreign);
    let mut f = QemuFile::from_bytes(bytes, "t");
    let s = FieldReader::new(&mut f, "s", 3).read_state::<S>().unwrap();
    assert_eq!(s.one, One::default());
    assert_eq!(f.position(), FIELDS_V3.len() as u64);
    assert_eq!(f.peek(foreign.len()).unwrap(), &foreign[..]);
}

#[test]
fn short_or_truncated_subsection_header_stops() {
    // Length byte too short to hold "s" + one more byte: not ours.
    let mut bytes = FIELDS_V3.to_vec();
    bytes.extend([QEMU_VM_SUBSECTION, 1, b's']);
    let mut f = QemuFile::from_bytes(bytes.clone(), "t");
    FieldReader::new(&mut f, "s", 3).read_state::<S>().unwrap();
    assert_eq!(f.position(), FIELDS_V3.len() as u64);
    // Name cut off by end of stream: stop too (the caller then fails).
    let mut bytes = FIELDS_V3.to_vec();
    bytes.extend([QEMU_VM_SUBSECTION, 9, b's', b'/']);
    let mut f = QemuFile::from_bytes(bytes, "t");
    FieldReader::new(&mut f, "s", 3).read_state::<S>().unwrap();
    assert_eq!(f.position(), FIELDS_V3.len() as u64);
}

#[test]
fn subsection_version_is_checked() {
    let mut bytes = FIELDS_V3.to_vec();
    bytes.extend(sub_header("s/two", 2));
    bytes.extend_from_slice(&1u64.to_be_bytes());
    match decode_vmstate::<S>(bytes, 3) {
        Err(e @ Error::VersionTooNew { .. }) => assert_eq!(
            e.to_string(),
            "s/two: incoming version_id 2 is too new for local version_id 1"
        ),
        other => panic!("expected VersionTooNew, got {other:?}"),
    }
}

#[test]
fn post_load_runs_after_subsections() {
    let mut s = plain();
    s.one.v = 0xff;
    let bytes = encode(&mut s);
    assert!(matches!(
        decode_vmstate::<S>(bytes, 3),
        Err(Error::InvalidState { .. })
    ));
}

#[test]
fn badly_named_subsection_is_refused_on_save() {
    #[derive(Default)]
    struct Bad;
    impl VmState for Bad {
        const NAME: &'static str = "sx";
        const VERSION_ID: u32 = 1;
        const MINIMUM_VERSION_ID: u32 = 1;
        fn needed(&self) -> bool {
            true
        }
        fn pre_save(&mut self) -> Result<()> {
            Ok(())
        }
        fn save(&mut self, _w: &mut FieldWriter<'_>) -> Result<()> {
            Ok(())
        }
        fn load(_r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
            Ok(Bad)
        }
        fn post_load(&mut self, _v: u32) -> Result<()> {
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut desc = VmsdDesc::new("s", 1);
    let e = FieldWriter::new(&mut out, &mut desc)
        .subsection(&mut Bad)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "subsection name 'sx' does not start with 's/'"
    );
}

#[test]
fn bool_accepts_only_zero_and_one() {
    let mut f = QemuFile::from_bytes(vec![0, 1, 2], "t");
    let mut r = FieldReader::new(&mut f, "b", 1);
    assert!(!r.bool("f0").unwrap());
    assert!(r.bool("f1").unwrap());
    assert!(matches!(
        r.bool("f2"),
        Err(Error::InvalidBool {
            value: 2,
            field: "f2",
            ..
        })
    ));
}

#[test]
fn arrays_are_counted_capped_and_described_compactly() {
    let mut out = Vec::new();
    let mut desc = VmsdDesc::new("cpu", 1);
    let mut w = FieldWriter::new(&mut out, &mut desc);
    w.array("msrs", &[1u64, 2, 3]).unwrap();
    w.array_fixed("pic", &[0xaau8, 0xbb]).unwrap();
    w.buffer("xsave", &[9; 4]);
    assert_eq!(
        out,
        [
            0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3,
            0xaa, 0xbb, 9, 9, 9, 9
        ]
    );
    let json = serde_json::to_string(&desc.fields).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"[{"name":"msrs.count","type":"uint32","size":4},"#,
            r#"{"name":"msrs","array_len":3,"type":"uint64","size":8},"#,
            r#"{"name":"pic","array_len":2,"type":"uint8","size":1},"#,
            r#"{"name":"xsave","type":"buffer","size":4}]"#
        )
    );

    let mut f = QemuFile::from_bytes(out.clone(), "t");
    let mut r = FieldReader::new(&mut f, "cpu", 1);
    assert_eq!(r.array::<u64>("msrs", 3).unwrap(), [1, 2, 3]);
    assert_eq!(r.array_fixed::<u8>("pic", 2).unwrap(), [0xaa, 0xbb]);
    assert_eq!(r.buffer::<4>("xsave").unwrap(), [9; 4]);

    let mut f = QemuFile::from_bytes(out, "t");
    let mut r = FieldReader::new(&mut f, "cpu", 1);
    assert!(matches!(
        r.array::<u64>("msrs", 2),
        Err(Error::ArrayTooLong { len: 3, max: 2, .. })
    ));
}

#[test]
fn short_field_names_the_field() {
    let mut f = QemuFile::from_bytes(vec![0, 0], "t");
    let e = FieldReader::new(&mut f, "timer", 1)
        .u32("expire")
        .unwrap_err();
    assert_eq!(e.to_string(), "Failed to load timer:expire");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn not_needed_top_level_state_encodes_to_none() {
    let mut two = Two::default();
    assert!(encode_vmstate(&mut two).unwrap().is_none());
}
