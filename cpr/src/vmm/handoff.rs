//! The CPR state one process hands to the next (mainline's `cpr_state`, QEMU
//! `migration/cpr.c`, `cpr-transfer.c`, `cpr-exec.c`): the descriptors of guest RAM that
//! has no path (memfd), and the monitor's listening socket.
//!
//! * **cpr-transfer**: the new process listens on the `cpr` channel (a UNIX socket); the
//!   old one connects at `migrate` and sends one message: a small JSON manifest, framed
//!   (`CPRS`, length), with every descriptor attached (`SCM_RIGHTS`). The new process
//!   builds its whole machine, then answers [`READY`]; only then does the old one stop the
//!   guest.
//! * **cpr-exec**: the same manifest is written to a memfd that survives the `exec`; its
//!   descriptor number is in the environment variable [`EXEC_STATE_ENV`] (QEMU:
//!   `QEMU_CPR_EXEC_STATE`), and the manifest names the (inherited) descriptor numbers.
//!
//! Everything received is hostile until checked: bounded sizes, every descriptor named
//! exactly once, RAM descriptors must be regular files (memfd) of the size the manifest
//! says. Each RAM descriptor is reopened through `/proc/self/fd`, so the new process has
//! an open file description of its own: the RAM ownership lock (`ownership.rs`) lives on
//! open file descriptions, and the old process's lock must not travel with its descriptor.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The environment variable that names the memfd holding the CPR state across `exec`.
pub const EXEC_STATE_ENV: &str = "CPR_VM_EXEC_STATE";

/// The new process has built its machine and listens on its main channel; it will serve
/// the monitor socket it was handed.
pub const READY: u8 = b'R';
/// As [`READY`], but the new process has a monitor socket of its own: the old one keeps
/// (and at exit removes) its own.
pub const READY_OWN_MONITOR: u8 = b'r';

const MAGIC: &[u8; 4] = b"CPRS";
const VERSION: u32 = 1;
/// Largest manifest accepted.
const MAX_MANIFEST: usize = 64 << 10;
/// Most descriptors one hand-over carries.
pub(crate) const MAX_FDS: usize = 16;

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A socket or descriptor operation failed.
    #[error("cpr channel: {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What arrived is not a CPR state this process can use.
    #[error("cpr channel: {0}")]
    Invalid(String),
    /// The peer went away.
    #[error("cpr channel: the other process closed the channel {0}")]
    Closed(&'static str),
    /// The peer did not answer in time.
    #[error("cpr channel: no answer from the other process within {0:?} ({1})")]
    Timeout(Duration, &'static str),
}

impl HandoffError {
    fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> HandoffError {
        move |source| HandoffError::Io { op, source }
    }
}

type Result<T> = std::result::Result<T, HandoffError>;

/// One RAM block in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RamEntry {
    idstr: String,
    size: u64,
    /// Index into the attached descriptors (transfer) or a descriptor number (exec).
    fd: i32,
}

/// The monitor's listening socket in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct MonitorEntry {
    path: PathBuf,
    fd: i32,
}

/// The process that keeps the old image's VM and address space alive across `exec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct HelperEntry {
    pid: i32,
    /// The write end of the pipe the helper waits on.
    fd: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    ram: Vec<RamEntry>,
    monitor: Option<MonitorEntry>,
    #[serde(default)]
    helper: Option<HelperEntry>,
}

