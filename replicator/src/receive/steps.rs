//! `Replication.RunStep`: runs the command of a runbook step on this replicator's host, asked
//! by a coordinator. The request names only the run and the step; the command, its
//! environment and its bound come from the coordinators' committed plan
//! (`Coordinator.PlannedStep`), and run only when the step is at this node's site and is the
//! run's current step. Acts: gRPC calls to the coordinators, one child process.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_core::client::Cluster;
use tandem_core::config::{NodeRole, Topology};
use tandem_core::net::{Caller, Net};
use tandem_core::proto::{PlannedStepReply, RunStepReply, RunStepRequest};
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::{Request, Status};
use tracing::{info, warn};

/// Most bytes of a command's output kept (the tail).
pub const MAX_STEP_OUTPUT: usize = 64 << 10;

/// How long the output is still read after the command exited (a process it left in the
/// background may hold the pipes open).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// Bound of a step whose plan gives none (the runbooks' default step timeout).
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the steps the coordinators ask this replicator to run.
#[derive(Debug, Clone)]
pub struct StepRunner {
    node: String,
    site: String,
    /// Coordinator node names.
    coordinator_names: HashSet<String>,
    /// Coordinator node name -> listen address.
    coordinators: Vec<(String, String)>,
    cluster: Cluster,
    net: Net,
}

impl StepRunner {
    /// The runner of replicator `node` of `topo`, calling the coordinators through `net`;
    /// `None` when `node` is not in the topology.
    pub fn new(topo: &Topology, node: &str, net: Net) -> Option<StepRunner> {
        let me = topo.node(node)?;
        let coordinators: Vec<(String, String)> = topo
            .coordinators()
            .iter()
            .map(|c| (c.node.name.clone(), c.node.listen.clone()))
            .collect();
        let coordinator_names = topo
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Coordinator)
            .map(|n| n.name.clone())
            .collect();
        let addrs = coordinators.iter().map(|(_, a)| a.clone()).collect();
        Some(StepRunner {
            node: me.name.clone(),
            site: me.site.clone(),
            coordinator_names,
            coordinators,
            cluster: Cluster::new(net.clone(), addrs),
            net,
        })
    }

    /// Answers `RunStep` (see the module doc).
    ///
    /// # Errors
    /// `PermissionDenied` unless a coordinator asked (plaintext: anyone); the coordinators'
    /// refusal or unavailability; `FailedPrecondition` when the step is not this site's, not
    /// current or has no command; `DeadlineExceeded` when the command outlived its bound;
    /// `Internal` when it could not start.
    pub async fn run_step(&self, req: Request<RunStepRequest>) -> Result<RunStepReply, Status> {
        let caller = self.net.caller(&req)?;
        let asking = match &caller {
            Caller::Anonymous => None,
            Caller::Node(n) if self.coordinator_names.contains(n) => Some(n.clone()),
            other => {
                let why = format!("{other} is not a coordinator and may not call RunStep");
                warn!(node = %self.node, "run_step refused: {why}");
                return Err(Status::permission_denied(why));
            }
        };
        let r = req.into_inner();
        // The coordinator that asks is the leader, which committed the step's start: ask it
        // first, so a follower that has not applied it yet does not answer "not current".
        let first = asking.as_deref().and_then(|n| {
            self.coordinators
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, a)| a.as_str())
        });
        let plan = self
            .cluster
            .planned_step(first, &r.run_id, r.step)
            .await
            .map_err(|e| {
                let why = format!(
                    "reading step {} of run {} from the coordinators: {e}",
                    r.step, r.run_id
                );
                match e.code() {
                    Some(code) => Status::new(code, why),
                    None => Status::unavailable(why),
                }
            })?;
        let command = self.check(&r, &plan)?;
        info!(run = %r.run_id, step = %plan.step_id, asked_by = ?asking, "running a step's command");
        // The leader's addresses of the coordinators are the leader's view; a command here
        // (`tandem probe`, `tandem status`) must reach them as this host does.
        let mut plan = plan;
        plan.env.insert(
            "TANDEM_COORDINATORS".into(),
            self.coordinators
                .iter()
                .map(|(_, a)| a.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        run_command(command, &plan, &self.node).await
    }

    /// What to run, once the reply is checked against the request and this node.
    fn check(&self, r: &RunStepRequest, plan: &PlannedStepReply) -> Result<Cmd, Status> {
        let refuse = |why: String| {
            warn!(node = %self.node, run = %r.run_id, step = r.step, "run_step refused: {why}");
            Status::failed_precondition(why)
        };
        if plan.run_id != r.run_id || plan.step != r.step {
            return Err(refuse(format!(
                "the coordinators answered for step {} of run {}, not step {} of run {}",
                plan.step, plan.run_id, r.step, r.run_id
            )));
        }
        let what = format!(
            "step {} ({}) of run {}",
            plan.step, plan.step_id, plan.run_id
        );
        if plan.site != self.site {
            return Err(refuse(format!(
                "{what} runs at site {}, not at this node's site {} ({})",
                plan.site, self.site, self.node
            )));
        }
        if !plan.current {
            return Err(refuse(format!(
                "{what} is not the run's current step (the run ended or moved on)"
            )));
        }
        match (plan.argv.split_first(), plan.shell.is_empty()) {
            (Some((prog, args)), _) => Ok(Cmd::Argv(prog.clone(), args.to_vec())),
            (None, false) => Ok(Cmd::Shell(plan.shell.clone())),
            (None, true) => Err(refuse(format!("{what} has no command to run"))),
        }
    }
}

