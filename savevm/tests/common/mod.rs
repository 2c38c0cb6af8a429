//! Shared fixtures: the "timer" and "dev" states of the golden stream and a
//! component that records whether its state was ever restored.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use cpr_migration_file::QemuFile;
use cpr_savevm::*;

/// Two u32 and a u64 (the golden stream's first section).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timer {
    pub a: u32,
    pub b: u32,
    pub c: u64,
}

impl VmState for Timer {
    const NAME: &'static str = "timer";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u32("a", self.a);
        w.u32("b", self.b);
        w.u64("c", self.c);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        Ok(Timer {
            a: r.u32("a")?,
            b: r.u32("b")?,
            c: r.u64("c")?,
        })
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// Subsection of [`Dev`], needed when `v != 0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevExtra {
    pub v: u32,
}

impl VmState for DevExtra {
    const NAME: &'static str = "dev/extra";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        self.v != 0
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u32("v", self.v);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        Ok(DevExtra { v: r.u32("v")? })
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// Version 2 state: `flag` was added in version 2; `extra` is a subsection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dev {
    pub x: u16,
    pub flag: bool,
    pub extra: DevExtra,
}

impl VmState for Dev {
    const NAME: &'static str = "dev";
    const VERSION_ID: u32 = 2;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u16("x", self.x);
        w.bool("flag", self.flag);
        w.subsection(&mut self.extra)
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        let x = r.u16("x")?;
        let flag = r.since(2, |r| r.bool("flag"))?.unwrap_or(false);
        let extra = r.subsection::<DevExtra>()?.unwrap_or_default();
        Ok(Dev { x, flag, extra })
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// The same "dev" as an older build wrote it: version 1, `x` only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevV1 {
    pub x: u16,
}

impl VmState for DevV1 {
    const NAME: &'static str = "dev";
    const VERSION_ID: u32 = 1;
    const MINIMUM_VERSION_ID: u32 = 1;
    fn needed(&self) -> bool {
        true
    }
    fn pre_save(&mut self) -> Result<()> {
        Ok(())
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
        w.u16("x", self.x);
        Ok(())
    }
    fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
        Ok(DevV1 { x: r.u16("x")? })
    }
    fn post_load(&mut self, _version_id: u32) -> Result<()> {
        Ok(())
    }
}

/// A device holding a state `S`; counts restores, can fail on save.
#[derive(Debug, Default)]
pub struct Component<S> {
    pub state: S,
    pub restores: usize,
    pub fail_save: bool,
}

impl<S: VmState + Clone + Send + 'static> Persist for Component<S> {
    type State = S;
    fn save_state(&mut self) -> std::result::Result<S, BoxError> {
        if self.fail_save {
            return Err("device refused to save".into());
        }
        Ok(self.state.clone())
    }
    fn restore_state(&mut self, state: S) -> std::result::Result<(), BoxError> {
        self.state = state;
        self.restores += 1;
        Ok(())
    }
}

pub type Shared<S> = Arc<Mutex<Component<S>>>;

pub fn shared<S>(state: S) -> Shared<S> {
    Arc::new(Mutex::new(Component {
        state,
        restores: 0,
        fail_save: false,
    }))
}

/// The golden machine: "timer" instance 0, "dev" instance 0 (any).
pub struct Machine {
    pub registry: Registry,
    pub timer: Shared<Timer>,
    pub dev: Shared<Dev>,
}

impl Machine {
    pub fn new(timer: Timer, dev: Dev) -> Machine {
        let timer = shared(timer);
        let dev = shared(dev);
        let mut registry = Registry::new();
        registry
            .register_persist(
                Registration::new("timer", InstanceId::Id(0), OnLoad::Required),
                Arc::clone(&timer),
            )
            .expect("register timer");
        registry
            .register_persist(
                Registration::new("dev", InstanceId::Any, OnLoad::Required),
                Arc::clone(&dev),
            )
            .expect("register dev");
        Machine {
            registry,
            timer,
            dev,
        }
    }

    pub fn golden() -> Machine {
        Machine::new(
            Timer {
                a: 1,
                b: 2,
                c: 0x0102_0304_0506_0708,
            },
            Dev {
                x: 0x1234,
                flag: true,
                extra: DevExtra { v: 0xdead_beef },
            },
        )
    }

    pub fn save(&mut self) -> Vec<u8> {
        let mut f = QemuFile::memory_writer("test-save");
        save_device_state(&mut f, &mut self.registry).expect("save");
        f.into_bytes().expect("into_bytes")
    }

    pub fn parse(&self, bytes: &[u8]) -> Result<LoadedState> {
        let mut f = QemuFile::from_bytes(bytes.to_vec(), "test-load");
        load_device_state(&mut f, &self.registry)
    }

    pub fn load(&mut self, bytes: &[u8]) -> Result<LoadStats> {
        self.parse(bytes)?.apply(&mut self.registry)
    }

    pub fn restores(&self) -> usize {
        self.timer.lock().unwrap().restores + self.dev.lock().unwrap().restores
    }

    pub fn states(&self) -> (Timer, Dev) {
        (
            self.timer.lock().unwrap().state.clone(),
            self.dev.lock().unwrap().state.clone(),
        )
    }
}

/// The error and its `#[source]` chain, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
