//! What pgbench saw committed (its `-l` per-transaction logs) and whether a failover lost
//! more than it may. Pure.

/// Commit times (unix ms) in the text of one pgbench `-l` log, in file order. A line is
/// `client_id transaction_no time script_no time_epoch time_us`; a failed or skipped
/// transaction has no numeric `time` and is not a commit.
pub fn commit_times(log: &str) -> Vec<i64> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[2].parse::<u64>().is_err() {
                return None;
            }
            let (s, us) = (f[4].parse::<i64>().ok()?, f[5].parse::<i64>().ok()?);
            Some(s * 1000 + us / 1000)
        })
        .collect()
}

/// What a failover of a PostgreSQL group lost, counted: pgbench's commits against the rows
/// the promoted server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Transactions pgbench saw committed at the old primary.
    pub committed: u64,
    /// Their rows in the promoted server (one `pgbench_history` row per transaction).
    pub promoted: u64,
    /// Committed transactions missing from the promoted server.
    pub lost: u64,
    /// How long before the loss the oldest missing commit was acknowledged (ms; 0 if none).
    pub span_ms: i64,
}

/// The verdict on a [`Loss`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossVerdict {
    /// Nothing lost beyond what the mode allows.
    Kept,
    /// More lost than allowed; the reason.
    Broken(String),
}

/// Judges a failover's loss. `times`: every commit time pgbench logged (unix ms, any order);
/// `promoted`: rows in the promoted server; `loss_ms`: when the primary site was lost;
/// `clients`: pgbench clients (each may have committed one transaction the server holds but
/// pgbench never heard of). Sync (`allowed_ms = None`): nothing may be lost. Async: the lost
/// commits (the newest ones) must span no more than `allowed_ms` before the loss: the RPO
/// status last showed, carried forward to the loss, plus the status's own delay.
pub fn judge_loss(
    times: &[i64],
    promoted: u64,
    loss_ms: i64,
    clients: u64,
    allowed_ms: Option<i64>,
) -> (Loss, LossVerdict) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let committed = sorted.len() as u64;
    let lost = committed.saturating_sub(promoted);
    let span_ms = match lost {
        0 => 0,
        n => loss_ms - sorted[sorted.len() - n as usize],
    };
    let loss = Loss {
        committed,
        promoted,
        lost,
        span_ms,
    };
    let verdict = if promoted > committed + clients {
        LossVerdict::Broken(format!(
            "the promoted server holds {promoted} transactions, more than the {committed} pgbench \
             saw committed plus one in flight per client ({clients}): the count is not of this run"
        ))
    } else if committed == 0 {
        LossVerdict::Broken("pgbench saw no transaction committed before the loss".into())
    } else {
        match allowed_ms {
            None if lost > 0 => LossVerdict::Broken(format!(
                "sync: {lost} of {committed} transactions pgbench saw committed are missing from \
                 the promoted server (the oldest acknowledged {span_ms} ms before the loss)"
            )),
            Some(allowed) if span_ms > allowed => LossVerdict::Broken(format!(
                "async: {lost} of {committed} committed transactions lost, spanning {span_ms} ms \
                 before the loss; the RPO status showed allows {allowed} ms"
            )),
            _ => LossVerdict::Kept,
        }
    };
    (loss, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_skip_failed_and_short_lines() {
        let log = "0 1 1200 0 1700000000 250000\n0 2 failed 0 1700000000 300000\n1 1 900 0 1700000001 5000\nbad\n";
        assert_eq!(
            commit_times(log),
            vec![1_700_000_000_250, 1_700_000_001_005]
        );
    }

    #[test]
    fn sync_loses_nothing_or_fails() {
        let times = [100, 200, 300];
        assert_eq!(judge_loss(&times, 3, 400, 2, None).1, LossVerdict::Kept);
        assert_eq!(judge_loss(&times, 5, 400, 2, None).1, LossVerdict::Kept);
        let (loss, v) = judge_loss(&times, 2, 400, 2, None);
        assert_eq!((loss.lost, loss.span_ms), (1, 100));
        assert!(matches!(v, LossVerdict::Broken(m) if m.contains("sync: 1 of 3")));
    }

    #[test]
    fn async_losses_are_judged_by_their_span_against_the_allowance() {
        let times = [300, 100, 200, 350];
        // Two lost: the newest two (300, 350); the oldest of them 100 ms before the loss.
        let (loss, v) = judge_loss(&times, 2, 400, 2, Some(100));
        assert_eq!((loss.lost, loss.span_ms), (2, 100));
        assert_eq!(v, LossVerdict::Kept);
        assert!(matches!(
            judge_loss(&times, 2, 400, 2, Some(99)).1,
            LossVerdict::Broken(_)
        ));
    }

    #[test]
    fn a_count_from_another_run_or_no_commit_is_refused() {
        assert!(matches!(
            judge_loss(&[1, 2], 9, 3, 2, None).1,
            LossVerdict::Broken(_)
        ));
        assert!(matches!(
            judge_loss(&[], 0, 3, 2, Some(10)).1,
            LossVerdict::Broken(_)
        ));
    }
}