/// What the old process hands over.
#[derive(Debug, Default)]
pub struct Outgoing<'a> {
    /// RAM blocks with no path: `(idstr, size, descriptor)`.
    pub ram: Vec<(String, u64, BorrowedFd<'a>)>,
    /// The monitor's listening socket and its path.
    pub monitor: Option<(PathBuf, BorrowedFd<'a>)>,
    /// cpr-exec only: the helper's pid and the pipe end it waits on.
    pub helper: Option<(i32, BorrowedFd<'a>)>,
}

/// A RAM block's descriptor, received and reopened.
#[derive(Debug)]
pub struct HandedRam {
    /// The block.
    pub idstr: String,
    /// Its size.
    pub size: u64,
    /// A new open file description of the same memory.
    pub fd: OwnedFd,
}

/// What the new process received.
#[derive(Debug, Default)]
pub struct Received {
    /// RAM blocks.
    pub ram: Vec<HandedRam>,
    /// The old process's monitor listener and its path.
    pub monitor: Option<(PathBuf, OwnedFd)>,
    /// cpr-exec only: the helper that holds the old image, and the pipe end that releases
    /// it once this image's guest runs.
    pub helper: Option<(i32, OwnedFd)>,
}

impl Received {
    /// The descriptor handed over for block `idstr`.
    pub fn take_ram(&mut self, idstr: &str) -> Option<HandedRam> {
        let i = self.ram.iter().position(|r| r.idstr == idstr)?;
        Some(self.ram.remove(i))
    }
}

fn manifest_bytes(m: &Manifest) -> Vec<u8> {
    let json = serde_json::to_vec(m).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Sends the CPR state on the connected `cpr` channel: one message, all descriptors
/// attached.
pub fn send(stream: &UnixStream, out: &Outgoing<'_>) -> Result<()> {
    let mut fds: Vec<RawFd> = Vec::new();
    let mut index = |fd: BorrowedFd<'_>| {
        fds.push(fd.as_raw_fd());
        i32::try_from(fds.len() - 1).unwrap_or(i32::MAX)
    };
    let ram = out
        .ram
        .iter()
        .map(|(idstr, size, fd)| RamEntry {
            idstr: idstr.clone(),
            size: *size,
            fd: index(*fd),
        })
        .collect();
    let monitor = out.monitor.as_ref().map(|(path, fd)| MonitorEntry {
        path: path.clone(),
        fd: index(*fd),
    });
    let manifest = Manifest {
        version: VERSION,
        ram,
        monitor,
        helper: None,
    };
    let bytes = manifest_bytes(&manifest);
    if bytes.len() > MAX_MANIFEST + 8 || fds.len() > MAX_FDS {
        return Err(HandoffError::Invalid("too much to hand over".into()));
    }
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let mut sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| HandoffError::Io {
        op: "sending the CPR state",
        source: e.into(),
    })?;
    while sent < bytes.len() {
        sent += (&*stream)
            .write(&bytes[sent..])
            .map_err(HandoffError::io("sending the CPR state"))?;
    }
    Ok(())
}

/// Receives the CPR state from a connected `cpr` channel (within `timeout`).
pub fn receive(stream: &UnixStream, timeout: Duration) -> Result<Received> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(HandoffError::io("setting a timeout"))?;
    let mut buf = vec![0u8; MAX_MANIFEST + 8];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, mut fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| match e {
            Errno::EAGAIN => HandoffError::Timeout(timeout, "waiting for the CPR state"),
            e => HandoffError::Io {
                op: "receiving the CPR state",
                source: e.into(),
            },
        })?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in this process for this
                        // message (SCM_RIGHTS); nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC))
    };
    if truncated {
        return Err(HandoffError::Invalid(format!(
            "more than {MAX_FDS} descriptors attached"
        )));
    }
    if n == 0 {
        return Err(HandoffError::Closed("before sending the CPR state"));
    }
    // The rest of the frame, if the first read was short.
    let mut have = n;
    while have < 8 {
        have += read_some(stream, &mut buf[have..8])?;
    }
    if &buf[..4] != MAGIC {
        return Err(HandoffError::Invalid("not a CPR state (bad magic)".into()));
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_MANIFEST {
        return Err(HandoffError::Invalid(format!(
            "a CPR state of {len} bytes (at most {MAX_MANIFEST})"
        )));
    }
    while have < 8 + len {
        have += read_some(stream, &mut buf[have..8 + len])?;
    }
    let manifest: Manifest = serde_json::from_slice(&buf[8..8 + len])
        .map_err(|e| HandoffError::Invalid(format!("bad CPR state: {e}")))?;
    let mut slots: Vec<Option<OwnedFd>> = fds.drain(..).map(Some).collect();
    let mut take = |i: i32| -> Result<OwnedFd> {
        usize::try_from(i)
            .ok()
            .and_then(|i| slots.get_mut(i))
            .and_then(Option::take)
            .ok_or_else(|| HandoffError::Invalid(format!("descriptor {i} missing or named twice")))
    };
    let mut out = resolve(&manifest, &mut take)?;
    if slots.iter().any(Option::is_some) {
        return Err(HandoffError::Invalid("descriptors no entry names".into()));
    }
    out.helper = None;
    Ok(out)
}

