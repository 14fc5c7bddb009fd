//! The controls mapping: for each audit control (ISO 22301 §8.5, ISO/IEC 27001:2022 A.5.30 and
//! A.8.14, SOC 2 A1.3, NIST SP 800-34/800-84, Decree 53/2022 data location), the evidence of
//! the folder that addresses it, what that evidence shows went wrong (findings) and what is
//! missing. Pure: the derived views in, typed rows out; the report puts them into words.
//!
//! The after-action part (reports, corrective actions, signed reviews) comes in as
//! [`AfterActionFacts`]; without it those items are listed as missing.

use super::fields::ok_of_status;
use super::model::{RpoRow, Run, RunKind, RunsDoc};
use super::residency::GroupResidency;
use std::collections::{BTreeMap, BTreeSet};

/// An audit control the mapping answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Control {
    /// ISO 22301 §8.5: exercises at planned intervals, post-exercise reports, improvement
    /// actions.
    Iso22301Exercises,
    /// ISO/IEC 27001:2022 A.5.30: ICT readiness, RTO/RPO targets tested.
    Iso27001IctReadiness,
    /// ISO/IEC 27001:2022 A.8.14: redundancy.
    Iso27001Redundancy,
    /// SOC 2 A1.3: recovery plan tested, recovery time and data loss recorded, gaps fixed.
    Soc2RecoveryTesting,
    /// NIST SP 800-34 / 800-84: test plan and after-action report.
    NistTestAndAfterAction,
    /// Decree 53/2022/NĐ-CP: where copies of the data live.
    Decree53DataLocation,
}

impl Control {
    /// Every control, in the order the report lists them.
    pub const ALL: [Control; 6] = [
        Control::Iso22301Exercises,
        Control::Iso27001IctReadiness,
        Control::Iso27001Redundancy,
        Control::Soc2RecoveryTesting,
        Control::NistTestAndAfterAction,
        Control::Decree53DataLocation,
    ];

    /// A stable id, used as the row's anchor (`control-iso22301-8.5`).
    pub fn id(self) -> &'static str {
        match self {
            Control::Iso22301Exercises => "control-iso22301-8.5",
            Control::Iso27001IctReadiness => "control-iso27001-a.5.30",
            Control::Iso27001Redundancy => "control-iso27001-a.8.14",
            Control::Soc2RecoveryTesting => "control-soc2-a1.3",
            Control::NistTestAndAfterAction => "control-nist-800-34",
            Control::Decree53DataLocation => "control-decree-53-2022",
        }
    }
}

/// Where in the report (or the folder) a piece of evidence is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// A run's row in its group's operations table (`#run-<id>`).
    Run(String),
    /// A group's section (`#g-<group>`).
    Group(String),
    /// A group's RPO chart (`#rpo-<group>`).
    Rpo(String),
    /// A group's verify results (`#verify-<group>`).
    Verify(String),
    /// The drill cadence tables (`#drill-cadence`).
    DrillCadence,
    /// The data residency table (`#residency`).
    Residency,
    /// The after-action section (`#after-action`).
    AfterAction,
}

impl Anchor {
    /// The fragment id (without `#`).
    pub fn fragment(&self) -> String {
        match self {
            Anchor::Run(id) => format!("run-{id}"),
            Anchor::Group(g) => format!("g-{g}"),
            Anchor::Rpo(g) => format!("rpo-{g}"),
            Anchor::Verify(g) => format!("verify-{g}"),
            Anchor::DrillCadence => "drill-cadence".into(),
            Anchor::Residency => "residency".into(),
            Anchor::AfterAction => "after-action".into(),
        }
    }
}

/// A site's data location judged against its group's allowed jurisdictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// The site's jurisdiction is one the group allows.
    Held,
    /// The site's jurisdiction is not one the group allows.
    Violated,
    /// Nothing to judge by: the group declares no allowed jurisdictions, or the site no
    /// jurisdiction.
    NotDeclared,
}

