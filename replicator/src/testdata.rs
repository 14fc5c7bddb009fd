//! Test data shared by the crate's unit tests.

/// `len` bytes of xorshift noise: incompressible, the same every run.
pub(crate) fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
