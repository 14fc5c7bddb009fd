//! The scenario format's tests: parsing, validation, the timeline.

use super::*;

const OK: &str = r#"
name = "x"
mode = "sync"
duration = "8s"
checks = ["no_lost_acknowledged_writes"]
[[faults]]
at = "3s"
action = "kill"
target = "site:primary"
"#;

#[test]
fn valid_scenario_parses() {
    let s = Scenario::parse(OK, "x.toml").unwrap();
    assert_eq!(s.faults[0].action, FaultAction::Kill);
    assert_eq!(s.checks, vec![Check::NoLostAcknowledgedWrites]);
}

#[test]
fn database_checks_need_the_database_workload() {
    let t = OK.replace("[\"no_lost_acknowledged_writes\"]", "[\"db_consistent\"]");
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("checks") && e.contains("database = true"), "{e}");
    let t = t.replace("duration = ", "database = true\nduration = ");
    let s = Scenario::parse(&t, "x.toml").unwrap();
    assert!(s.database && s.checks == vec![Check::DbConsistent]);
}

#[test]
fn postgres_checks_need_the_postgres_workload_and_only_kills() {
    let t = OK.replace(
        "[\"no_lost_acknowledged_writes\"]",
        "[\"pg_no_lost_commits\"]",
    );
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("checks") && e.contains("postgres = true"), "{e}");
    let t = t.replace("duration = ", "postgres = true\nduration = ");
    let s = Scenario::parse(&t, "x.toml").unwrap();
    assert!(s.postgres && s.checks == vec![Check::PgNoLostCommits]);
    let t = t.replace("action = \"kill\"", "action = \"pause\"");
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("postgres") && e.contains("only `kill`"), "{e}");
}

#[test]
fn the_hosts_workload_takes_only_its_checks_and_node_kills() {
    let t = OK
        .replace("site:primary", "node:hanoi-rep-3")
        .replace("duration = ", "hosts_per_site = 3\ngroups = 6\nduration = ");
    let s = Scenario::parse(&t, "x.toml").unwrap();
    assert!(s.has_hosts() && s.groups == Some(6));
    let undisturbed = t.replace(
        "[\"no_lost_acknowledged_writes\"]",
        "[\"other_groups_undisturbed\"]",
    );
    assert!(Scenario::parse(&undisturbed, "x.toml").is_ok());
    // A restart of the node killed before is taken, and the replica hosts' check.
    let resync = t.replace(
        "[\"no_lost_acknowledged_writes\"]",
        "[\"replica_groups_resync\"]",
    );
    let restart = |node: &str| {
        format!("{resync}[[faults]]\nat = \"5s\"\naction = \"restart\"\ntarget = \"node:{node}\"\n")
    };
    let s = Scenario::parse(&restart("hanoi-rep-3"), "x.toml").unwrap();
    assert_eq!(s.faults[1].action, FaultAction::Restart);
    assert_eq!(s.checks, vec![Check::ReplicaGroupsResync]);
    let e = Scenario::parse(&restart("hcm-rep-1"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("faults[1]") && e.contains("killed before"),
        "{e}"
    );
    for (from, to, field) in [
        ("groups = 6", "groups = 2", "groups"),
        ("hosts_per_site = 3", "hosts_per_site = 1", "hosts_per_site"),
        ("node:hanoi-rep-3", "site:primary", "faults[0]"),
        ("action = \"kill\"", "action = \"pause\"", "faults[0]"),
        ("no_lost_acknowledged_writes", "no_split_brain", "checks"),
        ("groups = 6", "groups = 6\nhistory = true", "hosts_per_site"),
    ] {
        let e = Scenario::parse(&t.replace(from, to), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{from} -> {to}: {e}");
    }
    // Without hosts_per_site, its fields and its check are refused.
    let e = Scenario::parse(
        &OK.replace("duration = ", "groups = 3\nduration = "),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("hosts_per_site"), "{e}");
    let e = Scenario::parse(
        &OK.replace("no_lost_acknowledged_writes", "other_groups_undisturbed"),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs `hosts_per_site`"), "{e}");
    let e = Scenario::parse(
        &OK.replace("no_lost_acknowledged_writes", "replica_groups_resync"),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ReplicaGroupsResync needs `hosts_per_site`"),
        "{e}"
    );
}

#[test]
fn fault_after_the_end_is_refused_naming_the_field() {
    let t = OK.replace("at = \"3s\"", "at = \"9s\"");
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].at"), "{e}");
}

#[test]
fn unknown_target_and_check_are_refused() {
    let t = OK.replace("site:primary", "moon");
    assert!(Scenario::parse(&t, "x.toml")
        .unwrap_err()
        .to_string()
        .contains("faults[0].target"));
    let t = OK.replace("no_lost_acknowledged_writes", "vibes");
    assert!(Scenario::parse(&t, "x.toml")
        .unwrap_err()
        .to_string()
        .contains("x.toml"));
}

#[test]
fn failpoint_faults_name_a_known_failpoint_with_actions() {
    let t = OK.replace("action = \"kill\"", "action = \"failpoint\"");
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].failpoint"), "{e}");
    let t = t.replace(
        "target = \"site:primary\"",
        "target = \"primary-replicator\"\nfailpoint = \"journal-before-fsync\"",
    );
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].actions"), "{e}");
    let ok = t.replace("failpoint = ", "actions = \"1*return(lose)\"\nfailpoint = ");
    let s = Scenario::parse(&ok, "x.toml").unwrap();
    assert!(s.has_failpoints());
    let e = Scenario::parse(
        &ok.replace("journal-before-fsync", "journal-sometime"),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("faults[0].failpoint"), "{e}");
    // One-way cuts are network faults: they may name a peer.
    let cut = OK.replace("action = \"kill\"", "action = \"cut\"").replace(
        "target = \"site:primary\"",
        "target = \"primary-replicator\"\npeer = \"coordinators\"",
    );
    assert!(Scenario::parse(&cut, "x.toml").is_ok());
}

