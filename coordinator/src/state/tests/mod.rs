//! Tests of the whole state machine through [`apply`](super::apply), grouped by topic, with the
//! helpers they share (a booted two-site cluster, command builders, runbook plans).

use super::machine::to_json;
use super::*;
use crate::audit::verify_chain;
use crate::audit::{AuditChain, AuditKind, AuditRecord};
use crate::error::Error;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_runbooks::run::{self as rb, RunEvent, RunStatus};
use tandem_runbooks::{Action, Plan, ResolvedSite, RunbookKind};

mod action;
mod bootstrap;
mod lease;
mod moves;
mod records;
mod residency;
mod role;
mod run;
mod schedule;
mod sim;
mod site;
mod sync;
mod wire;

const TTL: i64 = 1_000;
const DRIFT: i64 = 200;

fn settings() -> ClusterSettings {
    ClusterSettings {
        lease_ttl_ms: TTL as u64,
        drift_margin_ms: DRIFT as u64,
        detect_after_ms: 3_000,
        rpo_audit_every_ms: None,
    }
}

fn site(name: &str, witness: bool) -> SiteSpec {
    SiteSpec {
        name: name.into(),
        witness,
        jurisdiction: None,
    }
}

fn gspec(name: &str, primary: &str, replica: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        primary: primary.into(),
        replica: replica.into(),
        mode: Mode::Async,
        rpo_target_ms: 5_000,
        allowed_jurisdictions: Vec::new(),
    }
}

fn bootstrap_cmd(at_ms: i64) -> Command {
    Command::Bootstrap {
        at_ms,
        actor: "ops".into(),
        settings: settings(),
        sites: vec![site("hanoi", false), site("hcm", false), site("w", true)],
        groups: vec![gspec("vol", "hanoi", "hcm"), gspec("db", "hcm", "hanoi")],
    }
}

fn booted() -> State {
    let mut s = State::new();
    apply(&mut s, &bootstrap_cmd(0)).unwrap();
    s
}

fn acquire(at_ms: i64, group: &str, node: &str, site: &str, epoch: u64) -> Command {
    Command::AcquireLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        site: site.into(),
        epoch: Epoch(epoch),
    }
}

fn renew(at_ms: i64, group: &str, node: &str, site: &str, epoch: u64) -> Command {
    Command::RenewLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        site: site.into(),
        epoch: Epoch(epoch),
    }
}

fn release(at_ms: i64, group: &str, node: &str, epoch: u64) -> Command {
    Command::ReleaseLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        epoch: Epoch(epoch),
    }
}

fn fence(at_ms: i64, group: &str) -> Command {
    Command::Fence {
        at_ms,
        group: group.into(),
        actor: "alice".into(),
        reason: "site lost".into(),
    }
}

fn promote(at_ms: i64, group: &str, to: &str, planned: bool) -> Command {
    Command::Promote {
        at_ms,
        group: group.into(),
        to_site: to.into(),
        actor: "alice".into(),
        reason: "drill".into(),
        planned,
    }
}

fn heartbeat(at_ms: i64, node: &str, site: &str, progress: Vec<GroupProgress>) -> Command {
    Command::Heartbeat {
        at_ms,
        node: node.into(),
        site: site.into(),
        progress,
        renew: Vec::new(),
    }
}

fn progress(group: &str, role: Role, epoch: u64, captured: u64, durable: u64) -> GroupProgress {
    GroupProgress {
        group: group.into(),
        role,
        epoch: Epoch(epoch),
        last_captured_seq: Seq(captured),
        durable_seq: Seq(durable),
        rpo_ms: 1_500,
        bytes_pending: 4_096,
    }
}

fn kinds(s: &State) -> Vec<AuditKind> {
    s.audit().records().iter().map(|r| r.kind).collect()
}

/// Everything but the audit chain, to show a refusal changed nothing else.
fn without_audit(s: &State) -> State {
    let mut c = s.clone();
    c.audit = AuditChain::default();
    c
}

impl State {
    fn with_clock(mut self, at: i64) -> State {
        self.clock_ms = at;
        self
    }
}

// ---- runbook runs ----

fn drill_plan(s: &State, group: &str) -> Plan {
    let (primary, replica, epoch) = s
        .group(group)
        .map_or(("hanoi".to_string(), "hcm".to_string(), Epoch(1)), |g| {
            (g.primary_site.clone(), g.replica_site.clone(), g.epoch)
        });
    let rb = tandem_runbooks::library::stock(RunbookKind::Drill)
        .unwrap()
        .unwrap();
    tandem_runbooks::plan(
        &rb,
        &tandem_runbooks::PlanContext {
            group: group.into(),
            primary_site: primary,
            replica_site: replica,
            mode: tandem_core::config::Mode::Async,
            epoch,
            params: BTreeMap::new(),
        },
    )
    .unwrap()
}

fn start_run_cmd(s: &State, at_ms: i64, run_id: &str, group: &str) -> Command {
    Command::StartRun {
        at_ms,
        run_id: run_id.into(),
        group: group.into(),
        kind: RunbookKind::Drill,
        runbook_hash: "h".into(),
        plan: drill_plan(s, group),
        started_by: "alice".into(),
        rto_from_ms: None,
        schedule: None,
    }
}

/// The command that moves the group's unfinished run one event on (or starts one).
fn run_op(s: &State, at_ms: i64, group: &str, ok: bool) -> Command {
    let running = s
        .runs()
        .iter()
        .find(|(_, r)| r.group == group && r.is_running());
    let Some((id, run)) = running else {
        return start_run_cmd(s, at_ms, &format!("{group}-{at_ms}"), group);
    };
    let event = match rb::next_action(&run.state) {
        rb::NextAction::Start { step, .. } | rb::NextAction::RetryAt { step, .. } => {
            RunEvent::StepStarted { step, at_ms: 0 }
        }
        rb::NextAction::InFlight { step } if ok => RunEvent::StepSucceeded {
            step,
            at_ms: 0,
            output: "out".into(),
        },
        rb::NextAction::InFlight { step } => RunEvent::StepFailed {
            step,
            at_ms: 0,
            error: "boom".into(),
            output: String::new(),
        },
        rb::NextAction::AwaitApproval { step, .. } => RunEvent::Approved {
            step,
            by: "bob".into(),
            at_ms: 0,
        },
        rb::NextAction::Done(_) => RunEvent::LeaderChanged { at_ms: 0 },
    };
    Command::RunEvent {
        at_ms,
        run_id: id.clone(),
        event,
    }
}

fn kinds_since(s: &State, from: usize) -> Vec<AuditKind> {
    s.audit_range(from as u64, 10_000)
        .iter()
        .map(|r| r.kind)
        .collect()
}
