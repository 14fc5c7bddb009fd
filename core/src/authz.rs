//! Who is calling, as the authorization tables see it: the caller classes (a coordinator, the
//! replicator of a group's primary or replica site, another replicator, a person's role, a
//! certificate from another CA, no certificate) and how a checked certificate becomes one.
//! Pure: the tables themselves live beside the services they guard
//! (coordinator/src/server/table.rs, replicator/src/receive/authz.rs) and are rendered into
//! docs/SECURITY.md by a test.

use crate::certs::Role;
use crate::config::{NodeRole, Topology};
use crate::net::Caller;
use std::fmt;

/// A caller class: a column of the authorization tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerClass {
    /// A coordinator node of the topology.
    Coordinator,
    /// A replicator at the site that is the group's primary now (as the deciding side knows it).
    PrimaryReplicator,
    /// A replicator at the site that is the group's replica now.
    ReplicaReplicator,
    /// A replicator at neither of the group's sites, a replicator asking about no group, or a
    /// node certificate whose name the topology does not know.
    OtherReplicator,
    /// A person or tool with the operator role.
    Operator,
    /// A person or tool with the auditor role.
    Auditor,
    /// A person or tool with the viewer role.
    Viewer,
    /// A database's WAL client (`wal-client` certificate, `NAME@GROUP`): pushes the WAL of its
    /// own group and nothing else; the group is checked by the service beside the table.
    WalClient,
    /// A certificate that does not chain to the cluster's CA: refused by the TLS handshake
    /// before any call is read (so it cannot be recorded under a name).
    UnknownCa,
    /// No client certificate: refused by the TLS handshake, as [`CallerClass::UnknownCa`].
    NoCertificate,
    /// `[tls] insecure = true`: nobody is authenticated, every call is allowed and recorded
    /// under the actor [`UNAUTHENTICATED`].
    Unauthenticated,
}

/// The actor recorded for calls made without TLS (`[tls] insecure = true`).
pub const UNAUTHENTICATED: &str = "unauthenticated";

impl CallerClass {
    /// Every class, in the tables' column order.
    pub const ALL: [CallerClass; 11] = [
        CallerClass::Coordinator,
        CallerClass::PrimaryReplicator,
        CallerClass::ReplicaReplicator,
        CallerClass::OtherReplicator,
        CallerClass::Operator,
        CallerClass::Auditor,
        CallerClass::Viewer,
        CallerClass::WalClient,
        CallerClass::UnknownCa,
        CallerClass::NoCertificate,
        CallerClass::Unauthenticated,
    ];

    /// The column heading used in docs/SECURITY.md.
    pub fn as_str(self) -> &'static str {
        match self {
            CallerClass::Coordinator => "coordinator",
            CallerClass::PrimaryReplicator => "primary replicator",
            CallerClass::ReplicaReplicator => "replica replicator",
            CallerClass::OtherReplicator => "other replicator",
            CallerClass::Operator => "operator",
            CallerClass::Auditor => "auditor",
            CallerClass::Viewer => "viewer",
            CallerClass::WalClient => "WAL client",
            CallerClass::UnknownCa => "unknown CA",
            CallerClass::NoCertificate => "no certificate",
            CallerClass::Unauthenticated => "insecure (no TLS)",
        }
    }

    /// True for the classes the TLS handshake turns away before any call is read.
    pub fn refused_at_handshake(self) -> bool {
        matches!(self, CallerClass::UnknownCa | CallerClass::NoCertificate)
    }
}

impl fmt::Display for CallerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sites a group-scoped call is judged against: the group's primary and replica site as
/// the deciding side knows them now (the coordinators' state, or what a replica last heard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSites<'a> {
    /// The group the call is about: a replicator counts as its primary's or replica's only
    /// when the group is placed on it ([`Topology::host_for`]).
    pub group: &'a str,
    /// The site that is primary now.
    pub primary: &'a str,
    /// The site that is replica now.
    pub replica: &'a str,
    /// Where the group's data lives, by site, as the deciding side knows it (the
    /// coordinators' record, a planned move's target; what a replicator last heard): a
    /// site named here overrides the topology's placement ([`Topology::placed_host`]).
    pub hosts: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// The class of a checked caller. `sites` is `None` for calls about no group; a replicator is
