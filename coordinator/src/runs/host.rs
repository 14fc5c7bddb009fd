//! `exec` and `check` commands (with the environment docs/runbooks.md promises): on the leader's
//! host for a step with no site, on the site's replicator (through [`super::site`]) for a step
//! at a site; and plain HTTP/1.1 calls for `http` steps and probes. Acts: child processes and
//! TCP.

use super::failure::{Failure, StepResult};
use super::redact::redact_url;
use super::replica::snapshot_of;
use super::site::run_at_site;
use crate::handle::coordinator::Coordinator;
use crate::state::Run;
use std::collections::BTreeMap;
use std::time::Duration;
use tandem_runbooks::{Command, PlannedStep, Probe, ResolvedSite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

/// Most bytes of an HTTP response read.
const HTTP_MAX_RESPONSE: usize = 1 << 20;

/// The environment docs/runbooks.md promises to `exec` and `check` commands, but `TANDEM_BIN`,
/// which the process that runs the command adds (its own executable). Shared by the leader
/// (steps with no site) and `Coordinator.PlannedStep` (steps a replicator runs).
pub(crate) fn command_env(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    extra: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let plan = &run.state.plan;
    let epoch = c
        .read(|s| s.group(&run.group).map(|g| g.epoch.0))
        .unwrap_or(0);
    let mut env = vec![
        ("TANDEM_RUN_ID".to_string(), run.state.run_id.clone()),
        ("TANDEM_STEP".into(), step.id.clone()),
        ("TANDEM_GROUP".into(), run.group.clone()),
        ("TANDEM_EPOCH".into(), epoch.to_string()),
        ("TANDEM_MODE".into(), plan.mode.to_string()),
        ("TANDEM_PRIMARY".into(), plan.primary.clone()),
        ("TANDEM_REPLICA".into(), plan.replica.clone()),
        ("TANDEM_SITE".into(), step.site.to_string()),
        (
            "TANDEM_COORDINATORS".into(),
            c.topo()
                .coordinators()
                .iter()
                .map(|x| x.node.listen.clone())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    if let Some((name, dir)) = snapshot_of(run) {
        env.push(("TANDEM_SNAPSHOT".into(), name));
        env.push(("TANDEM_SNAPSHOT_PATH".into(), dir));
    }
    for (k, v) in &plan.params {
        env.push((format!("TANDEM_PARAM_{}", k.to_uppercase()), v.to_string()));
    }
    for (k, v) in extra {
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Runs the command of an `exec` step or a `check` probe where the step belongs: on the
/// replicator of its site (which reads the command from the committed plan), or on this (the
/// coordinator leader's) host when it has no site. `(exit status 0, stdout + stderr)`.
pub(super) async fn run_command(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    command: &Command,
    extra: &BTreeMap<String, String>,
) -> Result<(bool, String), Failure> {
    match &step.site {
        ResolvedSite::Site(site) => run_at_site(c, run, step, site).await,
        ResolvedSite::Coordinator => run_here(c, run, step, command, extra).await,
    }
}

/// Runs a command on this (the coordinator leader's) host: `(exit status 0, stdout + stderr)`.
async fn run_here(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    command: &Command,
    extra: &BTreeMap<String, String>,
) -> Result<(bool, String), Failure> {
    let mut cmd = match command {
        Command::Shell(s) => {
            let mut x = tokio::process::Command::new("sh");
            x.arg("-c").arg(s);
            x
        }
        Command::Argv(v) => {
            let (prog, args) = v
                .split_first()
                .ok_or_else(|| Failure::new("empty command"))?;
            let mut x = tokio::process::Command::new(prog);
            x.args(args);
            x
        }
    };
    cmd.envs(command_env(c, run, step, extra));
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("TANDEM_BIN", exe);
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| Failure::new(format!("cannot run {command}: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&err);
    }
    if !out.status.success() {
        text.push_str(&format!("\n[{}]", out.status));
    }
    Ok((out.status.success(), text))
}

/// `check`: probes every `interval` until the probe passes (the step's timeout bounds it).
pub(super) async fn check(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    probe: &Probe,
    interval_ms: u64,
) -> StepResult {
    let mut tries = 0u64;
    loop {
        tries += 1;
        let (ok, text) = match probe {
            Probe::Command { command, env } => run_command(c, run, step, command, env).await?,
            Probe::Http { url, expect_status } => {
                match http(url, "GET", None, &BTreeMap::new()).await {
                    Ok((status, body)) => (
                        status_ok(status, *expect_status),
                        format!("HTTP {status}\n{body}"),
                    ),
                    Err(e) => (false, e),
                }
            }
        };
        if ok {
            return Ok(format!("ready after {tries} probe(s)\n{text}"));
        }
        if tries == 1 || tries.is_multiple_of(10) {
            info!(run = %run.state.run_id, step = %step.id, tries, "not ready yet: {}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(interval_ms.max(50))).await;
    }
}

pub(super) fn status_ok(status: u16, expect: Option<u16>) -> bool {
    match expect {
        Some(e) => status == e,
        None => (200..300).contains(&status),
    }
}

pub(super) fn expect_text(expect: Option<u16>) -> String {
    expect.map_or("2xx".into(), |e| e.to_string())
}

/// A plain HTTP/1.1 call over TCP (`http://` only): `(status, body excerpt)`.
pub(super) async fn http(
    url: &str,
    method: &str,
    body: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> Result<(u16, String), String> {
    // Errors name the URL without its credentials (they land in the run and the audit chain).
    let shown = redact_url(url);
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err(format!("{shown}: https is not supported by the built-in client; use http:// or an exec step (curl)"))
        }
        None => return Err(format!("{shown}: only http:// URLs are supported")),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{shown}: connect {addr}: {e}"))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nUser-Agent: tandem\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{shown}: send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("{shown}: read: {e}"))?;
        if n == 0 || buf.len() >= HTTP_MAX_RESPONSE {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let status =
        parse_status_line(&text).ok_or_else(|| format!("{shown}: not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status code of an HTTP/1.x response's first line.
fn parse_status_line(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_status_line("HTTP/1.1 204 No Content\r\n\r\n"),
            Some(204)
        );
        assert_eq!(parse_status_line("HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn expected_status_defaults_to_any_2xx() {
        assert!(status_ok(204, None));
        assert!(!status_ok(302, None));
        assert!(status_ok(302, Some(302)));
        assert!(!status_ok(200, Some(201)));
    }

    #[tokio::test]
    async fn http_client_talks_to_a_loopback_server_and_refuses_https() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            req
        });
        let mut h = BTreeMap::new();
        h.insert("X-Run".to_string(), "r1".to_string());
        let (status, body) = http(&format!("http://{addr}/hook"), "POST", Some("{}"), &h)
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (201, "ok"));
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("X-Run: r1\r\n") && req.ends_with("\r\n\r\n{}"),
            "{req}"
        );
        let err = http("https://example.com/", "GET", None, &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.contains("https is not supported"), "{err}");
    }
}
