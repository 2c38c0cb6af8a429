//! The logger: the `cpr` library logs through the `log` facade and this binary prints it
//! on stderr, as `cpr-vm: warning: <message>` (warnings) and `cpr-vm: <message>` (errors),
//! which is what `cpr-vm` printed before it had a logger. Warnings and errors are shown by
//! default; `RUST_LOG` (env_logger syntax, e.g. `RUST_LOG=cpr=debug`) or `--log LEVEL`
//! (which wins) change that.

use std::io::Write;

use log::{Level, LevelFilter};

/// The prefix after `cpr-vm: ` for a record of `level`.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "",
        Level::Warn => "warning: ",
        Level::Info => "info: ",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    }
}

/// Installs the logger: warnings and errors by default, then `RUST_LOG`, then `level`.
pub(crate) fn init(level: Option<LevelFilter>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if let Some(level) = level {
        builder.filter_level(level);
    }
    builder
        .target(env_logger::Target::Stderr)
        .format(|buf, record| writeln!(buf, "cpr-vm: {}{}", prefix(record.level()), record.args()));
    // Only fails if a logger is already installed, which nothing else does.
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_read_as_before() {
        assert_eq!(prefix(Level::Warn), "warning: ");
        assert_eq!(prefix(Level::Error), "");
    }
}