/// then [`CallerClass::OtherReplicator`] (the tables treat the three replicator classes alike
/// for such calls).
pub fn classify(topo: &Topology, caller: &Caller, sites: Option<GroupSites<'_>>) -> CallerClass {
    match caller {
        Caller::Anonymous => CallerClass::Unauthenticated,
        Caller::Client { role, .. } => match role {
            Role::Operator => CallerClass::Operator,
            Role::Auditor => CallerClass::Auditor,
            Role::Viewer => CallerClass::Viewer,
            Role::WalClient => CallerClass::WalClient,
        },
        Caller::Node(name) => match topo.node(name) {
            Some(n) if n.role == NodeRole::Coordinator => CallerClass::Coordinator,
            Some(n) => match sites {
                Some(s) if !serves(topo, s, &n.site, &n.name) => CallerClass::OtherReplicator,
                Some(s) if n.site == s.primary => CallerClass::PrimaryReplicator,
                Some(s) if n.site == s.replica => CallerClass::ReplicaReplicator,
                _ => CallerClass::OtherReplicator,
            },
            None => CallerClass::OtherReplicator,
        },
    }
}

/// Whether replicator `node` at `site` is the host the group of `s` is placed on there.
fn serves(topo: &Topology, s: GroupSites<'_>, site: &str, node: &str) -> bool {
    let recorded = s.hosts.and_then(|h| h.get(site)).map(String::as_str);
    topo.placed_host(s.group, site, recorded)
        .is_some_and(|h| h.name == node)
}

/// The actor to record for a checked caller: the certificate's name (node or person/tool),
/// or [`UNAUTHENTICATED`] without TLS. Never a name the request carries.
pub fn actor_of(caller: &Caller) -> String {
    match caller {
        Caller::Anonymous => UNAUTHENTICATED.to_owned(),
        Caller::Node(n) => n.clone(),
        Caller::Client { name, .. } => name.clone(),
    }
}

