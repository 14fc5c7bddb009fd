//! Pure checkers: each takes a history (or logs) and final state and returns a [`Verdict`].
//!
//! No checker does I/O; the caller reads the final volume, logs and timings and hands them in.
//! Each checker has tests that feed it a known violation and see it caught.
//!
//! | room | checks |
//! | --- | --- |
//! | `verdict` | [`Verdict`], what every checker returns; [`ReplicationMode`] |
//! | `writes` | no acknowledged write lost (loss bounded by the RPO in async mode); a failback's tail quarantined |
//! | `epochs` | no two writable primaries per epoch, no ack after a fence, no double promotion, epochs monotonic per observer |
//! | `replica` | the replica applied a prefix in order; corruption caught; torn tail repaired; identical after resync |
//! | `recovery` | the RPO rose and recovered; the RTO within target |
//! | `hosts` | one host of several lost: the RTO to the first write at the new primary; the other hosts' groups kept their role and never stopped writing |
//! | `replica_host` | one host at the replica site lost: its groups degraded while it is down and protected again after it returns |

mod epochs;
mod hosts;
mod recovery;
mod replica;
mod replica_host;
mod verdict;
mod writes;

pub use self::epochs::{
    epoch_observations, epochs_monotonic, no_ack_after_fence, no_double_promotion,
    promotions_from_history, split_brain, EpochObservation, Promotion,
};
pub use self::hosts::{
    ack_gaps, first_write_after, role_never_changed, rto_to_first_write, writes_never_stopped,
    AckGaps, RoleSample,
};
pub use self::recovery::{rpo_recovers, rto_within_target, RpoSample};
pub use self::replica::{
    corruption_caught, identical_after_resync, replica_prefix, torn_tail_repaired, ReplicaEvent,
};
pub use self::replica_host::{degraded_then_protected, ResyncBounds, ResyncTimes, StateSample};
pub use self::verdict::{ReplicationMode, Verdict};
pub use self::writes::{lost_acknowledged_writes, tail_quarantined};
