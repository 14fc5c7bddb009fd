//! Runbook runs on the coordinator leader: starting a run (load, validate, plan, commit) and
//! the executor that drives every unfinished run — `StepStarted` is committed through Raft
//! before a step runs and its result after, so a new leader resumes where the old one stopped.
//!
//! The decisions (what is next, what an event does, retries, resume rules) are the pure run
//! state machine of `tandem_runbooks::run`, applied inside the replicated state
//! ([`crate::state`]); this module only acts: raft proposals, waits on the leader's live
//! figures, gRPC calls to replicators, child processes and HTTP calls.

use crate::server::Coordinator;
use crate::state::{GroupState, LeaseStatus, Run};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;
use tandem_core::config::ResourceKind;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{OperateRequest, SnapshotRequest, VerifyRequest, VolumeVerdict};
use tandem_core::ranges::{describe_byte_ranges, from_wire};
use tandem_runbooks::run::{self as rb, ApprovalReason, NextAction, RunEvent};
use tandem_runbooks::{
    plan, validate_against, Action, Command, PlanContext, PlannedStep, Probe, ResolvedSite,
    Runbook, RunbookKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::{info, warn};

/// Block size of the Merkle trees a `verify` step compares.
const VERIFY_BLOCK_SIZE: u32 = 1 << 20;
/// Merkle block size of the roots a `recover` step records (the same as `tandem recover`'s
/// default, so both kinds of record compare).
const RECOVER_BLOCK_SIZE: u32 = 64 << 10;
/// Blocks of [`VERIFY_BLOCK_SIZE`] hashed under one barrier (64 MiB).
const VERIFY_CHUNK_BLOCKS: u64 = 64;
/// How long the primary's replicator may wait for the replica to reach a barrier during a
/// `verify`: in effect unbounded, as the step's timeout bounds the whole comparison.
const VERIFY_BARRIER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of an HTTP response read.
const HTTP_MAX_RESPONSE: usize = 1 << 20;
/// How often waits poll the state and the live figures.
const POLL: Duration = Duration::from_millis(100);

/// The driver tasks of the runs this node drives while it leads, by run id.
#[derive(Debug, Default)]
pub struct Drivers {
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Drivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every driver (this node is no longer the leader). A step under way is cut short;
    /// the next leader applies the resume rules to it.
    pub fn stop_all(&self) {
        for (_, t) in self.lock().drain() {
            t.abort();
        }
    }
}

/// Spawns a driver for every unfinished run that has none (called on the leader every tick).
pub(crate) fn drive_all(c: &Coordinator) {
    let unfinished: Vec<String> = c.read(|s| {
        s.runs()
            .iter()
            .filter(|(_, r)| r.is_running())
            .map(|(id, _)| id.clone())
            .collect()
    });
    let mut tasks = c.drivers().lock();
    tasks.retain(|_, t| !t.is_finished());
    for id in unfinished {
        if !tasks.contains_key(&id) {
            let c2 = c.clone();
            let id2 = id.clone();
            tasks.insert(id, tokio::spawn(async move { drive(c2, id2).await }));
        }
    }
}

/// The runbook of `kind` for `group`: the group's own file (`runbooks.*` in the topology) or
/// the stock one. Returns the runbook and the blake3 hash of its bytes.
fn load_runbook(
    c: &Coordinator,
    group: &str,
    kind: RunbookKind,
) -> Result<(Runbook, String), Status> {
    let g = c
        .topo()
        .group(group)
        .ok_or_else(|| Status::not_found(format!("no group {group:?} in the topology")))?;
    let own = match kind {
        RunbookKind::Drill => g.runbooks.drill.clone(),
        RunbookKind::Failover => g.runbooks.failover.clone(),
        RunbookKind::Switchover => g.runbooks.switchover.clone(),
        RunbookKind::Failback => g.runbooks.failback.clone(),
        RunbookKind::Custom => None,
    };
    let (rb, hash) = match own {
        Some(path) => {
            Runbook::load_hashed(&path).map_err(|e| Status::invalid_argument(e.to_string()))?
        }
        None => {
            let (file, text) = tandem_runbooks::library::stock_text(kind)
                .ok_or_else(|| Status::invalid_argument(format!("no stock runbook for {kind}")))?;
            let rb = Runbook::parse(text, file).map_err(|e| Status::internal(e.to_string()))?;
            (rb, rb::runbook_hash(text.as_bytes()))
        }
    };
    if rb.kind != kind {
        return Err(Status::invalid_argument(format!(
            "runbook {:?} is a {} runbook, not {kind}",
            rb.name, rb.kind
        )));
    }
    let sites: Vec<String> = c.topo().sites.iter().map(|s| s.name.clone()).collect();
    validate_against(&rb, &sites).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((rb, hash))
}

/// Starts a run of the group's `kind` runbook with `params`, on the leader; returns its id.
/// `rto_from_ms` starts the RTO clock earlier than now (outage detection).
///
/// # Errors
/// Unknown group, a runbook that does not load, validate or plan, another run of the group
/// under way, or no quorum.
pub(crate) async fn start(
    c: &Coordinator,
    kind: RunbookKind,
    group: &str,
    actor: &str,
    params: &BTreeMap<String, String>,
    rto_from_ms: Option<i64>,
) -> Result<String, Status> {
    let (rb, hash) = load_runbook(c, group, kind)?;
    let (primary, replica, epoch) = c
        .read(|s| {
            s.group(group)
                .map(|g| (g.primary_site.clone(), g.replica_site.clone(), g.epoch))
        })
        .ok_or_else(|| Status::not_found(format!("no group {group:?}")))?;
    let mode = c
        .topo()
        .group(group)
        .map(|g| g.mode)
        .ok_or_else(|| Status::not_found(format!("no group {group:?}")))?;
    let cx = PlanContext {
        group: group.to_string(),
        primary_site: primary,
        replica_site: replica,
        mode,
        epoch,
        params: params.clone(),
    };
    let plan = plan(&rb, &cx).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = c.now_ms();
    let run_id = format!("{}-{group}-{now}", kind.as_str());
    c.propose(json!({
        "op": "start_run", "run_id": run_id, "group": group, "kind": kind,
        "runbook_hash": hash, "plan": plan, "started_by": actor, "rto_from_ms": rto_from_ms,
    }))
    .await?;
    info!(run = %run_id, %group, %kind, "run started");
    drive_all(c);
    Ok(run_id)
}

/// The admin API's `Operate`: start runs, list and show them, approve, confirm, reject and
/// cancel their steps.
///
/// # Errors
/// An unknown operation, run or step, or whatever starting or committing refused.
pub(crate) async fn operate(
    c: &Coordinator,
    r: &OperateRequest,
    actor: &str,
) -> Result<Value, Status> {
    let kind = match r.op.as_str() {
        "failover" => Some(RunbookKind::Failover),
        "switchover" => Some(RunbookKind::Switchover),
        "drill" => Some(RunbookKind::Drill),
        "failback" => Some(RunbookKind::Failback),
        _ => None,
    };
    if let Some(kind) = kind {
        let params: BTreeMap<String, String> = r.params.clone().into_iter().collect();
        let id = start(c, kind, &r.group, actor, &params, None).await?;
        return Ok(json!({ "run_id": id }));
    }
    match r.op.as_str() {
        "runs" => Ok(c.read(|s| {
            Value::Array(
                s.runs()
                    .iter()
                    .filter(|(_, run)| r.group.is_empty() || run.group == r.group)
                    .map(|(id, run)| summary(id, run))
                    .collect(),
            )
        })),
        "run" => c
            .read(|s| {
                s.run(&r.run_id).map(|run| {
                    let mut v = serde_json::to_value(run).unwrap_or(Value::Null);
                    redact_secrets(&mut v);
                    v
                })
            })
            .ok_or_else(|| Status::not_found(format!("no run {:?}", r.run_id))),
        "approve" | "confirm" | "reject" | "cancel" => {
            let step = if r.op == "cancel" {
                0
            } else {
                c.read(|s| {
                    s.run(&r.run_id).map(|run| {
                        run.state
                            .plan
                            .steps
                            .iter()
                            .position(|p| p.id == r.step || (p.index + 1).to_string() == r.step)
                    })
                })
                .ok_or_else(|| Status::not_found(format!("no run {:?}", r.run_id)))?
                .ok_or_else(|| Status::not_found(format!("run {} has no step {:?}", r.run_id, r.step)))?
            };
            let at_ms = 0;
            let by = actor.to_string();
            let event = match r.op.as_str() {
                "approve" => RunEvent::Approved { step, by, at_ms },
                "confirm" => RunEvent::ConfirmedDone { step, by, at_ms },
                "reject" => RunEvent::Rejected { step, by, at_ms },
                _ => RunEvent::Cancelled { by, at_ms },
            };
            c.propose(json!({"op": "run_event", "run_id": r.run_id, "event": event}))
                .await?;
            drive_all(c);
            Ok(json!({"run_id": r.run_id, "op": r.op, "step": r.step}))
        }
        other => Err(Status::invalid_argument(format!(
            "unknown operation {other:?} (failover | switchover | drill | failback | runs | run | approve | confirm | reject | cancel)"
        ))),
    }
}

/// Header names whose values are credentials: never shown by the admin API.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-vault-token",
];

