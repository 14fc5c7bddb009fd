//! The command of an `exec` step or a `check` probe whose site is a site of the topology runs
//! on that site's replicator: the leader asks it with `Replication.RunStep{run_id, step}` (never
//! a command text: the replicator reads the step from the committed plan with
//! `Coordinator.PlannedStep`), trying the replicators of the site in turn while they cannot be
//! reached. Acts: gRPC calls to replicators.

use super::failure::Failure;
use crate::handle::coordinator::Coordinator;
use crate::state::Run;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;
use tandem_core::client::Replicator;
use tandem_runbooks::PlannedStep;
use tracing::{info, warn};

/// Slack given to a `RunStep` call beyond the step's own timeout (the replicator bounds the
/// command by the timeout; the call also reads the plan and carries the output back).
const RUN_STEP_SLACK: Duration = Duration::from_secs(5);

/// Runs step `step` of `run` on a replicator of `site`: `(exit status 0, output)`.
///
/// # Errors
/// A [`Failure`] naming the site and every node tried when none can be reached, or naming the
/// node and its reason when one answered no.
pub(super) async fn run_at_site(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    site: &str,
) -> Result<(bool, String), Failure> {
    let nodes = candidates(c, run, site);
    if nodes.is_empty() {
        return Err(Failure::new(format!(
            "site {site} has no replicator in the topology to run step {} on",
            step.id
        )));
    }
    let index = u32::try_from(step.index)
        .map_err(|_| Failure::new(format!("step index {} out of range", step.index)))?;
    let timeout = Duration::from_millis(step.timeout.as_millis()).saturating_add(RUN_STEP_SLACK);
    let run_id = run.state.run_id.as_str();
    let mut unreachable = Vec::new();
    for (node, addr) in nodes {
        let rep = Replicator::new(c.net().clone(), addr.clone());
        match rep.run_step(run_id, index, timeout).await {
            Ok(reply) => {
                info!(run = %run_id, step = %step.id, %node, %site, success = reply.success,
                    exit_code = reply.exit_code, ms = reply.elapsed_ms, "step command ran at its site");
                let ran_on = if reply.node.is_empty() {
                    node
                } else {
                    reply.node
                };
                let mut text = reply.output;
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                if reply.success {
                    text.push_str(&format!("[ran on {ran_on} at site {site}]"));
                } else {
                    text.push_str(&format!(
                        "[exit code {} on {ran_on} at site {site}]",
                        reply.exit_code
                    ));
                }
                return Ok((reply.success, text));
            }
            Err(e) if e.is_retryable() => {
                warn!(run = %run_id, step = %step.id, %node, %site, "replicator unreachable: {e}");
                unreachable.push(format!("{node} ({addr}): {e}"));
            }
            Err(e) => {
                return Err(Failure::new(format!(
                    "replicator {node} ({addr}) of site {site} did not run step {}: {}",
                    step.id,
                    e.peer_message()
                )))
            }
        }
    }
    Err(Failure::new(format!(
        "site {site} unreachable: no replicator there could run step {} ({})",
        step.id,
        unreachable.join("; ")
    )))
}

/// The replicators of `site` as `(node, address)`, the one to ask first first: the host the
/// group is placed on there, then the holder of the group's lease when it is at this site,
/// then the most recently heard from, then the others in topology order.
fn candidates(c: &Coordinator, run: &Run, site: &str) -> Vec<(String, String)> {
    let (holder, heard) = c.read(|s| {
        let holder = s
            .group(&run.group)
            .and_then(|g| g.lease.as_ref())
            .filter(|l| l.site == site)
            .map(|l| l.holder.clone());
        let heard: BTreeMap<String, i64> =
            s.site(site).map(|x| x.nodes.clone()).unwrap_or_default();
        (holder, heard)
    });
    let recorded = c.read(|s| {
        s.group(&run.group)
            .and_then(|g| g.host_at(site).map(str::to_owned))
    });
    let placed = c
        .topo()
        .placed_host(&run.group, site, recorded.as_deref())
        .map(|n| n.name.clone());
    let mut nodes = c.topo().replicators_at(site);
    nodes.sort_by_key(|n| {
        (
            placed.as_deref() != Some(n.name.as_str()),
            holder.as_deref() != Some(n.name.as_str()),
            Reverse(heard.get(&n.name).copied().unwrap_or(i64::MIN)),
        )
    });
    nodes
        .into_iter()
        .map(|n| (n.name.clone(), n.listen.clone()))
        .collect()
}
