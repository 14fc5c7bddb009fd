//! Deterministic "mixed" test data (text, binary, zero runs, noise) for benchmarks and workloads.
//!
//! Benchmarks and the demo need data that compresses like a real volume does (STACK-NOTES:
//! zstd -1 ratio about 3 on mixed binaries and text), reproducibly from a seed.

/// A small, fast PRNG (xorshift64*), enough for test data; not for anything secret.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "replica",
    "primary",
    "journal",
    "epoch",
    "watermark",
    "barrier",
    "commit",
    "select",
    "from",
    "where",
    "hanoi",
    "hcm",
    "INFO",
    "WARN",
    "request",
    "latency_ms=",
    "200",
    "GET /api/v1/",
    "user_id",
    "order",
    "status",
    "\n",
    "{\"id\":",
    "\"ts\":",
    "}",
    " ",
    " ",
    " ",
    ",",
];

/// Fills `len` bytes of mixed content from `seed`: runs of log-like text, structured binary
/// records, zero runs and incompressible noise, in proportions that give zstd level 1 a ratio
/// near 3.
pub fn mixed(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let run = 256 + rng.below(3840) as usize;
        match rng.below(10) {
            0..=4 => {
                let end = out.len() + run;
                while out.len() < end {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                    out.extend_from_slice(w.as_bytes());
                    if rng.below(4) == 0 {
                        out.extend_from_slice(rng.below(100_000).to_string().as_bytes());
                    }
                }
            }
            5 | 6 => {
                // Fixed-layout records with small varying fields, like a database page.
                let base = rng.next_u64();
                for i in 0..run / 16 {
                    out.extend_from_slice(&(base.wrapping_add(i as u64)).to_le_bytes());
                    out.extend_from_slice(&(rng.below(256) as u32).to_le_bytes());
                    out.extend_from_slice(&[0, 0, 0, 1]);
                }
            }
            7 | 8 => out.resize(out.len() + run, 0),
            _ => {
                for _ in 0..run / 8 {
                    out.extend_from_slice(&rng.next_u64().to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_is_deterministic_and_sized() {
        assert_eq!(mixed(7, 100_000), mixed(7, 100_000));
        assert_ne!(mixed(7, 4096), mixed(8, 4096));
        assert_eq!(mixed(1, 12_345).len(), 12_345);
    }

    #[test]
    fn mixed_compresses_like_a_real_volume() {
        let data = mixed(42, 1 << 20);
        let c = zstd::bulk::compress(&data, 1).unwrap();
        let ratio = data.len() as f64 / c.len() as f64;
        assert!((2.0..6.0).contains(&ratio), "ratio {ratio}");
    }
}