fn read_some(stream: &UnixStream, buf: &mut [u8]) -> Result<usize> {
    match (&*stream).read(buf) {
        Ok(0) => Err(HandoffError::Closed("in the middle of the CPR state")),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(HandoffError::Timeout(
            stream.read_timeout().ok().flatten().unwrap_or_default(),
            "reading the CPR state",
        )),
        Err(e) => Err(HandoffError::Io {
            op: "receiving the CPR state",
            source: e,
        }),
    }
}

/// Checks the manifest and turns its descriptors into what this process uses.
fn resolve(manifest: &Manifest, take: &mut dyn FnMut(i32) -> Result<OwnedFd>) -> Result<Received> {
    if manifest.version != VERSION {
        return Err(HandoffError::Invalid(format!(
            "CPR state version {} (this cpr-vm reads {VERSION})",
            manifest.version
        )));
    }
    if manifest.ram.len() > MAX_FDS {
        return Err(HandoffError::Invalid("too many RAM blocks".into()));
    }
    let mut out = Received::default();
    for r in &manifest.ram {
        if out.ram.iter().any(|h| h.idstr == r.idstr) {
            return Err(HandoffError::Invalid(format!(
                "RAM block {} named twice",
                r.idstr
            )));
        }
        let fd = take(r.fd)?;
        out.ram.push(HandedRam {
            idstr: r.idstr.clone(),
            size: r.size,
            fd: reopen_ram(&r.idstr, r.size, fd)?,
        });
    }
    if let Some(m) = &manifest.monitor {
        let fd = take(m.fd)?;
        let meta = File::from(
            fd.try_clone()
                .map_err(HandoffError::io("examining the monitor socket"))?,
        )
        .metadata()
        .map_err(HandoffError::io("examining the monitor socket"))?;
        if !meta.file_type().is_socket() {
            return Err(HandoffError::Invalid(
                "the monitor descriptor is not a socket".into(),
            ));
        }
        out.monitor = Some((m.path.clone(), fd));
    }
    if let Some(h) = &manifest.helper {
        out.helper = Some((h.pid, take(h.fd)?));
    }
    Ok(out)
}

/// A new open file description of the memory behind `fd` (see the module docs), checked
/// to be a regular file of `size` bytes.
fn reopen_ram(idstr: &str, size: u64, fd: OwnedFd) -> Result<OwnedFd> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
        .map_err(HandoffError::io("reopening a RAM descriptor"))?;
    drop(fd);
    let meta = file
        .metadata()
        .map_err(HandoffError::io("examining a RAM descriptor"))?;
    if !meta.file_type().is_file() {
        return Err(HandoffError::Invalid(format!(
            "RAM block {idstr}: the descriptor is not shared memory"
        )));
    }
    if meta.size() != size {
        return Err(HandoffError::Invalid(format!(
            "RAM block {idstr}: the descriptor has {} bytes, the CPR state says {size}",
            meta.size()
        )));
    }
    Ok(file.into())
}

/// Writes the CPR state for `exec` into a memfd that survives it; returns the memfd, to be
/// named in [`EXEC_STATE_ENV`]. The descriptors in `out` must survive the exec too (their
/// numbers are written as they are).
pub fn exec_state(out: &Outgoing<'_>) -> Result<OwnedFd> {
    let manifest = Manifest {
        version: VERSION,
        ram: out
            .ram
            .iter()
            .map(|(idstr, size, fd)| RamEntry {
                idstr: idstr.clone(),
                size: *size,
                fd: fd.as_raw_fd(),
            })
            .collect(),
        monitor: out.monitor.as_ref().map(|(path, fd)| MonitorEntry {
            path: path.clone(),
            fd: fd.as_raw_fd(),
        }),
        helper: out.helper.map(|(pid, fd)| HelperEntry {
            pid,
            fd: fd.as_raw_fd(),
        }),
    };
    let fd = nix::sys::memfd::memfd_create(EXEC_STATE_ENV, nix::sys::memfd::MFdFlags::empty())
        .map_err(|e| HandoffError::Io {
            op: "creating the CPR state memfd",
            source: e.into(),
        })?;
    let mut file = File::from(fd);
    file.write_all(&manifest_bytes(&manifest))
        .map_err(HandoffError::io("writing the CPR state memfd"))?;
    Ok(file.into())
}

