//! The simulated clients: two replicators that acquire, renew and release the group's lease and
//! send heartbeats, an operator that bootstraps and fails over both ways (planned and
//! unplanned), and a failure detector that marks stale sites down and commits RPO samples.

use super::SimStats;
use tandem_coordinator::state::{
    ClusterSettings, Command, Event, GroupProgress, GroupSpec, GroupState, LeaseRenewal,
    LeaseStatus, Mode, Rejection, Role, SiteSpec, SiteStatus, State,
};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::mixed::XorShift;

/// The group the workload protects.
pub const GROUP: &str = "g1";
/// How long a client waits for an answer before it gives up on a request.
const REQUEST_TIMEOUT_MS: u64 = 1500;
/// How long an operator waits for a failover or switchover before it aborts it.
const FAILOVER_DEADLINE_MS: u64 = 8000;

/// Who proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Client {
    Operator,
    Replicator(usize),
    Detector,
}

/// What a replicator believes about its own lease: it writes while `now < expires_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseBelief {
    pub epoch: Epoch,
    pub expires_ms: i64,
}

/// A replicator process at a data site.
pub(crate) struct Replicator {
    pub node: &'static str,
    pub site: &'static str,
    pub belief: Option<LeaseBelief>,
    captured: u64,
    durable: u64,
    next_ms: u64,
    in_flight: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Bootstrap,
    InitialSync,
    Idle {
        until: u64,
    },
    /// Unplanned: set failing-over, fence, promote (retried while the lease may be live).
    Failover {
        stage: u8,
        deadline: u64,
    },
    /// Planned: set switching-over, wait for the release, promote with zero loss.
    Switchover {
        stage: u8,
        deadline: u64,
    },
    /// Back to protected (after a failover, or after an aborted one).
    Restore,
}

/// The operator (and runbook driver).
pub(crate) struct Operator {
    phase: Phase,
    next_ms: u64,
    in_flight: Option<(u64, u64)>,
}

/// All the clients.
pub(crate) struct Workload {
    pub replicators: Vec<Replicator>,
    operator: Operator,
    detector_next: u64,
    detector_in_flight: Option<(u64, u64)>,
    settings: ClusterSettings,
}

fn live_belief(b: Option<LeaseBelief>, now: i64) -> Option<LeaseBelief> {
    b.filter(|b| now < b.expires_ms)
}

impl Workload {
    /// The workload with the given lease settings.
    pub fn new(settings: ClusterSettings) -> Workload {
        let rep = |node, site| Replicator {
            node,
            site,
            belief: None,
            captured: 0,
            durable: 0,
            next_ms: 0,
            in_flight: None,
        };
        Workload {
            replicators: vec![rep("hanoi-1", "hanoi"), rep("hcm-1", "hcm")],
            operator: Operator {
                phase: Phase::Bootstrap,
                next_ms: 0,
                in_flight: None,
            },
            detector_next: 1000,
            detector_in_flight: None,
            settings,
        }
    }

    fn in_flight_mut(&mut self, c: Client) -> &mut Option<(u64, u64)> {
        match c {
            Client::Operator => &mut self.operator.in_flight,
            Client::Replicator(i) => &mut self.replicators[i].in_flight,
            Client::Detector => &mut self.detector_in_flight,
        }
    }

    /// Clients that are due to act at `now` (nothing in flight, their timer passed). Requests
    /// older than the timeout are given up first.
    pub fn due(&mut self, now: u64) -> Vec<Client> {
        let mut all = vec![Client::Operator, Client::Detector];
        all.extend((0..self.replicators.len()).map(Client::Replicator));
        let mut out = Vec::new();
        for c in all {
            let slot = self.in_flight_mut(c);
            if slot.is_some_and(|(_, sent)| now >= sent + REQUEST_TIMEOUT_MS) {
                *slot = None;
            }
            if slot.is_some() {
                continue;
            }
            let next = match c {
                Client::Operator => self.operator.next_ms,
                Client::Replicator(i) => self.replicators[i].next_ms,
                Client::Detector => self.detector_next,
            };
            if now >= next {
                out.push(c);
            }
        }
        out
    }

