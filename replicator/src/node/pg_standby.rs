//! The standby at a replica site: every [`PROBE_EVERY`] this replicator asks its site's
//! PostgreSQL server of each streamed postgres resource (`stream = true`) of the groups it is
//! replica of how far it has replayed — a replication connection with the resource's stream
//! settings on its `replica_port`, `IDENTIFY_SYSTEM` (on a standby fed by `restore_command`
//! its position is the last replayed one) and `SHOW in_hot_standby` — and keeps the answer
//! for the heartbeat ([`super::report`]). The coordinators set it beside the primary's WAL
//! durable at the replica site: the replay lag status shows. I/O only; what the answer means
//! is [`standby_health`].

use super::runtime::{NodeRt, RoleState};
use crate::pg_repl::{Client, ConnConfig};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::ResourceKind;
use tandem_core::proto::ResourceHealth;
use tokio::sync::watch;

/// How often each standby is probed (a connection each time: a walsender process for a few
/// milliseconds).
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(2);

/// One standby to probe.
struct Target {
    group: String,
    resource: String,
    cfg: ConnConfig,
    password_file: Option<std::path::PathBuf>,
}

/// Probes the standbys of every group this node is replica of until `stop`.
pub(super) async fn probe_loop(rt: Arc<NodeRt>, mut stop: watch::Receiver<bool>) {
    loop {
        let targets = targets(&rt).await;
        let mut seen = Vec::new();
        for t in targets {
            let h = probe(&t).await;
            seen.push((t.group, t.resource, h));
        }
        {
            let mut groups = rt.groups.lock().await;
            for g in groups.values_mut() {
                g.pg_standbys.clear();
            }
            for (group, resource, h) in seen {
                if let Some(g) = groups.get_mut(&group) {
                    if matches!(g.role, RoleState::Replica { .. }) {
                        g.pg_standbys.insert(resource, h);
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// The streamed postgres resources of the groups this node is replica of now.
async fn targets(rt: &NodeRt) -> Vec<Target> {
    let groups = rt.groups.lock().await;
    let mut out = Vec::new();
    for (name, g) in groups.iter() {
        if !matches!(g.role, RoleState::Replica { .. }) {
            continue;
        }
        for r in &g.cfg.resources {
            let ResourceKind::Postgres {
                replica_port,
                stream: Some(s),
                ..
            } = &r.kind
            else {
                continue;
            };
            out.push(Target {
                group: name.clone(),
                resource: r.name.clone(),
                cfg: ConnConfig {
                    host: s.host.clone(),
                    port: *replica_port,
                    user: s.user.clone(),
                    password: None,
                    application_name: format!(
                        "{}_probe",
                        tandem_core::config::PgStream::slot_name(name, &r.name)
                    ),
                    connect_timeout: Duration::from_secs(2),
                },
                password_file: s.password_file.clone(),
            });
        }
    }
    out
}

/// Asks the standby of `t` (3 s at most) and judges the answer.
async fn probe(t: &Target) -> ResourceHealth {
    let asked = tokio::time::timeout(Duration::from_secs(3), ask(t)).await;
    let now = SystemClock::new().now_ms();
    let answer = match asked {
        Ok(r) => r,
        Err(_) => Err("no answer within 3 s".into()),
    };
    standby_health(&t.resource, answer, now)
}

/// (in_hot_standby, timeline, replayed position) from the standby.
async fn ask(t: &Target) -> Result<(String, u32, u64), String> {
    let mut cfg = t.cfg.clone();
    if let Some(p) = &t.password_file {
        let text = tokio::fs::read_to_string(p)
            .await
            .map_err(|e| format!("stream_password_file {}: {e}", p.display()))?;
        cfg.password = Some(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    let mut c = Client::connect(&cfg).await.map_err(|e| e.to_string())?;
    let hot = c.show("in_hot_standby").await.map_err(|e| e.to_string())?;
    let sys = c.identify_system().await.map_err(|e| e.to_string())?;
    let _ = c.close().await;
    Ok((hot, sys.timeline, sys.xlog_pos.0))
}

/// What status shows of a standby, from the probe's `answer` at `now`: `replaying` (in hot
/// standby; its position is the last replayed one), `not in recovery` (the server at the
/// replica site runs as a primary: not a standby of this group any more), or `unreachable`
/// with the reason. Pure.
pub fn standby_health(
    resource: &str,
    answer: Result<(String, u32, u64), String>,
    now: i64,
) -> ResourceHealth {
    let mut h = ResourceHealth {
        resource: resource.to_owned(),
        probed_ms: now,
        ..Default::default()
    };
    match answer {
        Ok((hot, tli, pos)) if hot == "on" => {
            h.standby = "replaying".into();
            h.replay_lsn = pos;
            h.replay_timeline = tli;
            h.detail = format!(
                "standby replayed through {:X}/{:X} on timeline {tli}",
                pos >> 32,
                pos & 0xffff_ffff
            );
        }
        Ok((hot, tli, pos)) => {
            h.standby = "not in recovery".into();
            h.detail = format!(
                "the server at the replica site is not a standby (in_hot_standby = {hot}, \
                 timeline {tli}, at {:X}/{:X})",
                pos >> 32,
                pos & 0xffff_ffff
            );
        }
        Err(e) => {
            h.standby = "unreachable".into();
            h.detail = format!("standby unreachable: {e}");
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_in_hot_standby_is_replaying_at_its_position() {
        let h = standby_health("db", Ok(("on".into(), 2, 0x1_0300_0060)), 7);
        assert_eq!(h.standby, "replaying");
        assert_eq!(
            (h.replay_lsn, h.replay_timeline, h.probed_ms),
            (0x1_0300_0060, 2, 7)
        );
        assert!(h.detail.contains("1/3000060"), "{}", h.detail);
    }

    #[test]
    fn a_promoted_or_silent_server_is_not_replaying_and_has_no_position() {
        let h = standby_health("db", Ok(("off".into(), 3, 5)), 7);
        assert_eq!((h.standby.as_str(), h.replay_lsn), ("not in recovery", 0));
        let h = standby_health("db", Err("connection refused".into()), 7);
        assert_eq!(h.standby, "unreachable");
        assert!(h.detail.contains("connection refused"));
    }
}
