//! The live (not replicated) figures the leader keeps from replicator heartbeats: each
//! group's primary report (RPO, seqs, throughput) and replica report, and when each node was
//! last heard. Pure: recording a heartbeat, deciding whether a replica caught up and whether
//! that makes its group protected again take values and touch nothing else.

use crate::state::GroupState;
use std::collections::HashMap;
use tandem_core::proto::HeartbeatRequest;

/// The last report of a group's replica replicator, as the leader heard it.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaReport {
    /// The reporter's epoch.
    pub epoch: u64,
    /// The reporting node.
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its state (`in-sync`, `resyncing`, ...).
    pub state: String,
    /// Its durable seq.
    pub durable_seq: u64,
    /// When it was heard (leader clock).
    pub at_ms: i64,
    /// What it says of itself (resync progress, last error).
    pub reason: String,
    /// Its streamed PostgreSQL resources' standbys as it last probed them.
    pub standbys: Vec<tandem_core::proto::ResourceHealth>,
}

/// Largest RPO (ms) at which a streaming replica counts as caught up for a group to be
/// protected again: under continuous writes the replica is always a few frames behind.
pub const IN_SYNC_MAX_RPO_MS: i64 = 1_000;

/// Whether a replica that reports itself in sync has caught up with the primary, from the
/// primary's last report (`captured`, `acked` by the replica, `rpo_ms`) and the replica's own
/// durable seq. Pure.
pub fn replica_caught_up(captured: u64, acked: u64, rpo_ms: i64, replica_durable: u64) -> bool {
    let everything = acked >= captured && replica_durable >= captured;
    let streaming = replica_durable >= acked && rpo_ms <= IN_SYNC_MAX_RPO_MS;
    everything || streaming
}

/// Whether a replica that reports itself in sync and has caught up ([`replica_caught_up`],
/// same epoch) makes a group in `state` protected again; `sites_up`: both of the group's
/// sites are up in the replicated state. Pure.
///
/// It ends an initial sync or a merkle resync (`resyncing`), a failover (`failed-over`), and
/// any `degraded` once both sites are up. A group degraded by a site's loss is also restored
/// when that site comes back ([`Command::SiteUp`](crate::state::Command)), but that event
/// comes once: a group that went `degraded` another way (a failover that ended without a
/// promotion, the site back before the run ended) would otherwise stay degraded for good,
/// under a live replica that has everything.
pub fn in_sync_protects(state: GroupState, sites_up: bool) -> bool {
    match state {
        GroupState::Resyncing | GroupState::FailedOver => true,
        GroupState::Degraded => sites_up,
        GroupState::Protected
        | GroupState::FailingOver
        | GroupState::SwitchingOver
        | GroupState::Drilling => false,
    }
}

/// Live (not replicated) figures the leader keeps from replicator heartbeats.
#[derive(Debug, Default, Clone)]
pub(crate) struct LiveGroup {
    pub(crate) rpo_ms: i64,
    pub(crate) last_captured_seq: u64,
    pub(crate) durable_seq: u64,
    pub(crate) bytes_pending: u64,
    pub(crate) bytes_raw: u64,
    pub(crate) bytes_shipped: u64,
    pub(crate) throughput_bps: f64,
    pub(crate) reported_ms: i64,
    pub(crate) reporter: String,
    pub(crate) reporter_role: String,
    pub(crate) reporter_epoch: u64,
    pub(crate) reporter_state: String,
    pub(crate) reason: String,
    /// (oldest recoverable ms, seq) from the replica's history, if it keeps one.
    pub(crate) history_oldest: Option<(i64, u64)>,
    /// Epoch and time at which a replicator last reported itself primary and ready.
    pub(crate) primary_ready: Option<(u64, String, i64)>,
    /// The replica's last report.
    pub replica: Option<ReplicaReport>,
    /// The primary's report of its database resources' own feeds (PostgreSQL archiving).
    pub(crate) feeds: Vec<tandem_core::proto::ResourceHealth>,
}

impl LiveGroup {
    /// RPO now as the primary last reported it (ms).
    pub fn rpo_ms(&self) -> i64 {
        self.rpo_ms
    }
    /// Highest seq the primary captured.
    pub fn last_captured_seq(&self) -> u64 {
        self.last_captured_seq
    }
    /// Highest seq durable on the replica, as the primary knows it.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }
    /// When the primary last reported (leader clock).
    pub fn reported_ms(&self) -> i64 {
        self.reported_ms
    }
    /// The primary reporter's epoch.
    pub fn reporter_epoch(&self) -> u64 {
        self.reporter_epoch
    }
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    /// node -> last heartbeat (unix ms, leader clock)
    pub(crate) node_seen: HashMap<String, i64>,
    pub(crate) groups: HashMap<String, LiveGroup>,
    /// The term of this node's leadership and when its background work first saw it
    /// (failure-detector grace); see [`Live::leader_since`].
    pub(crate) leader_since: Option<(u64, i64)>,
    pub(crate) last_rpo_sample_ms: i64,
    /// Per group: why its scheduled drill could not start, while it cannot (the drill
    /// scheduler's, `runs::schedule`).
    pub(crate) drill_refusals: HashMap<String, DrillRefusal>,
}

