//! What a VMM built on this crate is asked to run: the machine's configuration
//! ([`VmArgs`], with its command-line form for `clap`), [`Incoming`] and [`Global`].
//!
//! The options follow QEMU's where QEMU has one (`-m`/`--mem-size`, `--mem-path`, `--smp`,
//! `-S`, `--incoming`, `--qmp`, `--serial`). Restarting with *the same arguments* (plus `-S`
//! or `--incoming`) is how reboot mode finds the old RAM again, so every option that shapes the
//! machine is also recorded in the checkpoint and checked by `cpr-load`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, ValueEnum};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// A size with an optional binary suffix, as QEMU's `-m` takes it: `512` (MiB, QEMU's default
/// unit), `512M`, `1G`, `65536K`, `1073741824B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

/// Why a size argument was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size '{text}': {why}")]
pub struct SizeError {
    text: String,
    why: &'static str,
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| SizeError {
            text: text.to_string(),
            why,
        };
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        if digits.is_empty() {
            return Err(err(
                "expected a number with an optional K, M, G or T suffix",
            ));
        }
        let n: u64 = digits.parse().map_err(|_| err("number too large"))?;
        let shift = match suffix.to_ascii_uppercase().as_str() {
            "" | "M" | "MB" | "MIB" => 20,
            "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(err("unknown suffix (use K, M, G or T)")),
        };
        n.checked_mul(1u64 << shift)
            .map(Size)
            .ok_or_else(|| err("size overflows 64 bits"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(GIB) {
            write!(f, "{}G", b / GIB)
        } else if b != 0 && b.is_multiple_of(MIB) {
            write!(f, "{}M", b / MIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

/// `on`/`off`, as QEMU spells booleans on its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Where a `cpr-vm` takes its state from at start-up (the main channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// `--incoming defer`: start in `inmigrate` and wait for `migrate-incoming`.
    Defer,
    /// `--incoming file:<path>[,offset=<n>]` or `--incoming <path>`: load this file at start-up.
    File {
        /// The state file.
        path: PathBuf,
        /// Where the stream starts in the file (mainline's `offset=`).
        offset: u64,
    },
    /// `--incoming unix:<path>`: listen on this UNIX socket for the stream of a
    /// `cpr-transfer` migration.
    Unix {
        /// The socket path.
        path: PathBuf,
    },
}

/// One `--incoming` argument: the main channel, or QEMU's `cpr` channel (a JSON
/// `MigrationChannel` of type `cpr`, whose address must be a UNIX socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncomingArg {
    /// The main channel (QEMU's URI syntax, or a JSON channel of type `main`).
    Main(Incoming),
    /// The `cpr` channel of `cpr-transfer`: the socket on which the old process hands over
    /// its RAM (and monitor) descriptors.
    Cpr {
        /// The UNIX socket path.
        path: PathBuf,
    },
}

/// The `--incoming` arguments, checked: at most one main channel and one `cpr` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncomingChannels {
    /// The main channel.
    pub main: Option<Incoming>,
    /// The `cpr` channel's socket.
    pub cpr: Option<PathBuf>,
}

impl IncomingChannels {
    /// Gathers `--incoming` arguments; refuses two of a kind, and a `cpr` channel without a
    /// main one (QEMU: the cpr channel only carries descriptors).
    pub fn from_args(args: &[IncomingArg]) -> Result<IncomingChannels, String> {
        let mut out = IncomingChannels::default();
        for a in args {
            match a {
                IncomingArg::Main(m) if out.main.is_none() => out.main = Some(m.clone()),
                IncomingArg::Main(_) => return Err("more than one main --incoming channel".into()),
                IncomingArg::Cpr { path } if out.cpr.is_none() => out.cpr = Some(path.clone()),
                IncomingArg::Cpr { .. } => {
                    return Err("more than one cpr --incoming channel".into());
                }
            }
        }
        if out.cpr.is_some() && out.main.is_none() {
            return Err(
                "a cpr --incoming channel needs a main channel too (unix:PATH or defer)".into(),
            );
        }
        Ok(out)
    }
}

impl FromStr for IncomingArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim_start().starts_with('{') {
            return parse_channel_json(s);
        }
        s.parse().map(IncomingArg::Main)
    }
}

