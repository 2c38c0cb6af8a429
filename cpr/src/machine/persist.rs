//! Shared helpers for the machine's savevm sections.
//!
//! Every component's state describes itself as a [`cpr_savevm::VmState`] next to the
//! component (`vcpu_state.rs`, `vm.rs`, `devices/*.rs`). Scalars and register files are
//! written field by field, big-endian, as QEMU's VMState does. A KVM structure whose layout
//! *is* the KVM ABI (`kvm_sregs`, `kvm_lapic_state`, `kvm_irqchip`, ...) is written as one
//! raw buffer in that ABI layout (x86-64, little-endian): such a section only ever restores
//! into x86-64 KVM, and the buffer keeps the vmdesc description short (the 1-vCPU state file
//! stays under 16 KiB). The conversion goes through zerocopy (derived by kvm-bindings), so it
//! needs no `unsafe`.

use cpr_savevm::{FieldReader, FieldWriter, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Writes a KVM ABI structure as one raw buffer field.
pub(crate) fn put_kvm<T: IntoBytes + Immutable>(
    w: &mut FieldWriter<'_>,
    name: &'static str,
    v: &T,
) {
    w.buffer(name, v.as_bytes());
}

/// Reads a KVM ABI structure written by [`put_kvm`].
pub(crate) fn get_kvm<T: FromBytes>(r: &mut FieldReader<'_>, name: &'static str) -> Result<T> {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    r.buffer_into(name, &mut buf)?;
    T::read_from_bytes(&buf).map_err(|_| r.invalid(format!("{name}: wrong size")))
}

/// Declares a savevm section holding one KVM ABI structure (a newtype with a
/// [`cpr_savevm::VmState`] implementation).
macro_rules! kvm_struct_section {
    ($(#[$doc:meta])* $section:ident, $name:literal, $field:literal, $kvm:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub(crate) struct $section(pub(crate) $kvm);

        impl std::fmt::Debug for $section {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($section)).finish_non_exhaustive()
            }
        }

        impl cpr_savevm::VmState for $section {
            const NAME: &'static str = $name;
            const VERSION_ID: u32 = 1;
            const MINIMUM_VERSION_ID: u32 = 1;

            fn needed(&self) -> bool {
                true
            }

            fn pre_save(&mut self) -> cpr_savevm::Result<()> {
                Ok(())
            }

            fn save(&mut self, w: &mut cpr_savevm::FieldWriter<'_>) -> cpr_savevm::Result<()> {
                $crate::machine::persist::put_kvm(w, $field, &self.0);
                Ok(())
            }

            fn load(
                r: &mut cpr_savevm::FieldReader<'_>,
                _version_id: u32,
            ) -> cpr_savevm::Result<Self> {
                Ok($section($crate::machine::persist::get_kvm(r, $field)?))
            }

            fn post_load(&mut self, _version_id: u32) -> cpr_savevm::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use kvm_struct_section;

/// Converts a length to the `u32` a stream count needs (lengths here are small and bounded).
pub(crate) fn count_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use cpr_migration_file::QemuFile;
    use cpr_savevm::{FieldReader, VmState, decode_vmstate, encode_vmstate};

    /// Encodes `state` as a section payload and decodes it back, at the current version.
    pub(crate) fn round_trip<T: VmState>(state: &mut T) -> T {
        let (payload, _desc) = encode_vmstate(state)
            .expect("encode")
            .expect("section is needed");
        decode_vmstate::<T>(payload, T::VERSION_ID).expect("decode")
    }

    /// Decodes `payload` as `T`, expecting an error.
    pub(crate) fn decode_err<T: VmState>(payload: Vec<u8>) -> cpr_savevm::Error {
        let mut f = QemuFile::from_bytes(payload, "test");
        let mut r = FieldReader::new(&mut f, T::NAME, T::VERSION_ID);
        match r.read_state::<T>() {
            Ok(_) => panic!("{} decoded a bad payload", T::NAME),
            Err(e) => e,
        }
    }
}
