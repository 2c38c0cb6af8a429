//! Which checkpoint the RAM left in place belongs to.
//!
//! A checkpoint describes RAM that it does not contain: loading it is only right while the
//! RAM file still holds exactly what the guest left at save time. If the guest ran on
//! (`cont` after `cpr-save`), or another process booted over the same RAM file, loading
//! the old checkpoint would corrupt the guest silently. V7 does not notice.
//!
//! So `cpr-save` (and an in-place `migrate`) tags each in-place RAM file with a fresh
//! epoch, an extended attribute `user.cpr.epoch`, and records the same epoch in the
//! checkpoint; as soon as a guest runs over that RAM again the tag is replaced by
//! `running`. `cpr-load` refuses a checkpoint whose epoch is not the RAM file's. A file
//! system without user extended attributes gives no protection (the save says so on
//! stderr), and the check is skipped for it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The extended attribute.
pub(crate) const XATTR: &str = "user.cpr.epoch";
/// The tag of RAM that a guest runs on.
pub(crate) const RUNNING: &str = "running";

/// A new epoch: time, pid and a per-process counter, unique enough for one host.
pub(crate) fn fresh() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{now:x}-{:x}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Tags `files` with `epoch`; returns the files whose file system refused (no user xattrs).
pub(crate) fn tag(files: &[PathBuf], epoch: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| xattr::set(f, XATTR, epoch.as_bytes()).is_err())
        .cloned()
        .collect()
}

/// A save's epoch: written into the checkpoint first, put on the RAM files just before
/// the checkpoint is committed, and taken back if the commit fails (so a failed save never
/// invalidates the previous, still valid, checkpoint).
#[derive(Debug)]
pub(crate) struct Plan {
    /// The epoch.
    pub epoch: String,
    files: Vec<(PathBuf, Option<String>)>,
}

impl Plan {
    /// An epoch for `files`, or `None` if one of them cannot carry one. With `reuse`, the
    /// epoch the files already carry is kept when they all carry the same one: a second
    /// checkpoint of RAM that has not changed since the first must not make the first stale.
    pub(crate) fn new(files: &[PathBuf], reuse: bool) -> Option<Plan> {
        let mut prev = Vec::with_capacity(files.len());
        for f in files {
            // An error (no user xattrs on this file system) means no protection.
            let old = xattr::get(f, XATTR).ok()?;
            prev.push((f.clone(), old.and_then(|v| String::from_utf8(v).ok())));
        }
        let first = prev.first()?.1.clone();
        let epoch = match first {
            Some(e)
                if reuse && e != RUNNING && prev.iter().all(|(_, o)| o.as_ref() == Some(&e)) =>
            {
                e
            }
            _ => fresh(),
        };
        Some(Plan { epoch, files: prev })
    }

    /// Tags the files with the epoch; if one refuses, the others get their old tags back.
    pub(crate) fn apply(&self) -> Result<(), PathBuf> {
        for (f, _) in &self.files {
            if xattr::set(f, XATTR, self.epoch.as_bytes()).is_err() {
                self.undo();
                return Err(f.clone());
            }
        }
        Ok(())
    }

    /// Puts the old tags back (the checkpoint was not committed).
    pub(crate) fn undo(&self) {
        for (f, old) in &self.files {
            let _ = match old {
                Some(v) => xattr::set(f, XATTR, v.as_bytes()),
                None => xattr::remove(f, XATTR),
            };
        }
    }
}

/// The epoch `file` is tagged with, if any.
pub(crate) fn read(file: &Path) -> Option<String> {
    xattr::get(file, XATTR)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ram");
        std::fs::write(&f, b"x").expect("write");
        let e = fresh();
        assert_ne!(e, fresh(), "epochs are unique");
        let refused = tag(std::slice::from_ref(&f), &e);
        if refused.is_empty() {
            assert_eq!(read(&f).as_deref(), Some(e.as_str()));
            tag(std::slice::from_ref(&f), RUNNING);
            assert_eq!(read(&f).as_deref(), Some(RUNNING));
        } else {
            eprintln!("skipped: {} has no user xattrs", dir.path().display());
        }
    }
}
