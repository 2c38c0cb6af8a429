//! Framing and registry rules, with QEMU's messages.

mod common;

use std::sync::Arc;

use common::*;
use cpr_migration_file::QemuFile;
use cpr_savevm::*;

/// Offsets in the golden stream (see golden.rs).
const TIMER_FOOTER: usize = 43;
const DEV_TYPE: usize = 48;
const DEV_VERSION: usize = DEV_TYPE + 1 + 4 + 4 + 4;

fn golden() -> Vec<u8> {
    Machine::golden().save()
}

fn fresh() -> Machine {
    Machine::new(Timer::default(), Dev::default())
}

fn parse_err(m: &Machine, bytes: &[u8]) -> Error {
    m.parse(bytes).expect_err("stream must be refused")
}

#[test]
fn offsets_used_below_match_the_golden_stream() {
    let g = golden();
    assert_eq!(g[TIMER_FOOTER], 0x7e);
    assert_eq!(g[DEV_TYPE], 0x04);
    assert_eq!(g[DEV_VERSION..DEV_VERSION + 4], [0, 0, 0, 2]);
}

#[test]
fn unknown_section_has_qemus_message() {
    let timer = shared(Timer::default());
    let mut registry = Registry::new();
    registry
        .register_persist(
            Registration::new("timer", InstanceId::Id(0), OnLoad::Required),
            timer,
        )
        .unwrap();
    let mut f = QemuFile::from_bytes(golden(), "cpr-load");
    let e = load_device_state(&mut f, &registry).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unknown savevm section or instance 'dev' 0. Make sure that your current VM setup \
         matches your saved VM setup, including any hotplugged devices"
    );
    assert!(matches!(
        e,
        Error::UnknownSection { ref idstr, instance_id: 0, offset: 48 } if idstr == "dev"
    ));
}

#[test]
fn unknown_instance_is_an_unknown_section() {
    let mut registry = Registry::new();
    registry
        .register_persist(
            Registration::new("timer", InstanceId::Id(0), OnLoad::Required),
            shared(Timer::default()),
        )
        .unwrap();
    registry
        .register_persist(
            Registration::new("dev", InstanceId::Id(1), OnLoad::Optional),
            shared(Dev::default()),
        )
        .unwrap();
    let mut f = QemuFile::from_bytes(golden(), "cpr-load");
    assert!(matches!(
        load_device_state(&mut f, &registry),
        Err(Error::UnknownSection { instance_id: 0, .. })
    ));
}

#[test]
fn duplicate_registration_is_refused_and_any_takes_the_next_free_id() {
    let mut r = Registry::new();
    let reg = |inst| Registration::new("cpu", inst, OnLoad::Required);
    let a = r
        .register_persist(reg(InstanceId::Any), shared(Timer::default()))
        .unwrap();
    assert_eq!((a.instance_id, a.section_id), (0, 0));
    let b = r
        .register_persist(reg(InstanceId::Id(5)), shared(Timer::default()))
        .unwrap();
    assert_eq!((b.instance_id, b.section_id), (5, 1));
    let c = r
        .register_persist(reg(InstanceId::Any), shared(Timer::default()))
        .unwrap();
    assert_eq!((c.instance_id, c.section_id), (6, 2));
    let e = r
        .register_persist(reg(InstanceId::Id(5)), shared(Timer::default()))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "section 'cpu' instance 5 is already registered"
    );
    assert!(matches!(
        r.register_persist(reg(InstanceId::Id(u32::MAX)), shared(Timer::default())),
        Err(Error::ReservedInstanceId { .. })
    ));
    assert!(matches!(
        r.register_persist(
            Registration::new("x".repeat(256), InstanceId::Any, OnLoad::Required),
            shared(Timer::default())
        ),
        Err(Error::BadName { len: 256, .. })
    ));
    // A different idstr starts at 0 again.
    let d = r
        .register_persist(
            Registration::new("pic", InstanceId::Any, OnLoad::Required),
            shared(Timer::default()),
        )
        .unwrap();
    assert_eq!((d.instance_id, d.section_id), (0, 3));
    assert!(r.unregister("cpu", 5).is_some());
    assert!(r.unregister("cpu", 5).is_none());
    assert_eq!(r.len(), 3);
}