/// A scheduled drill the gates refused, as status shows it until it starts or is no longer due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DrillRefusal {
    /// Why, as the last try was refused.
    pub(crate) reason: String,
    /// When the first try of this due drill was refused (leader ms).
    pub(crate) since_ms: i64,
    /// When it is tried again.
    pub(crate) retry_at_ms: i64,
}

impl Live {
    /// When this node's leadership in `term` began, as first seen at `now` (the start of the
    /// failure detector's grace: every site gets a full window to be heard by a new leader).
    ///
    /// Keyed by term: a leader that lost its quorum and won a later election is a new leader,
    /// though its background work may never have seen it lose (a proposal that could not
    /// commit held it up meanwhile); the heartbeats it heard before are not evidence about
    /// the sites since, and its grace starts again.
    pub(crate) fn leader_since(&mut self, term: u64, now: i64) -> i64 {
        match self.leader_since {
            Some((t, since)) if t == term => since,
            _ => {
                self.leader_since = Some((term, now));
                now
            }
        }
    }

    /// Records a heartbeat received at `now`: the node is heard; a primary's report replaces
    /// its group's figures (RPO from the oldest unacknowledged capture), a replica's its
    /// group's replica report and recovery horizon.
    pub(crate) fn record(&mut self, r: &HeartbeatRequest, now: i64) {
        self.node_seen.insert(r.node.clone(), now);
        for p in &r.groups {
            let e = self.groups.entry(p.group.clone()).or_default();
            if p.role == "primary" {
                e.rpo_ms = if p.oldest_unacked_ms > 0 {
                    now.saturating_sub(p.oldest_unacked_ms).max(0)
                } else {
                    0
                };
                e.last_captured_seq = p.last_captured_seq;
                e.durable_seq = p.durable_seq;
                e.bytes_pending = p.bytes_pending;
                e.bytes_raw = p.bytes_raw;
                e.bytes_shipped = p.bytes_shipped;
                e.throughput_bps = p.throughput_bps;
                e.reported_ms = now;
                e.reporter = r.node.clone();
                e.reporter_role = p.role.clone();
                e.reporter_epoch = p.epoch;
                e.reporter_state = p.state.clone();
                e.reason = p.reason.clone();
                e.feeds = p.resources.clone();
                if p.state == "ready" {
                    e.primary_ready = Some((p.epoch, r.node.clone(), now));
                }
            } else if p.role == "replica" {
                e.replica = Some(ReplicaReport {
                    epoch: p.epoch,
                    node: r.node.clone(),
                    site: r.site.clone(),
                    state: p.state.clone(),
                    durable_seq: p.durable_seq,
                    at_ms: now,
                    reason: p.reason.clone(),
                    standbys: p.resources.clone(),
                });
                e.history_oldest = (p.history_oldest_ms > 0)
                    .then_some((p.history_oldest_ms, p.history_oldest_seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_replica_is_caught_up_without_an_idle_instant() {
        // Idle and equal.
        assert!(replica_caught_up(100, 100, 0, 100));
        // Steady writes: a few frames in flight, RPO 150 ms, the replica holds what it acked.
        assert!(replica_caught_up(120, 110, 150, 110));
        // Far behind: RPO of seconds.
        assert!(!replica_caught_up(5_000, 1_000, 4_000, 1_000));
        // The replica reports less than the primary saw acknowledged (a stale report).
        assert!(!replica_caught_up(120, 110, 150, 90));
        // Exactly at the bound, and just over.
        assert!(replica_caught_up(120, 110, IN_SYNC_MAX_RPO_MS, 110));
        assert!(!replica_caught_up(120, 110, IN_SYNC_MAX_RPO_MS + 1, 110));
    }

    #[test]
    fn a_leader_elected_again_in_a_later_term_gets_a_new_grace() {
        let mut live = Live::default();
        assert_eq!(live.leader_since(2, 1_000), 1_000);
        assert_eq!(
            live.leader_since(2, 1_200),
            1_000,
            "same term: same leadership"
        );
        // Quorum lost at 1 400 and won again at 3 700 in term 3, the background loop never
        // having seen the gap: the grace counts from 3 700, not from 1 000 (which made the
        // witness declare both restarted sites down the moment it led again).
        assert_eq!(live.leader_since(3, 3_700), 3_700);
        assert_eq!(live.leader_since(3, 3_900), 3_700);
        live.leader_since = None;
        assert_eq!(live.leader_since(3, 5_000), 5_000, "after a step down seen");
    }

    #[test]
    fn a_caught_up_replica_ends_a_degradation_once_both_sites_are_up() {
        use GroupState::*;
        let table = [
            (Resyncing, true, true),
            (Resyncing, false, true),
            (FailedOver, true, true),
            // A failover that ended without a promotion leaves the group degraded; with both
            // sites up no site's return will ever end it: the in-sync replica must.
            (Degraded, true, true),
            // A site still down in the replicated state: its return ends it.
            (Degraded, false, false),
            (Protected, true, false),
            (FailingOver, true, false),
            (SwitchingOver, true, false),
            (Drilling, true, false),
        ];
        for (i, (state, sites_up, want)) in table.into_iter().enumerate() {
            assert_eq!(
                in_sync_protects(state, sites_up),
                want,
                "#{i}: {state:?} with sites up {sites_up}"
            );
        }
    }
}
