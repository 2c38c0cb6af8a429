//! VMState in Rust: the [`VmState`] description trait, the [`FieldWriter`]
//! that encodes fields (and records them for the vmdesc), and the
//! [`FieldReader`] that decodes them with QEMU's version and subsection
//! rules (migration/vmstate.c).

use std::borrow::Cow;

use cpr_migration_file::QemuFile;

use crate::consts::QEMU_VM_SUBSECTION;
use crate::error::{Error, Result};
use crate::vmdesc::VmsdDesc;

/// A state type with a VMState description: the Rust counterpart of a
/// `VMStateDescription` plus the struct it describes.
///
/// Every hook is required: nothing that holds state gets a silent default.
/// The encoding is QEMU's: [`save`](Self::save) writes the fields in order
/// (all of them: a saver always writes its own [`VERSION_ID`](Self::VERSION_ID)),
/// then the subsections; [`load`](Self::load) reads them back, gating each
/// field on the version that added it with [`FieldReader::since`].
///
/// ```
/// use cpr_savevm::{FieldReader, FieldWriter, Result, VmState};
///
/// #[derive(Debug, Default, PartialEq)]
/// struct Pit { count: u32, mode: u8, latched: bool }
///
/// impl VmState for Pit {
///     const NAME: &'static str = "pit";
///     const VERSION_ID: u32 = 2;
///     const MINIMUM_VERSION_ID: u32 = 1;
///     fn needed(&self) -> bool { true }
///     fn pre_save(&mut self) -> Result<()> { Ok(()) }
///     fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()> {
///         w.u32("count", self.count);
///         w.u8("mode", self.mode);
///         w.bool("latched", self.latched); // added in version 2
///         Ok(())
///     }
///     fn load(r: &mut FieldReader<'_>, _version_id: u32) -> Result<Self> {
///         Ok(Pit {
///             count: r.u32("count")?,
///             mode: r.u8("mode")?,
///             latched: r.since(2, |r| r.bool("latched"))?.unwrap_or(false),
///         })
///     }
///     fn post_load(&mut self, _version_id: u32) -> Result<()> {
///         if self.mode > 5 {
///             return Err(cpr_savevm::Error::InvalidState {
///                 vmsd: Self::NAME.into(),
///                 reason: format!("bad mode {}", self.mode),
///             });
///         }
///         Ok(())
///     }
/// }
///
/// let mut pit = Pit { count: 7, mode: 2, latched: true };
/// let (bytes, _desc) = cpr_savevm::encode_vmstate(&mut pit)?.expect("needed");
/// assert_eq!(bytes, [0, 0, 0, 7, 2, 1]);
/// assert_eq!(cpr_savevm::decode_vmstate::<Pit>(bytes, 2)?, pit);
/// # Ok::<(), cpr_savevm::Error>(())
/// ```
pub trait VmState: Sized {
    /// The vmsd name. A subsection's name is `<parent NAME>/<sub>`.
    const NAME: &'static str;
    /// The version this code writes, and the newest it reads.
    const VERSION_ID: u32;
    /// The oldest version this code reads.
    const MINIMUM_VERSION_ID: u32;