/// One table as Markdown: a row per call, a column per class, `yes`/`no` cells, and a last
/// column for what the call is and any condition beyond the class. `allowed(call, class)`
/// decides each cell.
pub fn render_markdown<C: Copy>(
    calls: &[(C, &str, &str)],
    allowed: impl Fn(C, CallerClass) -> bool,
) -> String {
    let mut out = String::from("| call |");
    for c in CallerClass::ALL {
        out.push_str(&format!(" {c} |"));
    }
    out.push_str(" what / condition |\n|---|");
    for _ in CallerClass::ALL {
        out.push_str(":-:|");
    }
    out.push_str("---|\n");
    for (call, name, what) in calls {
        out.push_str(&format!("| `{name}` |"));
        for class in CallerClass::ALL {
            let cell = if class.refused_at_handshake() {
                "TLS"
            } else if allowed(*call, class) {
                "yes"
            } else {
                "no"
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push_str(&format!(" {what} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn topo() -> Topology {
        Topology::parse(
            include_str!("../../examples/two-sites.toml"),
            "two-sites.toml",
        )
        .expect("example topology parses")
    }

    #[test]
    fn certificates_become_classes_by_the_topology_and_the_group_sites() {
        let t = topo();
        let coord = t.coordinators()[0].node.name.clone();
        let rep = |site: &str| t.replicators_at(site)[0].name.clone();
        let g = &t.groups[0];
        let sites = GroupSites {
            group: &g.name,
            primary: &g.primary,
            replica: &g.replica,
            hosts: None,
        };
        let class = |c: Caller| classify(&t, &c, Some(sites));
        assert_eq!(class(Caller::Node(coord)), CallerClass::Coordinator);
        assert_eq!(
            class(Caller::Node(rep(&g.primary))),
            CallerClass::PrimaryReplicator
        );
        assert_eq!(
            class(Caller::Node(rep(&g.replica))),
            CallerClass::ReplicaReplicator
        );
        // Roles swap: the same certificate is judged by where the group stands now.
        let swapped = GroupSites {
            group: &g.name,
            primary: &g.replica,
            replica: &g.primary,
            hosts: None,
        };
        assert_eq!(
            classify(&t, &Caller::Node(rep(&g.replica)), Some(swapped)),
            CallerClass::PrimaryReplicator
        );
        assert_eq!(
            classify(&t, &Caller::Node(rep(&g.primary)), None),
            CallerClass::OtherReplicator
        );
        assert_eq!(
            class(Caller::Node("not-in-topology".into())),
            CallerClass::OtherReplicator
        );
        let client = |role| Caller::Client {
            name: "alice".into(),
            role,
        };
        assert_eq!(class(client(Role::Operator)), CallerClass::Operator);
        assert_eq!(class(client(Role::Auditor)), CallerClass::Auditor);
        assert_eq!(class(client(Role::Viewer)), CallerClass::Viewer);
        assert_eq!(class(Caller::Anonymous), CallerClass::Unauthenticated);
    }

    #[test]
    fn a_replicator_at_the_site_that_does_not_serve_the_group_is_another_replicator() {
        let text = format!(
            "{}\n[[nodes]]\nname = \"hanoi-rep-2\"\nsite = \"hanoi\"\nrole = \"replicator\"\n\
             listen = \"127.0.0.1:7999\"\ndata_dir = \"data/hanoi-rep-2\"\n",
            include_str!("../../examples/two-sites.toml")
        );
        let t = Topology::parse(&text, "three.toml").expect("topology parses");
        for g in t.groups.iter().filter(|g| g.primary == "hanoi") {
            let host = t.host_for(g, "hanoi").map(|n| n.name.clone());
            let sites = GroupSites {
                group: &g.name,
                primary: &g.primary,
                replica: &g.replica,
                hosts: None,
            };
            for n in t.replicators_at("hanoi") {
                let want = if host.as_deref() == Some(n.name.as_str()) {
                    CallerClass::PrimaryReplicator
                } else {
                    CallerClass::OtherReplicator
                };
                let got = classify(&t, &Caller::Node(n.name.clone()), Some(sites));
                assert_eq!(got, want, "{} for group {}", n.name, g.name);
            }
        }
    }

    #[test]
    fn a_recorded_host_overrides_the_topology_placement_at_its_site_only() {
        let text = format!(
            "{}\n[[nodes]]\nname = \"hcm-rep-2\"\nsite = \"hcm\"\nrole = \"replicator\"\n\
             listen = \"127.0.0.1:7999\"\ndata_dir = \"data/hcm-rep-2\"\n",
            include_str!("../../examples/two-sites.toml")
        );
        let t = Topology::parse(&text, "three.toml").expect("topology parses");
        let g = t
            .groups
            .iter()
            .find(|g| g.replica == "hcm")
            .expect("a group replicated to hcm");
        let placed = t
            .host_for(g, "hcm")
            .map(|n| n.name.clone())
            .expect("placed");
        let other = t
            .replicators_at("hcm")
            .into_iter()
            .find(|n| n.name != placed)
            .map(|n| n.name.clone())
            .expect("a second hcm replicator");
        // The coordinators recorded (or a planned move targets) the other host at hcm.
        let hosts: std::collections::BTreeMap<String, String> =
            [("hcm".to_string(), other.clone())].into();
        let sites = GroupSites {
            group: &g.name,
            primary: &g.primary,
            replica: &g.replica,
            hosts: Some(&hosts),
        };
        let class = |n: &str| classify(&t, &Caller::Node(n.to_string()), Some(sites));
        assert_eq!(class(&other), CallerClass::ReplicaReplicator);
        assert_eq!(class(&placed), CallerClass::OtherReplicator);
        // The primary site is not named: the topology still decides there.
        let primary = t
            .host_for(g, &g.primary)
            .map(|n| n.name.clone())
            .expect("placed");
        assert_eq!(class(&primary), CallerClass::PrimaryReplicator);
        // A recorded name that is no replicator at the site is ignored.
        let bogus: std::collections::BTreeMap<String, String> =
            [("hcm".to_string(), primary.clone())].into();
        let sites = GroupSites {
            hosts: Some(&bogus),
            ..sites
        };
        let got = classify(&t, &Caller::Node(placed.clone()), Some(sites));
        assert_eq!(got, CallerClass::ReplicaReplicator);
    }

    #[test]
    fn the_actor_is_the_certificate_never_the_request() {
        assert_eq!(actor_of(&Caller::Node("hcm-rep".into())), "hcm-rep");
        assert_eq!(
            actor_of(&Caller::Client {
                name: "alice".into(),
                role: Role::Operator
            }),
            "alice"
        );
        assert_eq!(actor_of(&Caller::Anonymous), UNAUTHENTICATED);
    }

    #[test]
    fn a_rendered_table_has_a_cell_per_class_and_marks_handshake_refusals() {
        let md = render_markdown(&[(1u8, "Pause", "pauses")], |_, c| {
            c == CallerClass::Operator
        });
        let row = md.lines().nth(2).unwrap();
        assert_eq!(row.matches("yes").count(), 1, "{md}");
        assert_eq!(row.matches("TLS").count(), 2, "{md}");
        assert_eq!(row.matches(" no ").count(), 8, "{md}");
    }
}
