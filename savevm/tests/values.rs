//! Sections as plain values: [`ValueSection`] saves a value it holds, and
//! [`LoadedState::take`] hands parsed values out instead of applying them.

mod common;

use common::*;
use cpr_migration_file::QemuFile;
use cpr_savevm::*;

fn timer() -> Timer {
    Timer {
        a: 1,
        b: 2,
        c: 0x0102_0304_0506_0708,
    }
}

fn dev() -> Dev {
    Dev {
        x: 0x1234,
        flag: true,
        extra: DevExtra { v: 0xdead_beef },
    }
}

/// The golden machine's sections as values: `Some` to save, `None` to load.
fn registry(values: Option<(Timer, Dev)>) -> Registry {
    let (t, d) = values.unzip();
    let mut r = Registry::new();
    r.register(
        Registration::new("timer", InstanceId::Id(0), OnLoad::Required),
        Box::new(t.map_or_else(ValueSection::empty, ValueSection::new)),
    )
    .expect("timer");
    r.register(
        Registration::new("dev", InstanceId::Id(0), OnLoad::Required),
        Box::new(d.map_or_else(ValueSection::empty, ValueSection::new)),
    )
    .expect("dev");
    r
}

fn save(registry: &mut Registry) -> Result<Vec<u8>> {
    let mut f = QemuFile::memory_writer("test-save");
    save_device_state(&mut f, registry)?;
    Ok(f.into_bytes().expect("memory file"))
}

fn parse(bytes: &[u8], registry: &Registry) -> Result<LoadedState> {
    load_device_state(
        &mut QemuFile::from_bytes(bytes.to_vec(), "test-load"),
        registry,
    )
}

#[test]
fn value_sections_write_the_components_bytes() {
    // The same stream as the golden machine's components give.
    let bytes = save(&mut registry(Some((timer(), dev())))).expect("save");
    assert_eq!(bytes, Machine::golden().save());
}

#[test]
fn values_are_taken_out_of_the_loaded_state() {
    let bytes = Machine::golden().save();
    let mut loaded = parse(&bytes, &registry(None)).expect("parse");
    assert_eq!(loaded.take::<Timer>("timer", 0).expect("timer"), timer());
    assert_eq!(loaded.take::<Dev>("dev", 0).expect("dev"), dev());
    // Taken once only.
    let again = loaded.take::<Timer>("timer", 0).expect_err("already taken");
    assert!(
        matches!(&again, Error::NotLoaded { idstr, instance_id: 0 } if idstr == "timer"),
        "{again:?}"
    );
    assert_eq!(
        again.to_string(),
        "no parsed state for instance 0x0 of device 'timer'"
    );
    assert!(loaded.staged::<Timer>("timer", 0).is_none());
    // Not in the stream.
    assert!(matches!(
        loaded.take::<Timer>("timer", 1),
        Err(Error::NotLoaded { .. })
    ));
}

#[test]
fn a_wrong_type_leaves_the_value_in_place() {
    let bytes = Machine::golden().save();
    let mut loaded = parse(&bytes, &registry(None)).expect("parse");
    let e = loaded
        .take::<Dev>("timer", 0)
        .expect_err("a timer is no dev");
    assert!(matches!(e, Error::StagedType { vmsd: "dev" }), "{e:?}");
    assert_eq!(
        loaded.take::<Timer>("timer", 0).expect("still there"),
        timer()
    );
}

#[test]
fn taken_sections_are_not_applied() {
    let mut m = Machine::new(Timer::default(), Dev::default());
    let mut loaded = m.parse(&Machine::golden().save()).expect("parse");
    assert_eq!(loaded.take::<Timer>("timer", 0).expect("timer"), timer());
    let stats = loaded.apply(&mut m.registry).expect("apply");
    let applied: Vec<_> = stats.sections.iter().map(|s| s.idstr.as_str()).collect();
    assert_eq!(applied, ["dev"]);
    assert_eq!(m.states(), (Timer::default(), dev()));
}

#[test]
fn applied_values_are_saved_again() {
    let bytes = Machine::golden().save();
    let mut r = registry(None);
    parse(&bytes, &r)
        .expect("parse")
        .apply(&mut r)
        .expect("apply");
    assert_eq!(save(&mut r).expect("re-save"), bytes);
}

#[test]
fn an_empty_value_section_cannot_be_saved() {
    let e = save(&mut registry(None)).expect_err("nothing to save");
    assert_eq!(
        chain(&e),
        "failed to save state for instance 0x0 of device 'timer': timer: save failed: no value to save"
    );
}
