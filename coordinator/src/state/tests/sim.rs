//! Property tests over random command sequences: lease, epoch and chain invariants,
//! determinism of replay and snapshots, JSON round trips.

use super::*;

// ---- property tests over random command sequences ----

const SITES: [&str; 4] = ["hanoi", "hcm", "w", "mars"];
const GROUPS: [&str; 3] = ["vol", "db", "ghost"];
const NODES: [&str; 4] = ["n1", "n2", "r1", "r2"];
const STATES: [GroupState; 7] = [
    GroupState::Protected,
    GroupState::Degraded,
    GroupState::FailingOver,
    GroupState::FailedOver,
    GroupState::Drilling,
    GroupState::Resyncing,
    GroupState::SwitchingOver,
];

#[derive(Debug, Clone)]
enum SitePick {
    Primary,
    Replica,
    Fixed(usize),
}

#[derive(Debug, Clone)]
enum EpochPick {
    Current,
    Lease,
    Fixed(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Heartbeat(usize, SitePick, usize, bool, EpochPick, u64, u64),
    Acquire(usize, usize, SitePick, EpochPick),
    Renew(usize, usize, SitePick, EpochPick),
    Release(usize, usize, EpochPick),
    Fence(usize),
    Promote(usize, SitePick, bool),
    SetState(usize, usize),
    Pause(usize),
    Resume(usize),
    SiteDown(usize),
    SiteUp(usize),
    Rpo(usize, u64),
    Record(Option<usize>, u64),
    Rebootstrap(bool),
    Run(usize, bool),
}

fn site_pick() -> impl Strategy<Value = SitePick> {
    prop_oneof![
        4 => Just(SitePick::Primary),
        2 => Just(SitePick::Replica),
        1 => (0..SITES.len()).prop_map(SitePick::Fixed),
    ]
}

fn epoch_pick() -> impl Strategy<Value = EpochPick> {
    prop_oneof![
        5 => Just(EpochPick::Current),
        2 => Just(EpochPick::Lease),
        1 => (0u64..6).prop_map(EpochPick::Fixed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0..GROUPS.len();
    let n = 0..NODES.len();
    prop_oneof![
        3 => (n.clone(), site_pick(), g.clone(), any::<bool>(), epoch_pick(), 0u64..50, 0u64..50)
            .prop_map(|(a, b, c, d, e, f, h)| Op::Heartbeat(a, b, c, d, e, f, h)),
        6 => (g.clone(), n.clone(), site_pick(), epoch_pick())
            .prop_map(|(a, b, c, d)| Op::Acquire(a, b, c, d)),
        5 => (g.clone(), n.clone(), site_pick(), epoch_pick())
            .prop_map(|(a, b, c, d)| Op::Renew(a, b, c, d)),
        2 => (g.clone(), n.clone(), epoch_pick()).prop_map(|(a, b, c)| Op::Release(a, b, c)),
        2 => g.clone().prop_map(Op::Fence),
        4 => (g.clone(), site_pick(), any::<bool>()).prop_map(|(a, b, c)| Op::Promote(a, b, c)),
        2 => (g.clone(), 0..STATES.len()).prop_map(|(a, b)| Op::SetState(a, b)),
        1 => g.clone().prop_map(Op::Pause),
        1 => g.clone().prop_map(Op::Resume),
        1 => (0..SITES.len()).prop_map(Op::SiteDown),
        1 => (0..SITES.len()).prop_map(Op::SiteUp),
        1 => (g.clone(), 0u64..10_000).prop_map(|(a, b)| Op::Rpo(a, b)),
        1 => (proptest::option::of(g.clone()), 0u64..100).prop_map(|(a, b)| Op::Record(a, b)),
        1 => any::<bool>().prop_map(Op::Rebootstrap),
        3 => (g, any::<bool>()).prop_map(|(a, b)| Op::Run(a, b)),
    ]
}

fn resolve_site(s: &State, group: &str, pick: &SitePick) -> String {
    let g = s.group(group);
    match pick {
        SitePick::Primary => g.map_or("hanoi", |g| g.primary_site.as_str()).to_string(),
        SitePick::Replica => g.map_or("hcm", |g| g.replica_site.as_str()).to_string(),
        SitePick::Fixed(i) => SITES[*i].to_string(),
    }
}

fn resolve_epoch(s: &State, group: &str, pick: &EpochPick) -> Epoch {
    let g = s.group(group);
    match pick {
        EpochPick::Current => g.map_or(Epoch(1), |g| g.epoch),
        EpochPick::Lease => g
            .and_then(|g| g.lease.as_ref())
            .map_or(Epoch(0), |l| l.epoch),
        EpochPick::Fixed(e) => Epoch(*e),
    }
}

fn resolve(s: &State, at_ms: i64, op: &Op) -> Command {
    let actor = "op".to_string();
    match op {
        Op::Heartbeat(n, site, g, primary, e, c, d) => {
            let group = GROUPS[*g];
            Command::Heartbeat {
                at_ms,
                node: NODES[*n].into(),
                site: resolve_site(s, group, site),
                progress: vec![GroupProgress {
                    group: group.into(),
                    role: if *primary {
                        Role::Primary
                    } else {
                        Role::Replica
                    },
                    epoch: resolve_epoch(s, group, e),
                    last_captured_seq: Seq(*c),
                    durable_seq: Seq(*d),
                    rpo_ms: *c,
                    bytes_pending: *d,
                }],
                // Half the primary reports renew their lease with the heartbeat.
                renew: if *primary && *c % 2 == 0 {
                    vec![crate::state::LeaseRenewal {
                        group: group.into(),
                        epoch: resolve_epoch(s, group, e),
                    }]
                } else {
                    Vec::new()
                },
            }
        }
        Op::Acquire(g, n, site, e) | Op::Renew(g, n, site, e) => {
            let group = GROUPS[*g];
            let (site, epoch) = (resolve_site(s, group, site), resolve_epoch(s, group, e));
            if matches!(op, Op::Acquire(..)) {
                Command::AcquireLease {
                    at_ms,
                    group: group.into(),
                    node: NODES[*n].into(),
                    site,
                    epoch,
                }
            } else {
                Command::RenewLease {
                    at_ms,
                    group: group.into(),
                    node: NODES[*n].into(),
                    site,
                    epoch,
                }
            }
        }
        Op::Release(g, n, e) => Command::ReleaseLease {
            at_ms,
            group: GROUPS[*g].into(),
            node: NODES[*n].into(),
            epoch: resolve_epoch(s, GROUPS[*g], e),
        },
        Op::Fence(g) => Command::Fence {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::Promote(g, site, planned) => Command::Promote {
            at_ms,
            group: GROUPS[*g].into(),
            to_site: resolve_site(s, GROUPS[*g], site),
            actor,
            reason: "test".into(),
            planned: *planned,
        },
        Op::SetState(g, st) => Command::SetGroupState {
            at_ms,
            group: GROUPS[*g].into(),
            state: STATES[*st],
            reason: "test".into(),
            actor,
            host: None,
        },
        Op::Pause(g) => Command::PauseReplication {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::Resume(g) => Command::ResumeReplication {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::SiteDown(i) => Command::SiteDown {
            at_ms,
            site: SITES[*i].into(),
        },
        Op::SiteUp(i) => Command::SiteUp {
            at_ms,
            site: SITES[*i].into(),
        },
        Op::Rpo(g, rpo) => Command::RpoSample {
            at_ms,
            group: GROUPS[*g].into(),
            rpo_ms: *rpo,
        },
        Op::Run(g, ok) => run_op(s, at_ms, GROUPS[*g], *ok),
        Op::Record(g, n) => Command::Record {
            at_ms,
            actor,
            kind: AuditKind::RunbookStep,
            group: g.map(|g| GROUPS[g].to_string()),
            detail: json!({"step": n, "text": "ok"}),
        },
        Op::Rebootstrap(extra) => {
            let Command::Bootstrap {
                actor,
                settings,
                sites,
                mut groups,
                ..
            } = bootstrap_cmd(at_ms)
            else {
                unreachable!()
            };
            if *extra {
                groups.push(gspec("pg", "hcm", "hanoi"));
            }
            Command::Bootstrap {
                at_ms,
                actor,
                settings,
                sites,
                groups,
            }
        }
    }
}

/// A lease as the test sees it from events alone (independent of the state's lease field).
#[derive(Debug)]
struct SeenLease {
    holder: String,
    epoch: Epoch,
    expires: i64,
    released_at: Option<i64>,
}

impl SeenLease {
    /// Whether its holder may still believe in it at `t` (drift margin included).
    fn may_be_live(&self, t: i64) -> bool {
        match self.released_at {
            Some(r) => t < r,
            None => t < self.expires + DRIFT,
        }
    }

    fn live(&self, t: i64) -> bool {
        self.released_at.is_none_or(|r| t < r) && t < self.expires
    }
}

fn check_step(
    seen: &mut BTreeMap<String, Vec<SeenLease>>,
    before: &State,
    after: &State,
    now: i64,
    result: &Result<Vec<Event>, Rejection>,
) -> Result<(), TestCaseError> {
    // Epochs only grow; groups are never removed.
    for (name, g) in before.groups() {
        let a = after.group(name);
        prop_assert!(a.is_some(), "group {name} vanished");
        prop_assert!(a.unwrap().epoch >= g.epoch, "epoch of {name} went down");
    }
    prop_assert_eq!(verify_chain(after.audit().records()), Ok(()));
    let events = match result {
        Err(_) => {
            // A refusal changes nothing but may append one refused record.
            prop_assert_eq!(without_audit(after), without_audit(before));
            let (b, a) = (before.audit().len(), after.audit().len());
            prop_assert!(a == b || a == b + 1);
            prop_assert_eq!(&after.audit().records()[..b], before.audit().records());
            return Ok(());
        }
        Ok(ev) => ev,
    };
    for e in events {
        match e {
            Event::LeaseGranted {
                group,
                node,
                epoch,
                expires_ms,
                ..
            } => {
                let list = seen.entry(group.clone()).or_default();
                for l in list.iter().filter(|l| &l.holder != node) {
                    prop_assert!(
                        !l.may_be_live(now),
                        "lease to {node} at {now} while {l:?} may be live"
                    );
                }
                prop_assert_eq!(*epoch, after.group(group).unwrap().epoch);
                list.push(SeenLease {
                    holder: node.clone(),
                    epoch: *epoch,
                    expires: *expires_ms,
                    released_at: None,
                });
            }
            Event::LeaseRenewed {
                group,
                node,
                expires_ms,
                ..
            } => {
                let l = seen
                    .get_mut(group)
                    .and_then(|v| v.iter_mut().rev().find(|l| &l.holder == node));
                prop_assert!(l.is_some(), "renewal of a lease never granted");
                let l = l.unwrap();
                prop_assert!(l.released_at.is_none(), "renewal of a released lease");
                prop_assert!(now < l.expires, "renewal after expiry");
                l.expires = l.expires.max(*expires_ms);
            }
            Event::LeaseReleased { group, node, .. } => {
                for l in seen.entry(group.clone()).or_default() {
                    if &l.holder == node && l.released_at.is_none() {
                        l.released_at = Some(now);
                    }
                }
            }
            Event::Promoted { group, epoch, .. } => {
                for l in seen.get(group).into_iter().flatten() {
                    prop_assert!(
                        !l.may_be_live(now),
                        "promotion at {now} while {l:?} may be live"
                    );
                    prop_assert!(*epoch > l.epoch, "promotion epoch not above {l:?}");
                }
            }
            _ => {}
        }
    }
    for (group, list) in seen.iter() {
        let holders: BTreeSet<&str> = list
            .iter()
            .filter(|l| l.live(now))
            .map(|l| l.holder.as_str())
            .collect();
        prop_assert!(
            holders.len() <= 1,
            "{group}: live holders {holders:?} at {now}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_lease_epoch_and_chain_invariants(
        steps in proptest::collection::vec((0i64..700, op()), 1..120)
    ) {
        let mut s = State::new();
        let mut cmds = vec![bootstrap_cmd(0)];
        apply(&mut s, &cmds[0]).unwrap();
        let mut results = Vec::new();
        let mut seen: BTreeMap<String, Vec<SeenLease>> = BTreeMap::new();
        let mut at = 0i64;
        for (dt, op) in &steps {
            at += dt;
            let cmd = resolve(&s, at, op);
            let before = s.clone();
            let r = apply(&mut s, &cmd);
            check_step(&mut seen, &before, &s, at, &r)?;
            results.push(r);
            cmds.push(cmd);
        }
        // Determinism: replaying the log on a fresh state gives the same outcomes and
        // byte-identical snapshots; a snapshot restores to the same state.
        let mut replay = State::new();
        let replayed: Vec<_> = cmds.iter().map(|c| apply(&mut replay, c)).collect();
        prop_assert_eq!(&replayed[1..], &results[..]);
        let snap = s.snapshot();
        prop_assert_eq!(replay.snapshot(), snap.clone());
        let restored = State::restore(&snap).unwrap();
        prop_assert_eq!(&restored, &s);
    }

    #[test]
    fn commands_survive_a_json_round_trip(steps in proptest::collection::vec((0i64..700, op()), 1..30)) {
        let s = booted();
        for (at, op) in &steps {
            let cmd = resolve(&s, *at, op);
            let text = serde_json::to_vec(&cmd).unwrap();
            prop_assert_eq!(serde_json::from_slice::<Command>(&text).unwrap(), cmd);
        }
    }
}
