//! Humane values of the config file: durations (`"250ms"`, `"4s"`), sizes (`"256MiB"`),
//! bandwidths (`"100MB/s"`), times of day (`"08:30"`) and bandwidth windows; their parsing,
//! display (which round-trips) and serde through one generic visitor. Pure; no I/O.

use serde::de::{Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

/// A value written by a human that did not parse: names what was expected and the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} \"{value}\": {reason}")]
pub struct UnitError {
    /// What was expected: "duration", "size" or "bandwidth".
    pub what: &'static str,
    /// The text as written.
    pub value: String,
    /// Why it was refused, with a hint of the right form.
    pub reason: String,
}

impl UnitError {
    fn new(what: &'static str, value: &str, reason: impl Into<String>) -> UnitError {
        UnitError {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Splits `"256MiB"` into `(256, "MiB")`; the unit part is trimmed.
fn split_number(what: &'static str, text: &str, example: &str) -> Result<(u64, String), UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::new(
            what,
            text,
            format!("empty; write a whole number and a unit, e.g. \"{example}\""),
        ));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(UnitError::new(
            what,
            text,
            format!("must start with a whole number, e.g. \"{example}\""),
        ));
    }
    let number: u64 = t[..digits_end]
        .parse()
        .map_err(|_| UnitError::new(what, text, "number is too large"))?;
    let unit = t[digits_end..].trim();
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(UnitError::new(
            what,
            text,
            "fractions are not supported; use a smaller unit (\"1500ms\", not \"1.5s\")",
        ));
    }
    Ok((number, unit.to_string()))
}