    /// Whether to write this state at all (QEMU's vmsd `needed`): a section
    /// that is not needed is left out of the stream; a subsection that is
    /// not needed is not written and keeps its default on load.
    fn needed(&self) -> bool;
    /// Prepare derived fields before saving; runs after `needed`.
    fn pre_save(&mut self) -> Result<()>;
    /// Write the fields in order, then the subsections
    /// ([`FieldWriter::subsection`]). Takes `&mut self` so that
    /// subsections' `pre_save` can run, as `vmstate_save_state` does.
    fn save(&mut self, w: &mut FieldWriter<'_>) -> Result<()>;
    /// Read the fields written by `save` at `version_id` (also
    /// [`FieldReader::version_id`]), then the subsections
    /// ([`FieldReader::subsection`], in the order `save` writes them).
    fn load(r: &mut FieldReader<'_>, version_id: u32) -> Result<Self>;
    /// Validate or fix up the loaded state; runs after the subsections. It
    /// runs while the stream is being parsed, before any state is applied,
    /// so it must not touch the machine.
    fn post_load(&mut self, version_id: u32) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
}

/// A fixed-size big-endian scalar that [`FieldWriter::array`] and
/// [`FieldReader::array`] can carry (u8..u64, i8..i64).
pub trait Scalar: Copy + sealed::Sealed {
    /// The VMStateInfo name recorded in the vmdesc.
    const TYPE: &'static str;
    /// Encoded size in bytes.
    const SIZE: usize;
    #[doc(hidden)]
    fn put(self, out: &mut Vec<u8>);
    #[doc(hidden)]
    fn get(f: &mut QemuFile) -> cpr_migration_file::Result<Self>;
}

macro_rules! scalar {
    ($($t:ty => $name:literal),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Scalar for $t {
            const TYPE: &'static str = $name;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn get(f: &mut QemuFile) -> cpr_migration_file::Result<Self> {
                let mut b = [0u8; std::mem::size_of::<$t>()];
                f.get_buffer(&mut b)?;
                Ok(<$t>::from_be_bytes(b))
            }
        }
    )*};
}

scalar! {
    u8 => "uint8", u16 => "uint16", u32 => "uint32", u64 => "uint64",
    i8 => "int8", i16 => "int16", i32 => "int32", i64 => "int64",
}

/// Check that `name` fits a counted string.
pub(crate) fn check_name(name: &str) -> Result<u8> {
    match u8::try_from(name.len()) {
        Ok(len) if len > 0 => Ok(len),
        _ => Err(Error::BadName {
            name: name.to_owned(),
            len: name.len(),
        }),
    }
}

/// Writes a vmsd's fields big-endian into a section payload and records
/// each field's name, type and size for the vmdesc.
///
/// Field writes cannot fail (they go to memory); the section is copied to
/// the file only once its handler has succeeded.
#[derive(Debug)]
pub struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    desc: &'a mut VmsdDesc,
}

impl<'a> FieldWriter<'a> {
    /// A writer appending to `out` and describing into `desc`.
    pub fn new(out: &'a mut Vec<u8>, desc: &'a mut VmsdDesc) -> Self {
        FieldWriter { out, desc }
    }

