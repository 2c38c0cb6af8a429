//! `cpr-vm`: a KVM VMM whose guest survives a process restart (QEMU Live Update V7, reboot
//! mode). See `cpr-vm --help`, and the crate docs of `cpr`. Exit statuses: `cpr::app`.

use std::process::ExitCode;

use clap::Parser;

use cpr::app::EXIT_FAILURE;
use cpr::config::{Cli, CliCommand};

fn main() -> ExitCode {
    // Usage errors exit with clap's status 2 (`cpr::app::EXIT_USAGE`).
    let cli = Cli::parse();
    let result = match cli.command {
        Some(CliCommand::Demo(ref args)) => cpr::demo::run(args),
        None => cpr::app::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpr-vm: {}", e.chain());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
