//! Reusable data buffers for the data path: a change's data is read (NBD payload) or
//! decompressed (replica) into a buffer taken here, and the image write gives it back once
//! the bytes are in the file, so the hot path allocates no data buffer per write. Large
//! buffers freed and allocated again would otherwise be handed back to the kernel by the
//! allocator and faulted in, page by page, zeroed, on the next write.
//!
//! Bounded: at most [`KEPT`] buffers, each of [`MIN_KEPT`] to [`MAX_KEPT`] bytes of capacity,
//! and at most [`KEPT_BYTES`] of capacity in all (an idle replicator holds no more than that).

use std::sync::Mutex;

/// Most buffers kept.
pub const KEPT: usize = 32;
/// Smallest capacity kept (smaller buffers are cheap to allocate).
pub const MIN_KEPT: usize = 64 << 10;
/// Largest capacity kept (a rare huge buffer is freed, not kept).
pub const MAX_KEPT: usize = 8 << 20;
/// Most capacity kept in all: 32 one-MiB writes in flight, or a few large ones.
pub const KEPT_BYTES: usize = 32 << 20;

/// A bounded set of spare buffers.
struct Pool(Mutex<Vec<Vec<u8>>>);

static POOL: Pool = Pool(Mutex::new(Vec::new()));

impl Pool {
    fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_KEPT {
            let mut spare = crate::bytes::lock(&self.0);
            if let Some(i) = spare
                .iter()
                .position(|b| b.capacity() >= len && b.capacity() / 2 <= len)
            {
                return spare.swap_remove(i);
            }
        }
        Vec::with_capacity(len)
    }

    fn give(&self, mut buf: Vec<u8>) {
        if !(MIN_KEPT..=MAX_KEPT).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut spare = crate::bytes::lock(&self.0);
        let held: usize = spare.iter().map(Vec::capacity).sum();
        if spare.len() < KEPT && held + buf.capacity() <= KEPT_BYTES {
            spare.push(buf);
        }
    }
}

/// An empty buffer with room for `len` bytes: a kept one that is not more than twice as
/// large, or a new one.
pub fn take(len: usize) -> Vec<u8> {
    POOL.take(len)
}

/// Gives back a buffer its owner is done with (kept when it fits the bounds).
pub fn give(buf: Vec<u8>) {
    POOL.give(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_for_a_payload_it_fits_and_no_other() {
        let pool = Pool(Mutex::new(Vec::new()));
        let mut b = pool.take(1 << 20);
        b.extend_from_slice(&[7u8; 100]);
        let ptr = b.as_ptr();
        pool.give(b);
        // (len, gets the kept buffer?)
        let cases = [(100 << 10, false), (4 << 20, false), (600 << 10, true)];
        for (i, (len, want)) in cases.into_iter().enumerate() {
            let got = pool.take(len);
            let kept = got.as_ptr() == ptr;
            assert_eq!(kept, want, "#{i}: len {len}: expect {want} got {kept}");
            assert!(got.is_empty() && got.capacity() >= len);
            if kept {
                pool.give(got);
            }
        }
        // Outside the bounds: not kept; never more than KEPT.
        pool.give(Vec::with_capacity(1024));
        pool.give(Vec::with_capacity(MAX_KEPT + 1));
        for _ in 0..KEPT + 5 {
            pool.give(Vec::with_capacity(MIN_KEPT));
        }
        let spare = crate::bytes::lock(&pool.0);
        assert_eq!(spare.len(), KEPT);
        assert!(spare
            .iter()
            .all(|b| (MIN_KEPT..=MAX_KEPT).contains(&b.capacity())));
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_byte_bound() {
        let pool = Pool(Mutex::new(Vec::new()));
        for _ in 0..KEPT {
            pool.give(Vec::with_capacity(MAX_KEPT));
        }
        let held: usize = crate::bytes::lock(&pool.0).iter().map(Vec::capacity).sum();
        assert!(held <= KEPT_BYTES, "{held} bytes kept");
        assert_eq!(held / MAX_KEPT, KEPT_BYTES / MAX_KEPT);
    }
}