#[test]
fn priority_orders_the_stream_then_registration_order() {
    let mut r = Registry::new();
    for (name, prio) in [("a", 0), ("b", 10), ("c", 0), ("d", 10)] {
        r.register_persist(
            Registration::new(name, InstanceId::Any, OnLoad::Required).priority(prio),
            shared(Timer::default()),
        )
        .unwrap();
    }
    let order: Vec<_> = r
        .sections()
        .map(|s| (s.idstr.as_str(), s.section_id))
        .collect();
    assert_eq!(order, [("b", 1), ("d", 3), ("a", 0), ("c", 2)]);
}

#[test]
fn footer_mismatch_has_qemus_message() {
    let mut g = golden();
    g[TIMER_FOOTER + 4] = 7;
    let e = parse_err(&fresh(), &g);
    assert_eq!(
        e.to_string(),
        "Mismatched section id in footer for timer - read 0x7 expected 0x0"
    );
    assert!(matches!(
        e,
        Error::FooterMismatch {
            read: 7,
            expected: 0,
            ..
        }
    ));
}

#[test]
fn missing_footer_has_qemus_message() {
    let mut g = golden();
    g[TIMER_FOOTER] = 0x7f;
    let e = parse_err(&fresh(), &g);
    assert_eq!(e.to_string(), "Missing section footer for timer");
    assert!(matches!(
        e,
        Error::MissingFooter {
            found: Some(0x7f),
            offset: 43,
            ..
        }
    ));
}

#[test]
fn unknown_section_type_has_qemus_message() {
    let mut g = golden();
    g[DEV_TYPE] = 9;
    let e = parse_err(&fresh(), &g);
    assert_eq!(e.to_string(), "Unknown savevm section type 9");
    assert!(matches!(e, Error::UnknownSectionType { ty: 9, offset: 48 }));
}

#[test]
fn live_and_command_records_are_not_valid_in_a_device_state_stream() {
    for (ty, name) in [
        (0x01, "SECTION_START"),
        (0x02, "SECTION_PART"),
        (0x03, "SECTION_END"),
        (0x07, "CONFIGURATION"),
        (0x08, "COMMAND"),
    ] {
        let mut g = golden();
        g[DEV_TYPE] = ty;
        match parse_err(&fresh(), &g) {
            Error::UnexpectedSectionType {
                ty: t,
                name: n,
                offset: 48,
            } => {
                assert_eq!((t, n), (ty, name));
            }
            other => panic!("type {ty}: {other:?}"),
        }
    }
}

#[test]
fn section_version_too_new_has_savevm_message() {
    let mut g = golden();
    g[DEV_VERSION + 3] = 3;
    let e = parse_err(&fresh(), &g);
    assert_eq!(e.to_string(), "savevm: unsupported version 3 for 'dev' v2");
}

#[test]
fn section_version_too_old_is_wrapped_in_the_section_error() {
    let mut g = golden();
    g[DEV_VERSION + 3] = 0;
    let e = parse_err(&fresh(), &g);
    assert_eq!(
        chain(&e),
        "error while loading state for instance 0x0 of device 'dev': \
         dev: incoming version_id 0 is too old for local minimum version_id  1"
    );
    assert!(matches!(e, Error::LoadSection { section_id: 1, .. }));
}

fn v1_machine(x: u16) -> (Registry, Shared<DevV1>) {
    let dev = shared(DevV1 { x });
    let mut r = Registry::new();
    r.register_persist(
        Registration::new("timer", InstanceId::Id(0), OnLoad::Required),
        shared(Timer::default()),
    )
    .unwrap();
    r.register_persist(
        Registration::new("dev", InstanceId::Id(0), OnLoad::Required),
        Arc::clone(&dev),
    )
    .unwrap();
    (r, dev)
}

#[test]
fn older_build_stream_loads_with_defaults_for_newer_fields() {
    let (mut old, _) = v1_machine(0x4242);
    let mut f = QemuFile::memory_writer("old");
    save_device_state(&mut f, &mut old).unwrap();
    let bytes = f.into_bytes().unwrap();

    let mut m = Machine::new(
        Timer::default(),
        Dev {
            x: 1,
            flag: true,
            extra: DevExtra { v: 5 },
        },
    );
    let stats = m.load(&bytes).unwrap();
    assert_eq!(stats.sections[1].version_id, 1);
    assert_eq!(
        m.states().1,
        Dev {
            x: 0x4242,
            flag: false,
            extra: DevExtra::default()
        }
    );
}

