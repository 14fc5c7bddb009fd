//! `tandem probe` against a TLS-only NBD export (`nbd_tls = true`) with real processes: the
//! probe reads `nbd_tls` from the topology, upgrades with `NBD_OPT_STARTTLS` presenting its own
//! certificate (the operator's, or a node's as in a runbook step) and succeeds; with a
//! read-only role's certificate it fails, quickly and saying why.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

#[test]
fn tandem_probe_opens_a_tls_only_export_with_its_own_certificate() {
    // 1. The test topology (mTLS, loopback NBD) with nbd_tls = true on both replicators.
    let topo = Topo::new(TopoOpts::default());
    let text = std::fs::read_to_string(&topo.config).unwrap();
    let mut edited = String::new();
    for line in text.lines() {
        edited.push_str(line);
        edited.push('\n');
        if line.starts_with("nbd_listen = ") {
            edited.push_str("nbd_tls = true\n");
        }
    }
    assert_eq!(edited.matches("nbd_tls = true").count(), 2);
    std::fs::write(&topo.config, edited).unwrap();
    let mut names = topo.coordinators.clone();
    names.extend(["hanoi-rep".to_string(), "hcm-rep".to_string()]);
    let _procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        topo.wait_status(
            &[],
            Duration::from_secs(30),
            "protected with a lease",
            |st| {
                st["groups"]
                    .as_array()?
                    .iter()
                    .find(|g| {
                        g["name"] == "vol"
                            && g["state"] == "protected"
                            && g["lease"]["status"] == "active"
                    })
                    .map(|_| ())
            },
        )
    }));
    if let Err(e) = r {
        dump_logs(&topo);
        std::panic::resume_unwind(e);
    }
    let coord = topo.addr(&topo.coordinators[0]).to_owned();
    let probe = |extra: &[&str]| {
        let mut args = vec![
            "probe", "--addr", &coord, "--group", "vol", "--site", "hanoi",
        ];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let (code, out, err) = topo.tandem(&args);
        (code, out, err, started.elapsed())
    };

    // 2. The operator's certificate (the CLI's default identity, TANDEM_CONFIG's topology).
    let (code, out, err, _) = probe(&[]);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "probe as operator: {out}\n{err}");
    assert!(out.contains("writable, answers reads"), "{out}");

    // 3. A node's certificate, as a runbook step run by a node process passes it.
    let certs = topo.path().join("certs");
    let cert = certs.join("hcm-rep.pem");
    let key = certs.join("hcm-rep.key");
    let (code, out, err, _) = probe(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "probe with a node certificate: {out}\n{err}");
    let log = std::fs::read_to_string(topo.path().join("hanoi-rep.log")).unwrap_or_default();
    assert!(
        log.contains("nbd client upgraded to TLS") && log.contains("node hcm-rep"),
        "the replicator did not log the probe's TLS upgrade with the node certificate"
    );

    // 4. The viewer role may read the status but not use NBD: a clear, quick failure.
    let (code, out, err, took) = probe(&["--identity", "viewer"]);
    assert_eq!(code, 1, "probe as viewer: {out}\n{err}");
    assert!(
        err.contains("may not use NBD") && err.contains("TLS, expecting node hanoi-rep"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "viewer refusal took {took:?}"
    );
}
