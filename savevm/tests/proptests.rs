//! Property tests: random states round-trip; arbitrary or mutated bytes
//! never panic the loader and never restore anything unless they load.

mod common;

use common::*;
use proptest::prelude::*;

fn timer() -> impl Strategy<Value = Timer> {
    (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(a, b, c)| Timer { a, b, c })
}

fn dev() -> impl Strategy<Value = Dev> {
    (
        any::<u16>(),
        any::<bool>(),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(x, flag, v)| Dev {
            x,
            flag,
            extra: DevExtra { v },
        })
}

proptest! {
    #[test]
    fn random_states_round_trip(t in timer(), d in dev()) {
        let mut src = Machine::new(t.clone(), d.clone());
        let bytes = src.save();
        let mut dst = Machine::new(
            Timer { a: 1, b: 1, c: 1 },
            Dev { x: 1, flag: true, extra: DevExtra { v: 1 } },
        );
        dst.load(&bytes).unwrap();
        // A subsection that was not needed loads as its default.
        prop_assert_eq!(dst.states(), (t, d));
        prop_assert_eq!(dst.restores(), 2);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut m = Machine::new(Timer::default(), Dev::default());
        let _ = m.load(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = b"QEVM\0\0\0\x03".to_vec();
        bytes.extend(tail);
        let mut m = Machine::new(Timer::default(), Dev::default());
        let _ = m.load(&bytes);
        prop_assert_eq!(m.restores(), 0);
    }

    #[test]
    fn mutated_streams_never_panic_and_restore_nothing(
        t in timer(),
        d in dev(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = Machine::new(t, d).save();
        let original = bytes.clone();
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let mut m = Machine::new(Timer::default(), Dev::default());
        let before = m.states();
        if m.load(&bytes).is_err() {
            prop_assert_eq!(m.restores(), 0);
            prop_assert_eq!(m.states(), before);
        } else {
            // Only an edit that changed nothing can load.
            prop_assert_eq!(bytes, original);
        }
    }
}
