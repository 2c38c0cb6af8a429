//! Encoding of the `globalstate` section payload (migration/global_state.c).
//!
//! The section itself (vmsd `globalstate`, version 1) is framed by the savevm
//! crate; this module only turns a run state into its two fields and back:
//!
//! ```text
//! be32  size          strlen(runstate) + 1
//! u8    runstate[100] NUL-terminated name, zero-padded
//! ```
//!
//! QEMU 9.0 keeps the 100 bytes on the wire but splits them:
//! `runstate[32]`, `has_vm_was_suspended` (byte 32), `vm_was_suspended`
//! (byte 33), `unused[66]`. Every run-state name is shorter than 32 bytes and
//! 6.2 writers zero-pad, so one decoder reads both layouts:
//! [`GlobalState::vm_was_suspended`] is `None` for a 6.2 stream
//! (`has_vm_was_suspended == 0`).
//!
//! Stricter than QEMU on load, by choice: QEMU ignores `size` and, for a
//! buffer without a NUL, overwrites the last byte with one; here a wrong
//! `size` or a missing NUL is an error. QEMU writers never produce either.

use crate::error::{Error, Result};
use crate::state::RunState;

/// Length of the runstate buffer (`GlobalState.runstate`).
pub const RUNSTATE_BUF_LEN: usize = 100;

/// Length of the whole payload: `size` plus the buffer.
pub const PAYLOAD_LEN: usize = 4 + RUNSTATE_BUF_LEN;

/// Offset of 9.0's `has_vm_was_suspended` byte in the buffer.
const HAS_VM_WAS_SUSPENDED: usize = 32;
/// Offset of 9.0's `vm_was_suspended` byte in the buffer.
const VM_WAS_SUSPENDED: usize = 33;

/// The decoded `globalstate` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalState {
    /// The saved run state (`global_state_get_runstate()`).
    pub runstate: RunState,
    /// QEMU 9.0's flag: `None` writes/reads the 6.2 layout
    /// (`has_vm_was_suspended == 0`), `Some(b)` the 9.0 one.
    pub vm_was_suspended: Option<bool>,
}

impl GlobalState {
    /// The 6.2 payload for `runstate`.
    pub const fn new(runstate: RunState) -> Self {
        GlobalState {
            runstate,
            vm_was_suspended: None,
        }
    }

    /// The `size` field and the runstate buffer (`global_state_store()` +
    /// `pre_save`).
    pub fn encode(&self) -> (u32, [u8; RUNSTATE_BUF_LEN]) {
        let name = self.runstate.as_str().as_bytes();
        let mut buf = [0u8; RUNSTATE_BUF_LEN];
        buf[..name.len()].copy_from_slice(name);
        if let Some(was) = self.vm_was_suspended {
            buf[HAS_VM_WAS_SUSPENDED] = 1;
            buf[VM_WAS_SUSPENDED] = u8::from(was);
        }
        (name_size(name.len()), buf)
    }

    /// The payload as it appears in the section: big-endian `size`, then the
    /// buffer.
    pub fn to_bytes(&self) -> [u8; PAYLOAD_LEN] {
        let (size, buf) = self.encode();
        let mut out = [0u8; PAYLOAD_LEN];
        out[..4].copy_from_slice(&size.to_be_bytes());
        out[4..].copy_from_slice(&buf);
        out
    }

    /// Decode the `size` field and the buffer (`post_load`).
    ///
    /// Errors: no NUL in the buffer, a name that is not UTF-8, `size` other
    /// than `strlen + 1`, or a name that is not a run state.
    pub fn decode(size: u32, buf: &[u8; RUNSTATE_BUF_LEN]) -> Result<Self> {
        let len = buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::GlobalStateUnterminated)?;
        let expected = name_size(len);
        if size != expected {
            return Err(Error::GlobalStateSize { size, expected });
        }
        let name = std::str::from_utf8(&buf[..len]).map_err(|_| Error::GlobalStateNotUtf8)?;
        let runstate = name.parse()?;
        // Every name is < 32 bytes, so bytes 32 and 33 lie past the NUL.
        let vm_was_suspended =
            (buf[HAS_VM_WAS_SUSPENDED] != 0).then_some(buf[VM_WAS_SUSPENDED] != 0);
        Ok(GlobalState {
            runstate,
            vm_was_suspended,
        })
    }

    /// Decode a whole payload (exactly [`PAYLOAD_LEN`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (size, buf) = bytes
            .split_first_chunk::<4>()
            .and_then(|(size, rest)| Some((size, <&[u8; RUNSTATE_BUF_LEN]>::try_from(rest).ok()?)))
            .ok_or(Error::GlobalStateLength {
                len: bytes.len(),
                expected: PAYLOAD_LEN,
            })?;
        Self::decode(u32::from_be_bytes(*size), buf)
    }
}

/// `strlen + 1` for a name found inside the 100-byte buffer.
fn name_size(len: usize) -> u32 {
    debug_assert!(len < RUNSTATE_BUF_LEN);
    // len < 100, so this never saturates.
    u32::try_from(len + 1).unwrap_or(u32::MAX)
}

