//! The `tandem` command: parses arguments, calls the crates, prints. Exit codes: 0 ok,
//! 1 failed operation, 2 bad usage or bad input.

mod cmd;
mod exit;
mod local;
mod logging;
mod writer;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tandem: disaster-recovery replication and failover orchestration between paired sites.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log format: `human` (default) or `json`.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,

    /// Log filter (tracing env-filter syntax), e.g. `info`, `tandem=debug`.
    #[arg(long, global = true, env = "TANDEM_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node (coordinator or replicator) of a topology in the foreground.
    Node(cmd::node::Args),
    /// Start or stop every node of a topology on this machine, as child processes.
    #[command(subcommand)]
    Local(cmd::local::LocalCmd),
    /// Show the cluster: leader, members, groups with roles, epoch, state and RPO.
    Status(cmd::status::Args),
    /// Check and inspect topology config files.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    /// Pause replication of a group (recorded in the audit chain).
    Pause(cmd::ops::GroupArgs),
    /// Resume replication of a paused group.
    Resume(cmd::ops::GroupArgs),
    /// Unplanned failover: fence the primary, wait out its lease, promote the replica site.
    Failover(cmd::ops::GroupArgs),
    /// Planned switchover: drain to RPO 0, release the lease, swap roles with zero data loss.
    Switchover(cmd::ops::GroupArgs),
    /// Compare merkle roots of a group's volumes on primary and replica at a barrier.
    Verify(cmd::verify::Args),
    /// Export or verify the evidence folder auditors read.
    #[command(subcommand)]
    Evidence(cmd::evidence::EvidenceCmd),
    /// Measure against real local processes (coordinator commits, replication throughput).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Run fault scenarios against real local processes and check the promises.
    #[command(subcommand)]
    Chaos(cmd::chaos::ChaosCmd),
    /// Print the audit chain.
    Audit(cmd::ops::AuditArgs),
    /// Run the whole product on this machine: three coordinators, two sites, a live
    /// workload, a failover, printed RPO/RTO and an evidence folder.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `node` logs to its log file through stdout; everything else logs to stderr.
    logging::init(&cli.log_format, &cli.log);
    let result = match cli.command {
        Command::Node(a) => cmd::node::run(a),
        Command::Local(c) => cmd::local::run(c),
        Command::Status(a) => cmd::status::run(a),
        Command::Config(c) => cmd::config::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Pause(a) => cmd::ops::pause(a),
        Command::Resume(a) => cmd::ops::resume(a),
        Command::Failover(a) => cmd::ops::operate("failover", a),
        Command::Switchover(a) => cmd::ops::operate("switchover", a),
        Command::Audit(a) => cmd::ops::audit(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Chaos(c) => cmd::chaos::run(c),
        Command::Evidence(c) => cmd::evidence::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit::code_of(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
