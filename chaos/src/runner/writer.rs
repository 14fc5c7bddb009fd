//! The built-in NBD block writer used by `tandem demo` and `tandem chaos run`: writes mixed
//! data at seeded offsets through a connection pool it can re-point at a new primary, and
//! records every operation (invoke / ok / fail / info) for the checkers.

use crate::history::{Op, OpKind, Recorder};
use crate::nbd_client::NbdPool;
use crate::workload::{plan_write, WorkloadConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tandem_core::ids::Epoch;

/// Where a writer writes now, and the label its acknowledged writes get.
struct Target {
    addr: SocketAddr,
    pool: Arc<NbdPool>,
    /// (site, epoch) recorded on `ok` writes invoked while this target is set.
    label: Option<(String, u64)>,
}

/// A running writer: `workers` tasks writing until `stop`.
pub struct Writer {
    target: RwLock<Target>,
    stop: AtomicBool,
    incompressible: AtomicBool,
    next: AtomicU64,
    /// Writes acknowledged.
    pub ok: AtomicU64,
    /// Writes failed or with unknown outcome.
    pub failed: AtomicU64,
    /// Bytes acknowledged.
    pub bytes: AtomicU64,
    /// Every operation.
    pub rec: Arc<Recorder>,
    cfg: WorkloadConfig,
    export: String,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Writer {
    /// A writer of `cfg`'s shape towards `addr`/`export`, recording into `rec`.
    pub fn new(
        addr: SocketAddr,
        export: &str,
        cfg: WorkloadConfig,
        rec: Arc<Recorder>,
    ) -> Arc<Writer> {
        Arc::new(Writer {
            target: RwLock::new(Target {
                addr,
                pool: Arc::new(NbdPool::new(addr, export, 4)),
                label: None,
            }),
            stop: AtomicBool::new(false),
            incompressible: AtomicBool::new(false),
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rec,
            cfg,
            export: export.to_owned(),
            tasks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Points the writer at another NBD server (the new primary); no-op if unchanged.
    pub fn retarget(&self, addr: SocketAddr) {
        let mut t = self.target.write().unwrap_or_else(|p| p.into_inner());
        if t.addr != addr {
            t.addr = addr;
            t.pool = Arc::new(NbdPool::new(addr, &self.export, 4));
        }
    }

    /// Like [`Writer::retarget`], and from now on labels acknowledged writes with the site
    /// they went to and the newest epoch the caller knows (for the split-brain checker). Both
    /// change at once, so a write is never labelled with the new site but sent to the old.
    pub fn retarget_labeled(&self, addr: SocketAddr, site: &str, epoch: u64) {
        let mut t = self.target.write().unwrap_or_else(|p| p.into_inner());
        if t.addr != addr {
            t.addr = addr;
            t.pool = Arc::new(NbdPool::new(addr, &self.export, 4));
        }
        t.label = Some((site.to_owned(), epoch));
    }

    /// Writes the workload's seeded random data as it is (zstd cannot shrink it) instead of
    /// mixed content, so the bytes on the wire equal the bytes written.
    pub fn set_incompressible(&self, on: bool) {
        self.incompressible.store(on, Ordering::SeqCst);
    }

    /// Starts `n` writer tasks on `rt`.
    pub fn start(self: &Arc<Self>, rt: &tokio::runtime::Runtime, n: u64) {
        self.start_at(rt, n, 100_000);
    }

    /// Starts `n` writer tasks on `rt` whose history process ids begin near `process_base`
    /// (several writers sharing one recorder need disjoint ids).
    pub fn start_at(self: &Arc<Self>, rt: &tokio::runtime::Runtime, n: u64, process_base: u64) {
        self.stop.store(false, Ordering::SeqCst);
        let base = self.next.load(Ordering::SeqCst) + process_base;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..n {
            tasks.push(rt.spawn(task(self.clone(), base + i)));
        }
    }

    /// Stops the tasks and waits (bounded) for them to end.
    pub fn stop(&self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        rt.block_on(async {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
        });
    }
}

async fn task(w: Arc<Writer>, mut process: u64) {
    while !w.stop.load(Ordering::SeqCst) {
        let i = w.next.fetch_add(1, Ordering::SeqCst);
        let plan = plan_write(&w.cfg, i);
        // Mixed content (text, records, zeroes, noise) so compression is realistic.
        let data = if w.incompressible.load(Ordering::Relaxed) {
            plan.data
        } else {
            tandem_core::mixed::mixed(w.cfg.seed ^ i, plan.data.len())
        };
        let (pool, label) = {
            let t = w.target.read().unwrap_or_else(|p| p.into_inner());
            (t.pool.clone(), t.label.clone())
        };
        w.rec
            .record(Op::write(process, OpKind::Invoke, plan.offset, &data, 0));
        let r = tokio::time::timeout(w.cfg.op_timeout, pool.write(plan.offset, &data, false)).await;
        match r {
            Ok(Ok(())) => {
                let mut op = Op::write(process, OpKind::Ok, plan.offset, &data, 0);
                if let Some((site, epoch)) = &label {
                    op = op.with_site(site).with_epoch(Epoch(*epoch));
                }
                w.rec.record(op);
                w.ok.fetch_add(1, Ordering::SeqCst);
                w.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            Ok(Err(e)) if e.write_definitely_not_applied() => {
                w.rec
                    .record(Op::write(process, OpKind::Fail, plan.offset, &data, 0));
                w.failed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {
                // Unknown outcome: this process id is retired, as Jepsen does.
                w.rec
                    .record(Op::write(process, OpKind::Info, plan.offset, &data, 0));
                w.failed.fetch_add(1, Ordering::SeqCst);
                process += 1000;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
