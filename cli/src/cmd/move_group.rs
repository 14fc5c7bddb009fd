//! `tandem move GROUP --site S --to NODE`: a planned move of a group's replica side to another
//! replicator host at the same site. The coordinators record the move; the new host opens the
//! group and resyncs it from the primary by merkle diff while the primary keeps taking
//! writes; its in-sync report ends the move (audited at start and end). The command follows
//! the group in the status until then, or until `--timeout`.

use crate::cmd::ops::Target;
use crate::cmd::status::{coordinator_addrs, fetch, runtime};
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use std::time::{Duration, Instant};

/// Arguments of `tandem move`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The protection group.
    pub group: String,
    /// The site whose host changes: the group's replica site (the primary side does not
    /// move; switch over first).
    #[arg(long)]
    pub site: String,
    /// The replicator at that site that will hold the group's data.
    #[arg(long)]
    pub to: String,
    /// Why (recorded in the audit chain).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Return once the coordinators accepted the move, without following it.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following after this many seconds (the move goes on).
    #[arg(long, default_value = "900")]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub target: Target,
}

/// Where the followed group stands: done (the new host protects it), or a line to print.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The new host holds the group's data and reported itself in sync.
    Done,
    /// Still moving: the status line to show.
    Moving(String),
}

/// Reads the move's progress from the group's status (pure).
pub fn progress(g: &tandem_coordinator::status::GroupStatus, to: &str) -> Progress {
    if g.replica_host == to && g.state == "protected" {
        return Progress::Done;
    }
    Progress::Moving(format!(
        "{}: {} on {} (RPO {} ms){}",
        g.name,
        g.state,
        g.replica_host,
        g.rpo_ms,
        if g.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", g.reason)
        }
    ))
}

/// Runs `tandem move`.
pub fn run(a: Args) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    runtime()?.block_on(async {
        let started = Instant::now();
        crate::cmd::cluster(&addrs)?
            .move_group(&a.group, &a.site, &a.to, &a.reason)
            .await
            .map_err(|e| anyhow::anyhow!("move {}: {}", a.group, e.peer_message()))?;
        println!(
            "moving the replica of {} at {} to {}: the new host resyncs from the primary",
            a.group, a.site, a.to
        );
        if a.no_wait {
            return Ok(());
        }
        let deadline = started + Duration::from_secs(a.timeout_secs);
        let mut last = String::new();
        loop {
            let st = fetch(&addrs).await?;
            let Some(g) = st.groups.iter().find(|g| g.name == a.group) else {
                bail!("group {:?} missing from the cluster status", a.group);
            };
            match progress(g, &a.to) {
                Progress::Done => {
                    println!(
                        "moved {} at {} to {} in {:.1} s; compare the copies with `tandem verify {}`",
                        a.group,
                        a.site,
                        a.to,
                        started.elapsed().as_secs_f64(),
                        a.group
                    );
                    return Ok(());
                }
                Progress::Moving(line) if line != last => {
                    println!("{line}");
                    last = line;
                }
                Progress::Moving(_) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is still moving after {} s (the move goes on; follow it with `tandem \
                     status --group {}`)",
                    a.group,
                    a.timeout_secs,
                    a.group
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_coordinator::status::GroupStatus;

    fn status(state: &str, host: &str) -> GroupStatus {
        GroupStatus {
            name: "g".into(),
            state: state.into(),
            replica_host: host.into(),
            ..GroupStatus::default()
        }
    }

    #[test]
    fn a_move_is_done_only_when_the_new_host_protects_the_group() {
        assert_eq!(progress(&status("protected", "b2"), "b2"), Progress::Done);
        assert!(matches!(
            progress(&status("resyncing", "b2"), "b2"),
            Progress::Moving(_)
        ));
        // Protected, but still by the old host: not yet.
        assert!(matches!(
            progress(&status("protected", "b1"), "b2"),
            Progress::Moving(_)
        ));
    }
}
