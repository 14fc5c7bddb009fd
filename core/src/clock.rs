//! Time source: every decision that needs "now" takes a [`Clock`], so tests and chaos can skew it.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time according to this clock.
    fn now(&self) -> DateTime<Utc>;

    /// The current time in unix milliseconds.
    fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The system clock, optionally offset by a skew (milliseconds) the chaos harness can change.
#[derive(Debug, Default, Clone)]
pub struct SystemClock {
    skew_ms: Arc<AtomicI64>,
}

/// Environment variable that skews every [`SystemClock`] made by [`SystemClock::new`] in a
/// process, in milliseconds (may be negative). The chaos harness sets it for one node to give
/// it a wrong clock; only time taken from a `Clock` moves (timers and leases counted on the
/// monotonic clock do not). `tandem node` refuses a value that is not an integer.
pub const SKEW_ENV: &str = "TANDEM_CHAOS_CLOCK_SKEW_MS";

/// The skew [`SKEW_ENV`] asks for: `Ok(0)` when unset.
///
/// # Errors
/// The text of the variable when it is set but not an integer.
pub fn skew_from_env() -> Result<i64, String> {
    parse_skew(std::env::var(SKEW_ENV).ok())
}

/// Parses a value of [`SKEW_ENV`] (`None`: unset, no skew). Pure.
///
/// # Errors
/// The text when it is not an integer.
pub fn parse_skew(value: Option<String>) -> Result<i64, String> {
    match value {
        None => Ok(0),
        Some(v) => v.trim().parse::<i64>().map_err(|_| v),
    }
}

impl SystemClock {
    /// A system clock, skewed by [`SKEW_ENV`] when that is set (an invalid value counts as
    /// unset here; `tandem node` refuses it before any clock is made).
    pub fn new() -> Self {
        let c = Self::default();
        c.set_skew_ms(skew_from_env().unwrap_or(0));
        c
    }

    /// Sets the skew added to the system time, in milliseconds (may be negative).
    pub fn set_skew_ms(&self, skew: i64) {
        self.skew_ms.store(skew, Ordering::SeqCst);
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.skew_ms.load(Ordering::SeqCst))
    }
}

/// A clock that moves only when told to: for deterministic tests and simulation.
#[derive(Debug, Clone)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock starting at `start_ms` unix milliseconds.
    pub fn new(start_ms: i64) -> Self {
        ManualClock {
            ms: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    /// Moves the clock forward (or back, with a negative value) by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.ms.load(Ordering::SeqCst)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_values_parse_and_move_the_clock() {
        assert_eq!(parse_skew(None), Ok(0));
        assert_eq!(parse_skew(Some(" -60000".into())), Ok(-60_000));
        assert_eq!(parse_skew(Some("soon".into())), Err("soon".to_owned()));
        let skewed = SystemClock::default();
        skewed.set_skew_ms(-60_000);
        let plain = SystemClock::default();
        let d = plain.now_ms() - skewed.now_ms();
        assert!((59_000..=61_000).contains(&d), "{d}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(500);
        assert_eq!(c.now_ms(), 1_500);
    }

    #[test]
    fn skewed_system_clock_is_ahead() {
        let c = SystemClock::new();
        c.set_skew_ms(60_000);
        assert!(c.now_ms() - Utc::now().timestamp_millis() >= 59_000);
    }
}
