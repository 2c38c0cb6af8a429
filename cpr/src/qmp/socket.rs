//! Listening UNIX sockets that one process owns: the QMP monitor's, and the channels of
//! cpr-transfer. Mode 0600 whatever the umask; only a stale socket (nobody listening) is
//! ever replaced.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Removes a stale socket at `path`; refuses a live one or a non-socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: a server is already listening there", path.display()),
            )),
            Err(_) => match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        },
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: exists and is not a socket; not replacing it",
                path.display()
            ),
        )),
    }
}

/// Binds a listening socket at `path` with mode 0600 whatever the umask:
/// the socket is bound inside a fresh 0700 directory, chmod'ed, then
/// hard-linked into place (which fails rather than clobbers if `path`
/// appeared meanwhile). Falls back to bind + chmod when the temporary path
/// would be too long or the directory cannot be made. Returns the listener
/// and the socket's (device, inode).
pub(crate) fn bind_private(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    remove_stale(path)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmpdir = parent.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmpsock = tmpdir.join("s");
    let mut listener = None;
    if tmpsock.as_os_str().len() < 100 && DirBuilder::new().mode(0o700).create(&tmpdir).is_ok() {
        let result = (|| {
            let l = UnixListener::bind(&tmpsock)?;
            fs::set_permissions(&tmpsock, Permissions::from_mode(0o600))?;
            match fs::hard_link(&tmpsock, path) {
                Ok(()) => Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                // Filesystems without hard links: rename instead.
                Err(_) => fs::rename(&tmpsock, path).map(|()| l),
            }
        })();
        let _ = fs::remove_file(&tmpsock);
        let _ = fs::remove_dir(&tmpdir);
        listener = Some(result?);
    }
    let listener = match listener {
        Some(l) => l,
        None => {
            let l = UnixListener::bind(path)?;
            fs::set_permissions(path, Permissions::from_mode(0o600))?;
            l
        }
    };
    let md = fs::symlink_metadata(path)?;
    Ok((listener, (md.dev(), md.ino())))
}

/// Removes the socket at `path` only while it is still the one bound there with identity
/// `ident` (device, inode): a socket another process bound there since is left alone.
pub(crate) fn remove_if_ours(path: &Path, ident: (u64, u64)) {
    if let Ok(md) = fs::symlink_metadata(path)
        && md.file_type().is_socket()
        && (md.dev(), md.ino()) == ident
    {
        let _ = fs::remove_file(path);
    }
}
