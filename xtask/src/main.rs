//! Project automation, run as `cargo xtask <command>`.
//!
//! * `ci`: everything CI checks, in the order a reviewer would: formatting, clippy (both feature
//!   configurations), the whole test suite in both feature configurations (the `vfio` feature
//!   mirrors QEMU's `CONFIG_VFIO`, see `cpr-vfio-info`), doc tests and rustdoc warnings.
//!
//! Every step echoes the command it runs, so a failure can be reproduced by hand.

mod ci;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface of `cargo xtask`.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "cpr project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format check, clippy, all tests in both feature configurations, rustdoc.
    Ci {
        /// Skip formatting and clippy (tests and docs only).
        #[arg(long)]
        no_lint: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ci { no_lint } => ci::run(!no_lint),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
