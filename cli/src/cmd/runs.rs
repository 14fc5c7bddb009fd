//! Runbook runs: `tandem failover|switchover|drill|failback GROUP` start a run on the
//! coordinator leader and follow it live; `tandem runs` lists runs, `tandem run show ID` shows
//! one, `tandem approve RUN STEP` answers an approval gate.

use crate::cmd::ops::Target;
use crate::cmd::status::{coordinator_addrs, runtime};
use crate::exit::bad_input;
use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tandem_core::client::coordinator::run_kind;
use tandem_core::client::ClientError;
use tandem_core::proto::{RunAction, RunSummary};

/// Arguments of the commands that start a run.
#[derive(Debug, ClapArgs)]
pub struct StartArgs {
    /// The protection group.
    pub group: String,
    /// A runbook parameter, `NAME=VALUE`; may be repeated.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Start the run and print its id without waiting for it.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `tandem runs`.
#[derive(Debug, ClapArgs)]
pub struct ListArgs {
    /// Only runs of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// `tandem run ...`.
#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Show one run: its steps, their status, times, outputs and errors.
    Show {
        /// The run id.
        id: String,
        /// Print the run object as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Follow a run until it ends (exit 0 when it succeeded, 1 otherwise).
    Follow {
        /// The run id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a run: no further step starts.
    Cancel {
        /// The run id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Arguments of `tandem approve`.
#[derive(Debug, ClapArgs)]
pub struct ApproveArgs {
    /// The run id.
    pub run: String,
    /// The step id (or its number in the plan).
    pub step: String,
    /// Reject instead: the step fails and its `on_failure` applies.
    #[arg(long, conflicts_with = "confirm_done")]
    pub reject: bool,
    /// For a step that may have run when the leader changed: it did run, count it as succeeded.
    #[arg(long)]
    pub confirm_done: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A refusal as the CLI reports it: bad input (exit 2) when the coordinators found the
/// request itself wrong.
fn refused(call: &str, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused { code, message, .. } => {
            let e = anyhow::anyhow!("{call}: {message}");
            if matches!(code, tonic::Code::InvalidArgument | tonic::Code::NotFound) {
                e.context(bad_input("refused"))
            } else {
                e
            }
        }
        e => anyhow::Error::new(e),
    }
}

/// The whole run `id`, as the coordinators hold it (credentials redacted).
async fn get_run(addrs: &[String], id: &str) -> Result<Value> {
    crate::cmd::cluster(addrs)?
        .get_run(id)
        .await
        .map_err(|e| refused("run", e))
}

/// `tandem failover|switchover|drill|failback GROUP`: start a run of the group's runbook and
/// follow it (unless `--detach`).
pub fn start(kind: &str, a: StartArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let mut params = HashMap::new();
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| bad_input(format!("--param {p:?}: expected NAME=VALUE")))?;
        params.insert(k.to_string(), v.to_string());
    }
    let rt = runtime()?;
    let k = run_kind(kind).ok_or_else(|| bad_input(format!("unknown run kind {kind:?}")))?;
    let id = rt.block_on(async {
        crate::cmd::cluster(&addrs)?
            .start_run(k, &a.group, params)
            .await
            .map_err(|e| refused(kind, e))
    })?;
    if a.detach {
        println!("{id}");
        return Ok(());
    }
    println!("run {id} started ({kind} of {})", a.group);
    rt.block_on(follow(&addrs, &id))
}

fn secs(ms: i64) -> String {
    format!("{:>6.1}s", ms as f64 / 1000.0)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Polls a run and prints each step change until it ends.
async fn follow(addrs: &[String], id: &str) -> Result<()> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut last_ok = Instant::now();
    loop {
        let run = match get_run(addrs, id).await {
            Ok(v) => {
                last_ok = Instant::now();
                v
            }
            Err(e) => {
                if last_ok.elapsed() > Duration::from_secs(60) {
                    return Err(e.context(format!("lost the run {id} for 60 s")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let st = &run["state"];
        let started = st["started_ms"].as_i64().unwrap_or(0);
        let plan = st["plan"]["steps"].as_array().cloned().unwrap_or_default();
        for (p, s) in plan
            .iter()
            .zip(st["steps"].as_array().cloned().unwrap_or_default())
        {
            let sid = p["id"].as_str().unwrap_or("?").to_string();
            let status = s["status"].as_str().unwrap_or("?").to_string();
            let key = format!("{status}/{}/{}", s["attempts"], s["failures"]);
            if status == "pending" && s["attempts"] == 0 || seen.get(&sid) == Some(&key) {
                continue;
            }
            if status == "skipped" && !seen.contains_key(&sid) && s["attempts"] == 0 {
                seen.insert(sid, key);
                continue;
            }
            seen.insert(sid.clone(), key);
            let at = s["ended_ms"]
                .as_i64()
                .or(s["started_ms"].as_i64())
                .unwrap_or(started)
                - started;
            let took = match (s["started_ms"].as_i64(), s["ended_ms"].as_i64()) {
                (Some(a), Some(b)) => format!("{} ms", b - a),
                _ => String::new(),
            };
            let action = p["action"]["action"].as_str().unwrap_or("");
            let mut line = format!("[{}] {sid:<14} {action:<17} {status:<18} {took}", secs(at));
            if let Some(e) = s["error"].as_str() {
                line.push_str(&format!("  error: {}", first_line(e)));
            } else if status == "succeeded" {
                let out = first_line(s["output_excerpt"].as_str().unwrap_or(""));
                if !out.is_empty() {
                    line.push_str(&format!("  {out}"));
                }
            }
            println!("{line}");
            if status == "awaiting-approval" {
                println!("           waiting for: tandem approve {id} {sid}");
            }
        }
        let status = st["status"]["status"].as_str().unwrap_or("running");
        if status != "running" {
            let ended = st["ended_ms"].as_i64().unwrap_or(started);
            println!("run {id} {status} after {} ms", ended - started);
            match run["rto_ms"].as_i64() {
                Some(rto) => {
                    let from = run["rto_from_ms"].as_i64().unwrap_or(started);
                    let note = if from < started {
                        format!(
                            " (from outage detection, {} ms before the run)",
                            started - from
                        )
                    } else {
                        " (from the start of the run)".into()
                    };
                    println!("RTO {rto} ms{note}");
                }
                None => println!("RTO: none (no check step passed)"),
            }
            if status == "succeeded" {
                return Ok(());
            }
            anyhow::bail!("run {id} {status}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `tandem runs`: list runs.
pub fn list(a: ListArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let group = a.group.clone().unwrap_or_default();
    let runs = runtime()?.block_on(async {
        crate::cmd::cluster(&addrs)?
            .runs(&group)
            .await
            .map_err(|e| refused("runs", e))
    })?;
    if a.json {
        let docs: Vec<Value> = runs.iter().map(summary_json).collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<8} {:<11} {:<10} {:<24} {:>9} step",
        "run", "group", "kind", "status", "started", "rto_ms"
    );
    for r in &runs {
        let started = i64::try_from(r.started_ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let rto = if r.rto_ms > 0 {
            r.rto_ms.to_string()
        } else {
            "-".into()
        };
        let step = if r.current_step.is_empty() {
            "-"
        } else {
            &r.current_step
        };
        println!(
            "{:<36} {:<8} {:<11} {:<10} {:<24} {:>9} {step}",
            r.run_id, r.group, r.kind, r.status, started, rto,
        );
    }
    Ok(())
}

/// One run of `tandem runs --json`.
fn summary_json(r: &RunSummary) -> Value {
    serde_json::json!({
        "run_id": r.run_id, "group": r.group, "kind": r.kind, "runbook": r.runbook,
        "status": r.status, "started_ms": r.started_ms,
        "ended_ms": (r.ended_ms > 0).then_some(r.ended_ms),
        "rto_ms": (r.rto_ms > 0).then_some(r.rto_ms),
        "current_step": (!r.current_step.is_empty()).then_some(&r.current_step),
        "started_by": r.started_by,
    })
}

/// `tandem run show|follow|cancel`.
pub fn run(c: RunCmd) -> Result<()> {
    match c {
        RunCmd::Show { id, json, target } => {
            let addrs = coordinator_addrs(target.config.as_ref(), &target.addr)?;
            let run = runtime()?.block_on(get_run(&addrs, &id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run)?);
                return Ok(());
            }
            show(&id, &run);
            Ok(())
        }
        RunCmd::Follow { id, target } => {
            let addrs = coordinator_addrs(target.config.as_ref(), &target.addr)?;
            runtime()?.block_on(follow(&addrs, &id))
        }
        RunCmd::Cancel { id, target } => {
            let addrs = coordinator_addrs(target.config.as_ref(), &target.addr)?;
            runtime()?.block_on(action(&addrs, &id, RunAction::Cancel, ""))?;
            println!("run {id} cancelled");
            Ok(())
        }
    }
}

fn show(id: &str, run: &Value) {
    let st = &run["state"];
    let plan = &st["plan"];
    let started = st["started_ms"].as_i64().unwrap_or(0);
    println!(
        "run {id}: {} runbook {:?} for group {} ({} -> {}), started by {}, status {}",
        run["kind"].as_str().unwrap_or(""),
        plan["runbook"].as_str().unwrap_or(""),
        run["group"].as_str().unwrap_or(""),
        plan["primary"].as_str().unwrap_or(""),
        plan["replica"].as_str().unwrap_or(""),
        st["started_by"].as_str().unwrap_or(""),
        st["status"]["status"].as_str().unwrap_or(""),
    );
    println!(
        "RTO: {}",
        run["rto_ms"]
            .as_i64()
            .map(|x| format!("{x} ms"))
            .unwrap_or("-".into())
    );
    println!(
        "{:<3} {:<14} {:<17} {:<18} {:>8} {:>8} {:>9}  output / error",
        "#", "id", "action", "status", "attempts", "at", "ms"
    );
    let steps = st["steps"].as_array().cloned().unwrap_or_default();
    for (i, (p, s)) in plan["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .zip(steps)
        .enumerate()
    {
        let at = s["started_ms"]
            .as_i64()
            .map(|t| secs(t - started))
            .unwrap_or_default();
        let ms = match (s["started_ms"].as_i64(), s["ended_ms"].as_i64()) {
            (Some(a), Some(b)) => (b - a).to_string(),
            _ => String::new(),
        };
        let note = s["error"]
            .as_str()
            .map(|e| format!("error: {}", first_line(e)))
            .unwrap_or_else(|| first_line(s["output_excerpt"].as_str().unwrap_or("")).to_string());
        println!(
            "{:<3} {:<14} {:<17} {:<18} {:>8} {:>8} {:>9}  {note}",
            i + 1,
            p["id"].as_str().unwrap_or(""),
            p["action"]["action"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["attempts"],
            at,
            ms,
        );
    }
}

/// `tandem approve RUN STEP`: approve (or reject, or confirm done) a step waiting for an operator.
pub fn approve(a: ApproveArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let (act, done) = if a.reject {
        (RunAction::Reject, "rejected")
    } else if a.confirm_done {
        (RunAction::Confirm, "confirmed done")
    } else {
        (RunAction::Approve, "approved")
    };
    runtime()?.block_on(action(&addrs, &a.run, act, &a.step))?;
    println!("{done} step {} of run {}", a.step, a.run);
    Ok(())
}

/// Sends one run action (approve, confirm, reject, cancel).
async fn action(addrs: &[String], run: &str, act: RunAction, step: &str) -> Result<()> {
    crate::cmd::cluster(addrs)?
        .run_action(run, act, step)
        .await
        .map_err(|e| refused(act.as_str_name(), e))?;
    Ok(())
}
