//! The `cpr-vm` command line: the machine ([`cpr::config::VmArgs`]) plus what the process
//! does with it (monitor, `-S`, `--incoming`, the `demo` and `inspect` subcommands).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cpr::config::{IncomingArg, Size, VmArgs};

/// `cpr-vm`: a KVM VMM whose guest survives a process restart (CPR reboot mode).
#[derive(Parser, Debug)]
#[command(
    name = "cpr-vm",
    version,
    args_conflicts_with_subcommands = true,
    after_help = crate::app::EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Run something other than a VM.
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// Log level on stderr: off, error, warn (the default), info, debug or trace. Without
    /// it, `RUST_LOG` (env_logger syntax) decides.
    #[arg(long = "log", value_name = "LEVEL", global = true)]
    pub log: Option<log::LevelFilter>,
    /// The machine.
    #[command(flatten)]
    pub vm: VmArgs,
    /// QMP monitor socket (created mode 0600).
    #[arg(long)]
    pub qmp: Option<PathBuf>,
    /// Do not start the guest: stay in `prelaunch` until `cont` or `cpr-load`.
    #[arg(short = 'S')]
    pub no_start: bool,
    /// Take state at start-up (QEMU's `-incoming`; may be given twice): a file
    /// (`file:<path>[,offset=N]` or a plain path), `defer` (then `migrate-incoming`),
    /// `unix:<path>` (the main channel of cpr-transfer), or a JSON channel such as
    /// `{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "..."}}`
    /// (cpr-transfer's cpr channel, on which the old process hands over RAM and monitor).
    #[arg(long)]
    pub incoming: Vec<IncomingArg>,
    /// Test double: pretend a migratable VFIO device of this name is attached (there is no
    /// real VFIO support yet; this exercises the cpr-reboot VFIO rule).
    #[arg(long = "x-vfio-test-device", hide = true)]
    pub vfio_test_devices: Vec<String>,
}

/// Subcommands of `cpr-vm`.
#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Boot the built-in guest, cpr-save it, restart the process, cpr-load, and show that the
    /// guest carried on.
    Demo(DemoArgs),
    /// Describe and check a checkpoint file (no KVM, no VM): its kind, machine, run state,
    /// epoch, RAM and sections; `--check` only checks it, `--extract-ram` writes its RAM.
    Inspect(crate::inspect::InspectArgs),
}

/// Options of `cpr-vm demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Directory for the RAM file, the state file and the QMP socket (default: a new
    /// temporary directory under /dev/shm, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Guest RAM size.
    #[arg(long = "mem-size", default_value = "256M")]
    pub mem_size: Size,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub smp: u32,
    /// How many hand-offs (or save/quit/start/load cycles) to run.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
    /// How the guest moves to a new process: `transfer` (cpr-transfer: a new process,
    /// started first, takes the RAM by descriptor; the fastest), `exec` (cpr-exec: the
    /// process execs itself), or `reboot` (V7 cpr-save, quit, a new process cpr-loads;
    /// what survives a host reboot).
    #[arg(long, value_enum, default_value = "transfer")]
    pub mode: DemoMode,
}

/// The demo's ways of moving the guest.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    /// cpr-transfer.
    Transfer,
    /// cpr-exec.
    Exec,
    /// V7 reboot mode (cpr-save / cpr-load).
    Reboot,
}

#[cfg(test)]
mod tests {
    use cpr::config::GIB;

    use super::*;

    #[test]
    fn globals_parse() {
        let cli = Cli::try_parse_from([
            "cpr-vm",
            "--global",
            "migration.mode=cpr-reboot",
            "--global",
            "migration.x-ignore-shared=on",
        ])
        .expect("globals");
        assert_eq!(cli.vm.globals.len(), 2);
    }

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "cpr-vm",
            "--mem-path",
            "/dev/shm/vm0.ram",
            "--mem-size",
            "1G",
            "--qmp",
            "/tmp/vm0.qmp",
            "-S",
            "--smp",
            "2",
            "--x-vfio-test-device",
            "0000:01:00.0",
        ])
        .expect("valid command line");
        assert!(cli.no_start);
        assert_eq!(cli.vm.mem_size, Size(GIB));
        assert_eq!(cli.vm.smp, 2);
        assert_eq!(cli.vfio_test_devices, ["0000:01:00.0"]);
        assert!(cli.command.is_none());
        let inspect = Cli::try_parse_from(["cpr-vm", "inspect", "--json", "file:/x,offset=8"])
            .expect("inspect");
        assert!(
            matches!(inspect.command, Some(CliCommand::Inspect(ref i)) if i.json && i.file == "file:/x,offset=8")
        );
        Cli::try_parse_from(["cpr-vm", "inspect", "--check", "--json", "/x"])
            .expect_err("--check prints no summary");
        let demo = Cli::try_parse_from(["cpr-vm", "demo", "--cycles", "2"]).expect("demo");
        assert!(matches!(demo.command, Some(CliCommand::Demo(ref d)) if d.cycles == 2));
        assert_eq!(demo.log, None);
    }

    #[test]
    fn log_level_parses() {
        let cli = Cli::try_parse_from(["cpr-vm", "--log", "info"]).expect("--log");
        assert_eq!(cli.log, Some(log::LevelFilter::Info));
        let demo = Cli::try_parse_from(["cpr-vm", "demo", "--log", "debug"]).expect("demo --log");
        assert_eq!(demo.log, Some(log::LevelFilter::Debug));
        let err = Cli::try_parse_from(["cpr-vm", "--log", "loud"]).expect_err("no such level");
        assert!(err.to_string().contains("--log"), "{err}");
    }
}
