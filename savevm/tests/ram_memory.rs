//! Bounded memory: saving and loading 256 MiB of (generated) guest RAM
//! allocates a few hundred KiB at most, and a never-populated block costs a
//! few bytes of stream. A counting global allocator measures the peak; this
//! binary holds one test so nothing else allocates meanwhile.

mod ram_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cpr_migration_file::QemuFile;
use cpr_savevm::*;
use ram_common::*;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f`; return its result and the peak bytes allocated above the
/// level at the start.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: u64 = 1 << 20;
/// Enough for the 256 KiB read batch, the 32 KiB file buffers, a page
/// and small vectors; far below any RAM-sized buffer.
const BOUND: usize = 512 << 10;
/// Saving: five batches of [`consts::RAM_SAVE_BATCH`] stream bytes (one
/// being built, two queued, one being written, one on its way back), the
/// file's buffer and small vectors.
const SAVE_BOUND: usize = 5 * (consts::RAM_SAVE_BATCH + (8 << 10)) + (128 << 10);

#[test]
fn saving_and_loading_256_mib_uses_bounded_memory() {
    // Never populated: no record at all, a tiny stream.
    let mut zero = GenRam::new(vec![RamBlockDesc::copied("pc.ram", 256 * MIB)], 0);
    zero.never_populated = true;
    let ((bytes, stats), peak) = peak_during(|| save(&mut Registry::new(), &zero));
    eprintln!("save peak {peak}");
    assert!(peak < SAVE_BOUND, "save peak {peak}");
    assert_eq!((stats.ram_pages, stats.ram_zero_pages), (0, 65536));
    // START 53 (header 17, MEM_SIZE 8, block 15, EOS 8, footer 5) + END 18.
    assert_eq!(stats.ram_bytes, 71);
    assert!(bytes.len() < 500, "{}", bytes.len());

    let mut dst = GenRam::new(zero.descs.clone(), 0);
    let (r, peak) = peak_during(|| load(&bytes, &Registry::new(), &mut dst).map(|_| ()));
    r.expect("load");
    eprintln!("load peak {peak}");
    assert!(peak < BOUND, "load peak {peak}");
    assert_eq!(
        (dst.zeroed_pages, dst.written_pages, dst.wrong),
        (65536, 0, 0)
    );

    // One page in 1024 has data: 64 pages, 256 KiB of page data and a ZERO
    // record for each of the other pages, streamed to a sink so that the
    // output is not kept either.
    let sparse = GenRam::new(vec![RamBlockDesc::copied("pc.ram", 256 * MIB)], 1024);
    let (stats, peak) = peak_during(|| {
        let mut f = QemuFile::from_writer(std::io::sink(), "sink");
        save_state(&mut f, &mut Registry::new(), Some(&sparse)).expect("save")
    });
    eprintln!("save peak {peak}");
    assert!(peak < SAVE_BOUND, "save peak {peak}");
    assert_eq!((stats.ram_pages, stats.ram_zero_pages), (64, 65536 - 64));

    // Load it back; the stream (~850 KiB) is allocated before measuring and
    // read in place, so what is measured is the loader.
    let (bytes, _) = save(&mut Registry::new(), &sparse);
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let mut dst = GenRam::new(sparse.descs.clone(), 1024);
    let (r, peak) = peak_during(|| {
        let open = || Ok(QemuFile::from_reader(bytes, "t"));
        load_state(open, &Registry::new(), Some(&mut dst)).map(|_| ())
    });
    r.expect("load");
    eprintln!("load peak {peak}");
    assert!(peak < BOUND, "load peak {peak}");
    assert_eq!(
        (dst.written_pages, dst.zeroed_pages, dst.wrong),
        (64, 65536 - 64, 0)
    );
}
