//! The `tandem` command: parses arguments, calls the crates, prints. Exit codes: 0 ok,
//! 1 failed operation, 2 bad usage or bad input.

mod cmd;
mod exit;
mod logging;
mod progress;
#[cfg(test)]
mod reference;
mod timefmt;

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

    /// Client identity for calls to the cluster: the certificate `NAME.pem` / `NAME.key` in
    /// the topology's `[tls] dir` (operator, auditor, viewer, or one you issued).
    #[arg(
        long,
        global = true,
        env = "TANDEM_IDENTITY",
        default_value = "operator"
    )]
    identity: String,

    /// Client certificate file (PEM), overriding `--identity`; needs `--key`.
    #[arg(long, global = true, env = "TANDEM_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,

    /// Client private key file (PEM) of `--cert`.
    #[arg(long, global = true, env = "TANDEM_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,

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
    /// Move a group's replica side to another replicator host at the same site: the new host
    /// resyncs from the primary while writes go on, then holds the group's data (audited).
    Move(cmd::move_group::Args),
    /// Mark a tagged checkpoint in a group's stream (at the primary: a consistent cut).
    Checkpoint(cmd::pitr::CheckpointArgs),
    /// List the recovery points the replica's history holds.
    Checkpoints(cmd::pitr::CheckpointsArgs),
    /// Build a group's resources as they were at a point in time into a folder at the replica
    /// site (replication continues); prints time, seq and merkle roots; audited.
    Recover(cmd::pitr::RecoverArgs),
    /// Compare a group's copies on primary and replica: volumes chunk by chunk at barriers.
    Verify(cmd::verify::Args),
    /// Resync a group's replica from the primary by merkle diff, with a progress bar
    /// (joins a resync already running: initial sync, a returning site, a journal overflow).
    Resync(cmd::resync::Args),
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
    /// Corrective actions after an exercise: add, assign, close, list (operators).
    #[command(subcommand)]
    Action(cmd::action::ActionCmd),
    /// Sign the after-action review of a finished run (auditors).
    #[command(subcommand)]
    Review(cmd::review::ReviewCmd),
    /// Run the whole product on this machine: three coordinators, two sites, a live
    /// workload, a failover, printed RPO/RTO and an evidence folder.
    Demo(cmd::demo::Args),
    /// PostgreSQL WAL archiving through the group's stream: archive_command and
    /// restore_command.
    #[command(subcommand)]
    Wal(cmd::wal::WalCmd),
    /// What a failback resync kept of the old primary's volume blocks before overwriting them.
    #[command(subcommand)]
    Quarantine(cmd::quarantine::QuarantineCmd),
    /// Certificates for mTLS: a CA, one per node and one per admin role; rotation.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `node` logs to its log file through stdout; everything else logs to stderr.
    logging::init(&cli.log_format, &cli.log);
    cmd::set_identity(cmd::Identity {
        name: cli.identity.clone(),
        cert_key: cli.cert.clone().zip(cli.key.clone()),
    });
    let result = match cli.command {
        Command::Certs(c) => cmd::certs::run(c),
        Command::Node(a) => cmd::node::run(a),
        Command::Local(c) => cmd::local::run(c),
        Command::Status(a) => cmd::status::run(a),
        Command::Config(c) => cmd::config::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Pause(a) => cmd::ops::pause(a),
        Command::Resume(a) => cmd::ops::resume(a),
        Command::Move(a) => cmd::move_group::run(a),
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
        Command::Action(c) => cmd::action::run(c),
        Command::Review(c) => cmd::review::run(c),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Checkpoint(a) => cmd::pitr::checkpoint(a),
        Command::Checkpoints(a) => cmd::pitr::checkpoints(a),
        Command::Recover(a) => cmd::pitr::recover(a),
        Command::Resync(a) => cmd::resync::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Chaos(c) => cmd::chaos::run(c),
        Command::Evidence(c) => cmd::evidence::run(c),
        Command::Wal(c) => cmd::wal::run(c),
        Command::Quarantine(c) => cmd::quarantine::run(c),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_reference_in_docs_matches_the_command_definitions() {
        let text = reference::markdown(Cli::command());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
        if std::env::var("TANDEM_WRITE_CLI_DOC").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/cli.md is out of date: regenerate with `TANDEM_WRITE_CLI_DOC=1 cargo test -p tandem cli_reference`"
        );
    }
}
