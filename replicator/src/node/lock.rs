//! Locks of the node: the poison-tolerant mutex helper and the byte-range lock that orders
//! overlapping writes of a volume (journal then image, one after the other). In-memory only.

use std::sync::Mutex;

pub(super) use tandem_core::bytes::lock;

/// A lock on byte ranges of one resource namespace: overlapping holders exclude each other,
/// disjoint ones run concurrently.
#[derive(Default)]
pub struct RangeLock {
    pub(super) held: Mutex<Vec<(String, u64, u64)>>,
    pub(super) freed: tokio::sync::Notify,
}

/// A held range; released on drop.
pub struct RangeGuard<'a> {
    pub(super) lock: &'a RangeLock,
    pub(super) key: (String, u64, u64),
}

impl RangeLock {
    /// Waits until no holder overlaps `[start, end)` of `resource`, then holds it.
    pub async fn lock(&self, resource: &str, start: u64, end: u64) -> RangeGuard<'_> {
        loop {
            let notified = self.freed.notified();
            {
                let mut held = lock(&self.held);
                let busy = held
                    .iter()
                    .any(|(r, s, e)| r == resource && *s < end && start < *e);
                if !busy {
                    let key = (resource.to_owned(), start, end);
                    held.push(key.clone());
                    return RangeGuard { lock: self, key };
                }
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.lock.held);
        if let Some(i) = held.iter().position(|k| *k == self.key) {
            held.swap_remove(i);
        }
        drop(held);
        self.lock.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    #[tokio::test]
    async fn overlapping_ranges_wait_and_disjoint_ones_do_not() {
        let l = RangeLock::default();
        let a = l.lock("d", 0, 10).await;
        let short = Duration::from_millis(50);
        let b = timeout(short, l.lock("d", 10, 20)).await.expect("adjacent");
        let c = timeout(short, l.lock("e", 0, 10))
            .await
            .expect("other resource");
        assert!(timeout(short, l.lock("d", 5, 15)).await.is_err(), "overlap");
        drop(a);
        assert!(timeout(short, l.lock("d", 5, 15)).await.is_err(), "still b");
        drop(b);
        let d = timeout(Duration::from_secs(5), l.lock("d", 5, 15)).await;
        assert!(d.is_ok(), "free once both holders are gone");
        drop((c, d));
        assert!(lock(&l.held).is_empty());
    }
}
