//! The registry of save-state entries (QEMU's `savevm_state.handlers`,
//! `register_savevm_live`/`vmstate_register`).
//!
//! * Entries are keyed by (idstr, instance id); registering a key twice is
//!   [`Error::DuplicateRegistration`]. [`InstanceId::Any`] takes the next
//!   free id for the idstr, as QEMU's `calculate_new_instance_id`.
//! * Section ids come from a per-registry counter at registration (QEMU's
//!   `global_section_id`), starting at 0.
//! * Save order: higher [`Registration::priority`] first (QEMU's
//!   `MigrationPriority`), then registration order. The order is stable and
//!   is the stream order.
//! * [`OnLoad`] says whether an entry must appear in a stream being loaded.
//!   QEMU silently keeps the current state of a device missing from the
//!   stream; for a VMM a missing vCPU is fatal, so each entry chooses.
//! * [`Registry::set_stream_check`] adds a check of the whole parsed stream
//!   (what no single section can see: one section against another, or
//!   against the `ram` section), run before guest RAM is written or
//!   anything applied.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::consts::{RAM_IDSTR, RAM_INSTANCE_ID, RESERVED_INSTANCE_ID};
use crate::error::{Error, Result};
use crate::handler::{Persist, PersistHandler, SectionHandler};
use crate::stream::LoadedState;
use crate::vmstate::check_name;

/// Which instance id to register under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceId {
    /// The next free id for this idstr (`VMSTATE_INSTANCE_ID_ANY`).
    Any,
    /// This id (e.g. the vCPU index); `0xffffffff` is reserved.
    Id(u32),
}

/// Whether a registered entry must be present in a stream being loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLoad {
    /// Absent from the stream → [`Error::MissingSection`] (vCPUs,
    /// interrupt controllers, RAM layout, ...).
    Required,
    /// Absent from the stream → the handler keeps its current state
    /// (QEMU's behaviour; right for sections that may be "not needed").
    Optional,
}

/// How to register an entry. Every property that matters is an explicit
/// argument of [`Registration::new`]; only the priority has a default (0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    idstr: String,
    instance: InstanceId,
    on_load: OnLoad,
    priority: i32,
}

impl Registration {
    /// Register as `idstr` (the vmsd name, possibly prefixed with a device
    /// path and `/`, at most 255 bytes).
    pub fn new(idstr: impl Into<String>, instance: InstanceId, on_load: OnLoad) -> Self {
        Registration {
            idstr: idstr.into(),
            instance,
            on_load,
            priority: 0,
        }
    }

    /// Save before entries of lower priority (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// A registered entry, as listed by [`Registry::sections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// The idstr.
    pub idstr: String,
    /// The instance id (resolved if registered with [`InstanceId::Any`]).
    pub instance_id: u32,
    /// The section id written in the stream.
    pub section_id: u32,
    /// Presence rule on load.
    pub on_load: OnLoad,
    /// Save priority.
    pub priority: i32,
}

pub(crate) struct Entry {
    pub(crate) info: SectionInfo,
    pub(crate) handler: Box<dyn SectionHandler>,
}

static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(1);

/// A check of a whole parsed stream ([`Registry::set_stream_check`]).
pub type StreamCheck = Box<dyn Fn(&LoadedState) -> Result<()> + Send + Sync>;

