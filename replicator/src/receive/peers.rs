//! What this replicator knows of each group's peers: the primary site, the replica site and the
//! epoch the coordinators last gave it ([`Views`], filled by the heartbeat loop), and the
//! checks the `Replication` service makes with them: who the caller is for a call
//! ([`Gate::authorize`]) and where a `Recover` may write ([`check_recover_out`]).

use super::authz::{allowed, ReplicationCall};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};
use tandem_core::authz::{actor_of, classify, CallerClass, GroupSites};
use tandem_core::certs::{wal_client_group, Role};
use tandem_core::config::{NodeRole, Topology};
use tandem_core::ids::Epoch;
use tandem_core::net::Caller;
use tonic::Status;

/// One group as the coordinators last described it to this replicator (a `GroupLease` of a
/// heartbeat reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The site that is the group's primary in `epoch`.
    pub primary: String,
    /// The site that is its replica.
    pub replica: String,
    /// The group's epoch.
    pub epoch: Epoch,
    /// Where the group's data lives, by site, as the coordinators record it (a planned
    /// move's target included); a site not named here is the topology's placement.
    pub hosts: std::collections::BTreeMap<String, String>,
}

/// The latest [`GroupView`] of every group this replicator heard of, shared between the
/// heartbeat loop (writer) and the `Replication` service (reader).
#[derive(Debug, Clone, Default)]
pub struct Views(Arc<RwLock<HashMap<String, GroupView>>>);

impl Views {
    /// An empty set: every group-scoped check answers `unavailable` until the heartbeat
    /// fills it.
    pub fn new() -> Views {
        Views::default()
    }

    /// Records what the coordinators said of `group`. An answer with an older epoch than one
    /// already heard (a lagging coordinator) is ignored: the view never goes back.
    pub fn learn(&self, group: &str, view: GroupView) {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        match m.get(group) {
            Some(old) if old.epoch > view.epoch => {}
            _ => {
                m.insert(group.to_owned(), view);
            }
        }
    }

    /// The latest view of `group`, if any.
    pub fn get(&self, group: &str) -> Option<GroupView> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .cloned()
    }

    /// The host the coordinators last recorded for `group`'s data at `site`, if any.
    pub fn host_at(&self, group: &str, site: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .and_then(|v| v.hosts.get(site).cloned())
    }

    /// The view of `group`, or `unavailable` (the caller retries) when the coordinators have
    /// not described it yet.
    ///
    /// # Errors
    /// `unavailable` naming the group.
    pub fn require(&self, group: &str) -> Result<GroupView, Status> {
        self.get(group).ok_or_else(|| {
            Status::unavailable(format!(
                "this replicator has not heard the coordinators yet for group {group:?}"
            ))
        })
    }
}

/// The authorization inputs of the service: the topology (node certificates become classes
/// by it) and the group views (`None`: a service without a node around it, as in unit tests,
/// judges replicators without sites and bounds no epoch).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub(super) topo: Option<Arc<Topology>>,
    pub(super) views: Option<Views>,
}

impl Gate {
    /// Refuses `caller` for `call` about `group` (empty: about no group) unless the table
    /// allows its class; returns the group's view when one was needed and known. A refusal is
    /// `permission_denied` naming the certificate and the call, and is logged.
    ///
    /// # Errors
    /// `permission_denied`, or `unavailable` when the caller is a replicator judged by the
    /// group's sites and the coordinators have not described the group yet.
    pub fn authorize(
        &self,
        call: ReplicationCall,
        caller: &Caller,
        group: &str,
    ) -> Result<Option<GroupView>, Status> {
        let view = match (&self.views, self.needs_sites(call, caller)) {
            (Some(v), true) => Some(v.require(group)?),
            _ => None,
        };
        let class = self.class(caller, group, view.as_ref());
        let actor = actor_of(caller);
        if class == CallerClass::WalClient
            && call == ReplicationCall::ArchiveWal
            && wal_client_group(&actor) != Some(group)
        {
            tracing::warn!(%actor, %call, %group, "refused Replication call: another group's WAL client");
            return Err(Status::permission_denied(format!(
                "certificate {actor} (WAL client) may push WAL only for group {}, not for group {group}",
                wal_client_group(&actor).unwrap_or("(none: its name is not NAME@GROUP)")
            )));
        }
        if allowed(call, class) {
            return Ok(view);
        }
        tracing::warn!(%actor, %class, %call, %group, "refused Replication call");
        Err(Status::permission_denied(format!(
            "certificate {actor} ({class}) may not call Replication.{call}{}",
            if group.is_empty() {
                String::new()
            } else {
                format!(" for group {group}")
            }
        )))
    }

