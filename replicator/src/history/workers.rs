//! The undo encoders: threads that each keep one zstd context and encode history records off
//! the apply thread. A record handed to [`Encoders::submit`] comes back, encoded, through its
//! [`Pending`]; [`super::History`] takes them back in the order it submitted them and only
//! then appends them (the append order, and when records are made durable, stay the store's).
//! The old bytes' buffers come back with the records and are kept, initialised, for the next
//! reads ([`Spare`]): reading old bytes zero-fills or faults in no memory once warm.

use super::codec::{encode_with, Record};
use crate::error::{ReplicatorError, Result};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A record encoded by a worker: the record (its data still in it, for [`Spare::keep`]) and
/// its bytes.
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
    pub(super) fn wait(self) -> Result<Encoded> {
        self.0
            .recv()
            .map_err(|_| ReplicatorError::Task("an undo encoder thread stopped".into()))
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
    /// Starts `n` (at least one) workers compressing at zstd `level` (`None`: encoding only,
    /// the data stored raw); `dir` names the history in errors and thread names.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] when zstd cannot make a context or a thread cannot start.
    pub(super) fn start(n: usize, level: Option<i32>, dir: &Path) -> Result<Encoders> {
        let mut contexts = Vec::new();
        for _ in 0..n.max(1) {
            contexts.push(match level {
                Some(l) => Some(
                    zstd::bulk::Compressor::new(l)
                        .map_err(|e| ReplicatorError::io("zstd context", dir, e))?,
                ),
                None => None,
            });
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
                    let Ok(Job { record, done }) = job else {
                        return;
                    };
                    let bytes = encode_with(&record, &mut |d| {
                        z.as_mut().and_then(|z| z.compress(d).ok())
                    });
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

/// Most bytes of old-data buffers one history keeps for its next reads: a whole apply batch
/// (16 MiB of changes) of pieces in flight.
pub(super) const SPARE_BYTES: usize = 16 << 20;

/// Old-data buffers kept between reads, initialised (their length is kept): a buffer taken
/// again for as many bytes or fewer is neither zero-filled nor faulted in again. Bounded by
/// [`SPARE_BYTES`] of capacity. Pure.
#[derive(Debug, Default)]
pub(super) struct Spare {
    kept: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    /// A buffer of exactly `len` bytes (their content is whatever a kept buffer held: the
    /// caller overwrites all of them): a kept buffer with room for them, or a new one.
    pub(super) fn take(&mut self, len: usize) -> Vec<u8> {
        let found = self.kept.iter().position(|b| b.capacity() >= len);
        let mut buf = match found {
            Some(i) => {
                let b = self.kept.swap_remove(i);
                self.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        };
        // Only bytes never initialised in this buffer are zero-filled.
        buf.resize(len, 0);
        buf
    }

    /// Keeps `buf` for a later [`Spare::take`] while under [`SPARE_BYTES`].
    pub(super) fn keep(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 && self.bytes + buf.capacity() <= SPARE_BYTES {
            self.bytes += buf.capacity();
            self.kept.push(buf);
        }
    }

    /// Bytes of capacity kept.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spare_buffer_is_reused_with_its_bytes_initialised() {
        let mut s = Spare::default();
        let mut b = s.take(1000);
        assert_eq!(b.len(), 1000);
        b.fill(7);
        let at = b.as_ptr();
        s.keep(b);
        // Fewer bytes: the same buffer, shortened, its old content kept (no zero-fill).
        let b = s.take(600);
        assert_eq!((b.len(), b.as_ptr()), (600, at));
        assert!(b.iter().all(|&x| x == 7));
        s.keep(b);
        // More bytes than its length but within its capacity: grown in place.
        let b = s.take(1000);
        assert_eq!((b.len(), b.as_ptr()), (1000, at));
        s.keep(b);
        assert_eq!(s.bytes(), s.kept[0].capacity());
    }

    #[test]
    fn spare_takes_a_buffer_large_enough_or_a_new_one() {
        let mut s = Spare::default();
        s.keep(Vec::with_capacity(100));
        s.keep(Vec::with_capacity(5000));
        let b = s.take(4000);
        assert!(b.capacity() >= 4000 && b.len() == 4000);
        assert_eq!(s.bytes(), 100);
        let b2 = s.take(200);
        assert_eq!(b2.len(), 200);
        assert_eq!(s.bytes(), 100, "the small one stays: too small");
    }

    #[test]
    fn spare_keeps_at_most_its_bound() {
        let mut s = Spare::default();
        for _ in 0..(SPARE_BYTES / (1 << 20)) + 3 {
            s.keep(Vec::with_capacity(1 << 20));
        }
        assert!(s.bytes() <= SPARE_BYTES);
        assert!(s.bytes() + (1 << 20) > SPARE_BYTES);
        s.keep(Vec::new());
        assert!(s.kept.iter().all(|b| b.capacity() > 0));
    }
}
