//! A bounded, order-keeping parallel stage: jobs run on the blocking pool, at most N at once,
//! each with one of N reusable worker states (a zstd context), and their results leave in the
//! order the jobs came in.
//!
//! Invariants (property-tested below): results leave in input order; at most N jobs are
//! running or finished-but-not-yet-sent at any time, so memory is bounded by N results plus
//! the two channels; every job taken in is sent out unless the output closes or a job panics
//! (then the stage stops, dropping what it holds, and its input channel closes).
//!
//! Used by the pipeline (frames encoded in parallel, journaled in seq order) and by the
//! replica's Ship stream (frames decompressed and verified in parallel ahead of the ordered
//! apply).

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How many frames to encode or decode at once: the cores of the machine, at least 1, at
/// most 4 (each worker holds a zstd context and a frame-sized buffer).
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Spawns the stage: takes jobs from `rx`, runs `work(state, job)` on the blocking pool with
/// one of `states` (so at most `states.len()` at once; at least one state is required) and
/// sends the results to `tx` in the order the jobs arrived. A job `small` says is cheap (a
/// 4 KiB write) and that arrives while nothing runs is done at once on the stage's own task
/// instead: no hop to the blocking pool on the latency path of a lone small write. Ends when
/// `rx` is closed and every result is sent, when `tx` closes, or when a job panics.
pub(crate) fn spawn_ordered<S, J, R, F, G>(
    states: Vec<S>,
    work: F,
    small: G,
    rx: mpsc::Receiver<J>,
    tx: mpsc::Sender<R>,
) -> JoinHandle<()>
where
    S: Send + 'static,
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(&mut S, J) -> R + Send + Sync + Copy + 'static,
    G: Fn(&J) -> bool + Send + 'static,
{
    tokio::spawn(run_ordered(states, work, small, rx, tx))
}

async fn run_ordered<S, J, R, F, G>(
    mut idle: Vec<S>,
    work: F,
    small: G,
    mut rx: mpsc::Receiver<J>,
    tx: mpsc::Sender<R>,
) where
    S: Send + 'static,
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(&mut S, J) -> R + Send + Sync + Copy + 'static,
    G: Fn(&J) -> bool + Send + 'static,
{
    let mut running = FuturesOrdered::new();
    let mut open = !idle.is_empty();
    loop {
        tokio::select! {
            // Results first: they free a worker state and keep the memory bound.
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                let Ok((state, result)) = done else {
                    tracing::error!("a parallel frame worker panicked: the stage stops");
                    return;
                };
                idle.push(state);
                if tx.send(result).await.is_err() {
                    return;
                }
            }
            job = rx.recv(), if open && !idle.is_empty() => match (job, idle.pop()) {
                (Some(job), Some(mut state)) if running.is_empty() && small(&job) => {
                    // Nothing before it: in order by itself.
                    let result = work(&mut state, job);
                    idle.push(state);
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
                (Some(job), Some(mut state)) => {
                    running.push_back(tokio::task::spawn_blocking(move || {
                        let r = work(&mut state, job);
                        (state, r)
                    }));
                }
                _ => open = false,
            },
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// What one test job does: sleeps, and counts how many jobs are held by the stage.
    struct Probe {
        held: Arc<AtomicUsize>,
        max_held: Arc<AtomicUsize>,
    }

    /// Runs `delays` (ms) through a stage of `n` workers whose output is drained with a pause
    /// of `drain_ms` per result; returns the results in output order and the most jobs the
    /// stage held at once (running, or finished and not yet drained).
    async fn run(n: usize, delays: Vec<u64>, drain_ms: u64) -> (Vec<usize>, usize) {
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let states = (0..n)
            .map(|_| Probe {
                held: Arc::clone(&held),
                max_held: Arc::clone(&max_held),
            })
            .collect();
        let (jtx, jrx) = mpsc::channel(1);
        let (rtx, mut rrx) = mpsc::channel(1);
        let stage = spawn_ordered(
            states,
            |p: &mut Probe, (i, ms): (usize, u64)| {
                let now = p.held.fetch_add(1, Ordering::SeqCst) + 1;
                p.max_held.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(ms));
                (i, Arc::clone(&p.held))
            },
            // Zero-delay jobs are "small": done on the stage's task when nothing runs.
            |(_, ms): &(usize, u64)| *ms == 0,
            jrx,
            rtx,
        );
        let feed = tokio::spawn(async move {
            for (i, ms) in delays.into_iter().enumerate() {
                if jtx.send((i, ms)).await.is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        while let Some((i, held)) = rrx.recv().await {
            // Released: no longer held by the stage (the output channel holds at most one).
            held.fetch_sub(1, Ordering::SeqCst);
            out.push(i);
            tokio::time::sleep(Duration::from_millis(drain_ms)).await;
        }
        feed.await.unwrap();
        stage.await.unwrap();
        (out, max_held.load(Ordering::SeqCst))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn results_leave_in_input_order_and_the_stage_never_holds_more_than_n(
            n in 1usize..5,
            delays in proptest::collection::vec(0u64..4, 0..24),
            drain_ms in 0u64..3,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let count = delays.len();
            let (out, max_held) = rt.block_on(run(n, delays, drain_ms));
            prop_assert_eq!(out, (0..count).collect::<Vec<_>>());
            // n in the stage, plus one in the output channel and one just received there and
            // not yet counted off.
            prop_assert!(max_held <= n + 2, "held {} with {} workers", max_held, n);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_in_parallel_up_to_n() {
        // Two jobs that each wait for the other: they finish only if both run at once.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (jtx, jrx) = mpsc::channel(4);
        let (rtx, mut rrx) = mpsc::channel(4);
        let stage = spawn_ordered(
            vec![(), ()],
            |_: &mut (), (i, b): (usize, Arc<std::sync::Barrier>)| {
                b.wait();
                i
            },
            |_: &(usize, Arc<std::sync::Barrier>)| false,
            jrx,
            rtx,
        );
        for i in 0..2 {
            jtx.send((i, Arc::clone(&barrier))).await.unwrap();
        }
        drop(jtx);
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let mut v = Vec::new();
            while let Some(i) = rrx.recv().await {
                v.push(i);
            }
            v
        })
        .await
        .expect("two jobs ran at once");
        assert_eq!(got, vec![0, 1]);
        stage.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_output_stops_the_stage() {
        let (jtx, jrx) = mpsc::channel(4);
        let (rtx, rrx) = mpsc::channel(1);
        drop(rrx);
        let stage = spawn_ordered(vec![()], |_: &mut (), i: u32| i, |_: &u32| true, jrx, rtx);
        jtx.send(1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), stage)
            .await
            .expect("the stage ended")
            .unwrap();
    }
}