/// A command from the plan.
#[derive(Debug)]
enum Cmd {
    Argv(String, Vec<String>),
    Shell(String),
}

/// Runs `cmd` with the plan's environment (and `TANDEM_BIN` = this executable, `TANDEM_NODE`
/// = this node), stdin closed, bounded by the plan's timeout; keeps the tail of the output.
async fn run_command(
    cmd: Cmd,
    plan: &PlannedStepReply,
    node: &str,
) -> Result<RunStepReply, Status> {
    let mut c = match &cmd {
        Cmd::Argv(prog, args) => {
            let mut c = tokio::process::Command::new(prog);
            c.args(args);
            c
        }
        Cmd::Shell(text) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(text);
            c
        }
    };
    c.envs(&plan.env).env("TANDEM_NODE", node);
    if let Ok(exe) = std::env::current_exe() {
        c.env("TANDEM_BIN", exe);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("step {} of run {}", plan.step_id, plan.run_id);
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| {
        Status::internal(format!("{what}: cannot start the command on {node}: {e}"))
    })?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let bound = match plan.timeout_ms {
        0 => DEFAULT_STEP_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let deadline = tokio::time::Instant::now() + bound;
    let (ob, eb) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let mut reading =
        std::pin::pin!(async { tokio::join!(read_tail(out, &ob), read_tail(err, &eb)) });
    let mut read_all = false;
    // The pipes are read while the command runs (a full pipe would stall it).
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = &mut reading, if !read_all => read_all = true,
            // Returning drops the child: kill_on_drop ends it.
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Status::deadline_exceeded(format!(
                    "{what}: the command on {node} did not end within {} ms and was killed",
                    bound.as_millis()
                )))
            }
        }
    };
    // A process the command left running in the background may hold the pipes open: the
    // output is what arrived by its exit and a moment after.
    if !read_all {
        let _ = tokio::time::timeout(PIPE_GRACE, &mut reading).await;
    }
    let status = status
        .map_err(|e| Status::internal(format!("{what}: waiting for the command on {node}: {e}")))?;
    let (o, e) = (take(&ob), take(&eb));
    let mut text = String::from_utf8_lossy(&o).into_owned();
    let err = String::from_utf8_lossy(&e);
    if !err.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&err);
    }
    Ok(RunStepReply {
        success: status.success(),
        exit_code: status.code().unwrap_or(-1),
        output: tail(text, MAX_STEP_OUTPUT),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        node: node.to_owned(),
    })
}

/// Reads `r` to its end into `buf`, keeping only its last [`MAX_STEP_OUTPUT`] bytes (a read
/// error ends it).
async fn read_tail(r: Option<impl AsyncRead + Unpin>, buf: &Mutex<Vec<u8>>) {
    let Some(mut r) = r else {
        return;
    };
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(&chunk[..n]);
        if b.len() > 2 * MAX_STEP_OUTPUT {
            let cut = b.len() - MAX_STEP_OUTPUT;
            b.drain(..cut);
        }
    }
}

