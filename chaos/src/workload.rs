//! A seeded block-writer workload: writes deterministic data at random block-aligned offsets
//! through any async write function and records every operation in a history.
//!
//! What op `i` writes, and where, depends only on the seed and `i` ([`plan_write`]), never on
//! timing or concurrency, so a seed from a report replays the same data.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_core::ids::Epoch;

use crate::history::{Op, OpKind, Recorder};
use crate::rng::SplitMix64;
use crate::ChaosError;

/// Largest single write (the NBD payload limit).
pub const MAX_WRITE: u64 = 32 * 1024 * 1024;

/// Salt separating the offset stream from the data stream of the same op.
const OFFSET_SALT: u64 = 0x0FF5_E7C0_FFEE_0001;

/// Shape and bounds of a write workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Seed of offsets and data.
    pub seed: u64,
    /// Volume size in bytes; writes stay inside it.
    pub volume_size: u64,
    /// Alignment and unit of writes (4 KiB by default).
    pub block_size: u64,
    /// Blocks per write (every write has the same length, so ranges never partly overlap).
    pub blocks_per_write: u64,
    /// Stop after this many writes.
    pub max_ops: u64,
    /// Stop starting writes after this long.
    pub max_duration: Duration,
    /// Writes in flight at once (at least 1).
    pub concurrency: usize,
    /// A write not answered within this is recorded `info` and abandoned.
    pub op_timeout: Duration,
    /// Pause of a worker after a failed or indeterminate write (avoids spinning on a dead
    /// target).
    pub error_backoff: Duration,
}

impl WorkloadConfig {
    /// Defaults: 4 KiB single-block writes, 1000 ops, 10 s, 4 in flight, 5 s op timeout,
    /// 50 ms back-off.
    pub fn new(seed: u64, volume_size: u64) -> Self {
        Self {
            seed,
            volume_size,
            block_size: 4096,
            blocks_per_write: 1,
            max_ops: 1000,
            max_duration: Duration::from_secs(10),
            concurrency: 4,
            op_timeout: Duration::from_secs(5),
            error_backoff: Duration::from_millis(50),
        }
    }

    /// Bytes per write.
    pub fn write_len(&self) -> u64 {
        self.block_size.saturating_mul(self.blocks_per_write)
    }

    /// Checks that writes fit the volume and the bounds are usable.
    ///
    /// # Errors
    /// `Config` naming the field.
    pub fn validate(&self) -> Result<(), ChaosError> {
        let bad = |field, reason: String| Err(ChaosError::Config { field, reason });
        if self.block_size == 0 {
            return bad("block_size", "must be at least 1".into());
        }
        if self.blocks_per_write == 0 {
            return bad("blocks_per_write", "must be at least 1".into());
        }
        if self.write_len() > MAX_WRITE {
            return bad(
                "blocks_per_write",
                format!("{} bytes per write, limit {MAX_WRITE}", self.write_len()),
            );
        }
        if self.write_len() > self.volume_size {
            return bad(
                "volume_size",
                format!(
                    "{} bytes cannot hold a {}-byte write",
                    self.volume_size,
                    self.write_len()
                ),
            );
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1".into());
        }
        Ok(())
    }
}

/// One planned write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    /// The op's index in the run.
    pub index: u64,
    /// Block-aligned byte offset.
    pub offset: u64,
    /// The data.
    pub data: Vec<u8>,
}

/// What write `index` of a run with `config` writes and where. Pure and deterministic.
/// Call on a validated config.
pub fn plan_write(config: &WorkloadConfig, index: u64) -> PlannedWrite {
    let len = config.write_len();
    let block = config.block_size.max(1);
    let slots = config.volume_size.saturating_sub(len) / block + 1;
    let offset = SplitMix64::for_stream(config.seed ^ OFFSET_SALT, index).below(slots) * block;
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    SplitMix64::for_stream(config.seed, index).fill(&mut data);
    PlannedWrite {
        index,
        offset,
        data,
    }
}

/// What a successful write reports; recorded on its `ok` event for the split-brain checker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteAck {
    /// The epoch the write was accepted in, if the write path knows it.
    pub epoch: Option<Epoch>,
    /// The site that accepted it, if known.
    pub site: Option<String>,
}

impl From<()> for WriteAck {
    fn from((): ()) -> Self {
        WriteAck::default()
    }
}

/// Counts of a finished workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Writes started.
    pub invoked: u64,
    /// Writes acknowledged.
    pub ok: u64,
    /// Writes that certainly failed.
    pub failed: u64,
    /// Writes with unknown outcome (errors and timeouts).
    pub indeterminate: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// Runs the workload: up to `concurrency` writes in flight through `write(offset, data)`,