/// The CPR state an `exec`ing image left for this one, if [`EXEC_STATE_ENV`] names one.
/// The variable is removed, so a process this one starts does not see it.
pub fn take_exec_state() -> Result<Option<Received>> {
    let Some(value) = std::env::var_os(EXEC_STATE_ENV) else {
        return Ok(None);
    };
    // SAFETY: called at start-up, before any thread that reads the environment exists.
    unsafe { std::env::remove_var(EXEC_STATE_ENV) };
    let number: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 2)
        .ok_or_else(|| {
            HandoffError::Invalid(format!("{EXEC_STATE_ENV}={value:?} names no descriptor"))
        })?;
    let inherited = inherited_fd(number)?;
    let mut file = File::from(inherited);
    let mut bytes = Vec::new();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))
        .map_err(HandoffError::io("reading the CPR state memfd"))?;
    (&mut file)
        .take((MAX_MANIFEST + 8) as u64)
        .read_to_end(&mut bytes)
        .map_err(HandoffError::io("reading the CPR state memfd"))?;
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(HandoffError::Invalid(
            "the exec state is not a CPR state".into(),
        ));
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let json = bytes
        .get(8..8 + len)
        .ok_or_else(|| HandoffError::Invalid("the exec state is truncated".into()))?;
    let manifest: Manifest = serde_json::from_slice(json)
        .map_err(|e| HandoffError::Invalid(format!("bad CPR state: {e}")))?;
    let mut seen = Vec::new();
    let mut take = |n: i32| -> Result<OwnedFd> {
        if seen.contains(&n) {
            return Err(HandoffError::Invalid(format!("descriptor {n} named twice")));
        }
        seen.push(n);
        inherited_fd(n)
    };
    resolve(&manifest, &mut take).map(Some)
}

/// Takes ownership of inherited descriptor `n`, after checking it is open; marks it
/// close-on-exec again.
fn inherited_fd(n: RawFd) -> Result<OwnedFd> {
    if n <= 2 {
        return Err(HandoffError::Invalid(format!(
            "descriptor {n} is a standard stream"
        )));
    }
    // SAFETY: F_GETFD only reads this process's descriptor table, for any number.
    let flags = unsafe { libc::fcntl(n, libc::F_GETFD) };
    if flags < 0 {
        return Err(HandoffError::Invalid(format!("descriptor {n} is not open")));
    }
    // SAFETY: `n` is open (F_GETFD succeeded), was inherited across exec for this image
    // (the manifest names it), and is taken at most once (callers refuse duplicates).
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| HandoffError::Io {
        op: "marking an inherited descriptor close-on-exec",
        source: e.into(),
    })?;
    Ok(fd)
}

/// The new process's end of the `cpr` channel: listens at `path` (mode 0600; only a
/// stale socket is replaced), waits for the old process (as long as it takes: it connects
/// at its `migrate`), removes the socket and receives the CPR state. The returned
/// connection gets [`ready`] once this process has built its machine.
pub fn receive_on(path: &std::path::Path) -> Result<(Received, UnixStream)> {
    let (listener, ident) = crate::qmp::socket::bind_private(path)
        .map_err(HandoffError::io("listening on the cpr channel"))?;
    let accepted = listener.accept();
    crate::qmp::socket::remove_if_ours(path, ident);
    let (conn, _) = accepted.map_err(HandoffError::io("accepting on the cpr channel"))?;
    let received = receive(&conn, Duration::from_secs(30))?;
    Ok((received, conn))
}

/// Tells the old process that this one has built its machine and listens on its main
/// channel (QEMU: the new process closes the cpr channel), and whether it adopted the
/// monitor socket it was handed.
pub fn ready(conn: UnixStream, adopted_monitor: bool) -> Result<()> {
    send_byte(
        &conn,
        if adopted_monitor {
            READY
        } else {
            READY_OWN_MONITOR
        },
    )
}

/// A one-byte message, with a deadline.
pub(crate) fn send_byte(stream: &UnixStream, b: u8) -> Result<()> {
    (&*stream)
        .write_all(&[b])
        .map_err(HandoffError::io("writing to the other process"))
}

