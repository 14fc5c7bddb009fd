//! Fuzz the coordinator's admin handlers: arbitrary bytes decoded (prost) as each request
//! message of the `Coordinator` service, then the pure part of the handler: a `Propose`'s
//! command JSON (coordinators only), a `Heartbeat`'s progress, a `Record`, `Pause`, `Resume`,
//! `ReleaseLease`, `SyncDegraded`, `AddAction`, `AssignAction`, `CloseAction` and `SignReview`
//! become a state-machine command (actor and node as the certificate would give them), which
//! is applied to a bootstrapped state. Nothing panics; a
//! refused command changes no group or site.
//!
//! Input: the first byte picks the message type, the rest is the encoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::{json, Value};
use std::sync::OnceLock;
use tandem_coordinator::server::{add_action_command, heartbeat_command, record_command};
use tandem_coordinator::state::{apply, Command, State};
use tandem_core::proto::{
    AddActionRequest, AssignActionRequest, CloseActionRequest, SignReviewRequest,
};
use tandem_core::proto::{
    AuditRequest, GetRunRequest, GroupCall, HeartbeatRequest, PlannedStepRequest, ProposeRequest,
    RecordRequest, ReleaseLeaseRequest, RunActionRequest, RunsRequest, StartRunRequest,
    StatusRequest, SyncDegradedRequest,
};

/// A state with two VN sites, an SG site and a VN-only group, as a leader would hold it.
fn booted() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let cmd: Command = serde_json::from_value(json!({
            "op": "bootstrap", "at_ms": 1000, "actor": "ops",
            "settings": {"lease_ttl_ms": 2000, "drift_margin_ms": 300, "detect_after_ms": 1500},
            "sites": [
                {"name": "hanoi", "witness": false, "jurisdiction": "VN"},
                {"name": "hcm", "witness": false, "jurisdiction": "VN"},
                {"name": "sg", "witness": false, "jurisdiction": "SG"},
                {"name": "danang", "witness": true}
            ],
            "groups": [{"name": "vol", "primary": "hanoi", "replica": "hcm", "mode": "sync",
                        "rpo_target_ms": 0, "allowed_jurisdictions": ["VN"]}]
        }))
        .expect("bootstrap command");
        let mut s = State::new();
        apply(&mut s, &cmd).expect("bootstrap applies");
        s
    })
}

/// As the leader does: stamp the time, parse the command, apply it (it would go through raft
/// as the JSON of the parsed command; every node parses that again).
fn propose(cmd: Value, now: i64) {
    let Ok(parsed) = serde_json::from_value::<Command>(cmd) else {
        return;
    };
    apply_typed(parsed, now);
}

/// A command as the typed handlers make it, stamped and applied through its JSON form.
fn apply_typed(mut parsed: Command, now: i64) {
    parsed.stamp(now);
    let Ok(cmd) = serde_json::to_value(&parsed) else {
        return;
    };
    apply_json(cmd, now);
}

fn apply_json(mut cmd: Value, now: i64) {
    if let Some(obj) = cmd.as_object_mut() {
        obj.insert("at_ms".into(), json!(now));
    }
    let Ok(parsed) = serde_json::from_value::<Command>(cmd) else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(&parsed) else {
        return;
    };
    let again: Command = serde_json::from_slice(&bytes).expect("a parsed command re-parses");
    let mut s = booted().clone();
    let before = (s.groups().clone(), s.sites().clone());
    if apply(&mut s, &again).is_err() {
        assert!(
            before == (s.groups().clone(), s.sites().clone()),
            "a refused command changed the state"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let now = 1_000_000;
    match kind % 14 {
        0 => {
            if let Ok(r) = ProposeRequest::decode(body) {
                if let Ok(cmd) = serde_json::from_str::<Value>(&r.command) {
                    propose(cmd, now);
                }
            }
        }
        1 => {
            if let Ok(r) = HeartbeatRequest::decode(body) {
                apply_typed(heartbeat_command(&r, now), now);
            }
        }
        2 => {
            if let Ok(r) = RecordRequest::decode(body) {
                if let Ok(cmd) = record_command(&r, "operator") {
                    apply_typed(cmd, now);
                }
            }
        }
        3 => {
            if let Ok(r) = AuditRequest::decode(body) {
                let limit = if r.limit == 0 {
                    1000
                } else {
                    r.limit.min(10_000)
                } as usize;
                let _ = booted().audit_range(r.from_index, limit);
            }
        }
        4 => {
            if let Ok(r) = GroupCall::decode(body) {
                let (group, reason, actor) = (r.group.clone(), r.reason.clone(), "operator".into());
                apply_typed(Command::PauseReplication { at_ms: 0, group, actor, reason }, now);
                let actor = "operator".into();
                apply_typed(Command::ResumeReplication { at_ms: 0, group: r.group, actor, reason: r.reason }, now);
            }
        }
        5 => {
            if let Ok(r) = ReleaseLeaseRequest::decode(body) {
                let epoch = tandem_core::ids::Epoch(r.epoch);
                apply_typed(Command::ReleaseLease { at_ms: 0, group: r.group, node: "hanoi-rep".into(), epoch }, now);
            }
        }
        6 => {
            if let Ok(r) = SyncDegradedRequest::decode(body) {
                let epoch = tandem_core::ids::Epoch(r.epoch);
                let (node, site) = ("hanoi-rep".into(), "hanoi".into());
                apply_typed(Command::SyncDegraded { at_ms: 0, group: r.group, node, site, epoch, on: r.on }, now);
            }
        }
        7 => {
            let _ = StartRunRequest::decode(body).map(|r| r.kind());
        }
        8 => {
            let _ = RunActionRequest::decode(body).map(|r| r.action());
        }
        9 => {
            let _ = (RunsRequest::decode(body), GetRunRequest::decode(body));
        }
        10 => {
            let _ = PlannedStepRequest::decode(body);
        }
        11 => {
            if let Ok(r) = AddActionRequest::decode(body) {
                if let Ok(cmd) = add_action_command(&r, "operator") {
                    apply_typed(cmd, now);
                }
            }
        }
        12 => {
            if let Ok(r) = AssignActionRequest::decode(body) {
                let actor = "operator".to_string();
                apply_typed(Command::AssignAction { at_ms: 0, actor, id: r.id, owner: r.owner }, now);
            }
            if let Ok(r) = CloseActionRequest::decode(body) {
                let actor = "operator".to_string();
                apply_typed(Command::CloseAction { at_ms: 0, actor, id: r.id, note: r.note }, now);
            }
            if let Ok(r) = SignReviewRequest::decode(body) {
                let actor = "auditor".to_string();
                apply_typed(Command::SignReview { at_ms: 0, actor, run_id: r.run_id, note: r.note }, now);
            }
        }
        _ => {
            let _ = StatusRequest::decode(body);
        }
    }
});