/// until `max_ops` writes were started or `max_duration` passed. Every write is recorded in
/// `recorder` as `invoke` then `ok`, `fail` (errors for which
/// [`ChaosError::write_definitely_not_applied`] holds) or `info` (other errors, timeouts).
/// After an `info` the worker continues under a new process id.
///
/// # Errors
/// `Config` when the config is invalid; write errors are recorded, not returned.
pub async fn run_writes<F, Fut, A>(
    config: &WorkloadConfig,
    recorder: &Recorder,
    write: F,
) -> Result<WorkloadSummary, ChaosError>
where
    F: Fn(u64, Vec<u8>) -> Fut,
    Fut: Future<Output = Result<A, ChaosError>>,
    A: Into<WriteAck>,
{
    config.validate()?;
    let start = Instant::now();
    let deadline = start + config.max_duration;
    let next = AtomicU64::new(0);
    let counts = [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ];
    let workers = (0..config.concurrency).map(|w| {
        let write = &write;
        let next = &next;
        let counts = &counts;
        async move {
            let mut process = w as u64;
            loop {
                if Instant::now() >= deadline {
                    return;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= config.max_ops {
                    return;
                }
                let plan = plan_write(config, index);
                let len = plan.data.len() as u64;
                let hash = crate::history::hash_hex(&plan.data);
                let event = |kind| {
                    Op::new(process, kind, crate::history::OpFn::Write, 0)
                        .with_range(plan.offset, len)
                        .with_hash(hash.clone())
                };
                recorder.record(event(OpKind::Invoke));
                counts[0].fetch_add(1, Ordering::Relaxed);
                let outcome =
                    tokio::time::timeout(config.op_timeout, write(plan.offset, plan.data)).await;
                let failed = match outcome {
                    Ok(Ok(ack)) => {
                        let ack: WriteAck = ack.into();
                        let mut op = event(OpKind::Ok);
                        op.epoch = ack.epoch;
                        op.site = ack.site;
                        recorder.record(op);
                        counts[1].fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Ok(Err(e)) if e.write_definitely_not_applied() => {
                        recorder.record(event(OpKind::Fail).with_note(e.to_string()));
                        counts[2].fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Ok(Err(e)) => {
                        recorder.record(event(OpKind::Info).with_note(e.to_string()));
                        counts[3].fetch_add(1, Ordering::Relaxed);
                        process += config.concurrency as u64;
                        true
                    }
                    Err(_) => {
                        recorder.record(event(OpKind::Info).with_note(format!(
                            "timed out after {} ms",
                            config.op_timeout.as_millis()
                        )));
                        counts[3].fetch_add(1, Ordering::Relaxed);
                        process += config.concurrency as u64;
                        true
                    }
                };
                if failed && !config.error_backoff.is_zero() {
                    tokio::time::sleep(config.error_backoff).await;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    Ok(WorkloadSummary {
        invoked: get(0),
        ok: get(1),
        failed: get(2),
        indeterminate: get(3),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{lost_acknowledged_writes, ReplicationMode};
    use crate::history::OpFn;
    use proptest::prelude::*;
    use std::sync::Mutex;

    const VOL: u64 = 64 * 4096;

    /// An in-memory volume whose writes can be told to misbehave.
    struct MemVolume {
        bytes: Mutex<Vec<u8>>,
    }

    impl MemVolume {
        fn new() -> Self {
            Self {
                bytes: Mutex::new(vec![0; VOL as usize]),
            }
        }
        fn store(&self, offset: u64, data: &[u8]) {
            let mut b = self.bytes.lock().unwrap();
            b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn hash(&self, offset: u64, len: u64) -> blake3::Hash {
            let b = self.bytes.lock().unwrap();
            blake3::hash(&b[offset as usize..(offset + len) as usize])
        }
    }

    fn config(ops: u64) -> WorkloadConfig {
        let mut c = WorkloadConfig::new(11, VOL);
        c.max_ops = ops;
        c.error_backoff = Duration::ZERO;
        c
    }

    #[test]
    fn plans_are_deterministic_aligned_and_inside_the_volume() {
        let c = config(10);
        for i in 0..100 {
            let p = plan_write(&c, i);
            assert_eq!(p, plan_write(&c, i));
            assert_eq!(p.offset % 4096, 0);
            assert!(p.offset + p.data.len() as u64 <= VOL);
        }
        assert_ne!(plan_write(&c, 0).data, plan_write(&c, 1).data);
        let mut other = c.clone();
        other.seed = 12;
        assert_ne!(plan_write(&c, 0).data, plan_write(&other, 0).data);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let mut c = config(1);
        c.volume_size = 100;
        assert!(matches!(
            c.validate(),
            Err(ChaosError::Config {
                field: "volume_size",
                ..
            })
        ));
        let mut c = config(1);
        c.concurrency = 0;
        assert!(c.validate().is_err());
        let mut c = config(1);
        c.block_size = 0;
        assert!(c.validate().is_err());
    }

    #[tokio::test]
    async fn honest_volume_passes_the_lost_write_checker() {
        let vol = MemVolume::new();
        let rec = Recorder::new(Instant::now());
        let summary = run_writes(&config(200), &rec, |off, data: Vec<u8>| {
            let vol = &vol;
            async move {
                tokio::task::yield_now().await;
                vol.store(off, &data);
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(summary.invoked, 200);
        assert_eq!(summary.ok, 200);
        let h = rec.into_history();
        assert_eq!(h.len(), 400);
        let v = lost_acknowledged_writes(&h, &|o, l| vol.hash(o, l), ReplicationMode::Sync, 0, 0);
        assert!(v.ok, "{:?}", v.violations);
    }

    #[tokio::test]
    async fn volume_that_drops_an_acknowledged_write_is_caught() {
        let vol = MemVolume::new();
        let rec = Recorder::new(Instant::now());
        let c = config(100);
        // Op 99 is the last one; its block was probably never rewritten afterwards.
        let victim = plan_write(&c, 99);
        run_writes(&c, &rec, |off, data: Vec<u8>| {
            let vol = &vol;
            let skip = data == victim.data;
            async move {
                if !skip {
                    vol.store(off, &data);
                }
                Ok(())
            }
        })
        .await
        .unwrap();
        let v = lost_acknowledged_writes(
            &rec.into_history(),
            &|o, l| vol.hash(o, l),
            ReplicationMode::Sync,
            0,
            0,
        );
        assert!(!v.ok);
        assert!(
            v.violations[0].contains(&format!("offset {}", victim.offset)),
            "{:?}",
            v.violations
        );
    }

    #[tokio::test]
    async fn errors_become_fail_or_info_and_info_changes_the_process() {
        let rec = Recorder::new(Instant::now());
        let mut c = config(4);
        c.concurrency = 1;
        c.op_timeout = Duration::from_millis(50);
        let calls = AtomicU64::new(0);
        run_writes(&c, &rec, |off, _data: Vec<u8>| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                match n {
                    0 => Ok(WriteAck {
                        epoch: Some(Epoch(2)),
                        site: Some("east".into()),
                    }),
                    1 => Err(ChaosError::NbdCommand {
                        command: "write",
                        offset: off,
                        length: 4096,
                        errno: 1,
                    }),
                    2 => Err(ChaosError::io(
                        "write",
                        std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                    )),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(WriteAck::default())
                    }
                }
            }
        })
        .await
        .unwrap();
        let h = rec.into_history();
        let completions: Vec<(OpKind, u64)> = h
            .ops()
            .iter()
            .filter(|o| o.kind.is_completion())
            .map(|o| (o.kind, o.process))
            .collect();
        assert_eq!(
            completions,
            vec![
                (OpKind::Ok, 0),
                (OpKind::Fail, 0),
                (OpKind::Info, 0),
                (OpKind::Info, 1)
            ]
        );
        assert_eq!(h.ops()[1].epoch, Some(Epoch(2)));
        assert_eq!(h.ops()[1].site.as_deref(), Some("east"));
        assert!(h.ops()[7].note.as_deref().unwrap().contains("timed out"));
        assert!(h.ops().iter().all(|o| o.f == OpFn::Write));
    }

    #[tokio::test]
    async fn concurrency_limit_is_reached_and_never_exceeded() {
        let rec = Recorder::new(Instant::now());
        let mut c = config(40);
        c.concurrency = 3;
        let in_flight = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        run_writes(&c, &rec, |_, _| {
            let (in_flight, peak) = (&in_flight, &peak);
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn duration_bound_stops_the_run() {
        let rec = Recorder::new(Instant::now());
        let mut c = config(u64::MAX);
        c.max_duration = Duration::from_millis(100);
        let s = run_writes(&c, &rec, |_, _| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
        .await
        .unwrap();
        assert!(s.elapsed < Duration::from_millis(500), "{:?}", s.elapsed);
        assert!(s.invoked > 0 && s.invoked < 200, "{}", s.invoked);
    }

    proptest! {
        #[test]
        fn plans_fit_any_valid_shape(seed in any::<u64>(), blocks in 1u64..8,
                                     volume_blocks in 8u64..1000, index in any::<u64>()) {
            let mut c = WorkloadConfig::new(seed, volume_blocks * 4096);
            c.blocks_per_write = blocks;
            prop_assert!(c.validate().is_ok());
            let p = plan_write(&c, index);
            prop_assert_eq!(p.offset % 4096, 0);
            prop_assert_eq!(p.data.len() as u64, blocks * 4096);
            prop_assert!(p.offset + p.data.len() as u64 <= c.volume_size);
        }
    }
}
