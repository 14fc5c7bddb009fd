//! Prometheus metrics of real processes: every node serves `GET /metrics` on its
//! `metrics_listen` address in the text format 0.0.4; the figures agree with `tandem status`;
//! and every metric the shipped dashboard and alert rules use is one the nodes export.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tandem_core::metrics::{parse_text, Exposition, Kind};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// A plain HTTP/1.1 GET; returns (status line, headers, body).
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .expect("a blank line after the head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

fn scrape(addr: &str) -> Exposition {
    let (status, headers, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{addr}: {headers}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{addr}: {headers}"
    );
    match parse_text(&body) {
        Ok(exp) => exp,
        Err(e) => panic!("{addr}: {e}\n{body}"),
    }
}

/// Asserts `name` is declared with `kind` and has a finite sample with all of `labels`.
fn has(exp: &Exposition, name: &str, kind: Kind, labels: &[(&str, &str)]) -> f64 {
    assert_eq!(exp.types.get(name), Some(&kind), "TYPE of {name}");
    assert!(exp.help.contains_key(name), "HELP of {name}");
    let series = if kind == Kind::Histogram {
        format!("{name}_count")
    } else {
        name.to_owned()
    };
    let v = exp
        .value(&series, labels)
        .unwrap_or_else(|| panic!("no {series}{labels:?}"));
    assert!(v.is_finite(), "{series}{labels:?} = {v}");
    v
}

/// Histogram invariants: cumulative buckets, `+Inf` equals the count.
fn check_histogram(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let count = has(exp, name, Kind::Histogram, labels);
    let mut buckets: Vec<(f64, f64)> = exp
        .series(&format!("{name}_bucket"))
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| {
            let le = s.label("le").unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 2, "{name}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets are not cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
    assert_eq!(
        buckets.last().map(|b| b.1),
        Some(count),
        "{name}: +Inf != count"
    );
    count
}

/// Every `tandem_...` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tandem_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip identifiers glued to a preceding word (e.g. `xtandem_`).
        let glued = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !glued {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn have_qemu() -> bool {
    let ok = Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
    }
    ok
}

const WRITES: u64 = 40;
const WRITE_LEN: u64 = 64 << 10;

#[test]
fn nodes_serve_prometheus_metrics_that_agree_with_status() {
    if !have_qemu() {
        return;
    }
    // 1. A three-site cluster with a metrics port on every node.
    let topo = Topo::new(TopoOpts {
        mode: "async",
        metrics: true,
        // A schedule that falls due long after the test: the drill series exist, no drill runs.
        group_extra: "drill_every = \"1d\"",
        ..TopoOpts::default()
    });
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    let _procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&topo)));
    if let Err(e) = run {
        dump_logs(&topo);
        std::panic::resume_unwind(e);
    }
}

fn steps(topo: &Topo) {
    // 1. (cont.) Wait for vol to be protected with a lease.
    topo.wait_status(
        &[],
        Duration::from_secs(30),
        "vol protected with a lease",
        |st| vol(st).filter(|g| g["state"] == "protected" && g["lease"]["status"] == "active"),
    );
    // 2. Writes through the primary's NBD export, until the replica has them all.
    let (leader, g) = write_until_caught_up(topo);
    let seq = g["last_captured_seq"].as_f64().unwrap();
    // 3. The leader coordinator: raft, group, site, lease and audit figures.
    let c = scrape_leader(topo, &leader, &g);
    // 4. A follower coordinator answers too, and knows it is not the leader.
    let f = scrape_follower(topo, &leader);
    // 5. The primary replicator: NBD writes, bytes, frames, compression, journal, lease.
    let p = scrape_primary_replicator(topo);
    // 6. The replica replicator: watermark at the primary's last seq, apply latency.
    let r = scrape_replica_replicator(topo, seq);
    // 7. Anything but GET /metrics is 404.
    only_metrics_is_served(topo, &leader);
    // 8. Every metric the dashboard, the alert rules and the operations guide name is exported
    //    by some node.
    every_used_metric_is_exported(&[&c, &f, &p, &r]);
}

/// The labels of group `vol`'s series.
const VOL: [(&str, &str); 1] = [("group", "vol")];

