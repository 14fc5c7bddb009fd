//! The undo encoders: threads that each keep one zstd context and encode history records off
//! the apply thread. A record handed to [`Encoders::submit`] comes back, encoded, through its
//! [`Pending`]; [`super::History`] takes them back in the order it submitted them and only
//! then appends them (the append order, and when records are made durable, stay the store's).

use super::codec::{encode_with, Record};
use crate::error::{ReplicatorError, Result};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A record encoded by a worker: the record (its data taken out once encoded) and its bytes.
pub(super) type Encoded = (Record, Result<Vec<u8>>);

/// One record on its way through a worker.
struct Job {
    record: Record,
    done: mpsc::SyncSender<Encoded>,
}

/// A submitted record, to be waited for in submission order.
#[derive(Debug)]
pub(super) struct Pending(mpsc::Receiver<Encoded>);

impl Pending {
    /// Waits for the record to be encoded.
    ///
    /// # Errors
    /// [`ReplicatorError::Task`] when its worker is gone (it panicked, or the encoders were
    /// dropped); the encoding's own error otherwise.
    pub(super) fn wait(self) -> Result<(Record, Vec<u8>)> {
        let (record, bytes) = self
            .0
            .recv()
            .map_err(|_| ReplicatorError::Task("an undo encoder thread stopped".into()))?;
        Ok((record, bytes?))
    }
}

/// The worker threads of one history (joined on drop, once their queue is closed).
pub(super) struct Encoders {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Encoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoders")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Encoders {
    /// Starts `n` (at least one) workers compressing at zstd `level`; `dir` names the history
    /// in errors and thread names.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] when zstd cannot make a context or a thread cannot start.
    pub(super) fn start(n: usize, level: i32, dir: &Path) -> Result<Encoders> {
        let mut contexts = Vec::new();
        for _ in 0..n.max(1) {
            contexts.push(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| ReplicatorError::io("zstd context", dir, e))?,
            );
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut encoders = Encoders {
            jobs: Some(tx),
            threads: Vec::new(),
        };
        for (i, mut z) in contexts.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let t = std::thread::Builder::new()
                .name(format!("tandem-undo-{i}"))
                .spawn(move || loop {
                    // One worker waits on the queue at a time; the lock is released as soon
                    // as it has a job.
                    let job = match rx.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(Job { mut record, done }) = job else {
                        return;
                    };
                    let bytes = encode_with(&record, &mut |d| z.compress(d).ok());
                    // Encoded: the old bytes' buffer serves a later read.
                    tandem_core::buffers::give(std::mem::take(&mut record.data));
                    // The history may have stopped waiting (reset, dropped): nothing to do.
                    let _ = done.send((record, bytes));
                })
                .map_err(|e| ReplicatorError::io("spawn undo encoder", dir, e))?;
            encoders.threads.push(t);
        }
        Ok(encoders)
    }

    /// How many records are encoded at once.
    pub(super) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Hands `record` to the next free worker.
    pub(super) fn submit(&self, record: Record) -> Pending {
        let (done, rx) = mpsc::sync_channel(1);
        if let Some(jobs) = &self.jobs {
            // A failed send drops the job and its sender: `wait` then reports the stop.
            let _ = jobs.send(Job { record, done });
        }
        Pending(rx)
    }
}

impl Drop for Encoders {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