/// A JSON `MigrationChannel` as QEMU's `-incoming` takes it:
/// `{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "..."}}`.
fn parse_channel_json(s: &str) -> Result<IncomingArg, String> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("invalid JSON channel '{s}': {e}"))?;
    let kind = v.get("channel-type").and_then(serde_json::Value::as_str);
    let addr = v
        .get("addr")
        .ok_or_else(|| "Parameter 'addr' is missing".to_string())?;
    let transport = addr.get("transport").and_then(serde_json::Value::as_str);
    let unix_path = || -> Option<PathBuf> {
        (transport == Some("socket")
            && addr.get("type").and_then(serde_json::Value::as_str) == Some("unix"))
        .then(|| addr.get("path").and_then(serde_json::Value::as_str))
        .flatten()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
    };
    match kind {
        Some("cpr") => unix_path()
            .map(|path| IncomingArg::Cpr { path })
            .ok_or_else(|| "bad cpr channel address; must be unix".to_string()),
        Some("main") => {
            if let Some(path) = unix_path() {
                return Ok(IncomingArg::Main(Incoming::Unix { path }));
            }
            match transport {
                Some("file") => {
                    let path = addr
                        .get("filename")
                        .and_then(serde_json::Value::as_str)
                        .filter(|p| !p.is_empty())
                        .ok_or_else(|| "Parameter 'filename' is missing".to_string())?;
                    let offset = match addr.get("offset") {
                        None => 0,
                        Some(o) => o.as_u64().ok_or_else(|| {
                            "Invalid parameter type for 'offset', expected: integer".to_string()
                        })?,
                    };
                    Ok(IncomingArg::Main(Incoming::File {
                        path: PathBuf::from(path),
                        offset,
                    }))
                }
                other => Err(format!(
                    "unsupported main channel transport {}: use a unix socket or a file",
                    other.unwrap_or("(none)")
                )),
            }
        }
        Some(other) => Err(format!(
            "Parameter 'channel-type' does not accept value '{other}'"
        )),
        None => Err("Parameter 'channel-type' is missing".into()),
    }
}

impl FromStr for Incoming {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "defer" {
            return Ok(Incoming::Defer);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("'{s}' names no socket"));
            }
            return Ok(Incoming::Unix {
                path: PathBuf::from(path),
            });
        }
        let spec = s.strip_prefix("file:").unwrap_or(s);
        let (path, offset) = match spec.split_once(",offset=") {
            Some((p, o)) => (
                p,
                o.parse::<u64>()
                    .map_err(|_| format!("invalid offset '{o}' in '{s}'"))?,
            ),
            None => (spec, 0),
        };
        if path.is_empty() {
            return Err(format!("'{s}' names no file"));
        }
        Ok(Incoming::File {
            path: PathBuf::from(path),
            offset,
        })
    }
}

/// Where guest RAM comes from when there is no `--mem-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum MemBackend {
    /// Anonymous memory (QEMU's default `-m` RAM): volatile, lost with the process.
    #[default]
    Ram,
    /// A memfd (QEMU's `memory-backend-memfd share=on`): no path on any file system; it
    /// survives a process only by being handed over (`cpr-transfer`, `cpr-exec`).
    Memfd,
}

/// `--global DRIVER.PROPERTY=VALUE` (QEMU's `-global`): only the `migration` object's
/// properties are known here; they are checked when the VM is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    /// The object (`migration`).
    pub driver: String,
    /// The property (`x-ignore-shared`, `mode`, ...).
    pub property: String,
    /// Its value, as text.
    pub value: String,
}

impl FromStr for Global {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("'{s}': expected DRIVER.PROPERTY=VALUE, e.g. migration.mode=cpr-reboot");
        let (name, value) = s.split_once('=').ok_or_else(bad)?;
        let (driver, property) = name.split_once('.').ok_or_else(bad)?;
        if driver.is_empty() || property.is_empty() {
            return Err(bad());
        }
        Ok(Global {
            driver: driver.to_string(),
            property: property.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}={}", self.driver, self.property, self.value)
    }
}