/// `jurisdiction` (of a site holding the data) against `allowed` (the group's rule).
pub fn location(allowed: &[String], jurisdiction: Option<&str>) -> Location {
    match jurisdiction {
        _ if allowed.is_empty() => Location::NotDeclared,
        None => Location::NotDeclared,
        Some(j) if allowed.iter().any(|a| a == j) => Location::Held,
        Some(_) => Location::Violated,
    }
}

/// What the after-action records of the window hold (filled by the after-action derivation;
/// `None` in [`ControlsInput`] when the folder has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterActionFacts {
    /// After-action reports (one per exercise).
    pub reports: usize,
    /// Corrective actions still open.
    pub actions_open: usize,
    /// Corrective actions closed.
    pub actions_closed: usize,
    /// Open corrective actions past their due date.
    pub actions_overdue: usize,
    /// Reviews signed by an auditor identity.
    pub signed_reviews: usize,
}

/// A piece of evidence addressing a control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A drill of the window.
    Drill {
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// Start (unix ms).
        start_ms: i64,
        /// How it ended, when known.
        outcome: Option<String>,
    },
    /// A group's drill schedule held over the window.
    CadenceHeld {
        /// Group.
        group: String,
        /// `drill_every`, ms.
        every_ms: u64,
        /// Drills in the window.
        drills: usize,
    },
    /// A group's RTO target (the business-impact target).
    RtoTarget {
        /// Group.
        group: String,
        /// Target, ms.
        ms: i64,
    },
    /// A group's RPO target.
    RpoTarget {
        /// Group.
        group: String,
        /// Target, ms.
        ms: i64,
    },
    /// A recovery whose RTO was measured and met its target (or had none to judge by).
    RtoMeasured {
        /// Drill, switchover or failover.
        kind: RunKind,
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// RTO achieved, ms.
        ms: i64,
        /// Target, when one was given.
        target_ms: Option<i64>,
    },
    /// A group's RPO samples.
    RpoSamples {
        /// Group.
        group: String,
        /// Samples.
        n: usize,
        /// Largest RPO, ms.
        max_ms: u64,
    },
    /// Verify results that matched.
    VerifyOk {
        /// Group.
        group: String,
        /// How many.
        n: usize,
    },
    /// The sites that held a group's data as primary or replica (two or more).
    SecondSite {
        /// Group.
        group: String,
        /// The sites.
        sites: Vec<String>,
    },
    /// A recovery with its data-loss window recorded.
    DataLoss {
        /// Failover or switchover.
        kind: RunKind,
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// RPO at the moment of loss, ms, when recorded.
        rpo_at_loss_ms: Option<i64>,
        /// Changes lost, when recorded.
        lost_changes: Option<u64>,
    },
    /// An exercise with its steps on a timeline (the test plan as run).
    Timeline {
        /// Kind.
        kind: RunKind,
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// Steps.
        steps: usize,
        /// Who ran it.
        actor: String,
    },
    /// An approval attached to an exercise (a participant).
    Approval {
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// Who approved.
        approver: String,
        /// Decision.
        decision: String,
    },
    /// A site that held a group's data, judged against the group's rule.
    Location {
        /// Group.
        group: String,
        /// Site.
        site: String,
        /// Its jurisdiction.
        jurisdiction: Option<String>,
        /// The group's allowed jurisdictions.
        allowed: Vec<String>,
        /// The verdict ([`Location::Held`] or [`Location::NotDeclared`]; a violation is a
        /// [`Finding`]).
        verdict: Location,
    },
    /// After-action reports.
    AfterActionReports {
        /// How many.
        n: usize,
    },
    /// Corrective actions.
    CorrectiveActions {
        /// Open.
        open: usize,
        /// Closed.
        closed: usize,
    },
    /// Signed after-action reviews.
    SignedReviews {
        /// How many.
        n: usize,
    },
}