    /// Name of the vmsd being written.
    pub fn vmsd_name(&self) -> &'static str {
        self.desc.vmsd_name
    }

    fn record(
        &mut self,
        name: Cow<'static, str>,
        array_len: Option<u32>,
        ty: &'static str,
        size: usize,
    ) {
        self.desc.record(name, array_len, ty, size);
    }

    fn scalar<T: Scalar>(&mut self, name: &'static str, v: T) {
        v.put(self.out);
        self.record(Cow::Borrowed(name), None, T::TYPE, T::SIZE);
    }

    /// A `uint8` field.
    pub fn u8(&mut self, name: &'static str, v: u8) {
        self.scalar(name, v);
    }
    /// A `uint16` field.
    pub fn u16(&mut self, name: &'static str, v: u16) {
        self.scalar(name, v);
    }
    /// A `uint32` field.
    pub fn u32(&mut self, name: &'static str, v: u32) {
        self.scalar(name, v);
    }
    /// A `uint64` field.
    pub fn u64(&mut self, name: &'static str, v: u64) {
        self.scalar(name, v);
    }
    /// An `int8` field.
    pub fn i8(&mut self, name: &'static str, v: i8) {
        self.scalar(name, v);
    }
    /// An `int16` field.
    pub fn i16(&mut self, name: &'static str, v: i16) {
        self.scalar(name, v);
    }
    /// An `int32` field.
    pub fn i32(&mut self, name: &'static str, v: i32) {
        self.scalar(name, v);
    }
    /// An `int64` field.
    pub fn i64(&mut self, name: &'static str, v: i64) {
        self.scalar(name, v);
    }
    /// A `bool` field: one byte, 0 or 1.
    pub fn bool(&mut self, name: &'static str, v: bool) {
        self.out.push(u8::from(v));
        self.record(Cow::Borrowed(name), None, "bool", 1);
    }
    /// A fixed-size `buffer` field (the reader must know its length).
    pub fn buffer(&mut self, name: &'static str, v: &[u8]) {
        self.out.extend_from_slice(v);
        self.record(Cow::Borrowed(name), None, "buffer", v.len());
    }
    /// A `capability` field (QEMU's `vmstate_info_capability`): a length
    /// byte and the capability's name.
    pub(crate) fn capability(&mut self, name: &'static str, cap: &str) -> Result<()> {
        let len = check_name(cap)?;
        self.out.push(len);
        self.out.extend_from_slice(cap.as_bytes());
        self.record(Cow::Borrowed(name), None, "capability", 1 + cap.len());
        Ok(())
    }
    /// An array whose length both sides know: the elements only, recorded
    /// once with `array_len` (as a plain field when it has one element, not
    /// at all when it has none: see [`crate::vmdesc`]).
    pub fn array_fixed<T: Scalar>(&mut self, name: &'static str, v: &[T]) -> Result<()> {
        let len = self.array_len(name, v.len())?;
        for &x in v {
            x.put(self.out);
        }
        self.record(Cow::Borrowed(name), Some(len), T::TYPE, T::SIZE);
        Ok(())
    }
    /// A counted array (`VMSTATE_VARRAY_UINT32`): a be32 count recorded as
    /// field `<name>.count`, then the elements recorded once with
    /// `array_len`.
    pub fn array<T: Scalar>(&mut self, name: &'static str, v: &[T]) -> Result<()> {
        let len = self.array_len(name, v.len())?;
        len.put(self.out);
        self.record(
            Cow::Owned(format!("{name}.count")),
            None,
            u32::TYPE,
            u32::SIZE,
        );
        self.array_fixed(name, v)
    }

    fn array_len(&self, field: &'static str, len: usize) -> Result<u32> {
        u32::try_from(len).map_err(|_| Error::ArrayTooLong {
            vmsd: self.desc.vmsd_name.to_owned(),
            field,
            len: len as u64,
            max: u64::from(u32::MAX),
        })
    }

    /// Write subsection `sub` if it is [`needed`](VmState::needed): byte
    /// 0x05, counted name, be32 version, its fields and subsections. Its
    /// name must be `<parent>/<something>`.
    pub fn subsection<T: VmState>(&mut self, sub: &mut T) -> Result<()> {
        let parent = self.desc.vmsd_name;
        let well_named = T::NAME
            .strip_prefix(parent)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty());
        if !well_named {
            return Err(Error::SubsectionName {
                parent,
                name: T::NAME,
            });
        }
        let len = check_name(T::NAME)?;
        if !sub.needed() {
            return Ok(());
        }
        sub.pre_save()?;
        self.out.push(QEMU_VM_SUBSECTION);
        self.out.push(len);
        self.out.extend_from_slice(T::NAME.as_bytes());
        self.out.extend_from_slice(&T::VERSION_ID.to_be_bytes());
        let mut desc = VmsdDesc::new(T::NAME, T::VERSION_ID);
        sub.save(&mut FieldWriter::new(self.out, &mut desc))?;
        self.desc.subsections.push(desc);
        Ok(())
    }
}

/// Encode a top-level state: `needed`, `pre_save`, `save`. Returns `None`
/// when the state is not needed, else the payload and its description.
pub fn encode_vmstate<T: VmState>(state: &mut T) -> Result<Option<(Vec<u8>, VmsdDesc)>> {
    if !state.needed() {
        return Ok(None);
    }
    let mut out = Vec::new();
    let mut desc = VmsdDesc::new(T::NAME, T::VERSION_ID);
    encode_into(state, &mut FieldWriter::new(&mut out, &mut desc))?;
    Ok(Some((out, desc)))
}

