//! Where a checkpoint's stream is read from: the file mapped in place when it can be,
//! else read through a buffer ([`StreamSource`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use cpr_migration_file::{MappedFile, QemuFile, SharedInput};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// A checkpoint file opened once, from which each pass of a load gets the stream from
/// `offset` ([`open`](Self::open)).
///
/// The file is mapped read-only under a read lease ([`MappedFile`]) where it can be: every
/// pass then reads the same bytes in place, nothing is copied out of the page cache, and
/// the loader hashes them once. Where it cannot (someone has it open for writing, it is
/// not ours, the file system has no leases), every pass reads it again through
/// `/proc/self/fd`, so a file renamed over the path meanwhile cannot mix two checkpoints.
pub struct StreamSource {
    pinned: String,
    offset: u64,
    name: &'static str,
    mapped: Option<Arc<MappedFile>>,
}

impl StreamSource {
    /// A source over `file` (opened read-only), its stream from `offset`; `name` is the
    /// channel name errors give.
    pub fn new(file: &File, path: &Path, offset: u64, name: &'static str) -> StreamSource {
        let mapped = match MappedFile::map(file, offset) {
            Ok(m) => Some(Arc::new(m)),
            Err(why) => {
                log::debug!(
                    "{} is read, not mapped: {}",
                    path.display(),
                    crate::error::chain(&why)
                );
                None
            }
        };
        StreamSource {
            pinned: format!("/proc/self/fd/{}", file.as_raw_fd()),
            offset,
            name,
            mapped,
        }
    }

    /// Whether the file is read in place.
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// The stream from its start, for one pass.
    pub fn open(&self) -> cpr_savevm::Result<QemuFile> {
        if let Some(m) = &self.mapped {
            let input: Arc<dyn SharedInput> = m.clone();
            return Ok(QemuFile::from_shared_input(input, self.name));
        }
        let io = |op| move |source| cpr_savevm::Error::Io { op, source };
        let mut f = QemuFile::open(&self.pinned, OFlag::O_RDONLY, Mode::empty(), self.name)
            .map_err(io("reopening the checkpoint"))?;
        f.seek_to(self.offset)
            .map_err(io("seeking to the stream"))?;
        Ok(f)
    }

    /// Lets the mapping go on a thread of its own: unmapping a large file takes a while on
    /// some hosts, and its lease may go a little later.
    pub fn release_in_background(self) {
        let Some(m) = self.mapped else {
            return;
        };
        let unmap = std::thread::Builder::new()
            .name("unmap-stream".into())
            .spawn(move || drop(m));
        if let Err(e) = unmap {
            log::debug!("unmapping the stream on this thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mapped when nobody writes the file, read when someone has it open for writing; the
    /// same stream from the offset either way, for every pass.
    #[test]
    fn mapped_or_read_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.state");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| i.to_le_bytes()[0]).collect();
        std::fs::write(&path, &bytes).expect("write");
        let read_all = |s: &StreamSource| {
            let mut f = s.open().expect("open");
            let mut out = vec![0; bytes.len() - 100];
            f.get_buffer(&mut out).expect("read");
            assert!(f.at_eof().expect("eof"));
            out
        };
        let file = File::open(&path).expect("open");
        let mapped = StreamSource::new(&file, &path, 100, "t");
        assert!(mapped.is_mapped());
        assert_eq!(read_all(&mapped), &bytes[100..]);
        assert_eq!(read_all(&mapped), &bytes[100..], "a second pass");
        mapped.release_in_background();
        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        let read = StreamSource::new(&file, &path, 100, "t");
        assert!(!read.is_mapped());
        assert_eq!(read_all(&read), &bytes[100..]);
        assert_eq!(read_all(&read), &bytes[100..], "a second pass");
    }
}
