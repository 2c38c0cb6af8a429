//! Project automation, run as `cargo xtask <command>`.
//!
//! * `ci`: everything CI checks, in the order a reviewer would: formatting, clippy (both feature
//!   configurations), the whole test suite in both feature configurations (the `vfio` feature
//!   mirrors QEMU's `CONFIG_VFIO`, see `cpr-vfio-info`), doc tests, rustdoc warnings,
//!   `cargo package` of every crate (each built from its packaged form), and the
//!   end-to-end scenarios.
//! * `bench`: blackout phases against RAM size and vCPUs, and copy mode against RAM size and
//!   guest data, next to QEMU's figures (see `bench.rs`).
//! * `e2e`: real `cpr-vm` processes driven over QMP (see `e2e.rs`).
//!
//! Every step echoes the command it runs, so a failure can be reproduced by hand.

mod bench;
mod bench_handoff;
mod ci;
mod e2e;
mod e2e_files;
mod e2e_inspect;
mod e2e_mainline;
mod e2e_monitor;
mod e2e_ownership;
mod e2e_qemu_tools;
mod e2e_refusals;
mod e2e_transfer;

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
    /// Format check, clippy, all tests in both feature configurations, rustdoc, packaging,
    /// end-to-end scenarios.
    Ci {
        /// Skip formatting and clippy (tests and docs only).
        #[arg(long)]
        no_lint: bool,
    },
    /// Blackout phases and state-file size against RAM size and vCPUs (table + JSON).
    Bench {
        /// Measured cycles per configuration.
        #[arg(long, default_value_t = 7)]
        runs: u32,
        /// RAM sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "256M,1G,4G,16G")]
        sizes: Vec<String>,
        /// Measured runs per copy-mode row.
        #[arg(long, default_value_t = 3)]
        copy_runs: u32,
        /// Only the copy-mode tables (mainline, RAM copied into the file).
        #[arg(long)]
        copy_only: bool,
        /// Measure only these tables: reboot (V7 cpr-save/cpr-load), handoff (cpr-transfer
        /// and cpr-exec), copy (mainline, RAM copied). Default: all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Amounts of guest data for the copy-mode rows at a fixed RAM size.
        #[arg(long, value_delimiter = ',', default_value = "64M,512M,2G")]
        data: Vec<String>,
        /// The fixed RAM size of those rows.
        #[arg(long, default_value = "4G")]
        data_mem: String,
    },
    /// Real cpr-vm processes over QMP: save/quit/start/load scenarios, one line each.
    E2e {
        /// Save/quit/start/load cycles in the running-guest scenario.
        #[arg(long, default_value_t = 20)]
        cycles: u32,
        /// Run only the scenarios whose name contains this text.
        #[arg(long)]
        only: Option<String>,
        /// Run against this cpr-vm instead of building one (e.g. an older build, to see
        /// a new scenario fail against the code it guards).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ci { no_lint } => ci::run(!no_lint),
        Command::Bench {
            runs,
            sizes,
            copy_runs,
            copy_only,
            only,
            data,
            data_mem,
        } => ci::build_vm().and_then(|binary| {
            let out = ci::workspace_root()
                .join("target")
                .join("bench")
                .join("cpr-bench.json");
            let opts = bench::Options {
                runs,
                copy_runs,
                sizes,
                copy_only,
                only,
                data,
                data_mem,
            };
            bench::run(&binary, &opts, &out)
        }),
        Command::E2e {
            cycles,
            only,
            binary,
        } => binary.map_or_else(ci::build_vm, Ok).and_then(|binary| {
            let (passed, failed, _) = e2e::run(&binary, cycles, only.as_deref());
            if failed > 0 {
                Err(format!("{failed} e2e scenario(s) failed"))
            } else if passed == 0 {
                Err("no e2e scenario ran".into())
            } else {
                Ok(())
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
