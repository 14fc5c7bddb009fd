//! Times in the CLI's output: unix milliseconds as RFC 3339 (used by `status` and `pitr`).
//! Pure.

/// Formats unix ms as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn unix_ms_format_as_utc_with_milliseconds() {
        assert_eq!(rfc3339(1250), "1970-01-01T00:00:01.250Z");
    }
}
