//! `tandem action add|assign|close|list`: corrective actions after an exercise, typed calls
//! to the coordinators (`AddAction`, `AssignAction`, `CloseAction`, `Actions`). The audit
//! chain records the certificate that made each call; the evidence export derives their state
//! (open, closed, overdue) from those records.

use crate::cmd::ops::{connect, Target};
use crate::cmd::status::{coordinator_addrs, runtime};
use anyhow::{anyhow, Result};
use clap::{Args as ClapArgs, Subcommand};
use tandem_core::proto::{
    ActionsRequest, AddActionRequest, AssignActionRequest, CloseActionRequest, CorrectiveAction,
};

/// `tandem action ...`.
#[derive(Debug, Subcommand)]
pub enum ActionCmd {
    /// Add a corrective action against a run (exercise) of a group; prints its id (`A-1`).
    Add(AddArgs),
    /// Give an open action to a new owner.
    Assign(AssignArgs),
    /// Close an action, saying what was done.
    Close(CloseArgs),
    /// List the actions (open ones past their due date are marked overdue).
    List(ListArgs),
}

/// Arguments of `tandem action add`.
#[derive(Debug, ClapArgs)]
pub struct AddArgs {
    /// The protection group.
    #[arg(long)]
    pub group: String,
    /// The run the action follows from (`tandem runs`).
    #[arg(long = "run")]
    pub run_id: String,
    /// What is to be done.
    #[arg(long)]
    pub title: String,
    /// Who is to do it.
    #[arg(long)]
    pub owner: String,
    /// Due date, YYYY-MM-DD.
    #[arg(long)]
    pub due: String,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `tandem action assign`.
#[derive(Debug, ClapArgs)]
pub struct AssignArgs {
    /// The action (`A-1`).
    pub id: String,
    /// Its new owner.
    #[arg(long)]
    pub owner: String,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `tandem action close`.
#[derive(Debug, ClapArgs)]
pub struct CloseArgs {
    /// The action (`A-1`).
    pub id: String,
    /// What was done.
    #[arg(long)]
    pub note: String,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `tandem action list`.
#[derive(Debug, ClapArgs)]
pub struct ListArgs {
    /// Only this group's actions.
    #[arg(long)]
    pub group: Option<String>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `tandem action ...`.
///
/// # Errors
/// No coordinator answers, or the call is refused (the message says why).
pub fn run(cmd: ActionCmd) -> Result<()> {
    match cmd {
        ActionCmd::Add(a) => {
            let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
            let req = AddActionRequest {
                group: a.group,
                run_id: a.run_id,
                title: a.title,
                owner: a.owner,
                due: a.due,
            };
            let r = runtime()?.block_on(async {
                let mut c = connect(&addrs).await?;
                c.add_action(req)
                    .await
                    .map_err(|s| anyhow!("action add: {}", s.message()))
            })?;
            print_changed("added", r.into_inner().action)
        }
        ActionCmd::Assign(a) => {
            let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
            let req = AssignActionRequest {
                id: a.id,
                owner: a.owner,
            };
            let r = runtime()?.block_on(async {
                let mut c = connect(&addrs).await?;
                c.assign_action(req)
                    .await
                    .map_err(|s| anyhow!("action assign: {}", s.message()))
            })?;
            print_changed("assigned", r.into_inner().action)
        }
        ActionCmd::Close(a) => {
            let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
            let req = CloseActionRequest {
                id: a.id,
                note: a.note,
            };
            let r = runtime()?.block_on(async {
                let mut c = connect(&addrs).await?;
                c.close_action(req)
                    .await
                    .map_err(|s| anyhow!("action close: {}", s.message()))
            })?;
            print_changed("closed", r.into_inner().action)
        }
        ActionCmd::List(a) => list(a),
    }
}

fn print_changed(what: &str, action: Option<CorrectiveAction>) -> Result<()> {
    let a = action.ok_or_else(|| anyhow!("the coordinators answered no action"))?;
    println!("{what} {}: {}", a.id, line(&a, &today()));
    Ok(())
}

/// Today's date (UTC) as `YYYY-MM-DD`, which compares as a string with due dates.
fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// The state word of an action on `today`: `closed`, `overdue` (open, due before today) or
/// `open`. Pure.
pub fn state_word(a: &CorrectiveAction, today: &str) -> &'static str {
    if a.closed {
        "closed"
    } else if a.due.as_str() < today {
        "overdue"
    } else {
        "open"
    }
}

/// One line of the list. Pure.
fn line(a: &CorrectiveAction, today: &str) -> String {
    let mut s = format!(
        "{:<7} {:<8} group {} run {} owner {} due {}: {}",
        a.id,
        state_word(a, today),
        a.group,
        a.run_id,
        a.owner,
        a.due,
        a.title
    );
    if a.closed {
        s.push_str(&format!(" (closed by {}: {})", a.closed_by, a.close_note));
    }
    s
}

fn list(a: ListArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let req = ActionsRequest {
        group: a.group.unwrap_or_default(),
    };
    let actions = runtime()?.block_on(async {
        let mut c = connect(&addrs).await?;
        c.actions(req)
            .await
            .map(|r| r.into_inner().actions)
            .map_err(|s| anyhow!("action list: {}", s.message()))
    })?;
    let today = today();
    for x in &actions {
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "id": x.id, "group": x.group, "run_id": x.run_id, "title": x.title,
                    "owner": x.owner, "due": x.due, "state": state_word(x, &today),
                    "opened_by": x.opened_by, "opened_ms": x.opened_ms,
                    "closed_by": x.closed_by, "closed_ms": x.closed_ms, "close_note": x.close_note,
                })
            );
        } else {
            println!("{}", line(x, &today));
        }
    }
    if actions.is_empty() && !a.json {
        println!("no corrective actions");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_action_past_its_due_date_is_overdue_and_a_closed_one_never() {
        let mut a = CorrectiveAction {
            due: "2027-01-31".into(),
            ..CorrectiveAction::default()
        };
        for (i, (today, want)) in [
            ("2027-01-30", "open"),
            ("2027-01-31", "open"),
            ("2027-02-01", "overdue"),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(state_word(&a, today), want, "#{i}");
        }
        a.closed = true;
        assert_eq!(state_word(&a, "2099-01-01"), "closed");
    }
}