    /// Delays a client that found no leader.
    pub fn no_leader(&mut self, c: Client, now: u64) {
        self.set_next(c, now + 50);
    }

    fn set_next(&mut self, c: Client, at: u64) {
        match c {
            Client::Operator => self.operator.next_ms = at,
            Client::Replicator(i) => self.replicators[i].next_ms = at,
            Client::Detector => self.detector_next = at,
        }
    }

    /// Records that `c` proposed `request` at `now`.
    pub fn sent(&mut self, c: Client, request: u64, now: u64) {
        *self.in_flight_mut(c) = Some((request, now));
    }

    /// The command `c` sends now, reading `view` (the applied state of the node it talks to),
    /// or `None` when it has nothing to send this time.
    pub fn command(
        &mut self,
        c: Client,
        view: &State,
        now: u64,
        rng: &mut XorShift,
    ) -> Option<Command> {
        let at_ms = i64::try_from(now).unwrap_or(i64::MAX);
        match c {
            Client::Operator => self.operator_command(view, now, at_ms, rng),
            Client::Replicator(i) => self.replicator_command(i, view, now, at_ms, rng),
            Client::Detector => {
                self.detector_next = now + 500 + rng.below(1000);
                view.settings()?;
                let stale = view.sites().values().find(|s| {
                    !s.witness
                        && s.status == SiteStatus::Up
                        && s.nodes.values().max().is_some_and(|t| {
                            at_ms.saturating_sub(*t)
                                > i64::try_from(self.settings.detect_after_ms).unwrap_or(i64::MAX)
                        })
                });
                if let Some(s) = stale {
                    return Some(Command::SiteDown {
                        at_ms,
                        site: s.name.clone(),
                    });
                }
                let g = view.group(GROUP)?;
                Some(Command::RpoSample {
                    at_ms,
                    group: GROUP.into(),
                    rpo_ms: g.progress.rpo_ms,
                })
            }
        }
    }

    fn replicator_command(
        &mut self,
        i: usize,
        view: &State,
        now: u64,
        at_ms: i64,
        rng: &mut XorShift,
    ) -> Option<Command> {
        let ttl = i64::try_from(self.settings.lease_ttl_ms).unwrap_or(i64::MAX);
        let r = &mut self.replicators[i];
        r.next_ms = now + 80 + rng.below(220);
        let g = view.group(GROUP)?;
        let primary = g.primary_site == r.site;
        let belief = live_belief(r.belief, at_ms);
        let mut renew = Vec::new();
        if primary {
            let lease_mine = g.lease.as_ref().filter(|l| {
                l.holder == r.node && !matches!(l.status, LeaseStatus::Released { .. })
            });
            if g.state == GroupState::SwitchingOver {
                if belief.is_some() || lease_mine.is_some() {
                    // Stop writing first, then give the lease up.
                    let epoch = belief
                        .map(|b| b.epoch)
                        .or(lease_mine.map(|l| l.epoch))
                        .unwrap_or(g.epoch);
                    r.belief = None;
                    return Some(Command::ReleaseLease {
                        at_ms,
                        group: GROUP.into(),
                        node: r.node.into(),
                        epoch,
                    });
                }
            } else if g.state != GroupState::FailingOver {
                match belief {
                    None => {
                        return Some(Command::AcquireLease {
                            at_ms,
                            group: GROUP.into(),
                            node: r.node.into(),
                            site: r.site.into(),
                            epoch: g.epoch,
                        })
                    }
                    Some(b) if b.epoch != g.epoch => {
                        return Some(Command::AcquireLease {
                            at_ms,
                            group: GROUP.into(),
                            node: r.node.into(),
                            site: r.site.into(),
                            epoch: g.epoch,
                        })
                    }
                    // Renewed on its own (RenewLease) or with the heartbeat, as the
                    // coordinators do (Heartbeat.renew), half the time each.
                    Some(b) if b.expires_ms - at_ms < ttl / 2 => {
                        if rng.below(2) == 0 {
                            return Some(Command::RenewLease {
                                at_ms,
                                group: GROUP.into(),
                                node: r.node.into(),
                                site: r.site.into(),
                                epoch: b.epoch,
                            });
                        }
                        renew.push(LeaseRenewal {
                            group: GROUP.into(),
                            epoch: b.epoch,
                        });
                    }
                    Some(_) => {}
                }
            }
            r.captured = r.captured.max(g.progress.last_captured_seq.0);
            if belief.is_some() {
                r.captured += 1 + rng.below(4);
            }
            let pending = r.captured.saturating_sub(g.progress.durable_seq.0);
            Some(Command::Heartbeat {
                at_ms,
                node: r.node.into(),
                site: r.site.into(),
                progress: vec![GroupProgress {
                    group: GROUP.into(),
                    role: Role::Primary,
                    epoch: g.epoch,
                    last_captured_seq: Seq(r.captured),
                    durable_seq: g.progress.durable_seq,
                    rpo_ms: if pending == 0 {
                        0
                    } else {
                        50 + rng.below(3000)
                    },
                    bytes_pending: pending * 4096,
                }],
                renew,
            })
        } else {
            let target = g.progress.last_captured_seq.0;
            r.durable = r.durable.max(g.progress.durable_seq.0);
            r.durable = if g.state == GroupState::SwitchingOver || rng.below(3) == 0 {
                target
            } else {
                (r.durable + 1 + rng.below(5)).min(target)
            };
            Some(Command::Heartbeat {
                at_ms,
                node: r.node.into(),
                site: r.site.into(),
                progress: vec![GroupProgress {
                    group: GROUP.into(),
                    role: Role::Replica,
                    epoch: g.epoch,
                    last_captured_seq: Seq(0),
                    durable_seq: Seq(r.durable),
                    rpo_ms: 0,
                    bytes_pending: 0,
                }],
                renew: Vec::new(),
            })
        }
    }

