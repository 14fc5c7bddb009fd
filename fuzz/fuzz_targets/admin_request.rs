//! Fuzz the coordinator's admin handlers: arbitrary bytes decoded (prost) as each request
//! message of the `Coordinator` service, then the pure part of the handler: a `Propose`'s
//! command JSON and a `Heartbeat`'s progress become a state-machine command, which is applied
//! to a bootstrapped state. Nothing panics; a refused command changes no group or site.
//!
//! Input: the first byte picks the message type, the rest is the encoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::{json, Value};
use std::sync::OnceLock;
use tandem_coordinator::server::heartbeat_command;
use tandem_coordinator::state::{apply, Command, State};
use tandem_core::proto::{
    AuditRequest, HeartbeatRequest, OperateRequest, ProposeRequest, StatusRequest,
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
fn propose(mut cmd: Value, now: i64) {
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
    match kind % 5 {
        0 => {
            if let Ok(r) = ProposeRequest::decode(body) {
                if let Ok(cmd) = serde_json::from_str::<Value>(&r.command) {
                    propose(cmd, now);
                }
            }
        }
        1 => {
            if let Ok(r) = HeartbeatRequest::decode(body) {
                propose(heartbeat_command(&r, now), now);
            }
        }
        2 => {
            let _ = OperateRequest::decode(body);
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
        _ => {
            let _ = StatusRequest::decode(body);
        }
    }
});
