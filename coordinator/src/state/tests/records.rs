//! RPO samples, `record` commands, size limits and paging the audit chain.

use super::*;

#[test]
fn rpo_ring_is_bounded_and_samples_are_audited() {
    let mut s = booted();
    for i in 0..(RPO_RING_CAPACITY as i64 + 10) {
        let ev = apply(
            &mut s,
            &Command::RpoSample {
                at_ms: i,
                group: "vol".into(),
                rpo_ms: if i == 0 { 9_000 } else { 100 },
            },
        )
        .unwrap();
        assert_eq!(
            ev[0],
            Event::RpoSampled {
                group: "vol".into(),
                rpo_ms: if i == 0 { 9_000 } else { 100 },
                over_target: i == 0,
            }
        );
    }
    let ring = &s.group("vol").unwrap().rpo_samples;
    assert_eq!(ring.len(), RPO_RING_CAPACITY);
    assert_eq!(ring.front().unwrap().at_ms, 10);
    assert_eq!(s.audit().len(), 1 + RPO_RING_CAPACITY + 10);
}

#[test]
fn rpo_samples_of_many_groups_commit_as_one_and_skip_unknown_groups() {
    // One command samples every group as one RpoSample per group would.
    let mut one_by_one = booted();
    for (g, rpo) in [("vol", 100), ("db", 9_000)] {
        apply(
            &mut one_by_one,
            &Command::RpoSample {
                at_ms: 7,
                group: g.into(),
                rpo_ms: rpo,
            },
        )
        .unwrap();
    }
    let mut batched = booted();
    let sample = |group: &str, rpo_ms| GroupRpo {
        group: group.into(),
        rpo_ms,
    };
    let ev = apply(
        &mut batched,
        &Command::RpoSamples {
            at_ms: 7,
            samples: vec![sample("vol", 100), sample("ghost", 5), sample("db", 9_000)],
        },
    )
    .unwrap();
    let sampled = ev
        .iter()
        .filter(|e| matches!(e, Event::RpoSampled { .. }))
        .count();
    assert_eq!(sampled, 2, "the unknown group is skipped: {ev:?}");
    assert_eq!(to_json(&batched), to_json(&one_by_one));
    // Too many samples in one command are refused whole, unaudited.
    let many = (0..=MAX_ENTRIES).map(|_| sample("vol", 1)).collect();
    let before = batched.audit().len();
    assert!(matches!(
        apply(
            &mut batched,
            &Command::RpoSamples {
                at_ms: 8,
                samples: many
            }
        ),
        Err(Rejection::FieldLength { .. })
    ));
    assert_eq!(batched.audit().len(), before);
}

#[test]
fn with_an_audit_interval_rpo_is_summarized_and_breaches_recorded_at_once() {
    // 1. A later bootstrap sets the audit interval (the only setting it may change) and is
    //    audited; the same bootstrap again is a no-op.
    let mut s = booted();
    let mut with_interval = bootstrap_cmd(1);
    if let Command::Bootstrap { settings, .. } = &mut with_interval {
        settings.rpo_audit_every_ms = Some(60_000);
    }
    apply(&mut s, &with_interval).unwrap();
    assert_eq!(s.settings().unwrap().rpo_audit_every_ms, Some(60_000));
    assert_eq!(s.audit().len(), 2);
    apply(&mut s, &with_interval).unwrap();
    assert_eq!(s.audit().len(), 2);
    let mut changed_ttl = with_interval.clone();
    if let Command::Bootstrap { settings, .. } = &mut changed_ttl {
        settings.lease_ttl_ms += 1;
    }
    assert!(matches!(
        apply(&mut s, &changed_ttl),
        Err(Rejection::BootstrapConflict { .. })
    ));
    assert_eq!(s.audit().records()[2].kind, AuditKind::Refused);
    // 2. Three minutes of 5 s samples (target 5 s) with one breach of 15 s at 100 s.
    let mut kinds = Vec::new();
    for k in 0..=36i64 {
        let at = 10 + k * 5_000;
        let rpo_ms = if (20..23).contains(&k) {
            7_000 + k as u64
        } else {
            100
        };
        let ev = apply(
            &mut s,
            &Command::RpoSamples {
                at_ms: at,
                samples: vec![GroupRpo {
                    group: "vol".into(),
                    rpo_ms,
                }],
            },
        )
        .unwrap();
        assert!(matches!(ev[0], Event::RpoSampled { .. }));
        if ev.iter().any(|e| matches!(e, Event::Audited { .. })) {
            kinds.push(k);
        }
    }
    // 3. First sample, 60 s, the breach's start (20) and end (23), then 60 s after the end.
    assert_eq!(kinds, vec![0, 12, 20, 23, 35]);
    let recs = s.audit_range(3, 100);
    assert!(
        recs.iter().all(|r| r.kind == AuditKind::RpoSummary),
        "{recs:#?}"
    );
    let end = &recs[3].detail;
    assert_eq!(end["reason"], json!("within"));
    assert_eq!(end["max_ms"], json!(7_022));
    assert_eq!(end["over_samples"], json!(2));
    assert_eq!(end["over_target_ms"], json!(15_000));
    assert_eq!(s.group("vol").unwrap().rpo_samples.len(), 37);
    // 4. The snapshot keeps the pending window and restores to the same state.
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
}