/// Something the evidence shows went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A group's drills missed its schedule.
    CadenceMissed {
        /// Group.
        group: String,
        /// `drill_every`, ms.
        every_ms: u64,
        /// Gaps that missed.
        gaps: usize,
    },
    /// A recovery took longer than the target.
    RtoMissed {
        /// Kind.
        kind: RunKind,
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// RTO achieved, ms.
        ms: i64,
        /// Target, ms.
        target_ms: i64,
    },
    /// RPO samples over target.
    RpoOver {
        /// Group.
        group: String,
        /// Samples over target.
        over: usize,
        /// All samples.
        n: usize,
        /// Largest RPO, ms.
        max_ms: u64,
    },
    /// Verify results that did not match.
    VerifyFailed {
        /// Group.
        group: String,
        /// How many.
        n: usize,
    },
    /// An exercise that ended badly (`failed`, `not ready`, ...).
    RunFailed {
        /// Kind.
        kind: RunKind,
        /// Run id.
        run: String,
        /// Group.
        group: String,
        /// Outcome as recorded.
        outcome: String,
    },
    /// A site outside the group's allowed jurisdictions held its data.
    LocationViolated {
        /// Group.
        group: String,
        /// Site.
        site: String,
        /// Its jurisdiction.
        jurisdiction: Option<String>,
        /// The group's allowed jurisdictions.
        allowed: Vec<String>,
    },
    /// Corrective actions past due.
    ActionsOverdue {
        /// How many.
        n: usize,
    },
}

/// Something a control asks for that the folder does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No drill of the group in the window.
    NoDrill(String),
    /// The group has no `drill_every`.
    NoSchedule(String),
    /// The group has no RTO target.
    NoRtoTarget(String),
    /// The group has no RPO target.
    NoRpoTarget(String),
    /// No recovery of the group measured its RTO.
    NoRtoMeasured(String),
    /// No RPO samples for the group.
    NoRpoSamples(String),
    /// No verify result for the group.
    NoVerify(String),
    /// Only one site held the group's data.
    NoSecondSite(String),
    /// No drill, switchover or failover at all.
    NoRecoveryTest,
    /// No approval attached to any exercise.
    NoApproval,
    /// No after-action report.
    NoAfterAction,
    /// No corrective action.
    NoActions,
    /// No signed after-action review.
    NoSignedReview,
    /// The group declares no allowed jurisdictions.
    NoRule(String),
    /// A site holding restricted data declares no jurisdiction.
    SiteJurisdiction(String),
    /// No residency at all in the window.
    NoResidency,
}

/// How a control stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Evidence, no finding, nothing missing.
    Covered,
    /// Evidence and no finding, but something missing.
    Gaps,
    /// The evidence shows a failure.
    Findings,
    /// No evidence at all.
    NoEvidence,
}

/// One control with its evidence, findings and missing items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRow {
    /// The control.
    pub control: Control,
    /// Evidence addressing it.
    pub evidence: Vec<Evidence>,
    /// What the evidence shows went wrong.
    pub findings: Vec<Finding>,
    /// What is missing.
    pub missing: Vec<Missing>,
}

impl ControlRow {
    /// No evidence; else findings; else gaps; else covered.
    pub fn status(&self) -> Status {
        if self.evidence.is_empty() && self.findings.is_empty() {
            Status::NoEvidence
        } else if !self.findings.is_empty() {
            Status::Findings
        } else if !self.missing.is_empty() {
            Status::Gaps
        } else {
            Status::Covered
        }
    }

    fn new(control: Control) -> ControlRow {
        ControlRow {
            control,
            evidence: Vec::new(),
            findings: Vec::new(),
            missing: Vec::new(),
        }
    }
}