/// The bytes `read_tail` gathered, at most the last [`MAX_STEP_OUTPUT`].
fn take(buf: &Mutex<Vec<u8>>) -> Vec<u8> {
    let mut b = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
    if b.len() > MAX_STEP_OUTPUT {
        let cut = b.len() - MAX_STEP_OUTPUT;
        b.drain(..cut);
    }
    b
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn plan(timeout_ms: u64) -> PlannedStepReply {
        PlannedStepReply {
            run_id: "r1".into(),
            group: "g".into(),
            step: 2,
            step_id: "start-copy".into(),
            site: "hcm".into(),
            argv: vec![],
            shell: String::new(),
            env: HashMap::from([("TANDEM_STEP".to_string(), "start-copy".to_string())]),
            current: true,
            timeout_ms,
        }
    }

    type Edit = dyn Fn(&mut PlannedStepReply);

    fn runner() -> StepRunner {
        StepRunner {
            node: "hcm-rep".into(),
            site: "hcm".into(),
            coordinator_names: HashSet::from(["danang-coord1".to_string()]),
            coordinators: vec![("danang-coord1".into(), "127.0.0.1:1".into())],
            cluster: Cluster::new(Net::plaintext(), vec![]),
            net: Net::plaintext(),
        }
    }

    #[test]
    fn only_the_current_step_of_this_site_with_a_command_is_run() {
        let r = runner();
        let req = RunStepRequest {
            run_id: "r1".into(),
            step: 2,
        };
        let with = |f: &Edit| {
            let mut p = plan(1000);
            p.shell = "true".into();
            f(&mut p);
            r.check(&req, &p)
        };
        assert!(matches!(with(&|_| {}), Ok(Cmd::Shell(s)) if s == "true"));
        let argv = with(&|p| p.argv = vec!["/bin/echo".into(), "x".into()]);
        assert!(matches!(argv, Ok(Cmd::Argv(p, a)) if p == "/bin/echo" && a == ["x"]));
        let refused: [(&Edit, &str); 5] = [
            (
                &|p| p.site = "hanoi".into(),
                "runs at site hanoi, not at this node's site hcm",
            ),
            (&|p| p.current = false, "not the run's current step"),
            (&|p| p.shell.clear(), "has no command"),
            (&|p| p.step = 3, "not step 2 of run r1"),
            (&|p| p.run_id = "r2".into(), "not step 2 of run r1"),
        ];
        for (edit, why) in refused {
            let e = with(edit).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert!(e.message().contains(why), "{} / {why}", e.message());
        }
    }

    #[test]
    fn the_tail_is_cut_at_a_character_boundary() {
        assert_eq!(tail("abc".into(), 5), "abc");
        assert_eq!(tail("abcdef".into(), 2), "ef");
        assert_eq!(tail("aé".into(), 1), "");
        assert_eq!(tail("aéb".into(), 3), "éb");
    }

    #[tokio::test]
    async fn a_command_runs_with_the_plans_env_and_keeps_only_its_last_64_kib() {
        let cmd = Cmd::Shell(
            "echo \"$TANDEM_STEP on $TANDEM_NODE\"; head -c 200000 /dev/zero | tr '\\0' x; echo END >&2; exit 3"
                .into(),
        );
        let r = run_command(cmd, &plan(10_000), "hcm-rep").await.unwrap();
        assert!(!r.success);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.node, "hcm-rep");
        assert!(r.output.len() <= MAX_STEP_OUTPUT, "{}", r.output.len());
        assert!(
            r.output.ends_with("END\n"),
            "{}",
            &r.output[r.output.len() - 20..]
        );
        let r = run_command(
            Cmd::Shell("echo \"$TANDEM_STEP on $TANDEM_NODE\"".into()),
            &plan(10_000),
            "hcm-rep",
        )
        .await
        .unwrap();
        assert!(r.success);
        assert_eq!(r.output, "start-copy on hcm-rep\n");
        let r = run_command(
            Cmd::Argv(
                "sh".into(),
                vec!["-c".into(), "test -x \"$TANDEM_BIN\"".into()],
            ),
            &plan(10_000),
            "hcm-rep",
        )
        .await
        .unwrap();
        assert!(r.success, "TANDEM_BIN is this executable: {}", r.output);
    }

    #[tokio::test]
    async fn a_process_left_in_the_background_does_not_hold_the_step() {
        let t0 = Instant::now();
        let r = run_command(
            Cmd::Shell("sleep 20 & echo started".into()),
            &plan(30_000),
            "hcm-rep",
        )
        .await
        .unwrap();
        assert!(r.success);
        assert_eq!(r.output, "started\n");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_command_that_outlives_its_bound_is_killed() {
        let t0 = Instant::now();
        let e = run_command(Cmd::Shell("sleep 30".into()), &plan(300), "hcm-rep")
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert!(e.message().contains("start-copy"), "{}", e.message());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