/// A duration written the human way: `"250ms"`, `"4s"`, `"5m"`, `"24h"`, `"7d"` (whole
/// milliseconds; `"0"` alone is allowed).
///
/// Displays in the largest unit that represents it exactly, so display and parse round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl HumanDuration {
    /// The zero duration.
    pub const ZERO: HumanDuration = HumanDuration(Duration::ZERO);

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }

    /// The value as a `std::time::Duration`.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (saturating at `u64::MAX`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// True when the duration is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<HumanDuration, UnitError> {
        let (n, unit) = split_number("duration", s, "4s")?;
        if unit.is_empty() {
            if n == 0 {
                return Ok(HumanDuration::ZERO);
            }
            return Err(UnitError::new(
                "duration",
                s,
                format!("missing unit; use ms, s, m, h or d, e.g. \"{n}s\""),
            ));
        }
        let per = DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| {
                UnitError::new(
                    "duration",
                    s,
                    format!("unknown unit \"{unit}\"; use ms, s, m, h or d"),
                )
            })?;
        let ms = n
            .checked_mul(per)
            .ok_or_else(|| UnitError::new("duration", s, "too large"))?;
        Ok(HumanDuration::from_millis(ms))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, per) in DURATION_UNITS {
            if ms.is_multiple_of(per) {
                return write!(f, "{}{name}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A size in bytes written the human way: `"64KiB"`, `"256MiB"`, `"1GiB"` (binary) or
/// `"100MB"` (decimal); a bare number (or TOML integer) is bytes.
///
/// Displays in the largest unit that represents it exactly, so display and parse round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 10] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
    ("", 1),
];

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    fn parse_as(what: &'static str, s: &str) -> Result<ByteSize, UnitError> {
        let (n, unit) = split_number(what, s, "256MiB")?;
        let per = SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| {
                let hint = match unit.to_ascii_lowercase().as_str() {
                    "k" | "m" | "g" | "t" | "kb" | "mb" | "gb" | "tb" => {
                        format!(
                            "unit \"{unit}\" is ambiguous or misspelt; write KiB, MiB, GiB, TiB \
                             (1024-based) or KB, MB, GB, TB (1000-based)"
                        )
                    }
                    _ => format!(
                        "unknown unit \"{unit}\"; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                    ),
                };
                UnitError::new(what, s, hint)
            })?;
        let bytes = n
            .checked_mul(per)
            .ok_or_else(|| UnitError::new(what, s, "too large"))?;
        Ok(ByteSize(bytes))
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<ByteSize, UnitError> {
        ByteSize::parse_as("size", s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0B");
        }
        for (name, per) in SIZE_UNITS {
            if self.0.is_multiple_of(per) {
                return write!(
                    f,
                    "{}{}",
                    self.0 / per,
                    if name.is_empty() { "B" } else { name }
                );
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A bandwidth written the human way: `"100MB/s"`, `"1GiB/s"`; always above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth {
    /// Bytes per second.
    pub bytes_per_sec: u64,
}

impl FromStr for Bandwidth {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Bandwidth, UnitError> {
        let t = s.trim();
        let Some(size) = t.strip_suffix("/s") else {
            return Err(UnitError::new(
                "bandwidth",
                s,
                "missing \"/s\"; write a size per second, e.g. \"100MB/s\"",
            ));
        };
        let ByteSize(bytes_per_sec) =
            ByteSize::parse_as("bandwidth", size).map_err(|e| UnitError {
                value: s.to_string(),
                ..e
            })?;
        if bytes_per_sec == 0 {
            return Err(UnitError::new(
                "bandwidth",
                s,
                "must be above 0/s; leave max_bandwidth out for no limit",
            ));
        }
        Ok(Bandwidth { bytes_per_sec })
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", ByteSize(self.bytes_per_sec))
    }
}

/// A time of day, `"HH:MM"` in UTC (minutes since midnight inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(pub u16);

impl TimeOfDay {
    /// The time of day of `t` (UTC).
    pub fn of(t: chrono::DateTime<chrono::Utc>) -> TimeOfDay {
        use chrono::Timelike;
        TimeOfDay((t.hour() * 60 + t.minute()) as u16)
    }
}

impl FromStr for TimeOfDay {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<TimeOfDay, UnitError> {
        let bad = |why: &str| UnitError::new("time of day", s, why);
        let (h, m) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("write HH:MM (UTC), e.g. \"08:30\""))?;
        let h: u16 = h.parse().map_err(|_| bad("hours are not a number"))?;
        let m: u16 = m.parse().map_err(|_| bad("minutes are not a number"))?;
        if h > 24 || m > 59 || (h == 24 && m != 0) {
            return Err(bad("out of range: 00:00 to 24:00"));
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

// ---------------------------------------------------------------------------------------------
// Serde: one visitor for every humane value
// ---------------------------------------------------------------------------------------------

/// A humane value as serde reads and writes it: written with its `Display`, read from a string
/// with its `FromStr` (and, for sizes, from a bare integer too).
trait HumanUnit: FromStr<Err = UnitError> + fmt::Display + Sized {
    /// What serde's "invalid type" error says was expected.
    const EXPECTING: &'static str;
    /// For values that may also be written as a bare integer: the noun that refuses a
    /// negative one (`"invalid size -1: must not be negative"`); `None` refuses integers.
    const INTEGER_NOUN: Option<&'static str> = None;

    /// The value of a bare non-negative integer (only called when `INTEGER_NOUN` is set).
    fn from_integer(_v: u64) -> Option<Self> {
        None
    }
}

impl HumanUnit for HumanDuration {
    const EXPECTING: &'static str =
        "a duration string such as \"250ms\", \"4s\", \"5m\" or \"24h\"";
}

impl HumanUnit for ByteSize {
    const EXPECTING: &'static str = "a size such as \"64KiB\", \"256MiB\" or \"1GiB\"";
    const INTEGER_NOUN: Option<&'static str> = Some("size");

    fn from_integer(v: u64) -> Option<Self> {
        Some(ByteSize(v))
    }
}

impl HumanUnit for Bandwidth {
    const EXPECTING: &'static str = "a bandwidth such as \"100MB/s\"";
}

impl HumanUnit for TimeOfDay {
    // As serde's own `String` says: times of day were read as a plain string before.
    const EXPECTING: &'static str = "a string";
}

/// The one visitor of every [`HumanUnit`].
struct UnitVisitor<T>(PhantomData<T>);

impl<T: HumanUnit> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        T::from_integer(v).ok_or_else(|| E::invalid_type(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        match (u64::try_from(v), T::INTEGER_NOUN) {
            (Ok(u), Some(_)) => self.visit_u64(u),
            (Err(_), Some(noun)) => Err(E::custom(format!(
                "invalid {noun} {v}: must not be negative"
            ))),
            (_, None) => Err(E::invalid_type(Unexpected::Signed(v), &self)),
        }
    }
}

/// Reads a [`HumanUnit`]: from a string, or from anything (integers too) when it takes them.
fn deserialize_unit<'de, T: HumanUnit, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let visitor = UnitVisitor(PhantomData);
    if T::INTEGER_NOUN.is_some() {
        d.deserialize_any(visitor)
    } else {
        d.deserialize_str(visitor)
    }
}

/// Serialize (as its display string) and Deserialize (through [`UnitVisitor`]) for units.
macro_rules! human_unit_serde {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                deserialize_unit(d)
            }
        }
    )*};
}

human_unit_serde!(HumanDuration, ByteSize, Bandwidth, TimeOfDay);

/// A daily window with its own replication bandwidth cap, as Zerto and AWS DRS offer: less
/// during office hours, more at night.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// Start of the window, `"HH:MM"` UTC.
    pub from: TimeOfDay,
    /// End of the window (exclusive), `"HH:MM"` UTC; earlier than `from` crosses midnight.
    pub to: TimeOfDay,
    /// The cap inside the window.
    pub max_bandwidth: Bandwidth,
}

impl BandwidthWindow {
    /// Whether `t` falls in the window.
    pub fn contains(&self, t: TimeOfDay) -> bool {
        if self.from <= self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[test]
    fn durations_parse_every_unit() {
        let cases = [
            ("250ms", 250),
            ("4s", 4_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("0", 0),
            (" 3s ", 3_000),
        ];
        for (i, (text, ms)) in cases.iter().enumerate() {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.as_millis(), *ms, "#{i}: {text}");
        }
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(HumanDuration::from_secs(120).to_string(), "2m");
    }

    #[test]
    fn duration_parse_errors_name_the_value() {
        let cases = [
            ("", "empty"),
            ("4", "missing unit"),
            ("1.5s", "fractions"),
            ("4sec", "unknown unit \"sec\""),
            ("s", "must start with a whole number"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too large"),
        ];
        for (i, (text, words)) in cases.iter().enumerate() {
            let e = text.parse::<HumanDuration>().unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("invalid duration \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let cases = [
            ("64KiB", 65_536),
            ("256MiB", 268_435_456),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("100MB", 100_000_000),
            ("5KB", 5_000),
            ("512B", 512),
            ("4096", 4_096),
        ];
        for (i, (text, bytes)) in cases.iter().enumerate() {
            assert_eq!(
                text.parse::<ByteSize>().unwrap().bytes(),
                *bytes,
                "#{i}: {text}"
            );
        }
        assert_eq!(
            "100MB/s".parse::<Bandwidth>().unwrap().bytes_per_sec,
            100_000_000
        );
        assert_eq!(ByteSize::mib(256).to_string(), "256MiB");
        assert_eq!(ByteSize(100_000_000).to_string(), "100MB");
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_with_what_was_expected() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)] // only the errors and `s` are looked at
        struct W {
            d: Option<HumanDuration>,
            s: Option<ByteSize>,
            b: Option<Bandwidth>,
            t: Option<TimeOfDay>,
        }
        let err = |text: &str| toml::from_str::<W>(text).unwrap_err().message().to_string();
        assert_eq!(
            err("d = 5"),
            "invalid type: integer `5`, expected a duration string such as \"250ms\", \"4s\", \"5m\" or \"24h\""
        );
        assert_eq!(err("s = -1"), "invalid size -1: must not be negative");
        assert_eq!(
            err("s = 1.5"),
            "invalid type: floating point `1.5`, expected a size such as \"64KiB\", \"256MiB\" or \"1GiB\""
        );
        assert_eq!(
            toml::from_str::<W>("s = 4096").unwrap().s,
            Some(ByteSize(4096))
        );
        assert_eq!(
            err("b = 5"),
            "invalid type: integer `5`, expected a bandwidth such as \"100MB/s\""
        );
        assert_eq!(err("t = 5"), "invalid type: integer `5`, expected a string");
        assert_eq!(
            err("t = \"25:00\""),
            "invalid time of day \"25:00\": out of range: 00:00 to 24:00"
        );
    }

    #[test]
    fn size_parse_errors_name_the_value() {
        let cases = [
            ("1.5GiB", "size", "fractions"),
            ("10M", "size", "ambiguous"),
            ("10 parsecs", "size", "unknown unit \"parsecs\""),
            ("99999999TiB", "size", "too large"),
        ];
        for (i, (text, what, words)) in cases.iter().enumerate() {
            let shown = text.parse::<ByteSize>().unwrap_err().to_string();
            assert!(
                shown.starts_with(&format!("invalid {what} \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
        for (i, (text, words)) in [
            ("100MB", "missing \"/s\""),
            ("0MB/s", "above 0"),
            ("1x/s", "unknown unit"),
        ]
        .iter()
        .enumerate()
        {
            let shown = text.parse::<Bandwidth>().unwrap_err().to_string();
            assert!(
                shown.starts_with(&format!("invalid bandwidth \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
    }

    proptest! {
        #[test]
        fn durations_round_trip_through_display(ms in 0u64..(1u64 << 50)) {
            let d = HumanDuration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }

        #[test]
        fn whole_unit_durations_display_in_their_unit(n in 1u64..1_000, u in 0usize..5) {
            let (name, per) = DURATION_UNITS[u];
            let d = HumanDuration::from_millis(n * per);
            let shown = d.to_string();
            prop_assert!(shown.parse::<HumanDuration>().unwrap() == d);
            prop_assert!(shown.len() <= format!("{n}{name}").len(), "{} vs {}{}", shown, n, name);
        }

        #[test]
        fn sizes_round_trip_through_display(bytes in any::<u64>()) {
            let s = ByteSize(bytes);
            prop_assert_eq!(s.to_string().parse::<ByteSize>().unwrap(), s);
        }

        #[test]
        fn bandwidths_round_trip_through_display(bytes in 1u64..) {
            let b = Bandwidth { bytes_per_sec: bytes };
            prop_assert_eq!(b.to_string().parse::<Bandwidth>().unwrap(), b);
        }

        #[test]
        fn durations_and_sizes_round_trip_through_serde(ms in 0u64..(1u64 << 40), bytes in any::<u64>()) {
            #[derive(Serialize, Deserialize, PartialEq, Debug)]
            struct Both { d: HumanDuration, s: ByteSize }
            let v = Both { d: HumanDuration::from_millis(ms), s: ByteSize(bytes) };
            let text = toml::to_string(&v).unwrap();
            prop_assert_eq!(toml::from_str::<Both>(&text).unwrap(), v);
        }
    }
}