impl Evidence {
    /// Where the report shows it.
    pub fn anchor(&self) -> Option<Anchor> {
        Some(match self {
            Evidence::Drill { run, .. }
            | Evidence::RtoMeasured { run, .. }
            | Evidence::DataLoss { run, .. }
            | Evidence::Timeline { run, .. }
            | Evidence::Approval { run, .. } => Anchor::Run(run.clone()),
            Evidence::CadenceHeld { .. } => Anchor::DrillCadence,
            Evidence::RtoTarget { group, .. } | Evidence::RpoTarget { group, .. } => {
                Anchor::Group(group.clone())
            }
            Evidence::RpoSamples { group, .. } => Anchor::Rpo(group.clone()),
            Evidence::VerifyOk { group, .. } => Anchor::Verify(group.clone()),
            Evidence::SecondSite { .. } | Evidence::Location { .. } => Anchor::Residency,
            Evidence::AfterActionReports { .. }
            | Evidence::CorrectiveActions { .. }
            | Evidence::SignedReviews { .. } => Anchor::AfterAction,
        })
    }
}

impl Finding {
    /// Where the report shows it.
    pub fn anchor(&self) -> Option<Anchor> {
        Some(match self {
            Finding::CadenceMissed { .. } => Anchor::DrillCadence,
            Finding::RtoMissed { run, .. } | Finding::RunFailed { run, .. } => {
                Anchor::Run(run.clone())
            }
            Finding::RpoOver { group, .. } => Anchor::Rpo(group.clone()),
            Finding::VerifyFailed { group, .. } => Anchor::Verify(group.clone()),
            Finding::LocationViolated { .. } => Anchor::Residency,
            Finding::ActionsOverdue { .. } => Anchor::AfterAction,
        })
    }
}

/// What the mapping is derived from: the views of one export.
#[derive(Debug, Clone, Copy)]
pub struct ControlsInput<'a> {
    /// Every group of the export.
    pub groups: &'a BTreeSet<String>,
    /// Runs, approvals, verify results, residency, drill cadence.
    pub runs: &'a RunsDoc,
    /// RPO samples.
    pub rpo: &'a [RpoRow],
    /// RTO targets (group → ms).
    pub rto_targets_ms: &'a BTreeMap<String, i64>,
    /// RPO targets (group → ms), for groups whose samples carry none.
    pub rpo_targets_ms: &'a BTreeMap<String, i64>,
    /// `drill_every` (group → ms).
    pub drill_every_ms: &'a BTreeMap<String, u64>,
    /// The after-action records, when the folder has them.
    pub after_action: Option<&'a AfterActionFacts>,
}

/// Whether `r` is an exercise of recovery: a drill, switchover or failover.
fn is_recovery(r: &Run) -> bool {
    matches!(
        r.kind,
        RunKind::Drill | RunKind::Switchover | RunKind::Failover
    )
}

/// The recoveries (drills, switchovers, failovers) that belong to a group.
fn recoveries<'a>(input: &ControlsInput<'a>) -> impl Iterator<Item = (&'a Run, &'a str)> {
    input
        .runs
        .runs
        .iter()
        .filter(|r| is_recovery(r))
        .filter_map(|r| r.group.as_deref().map(|g| (r, g)))
}

/// Every control's row, in [`Control::ALL`] order.
pub fn controls(input: &ControlsInput<'_>) -> Vec<ControlRow> {
    Control::ALL
        .iter()
        .map(|c| match c {
            Control::Iso22301Exercises => exercises(input),
            Control::Iso27001IctReadiness => ict_readiness(input),
            Control::Iso27001Redundancy => redundancy(input),
            Control::Soc2RecoveryTesting => recovery_testing(input),
            Control::NistTestAndAfterAction => test_and_after_action(input),
            Control::Decree53DataLocation => data_location(input.runs, input.groups),
        })
        .collect()
}

/// The failure a run's outcome records, if it records one.
fn failed_outcome(r: &Run) -> Option<&str> {
    let o = r.outcome.as_deref()?;
    (ok_of_status(o) == Some(false) || o == "not ready").then_some(o)
}

