//! The level a group's frames are compressed at under `compression = "auto"`: it follows the
//! backlog the link leaves, as zstd's own `--adapt` follows its output. Decisions here (pure);
//! the loop that feeds them in `tasks`.
//!
//! Compressing costs the primary's CPU (zstd-1 is the largest share of its work per byte) and
//! saves the link's bytes. While the link carries frames as fast as they are journaled, the
//! bytes it saves buy nothing and the CPU is better spent on intake: the level steps down, to
//! raw. Once frames wait for the link (the backlog not yet sent to the replica passes
//! [`HIGH_BACKLOG`] and is not shrinking: a slow or capped link, a replica away), every byte
//! saved shortens the wait, and the journal holds more: the level steps up, to at most
//! [`LADDER`]'s top. The backlog is measured in encoded bytes, what the link must carry.

use std::time::Duration;

/// The levels `auto` moves between, one step per decision (0: frames stored raw). Higher
/// levels are left out: level 6 runs at about a quarter of level 1's speed, which would cap
/// intake while a replica is away.
pub const LADDER: [i32; 3] = [0, 1, 3];

/// How often the backlog is looked at.
pub const TICK: Duration = Duration::from_millis(200);

/// A backlog (encoded bytes journaled, not yet sent) at least this large and not shrinking
/// steps the level up: half the default ship window is waiting behind a full window.
pub const HIGH_BACKLOG: u64 = 16 << 20;

/// Backlogs are counted up to this (a larger one is as high as this, and not shrinking).
pub const BACKLOG_CAP: u64 = 2 * HIGH_BACKLOG;

/// A backlog at most this large for [`CALM_TICKS`] looks in a row steps the level down.
pub const LOW_BACKLOG: u64 = 2 << 20;

/// Looks in a row with a small backlog before the level steps down (one second).
pub const CALM_TICKS: u32 = 5;

/// The state of one group's automatic choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapt {
    step: usize,
    calm: u32,
    last_backlog: u64,
}

impl Default for Adapt {
    /// Starts at level 1 (what a fixed setting defaults to).
    fn default() -> Adapt {
        Adapt {
            step: 1,
            calm: 0,
            last_backlog: 0,
        }
    }
}

impl Adapt {
    /// The level frames are encoded at now.
    pub fn level(&self) -> i32 {
        LADDER[self.step]
    }

    /// Takes one look at the backlog (encoded bytes journaled and not yet sent to the
    /// replica) and returns the level for the next frames.
    pub fn observe(&mut self, backlog: u64) -> i32 {
        if backlog >= HIGH_BACKLOG && backlog >= self.last_backlog {
            self.step = (self.step + 1).min(LADDER.len() - 1);
            self.calm = 0;
        } else if backlog <= LOW_BACKLOG {
            self.calm += 1;
            if self.calm >= CALM_TICKS {
                self.step = self.step.saturating_sub(1);
                self.calm = 0;
            }
        } else {
            self.calm = 0;
        }
        self.last_backlog = backlog;
        self.level()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_link_that_keeps_up_brings_the_level_down_to_raw_after_a_calm_second_per_step() {
        let mut a = Adapt::default();
        assert_eq!(a.level(), 1);
        for _ in 0..CALM_TICKS - 1 {
            assert_eq!(a.observe(0), 1);
        }
        assert_eq!(a.observe(LOW_BACKLOG), 0);
        for _ in 0..3 * CALM_TICKS {
            assert_eq!(a.observe(100), 0);
        }
    }

    #[test]
    fn a_growing_backlog_steps_up_once_per_look_to_the_top_and_a_draining_one_holds() {
        let mut a = Adapt::default();
        a.observe(0);
        assert_eq!(a.observe(HIGH_BACKLOG), 3);
        assert_eq!(
            a.observe(HIGH_BACKLOG * 2),
            3,
            "never past the ladder's top"
        );
        // Draining (smaller than last time) but still high: hold, do not climb.
        assert_eq!(a.observe(HIGH_BACKLOG + 1), 3);
        // In between: hold, and the calm count starts again.
        let mut b = Adapt::default();
        for _ in 0..CALM_TICKS - 1 {
            b.observe(0);
        }
        b.observe(LOW_BACKLOG + 1);
        for _ in 0..CALM_TICKS - 1 {
            assert_eq!(b.observe(0), 1, "a middling look reset the calm count");
        }
        assert_eq!(b.observe(0), 0);
    }

    proptest! {
        #[test]
        fn the_level_is_always_on_the_ladder_and_moves_one_step_at_most(
            looks in proptest::collection::vec(0u64..(64 << 20), 1..200)) {
            let mut a = Adapt::default();
            let mut step = 1usize;
            for b in looks {
                let l = a.observe(b);
                let i = LADDER.iter().position(|x| *x == l);
                prop_assert!(i.is_some(), "level {} not on the ladder", l);
                let i = i.unwrap_or(0);
                prop_assert!(i.abs_diff(step) <= 1, "jumped from step {} to {}", step, i);
                // Up only on a high backlog, down only on a low one.
                if i > step { prop_assert!(b >= HIGH_BACKLOG); }
                if i < step { prop_assert!(b <= LOW_BACKLOG); }
                step = i;
            }
        }
    }
}