/// Waits for one byte; `Ok(None)` when the peer closed the channel.
pub(crate) fn recv_byte(
    stream: &UnixStream,
    timeout: Duration,
    waiting_for: &'static str,
) -> Result<Option<u8>> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(HandoffError::io("setting a timeout"))?;
    let mut b = [0u8; 1];
    match (&*stream).read(&mut b) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(b[0])),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(HandoffError::Timeout(timeout, waiting_for))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
        Err(source) => Err(HandoffError::Io {
            op: "reading from the other process",
            source,
        }),
    }
}

/// A descriptor that survives `exec`: a duplicate without `FD_CLOEXEC`.
pub(crate) fn inheritable(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(HandoffError::io("duplicating a descriptor for exec"))?;
    nix::fcntl::fcntl(
        dup.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| HandoffError::Io {
        op: "keeping a descriptor open across exec",
        source: e.into(),
    })?;
    Ok(dup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(size: u64) -> OwnedFd {
        let fd = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        File::from(fd.try_clone().expect("dup"))
            .set_len(size)
            .expect("size");
        fd
    }

    #[test]
    fn state_round_trips_over_a_socket_with_new_descriptions() {
        let (a, b) = UnixStream::pair().expect("pair");
        let ram = memfd(1 << 20);
        let (listener_path, listener) = {
            let dir = tempfile::tempdir().expect("dir");
            let p = dir.path().join("s");
            let l = std::os::unix::net::UnixListener::bind(&p).expect("bind");
            (p, OwnedFd::from(l))
        };
        let out = Outgoing {
            ram: vec![("pc.ram".into(), 1 << 20, ram.as_fd())],
            monitor: Some((listener_path.clone(), listener.as_fd())),
            helper: None,
        };
        send(&a, &out).expect("send");
        let mut got = receive(&b, Duration::from_secs(5)).expect("receive");
        let r = got.take_ram("pc.ram").expect("pc.ram");
        assert_eq!(r.size, 1 << 20);
        // The same memory, but not the same open file description.
        let (m1, m2) = (
            File::from(ram.try_clone().expect("dup"))
                .metadata()
                .expect("stat"),
            File::from(r.fd.try_clone().expect("dup"))
                .metadata()
                .expect("stat"),
        );
        assert_eq!(m1.ino(), m2.ino());
        let flags = |fd: &OwnedFd| nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL);
        flags(&r.fd).expect("the reopened descriptor is open");
        assert_eq!(
            got.monitor.as_ref().map(|m| m.0.clone()),
            Some(listener_path)
        );
    }

    #[test]
    fn hostile_states_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"XXXX\x02\x00\x00\x00{}".to_vec(), "bad magic"),
            (b"CPRS\xff\xff\xff\x7f".to_vec(), "at most"),
            (
                manifest_bytes(&Manifest {
                    version: 1,
                    ram: vec![RamEntry {
                        idstr: "pc.ram".into(),
                        size: 4096,
                        fd: 0,
                    }],
                    monitor: None,
                    helper: None,
                }),
                "missing or named twice",
            ),
            (
                manifest_bytes(&Manifest {
                    version: 9,
                    ram: vec![],
                    monitor: None,
                    helper: None,
                }),
                "version 9",
            ),
            (b"CPRS\x05\x00\x00\x00{\"a\":".to_vec(), "bad CPR state"),
        ];
        for (bytes, want) in cases {
            let (a, b) = UnixStream::pair().expect("pair");
            (&a).write_all(&bytes).expect("write");
            drop(a);
            let err = receive(&b, Duration::from_secs(5)).expect_err("refused");
            assert!(err.to_string().contains(want), "{err} (want {want})");
        }
        // A RAM descriptor of the wrong size.
        let (a, b) = UnixStream::pair().expect("pair");
        let ram = memfd(8192);
        let out = Outgoing {
            ram: vec![("pc.ram".into(), 4096, ram.as_fd())],
            ..Outgoing::default()
        };
        send(&a, &out).expect("send");
        let err = receive(&b, Duration::from_secs(5)).expect_err("size");
        assert!(err.to_string().contains("8192 bytes"), "{err}");
        // Nothing at all.
        let (a, b) = UnixStream::pair().expect("pair");
        drop(a);
        let err = receive(&b, Duration::from_secs(5)).expect_err("closed");
        assert!(matches!(err, HandoffError::Closed(_)), "{err}");
    }
}
