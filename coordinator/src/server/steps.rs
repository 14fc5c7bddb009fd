//! `Coordinator.PlannedStep`: a replicator asked to run a step (`Replication.RunStep`) reads it
//! here from the committed plan: its command, the environment it runs with, its site and
//! whether it is the run's current step. Served by any coordinator from its local committed
//! state; only a replicator of the step's site may read it (with TLS). Refusals are audited.

use crate::handle::coordinator::Coordinator;
use crate::state::Run;
use std::collections::{BTreeMap, HashMap};
use tandem_core::config::NodeRole;
use tandem_core::net::Caller;
use tandem_core::proto::{PlannedStepReply, PlannedStepRequest};
use tandem_runbooks::run::StepStatus;
use tandem_runbooks::{Action, Command, PlannedStep, Probe, ResolvedSite};
use tonic::{Request, Response, Status};

/// The call's name in refusals and the audit chain.
const CALL: &str = "PlannedStep";

impl Coordinator {
    /// Answers `Coordinator.PlannedStep` (see the module doc).
    pub(super) async fn planned_step_call(
        &self,
        req: Request<PlannedStepRequest>,
    ) -> Result<Response<PlannedStepReply>, Status> {
        let caller = match self.net().caller(&req) {
            Ok(c) => c,
            Err(status) => return Err(self.refuse("unknown", "none", status).await),
        };
        // People, tools and coordinators never run steps: refused before the run is looked up.
        let node = match &caller {
            Caller::Anonymous => None,
            Caller::Node(n) if self.replicator_site(n).is_some() => Some(n.clone()),
            Caller::Node(n) => {
                let why = format!("node {n} is not a replicator and may not call {CALL}");
                return Err(self.refuse(n, "node", Status::permission_denied(why)).await);
            }
            Caller::Client { name, role } => {
                let why = format!("{name} ({role}) is not a replicator and may not call {CALL}");
                let role = role.to_string();
                return Err(self
                    .refuse(name, &role, Status::permission_denied(why))
                    .await);
            }
        };
        let r = req.into_inner();
        let run = self
            .read(|s| s.run(&r.run_id).cloned())
            .ok_or_else(|| Status::not_found(format!("{CALL}: no run {:?}", r.run_id)))?;
        let index = r.step as usize;
        let step = run.state.plan.steps.get(index).ok_or_else(|| {
            Status::not_found(format!(
                "{CALL}: run {} has no step {index} (it has {})",
                r.run_id,
                run.state.plan.steps.len()
            ))
        })?;
        let site = match &step.site {
            ResolvedSite::Site(s) => s.clone(),
            ResolvedSite::Coordinator => {
                return Err(Status::failed_precondition(format!(
                    "{CALL}: step {} of run {} runs on the coordinator, not at a site",
                    step.id, r.run_id
                )))
            }
        };
        if let Some(n) = node {
            let at = self.replicator_site(&n).unwrap_or_default();
            if at != site {
                let why = format!(
                    "node {n} (site {at}) may not call {CALL} for step {} of run {}: the step runs at site {site}",
                    step.id, r.run_id
                );
                return Err(self
                    .refuse(&n, "node", Status::permission_denied(why))
                    .await);
            }
        }
        Ok(Response::new(self.planned_step_reply(&run, step, site)))
    }

    /// The reply for `step` of `run` at `site`, from the committed state.
    fn planned_step_reply(&self, run: &Run, step: &PlannedStep, site: String) -> PlannedStepReply {
        let (argv, shell, extra) = match command_of(step) {
            Some((Command::Argv(v), env)) => (v.clone(), String::new(), env.clone()),
            Some((Command::Shell(s), env)) => (Vec::new(), s.clone(), env.clone()),
            None => (Vec::new(), String::new(), BTreeMap::new()),
        };
        let env: HashMap<String, String> = crate::runs::command_env(self, run, step, &extra)
            .into_iter()
            .collect();
        let current = run.state.current() == Some(step.index)
            && run
                .state
                .steps
                .get(step.index)
                .is_some_and(|s| s.status == StepStatus::Running);
        PlannedStepReply {
            run_id: run.state.run_id.clone(),
            group: run.group.clone(),
            step: step.index as u32,
            step_id: step.id.clone(),
            site,
            argv,
            shell,
            env,
            current,
            timeout_ms: step.timeout.as_millis(),
        }
    }

    /// The site of replicator `node` in the topology; `None` when it is not a replicator.
    fn replicator_site(&self, node: &str) -> Option<String> {
        self.topo()
            .node(node)
            .filter(|n| n.role == NodeRole::Replicator)
            .map(|n| n.site.clone())
    }

    /// Logs and audits a refused call, and returns its status.
    async fn refuse(&self, actor: &str, role: &str, refusal: Status) -> Status {
        self.refused(actor, role, CALL, refusal.message()).await;
        refusal
    }
}

/// The command of an `exec` step or of a `check` step's command probe, with its extra
/// environment; `None` for every other step.
fn command_of(step: &PlannedStep) -> Option<(&Command, &BTreeMap<String, String>)> {
    match &step.action {
        Action::Exec { command, env } => Some((command, env)),
        Action::Check {
            probe: Probe::Command { command, env },
            ..
        } => Some((command, env)),
        _ => None,
    }
}
