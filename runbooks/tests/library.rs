//! The stock runbooks in `runbooks/library/`: each loads from disk, validates against a
//! three-site topology, plans for a group, and runs to success when every step succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use tandem_core::config::Mode;
use tandem_core::ids::Epoch;
use tandem_runbooks::run::{next_action, record, runbook_hash};
use tandem_runbooks::{
    plan, validate_against, ActionKind, NextAction, PlanContext, RunEvent, RunState, RunStatus,
    Runbook, RunbookKind,
};

fn library(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("library")
        .join(format!("{name}.toml"))
}

fn sites() -> Vec<String> {
    ["hanoi", "hcm", "danang"].map(String::from).to_vec()
}

fn context(params: &[(&str, &str)]) -> PlanContext {
    PlanContext {
        group: "vol".into(),
        primary_site: "hanoi".into(),
        replica_site: "hcm".into(),
        mode: Mode::Sync,
        epoch: Epoch(1),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Params each stock runbook needs to be planned (only the required ones).
fn required_params(kind: RunbookKind) -> Vec<(&'static str, &'static str)> {
    match kind {
        RunbookKind::Drill => vec![],
        _ => vec![("ready_command", "curl -fsS http://127.0.0.1:8080/health")],
    }
}

#[test]
fn stock_runbooks_load_validate_and_plan() {
    for (name, kind) in [
        ("drill", RunbookKind::Drill),
        ("switchover", RunbookKind::Switchover),
        ("failover", RunbookKind::Failover),
        ("failback", RunbookKind::Failback),
    ] {
        let path = library(name);
        let rb = Runbook::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rb.kind, kind, "{name}");
        assert!(!rb.description.is_empty(), "{name}: no description");
        validate_against(&rb, &sites()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            rb.steps
                .iter()
                .any(|s| s.action.kind() == ActionKind::Check),
            "{name}: no check step"
        );
        let p = plan(&rb, &context(&required_params(kind))).unwrap();
        println!("{p}");
        assert_eq!(p.steps.len(), rb.steps.len());
    }
}

#[test]
fn planned_role_changes_follow_the_procedure() {
    // The order of the role-changing actions is the procedure an SRE expects.
    let order = |name: &str| -> Vec<&'static str> {
        let rb = Runbook::load(&library(name)).unwrap();
        rb.steps
            .iter()
            .filter(|s| !s.handler)
            .map(|s| s.action.kind())
            .filter(|k| {
                matches!(
                    k,
                    ActionKind::WaitReplicated
                        | ActionKind::Fence
                        | ActionKind::Demote
                        | ActionKind::Promote
                        | ActionKind::Reverse
                        | ActionKind::Snapshot
                        | ActionKind::Verify
                        | ActionKind::Check
                )
            })
            .map(ActionKind::as_str)
            .collect()
    };
    assert_eq!(order("drill"), ["snapshot", "check", "verify"]);
    assert_eq!(
        order("switchover"),
        [
            "wait_replicated",
            "fence",
            "demote",
            "promote",
            "reverse",
            "check"
        ]
    );
    assert_eq!(order("failover"), ["fence", "promote", "check"]);
    assert_eq!(
        order("failback"),
        [
            "reverse",
            "wait_replicated",
            "verify",
            "wait_replicated",
            "fence",
            "demote",
            "promote",
            "reverse",
            "check"
        ]
    );
}

#[test]
fn stock_runbooks_run_to_success_when_every_step_succeeds() {
    for name in ["drill", "switchover", "failover", "failback"] {
        let path = library(name);
        let bytes = std::fs::read(&path).unwrap();
        let (rb, hash) = Runbook::load_hashed(&path).unwrap();
        assert_eq!(hash, runbook_hash(&bytes));
        let p = plan(&rb, &context(&required_params(rb.kind))).unwrap();
        let mut run = RunState::new("run-1", p, &hash, "alice", 0);
        let mut ran = Vec::new();
        let mut t = 0;
        loop {
            t += 1;
            let event = match next_action(&run) {
                NextAction::Done(status) => {
                    assert_eq!(status, RunStatus::Succeeded, "{name}");
                    break;
                }
                NextAction::Start { step, .. } | NextAction::RetryAt { step, .. } => {
                    RunEvent::StepStarted { step, at_ms: t }
                }
                NextAction::InFlight { step } => {
                    ran.push(run.plan.steps[step].id.clone());
                    RunEvent::StepSucceeded {
                        step,
                        at_ms: t,
                        output: String::new(),
                    }
                }
                NextAction::AwaitApproval { step, .. } => RunEvent::Approved {
                    step,
                    by: "bob".into(),
                    at_ms: t,
                },
            };
            record(&mut run, event).unwrap();
        }
        // Handlers and steps whose `when` is false (empty optional commands) did not run.
        assert!(
            !ran.iter().any(|id| id == "undrain" || id == "aborted"),
            "{name}: {ran:?}"
        );
        assert!(
            !ran.iter().any(|id| id == "start" || id == "drain"),
            "{name}: {ran:?}"
        );
        assert!(ran.iter().any(|id| id == "ready"), "{name}: {ran:?}");
    }
}

#[test]
fn ready_command_defaults_to_the_built_in_probe() {
    for name in ["switchover", "failover", "failback"] {
        let rb = Runbook::load(&library(name)).unwrap();
        let p = plan(&rb, &context(&[])).unwrap();
        let ready = p.params["ready_command"].to_string();
        assert!(ready.contains("\"$TANDEM_BIN\" probe"), "{name}: {ready}");
    }
}

#[test]
fn load_of_a_missing_file_names_it() {
    let err = Runbook::load(&library("nope")).unwrap_err();
    assert!(
        err.to_string().contains("nope.toml: cannot read runbook"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn broken_copy_of_a_stock_runbook_reports_positions() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(library("failover")).unwrap();
    // Move the fence after the promote.
    let broken = text
        .replacen("action = \"fence\"", "action = \"verify\"", 1)
        .replacen(
            "# 5. Start the service",
            "[[steps]]\nid = \"late-fence\"\naction = \"fence\"\n\n# 5. Start the service",
            1,
        );
    let path = dir.path().join("failover.toml");
    std::fs::write(&path, &broken).unwrap();
    let err = Runbook::load(&path).unwrap_err();
    let msgs: Vec<String> = err.diagnostics().iter().map(|d| d.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    assert!(msgs[0].contains("promote without a preceding fence in a failover runbook"));
    assert!(msgs[1].contains("fence after promote \"promote\""));
    let promote_line = broken
        .lines()
        .position(|l| l == "action = \"promote\"")
        .unwrap()
        + 1;
    assert!(
        msgs[0].starts_with(&format!("{}:{promote_line}:10: ", path.display())),
        "{}",
        msgs[0]
    );
}
