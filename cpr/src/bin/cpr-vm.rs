//! `cpr-vm`: a KVM VMM whose guest survives a process restart (QEMU Live Update V7, reboot
//! mode). See `cpr-vm --help`, and the crate docs of `cpr`.

use std::process::ExitCode;

use clap::Parser;

use cpr::config::{Cli, CliCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(CliCommand::Demo(ref args)) => cpr::demo::run(args),
        None => cpr::app::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpr-vm: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
