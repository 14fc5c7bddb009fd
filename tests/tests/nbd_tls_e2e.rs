//! NBD over TLS with real processes: a replicator whose topology says `nbd_tls = true` refuses
//! a plaintext qemu-io with `NBD_REP_ERR_TLS_REQD` and takes writes from qemu-io over TLS with a
//! host certificate issued by `tandem certs rotate` (the documented path), and the writes reach
//! the replica.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        println!("SKIPPED nbd_tls_e2e: qemu-io is not installed (apt-get install qemu-utils)");
    }
    ok
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// qemu-io against `disk0` at `addr` (`host:port`), over TLS with the folder `creds` checking
/// that the server is `hanoi-rep`, or plaintext.
fn qemu_io(addr: &str, creds: Option<&Path>, commands: &[&str]) -> Output {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut image = format!("driver=nbd,host={host},port={port},export=disk0");
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "qemu-io"]);
    if let Some(dir) = creds {
        cmd.arg("--object").arg(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ));
        image.push_str(",tls-creds=tls0,tls-hostname=hanoi-rep");
    }
    cmd.arg("--image-opts").arg(image);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    cmd.output().unwrap()
}

#[test]
fn a_tls_only_replicator_takes_qemu_writes_over_tls_and_refuses_plaintext() {
    if !have_qemu() {
        return;
    }
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
        topo.wait_status(&[], Duration::from_secs(30), "protected", |st| {
            st["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "vol" && g["state"] == "protected")
                .map(|_| ())
        })
    }));
    if let Err(e) = r {
        dump_logs(&topo);
        std::panic::resume_unwind(e);
    }
    let addr = topo.nbd_addr("hanoi-rep").to_owned();

    // 2. A host certificate from the cluster CA, laid out as qemu wants.
    let certs = topo.path().join("certs");
    let (code, _, err) = topo.tandem(&[
        "certs",
        "rotate",
        "--node",
        "app-host",
        "--dir",
        certs.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let creds = topo.path().join("qemu-tls");
    std::fs::create_dir_all(&creds).unwrap();
    for (from, to) in [
        ("roots.pem", "ca-cert.pem"),
        ("app-host.pem", "client-cert.pem"),
        ("app-host.key", "client-key.pem"),
    ] {
        std::fs::copy(certs.join(from), creds.join(to)).unwrap();
    }

    // 3. Plaintext is refused before any option is served.
    let out = qemu_io(&addr, None, &["write -P 0xee 0 64k"]);
    assert!(
        !out.status.success(),
        "plaintext accepted: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted before NBD_OPT_STARTTLS"),
        "{}",
        describe(&out)
    );

    // 4. Over TLS the write lands, and in sync mode at the replica too.
    let out = qemu_io(
        &addr,
        Some(&creds),
        &["write -P 0x5c 1M 1M", "flush", "read -P 0x5c 1M 1M"],
    );
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed"),
        "qemu-io over TLS: {}",
        describe(&out)
    );
    let replica = topo.path().join("volumes/hcm/disk0.img");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let image = std::fs::read(&replica).unwrap_or_default();
        if image.len() >= 2 << 20 && image[1 << 20..2 << 20].iter().all(|&b| b == 0x5c) {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&topo);
            panic!("the write over TLS did not reach the replica image within 10 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(topo.path().join("hanoi-rep.log")).unwrap_or_default();
    assert!(
        log.contains("nbd client upgraded to TLS") && log.contains("node app-host"),
        "the replicator did not log the client's certificate name"
    );
}