/// Group `vol` in a `tandem status` document.
fn vol(st: &serde_json::Value) -> Option<serde_json::Value> {
    st["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "vol")
        .cloned()
}

/// Step 2: writes `WRITES` compressible blocks through qemu-io and waits until the replica
/// has them; returns the leader's name and group `vol`'s status then.
fn write_until_caught_up(topo: &Topo) -> (String, serde_json::Value) {
    let url = format!("nbd://{}/disk0", topo.nbd_addr("hanoi-rep"));
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-t", "none", &url]);
    for i in 0..WRITES {
        // Compressible: a repeated pattern.
        cmd.arg("-c").arg(format!(
            "write -P {} {} {WRITE_LEN}",
            i + 1,
            i * WRITE_LEN * 3
        ));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "qemu-io: {out:?}");
    // The status lags the writes by a report: a report sent after the first write already
    // shows it captured and durable. Each 64 KiB NBD write is one journal record, so caught up
    // means every one of them.
    let (status, g) = topo.wait_status(&[], Duration::from_secs(30), "caught up", |st| {
        let g = vol(st)?;
        (g["rpo_ms"] == 0
            && g["durable_seq"] == g["last_captured_seq"]
            && g["last_captured_seq"].as_u64() >= Some(WRITES))
        .then(|| (st.clone(), g))
    });
    let leader = status["leader"].as_str().unwrap().to_owned();
    (leader, g)
}

/// Step 3: scrapes the leader coordinator and checks its figures against status `g`.
fn scrape_leader(topo: &Topo, leader: &str, g: &serde_json::Value) -> Exposition {
    let c = scrape(topo.metrics_addr(leader));
    assert_eq!(has(&c, "tandem_raft_is_leader", Kind::Gauge, &[]), 1.0);
    assert!(has(&c, "tandem_raft_term", Kind::Gauge, &[]) >= 1.0);
    assert!(has(&c, "tandem_raft_commit_index", Kind::Gauge, &[]) >= 1.0);
    assert!(has(&c, "tandem_audit_records", Kind::Gauge, &[]) >= 1.0);
    let rpo = has(&c, "tandem_group_rpo_seconds", Kind::Gauge, &VOL);
    assert!((0.0..2.0).contains(&rpo), "rpo {rpo}");
    assert_eq!(
        has(&c, "tandem_group_rpo_target_seconds", Kind::Gauge, &VOL),
        2.0
    );
    assert_eq!(
        has(&c, "tandem_group_epoch", Kind::Gauge, &VOL),
        g["epoch"].as_f64().unwrap()
    );
    let states: Vec<(String, f64)> = c
        .series("tandem_group_state")
        .filter(|s| s.label("group") == Some("vol"))
        .map(|s| (s.label("state").unwrap().to_owned(), s.value))
        .collect();
    assert!(states.len() >= 7, "{states:?}");
    let on: Vec<&str> = states
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(on, vec!["protected"], "{states:?}");
    assert_eq!(
        has(&c, "tandem_site_up", Kind::Gauge, &[("site", "hanoi")]),
        1.0
    );
    assert_eq!(
        has(&c, "tandem_site_up", Kind::Gauge, &[("site", "hcm")]),
        1.0
    );
    let lease = has(
        &c,
        "tandem_group_lease_remaining_seconds",
        Kind::Gauge,
        &VOL,
    );
    assert!(lease > 0.0 && lease <= 2.5, "lease {lease}");
    let due = has(
        &c,
        "tandem_group_drill_next_due_timestamp_seconds",
        Kind::Gauge,
        &VOL,
    );
    let want = g["drill"]["next_due_ms"].as_f64().unwrap();
    assert!(
        (due * 1000.0 - want).abs() < 1.0,
        "due {due} s, status {want} ms"
    );
    assert_eq!(
        has(&c, "tandem_group_drill_overdue", Kind::Gauge, &VOL),
        0.0
    );
    assert_eq!(
        has(&c, "tandem_group_drill_refused", Kind::Gauge, &VOL),
        0.0
    );
    c
}

/// Step 4: scrapes a follower coordinator.
fn scrape_follower(topo: &Topo, leader: &str) -> Exposition {
    let follower = topo.coordinators.iter().find(|n| **n != leader).unwrap();
    let f = scrape(topo.metrics_addr(follower));
    assert_eq!(has(&f, "tandem_raft_is_leader", Kind::Gauge, &[]), 0.0);
    has(&f, "tandem_group_epoch", Kind::Gauge, &VOL);
    has(&f, "tandem_group_rpo_seconds", Kind::Gauge, &VOL);
    f
}

/// Step 5: scrapes the primary replicator (hanoi-rep).
fn scrape_primary_replicator(topo: &Topo) -> Exposition {
    let p = scrape(topo.metrics_addr("hanoi-rep"));
    assert_eq!(
        has(
            &p,
            "tandem_nbd_writes_total",
            Kind::Counter,
            &[("export", "disk0")]
        ),
        WRITES as f64
    );
    let raw = has(
        &p,
        "tandem_replication_bytes_total",
        Kind::Counter,
        &[("group", "vol"), ("kind", "raw")],
    );
    let wire = has(
        &p,
        "tandem_replication_bytes_total",
        Kind::Counter,
        &[("group", "vol"), ("kind", "wire")],
    );
    assert!(raw >= (WRITES * WRITE_LEN) as f64, "raw {raw}");
    assert!(wire > 0.0 && wire < raw, "wire {wire} raw {raw}");
    assert!(has(&p, "tandem_replication_frames_total", Kind::Counter, &VOL) >= 1.0);
    let ratio = has(&p, "tandem_compression_ratio", Kind::Gauge, &VOL);
    assert!((ratio - raw / wire).abs() < 1e-6 && ratio > 1.0, "{ratio}");
    assert_eq!(
        has(&p, "tandem_compression_level", Kind::Gauge, &VOL),
        1.0,
        "the default compression is zstd-1"
    );
    assert_eq!(has(&p, "tandem_journal_bytes", Kind::Gauge, &VOL), 0.0);
    assert!(has(&p, "tandem_journal_max_bytes", Kind::Gauge, &VOL) > 0.0);
    let lease = has(&p, "tandem_lease_remaining_seconds", Kind::Gauge, &VOL);
    assert!(lease > 0.0 && lease <= 2.0, "lease {lease}");
    assert_eq!(
        has(&p, "tandem_replicator_writable", Kind::Gauge, &VOL),
        1.0
    );
    p
}

/// Step 6: scrapes the replica replicator (hcm-rep); its watermark is `seq`.
fn scrape_replica_replicator(topo: &Topo, seq: f64) -> Exposition {
    let r = scrape(topo.metrics_addr("hcm-rep"));
    assert_eq!(has(&r, "tandem_replica_watermark", Kind::Gauge, &VOL), seq);
    assert!(check_histogram(&r, "tandem_apply_latency_seconds", &VOL) >= 1.0);
    assert_eq!(
        has(&r, "tandem_lease_remaining_seconds", Kind::Gauge, &VOL),
        0.0
    );
    assert_eq!(
        has(&r, "tandem_replicator_writable", Kind::Gauge, &VOL),
        0.0
    );
    r
}

/// Step 7: the leader's metrics server answers 404 off `/metrics`.
fn only_metrics_is_served(topo: &Topo, leader: &str) {
    let (status, _, _) = http_get(topo.metrics_addr(leader), "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
}

/// Step 8: every `tandem_` name in deploy/ and docs/operations.md is in one of `scraped`.
fn every_used_metric_is_exported(scraped: &[&Exposition]) {
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for e in scraped {
        exported.extend(e.types.keys().cloned());
    }
    let dashboard = std::fs::read_to_string(repo_file("deploy/grafana/tandem.json")).unwrap();
    let alerts = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let ops = std::fs::read_to_string(repo_file("docs/operations.md")).unwrap();
    let used: BTreeSet<String> = metric_names_in(&dashboard)
        .into_iter()
        .chain(metric_names_in(&alerts))
        .chain(metric_names_in(&ops))
        .filter(|n| n != "tandem_")
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| exported.contains(*b))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| name.clone());
        assert!(
            exported.contains(&base),
            "{name} is used by deploy/ or docs/operations.md but no node exports it"
        );
    }
}