/// `pre_save` then `save` into an existing writer (a section handler's).
pub(crate) fn encode_into<T: VmState>(state: &mut T, w: &mut FieldWriter<'_>) -> Result<()> {
    if T::MINIMUM_VERSION_ID > T::VERSION_ID {
        return Err(Error::InvalidState {
            vmsd: T::NAME.to_owned(),
            reason: format!(
                "minimum version {} is above version {}",
                T::MINIMUM_VERSION_ID,
                T::VERSION_ID
            ),
        });
    }
    state.pre_save()?;
    state.save(w)
}

/// Decode a top-level state from a bare payload written at `version_id`
/// (no section framing); trailing bytes are an error.
pub fn decode_vmstate<T: VmState>(payload: Vec<u8>, version_id: u32) -> Result<T> {
    let mut f = QemuFile::from_bytes(payload, T::NAME);
    let state = FieldReader::new(&mut f, T::NAME, version_id).read_state::<T>()?;
    match f.at_eof() {
        Ok(true) => Ok(state),
        Ok(false) => Err(Error::InvalidState {
            vmsd: T::NAME.to_owned(),
            reason: format!("unread bytes after the payload at offset {}", f.position()),
        }),
        Err(source) => Err(Error::Read {
            what: "end of payload",
            offset: f.position(),
            source,
        }),
    }
}

/// Reads a vmsd's fields from the stream, with QEMU's version gating and
/// subsection rules. Reading has no side effects beyond consuming bytes.
///
/// Like the [`FieldWriter`], it records every field it reads (name, type,
/// size, subsections): the loader compares that record with the stream's
/// vmdesc, which must be exactly the one the saver writes for these fields.
#[derive(Debug)]
pub struct FieldReader<'a> {
    f: &'a mut QemuFile,
    vmsd: &'static str,
    version_id: u32,
    desc: VmsdDesc,
}

impl<'a> FieldReader<'a> {
    /// A reader for vmsd `vmsd` whose stream version is `version_id`.
    pub fn new(f: &'a mut QemuFile, vmsd: &'static str, version_id: u32) -> Self {
        FieldReader {
            f,
            vmsd,
            version_id,
            desc: VmsdDesc::new(vmsd, version_id),
        }
    }

    /// What has been read so far, described as the [`FieldWriter`] describes
    /// what it writes (the saver's vmdesc entry for these fields).
    pub fn description(&self) -> &VmsdDesc {
        &self.desc
    }

    /// The description of everything read ([`description`](Self::description)).
    pub(crate) fn into_description(self) -> VmsdDesc {
        self.desc
    }

    fn record(
        &mut self,
        name: Cow<'static, str>,
        array_len: Option<u32>,
        ty: &'static str,
        size: usize,
    ) {
        self.desc.record(name, array_len, ty, size);
    }

