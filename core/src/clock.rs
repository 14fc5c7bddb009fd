//! Time source: every decision that needs "now" takes a [`Clock`], so tests and chaos can skew it.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

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

/// Environment variable naming a file that moves every [`SystemClock`] of a process while it
/// runs (the chaos harness's clock faults: bump, strobe, drift). The file holds two integers,
/// `SKEW_MS DRIFT_MS_PER_S`: from the moment the file changes, the clock is `SKEW_MS` off the
/// system time and moves a further `DRIFT_MS_PER_S` every second. Read every 20 ms; a missing
/// or unreadable file leaves the offset as it is. Added to [`SKEW_ENV`]'s fixed skew.
pub const CLOCK_FILE_ENV: &str = "TANDEM_CHAOS_CLOCK_FILE";

/// The offset of every clock of this process set through [`CLOCK_FILE_ENV`].
static FILE_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static WATCH: Once = Once::new();

/// Parses the content of a [`CLOCK_FILE_ENV`] file: `(skew_ms, drift_ms_per_s)`. Pure.
///
/// # Errors
/// What is wrong with the text.
pub fn parse_clock_program(text: &str) -> Result<(i64, i64), String> {
    let mut it = text.split_whitespace();
    let skew = it
        .next()
        .ok_or("empty: expected `SKEW_MS DRIFT_MS_PER_S`")?
        .parse::<i64>()
        .map_err(|e| format!("SKEW_MS: {e}"))?;
    let drift = match it.next() {
        Some(d) => d
            .parse::<i64>()
            .map_err(|e| format!("DRIFT_MS_PER_S: {e}"))?,
        None => 0,
    };
    if it.next().is_some() {
        return Err("more than two numbers".into());
    }
    Ok((skew, drift))
}

/// The offset of a clock program `elapsed_ms` after it was set. Pure.
pub fn program_offset_ms(skew_ms: i64, drift_ms_per_s: i64, elapsed_ms: u64) -> i64 {
    let drift = i128::from(drift_ms_per_s) * i128::from(elapsed_ms) / 1000;
    (i128::from(skew_ms) + drift).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Starts (once per process) the thread that follows the [`CLOCK_FILE_ENV`] file.
fn watch_clock_file() {
    let Some(path) = std::env::var_os(CLOCK_FILE_ENV) else {
        return;
    };
    WATCH.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("chaos-clock".into())
            .spawn(move || {
                let mut last: Option<String> = None;
                let mut program = (0i64, 0i64, Instant::now());
                loop {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        if last.as_deref() != Some(text.as_str()) {
                            match parse_clock_program(&text) {
                                Ok((skew, drift)) => program = (skew, drift, Instant::now()),
                                Err(e) => {
                                    tracing::warn!(file = %std::path::Path::new(&path).display(), "clock program: {e}")
                                }
                            }
                            last = Some(text);
                        }
                    }
                    let (skew, drift, since) = program;
                    let elapsed = since.elapsed().as_millis() as u64;
                    FILE_OFFSET_MS.store(program_offset_ms(skew, drift, elapsed), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot follow the chaos clock file: {e}");
        }
    });
}

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
        watch_clock_file();
        c
    }

    /// Sets the skew added to the system time, in milliseconds (may be negative).
    pub fn set_skew_ms(&self, skew: i64) {
        self.skew_ms.store(skew, Ordering::SeqCst);
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        let off = self
            .skew_ms
            .load(Ordering::SeqCst)
            .saturating_add(FILE_OFFSET_MS.load(Ordering::SeqCst));
        Utc::now() + chrono::Duration::milliseconds(off)
    }
}

/// Most a [`SlewedClock`] moves toward its base clock per millisecond that passes, in
/// thousandths (100: 10 %; a 20 s step is absorbed in 200 s).
pub const MAX_SLEW_PER_MILLE: i64 = 100;

/// One reading of a [`SlewedClock`], pure: the last reading `last_ms`, `dt_ms` monotonic
/// milliseconds later, with the base clock saying `wall_ms`. Moves by `dt_ms` plus at most
/// [`MAX_SLEW_PER_MILLE`] of it toward `wall_ms`, so it never goes back and never jumps.
pub fn slew_ms(last_ms: i64, dt_ms: i64, wall_ms: i64) -> i64 {
    let dt = dt_ms.max(0);
    let natural = last_ms.saturating_add(dt);
    let room = dt.saturating_mul(MAX_SLEW_PER_MILLE) / 1000;
    natural.saturating_add(wall_ms.saturating_sub(natural).clamp(-room, room))
}

/// A wall clock that follows its base clock (the system's) only by slewing: it advances with
/// the monotonic clock and closes any gap to the base by at most 10 % of the time that passes,
/// the way NTP slews. Why: the coordinators time leases and failure detection with command
/// times from the leader's clock; a step of the system clock (an NTP step, an operator's
/// `date -s`, a VM resumed) must not expire every lease at once or hide a lost site. It stays
/// right over time: a wrong start is corrected at 10 %.
#[derive(Debug, Clone)]
pub struct SlewedClock {
    base: SystemClock,
    last: Arc<std::sync::Mutex<Option<(Instant, i64)>>>,
}

impl SlewedClock {
    /// A slewed clock over [`SystemClock::new`] (its chaos skews included).
    pub fn new() -> Self {
        SlewedClock {
            base: SystemClock::new(),
            last: Arc::default(),
        }
    }
}

impl Default for SlewedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SlewedClock {
    fn now(&self) -> DateTime<Utc> {
        let wall = self.base.now_ms();
        let at = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let ms = match *last {
            None => wall,
            Some((t, ms)) => slew_ms(ms, at.duration_since(t).as_millis() as i64, wall),
        };
        *last = Some((at, ms));
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
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
    fn clock_programs_parse_and_drift() {
        assert_eq!(parse_clock_program("5000 0\n"), Ok((5000, 0)));
        assert_eq!(parse_clock_program("-300"), Ok((-300, 0)));
        assert_eq!(parse_clock_program(" 0 250 "), Ok((0, 250)));
        assert!(parse_clock_program("").is_err());
        assert!(parse_clock_program("1 2 3").is_err());
        assert!(parse_clock_program("soon").unwrap_err().contains("SKEW_MS"));
        assert_eq!(program_offset_ms(1000, 0, 60_000), 1000);
        assert_eq!(program_offset_ms(0, 250, 4_000), 1000);
        assert_eq!(program_offset_ms(-500, -100, 10_000), -1500);
        assert_eq!(program_offset_ms(i64::MAX, 1000, 10_000), i64::MAX);
    }

    #[test]
    fn a_slewed_clock_never_jumps_and_never_goes_back() {
        // In step: plain advance.
        assert_eq!(slew_ms(1_000, 100, 1_100), 1_100);
        // The base jumps 20 s ahead: 10 % more per tick, not the jump.
        assert_eq!(slew_ms(1_000, 100, 21_100), 1_110);
        // The base jumps back: 10 % less, still forward.
        assert_eq!(slew_ms(1_000, 100, -50_000), 1_090);
        // A small gap closes exactly.
        assert_eq!(slew_ms(1_000, 100, 1_105), 1_105);
        // Repeated readings converge: 20 s absorbed in about 200 s.
        let (mut ms, mut wall) = (0i64, 20_000i64);
        for _ in 0..2_000 {
            ms = slew_ms(ms, 100, wall + 100);
            wall += 100;
        }
        assert_eq!(ms, wall);
        let c = SlewedClock::new();
        let (a, b) = (c.now_ms(), c.now_ms());
        assert!(b >= a);
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
