//! Corrective actions (`AddAction`, `AssignAction`, `CloseAction`, `Actions`) and the
//! auditor's `SignReview`: each a typed request, authorized against the table, turned into a
//! state-machine command with the certificate's identity as actor, and committed on the
//! leader (a follower forwards it).

use super::authz::forwarded;
use super::table::Call;
use crate::handle::coordinator::Coordinator;
use crate::state::{is_due_date, Command, CorrectiveAction as Held};
use serde_json::Value;
use tandem_core::proto::{
    ActionReply, ActionsReply, ActionsRequest, AddActionRequest, AssignActionRequest,
    CloseActionRequest, CorrectiveAction, SignReviewReply, SignReviewRequest,
};
use tonic::{Request, Response, Status};

/// An action as the API answers it.
pub(crate) fn to_proto(a: &Held) -> CorrectiveAction {
    let closed = a.closed.as_ref();
    CorrectiveAction {
        id: a.id.clone(),
        group: a.group.clone(),
        run_id: a.run_id.clone(),
        title: a.title.clone(),
        owner: a.owner.clone(),
        due: a.due.clone(),
        opened_by: a.opened_by.clone(),
        opened_ms: a.opened_ms,
        closed: closed.is_some(),
        closed_by: closed.map(|c| c.by.clone()).unwrap_or_default(),
        closed_ms: closed.map_or(0, |c| c.at_ms),
        close_note: closed.map(|c| c.note.clone()).unwrap_or_default(),
    }
}

/// The `add_action` command for an `AddAction` call. Pure.
///
/// # Errors
/// `InvalidArgument` naming the empty or malformed field.
pub fn add_action_command(r: &AddActionRequest, actor: &str) -> Result<Command, Status> {
    for (field, v) in [
        ("group", &r.group),
        ("run_id", &r.run_id),
        ("title", &r.title),
        ("owner", &r.owner),
    ] {
        if v.trim().is_empty() {
            return Err(Status::invalid_argument(format!(
                "AddAction: {field} is empty"
            )));
        }
    }
    if !is_due_date(&r.due) {
        return Err(Status::invalid_argument(format!(
            "AddAction: due {:?} is not a date YYYY-MM-DD",
            r.due
        )));
    }
    Ok(Command::AddAction {
        at_ms: 0,
        actor: actor.to_owned(),
        group: r.group.clone(),
        run_id: r.run_id.clone(),
        title: r.title.clone(),
        owner: r.owner.clone(),
        due: r.due.clone(),
    })
}

/// The action id an `action_changed` event names.
fn changed_id(events: &Value) -> Option<String> {
    events.as_array()?.iter().find_map(|e| {
        (e.get("event")?.as_str()? == "action_changed")
            .then(|| e.get("id")?.as_str().map(str::to_owned))
            .flatten()
    })
}

impl Coordinator {
    /// Commits `cmd` and answers the action it changed, as the state now holds it.
    async fn commit_action(&self, cmd: Command) -> Result<Response<ActionReply>, Status> {
        let events = self.propose_cmd(cmd).await?;
        let id = changed_id(&events)
            .ok_or_else(|| Status::internal("the action change reported no action"))?;
        let action = self.read(|s| s.actions().get(&id).map(to_proto));
        Ok(Response::new(ActionReply {
            action,
            index: self.commit_index(),
        }))
    }

    /// `AddAction`.
    pub(crate) async fn add_action_call(
        &self,
        req: Request<AddActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        let who = self.gate(&req, Call::AddAction, None).await?;
        let r = req.into_inner();
        let cmd = add_action_command(&r, &who.actor)?;
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.add_action(forwarded(r, &who)).await;
        }
        self.commit_action(cmd).await
    }

    /// `AssignAction`.
    pub(crate) async fn assign_action_call(
        &self,
        req: Request<AssignActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        let who = self.gate(&req, Call::AssignAction, None).await?;
        let r = req.into_inner();
        if r.owner.trim().is_empty() {
            return Err(Status::invalid_argument("AssignAction: owner is empty"));
        }
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.assign_action(forwarded(r, &who)).await;
        }
        self.commit_action(Command::AssignAction {
            at_ms: 0,
            actor: who.actor,
            id: r.id,
            owner: r.owner,
        })
        .await
    }

    /// `CloseAction`.
    pub(crate) async fn close_action_call(
        &self,
        req: Request<CloseActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        let who = self.gate(&req, Call::CloseAction, None).await?;
        let r = req.into_inner();
        if r.note.trim().is_empty() {
            return Err(Status::invalid_argument(
                "CloseAction: note is empty (say what was done)",
            ));
        }
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.close_action(forwarded(r, &who)).await;
        }
        self.commit_action(Command::CloseAction {
            at_ms: 0,
            actor: who.actor,
            id: r.id,
            note: r.note,
        })
        .await
    }

    /// `Actions`: from this node's committed state (a follower may lag by a few entries).
    pub(crate) async fn actions_call(
        &self,
        req: Request<ActionsRequest>,
    ) -> Result<Response<ActionsReply>, Status> {
        self.gate(&req, Call::Actions, None).await?;
        let group = req.into_inner().group;
        let mut actions: Vec<CorrectiveAction> = self.read(|s| {
            s.actions()
                .values()
                .filter(|a| group.is_empty() || a.group == group)
                .map(to_proto)
                .collect()
        });
        actions.sort_by_key(|a| (a.opened_ms, action_number(&a.id)));
        Ok(Response::new(ActionsReply { actions }))
    }

    /// `SignReview`: only an auditor gets past the gate.
    pub(crate) async fn sign_review_call(
        &self,
        req: Request<SignReviewRequest>,
    ) -> Result<Response<SignReviewReply>, Status> {
        let who = self.gate(&req, Call::SignReview, None).await?;
        let r = req.into_inner();
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.sign_review(forwarded(r, &who)).await;
        }
        let signed_by = who.actor.clone();
        self.propose_cmd(Command::SignReview {
            at_ms: 0,
            actor: who.actor,
            run_id: r.run_id.clone(),
            note: r.note,
        })
        .await?;
        Ok(Response::new(SignReviewReply {
            index: self.commit_index(),
            run_id: r.run_id,
            signed_by,
        }))
    }
}

/// `n` of `A-n` (0 for anything else), to list actions in the order they were added.
fn action_number(id: &str) -> u64 {
    id.strip_prefix("A-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(due: &str, title: &str) -> AddActionRequest {
        AddActionRequest {
            group: "vol".into(),
            run_id: "r1".into(),
            title: title.into(),
            owner: "bob".into(),
            due: due.into(),
        }
    }

    #[test]
    fn add_action_names_the_field_it_refuses_and_takes_the_actor_from_the_caller() {
        for (i, (r, want)) in [
            (req("2027-13-01", "t"), "due"),
            (req("tomorrow", "t"), "due"),
            (req("2027-01-31", " "), "title is empty"),
        ]
        .into_iter()
        .enumerate()
        {
            let err = add_action_command(&r, "alice").unwrap_err();
            assert!(
                err.message().contains(want),
                "#{i}: expect {want}, got {err}"
            );
        }
        match add_action_command(&req("2027-01-31", "t"), "CN=alice").unwrap() {
            Command::AddAction { actor, due, .. } => {
                assert_eq!(actor, "CN=alice");
                assert_eq!(due, "2027-01-31");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn actions_list_in_the_order_they_were_added() {
        let mut ids = vec!["A-10", "A-2", "A-1"];
        ids.sort_by_key(|id| action_number(id));
        assert_eq!(ids, vec!["A-1", "A-2", "A-10"]);
    }
}
