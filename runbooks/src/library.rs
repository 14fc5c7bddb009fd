//! The stock runbooks of `runbooks/library/`, compiled into the crate so every binary has them.

use crate::error::RunbookError;
use crate::model::{Runbook, RunbookKind};

/// The stock drill runbook (`runbooks/library/drill.toml`).
pub const DRILL: &str = include_str!("../library/drill.toml");
/// The stock switchover runbook (`runbooks/library/switchover.toml`).
pub const SWITCHOVER: &str = include_str!("../library/switchover.toml");
/// The stock failover runbook (`runbooks/library/failover.toml`).
pub const FAILOVER: &str = include_str!("../library/failover.toml");
/// The stock failback runbook (`runbooks/library/failback.toml`).
pub const FAILBACK: &str = include_str!("../library/failback.toml");

/// The text and file name of the stock runbook for `kind` (`None` for custom).
pub fn stock_text(kind: RunbookKind) -> Option<(&'static str, &'static str)> {
    match kind {
        RunbookKind::Drill => Some(("library/drill.toml", DRILL)),
        RunbookKind::Switchover => Some(("library/switchover.toml", SWITCHOVER)),
        RunbookKind::Failover => Some(("library/failover.toml", FAILOVER)),
        RunbookKind::Failback => Some(("library/failback.toml", FAILBACK)),
        RunbookKind::Custom => None,
    }
}

/// The parsed stock runbook for `kind` (`None` for custom).
///
/// # Errors
/// Whatever the parser finds; the stock files are tested, so this is only a guard.
pub fn stock(kind: RunbookKind) -> Option<Result<Runbook, RunbookError>> {
    stock_text(kind).map(|(file, text)| Runbook::parse(text, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stock_runbook_parses_and_has_its_kind() {
        for kind in [
            RunbookKind::Drill,
            RunbookKind::Switchover,
            RunbookKind::Failover,
            RunbookKind::Failback,
        ] {
            let rb = match stock(kind) {
                Some(Ok(rb)) => rb,
                Some(Err(e)) => panic!("{kind}: {e}"),
                None => panic!("{kind}: no stock runbook"),
            };
            assert_eq!(rb.kind, kind);
            assert_eq!(rb.name, kind.as_str());
        }
        assert!(stock(RunbookKind::Custom).is_none());
    }
}
