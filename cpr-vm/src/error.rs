//! What the `cpr-vm` process itself can fail with, around the library's [`cpr::Error`].

use std::path::PathBuf;

use cpr_harness::HarnessError;

/// A `cpr-vm` failure (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The VMM failed (at start-up: RAM, RAM lock, KVM, `--incoming`, ...).
    #[error(transparent)]
    Vm(#[from] cpr::Error),
    /// The `--incoming` arguments do not go together.
    #[error("--incoming: {0}")]
    Incoming(String),
    /// The CPR state from the old process (cpr-transfer, cpr-exec) is unusable.
    #[error(transparent)]
    Handoff(#[from] cpr::vmm::HandoffError),
    /// The QMP monitor's socket could not be created.
    #[error("cannot create QMP socket {}", path.display())]
    QmpSocket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The demo's directory could not be created.
    #[error("cannot create {}", path.display())]
    DemoDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Driving the demo's processes failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// `cpr-vm inspect`: FILE is not a file specification.
    #[error("{0}")]
    InspectUsage(String),
    /// `cpr-vm inspect`: the file cannot be opened.
    #[error("cannot open {}", path.display())]
    InspectOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `cpr-vm inspect`: the loader refuses the file (its own error).
    #[error("{}", path.display())]
    Inspect {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: Box<cpr_savevm::Error>,
    },
    /// `cpr-vm inspect --extract-ram` on a stream that carries no RAM pages.
    #[error(
        "{}: the stream carries no RAM pages (a cpr-save checkpoint, or RAM left in place): nothing to extract",
        path.display()
    )]
    NothingToExtract {
        /// The file.
        path: PathBuf,
    },
    /// `cpr-vm inspect --extract-ram`: an extracted block's file cannot be written.
    #[error("cannot write {}", path.display())]
    Extract {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `cpr-vm inspect --extract-ram`: a block's idstr cannot name a file.
    #[error("RAM block {idstr:?}: its name cannot be a file name")]
    ExtractName {
        /// The block's idstr.
        idstr: String,
    },
    /// Standard output could not be written (e.g. a closed pipe).
    #[error("cannot write to standard output")]
    Output(#[source] std::io::Error),
    /// The demo's guest did not carry on cleanly.
    #[error("the guest did not carry on cleanly in cycle(s) {cycles:?}")]
    DemoFailed {
        /// The cycles that failed.
        cycles: Vec<u32>,
    },
}

impl AppError {
    /// The error and its causes, joined by `: `.
    pub fn chain(&self) -> String {
        cpr::error::chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_chained() {
        let e = AppError::QmpSocket {
            path: "/tmp/x.sock".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(
            e.chain(),
            "cannot create QMP socket /tmp/x.sock: Permission denied (os error 13)"
        );
    }
}