    fn operator_command(
        &mut self,
        view: &State,
        now: u64,
        at_ms: i64,
        rng: &mut XorShift,
    ) -> Option<Command> {
        let op = &mut self.operator;
        op.next_ms = now + 200;
        let actor = "operator".to_string();
        let group = GROUP.to_string();
        if op.phase == Phase::Bootstrap {
            return Some(Command::Bootstrap {
                at_ms,
                actor,
                settings: self.settings,
                sites: vec![
                    SiteSpec {
                        name: "hanoi".into(),
                        witness: false,
                        jurisdiction: Some("VN".into()),
                    },
                    SiteSpec {
                        name: "hcm".into(),
                        witness: false,
                        jurisdiction: Some("VN".into()),
                    },
                    SiteSpec {
                        name: "danang".into(),
                        witness: true,
                        jurisdiction: Some("VN".into()),
                    },
                ],
                groups: vec![GroupSpec {
                    name: group,
                    primary: "hanoi".into(),
                    replica: "hcm".into(),
                    mode: Mode::Sync,
                    rpo_target_ms: 1000,
                    allowed_jurisdictions: vec!["VN".into()],
                }],
            });
        }
        let g = view.group(GROUP)?;
        let set_state = |state: GroupState, reason: &str| Command::SetGroupState {
            at_ms,
            group: GROUP.into(),
            state,
            reason: reason.into(),
            actor: "operator".into(),
            host: None,
        };
        match op.phase {
            Phase::Bootstrap => None,
            Phase::InitialSync | Phase::Restore => {
                Some(set_state(GroupState::Protected, "in sync"))
            }
            Phase::Idle { until } => {
                if now < until {
                    op.next_ms = until;
                    return None;
                }
                let deadline = now + FAILOVER_DEADLINE_MS;
                op.phase = if rng.below(2) == 0 {
                    Phase::Failover { stage: 0, deadline }
                } else {
                    Phase::Switchover { stage: 0, deadline }
                };
                op.next_ms = now;
                None
            }
            Phase::Failover { deadline, .. } | Phase::Switchover { deadline, .. }
                if now >= deadline =>
            {
                op.phase = Phase::Restore;
                op.next_ms = now;
                None
            }
            Phase::Failover { stage, .. } => match stage {
                0 => Some(set_state(GroupState::FailingOver, "site lost")),
                1 => Some(Command::Fence {
                    at_ms,
                    group,
                    actor,
                    reason: "unplanned failover".into(),
                }),
                _ => Some(Command::Promote {
                    at_ms,
                    group,
                    to_site: g.replica_site.clone(),
                    actor,
                    reason: "unplanned failover".into(),
                    planned: false,
                }),
            },
            Phase::Switchover { stage, deadline } => match stage {
                0 => Some(set_state(GroupState::SwitchingOver, "planned switchover")),
                1 => {
                    let released = g.lease.as_ref().is_none_or(|l| {
                        matches!(l.status, LeaseStatus::Released { .. })
                            || view.promotion_allowed_at(GROUP).is_none_or(|t| at_ms >= t)
                    });
                    if released {
                        op.phase = Phase::Switchover { stage: 2, deadline };
                        op.next_ms = now;
                    }
                    None
                }
                _ => Some(Command::Promote {
                    at_ms,
                    group,
                    to_site: g.replica_site.clone(),
                    actor,
                    reason: "planned switchover".into(),
                    planned: true,
                }),
            },
        }
    }

