//! Section handlers (QEMU's `SaveStateEntry` ops/vmsd) and the
//! Firecracker-style [`Persist`] adapter.

use std::any::Any;
use std::sync::{Arc, Mutex};

use crate::error::{BoxError, Error, Result};
use crate::vmstate::{FieldReader, FieldWriter, VmState, encode_into};

/// State parsed from the stream but not yet applied.
pub type Staged = Box<dyn Any + Send>;

/// What [`SectionHandler::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Saved {
    /// The payload was written; the section goes into the stream.
    Written,
    /// The state is not needed: the section is left out (whatever was
    /// written is discarded).
    NotNeeded,
}

/// One registered section: saves its payload, parses a payload without
/// side effects, and applies parsed state.
///
/// Most components implement [`Persist`] instead and get this trait from
/// [`PersistHandler`]; implement it directly for a handler that is not a
/// single [`VmState`].
pub trait SectionHandler: Send {
    /// The vmsd name (subsection prefix; `vmsd_name` in the vmdesc).
    fn vmsd_name(&self) -> &'static str;
    /// Version written, and the newest version parsed.
    fn version_id(&self) -> u32;
    /// Oldest version parsed.
    fn minimum_version_id(&self) -> u32;
    /// Decide `needed`, run `pre_save`, write the fields.
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<Saved>;
    /// Parse and validate a payload written at `version_id`. Must not
    /// change any state: the loader parses the whole stream before anything
    /// is applied.
    fn parse(&self, r: &mut FieldReader<'_>, version_id: u32) -> Result<Staged>;
    /// Commit state returned by [`parse`](Self::parse).
    fn apply(&mut self, staged: Staged) -> Result<()>;
}

/// A component whose state is captured as a plain [`VmState`] value and
/// restored from one (Firecracker's `Persist` pair).
pub trait Persist {
    /// The plain state and its description.
    type State: VmState + Send + 'static;
    /// Capture the current state.
    fn save_state(&mut self) -> std::result::Result<Self::State, BoxError>;
    /// Restore a state that has been fully parsed and validated.
    fn restore_state(&mut self, state: Self::State) -> std::result::Result<(), BoxError>;
}

/// A component shared with the VMM (`Arc<Mutex<T>>`) persists through the
/// lock; a poisoned lock is an error.
impl<P: Persist> Persist for Arc<Mutex<P>> {
    type State = P::State;
    fn save_state(&mut self) -> std::result::Result<Self::State, BoxError> {
        self.lock()
            .map_err(|_| BoxError::from("component mutex poisoned"))?
            .save_state()
    }
    fn restore_state(&mut self, state: Self::State) -> std::result::Result<(), BoxError> {
        self.lock()
            .map_err(|_| BoxError::from("component mutex poisoned"))?
            .restore_state(state)
    }
}

/// Adapts a [`Persist`] component to a [`SectionHandler`]: `save` calls
/// `save_state` then the state's `needed`/`pre_save`/`save`; `parse` runs
/// the state's `load`/`post_load`; `apply` calls `restore_state`.
pub struct PersistHandler<P> {
    component: P,
}

impl<P> PersistHandler<P> {
    /// Wrap `component`.
    pub fn new(component: P) -> Self {
        PersistHandler { component }
    }
    /// The wrapped component.
    pub fn component(&self) -> &P {
        &self.component
    }
}

impl<P: Persist + Send> SectionHandler for PersistHandler<P> {
    fn vmsd_name(&self) -> &'static str {
        P::State::NAME
    }
    fn version_id(&self) -> u32 {
        P::State::VERSION_ID
    }
    fn minimum_version_id(&self) -> u32 {
        P::State::MINIMUM_VERSION_ID
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<Saved> {
        let mut state = self
            .component
            .save_state()
            .map_err(|source| Error::Component {
                vmsd: P::State::NAME,
                hook: "save_state",
                source,
            })?;
        if !state.needed() {
            return Ok(Saved::NotNeeded);
        }
        encode_into(&mut state, w)?;
        Ok(Saved::Written)
    }
    fn parse(&self, r: &mut FieldReader<'_>, version_id: u32) -> Result<Staged> {
        debug_assert_eq!(r.version_id(), version_id);
        Ok(Box::new(r.read_state::<P::State>()?))
    }
    fn apply(&mut self, staged: Staged) -> Result<()> {
        let state = staged
            .downcast::<P::State>()
            .map_err(|_| Error::StagedType {
                vmsd: P::State::NAME,
            })?;
        self.component
            .restore_state(*state)
            .map_err(|source| Error::Component {
                vmsd: P::State::NAME,
                hook: "restore_state",
                source,
            })
    }
}

/// A [`Persist`] component for plain data that is itself the [`VmState`]
/// and is shared with the VMM as `Arc<Mutex<S>>` (e.g. `globalstate`):
/// saving clones it, restoring replaces it.
pub struct SharedState<S> {
    shared: Arc<Mutex<S>>,
}

impl<S> SharedState<S> {
    /// Save from and restore into `shared`.
    pub fn new(shared: Arc<Mutex<S>>) -> Self {
        SharedState { shared }
    }
}

impl<S: VmState + Clone + Send + 'static> Persist for SharedState<S> {
    type State = S;
    fn save_state(&mut self) -> std::result::Result<S, BoxError> {
        Ok(self
            .shared
            .lock()
            .map_err(|_| BoxError::from("state mutex poisoned"))?
            .clone())
    }
    fn restore_state(&mut self, state: S) -> std::result::Result<(), BoxError> {
        *self
            .shared
            .lock()
            .map_err(|_| BoxError::from("state mutex poisoned"))? = state;
        Ok(())
    }
}

/// A section whose state is a plain value rather than a live component: a
/// state captured elsewhere, to be saved, or (empty) one to be parsed and
/// handed out with [`LoadedState::take`](crate::LoadedState::take).
///
/// Saving writes the value held (`needed`, `pre_save`, fields); saving an
/// empty one is [`Error::Component`]. Parsing stages a new `S`, as a
/// [`Persist`] component's state is; applying it replaces the value held.
pub struct ValueSection<S> {
    value: Option<S>,
}

impl<S> ValueSection<S> {
    /// A section that saves `value`.
    pub fn new(value: S) -> Self {
        ValueSection { value: Some(value) }
    }

    /// A section with nothing to save yet: for a registry that loads.
    pub fn empty() -> Self {
        ValueSection { value: None }
    }
}

impl<S> Default for ValueSection<S> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<S: VmState + Send + 'static> SectionHandler for ValueSection<S> {
    fn vmsd_name(&self) -> &'static str {
        S::NAME
    }
    fn version_id(&self) -> u32 {
        S::VERSION_ID
    }
    fn minimum_version_id(&self) -> u32 {
        S::MINIMUM_VERSION_ID
    }
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<Saved> {
        let Some(state) = self.value.as_mut() else {
            return Err(Error::Component {
                vmsd: S::NAME,
                hook: "save",
                source: "no value to save".into(),
            });
        };
        if !state.needed() {
            return Ok(Saved::NotNeeded);
        }
        encode_into(state, w)?;
        Ok(Saved::Written)
    }
    fn parse(&self, r: &mut FieldReader<'_>, version_id: u32) -> Result<Staged> {
        debug_assert_eq!(r.version_id(), version_id);
        Ok(Box::new(r.read_state::<S>()?))
    }
    fn apply(&mut self, staged: Staged) -> Result<()> {
        let state = staged
            .downcast::<S>()
            .map_err(|_| Error::StagedType { vmsd: S::NAME })?;
        self.value = Some(*state);
        Ok(())
    }
}