#[test]
fn grafana_dashboard_is_valid_json_with_the_documented_panels() {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/tandem.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(doc["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(doc["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let panels = doc["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for needed in [
        "tandem_group_rpo_seconds",
        "tandem_group_rpo_target_seconds",
        "tandem_replication_bytes_total",
        "tandem_compression_ratio",
        "tandem_journal_bytes",
        "tandem_lease_remaining_seconds",
        "tandem_raft_term",
        "tandem_raft_is_leader",
        "tandem_apply_latency_seconds_bucket",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needed)),
            "no panel queries {needed}"
        );
    }
    assert!(
        panels.iter().any(|p| p["type"] == "heatmap"),
        "apply latency heatmap"
    );
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "panel ids are unique");
    assert_eq!(n, panels.len(), "every panel has an id");
}

#[test]
fn operations_guide_topology_is_a_valid_topology() {
    let text = std::fs::read_to_string(repo_file("docs/operations.md")).unwrap();
    let start = text.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + text[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, &text[start..end]).unwrap();
    let topo = tandem_core::config::Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(topo.sites.len(), 3);
    assert_eq!(topo.coordinators().len(), 3);
    assert!(
        topo.nodes.iter().all(|n| n.metrics_listen.is_some()),
        "every node of the guide has a metrics address"
    );
}