#[test]
fn record_refuses_internal_kinds_floats_and_unknown_groups() {
    let mut s = booted();
    let rec = |kind, group: Option<&str>, detail| Command::Record {
        at_ms: 5,
        actor: "runbook".into(),
        kind,
        group: group.map(str::to_string),
        detail,
    };
    assert_eq!(
        apply(&mut s, &rec(AuditKind::Promote, None, json!({}))),
        Err(Rejection::KindNotRecordable {
            kind: AuditKind::Promote
        })
    );
    assert_eq!(
        apply(&mut s, &rec(AuditKind::Verify, None, json!({"ratio": 0.5}))),
        Err(Rejection::DetailHasFloat)
    );
    assert!(matches!(
        apply(&mut s, &rec(AuditKind::Verify, Some("ghost"), json!({}))),
        Err(Rejection::UnknownGroup { .. })
    ));
    assert_eq!(s.audit().len(), 1);
    let ev = apply(
        &mut s,
        &rec(AuditKind::Verify, Some("vol"), json!({"root_match": true})),
    )
    .unwrap();
    assert_eq!(
        ev,
        vec![Event::Audited {
            index: 1,
            kind: AuditKind::Verify
        }]
    );
    assert_eq!(s.audit_range(1, 10)[0].detail["root_match"], json!(true));
}

#[test]
fn oversized_fields_are_refused_without_audit() {
    let mut s = booted();
    let cmd = Command::Fence {
        at_ms: 1,
        group: "vol".into(),
        actor: "a".repeat(MAX_NAME_LEN + 1),
        reason: String::new(),
    };
    assert!(matches!(
        apply(&mut s, &cmd),
        Err(Rejection::FieldLength { ref field, .. }) if field == "actor"
    ));
    let cmd = Command::Record {
        at_ms: 1,
        actor: "a".into(),
        kind: AuditKind::Note,
        group: None,
        detail: json!("x".repeat(MAX_DETAIL_BYTES)),
    };
    assert!(matches!(
        apply(&mut s, &cmd),
        Err(Rejection::FieldLength { ref field, .. }) if field == "detail"
    ));
    assert_eq!(s.audit().len(), 1);
}

#[test]
fn audit_range_pages_the_chain() {
    let mut s = booted();
    for i in 0..5 {
        apply(
            &mut s,
            &Command::Record {
                at_ms: i,
                actor: "a".into(),
                kind: AuditKind::Note,
                group: None,
                detail: json!(i),
            },
        )
        .unwrap();
    }
    let page = s.audit_range(2, 2);
    assert_eq!(page.iter().map(|r| r.index).collect::<Vec<_>>(), vec![2, 3]);
    assert!(s.audit_range(6, 2).is_empty());
}