    /// Name of the vmsd being read.
    pub fn vmsd_name(&self) -> &'static str {
        self.vmsd
    }

    /// Stream version of the vmsd being read.
    pub fn version_id(&self) -> u32 {
        self.version_id
    }

    /// Stream offset of the next byte.
    pub fn position(&self) -> u64 {
        self.f.position()
    }

    /// An [`Error::InvalidState`] for the vmsd being read.
    pub fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidState {
            vmsd: self.vmsd.to_owned(),
            reason: reason.into(),
        }
    }

    fn field_err(&self, field: &'static str) -> impl FnOnce(cpr_migration_file::Error) -> Error {
        let vmsd = self.vmsd.to_owned();
        move |source| Error::Field {
            vmsd,
            field,
            source,
        }
    }

    fn scalar<T: Scalar>(&mut self, name: &'static str) -> Result<T> {
        let v = self.get::<T>(name)?;
        self.record(Cow::Borrowed(name), None, T::TYPE, T::SIZE);
        Ok(v)
    }

    /// One element, not recorded.
    fn get<T: Scalar>(&mut self, name: &'static str) -> Result<T> {
        T::get(self.f).map_err(self.field_err(name))
    }

    /// A `uint8` field.
    pub fn u8(&mut self, name: &'static str) -> Result<u8> {
        self.scalar(name)
    }
    /// A `uint16` field.
    pub fn u16(&mut self, name: &'static str) -> Result<u16> {
        self.scalar(name)
    }
    /// A `uint32` field.
    pub fn u32(&mut self, name: &'static str) -> Result<u32> {
        self.scalar(name)
    }
    /// A `uint64` field.
    pub fn u64(&mut self, name: &'static str) -> Result<u64> {
        self.scalar(name)
    }
    /// An `int8` field.
    pub fn i8(&mut self, name: &'static str) -> Result<i8> {
        self.scalar(name)
    }
    /// An `int16` field.
    pub fn i16(&mut self, name: &'static str) -> Result<i16> {
        self.scalar(name)
    }
    /// An `int32` field.
    pub fn i32(&mut self, name: &'static str) -> Result<i32> {
        self.scalar(name)
    }
    /// An `int64` field.
    pub fn i64(&mut self, name: &'static str) -> Result<i64> {
        self.scalar(name)
    }
    /// A `bool` field; bytes other than 0 and 1 are refused (QEMU accepts
    /// any non-zero byte as true; its savers only write 0 and 1).
    pub fn bool(&mut self, name: &'static str) -> Result<bool> {
        let byte = self.get::<u8>(name)?;
        self.record(Cow::Borrowed(name), None, "bool", 1);
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::InvalidBool {
                vmsd: self.vmsd.to_owned(),
                field: name,
                value,
            }),
        }
    }
    /// A fixed-size `buffer` field of `N` bytes.
    pub fn buffer<const N: usize>(&mut self, name: &'static str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.buffer_into(name, &mut b)?;
        Ok(b)
    }
    /// A fixed-size `buffer` field filling `buf`.
    pub fn buffer_into(&mut self, name: &'static str, buf: &mut [u8]) -> Result<()> {
        self.f.get_buffer(buf).map_err(self.field_err(name))?;
        self.record(Cow::Borrowed(name), None, "buffer", buf.len());
        Ok(())
    }
    /// A `capability` field written by `FieldWriter::capability`.
    pub(crate) fn capability(&mut self, name: &'static str) -> Result<String> {
        let cap = self.f.get_counted_string().map_err(self.field_err(name))?;
        self.record(Cow::Borrowed(name), None, "capability", 1 + cap.len());
        Ok(cap)
    }
    /// An array of `len` elements written by [`FieldWriter::array_fixed`].
    pub fn array_fixed<T: Scalar>(&mut self, name: &'static str, len: usize) -> Result<Vec<T>> {
        let mut v = Vec::with_capacity(len.min(4096));
        for _ in 0..len {
            v.push(self.get(name)?);
        }
        let array_len = u32::try_from(len).map_err(|_| Error::ArrayTooLong {
            vmsd: self.vmsd.to_owned(),
            field: name,
            len: len as u64,
            max: u64::from(u32::MAX),
        })?;
        self.record(Cow::Borrowed(name), Some(array_len), T::TYPE, T::SIZE);
        Ok(v)
    }
    /// A counted array written by [`FieldWriter::array`]; a count above
    /// `max_len` is refused before anything is allocated.
    pub fn array<T: Scalar>(&mut self, name: &'static str, max_len: usize) -> Result<Vec<T>> {
        let len = self.get::<u32>(name)?;
        self.record(
            Cow::Owned(format!("{name}.count")),
            None,
            u32::TYPE,
            u32::SIZE,
        );
        match usize::try_from(len) {
            Ok(n) if n <= max_len => self.array_fixed(name, n),
            _ => Err(Error::ArrayTooLong {
                vmsd: self.vmsd.to_owned(),
                field: name,
                len: u64::from(len),
                max: max_len as u64,
            }),
        }
    }

    /// Read a field (or group) only if the stream's version is at least
    /// `version` (the field's `version_id` in QEMU); `None` for older
    /// streams, which do not hold it.
    pub fn since<T>(
        &mut self,
        version: u32,
        read: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.version_id >= version {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Read the whole state `T` at this reader's version: version checks,
    /// [`VmState::load`], the check that no unknown subsection of `T`
    /// follows, then [`VmState::post_load`].
    pub fn read_state<T: VmState>(&mut self) -> Result<T> {
        self.read_state_at(self.version_id)
    }

    /// Reads subsection `T` at `version_id`, described as a subsection of
    /// the vmsd being read.
    fn read_subsection_at<T: VmState>(&mut self, version_id: u32) -> Result<T> {
        let parent = std::mem::replace(&mut self.desc, VmsdDesc::new(T::NAME, version_id));
        let result = self.read_state_at::<T>(version_id);
        let sub = std::mem::replace(&mut self.desc, parent);
        self.desc.subsections.push(sub);
        result
    }

    fn read_state_at<T: VmState>(&mut self, version_id: u32) -> Result<T> {
        if version_id > T::VERSION_ID {
            return Err(Error::VersionTooNew {
                vmsd: T::NAME.to_owned(),
                version_id,
                local_version_id: T::VERSION_ID,
            });
        }
        if version_id < T::MINIMUM_VERSION_ID {
            return Err(Error::VersionTooOld {
                vmsd: T::NAME.to_owned(),
                version_id,
                minimum_version_id: T::MINIMUM_VERSION_ID,
            });
        }
        let saved = (self.vmsd, self.version_id);
        (self.vmsd, self.version_id) = (T::NAME, version_id);
        let result = self.read_state_inner::<T>(version_id);
        (self.vmsd, self.version_id) = saved;
        result
    }

    fn read_state_inner<T: VmState>(&mut self, version_id: u32) -> Result<T> {
        let mut state = T::load(self, version_id)?;
        let offset = self.f.position();
        if let Some(name) = self.peek_subsection()? {
            return Err(Error::UnknownSubsection {
                parent: T::NAME.to_owned(),
                name,
                offset,
            });
        }
        state.post_load(version_id)?;
        Ok(state)
    }

    /// Read subsection `T` if it is next in the stream; `None` (the default
    /// applies) if it is absent. Call once per declared subsection, in the
    /// order `save` writes them; a subsection of this vmsd that no call
    /// consumes is an [`Error::UnknownSubsection`] once `load` returns.
    pub fn subsection<T: VmState>(&mut self) -> Result<Option<T>> {
        match self.peek_subsection()? {
            Some(name) if name == T::NAME => {}
            _ => return Ok(None),
        }
        let offset = self.f.position();
        let read = |f: &mut QemuFile| -> cpr_migration_file::Result<u32> {
            f.get_u8()?;
            f.get_counted_string()?;
            f.get_u32()
        };
        let version_id = read(self.f).map_err(|source| Error::Read {
            what: "subsection header",
            offset,
            source,
        })?;
        self.read_subsection_at::<T>(version_id).map(Some)
    }

    /// QEMU's subsection peek: `Some(name)` when the next bytes are 0x05, a
    /// length, and a complete name starting with the current vmsd's name;
    /// `None` (leave the bytes) otherwise, including a short stream.
    fn peek_subsection(&mut self) -> Result<Option<String>> {
        let offset = self.f.position();
        let parent = self.vmsd.as_bytes();
        let err = |source| Error::Read {
            what: "subsection header",
            offset,
            source,
        };
        let len = match *self.f.peek(2).map_err(err)? {
            [QEMU_VM_SUBSECTION, len] => usize::from(len),
            _ => return Ok(None),
        };
        if len < parent.len() + 1 {
            return Ok(None);
        }
        let head = self.f.peek(2 + len).map_err(err)?;
        match head.get(2..) {
            Some(name) if name.len() == len && name.starts_with(parent) => {
                Ok(Some(String::from_utf8_lossy(name).into_owned()))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
