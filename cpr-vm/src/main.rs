//! `cpr-vm`: a KVM VMM whose guest survives a process restart (QEMU Live Update V7, reboot
//! mode), built on the `cpr` library. See `cpr-vm --help`, and the crate docs of `cpr`.
//! Exit statuses: [`app`].

mod app;
mod cli;
mod demo;
mod error;
mod inspect;
mod logger;
mod vfio;

use std::process::ExitCode;

use clap::Parser;

use app::EXIT_FAILURE;
use cli::{Cli, CliCommand};

fn main() -> ExitCode {
    // Usage errors exit with clap's status 2 (`app::EXIT_USAGE`).
    let cli = Cli::parse();
    logger::init(cli.log);
    let result = match cli.command {
        Some(CliCommand::Demo(ref args)) => demo::run(args),
        Some(CliCommand::Inspect(ref args)) => inspect::run(args),
        None => app::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpr-vm: {}", e.chain());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
