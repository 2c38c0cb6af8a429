//! [`HashedBytes`]: bytes hashed where they were made, for [`QemuFile::put_hashed`].

use std::sync::Arc;

use super::{IO_BUF_SIZE, QemuFile};
use crate::error::Error;

/// Bytes and their CRC-32, computed when they were wrapped.
///
/// A producer thread can make a large run of stream bytes and hash them, so that the
/// thread writing the file ([`QemuFile::put_hashed`]) does not read them a second time
/// for the running CRC. The bytes cannot change once hashed: the hash always matches
/// them.
#[derive(Clone)]
pub struct HashedBytes {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl std::fmt::Debug for HashedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashedBytes")
            .field("len", &self.bytes.len())
            .field("crc32", &self.crc.clone().finalize())
            .finish()
    }
}

impl HashedBytes {
    /// Hash `bytes` (in the calling thread).
    pub fn new(bytes: Vec<u8>) -> Self {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes);
        HashedBytes { bytes, crc }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes back (to reuse the allocation).
    pub fn into_vec(self) -> Vec<u8> {
        self.bytes
    }
}

impl QemuFile {
    /// [`put_buffer`](Self::put_buffer) for bytes hashed beforehand: the same bytes reach
    /// the stream and the running CRC, but the CRC is extended with the hash `b` carries
    /// instead of reading the bytes again. A run of [`IO_BUF_SIZE`] bytes or more skips
    /// the buffer: whatever is buffered is written first, then `b` in place. Errors latch,
    /// as for every put.
    pub fn put_hashed(&mut self, b: &HashedBytes) {
        if !self.may_put() {
            return;
        }
        let bytes = b.as_slice();
        if self.wbuf.len() + bytes.len() < IO_BUF_SIZE {
            self.wbuf.extend_from_slice(bytes);
        } else {
            if self.flush_buffer().is_err() {
                return;
            }
            if let Err((done, source)) = self.backend.write_all(bytes) {
                self.latch(Error::Write {
                    name: self.name.clone(),
                    offset: self.position + done as u64,
                    source: Arc::new(source),
                });
                return;
            }
        }
        self.crc.combine(&b.crc);
        self.position += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashed runs of every size, between plain puts: the same bytes and CRC as
    /// `put_buffer` alone, wherever the buffer boundary falls.
    #[test]
    fn hashed_runs_are_plain_puts() {
        let data: Vec<u8> = (0..3 * IO_BUF_SIZE)
            .map(|i| ((i * 7 + i / 251) % 256).to_le_bytes()[0])
            .collect();
        for len in [
            0,
            1,
            100,
            IO_BUF_SIZE - 1,
            IO_BUF_SIZE,
            IO_BUF_SIZE + 1,
            3 * IO_BUF_SIZE,
        ] {
            for lead in [0, 5, IO_BUF_SIZE - 3] {
                let mut plain = QemuFile::memory_writer("plain");
                let mut hashed = QemuFile::memory_writer("hashed");
                for f in [&mut plain, &mut hashed] {
                    f.put_buffer(&data[..lead]);
                }
                plain.put_buffer(&data[..len]);
                hashed.put_hashed(&HashedBytes::new(data[..len].to_vec()));
                for f in [&mut plain, &mut hashed] {
                    f.put_u32(0xdead_beef);
                }
                assert_eq!(plain.position(), hashed.position(), "{len} after {lead}");
                assert_eq!(plain.crc32(), hashed.crc32(), "{len} after {lead}");
                assert_eq!(
                    plain.into_bytes().expect("plain"),
                    hashed.into_bytes().expect("hashed"),
                    "{len} after {lead}"
                );
            }
        }
    }

    /// A writer that takes `.0` bytes, then fails with ENOSPC.
    struct Full(usize);

    impl std::io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
            }
            self.0 -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hashed_puts_latch_like_puts() {
        let mut f = QemuFile::from_bytes(vec![1, 2, 3], "input");
        f.put_hashed(&HashedBytes::new(vec![0; 4]));
        assert!(matches!(f.error(), Some(Error::NotWritable { .. })));

        // A large run that hits ENOSPC part-way: the offset of the first byte not
        // written, and later puts do nothing.
        let mut f = QemuFile::from_writer(Full(100 + 1000), "full");
        f.put_buffer(&[1; 100]);
        f.put_hashed(&HashedBytes::new(vec![2; 2 * IO_BUF_SIZE]));
        let err = f.check().expect_err("ENOSPC was not latched");
        assert!(matches!(err, Error::Write { offset: 1100, .. }), "{err:?}");
        let at = f.position();
        f.put_hashed(&HashedBytes::new(vec![3; 10]));
        assert_eq!(f.position(), at);
    }
}
