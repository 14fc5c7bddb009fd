//! Durable and wire formats: snapshots (golden bytes, corruption) and command JSON names.

use super::*;

#[test]
fn snapshot_round_trips_byte_identical() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    apply(
        &mut s,
        &heartbeat(
            5,
            "n1",
            "hanoi",
            vec![progress("vol", Role::Primary, 1, 3, 2)],
        ),
    )
    .unwrap();
    apply(&mut s, &fence(10, "vol")).unwrap();
    let snap = s.snapshot();
    let back = State::restore(&snap).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.snapshot(), snap);
}

#[test]
fn snapshot_format_is_golden() {
    let snap = State::new().snapshot();
    assert_eq!(
        String::from_utf8(snap).unwrap(),
        format!(
            "{{\"magic\":\"tandem-coordinator-state\",\"version\":2,\"checksum\":\"{}\",\"state\":{}}}",
            blake3::hash(EMPTY_STATE.as_bytes()).to_hex(),
            EMPTY_STATE
        )
    );
    // A version 1 snapshot (every record in the chain) is read as it always was.
    let v1 = format!(
        "{{\"magic\":\"tandem-coordinator-state\",\"version\":1,\"checksum\":\"{}\",\"state\":{}}}",
        blake3::hash(EMPTY_STATE.as_bytes()).to_hex(),
        EMPTY_STATE
    );
    assert_eq!(State::restore(v1.as_bytes()).unwrap(), State::new());
}

#[test]
fn a_snapshot_of_a_trimmed_chain_carries_the_head_and_tail_and_restores() {
    let mut s = booted();
    for i in 0..20 {
        let note = Command::Record {
            at_ms: i,
            actor: "alice".into(),
            kind: AuditKind::Note,
            group: None,
            detail: json!({ "n": i }),
        };
        apply(&mut s, &note).unwrap();
    }
    let len = s.audit().len();
    s.drop_audit_before(len as u64 - 5);
    let snap = s.snapshot();
    let text = String::from_utf8(snap.clone()).unwrap();
    assert!(text.contains("\"audit\":{\"next_index\":"), "{text}");
    let back = State::restore(&snap).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.audit().len(), len);
    assert_eq!(back.audit().records().len(), 5);
}

const EMPTY_STATE: &str = r#"{"settings":null,"clock_ms":0,"sites":{},"groups":{},"audit":[]}"#;

#[test]
fn corrupted_snapshot_is_refused() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let snap = s.snapshot();
    let text = String::from_utf8(snap.clone()).unwrap();

    // One changed byte in the state body: checksum mismatch.
    let bad = text.replacen("\"hanoi\"", "\"hanoj\"", 1);
    assert!(matches!(
        State::restore(bad.as_bytes()),
        Err(Error::SnapshotChecksum { .. })
    ));
    // A rewritten audit record with a recomputed checksum: the chain names the record.
    let mut forged = s.clone();
    forged.audit = {
        let mut recs = s.audit().records().to_vec();
        recs[1].actor = "mallory".into();
        serde_json::from_value(to_json(&recs)).unwrap()
    };
    assert!(matches!(
        State::restore(&forged.snapshot()),
        Err(Error::Chain(crate::audit::ChainError::HashMismatch {
            index: 1
        }))
    ));
    // Truncated: not JSON.
    assert!(matches!(
        State::restore(&snap[..snap.len() / 2]),
        Err(Error::SnapshotDecode { .. })
    ));
    let v3 = text.replacen("\"version\":2", "\"version\":3", 1);
    assert!(matches!(
        State::restore(v3.as_bytes()),
        Err(Error::SnapshotVersion {
            found: 3,
            supported: 2
        })
    ));
    let other = text.replacen("tandem-coordinator-state", "something-else", 1);
    assert!(matches!(
        State::restore(other.as_bytes()),
        Err(Error::SnapshotMagic { .. })
    ));
}

#[test]
fn command_json_names_are_stable() {
    let cmd = promote(7, "vol", "hcm", true);
    assert_eq!(
        serde_json::to_string(&cmd).unwrap(),
        r#"{"op":"promote","at_ms":7,"group":"vol","to_site":"hcm","actor":"alice","reason":"drill","planned":true}"#
    );
    let back: Command = serde_json::from_str(
        r#"{"op":"set_group_state","at_ms":1,"group":"vol","state":"failing-over","reason":"r","actor":"a"}"#,
    )
    .unwrap();
    assert!(matches!(
        back,
        Command::SetGroupState {
            state: GroupState::FailingOver,
            ..
        }
    ));
    let hb = heartbeat(
        1,
        "n1",
        "hanoi",
        vec![progress("vol", Role::Replica, 2, 3, 4)],
    );
    let text = serde_json::to_string(&hb).unwrap();
    assert!(text.starts_with(r#"{"op":"heartbeat","#), "{text}");
    assert!(text.contains(r#""role":"replica","epoch":2"#), "{text}");
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), hb);
    let r = Rejection::WrongEpoch {
        group: "vol".into(),
        given: Epoch(1),
        current: Epoch(2),
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"code":"wrong_epoch","group":"vol","given":1,"current":2}"#
    );
}

#[test]
fn runs_survive_snapshot_and_restore() {
    let mut s = booted();
    {
        let c = start_run_cmd(&s, 1_000, "r1", "vol");
        apply(&mut s, &c)
    }
    .unwrap();
    {
        let c = run_op(&s, 1_100, "vol", true);
        apply(&mut s, &c)
    }
    .unwrap();
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.run("r1").unwrap().state.steps[0].attempts, 1);
}
