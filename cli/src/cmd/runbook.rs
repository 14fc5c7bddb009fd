//! `tandem runbook check FILE` and `tandem runbook plan FILE --group G`: validate a runbook
//! (every problem as `file:line:col: path: message`, exit 2) and print what it would run.

use crate::cmd::status::{coordinator_addrs, runtime};
use crate::exit::bad_input;
use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

use tandem_core::ids::Epoch;
use tandem_core::proto::StatusRequest;
use tandem_runbooks::{plan, validate_against, PlanContext, Runbook};

/// `tandem runbook ...`.
#[derive(Debug, Subcommand)]
pub enum RunbookCmd {
    /// Validate a runbook file; with --config, also check its site names against the topology.
    Check {
        /// The runbook file.
        file: PathBuf,
        /// The topology file.
        #[arg(long, short, env = "TANDEM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the steps a runbook would run for a group, without running anything.
    Plan {
        /// The runbook file.
        file: PathBuf,
        /// The protection group.
        #[arg(long)]
        group: String,
        /// The topology file (the group's sites, mode); roles and epoch come from the
        /// coordinators when they answer, else from the file.
        #[arg(long, short, env = "TANDEM_CONFIG")]
        config: Option<PathBuf>,
        /// A parameter, `NAME=VALUE`; may be repeated.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `tandem runbook ...`.
pub fn run(c: RunbookCmd) -> Result<()> {
    match c {
        RunbookCmd::Check { file, config } => {
            let rb = load(&file)?;
            if let Some(cfg) = config {
                let topo = crate::cmd::load_topology(&cfg).map_err(|e| bad_input(e.to_string()))?;
                let sites: Vec<String> = topo.sites.iter().map(|s| s.name.clone()).collect();
                validate_against(&rb, &sites).map_err(|e| bad_input(e.to_string()))?;
            }
            println!(
                "{}: ok ({} runbook {:?}, {} steps)",
                file.display(),
                rb.kind,
                rb.name,
                rb.steps.len()
            );
            Ok(())
        }
        RunbookCmd::Plan {
            file,
            group,
            config,
            params,
            json,
        } => {
            let rb = load(&file)?;
            let mut given = BTreeMap::new();
            for p in &params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| bad_input(format!("--param {p:?}: expected NAME=VALUE")))?;
                given.insert(k.to_string(), v.to_string());
            }
            let cx = context(config.as_ref(), &group, given)?;
            let p = plan(&rb, &cx).map_err(|e| bad_input(e.to_string()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{p}");
            }
            Ok(())
        }
    }
}

fn load(file: &std::path::Path) -> Result<Runbook> {
    Runbook::load(file).map_err(|e| bad_input(e.to_string()))
}

/// The plan context of `group`: sites and mode from the topology, current roles and epoch
/// from the coordinators when they answer (else the topology's roles, epoch 1).
fn context(
    config: Option<&PathBuf>,
    group: &str,
    params: BTreeMap<String, String>,
) -> Result<PlanContext> {
    let Some(cfg) = config else {
        return Err(bad_input(
            "give --config FILE (or TANDEM_CONFIG) to plan for a group",
        ));
    };
    let topo = crate::cmd::load_topology(cfg).map_err(|e| bad_input(e.to_string()))?;
    let g = topo
        .group(group)
        .ok_or_else(|| bad_input(format!("no group {group:?} in {}", cfg.display())))?;
    let mut cx = PlanContext {
        group: group.to_string(),
        primary_site: g.primary.clone(),
        replica_site: g.replica.clone(),
        mode: g.mode,
        epoch: Epoch(1),
        params,
    };
    if let Some(live) = live_roles(cfg, group) {
        (cx.primary_site, cx.replica_site, cx.epoch) = live;
    }
    Ok(cx)
}

fn live_roles(cfg: &PathBuf, group: &str) -> Option<(String, String, Epoch)> {
    let addrs = coordinator_addrs(Some(cfg), &[]).ok()?;
    let doc: Value = runtime().ok()?.block_on(async {
        let mut c = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            crate::cmd::ops::connect(&addrs),
        )
        .await
        .ok()?
        .ok()?;
        let r = c.status(StatusRequest::default()).await.ok()?.into_inner();
        serde_json::from_str(&r.json).ok()
    })?;
    let g = doc["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?
        .clone();
    Some((
        g["primary"].as_str()?.to_string(),
        g["replica"].as_str()?.to_string(),
        Epoch(g["epoch"].as_u64()?),
    ))
}
