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
    /// Unplanned failover: run the group's failover runbook (fence, wait out the lease,
    /// promote the replica site, check) and follow it.
    Failover(cmd::runs::StartArgs),
    /// Planned switchover: run the group's switchover runbook (catch up, stop intake, drain,
    /// promote with zero data loss, reverse, check) and follow it.
    Switchover(cmd::runs::StartArgs),
    /// DR drill: run the group's drill runbook (copy of the replica, check, verify, clean up)
    /// while replication continues.
    Drill(cmd::runs::StartArgs),
    /// Failback: run the group's failback runbook (resync the old primary, verify, switch
    /// back).
    Failback(cmd::runs::StartArgs),
    /// List runbook runs.
    Runs(cmd::runs::ListArgs),
    /// Show, follow or cancel one runbook run.
    #[command(subcommand)]
    Run(cmd::runs::RunCmd),
    /// Approve (or reject, or confirm done) a run's step that waits for an operator.
    Approve(cmd::runs::ApproveArgs),
    /// Validate runbooks and print their plans.
    #[command(subcommand)]
    Runbook(cmd::runbook::RunbookCmd),
    /// Readiness probe of the stock runbooks: the site is primary with a live lease and its
    /// NBD exports answer writable.
    Probe(cmd::probe::Args),
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
        Command::Failover(a) => cmd::runs::start("failover", a),
        Command::Switchover(a) => cmd::runs::start("switchover", a),
        Command::Drill(a) => cmd::runs::start("drill", a),
        Command::Failback(a) => cmd::runs::start("failback", a),
        Command::Runs(a) => cmd::runs::list(a),
        Command::Run(c) => cmd::runs::run(c),
        Command::Approve(a) => cmd::runs::approve(a),
        Command::Runbook(c) => cmd::runbook::run(c),
        Command::Probe(a) => cmd::probe::run(a),
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
