//! `tandem chaos run SCENARIO...`: parses the scenarios, runs each with the chaos runner
//! ([`tandem_chaos::runner`]) against real local processes, and prints the verdict table
//! (and writes JSON + Markdown). What the runner cannot link (the CLI's identity, the
//! replicator's quarantine format and SQLite verify) it gets from here through a [`Host`].

use crate::exit::bad_input;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tandem_chaos::runner::processes as proc;
use tandem_chaos::runner::{run_scenario, Host, KeptCopy};
use tandem_chaos::scenario::Scenario;
use tandem_core::config::Topology;
use tandem_core::net::Net;

/// `tandem chaos` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChaosCmd {
    /// Run scenario files (chaos/scenarios/*.toml) and print a verdict table.
    Run(RunArgs),
}

/// Arguments of `tandem chaos run`.
#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Scenario files.
    #[arg(required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Seed of the workload (offsets and data); the fault timeline is fixed by the file.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Override every scenario's workload duration, in seconds (faults keep their times).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Folder for clusters and reports (default: a temp folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The exit code a signal asked for (128 + the signal), 0 while none came. Set before the nodes
/// are killed, so the run, which sees its nodes die, leaves the exit to the signal thread.
static STOP_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// After a signal: waits while the signal thread kills and reaps every node and exits the
/// process with 128 + the signal (a scenario that failed because its nodes were killed must not
/// end the process first, with its own code and nodes still running). Returns at once when no
/// signal came.
fn yield_to_a_stop() {
    let code = STOP_CODE.load(std::sync::atomic::Ordering::SeqCst);
    if code != 0 {
        // The signal thread ends the process; this bound only matters if it died.
        std::thread::sleep(std::time::Duration::from_secs(60));
        std::process::exit(code);
    }
}

/// On SIGTERM or SIGINT, kills every node this run started (their process groups, reaped)
/// and exits 128 + the signal: the nodes run detached in groups of their own, and a runner
/// stopped from outside (a timeout, ^C) would otherwise leave whole clusters running.
fn end_clusters_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let spawned = std::thread::Builder::new()
        .name("chaos-signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let code = rt.block_on(async {
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return None;
                };
                tokio::select! {
                    _ = term.recv() => Some(128 + libc::SIGTERM),
                    _ = int.recv() => Some(128 + libc::SIGINT),
                }
            });
            if let Some(code) = code {
                STOP_CODE.store(code, std::sync::atomic::Ordering::SeqCst);
                let killed = proc::kill_all_started();
                eprintln!(
                    "stopped: killed the process groups of {} nodes",
                    killed.len()
                );
                std::process::exit(code);
            }
        });
    if let Err(e) = spawned {
        eprintln!("warning: no signal handler ({e}): a stopped run may leave nodes running");
    }
}

/// Runs a `tandem chaos` subcommand.
pub fn run(cmd: ChaosCmd) -> Result<()> {
    let ChaosCmd::Run(a) = cmd;
    let out = a.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "tandem-chaos-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    end_clusters_on_signal();
    let mut scenarios = Vec::new();
    for p in &a.scenarios {
        let text =
            std::fs::read_to_string(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
        scenarios.push(
            Scenario::parse(&text, &p.display().to_string())
                .map_err(|e| bad_input(e.to_string()))?,
        );
    }
    let mut rows = Vec::new();
    for s in &scenarios {
        let dir = out.join(&s.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        println!("== {}: {}", s.name, s.description);
        let row = match run_scenario(s, &dir, a.seed, a.duration, &host()) {
            Ok(r) => r,
            Err(e) => json!({"scenario": s.name, "verdict": "ERROR", "error": format!("{e:#}")}),
        };
        yield_to_a_stop();
        let _ = proc::stop_all(&dir.join("run"));
        println!("   {}", row["verdict"]);
        rows.push(row);
    }
    println!(
        "\n{:<30} {:<28} {:>7} {:>5} {:>8} {:>8}  verdict",
        "scenario", "faults", "acked", "lost", "max RPO", "RTO"
    );
    let mut md = String::from("| scenario | faults | writes acknowledged | lost | max RPO ms | RTO ms | verdict |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in &rows {
        let text = |k: &str| match &r[k] {
            Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        let cells: Vec<String> = [
            "scenario",
            "faults",
            "acked",
            "lost",
            "max_rpo_ms",
            "rto_ms",
            "verdict",
        ]
        .iter()
        .map(|k| text(k))
        .collect();
        println!(
            "{:<30} {:<28} {:>7} {:>5} {:>8} {:>8}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        );
        md.push_str(&format!("| {} |\n", cells.join(" | ")));
        if let Some(f) = r["failures"].as_array() {
            for x in f {
                println!("    {}", x.as_str().unwrap_or(""));
            }
        }
        if let Some(e) = r["error"].as_str() {
            println!("    {e}");
        }
        if let Some(n) = r["notes"].as_array() {
            for x in n {
                println!("    note: {}", x.as_str().unwrap_or(""));
            }
        }
    }
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    std::fs::write(out.join("report.md"), md)?;
    println!(
        "reports: {} and report.md",
        out.join("report.json").display()
    );
    if rows.iter().all(|r| r["verdict"] == "PASS") {
        Ok(())
    } else {
        yield_to_a_stop();
        bail!("some scenarios failed")
    }
}

/// The network context of a scenario's topology: the CLI's identity, as every command dials.
fn net_for(topo: &Topology) -> Result<Net> {
    crate::cmd::use_topology(topo);
    Ok(crate::cmd::net()?)
}

/// The quarantine files of `resource` in `dir`, read with the replicator's format.
fn read_quarantine(dir: &Path, resource: &str) -> Vec<(PathBuf, Result<KeptCopy, String>)> {
    tandem_replicator::quarantine::files_of(dir, resource)
        .into_iter()
        .map(|p| {
            let q = tandem_replicator::quarantine::read(&p).map(|q| KeptCopy {
                blocks: q.blocks.len(),
                range: Box::new(move |off, len| q.range(off, len)),
            });
            (p, q)
        })
        .collect()
}

/// `tandem verify GROUP` of a database group, as the runner did before it moved.
fn verify_database(config: &Path, group: &str) -> Result<()> {
    crate::cmd::verify::run(crate::cmd::verify::Args {
        group: group.into(),
        config: config.to_path_buf(),
        timeout_secs: 30,
        chunk_mib: 64,
        query: None,
    })
}

/// What the runner gets from the CLI.
fn host() -> Host<'static> {
    Host {
        net: &net_for,
        quarantine: &read_quarantine,
        verify_database: &verify_database,
    }
}