fn run_failed(r: &Run, group: &str) -> Option<Finding> {
    failed_outcome(r).map(|o| Finding::RunFailed {
        kind: r.kind,
        run: r.id.clone(),
        group: group.to_string(),
        outcome: o.to_string(),
    })
}

/// After-action reports and actions as evidence, or as missing.
fn after_action(row: &mut ControlRow, aar: Option<&AfterActionFacts>, signed: bool) {
    let aar = aar.cloned().unwrap_or_default();
    if aar.reports > 0 {
        row.evidence
            .push(Evidence::AfterActionReports { n: aar.reports });
    } else {
        row.missing.push(Missing::NoAfterAction);
    }
    if aar.actions_open + aar.actions_closed > 0 {
        row.evidence.push(Evidence::CorrectiveActions {
            open: aar.actions_open,
            closed: aar.actions_closed,
        });
    } else {
        row.missing.push(Missing::NoActions);
    }
    if aar.actions_overdue > 0 {
        row.findings.push(Finding::ActionsOverdue {
            n: aar.actions_overdue,
        });
    }
    if signed {
        if aar.signed_reviews > 0 {
            row.evidence.push(Evidence::SignedReviews {
                n: aar.signed_reviews,
            });
        } else {
            row.missing.push(Missing::NoSignedReview);
        }
    }
}

/// ISO 22301 §8.5: drills, their cadence, post-exercise reports and improvement actions.
fn exercises(input: &ControlsInput<'_>) -> ControlRow {
    let mut row = ControlRow::new(Control::Iso22301Exercises);
    for g in input.groups {
        let drills: Vec<&Run> = input
            .runs
            .runs
            .iter()
            .filter(|r| r.kind == RunKind::Drill && r.group.as_deref() == Some(g.as_str()))
            .collect();
        if drills.is_empty() {
            row.missing.push(Missing::NoDrill(g.clone()));
        }
        for r in drills {
            row.evidence.push(Evidence::Drill {
                run: r.id.clone(),
                group: g.clone(),
                start_ms: r.start_ms,
                outcome: r.outcome.clone(),
            });
            row.findings.extend(run_failed(r, g));
        }
        match input.runs.drill_cadence.iter().find(|c| &c.group == g) {
            Some(c) if c.held => row.evidence.push(Evidence::CadenceHeld {
                group: g.clone(),
                every_ms: c.every_ms,
                drills: c.drills.len(),
            }),
            Some(c) => row.findings.push(Finding::CadenceMissed {
                group: g.clone(),
                every_ms: c.every_ms,
                gaps: c.gaps.iter().filter(|x| !x.held).count(),
            }),
            None if input.drill_every_ms.contains_key(g) => {}
            None => row.missing.push(Missing::NoSchedule(g.clone())),
        }
    }
    after_action(&mut row, input.after_action, false);
    row
}

/// A group's RPO samples and the target they are judged by.
fn rpo_of<'a>(input: &ControlsInput<'a>, g: &str) -> (Vec<&'a RpoRow>, Option<i64>) {
    let samples: Vec<&RpoRow> = input.rpo.iter().filter(|r| r.group == g).collect();
    let target = samples
        .iter()
        .rev()
        .find_map(|r| r.target_ms)
        .and_then(|t| i64::try_from(t).ok())
        .or_else(|| input.rpo_targets_ms.get(g).copied());
    (samples, target)
}

/// RPO samples of a group as evidence (and a finding when some were over target), or missing.
/// Counts samples, not rows: a summary row stands for all the samples it summarizes.
fn rpo_samples(row: &mut ControlRow, input: &ControlsInput<'_>, g: &str) {
    let (samples, _) = rpo_of(input, g);
    let Some((n, over, max_ms)) = super::rpo::rpo_totals(samples) else {
        row.missing.push(Missing::NoRpoSamples(g.to_string()));
        return;
    };
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let over = usize::try_from(over).unwrap_or(usize::MAX);
    row.evidence.push(Evidence::RpoSamples {
        group: g.to_string(),
        n,
        max_ms,
    });
    if over > 0 {
        row.findings.push(Finding::RpoOver {
            group: g.to_string(),
            over,
            n,
            max_ms,
        });
    }
}

