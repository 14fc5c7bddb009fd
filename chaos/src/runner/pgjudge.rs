//! Judging the PostgreSQL workload: what pgbench saw committed against the promoted server
//! ([`crate::pg::judge_loss`], pure), and the rejoin of the old primary. Reads only what
//! [`super::pgrun::PgRun`] gathered.

use super::judge::{Findings, Judge};
use super::pgrun::{PgRun, CLIENTS};
use crate::pg::{judge_loss, LossVerdict};
use crate::scenario::Check;

/// Slack on the RPO status showed: status reads the primary's last report, sent every
/// heartbeat (250 ms in the chaos topology) and read by the runner every tick (150 ms).
const STATUS_DELAY_MS: i64 = 500;

/// `pg_no_lost_commits` and `pg_rejoined`.
pub fn judge_pg(j: &Judge<'_>, c: &Check, out: &mut Findings) {
    let Some(p) = &j.load.pg else {
        out.failures.push(format!("{c:?} needs `postgres = true`"));
        return;
    };
    match c {
        Check::PgNoLostCommits => no_lost_commits(p, j.s.mode == "sync", out),
        Check::PgRejoined => rejoined(p, out),
        _ => {}
    }
}

fn no_lost_commits(p: &PgRun, sync: bool, out: &mut Findings) {
    let Some(loss_ms) = p.loss_ms else {
        out.failures
            .push("pg: the primary's server was never killed: no loss to judge".into());
        return;
    };
    let promoted = match &p.promoted {
        Some((_, Ok(rows))) => *rows,
        Some((site, Err(e))) => {
            out.failures
                .push(format!("pg: the promoted server at {site}: {e:#}"));
            return;
        }
        None => {
            out.failures
                .push("pg: no server was promoted after the loss".into());
            return;
        }
    };
    let allowed = if sync {
        None
    } else {
        match p.rpo_shown {
            Some((rpo, at)) => Some(rpo + (loss_ms - at).max(0) + STATUS_DELAY_MS),
            None => {
                out.failures
                    .push("pg: status never showed the group streaming before the loss".into());
                return;
            }
        }
    };
    let (loss, verdict) = judge_loss(&p.commits, promoted, loss_ms, CLIENTS.into(), allowed);
    out.db_lost += loss.lost as usize;
    out.notes.push(format!(
        "pg: {} committed, {} in the promoted server, {} lost (spanning {} ms before the loss){}",
        loss.committed,
        loss.promoted,
        loss.lost,
        loss.span_ms,
        allowed.map_or(String::new(), |a| format!("; async allowance {a} ms"))
    ));
    if let LossVerdict::Broken(why) = verdict {
        out.failures.push(format!("pg: {why}"));
    }
}

fn rejoined(p: &PgRun, out: &mut Findings) {
    match &p.rejoin {
        None => out
            .failures
            .push("pg: the old primary was not rejoined (no recovery)".into()),
        Some(Err(e)) => out.failures.push(format!("pg: rejoin: {e:#}")),
        Some(Ok(text)) if !text.contains("pg_rewind") => out.failures.push(format!(
            "pg: rejoin did not rewind the old primary: {}",
            text.trim()
        )),
        Some(Ok(_)) => match &p.rejoined_facts {
            Some(Ok(facts)) => out.notes.push(format!(
                "pg: the rejoined standby replays the new primary: both hold {facts}"
            )),
            Some(Err(e)) => out.failures.push(format!("pg: after the rejoin: {e:#}")),
            None => out
                .failures
                .push("pg: the rejoined standby was never compared".into()),
        },
    }
}
