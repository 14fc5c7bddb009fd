//! Planned moves of a group's replica side (`tandem move`): start, refusals, completion by
//! the new host's in-sync report, cancellation by a promotion.

use super::*;

fn move_cmd(at_ms: i64, group: &str, site: &str, to: &str) -> Command {
    Command::MoveGroup {
        at_ms,
        group: group.into(),
        site: site.into(),
        to: to.into(),
        actor: "alice".into(),
        reason: "rebalance".into(),
    }
}

fn protect(at_ms: i64, group: &str, host: &str) -> Command {
    Command::SetGroupState {
        at_ms,
        group: group.into(),
        state: GroupState::Protected,
        reason: format!("replica in sync on {host}"),
        actor: host.into(),
        host: Some(host.into()),
    }
}

/// `vol` (hanoi → hcm) leased by n1 and protected by hcm-rep-1.
fn protected() -> State {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    apply(&mut s, &protect(10, "vol", "hcm-rep-1")).unwrap();
    s
}

#[test]
fn a_move_names_the_new_host_until_its_in_sync_report_records_it() {
    let mut s = protected();
    let g = s.group("vol").unwrap();
    assert_eq!(g.host_at("hcm"), Some("hcm-rep-1"));
    apply(&mut s, &move_cmd(100, "vol", "hcm", "hcm-rep-2")).unwrap();
    let g = s.group("vol").unwrap();
    assert_eq!(g.state, GroupState::Degraded);
    assert!(
        g.reason.contains("from hcm-rep-1 to hcm-rep-2"),
        "{}",
        g.reason
    );
    // The move's target is where the data goes; the record still names the old host.
    assert_eq!(g.host_at("hcm"), Some("hcm-rep-2"));
    assert_eq!(g.hosts.get("hcm").map(String::as_str), Some("hcm-rep-1"));
    assert_eq!(
        g.placed_hosts().get("hcm").map(String::as_str),
        Some("hcm-rep-2")
    );
    assert_eq!(g.host_at("hanoi"), Some("n1"));
    // The old host's report does not end it; the new host's does.
    apply(&mut s, &protect(200, "vol", "hcm-rep-1")).unwrap();
    assert!(s.group("vol").unwrap().moving.is_some());
    apply(&mut s, &protect(300, "vol", "hcm-rep-2")).unwrap();
    let g = s.group("vol").unwrap();
    assert!(g.moving.is_none());
    assert_eq!(g.hosts.get("hcm").map(String::as_str), Some("hcm-rep-2"));
    let moves: Vec<&AuditRecord> = s
        .audit()
        .records()
        .iter()
        .filter(|r| r.kind == AuditKind::Move)
        .collect();
    assert_eq!(moves.len(), 2);
    assert_eq!(moves[0].actor, "alice");
    assert_eq!(moves[0].detail["phase"], "started");
    assert_eq!(moves[0].detail["from"], "hcm-rep-1");
    assert_eq!(moves[1].actor, "hcm-rep-2");
    assert_eq!(moves[1].detail["phase"], "completed");
    assert_eq!(moves[1].detail["took_ms"], 200);
}

#[test]
fn a_move_is_refused_for_the_primary_side_a_second_move_and_the_same_host() {
    let mut s = protected();
    let refused = |s: &mut State, cmd: Command, why: &str| match apply(s, &cmd) {
        Err(Rejection::MoveRefused { reason, .. }) => {
            assert!(reason.contains(why), "{reason} does not say {why}")
        }
        other => panic!("{other:?}"),
    };
    refused(&mut s, move_cmd(1, "vol", "hanoi", "n2"), "primary site");
    refused(
        &mut s,
        move_cmd(1, "vol", "nowhere", "x"),
        "no side at nowhere",
    );
    refused(
        &mut s,
        move_cmd(1, "vol", "hcm", "hcm-rep-1"),
        "already holds",
    );
    apply(&mut s, &move_cmd(2, "vol", "hcm", "hcm-rep-2")).unwrap();
    refused(&mut s, move_cmd(3, "vol", "hcm", "hcm-rep-3"), "under way");
    assert!(matches!(
        apply(&mut s, &move_cmd(3, "nope", "hcm", "x")),
        Err(Rejection::UnknownGroup { .. })
    ));
    // Every refusal left the move as it was.
    assert_eq!(s.group("vol").unwrap().host_at("hcm"), Some("hcm-rep-2"));
}

#[test]
fn a_promotion_during_a_move_cancels_it_and_promotes_the_old_host() {
    let mut s = protected();
    apply(&mut s, &move_cmd(100, "vol", "hcm", "hcm-rep-2")).unwrap();
    apply(&mut s, &release(200, "vol", "n1", 1)).unwrap();
    apply(&mut s, &promote(201, "vol", "hcm", false)).unwrap();
    let g = s.group("vol").unwrap();
    assert!(g.moving.is_none());
    // The old host holds the only consistent copy at hcm: it is where the data lives.
    assert_eq!(g.host_at("hcm"), Some("hcm-rep-1"));
    let last = s.audit().records().last().unwrap();
    assert_eq!(last.kind, AuditKind::Move);
    assert_eq!(last.detail["phase"], "cancelled");
    assert_eq!(last.detail["to"], "hcm-rep-2");
}