    /// Handles the answer to `request` sent by `c`: `Some(outcome)` when applied, `None` when
    /// its entry was overwritten. Answers to requests the client gave up on are ignored.
    pub fn answered(
        &mut self,
        c: Client,
        request: u64,
        outcome: Option<&Result<Vec<Event>, Rejection>>,
        now: u64,
        rng: &mut XorShift,
        stats: &mut SimStats,
    ) {
        let slot = self.in_flight_mut(c);
        if slot.map(|(r, _)| r) != Some(request) {
            return;
        }
        *slot = None;
        let Some(outcome) = outcome else { return };
        if outcome.is_ok() {
            stats.acked += 1;
        } else {
            stats.refused += 1;
        }
        match c {
            Client::Replicator(i) => {
                let r = &mut self.replicators[i];
                if let Ok(events) = outcome {
                    for e in events {
                        match e {
                            Event::LeaseGranted {
                                node,
                                epoch,
                                expires_ms,
                                ..
                            }
                            | Event::LeaseRenewed {
                                node,
                                epoch,
                                expires_ms,
                                ..
                            } if node == r.node => {
                                r.belief = Some(LeaseBelief {
                                    epoch: *epoch,
                                    expires_ms: *expires_ms,
                                });
                            }
                            _ => {}
                        }
                    }
                }
            }
            Client::Detector => {}
            Client::Operator => self.operator_answered(outcome, now, rng, stats),
        }
    }

    fn operator_answered(
        &mut self,
        outcome: &Result<Vec<Event>, Rejection>,
        now: u64,
        rng: &mut XorShift,
        stats: &mut SimStats,
    ) {
        let op = &mut self.operator;
        let idle = Phase::Idle {
            until: now + 1500 + rng.below(4500),
        };
        match (op.phase, outcome) {
            (Phase::Bootstrap, Ok(_)) => op.phase = Phase::InitialSync,
            (Phase::InitialSync | Phase::Restore, Ok(_)) => op.phase = idle,
            (Phase::Failover { stage, deadline }, Ok(_)) => {
                op.phase = if stage >= 2 {
                    stats.failovers += 1;
                    Phase::Restore
                } else {
                    Phase::Failover {
                        stage: stage + 1,
                        deadline,
                    }
                };
                op.next_ms = now;
            }
            (Phase::Switchover { stage, deadline }, Ok(_)) => {
                op.phase = if stage >= 2 {
                    stats.switchovers += 1;
                    idle
                } else {
                    Phase::Switchover {
                        stage: stage + 1,
                        deadline,
                    }
                };
                op.next_ms = now;
            }
            (Phase::Failover { .. } | Phase::Switchover { .. }, Err(r)) if !r.is_retryable() => {
                op.phase = Phase::Restore;
            }
            _ => {}
        }
    }
}