/// The set of sections a machine saves and loads.
pub struct Registry {
    id: u64,
    generation: u64,
    next_section_id: u32,
    /// Kept in save order.
    pub(crate) entries: Vec<Entry>,
    /// Run on every parsed stream, after the trailer.
    pub(crate) stream_check: Option<StreamCheck>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("sections", &self.sections().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            id: NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            next_section_id: 0,
            entries: Vec::new(),
            stream_check: None,
        }
    }

    /// Check every stream parsed against this registry as a whole with
    /// `check`, once each section has been parsed (and passed its own
    /// `post_load`) and the vmdesc and checksum have been verified, but
    /// before guest RAM is written ([`load_state`](crate::load_state)'s
    /// second pass) or anything is applied. Its error refuses the stream.
    /// For rules that no single section can check: one section against
    /// another, or against the `ram` section ([`LoadedState::ram`]).
    /// Replaces any previous check.
    pub fn set_stream_check(
        &mut self,
        check: impl Fn(&LoadedState) -> Result<()> + Send + Sync + 'static,
    ) {
        self.stream_check = Some(Box::new(check));
    }

    /// Register `handler`; returns the entry's resolved ids.
    pub fn register(
        &mut self,
        reg: Registration,
        handler: Box<dyn SectionHandler>,
    ) -> Result<SectionInfo> {
        check_name(&reg.idstr)?;
        let instance_id = match reg.instance {
            InstanceId::Id(RESERVED_INSTANCE_ID) => {
                return Err(Error::ReservedInstanceId {
                    idstr: reg.idstr,
                    instance_id: RESERVED_INSTANCE_ID,
                });
            }
            InstanceId::Id(id) => {
                if self.find(&reg.idstr, id).is_some() {
                    return Err(Error::DuplicateRegistration {
                        idstr: reg.idstr,
                        instance_id: id,
                    });
                }
                id
            }
            InstanceId::Any => self.new_instance_id(&reg.idstr)?,
        };
        let info = SectionInfo {
            idstr: reg.idstr,
            instance_id,
            section_id: self.next_section_id,
            on_load: reg.on_load,
            priority: reg.priority,
        };
        self.next_section_id = self.next_section_id.wrapping_add(1);
        self.generation += 1;
        // After every entry of priority >= ours: stable registration order.
        let at = self
            .entries
            .iter()
            .position(|e| e.info.priority < info.priority)
            .unwrap_or(self.entries.len());
        self.entries.insert(
            at,
            Entry {
                info: info.clone(),
                handler,
            },
        );
        Ok(info)
    }

    /// Register a [`Persist`] component (including `Arc<Mutex<T>>`).
    pub fn register_persist<P: Persist + Send + 'static>(
        &mut self,
        reg: Registration,
        component: P,
    ) -> Result<SectionInfo> {
        self.register(reg, Box::new(PersistHandler::new(component)))
    }

    /// Remove an entry, returning its handler (`vmstate_unregister`).
    pub fn unregister(&mut self, idstr: &str, instance_id: u32) -> Option<Box<dyn SectionHandler>> {
        let i = self.find(idstr, instance_id)?;
        self.generation += 1;
        Some(self.entries.remove(i).handler)
    }

    /// The entries in save order.
    pub fn sections(&self) -> impl Iterator<Item = &SectionInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The section id the next registration would get: free for a section
    /// that is not a registry entry (the `ram` section).
    pub(crate) fn next_section_id(&self) -> u32 {
        self.next_section_id
    }

    /// The `ram` section cannot share its name with an entry
    /// ([`Error::DuplicateRegistration`]).
    pub(crate) fn check_no_ram_entry(&self) -> Result<()> {
        match self.find(RAM_IDSTR, RAM_INSTANCE_ID) {
            Some(_) => Err(Error::DuplicateRegistration {
                idstr: RAM_IDSTR.to_owned(),
                instance_id: RAM_INSTANCE_ID,
            }),
            None => Ok(()),
        }
    }

    /// (registry id, generation): changes whenever entries change.
    pub(crate) fn stamp(&self) -> (u64, u64) {
        (self.id, self.generation)
    }

    pub(crate) fn find(&self, idstr: &str, instance_id: u32) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.info.instance_id == instance_id && e.info.idstr == idstr)
    }

    /// QEMU's `calculate_new_instance_id`: one above the highest id in use
    /// for `idstr`, or 0.
    fn new_instance_id(&self, idstr: &str) -> Result<u32> {
        let highest = self
            .entries
            .iter()
            .filter(|e| e.info.idstr == idstr)
            .map(|e| e.info.instance_id)
            .max();
        match highest {
            None => Ok(0),
            Some(h) => h
                .checked_add(1)
                .filter(|&id| id != RESERVED_INSTANCE_ID)
                .ok_or_else(|| Error::InstanceIdsExhausted {
                    idstr: idstr.to_owned(),
                }),
        }
    }
}