#[test]
fn newer_build_stream_is_refused_by_older_loader() {
    let (old, dev) = v1_machine(0);
    let mut f = QemuFile::from_bytes(golden(), "cpr-load");
    let e = load_device_state(&mut f, &old).unwrap_err();
    assert!(matches!(
        e,
        Error::UnsupportedSectionVersion {
            version_id: 2,
            local_version_id: 1,
            ..
        }
    ));
    assert_eq!(dev.lock().unwrap().restores, 0);
}

#[test]
fn required_entry_missing_from_stream_is_fatal_optional_keeps_state() {
    let mut m = fresh();
    let pit = shared(Timer { a: 9, b: 9, c: 9 });
    m.registry
        .register_persist(
            Registration::new("pit", InstanceId::Id(0), OnLoad::Required),
            Arc::clone(&pit),
        )
        .unwrap();
    let e = parse_err(&m, &golden());
    assert_eq!(
        e.to_string(),
        "required section 'pit' instance 0 is missing from the stream"
    );

    let mut m = fresh();
    m.registry
        .register_persist(
            Registration::new("pit", InstanceId::Id(0), OnLoad::Optional),
            Arc::clone(&pit),
        )
        .unwrap();
    m.load(&golden()).unwrap();
    assert_eq!(pit.lock().unwrap().state, Timer { a: 9, b: 9, c: 9 });
    assert_eq!(pit.lock().unwrap().restores, 0);
    assert_eq!(m.restores(), 2);
}

#[test]
fn not_needed_section_is_left_out() {
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Maybe(u8);
    impl VmState for Maybe {
        const NAME: &'static str = "maybe";
        const VERSION_ID: u32 = 1;
        const MINIMUM_VERSION_ID: u32 = 1;
        fn needed(&self) -> bool {
            self.0 != 0
        }
        fn pre_save(&mut self) -> Result<()> {
            Ok(())
        }
        fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
            w.u8("v", self.0);
            Ok(())
        }
        fn load(r: &mut FieldReader<'_>, _v: u32) -> Result<Self> {
            Ok(Maybe(r.u8("v")?))
        }
        fn post_load(&mut self, _v: u32) -> Result<()> {
            Ok(())
        }
    }
    let mut m = Machine::golden();
    let maybe = shared(Maybe(0));
    m.registry
        .register_persist(
            Registration::new("maybe", InstanceId::Any, OnLoad::Optional),
            Arc::clone(&maybe),
        )
        .unwrap();
    let bytes = m.save();
    let loaded = m.parse(&bytes).unwrap();
    assert_eq!(loaded.sections().count(), 2);
    // The stream is the golden one (the entry got section id 2 but wrote
    // nothing).
    assert_eq!(bytes, golden());
    maybe.lock().unwrap().state.0 = 3;
    let bytes = m.save();
    assert_eq!(m.parse(&bytes).unwrap().sections().count(), 3);
}

