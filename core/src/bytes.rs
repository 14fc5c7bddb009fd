//! Small helpers every crate needs once: lower-case hex of hashes and roots, little-endian
//! reads at an offset of a checked buffer, and the poison-tolerant mutex lock. Pure.

use std::sync::{Mutex, MutexGuard};

/// Lower-case hex of `bytes` (a blake3 hash, a merkle root).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The little-endian `u64` at `b[at..at + 8]`.
///
/// The caller has checked the length: a short buffer is a bug, not input (it panics).
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Locks `m`, going on through a poisoned lock: every mutex of Tandem guards data that stays
/// consistent between statements, so a panic elsewhere does not make it unusable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn le_u64_reads_at_an_offset() {
        let b = [9, 1, 0, 0, 0, 0, 0, 0, 0x80];
        assert_eq!(le_u64(&b, 1), 0x8000_0000_0000_0001);
    }

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison");
        })
        .join();
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