    /// True when `caller` is a replicator node of the topology and `call` depends on sites.
    fn needs_sites(&self, call: ReplicationCall, caller: &Caller) -> bool {
        let Caller::Node(name) = caller else {
            return false;
        };
        let replicator = self
            .topo
            .as_ref()
            .and_then(|t| t.node(name))
            .is_some_and(|n| n.role == NodeRole::Replicator);
        replicator && call.judged_by_sites()
    }

    fn class(&self, caller: &Caller, group: &str, view: Option<&GroupView>) -> CallerClass {
        let sites = view.map(|v| GroupSites {
            group,
            primary: &v.primary,
            replica: &v.replica,
            hosts: Some(&v.hosts),
        });
        match (&self.topo, caller) {
            (Some(t), _) => classify(t, caller, sites),
            // Without a topology a node certificate cannot be placed.
            (None, Caller::Node(_)) => CallerClass::OtherReplicator,
            (None, Caller::Anonymous) => CallerClass::Unauthenticated,
            (None, Caller::Client { role, .. }) => match role {
                Role::Operator => CallerClass::Operator,
                Role::Auditor => CallerClass::Auditor,
                Role::Viewer => CallerClass::Viewer,
                Role::WalClient => CallerClass::WalClient,
            },
        }
    }
}

/// Refuses a `Recover` into `out` unless it lies strictly inside `root`, both judged after
/// resolving `..` and the symlinks of the part of each path that exists.
///
/// # Errors
/// `permission_denied` naming the out_dir and the root; `invalid_argument` for a relative
/// out_dir.
pub fn check_recover_out(out: &Path, root: &Path) -> Result<(), Status> {
    let refuse = |why: &str| {
        tracing::warn!(out_dir = %out.display(), root = %root.display(), "refused Recover: {why}");
        Status::permission_denied(format!(
            "Recover out_dir {} is outside this replicator's recover root {} ({why}); set \
             recover_root of the node, or leave out_dir empty to recover under it",
            out.display(),
            root.display()
        ))
    };
    if !out.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "Recover out_dir {} must be an absolute path",
            out.display()
        )));
    }
    let o = resolve(out).map_err(|e| refuse(&e))?;
    let r = resolve(root).map_err(|e| refuse(&e))?;
    if o != r && o.starts_with(&r) {
        Ok(())
    } else {
        Err(refuse(&format!("it resolves to {}", o.display())))
    }
}

/// `path` with its longest existing prefix canonicalized (symlinks and `..` resolved) and the
/// rest appended, `..` and `.` of the rest applied lexically.
fn resolve(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => {
                existing = c;
                break;
            }
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_owned()) else {
                    // `..` or the root itself does not resolve: judge lexically below.
                    break;
                };
                rest.push(name);
                if !existing.pop() {
                    break;
                }
            }
        }
    }
    let mut out = existing;
    for part in rest.iter().rev() {
        out.push(part);
    }
    let mut clean = PathBuf::new();
    for c in out.components() {
        match c {
            Component::ParentDir => {
                if !clean.pop() {
                    return Err(format!("{} climbs above /", path.display()));
                }
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_view_never_goes_back_to_an_older_epoch() {
        let v = Views::new();
        assert_eq!(v.require("g").unwrap_err().code(), tonic::Code::Unavailable);
        let at = |e: u64, p: &str| GroupView {
            primary: p.into(),
            replica: "b".into(),
            epoch: Epoch(e),
            hosts: Default::default(),
        };
        v.learn("g", at(3, "a"));
        v.learn("g", at(2, "x"));
        assert_eq!(v.get("g"), Some(at(3, "a")));
        v.learn("g", at(4, "b"));
        assert_eq!(v.get("g").unwrap().epoch, Epoch(4));
    }

    #[test]
    fn recover_out_dirs_outside_the_root_are_refused_after_resolving() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("recovered");
        std::fs::create_dir_all(&root).unwrap();
        let outside = d.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let cases: [(PathBuf, bool); 7] = [
            (root.join("g/copy"), true),
            (root.join("new/deeper/copy"), true),
            (root.clone(), false),
            (root.join("../elsewhere/x"), false),
            (root.join("nope/../../elsewhere"), false),
            (root.join("link/x"), false),
            (PathBuf::from("/etc/tandem"), false),
        ];
        for (i, (out, ok)) in cases.iter().enumerate() {
            let got = check_recover_out(out, &root);
            assert_eq!(got.is_ok(), *ok, "#{i}: {} -> {got:?}", out.display());
            if let Err(e) = got {
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "#{i}");
                assert!(e.message().contains(&out.display().to_string()), "#{i}");
                assert!(e.message().contains(&root.display().to_string()), "#{i}");
            }
        }
        // A root that does not exist yet is judged by its existing prefix.
        let later = d.path().join("later");
        assert!(check_recover_out(&later.join("x"), &later).is_ok());
        assert!(check_recover_out(Path::new("rel"), &root).is_err());
    }
}