/// The machine options shared by `cpr-vm` and `cpr-vm demo`.
#[derive(Args, Clone, Debug)]
pub struct VmArgs {
    /// Guest RAM size (QEMU `-m` syntax: 512 means MiB; K, M, G, T suffixes).
    #[arg(long = "mem-size", short = 'm', default_value = "256M")]
    pub mem_size: Size,
    /// File that backs guest RAM (created and sized if missing; reused, never resized, if
    /// present). Without it RAM is anonymous, which cpr-save refuses as volatile.
    #[arg(long = "mem-path", conflicts_with = "mem_backend")]
    pub mem_path: Option<PathBuf>,
    /// RAM without `--mem-path`: `ram` (anonymous, the default) or `memfd` (shared memory
    /// with no path, which `cpr-transfer` and `cpr-exec` hand over by descriptor;
    /// `cpr-reboot` refuses it: it cannot outlive the process).
    #[arg(long = "mem-backend", value_enum)]
    pub mem_backend: Option<MemBackend>,
    /// Map the RAM file shared (on, the default) or private (off; volatile, like QEMU's
    /// memory-backend-file share=off).
    #[arg(long = "mem-share", value_enum, default_value = "on")]
    pub mem_share: OnOff,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// Serial console output: a file path, or `stdout` (default), or `none`.
    #[arg(long, default_value = "stdout")]
    pub serial: String,
    /// How many bytes of RAM the guest's workload keeps busy (default: from 4 MiB to the
    /// end of RAM below 3 GiB).
    #[arg(long = "workload-size")]
    pub workload_size: Option<Size>,
    /// Migration settings at start-up, as QEMU's `-global migration.<property>=<value>`:
    /// capabilities (`migration.x-ignore-shared=on`) and parameters
    /// (`migration.mode=cpr-reboot`), with QEMU's property names.
    #[arg(long = "global", value_name = "migration.PROPERTY=VALUE")]
    pub globals: Vec<Global>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_qemu_units() {
        assert_eq!("512".parse::<Size>(), Ok(Size(512 * MIB)));
        assert_eq!("1G".parse::<Size>(), Ok(Size(GIB)));
        assert_eq!("64k".parse::<Size>(), Ok(Size(64 << 10)));
        assert_eq!("4096B".parse::<Size>(), Ok(Size(4096)));
        assert_eq!("16GiB".parse::<Size>(), Ok(Size(16 * GIB)));
        for bad in ["", "G", "1X", "99999999999999999999", "17179869184T"] {
            let err = bad.parse::<Size>().expect_err(bad);
            assert!(err.to_string().starts_with("invalid size"), "{err}");
        }
        assert_eq!(Size(GIB).to_string(), "1G");
        assert_eq!(Size(3 * MIB).to_string(), "3M");
    }

    #[test]
    fn incoming_forms() {
        assert_eq!("defer".parse::<Incoming>(), Ok(Incoming::Defer));
        assert_eq!(
            "file:/tmp/a,offset=4096".parse::<Incoming>(),
            Ok(Incoming::File {
                path: "/tmp/a".into(),
                offset: 4096
            })
        );
        assert_eq!(
            "/tmp/b".parse::<Incoming>(),
            Ok(Incoming::File {
                path: "/tmp/b".into(),
                offset: 0
            })
        );
        assert_eq!(
            "unix:/run/vm.sock".parse::<Incoming>(),
            Ok(Incoming::Unix {
                path: "/run/vm.sock".into()
            })
        );
        let cpr = r#"{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "/run/cpr.sock"}}"#;
        assert_eq!(
            cpr.parse::<IncomingArg>(),
            Ok(IncomingArg::Cpr {
                path: "/run/cpr.sock".into()
            })
        );
        let tcp = r#"{"channel-type": "cpr", "addr": {"transport": "socket", "type": "inet", "host": "x", "port": "1"}}"#;
        assert_eq!(
            tcp.parse::<IncomingArg>(),
            Err("bad cpr channel address; must be unix".to_string())
        );
        let both = [
            IncomingArg::Cpr { path: "/a".into() },
            IncomingArg::Main(Incoming::Defer),
        ];
        let ch = IncomingChannels::from_args(&both).expect("cpr + main");
        assert_eq!(ch.main, Some(Incoming::Defer));
        assert!(
            IncomingChannels::from_args(&both[..1]).is_err(),
            "cpr alone"
        );
        assert!(
            IncomingChannels::from_args(&[both[1].clone(), both[1].clone()]).is_err(),
            "two main channels"
        );
        assert_eq!(
            "file:".parse::<Incoming>(),
            Err("'file:' names no file".to_string())
        );
        assert_eq!(
            "file:/x,offset=abc".parse::<Incoming>(),
            Err("invalid offset 'abc' in 'file:/x,offset=abc'".to_string())
        );
    }

    #[test]
    fn globals_parse() {
        assert_eq!(
            "migration.x-ignore-shared=true".parse::<Global>(),
            Ok(Global {
                driver: "migration".into(),
                property: "x-ignore-shared".into(),
                value: "true".into()
            })
        );
        for bad in ["migration", "mode=cpr-reboot", ".mode=x", "migration.=x"] {
            assert!(bad.parse::<Global>().is_err(), "{bad}");
        }
    }
}