/// A recovery's measured RTO: evidence when met or unjudged, a finding when missed.
fn rto_measured(row: &mut ControlRow, r: &Run, g: &str) {
    let Some(ms) = r.rto_ms else { return };
    match (r.rto_met, r.rto_target_ms) {
        (Some(false), Some(target_ms)) => row.findings.push(Finding::RtoMissed {
            kind: r.kind,
            run: r.id.clone(),
            group: g.to_string(),
            ms,
            target_ms,
        }),
        _ => row.evidence.push(Evidence::RtoMeasured {
            kind: r.kind,
            run: r.id.clone(),
            group: g.to_string(),
            ms,
            target_ms: r.rto_target_ms,
        }),
    }
}

/// ISO/IEC 27001 A.5.30: RTO/RPO targets per group, and recoveries and samples measuring them.
fn ict_readiness(input: &ControlsInput<'_>) -> ControlRow {
    let mut row = ControlRow::new(Control::Iso27001IctReadiness);
    for g in input.groups {
        match input.rto_targets_ms.get(g) {
            Some(&ms) if ms > 0 => row.evidence.push(Evidence::RtoTarget {
                group: g.clone(),
                ms,
            }),
            _ => row.missing.push(Missing::NoRtoTarget(g.clone())),
        }
        match rpo_of(input, g).1 {
            Some(ms) => row.evidence.push(Evidence::RpoTarget {
                group: g.clone(),
                ms,
            }),
            None => row.missing.push(Missing::NoRpoTarget(g.clone())),
        }
        let mut measured = false;
        for (r, _) in recoveries(input).filter(|(_, rg)| *rg == g.as_str()) {
            measured |= r.rto_ms.is_some();
            rto_measured(&mut row, r, g);
        }
        if !measured {
            row.missing.push(Missing::NoRtoMeasured(g.clone()));
        }
        rpo_samples(&mut row, input, g);
    }
    row
}

/// The sites that held `g`'s data as primary or replica.
fn copies<'a>(residency: &'a [GroupResidency], g: &str) -> Vec<&'a str> {
    residency
        .iter()
        .filter(|r| r.group == g)
        .flat_map(|r| r.sites.iter())
        .filter(|h| h.held_as.iter().any(|w| w == "primary" || w == "replica"))
        .map(|h| h.site.as_str())
        .collect()
}

/// ISO/IEC 27001 A.8.14: a second site holds each group's data, replication measured and
/// verified.
fn redundancy(input: &ControlsInput<'_>) -> ControlRow {
    let mut row = ControlRow::new(Control::Iso27001Redundancy);
    for g in input.groups {
        let sites = copies(&input.runs.residency, g);
        if sites.len() >= 2 {
            row.evidence.push(Evidence::SecondSite {
                group: g.clone(),
                sites: sites.iter().map(|s| s.to_string()).collect(),
            });
        } else {
            row.missing.push(Missing::NoSecondSite(g.clone()));
        }
        rpo_samples(&mut row, input, g);
        let results = input
            .runs
            .verify_results
            .iter()
            .filter(|v| v.group.as_deref() == Some(g.as_str()));
        let (ok, bad) = results.fold((0, 0), |(a, b), v| match v.ok {
            Some(true) => (a + 1, b),
            Some(false) => (a, b + 1),
            None => (a, b),
        });
        if ok > 0 {
            row.evidence.push(Evidence::VerifyOk {
                group: g.clone(),
                n: ok,
            });
        }
        if bad > 0 {
            row.findings.push(Finding::VerifyFailed {
                group: g.clone(),
                n: bad,
            });
        }
        if ok + bad == 0 {
            row.missing.push(Missing::NoVerify(g.clone()));
        }
    }
    row
}