#[test]
fn network_fault_needs_its_parameters_and_peer_only_on_network_faults() {
    let t = OK.replace("action = \"kill\"", "action = \"corrupt\"");
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].every"), "{e}");
    let t = t.replace(
        "target = \"site:primary\"",
        "target = \"site:primary\"\nevery = 1000",
    );
    assert_eq!(
        Scenario::parse(&t, "x.toml").unwrap().faults[0].every,
        Some(1000)
    );
    let t = OK.replace(
        "target = \"site:primary\"",
        "target = \"site:primary\"\npeer = \"all\"",
    );
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].peer"), "{e}");
    let t = OK.replace(
        "action = \"kill\"\ntarget = \"site:primary\"",
        "action = \"partition\"\ntarget = \"site:primary\"\npeer = \"mars\"",
    );
    let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
    assert!(e.contains("unknown peer"), "{e}");
}

#[test]
fn flap_expands_into_alternating_partition_and_heal() {
    let t = OK.replace(
        "at = \"3s\"\naction = \"kill\"",
        "at = \"1s\"\naction = \"flap\"\nperiod = \"1s\"\nuntil = \"4s\"",
    ) + "[[faults]]\nat = \"2500ms\"\naction = \"kill\"\ntarget = \"leader\"\n";
    let s = Scenario::parse(&t, "x.toml").unwrap();
    let got: Vec<(u64, FaultAction)> = s
        .timeline()
        .iter()
        .map(|f| (f.at.as_millis(), f.action))
        .collect();
    use FaultAction::*;
    assert_eq!(
        got,
        vec![
            (1000, Partition),
            (2000, Heal),
            (2500, Kill),
            (3000, Partition),
            (4000, Heal)
        ]
    );
    let bad = t.replace("until = \"4s\"", "until = \"9s\"");
    let e = Scenario::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].until"), "{e}");
}

#[test]
fn strobe_expands_into_clock_faults_and_ends_right() {
    let t = OK.replace(
        "at = \"3s\"\naction = \"kill\"\ntarget = \"site:primary\"",
        "at = \"1s\"\naction = \"strobe\"\ntarget = \"node:hanoi-rep\"\nskew_ms = -700\nperiod = \"500ms\"\nuntil = \"2200ms\"",
    );
    let s = Scenario::parse(&t, "x.toml").unwrap();
    assert!(s.has_clock_faults());
    let got: Vec<(u64, FaultAction, Option<i64>)> = s
        .timeline()
        .iter()
        .map(|f| (f.at.as_millis(), f.action, f.skew_ms))
        .collect();
    use FaultAction::*;
    assert_eq!(
        got,
        vec![
            (1000, Clock, Some(-700)),
            (1500, Clock, Some(0)),
            (2000, Clock, Some(-700)),
            (2200, Clock, Some(0)),
        ]
    );
    let e = Scenario::parse(&t.replace("skew_ms = -700\n", ""), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("faults[0].skew_ms"), "{e}");
    let clock = OK.replace("action = \"kill\"", "action = \"clock\"");
    let e = Scenario::parse(&clock, "x.toml").unwrap_err().to_string();
    assert!(e.contains("faults[0].skew_ms"), "{e}");
    assert!(!Scenario::parse(OK, "x.toml").unwrap().has_clock_faults());
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        Scenario::parse(&text, &p.display().to_string()).unwrap();
        n += 1;
    }
    assert!(n >= 5);
    // The known-failing reproductions must stay valid files too (there may be none).
    let known = std::fs::read_dir(dir.join("known-failing"));
    for e in known.into_iter().flatten() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        Scenario::parse(&text, &p.display().to_string()).unwrap();
    }
}
