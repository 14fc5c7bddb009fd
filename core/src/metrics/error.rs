//! The error of the metrics module: a listen address that cannot be bound, a malformed line of a
//! text exposition.

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics listen address could not be bound.
    #[error("metrics_listen {addr}: cannot bind: {source}")]
    Bind {
        /// The address from the topology.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line of a text exposition is malformed.
    #[error("metrics text line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl MetricsError {
    /// True when trying again later may succeed (the port may be freed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetricsError::Bind { .. })
    }
}