/// SOC 2 A1.3: recoveries tested with their recovery time and data loss, gaps fixed.
fn recovery_testing(input: &ControlsInput<'_>) -> ControlRow {
    let mut row = ControlRow::new(Control::Soc2RecoveryTesting);
    let mut any = false;
    for (r, g) in recoveries(input) {
        any = true;
        rto_measured(&mut row, r, g);
        row.findings.extend(run_failed(r, g));
        let lost_changes = r
            .data_loss_window
            .as_ref()
            .and_then(|l| l.get("lost_changes"))
            .and_then(serde_json::Value::as_u64);
        let rpo_at_loss_ms = r.rpo_at_loss_ms.or_else(|| {
            r.data_loss_window
                .as_ref()
                .and_then(|l| l.get("rpo_ms"))
                .and_then(serde_json::Value::as_i64)
        });
        if r.data_loss_window.is_some() || r.rpo_at_loss_ms.is_some() {
            row.evidence.push(Evidence::DataLoss {
                kind: r.kind,
                run: r.id.clone(),
                group: g.to_string(),
                rpo_at_loss_ms,
                lost_changes,
            });
        }
    }
    if !any {
        row.missing.push(Missing::NoRecoveryTest);
    }
    after_action(&mut row, input.after_action, false);
    row
}

/// NIST SP 800-34 / 800-84: exercises run to a plan (steps on a timeline), participants
/// (approvals), the after-action report, corrective actions and its sign-off.
fn test_and_after_action(input: &ControlsInput<'_>) -> ControlRow {
    let mut row = ControlRow::new(Control::NistTestAndAfterAction);
    let mut any = false;
    let mut approved = false;
    for (r, g) in recoveries(input) {
        any = true;
        if !r.steps.is_empty() {
            row.evidence.push(Evidence::Timeline {
                kind: r.kind,
                run: r.id.clone(),
                group: g.to_string(),
                steps: r.steps.len(),
                actor: r.actor.clone(),
            });
        }
        for a in &r.approvals {
            approved = true;
            row.evidence.push(Evidence::Approval {
                run: r.id.clone(),
                group: g.to_string(),
                approver: a.approver.clone(),
                decision: a.decision.clone(),
            });
        }
    }
    if !any {
        row.missing.push(Missing::NoRecoveryTest);
    } else if !approved {
        row.missing.push(Missing::NoApproval);
    }
    after_action(&mut row, input.after_action, true);
    row
}

/// Decree 53/2022: every site that held each group's data, against its allowed jurisdictions.
pub fn data_location(runs: &RunsDoc, groups: &BTreeSet<String>) -> ControlRow {
    let mut row = ControlRow::new(Control::Decree53DataLocation);
    if runs.residency.is_empty() && !groups.is_empty() {
        row.missing.push(Missing::NoResidency);
    }
    for gr in &runs.residency {
        if gr.allowed_jurisdictions.is_empty() {
            row.missing.push(Missing::NoRule(gr.group.clone()));
        }
        for h in &gr.sites {
            let verdict = location(&gr.allowed_jurisdictions, h.jurisdiction.as_deref());
            if verdict == Location::Violated {
                row.findings.push(Finding::LocationViolated {
                    group: gr.group.clone(),
                    site: h.site.clone(),
                    jurisdiction: h.jurisdiction.clone(),
                    allowed: gr.allowed_jurisdictions.clone(),
                });
                continue;
            }
            if h.jurisdiction.is_none() && !gr.allowed_jurisdictions.is_empty() {
                row.missing.push(Missing::SiteJurisdiction(h.site.clone()));
            }
            row.evidence.push(Evidence::Location {
                group: gr.group.clone(),
                site: h.site.clone(),
                jurisdiction: h.jurisdiction.clone(),
                allowed: gr.allowed_jurisdictions.clone(),
                verdict,
            });
        }
    }
    row
}

#[cfg(test)]
#[path = "controls_tests.rs"]
mod tests;