#[test]
fn duplicate_section_in_stream_is_refused() {
    let g = golden();
    // magic+version, timer section twice, then EOF.
    let mut b = g[..DEV_TYPE].to_vec();
    b.extend_from_slice(&g[8..DEV_TYPE]);
    b.push(0);
    match parse_err(&fresh(), &b) {
        Error::DuplicateSection {
            idstr,
            instance_id: 0,
            offset: 48,
        } => assert_eq!(idstr, "timer"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_header_is_not_a_vmstate_file() {
    let mut g = golden();
    g[0] = b'X';
    let e = parse_err(&fresh(), &g);
    assert_eq!(
        chain(&e),
        "test-load is not a vmstate file: Not a migration stream"
    );

    for (version, msg) in [
        (2u8, "SaveVM v2 format is obsolete and don't work anymore"),
        (4, "Unsupported migration stream version"),
    ] {
        let mut g = golden();
        g[7] = version;
        let mut f = QemuFile::from_bytes(g, "x");
        assert_eq!(read_stream_header(&mut f).unwrap_err().to_string(), msg);
    }
}

#[test]
fn vmdesc_must_describe_the_sections() {
    let mut g = golden();
    let at = g.windows(6).position(|w| w == b"\"timer").unwrap();
    g[at + 5] = b'x'; // "timex"
    assert!(matches!(
        parse_err(&fresh(), &g),
        Error::VmdescMismatch { .. }
    ));
}

/// The vmdesc is the saver's, byte for byte: a description of fields the
/// sections do not hold, another page size or any other difference is
/// refused, even when it is valid JSON listing the right sections.
#[test]
fn vmdesc_must_be_the_savers() {
    let reason = |g: &[u8]| match parse_err(&fresh(), g) {
        Error::VmdescMismatch { reason } => reason,
        e => panic!("expected a vmdesc mismatch, got {e:?}"),
    };
    let mut g = golden();
    let at = g.windows(8).position(|w| w == b"\"uint32\"").unwrap();
    g[at + 6] = b'6'; // "uint36"
    assert_eq!(
        reason(&g),
        "device 0 ('timer' instance 0) does not describe the fields its section holds"
    );
    let mut g = golden();
    let at = g.windows(4).position(|w| w == b"4096").unwrap();
    g[at + 3] = b'7';
    assert_eq!(
        reason(&g),
        "it is not the description the saver writes for this stream"
    );
    let mut g = golden();
    let at = g.windows(6).position(|w| w == b"\"dev/e").unwrap();
    g[at + 5] = b'x'; // the subsection's vmsd name
    assert_eq!(
        reason(&g),
        "device 1 ('dev' instance 0) does not describe the fields its section holds"
    );
}

#[test]
fn registry_changed_after_parse_applies_nothing() {
    let mut m = fresh();
    let loaded = m.parse(&golden()).unwrap();
    m.registry
        .register_persist(
            Registration::new("late", InstanceId::Any, OnLoad::Optional),
            shared(Timer::default()),
        )
        .unwrap();
    assert!(matches!(
        loaded.apply(&mut m.registry),
        Err(Error::RegistryMismatch { .. })
    ));
    assert_eq!(m.restores(), 0);

    let other = fresh();
    let loaded = other.parse(&golden()).unwrap();
    let mut m = fresh();
    assert!(matches!(
        loaded.apply(&mut m.registry),
        Err(Error::RegistryMismatch { .. })
    ));
}

#[test]
fn failing_save_names_the_section_and_the_cause() {
    let mut m = Machine::golden();
    m.dev.lock().unwrap().fail_save = true;
    let mut f = QemuFile::memory_writer("cpr-save");
    let e = save_device_state(&mut f, &mut m.registry).unwrap_err();
    assert_eq!(
        chain(&e),
        "failed to save state for instance 0x0 of device 'dev': \
         dev: save_state failed: device refused to save"
    );
}

#[test]
fn raw_section_handler_and_apply_errors() {
    /// A handler that is not a single VmState: stages a u32, refuses to
    /// apply an odd one.
    struct Raw(u32);
    impl SectionHandler for Raw {
        fn vmsd_name(&self) -> &'static str {
            "raw"
        }
        fn version_id(&self) -> u32 {
            1
        }
        fn minimum_version_id(&self) -> u32 {
            1
        }
        fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<Saved> {
            w.u32("v", self.0);
            Ok(Saved::Written)
        }
        fn parse(&self, r: &mut FieldReader<'_>, _v: u32) -> Result<Staged> {
            Ok(Box::new(r.u32("v")?))
        }
        fn apply(&mut self, staged: Staged) -> Result<()> {
            let v = *staged
                .downcast::<u32>()
                .map_err(|_| Error::StagedType { vmsd: "raw" })?;
            if v % 2 == 1 {
                return Err(Error::InvalidState {
                    vmsd: "raw".into(),
                    reason: "odd".into(),
                });
            }
            self.0 = v;
            Ok(())
        }
    }
    for (v, ok) in [(4, true), (3, false)] {
        let mut r = Registry::new();
        r.register(
            Registration::new("raw", InstanceId::Id(0), OnLoad::Required),
            Box::new(Raw(v)),
        )
        .unwrap();
        let mut f = QemuFile::memory_writer("s");
        save_device_state(&mut f, &mut r).unwrap();
        let mut f = QemuFile::from_bytes(f.into_bytes().unwrap(), "l");
        let loaded = load_device_state(&mut f, &r).unwrap();
        assert_eq!(loaded.staged::<u32>("raw", 0), Some(&v));
        let res = loaded.apply(&mut r);
        assert_eq!(res.is_ok(), ok, "{res:?}");
        if let Err(e) = res {
            assert_eq!(
                chain(&e),
                "failed to apply state for instance 0x0 of device 'raw': raw: odd"
            );
        }
    }
}