/// Whether a header carries a credential (the names above, or any with `token`, `secret`,
/// `password` or `key` in it).
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&n.as_str())
        || ["token", "secret", "password", "key"]
            .iter()
            .any(|w| n.contains(w))
}

/// `http://user:pass@host/p` → `http://***@host/p`: credentials in a URL are never shown.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Replaces credentials in a run's JSON before it leaves the coordinator: the values of secret
/// `headers` of `http` steps and user:password in `url`s. The executor keeps the real values
/// (it sends them); status, `tandem run show` and errors never print them.
pub fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match (k.as_str(), x) {
                    ("headers", Value::Object(h)) => {
                        for (name, value) in h.iter_mut() {
                            if is_secret_header(name) {
                                *value = Value::String("<redacted>".into());
                            }
                        }
                    }
                    ("url", Value::String(u)) => *u = redact_url(u),
                    (_, x) => redact_secrets(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// One line of `tandem runs`.
fn summary(id: &str, run: &Run) -> Value {
    let current = run
        .state
        .current()
        .and_then(|i| run.state.plan.steps.get(i))
        .map(|p| p.id.clone());
    json!({
        "run_id": id, "group": run.group, "kind": run.kind, "runbook": run.state.plan.runbook,
        "status": run.state.status, "started_ms": run.state.started_ms,
        "ended_ms": run.state.ended_ms, "rto_ms": run.rto_ms, "current_step": current,
        "started_by": run.state.started_by,
    })
}

/// Proposes a run event; `Ok(false)` when the state refused it.
async fn commit(c: &Coordinator, run_id: &str, event: &RunEvent) -> Result<bool, Status> {
    match c
        .propose(json!({"op": "run_event", "run_id": run_id, "event": event}))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            warn!(run = %run_id, "event refused: {}", e.message());
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Drives one run while this node leads: the executor loop.
async fn drive(c: Coordinator, run_id: String) {
    loop {
        if !c.is_leader() {
            return;
        }
        let Some(run) = c.read(|s| s.run(&run_id).cloned()) else {
            return;
        };
        let now = c.now_ms();
        match rb::next_action(&run.state) {
            NextAction::Done(status) => {
                info!(run = %run_id, ?status, rto_ms = ?run.rto_ms, "run finished");
                return;
            }
            // Nobody on this node started it: a previous leader did. Apply the resume rules.
            NextAction::InFlight { step } => {
                info!(run = %run_id, step, "resuming a run whose step was under way on a previous leader");
                if commit(&c, &run_id, &RunEvent::LeaderChanged { at_ms: 0 })
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            NextAction::AwaitApproval { step, reason } => {
                let timed_out = matches!(reason, ApprovalReason::Gate { .. })
                    && run
                        .state
                        .steps
                        .get(step)
                        .and_then(|s| s.started_ms)
                        .is_some_and(|t| {
                            let timeout = run.state.plan.steps[step].timeout.as_millis();
                            now as u64 > t.saturating_add(timeout)
                        });
                if timed_out {
                    let ev = RunEvent::Rejected {
                        step,
                        by: "coordinator (approval timed out)".into(),
                        at_ms: 0,
                    };
                    let _ = commit(&c, &run_id, &ev).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            NextAction::RetryAt { not_before_ms, .. } if (now as u64) < not_before_ms => {
                let wait = (not_before_ms - now as u64).min(500);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            NextAction::Start { step, attempt } | NextAction::RetryAt { step, attempt, .. } => {
                match commit(&c, &run_id, &RunEvent::StepStarted { step, at_ms: 0 }).await {
                    Ok(true) => {}
                    _ => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
                let planned = run.state.plan.steps[step].clone();
                if matches!(planned.action, Action::Approve { .. }) {
                    info!(run = %run_id, step = %planned.id, "waiting for approval: tandem approve {run_id} {}", planned.id);
                    continue;
                }
                info!(run = %run_id, step = %planned.id, action = planned.action.name(), attempt, "step started");
                let t0 = c.now_ms();
                let timeout = Duration::from_millis(planned.timeout.as_millis());
                let point = format!("runbook-before-step:{}", planned.action.name());
                let result = match tandem_core::fault::check(&point) {
                    Err(e) => Err(Failure::new(e.to_string())),
                    Ok(()) => {
                        match tokio::time::timeout(timeout, execute(&c, &run, &planned)).await {
                            Ok(r) => r,
                            Err(_) => {
                                Err(Failure::new(format!("timed out after {}", planned.timeout)))
                            }
                        }
                    }
                };
                let point = format!("runbook-after-step:{}", planned.action.name());
                let result = match (result, tandem_core::fault::check(&point)) {
                    (Ok(_), Err(e)) => Err(Failure::new(e.to_string())),
                    (r, _) => r,
                };
                let ms = c.now_ms() - t0;
                let event = match result {
                    Ok(output) => {
                        info!(run = %run_id, step = %planned.id, ms, "step succeeded");
                        RunEvent::StepSucceeded {
                            step,
                            at_ms: 0,
                            output: bound(&output, 16_000),
                        }
                    }
                    Err(f) => {
                        warn!(run = %run_id, step = %planned.id, ms, "step failed: {}", f.error);
                        RunEvent::StepFailed {
                            step,
                            at_ms: 0,
                            error: bound(&f.error, 4000),
                            output: bound(&f.output, 16_000),
                        }
                    }
                };
                // The result must land: retry while this node leads.
                for _ in 0..50 {
                    if !c.is_leader() {
                        return;
                    }
                    match commit(&c, &run_id, &event).await {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary (the state refuses longer text).
fn bound(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    rb::excerpt(s).chars().take(max).collect()
}

/// Why a step's attempt failed, with what it printed.
#[derive(Debug)]
struct Failure {
    error: String,
    output: String,
}

impl Failure {
    fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            output: String::new(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        Failure::new(s.message().to_string())
    }
}

type StepResult = Result<String, Failure>;

/// Runs one attempt of a step; the caller bounds it by the step's timeout.
async fn execute(c: &Coordinator, run: &Run, step: &PlannedStep) -> StepResult {
    let group = run.group.as_str();
    match &step.action {
        Action::Fence => fence(c, run).await,
        Action::Promote => promote(c, run, step).await,
        Action::Demote => demote(c, run).await,
        Action::Reverse => reverse(c, group).await,
        Action::WaitReplicated { max_lag } => wait_replicated(c, group, *max_lag).await,
        Action::PauseReplication => pause(c, run, true).await,
        Action::ResumeReplication => pause(c, run, false).await,
        Action::Verify => verify(c, run).await,
        Action::Snapshot { name } => snapshot(c, run, step, name).await,
        Action::Recover { name, point } => recover(c, run, step, name, point).await,
        Action::Exec { command, env } => {
            let out = run_command(c, run, step, command, env).await?;
            if out.0 {
                Ok(out.1)
            } else {
                Err(Failure {
                    error: "the command failed".into(),
                    output: out.1,
                })
            }
        }
        Action::Check { probe, interval } => check(c, run, step, probe, interval.as_millis()).await,
        Action::Http {
            url,
            method,
            body,
            headers,
            expect_status,
        } => {
            let (status, text) = http(url, method, body.as_deref(), headers)
                .await
                .map_err(Failure::new)?;
            if status_ok(status, *expect_status) {
                Ok(format!("HTTP {status}\n{text}"))
            } else {
                Err(Failure {
                    error: format!("HTTP {status} (expected {})", expect_text(*expect_status)),
                    output: text,
                })
            }
        }
        Action::Sleep { duration } => {
            tokio::time::sleep(Duration::from_millis(duration.as_millis())).await;
            Ok(format!("slept {duration}"))
        }
        Action::Notify { message, channel } => {
            let channel = channel.clone().unwrap_or_else(|| "default".into());
            info!(run = %run.state.run_id, group, %channel, "NOTIFY: {message}");
            c.propose(json!({"op": "record", "actor": crate::state::COORDINATOR_ACTOR, "kind": "note", "group": group,
                "detail": {"run_id": run.state.run_id, "step": step.id, "notify": message, "channel": channel}}))
                .await?;
            Ok(format!("[{channel}] {message}"))
        }
        // Never executed: committing its start makes it wait for an operator.
        Action::Approve { .. } => Err(Failure::new("an approve step is not executed")),
    }
}

fn planned_kind(kind: RunbookKind) -> bool {
    matches!(kind, RunbookKind::Switchover | RunbookKind::Failback)
}

async fn set_state(c: &Coordinator, run: &Run, state: &str, reason: &str) -> Result<(), Status> {
    c.propose(json!({"op": "set_group_state", "group": run.group, "state": state,
        "reason": format!("run {}: {reason}", run.state.run_id), "actor": crate::state::COORDINATOR_ACTOR}))
        .await
        .map(|_| ())
}

/// `fence`. Unplanned runs: the group goes `failing-over` (no lease renewals), then the epoch is
/// raised and the lease revoked. Planned runs (switchover, failback): the group goes
/// `switching-over`, which stops intake at the primary; it drains and releases its lease, and the
/// epoch rises at `promote` (raising it here would make the live primary restart its journal).
async fn fence(c: &Coordinator, run: &Run) -> StepResult {
    let (state, epoch, lease) = c
        .read(|s| {
            s.group(&run.group)
                .map(|g| (g.state, g.epoch, g.lease.clone()))
        })
        .ok_or_else(|| Failure::new(format!("no group {}", run.group)))?;
    if planned_kind(run.kind) {
        if state != GroupState::SwitchingOver {
            set_state(
                c,
                run,
                "switching-over",
                "fence: stop intake at the primary",
            )
            .await?;
        }
        return Ok(format!(
            "intake stopped at {} (group switching-over, epoch {epoch}); the primary drains and releases its lease; the epoch rises at promote",
            run.state.plan.primary
        ));
    }
    if state != GroupState::FailingOver {
        set_state(c, run, "failing-over", "fence").await?;
    }
    let already = lease.as_ref().is_some_and(|l| {
        matches!(l.status, LeaseStatus::Revoked { .. })
            && l.epoch < epoch
            && epoch > run.state.plan.epoch
    });
    if already {
        return Ok(format!("already fenced: epoch {epoch}"));
    }
    c.propose(
        json!({"op": "fence", "group": run.group, "actor": crate::state::COORDINATOR_ACTOR,
        "reason": format!("run {}", run.state.run_id)}),
    )
    .await?;
    let after = c
        .read(|s| s.group(&run.group).map(|g| g.epoch.0))
        .unwrap_or(0);
    Ok(format!(
        "epoch {epoch} -> {after}; lease of {} revoked",
        lease.map_or("nobody".into(), |l| l.holder)
    ))
}

/// `promote`: waits out the old lease (`promotion_allowed_at`), then promotes the step's site
/// (planned for switchover and failback: zero loss required); then every `postgres` resource
/// of the group at that site leaves recovery (`pg_ctl promote`, waited for).
async fn promote(c: &Coordinator, run: &Run, step: &PlannedStep) -> StepResult {
    let to_site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut text = promote_group(c, run, &to_site).await?;
    for line in promote_postgres(c, &run.group, &to_site).await? {
        text.push('\n');
        text.push_str(&line);
    }
    Ok(text)
}

/// `pg_ctl promote` of every postgres resource of `group` at `site` (its data directory there),
/// on this host, as the data directory's owner.
async fn promote_postgres(
    c: &Coordinator,
    group: &str,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let topo = c.topo();
    let Some(g) = topo.group(group) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in &g.resources {
        let tandem_core::config::ResourceKind::Postgres { bin_dir, .. } = &r.kind else {
            continue;
        };
        let Some(data_dir) = topo.resource_path(g, r, site) else {
            continue;
        };
        let bin = bin_dir.clone();
        let name = r.name.clone();
        let done = tokio::task::spawn_blocking(move || {
            tandem_core::pgctl::promote(&bin, &data_dir, Duration::from_secs(60))
        })
        .await
        .map_err(|e| Failure::new(format!("pg_ctl promote task: {e}")))?
        .map_err(|e| Failure::new(format!("postgres resource {name}: {e}")))?;
        out.push(format!("postgres {name}: {done}"));
    }
    Ok(out)
}

async fn promote_group(c: &Coordinator, run: &Run, to_site: &str) -> StepResult {
    let to_site = to_site.to_owned();
    let planned = planned_kind(run.kind);
    let t0 = c.now_ms();
    let mut lease_wait_ms = 0;
    loop {
        let (primary, epoch) = c
            .read(|s| {
                s.group(&run.group)
                    .map(|g| (g.primary_site.clone(), g.epoch.0))
            })
            .ok_or_else(|| Failure::new(format!("no group {}", run.group)))?;
        if primary == to_site && epoch > run.state.plan.epoch.0 {
            return Ok(format!(
                "{to_site} is primary (epoch {epoch}); lease_wait_ms={lease_wait_ms}"
            ));
        }
        let now = c.now_ms();
        if let Some(allowed) = c.read(|s| s.promotion_allowed_at(&run.group)) {
            if now < allowed {
                tokio::time::sleep(Duration::from_millis((allowed - now) as u64 + 20)).await;
                lease_wait_ms = c.now_ms() - t0;
                continue;
            }
        }
        let t_promote = c.now_ms();
        match c
            .propose(json!({"op": "promote", "group": run.group, "to_site": to_site,
                "actor": crate::state::COORDINATOR_ACTOR, "reason": format!("run {}", run.state.run_id), "planned": planned}))
            .await
        {
            Ok(events) => {
                let loss = events
                    .as_array()
                    .and_then(|a| a.iter().find(|e| e["event"] == "promoted"))
                    .map(|e| e["loss"].clone())
                    .unwrap_or(Value::Null);
                let epoch = c.read(|s| s.group(&run.group).map(|g| g.epoch.0)).unwrap_or(0);
                return Ok(format!(
                    "{to_site} promoted (epoch {epoch}, planned {planned}); lease_wait_ms={lease_wait_ms} promote_ms={}; data-loss window {loss}",
                    c.now_ms() - t_promote
                ));
            }
            Err(e) if e.message().contains("live") || e.message().contains("durable at") => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `demote` (planned): the group is `switching-over` and the old primary's lease is released
/// (the replicator drains and releases by itself when it sees that state) or has run out.
async fn demote(c: &Coordinator, run: &Run) -> StepResult {
    let state = c.read(|s| s.group(&run.group).map(|g| g.state));
    if state != Some(GroupState::SwitchingOver) && state != Some(GroupState::FailingOver) {
        set_state(
            c,
            run,
            "switching-over",
            "demote: stop intake at the primary",
        )
        .await?;
    }
    let t0 = c.now_ms();
    loop {
        let now = c.now_ms();
        let (released, holder) = c.read(|s| {
            let g = s.group(&run.group);
            let lease = g.and_then(|g| g.lease.as_ref());
            let released = lease.is_none_or(|l| matches!(l.status, LeaseStatus::Released { .. }))
                || s.promotion_allowed_at(&run.group).is_none_or(|t| now >= t);
            (
                released,
                lease.map(|l| l.holder.clone()).unwrap_or_default(),
            )
        });
        if released {
            return Ok(format!(
                "{} read-only: lease of {holder} released after {} ms",
                run.state.plan.primary,
                now - t0
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `reverse`: replication runs from the current primary to the other site; waits until that
/// site's replicator reports `in-sync` in the current epoch with everything the primary has.
async fn reverse(c: &Coordinator, group: &str) -> StepResult {
    let t0 = c.now_ms();
    loop {
        let (epoch, replica_site) = c
            .read(|s| s.group(group).map(|g| (g.epoch.0, g.replica_site.clone())))
            .ok_or_else(|| Failure::new(format!("no group {group}")))?;
        if let Some(live) = c.live_group(group) {
            if let Some(r) = &live.replica {
                let fresh = r.at_ms >= t0 || c.now_ms() - r.at_ms < 1500;
                if fresh
                    && r.epoch == epoch
                    && r.site == replica_site
                    && r.state == "in-sync"
                    && live.reporter_epoch() == epoch
                    && r.durable_seq >= live.last_captured_seq()
                {
                    return Ok(format!(
                        "replicating to {replica_site}: {} in-sync at seq {} (epoch {epoch}) after {} ms",
                        r.node,
                        r.durable_seq,
                        c.now_ms() - t0
                    ));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_replicated`: the primary's live report (current epoch, heard during this step) shows
/// the replica within `max_lag` seqs (and RPO 0 when `max_lag` is 0).
async fn wait_replicated(c: &Coordinator, group: &str, max_lag: u64) -> StepResult {
    let t0 = c.now_ms();
    loop {
        let epoch = c
            .read(|s| s.group(group).map(|g| g.epoch.0))
            .ok_or_else(|| Failure::new(format!("no group {group}")))?;
        if let Some(l) = c.live_group(group) {
            if l.reported_ms() >= t0
                && l.reporter_epoch() == epoch
                && l.durable_seq().saturating_add(max_lag) >= l.last_captured_seq()
                && (max_lag > 0 || l.rpo_ms() == 0)
            {
                return Ok(format!(
                    "replica durable at seq {} of {} (RPO {} ms) after {} ms",
                    l.durable_seq(),
                    l.last_captured_seq(),
                    l.rpo_ms(),
                    c.now_ms() - t0
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn pause(c: &Coordinator, run: &Run, pause: bool) -> StepResult {
    let op = if pause {
        "pause_replication"
    } else {
        "resume_replication"
    };
    match c
        .propose(
            json!({"op": op, "group": run.group, "actor": crate::state::COORDINATOR_ACTOR,
            "reason": format!("run {}", run.state.run_id)}),
        )
        .await
    {
        Ok(_) => Ok(format!("{op}: done")),
        Err(e) if e.message().contains("already paused") || e.message().contains("not paused") => {
            Ok(format!("{op}: {}", e.message()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The replication address (`http://...`) of the first replicator at `site`.
fn replicator_addr(c: &Coordinator, site: &str) -> Result<String, Failure> {
    c.topo()
        .replicators_at(site)
        .first()
        .map(|n| format!("http://{}", n.listen))
        .ok_or_else(|| Failure::new(format!("no replicator at site {site}")))
}

async fn replication_client(
    c: &Coordinator,
    addr: &str,
) -> Result<ReplicationClient<tonic::transport::Channel>, Failure> {
    replication_client_bounded(c, addr, Some(Duration::from_secs(120))).await
}

/// A replication client whose requests are bounded by `request_timeout` (`None`: by the
/// caller, as a streamed `Verify` that runs as long as the step lets it).
async fn replication_client_bounded(
    c: &Coordinator,
    addr: &str,
    request_timeout: Option<Duration>,
) -> Result<ReplicationClient<tonic::transport::Channel>, Failure> {
    let net = c.net();
    let mut ep = net
        .endpoint(addr)
        .map_err(|e| Failure::new(e.to_string()))?
        .connect_timeout(Duration::from_millis(1000));
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    let ch = net
        .connect(ep)
        .await
        .map_err(|e| Failure::new(format!("replicator {addr} unreachable: {e}")))?;
    Ok(tandem_core::grpc_limits!(ReplicationClient::new(ch)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One volume compared by the primary's replicator (`Replication.Verify`): the stream read to
/// its end, and the verdict it gave for `resource`.
async fn verify_volume(
    client: &mut ReplicationClient<tonic::transport::Channel>,
    group: &str,
    resource: &str,
) -> Result<VolumeVerdict, Status> {
    let req = VerifyRequest {
        group: group.to_string(),
        resource: resource.to_string(),
        block_size: VERIFY_BLOCK_SIZE,
        chunk_bytes: VERIFY_CHUNK_BLOCKS * u64::from(VERIFY_BLOCK_SIZE),
        timeout_ms: VERIFY_BARRIER_TIMEOUT.as_millis() as u64,
    };
    let mut stream = client.verify(req).await?.into_inner();
    let mut verdict = None;
    while let Some(p) = stream.message().await? {
        if let Some(v) = p.verdict.filter(|v| v.resource == resource) {
            verdict = Some(v);
        }
    }
    verdict.ok_or_else(|| Status::internal("the verify stream ended without a verdict"))
}

/// `verify`: Merkle roots of every volume at both sites, compared when both sides stand at the
/// same seq (so writes in flight do not count as differences). Recorded as a `verify` audit
/// record with the roots and the result.
async fn verify(c: &Coordinator, run: &Run) -> StepResult {
    let group = run.group.as_str();
    let (primary, replica) = c
        .read(|s| {
            s.group(group)
                .map(|g| (g.primary_site.clone(), g.replica_site.clone()))
        })
        .ok_or_else(|| Failure::new(format!("no group {group}")))?;
    let resources: Vec<String> = c
        .topo()
        .group(group)
        .map(|g| {
            g.resources
                .iter()
                .filter(|r| matches!(r.kind, ResourceKind::Volume { .. }))
                .map(|r| r.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut pc = replication_client_bounded(c, &replicator_addr(c, &primary)?, None).await?;
    let mut rows = Vec::new();
    let mut all_match = true;
    for res in &resources {
        // The primary's replicator barriers chunk by chunk: it holds intake while the replica
        // reaches the same seq and both copies hash one chunk, so live writes cannot make equal
        // copies look different, and writes pause for one chunk's hashing only. It retries a
        // replica that does not catch up; the step's timeout bounds the whole comparison.
        let v = verify_volume(&mut pc, group, res)
            .await
            .map_err(|e| Failure::new(format!("verify {group}/{res}: {e}")))?;
        all_match &= v.equal;
        rows.push(json!({"resource": res, "primary_root": hex(&v.primary_root), "replica_root": hex(&v.replica_root),
            "primary_seq": v.last_seq, "replica_seq": v.last_seq, "first_seq": v.first_seq, "chunks": v.chunks,
            "length": v.primary_length, "replica_length": v.replica_length, "root_match": v.equal,
            "differing_bytes": describe_byte_ranges(&from_wire(&v.differing))}));
    }
    let detail = json!({"run_id": run.state.run_id, "group": group, "primary": primary, "replica": replica,
        "resources": rows, "root_match": all_match, "ok": all_match, "attempts": 1});
    c.propose(
        json!({"op": "record", "actor": crate::state::COORDINATOR_ACTOR, "kind": "verify",
        "group": group, "detail": detail}),
    )
    .await?;
    let text = serde_json::to_string_pretty(&rows).unwrap_or_default();
    if all_match {
        Ok(format!(
            "{} volume(s) identical at both sites\n{text}",
            resources.len()
        ))
    } else {
        Err(Failure {
            error: "the sites differ".into(),
            output: text,
        })
    }
}

/// The snapshot name of a run: the step's `name` and the run id.
fn snapshot_name(run: &Run, name: &str) -> String {
    format!("{name}-{}", run.state.run_id)
}

/// `snapshot`: a copy of the replica's volumes at the step's site, taken between two frames.
async fn snapshot(c: &Coordinator, run: &Run, step: &PlannedStep, name: &str) -> StepResult {
    let site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut client = replication_client(c, &replicator_addr(c, &site)?).await?;
    let req = SnapshotRequest {
        group: run.group.clone(),
        name: snapshot_name(run, name),
    };
    // A previous attempt may have left a partial copy.
    client.delete_snapshot(req.clone()).await?;
    let r = client.snapshot(req).await?.into_inner();
    Ok(format!(
        "{}\nwatermark {}\n{}",
        r.dir,
        r.watermark,
        r.paths.join("\n")
    ))
}

/// `recover`: the group's resources as they were at a recovery point of the replica's
/// history, built at the step's site into `DATA_DIR/recovered/GROUP/NAME-RUN`; the point and
/// the merkle roots of the copy are audited. The first output line is the folder.
async fn recover(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    name: &str,
    point: &tandem_runbooks::RecoverPoint,
) -> StepResult {
    let site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut client = replication_client(c, &replicator_addr(c, &site)?).await?;
    let (at_ms, tag) = match point {
        tandem_runbooks::RecoverPoint::Checkpoint(t) => (0, t.clone()),
        tandem_runbooks::RecoverPoint::Ago(d) => (c.now_ms() - d.as_millis() as i64, String::new()),
    };
    let req = tandem_core::proto::RecoverRequest {
        group: run.group.clone(),
        at_ms,
        tag,
        out_dir: String::new(),
        block_size: RECOVER_BLOCK_SIZE,
        name: snapshot_name(run, name),
    };
    let r = client.recover(req).await?.into_inner();
    let p = r
        .point
        .as_ref()
        .ok_or_else(|| Failure::new("the replica answered without a recovery point"))?;
    let dir = r
        .resources
        .first()
        .and_then(|x| std::path::Path::new(&x.path).parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let resources: Vec<Value> = r
        .resources
        .iter()
        .map(|x| json!({"name": x.name, "path": x.path, "length": x.length, "root": hex(&x.root)}))
        .collect();
    let point_json =
        json!({"seq": p.seq, "captured_ms": p.captured_ms, "kind": p.kind, "tag": p.tag});
    let detail = json!({"run_id": run.state.run_id, "site": site, "out_dir": dir,
        "point": point_json, "copied_at": r.copied_at, "undone": r.undone,
        "block_size": r.block_size, "resources": resources});
    c.propose(
        json!({"op": "record", "actor": crate::state::COORDINATOR_ACTOR, "kind": "recover",
        "group": run.group, "detail": detail}),
    )
    .await?;
    Ok(format!(
        "{dir}\npoint seq {} ({}{}) captured at {} ms; copy of seq {}, {} undo records\n{}",
        p.seq,
        p.kind,
        if p.tag.is_empty() {
            String::new()
        } else {
            format!(" {:?}", p.tag)
        },
        p.captured_ms,
        r.copied_at,
        r.undone,
        serde_json::to_string_pretty(&resources).unwrap_or_default()
    ))
}

/// The snapshot directory this run's `snapshot` step made, if it has run.
fn snapshot_of(run: &Run) -> Option<(String, String)> {
    run.state
        .plan
        .steps
        .iter()
        .zip(&run.state.steps)
        .find_map(|(p, s)| match &p.action {
            Action::Snapshot { name } if s.status == rb::StepStatus::Succeeded => {
                let dir = s.output_excerpt.lines().next()?.to_string();
                Some((snapshot_name(run, name), dir))
            }
            _ => None,
        })
}

/// The environment docs/runbooks.md promises to `exec` and `check` commands.
fn command_env(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    extra: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let plan = &run.state.plan;
    let epoch = c
        .read(|s| s.group(&run.group).map(|g| g.epoch.0))
        .unwrap_or(0);
    let mut env = vec![
        ("TANDEM_RUN_ID".to_string(), run.state.run_id.clone()),
        ("TANDEM_STEP".into(), step.id.clone()),
        ("TANDEM_GROUP".into(), run.group.clone()),
        ("TANDEM_EPOCH".into(), epoch.to_string()),
        ("TANDEM_MODE".into(), plan.mode.to_string()),
        ("TANDEM_PRIMARY".into(), plan.primary.clone()),
        ("TANDEM_REPLICA".into(), plan.replica.clone()),
        ("TANDEM_SITE".into(), step.site.to_string()),
        (
            "TANDEM_COORDINATORS".into(),
            c.topo()
                .coordinators()
                .iter()
                .map(|x| x.node.listen.clone())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if let Ok(exe) = std::env::current_exe() {
        env.push(("TANDEM_BIN".into(), exe.display().to_string()));
    }
    if let Some((name, dir)) = snapshot_of(run) {
        env.push(("TANDEM_SNAPSHOT".into(), name));
        env.push(("TANDEM_SNAPSHOT_PATH".into(), dir));
    }
    for (k, v) in &plan.params {
        env.push((format!("TANDEM_PARAM_{}", k.to_uppercase()), v.to_string()));
    }
    for (k, v) in extra {
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Runs a command on this (the coordinator leader's) host: `(exit status 0, stdout + stderr)`.
async fn run_command(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    command: &Command,
    extra: &BTreeMap<String, String>,
) -> Result<(bool, String), Failure> {
    let mut cmd = match command {
        Command::Shell(s) => {
            let mut x = tokio::process::Command::new("sh");
            x.arg("-c").arg(s);
            x
        }
        Command::Argv(v) => {
            let (prog, args) = v
                .split_first()
                .ok_or_else(|| Failure::new("empty command"))?;
            let mut x = tokio::process::Command::new(prog);
            x.args(args);
            x
        }
    };
    cmd.envs(command_env(c, run, step, extra))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| Failure::new(format!("cannot run {command}: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&err);
    }
    if !out.status.success() {
        text.push_str(&format!("\n[{}]", out.status));
    }
    Ok((out.status.success(), text))
}

/// `check`: probes every `interval` until the probe passes (the step's timeout bounds it).
async fn check(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    probe: &Probe,
    interval_ms: u64,
) -> StepResult {
    let mut tries = 0u64;
    loop {
        tries += 1;
        let (ok, text) = match probe {
            Probe::Command { command, env } => run_command(c, run, step, command, env).await?,
            Probe::Http { url, expect_status } => {
                match http(url, "GET", None, &BTreeMap::new()).await {
                    Ok((status, body)) => (
                        status_ok(status, *expect_status),
                        format!("HTTP {status}\n{body}"),
                    ),
                    Err(e) => (false, e),
                }
            }
        };
        if ok {
            return Ok(format!("ready after {tries} probe(s)\n{text}"));
        }
        if tries == 1 || tries.is_multiple_of(10) {
            info!(run = %run.state.run_id, step = %step.id, tries, "not ready yet: {}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(interval_ms.max(50))).await;
    }
}

fn status_ok(status: u16, expect: Option<u16>) -> bool {
    match expect {
        Some(e) => status == e,
        None => (200..300).contains(&status),
    }
}

fn expect_text(expect: Option<u16>) -> String {
    expect.map_or("2xx".into(), |e| e.to_string())
}

/// A plain HTTP/1.1 call over TCP (`http://` only): `(status, body excerpt)`.
async fn http(
    url: &str,
    method: &str,
    body: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> Result<(u16, String), String> {
    // Errors name the URL without its credentials (they land in the run and the audit chain).
    let shown = redact_url(url);
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err(format!("{shown}: https is not supported by the built-in client; use http:// or an exec step (curl)"))
        }
        None => return Err(format!("{shown}: only http:// URLs are supported")),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{shown}: connect {addr}: {e}"))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: tandem\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{shown}: send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("{shown}: read: {e}"))?;
        if n == 0 || buf.len() >= HTTP_MAX_RESPONSE {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let status =
        parse_status_line(&text).ok_or_else(|| format!("{shown}: not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status code of an HTTP/1.x response's first line.
fn parse_status_line(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn run_json_never_shows_credentials() {
        let mut v = json!({"state": {"plan": {"steps": [{"action": {"http": {
            "url": "http://ops:hunter2@hooks.example/notify?x=1",
            "headers": {"Authorization": "Bearer s3cr3t-token", "X-Api-Key": "k-123",
                        "X-Trace": "visible"},
        }}}]}}});
        redact_secrets(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "s3cr3t-token", "k-123"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert!(text.contains("visible"), "{text}");
        assert!(
            text.contains("http://***@hooks.example/notify?x=1"),
            "{text}"
        );
        assert_eq!(redact_url("http://host:80/a@b"), "http://host:80/a@b");
    }

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_status_line("HTTP/1.1 204 No Content\r\n\r\n"),
            Some(204)
        );
        assert_eq!(parse_status_line("HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn expected_status_defaults_to_any_2xx() {
        assert!(status_ok(204, None));
        assert!(!status_ok(302, None));
        assert!(status_ok(302, Some(302)));
        assert!(!status_ok(200, Some(201)));
    }

    #[tokio::test]
    async fn http_client_talks_to_a_loopback_server_and_refuses_https() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            req
        });
        let mut h = BTreeMap::new();
        h.insert("X-Run".to_string(), "r1".to_string());
        let (status, body) = http(&format!("http://{addr}/hook"), "POST", Some("{}"), &h)
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (201, "ok"));
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("X-Run: r1\r\n") && req.ends_with("\r\n\r\n{}"),
            "{req}"
        );
        let err = http("https://example.com/", "GET", None, &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.contains("https is not supported"), "{err}");
    }
}