/// [`GlobalState::encode`] of the 6.2 layout for `state`.
pub fn encode_global_state(state: RunState) -> (u32, [u8; RUNSTATE_BUF_LEN]) {
    GlobalState::new(state).encode()
}

/// The run state in a `globalstate` payload ([`GlobalState::decode`]).
pub fn decode_global_state(size: u32, buf: &[u8; RUNSTATE_BUF_LEN]) -> Result<RunState> {
    GlobalState::decode(size, buf).map(|g| g.runstate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = RunState> {
        proptest::sample::select(RunState::ALL.to_vec())
    }

    #[test]
    fn golden_running() {
        let bytes = GlobalState::new(RunState::Running).to_bytes();
        // size = strlen("running") + 1 = 8, big-endian.
        assert_eq!(bytes[..4], [0, 0, 0, 8]);
        assert_eq!(&bytes[4..12], b"running\0");
        assert!(bytes[12..].iter().all(|&b| b == 0));
    }

    #[test]
    fn golden_9_0_flag() {
        let g = GlobalState {
            runstate: RunState::Paused,
            vm_was_suspended: Some(true),
        };
        let (size, buf) = g.encode();
        assert_eq!(size, 7);
        assert_eq!(&buf[..7], b"paused\0");
        assert_eq!(buf[32..34], [1, 1]);
        assert_eq!(GlobalState::decode(size, &buf).unwrap(), g);
    }

    #[test]
    fn no_nul_is_an_error() {
        let buf = [b'a'; RUNSTATE_BUF_LEN];
        assert!(matches!(
            GlobalState::decode(100, &buf),
            Err(Error::GlobalStateUnterminated)
        ));
    }

    #[test]
    fn non_utf8_is_an_error() {
        let mut buf = [0u8; RUNSTATE_BUF_LEN];
        buf[..3].copy_from_slice(&[0xff, 0xfe, b'x']);
        assert!(matches!(
            GlobalState::decode(4, &buf),
            Err(Error::GlobalStateNotUtf8)
        ));
    }

    #[test]
    fn unknown_name_is_an_error() {
        let mut buf = [0u8; RUNSTATE_BUF_LEN];
        buf[..10].copy_from_slice(b"preconfig\0");
        match GlobalState::decode(10, &buf) {
            Err(Error::UnknownRunState { name }) => assert_eq!(name, "preconfig"),
            other => panic!("{other:?}"),
        }
        // Empty name (QEMU's register_global_state() initial value).
        assert!(matches!(
            GlobalState::decode(1, &[0u8; RUNSTATE_BUF_LEN]),
            Err(Error::UnknownRunState { name }) if name.is_empty()
        ));
    }

    #[test]
    fn size_out_of_range_is_an_error() {
        let (_, buf) = encode_global_state(RunState::Suspended);
        for size in [0, 1, 9, 11, 100, 101, u32::MAX] {
            assert!(
                matches!(
                    GlobalState::decode(size, &buf),
                    Err(Error::GlobalStateSize { size: s, expected: 10 }) if s == size
                ),
                "size {size}"
            );
        }
        assert_eq!(decode_global_state(10, &buf).unwrap(), RunState::Suspended);
    }

    #[test]
    fn wrong_payload_length_is_an_error() {
        let bytes = GlobalState::new(RunState::Colo).to_bytes();
        for len in [0, 3, 4, PAYLOAD_LEN - 1, PAYLOAD_LEN + 1] {
            let mut v = bytes.to_vec();
            v.resize(len, 0);
            assert!(
                matches!(
                    GlobalState::from_bytes(&v),
                    Err(Error::GlobalStateLength { len: l, expected: PAYLOAD_LEN }) if l == len
                ),
                "len {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip(state in any_state(), flag in proptest::option::of(any::<bool>())) {
            let g = GlobalState { runstate: state, vm_was_suspended: flag };
            prop_assert_eq!(GlobalState::from_bytes(&g.to_bytes()).unwrap(), g);
            let (size, buf) = encode_global_state(state);
            prop_assert_eq!(decode_global_state(size, &buf).unwrap(), state);
            prop_assert_eq!(size as usize, state.as_str().len() + 1);
        }

        #[test]
        fn hostile_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_LEN + 8)) {
            let _ = GlobalState::from_bytes(&bytes);
        }

        #[test]
        fn hostile_buffers_never_panic(size in any::<u32>(), buf in proptest::array::uniform32(any::<u8>())) {
            // Put the random bytes at the start of an otherwise valid buffer,
            // which exercises names, NUL placement and the 9.0 flag bytes.
            let mut full = [0u8; RUNSTATE_BUF_LEN];
            full[..32].copy_from_slice(&buf);
            full[32] = buf[0];
            full[33] = buf[1];
            if let Ok(g) = GlobalState::decode(size, &full) {
                prop_assert_eq!(size as usize, g.runstate.as_str().len() + 1);
            }
        }
    }
}
