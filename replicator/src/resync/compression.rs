//! How resync blocks cross the link: the setting, the level chosen per link from measured
//! throughput ([`choose_level`], pure), and the per-block zstd codec both sides use.
//!
//! Compressing pays only while the compressor is faster than the link: with `C` the
//! compressor's throughput (raw bytes in, all its cores) and `B` the link's, a byte costs `1/B`
//! raw and `max(1/C, 1/(B·ratio))` compressed, which is less exactly when `C > B`. Past that,
//! a higher level buys a better ratio for as long as the compressor still keeps up with what the
//! link drains (`C_level ≥ B·ratio`).

pub use tandem_core::compression::{Compression, MAX_LEVEL};

/// Below this level-1 ratio (raw / compressed) the data is taken as incompressible.
pub const MIN_RATIO: f64 = 1.1;

/// Blocks of the probe batch an automatic choice measures the link with (sent raw).
pub const PROBE_BLOCKS: usize = 8;

/// Approximate zstd throughput at a level, relative to level 1 (zstd 1.5 on mixed data).
const LEVEL_SPEED: [(i32, f64); 6] = [
    (1, 1.0),
    (3, 0.6),
    (6, 0.25),
    (9, 0.15),
    (12, 0.08),
    (19, 0.01),
];

/// What an automatic choice knows about the link and the compressor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkEstimate {
    /// Raw bytes per second the link carried (measured, capped by a configured bandwidth);
    /// `None` when unknown.
    pub link_bytes_per_sec: Option<f64>,
    /// zstd level-1 throughput of one core on a sample of the data, raw bytes per second.
    pub zstd1_bytes_per_sec: f64,
    /// Raw / compressed at level 1 on that sample.
    pub zstd1_ratio: f64,
    /// Cores the compressor runs on.
    pub cores: u32,
}

/// The zstd level to ask for (0: raw) under `setting`, given what is known of the link. Pure.
///
/// `Off` is 0 and `Zstd(l)` is `l` clamped to `1..=MAX_LEVEL`. `Auto` is 0 when the data does
/// not compress (`zstd1_ratio < MIN_RATIO`) or the link is at least as fast as the compressor
/// on all its cores; otherwise the highest level whose estimated throughput still keeps up with
/// what the link drains (`link × ratio`), and at least 1. An unknown link gets level 1.
pub fn choose_level(setting: Compression, est: &LinkEstimate) -> i32 {
    match setting {
        Compression::Off => 0,
        Compression::Zstd(l) => l.clamp(1, MAX_LEVEL),
        Compression::Auto => {
            let ratio = est.zstd1_ratio;
            if ratio.is_nan() || ratio < MIN_RATIO {
                return 0;
            }
            let Some(link) = est.link_bytes_per_sec.filter(|b| *b > 0.0) else {
                return 1;
            };
            let compressor = est.zstd1_bytes_per_sec.max(0.0) * f64::from(est.cores.max(1));
            if link >= compressor {
                return 0;
            }
            LEVEL_SPEED
                .iter()
                .rev()
                .find(|(_, speed)| compressor * speed >= link * ratio)
                .map_or(1, |(level, _)| *level)
        }
    }
}

/// Compresses one block at `level` with `enc` (set to that level); returns what goes on the
/// wire and its `raw_length` (0 when the block goes raw because the frame would not be
/// smaller).
///
/// # Errors
/// zstd's error when compression fails.
pub fn encode_block(
    enc: &mut zstd::bulk::Compressor<'_>,
    block: Vec<u8>,
) -> std::io::Result<(Vec<u8>, u32)> {
    let frame = enc.compress(&block)?;
    if frame.len() < block.len() {
        let raw = u32::try_from(block.len()).map_err(std::io::Error::other)?;
        Ok((frame, raw))
    } else {
        Ok((block, 0))
    }
}

/// The block behind one wire block: `data` itself when `raw_length` is 0, else the zstd frame
/// `data` decompressed, which must be exactly `raw_length` bytes and at most `block_size`.
///
/// # Errors
/// A description when `raw_length` exceeds the block size or the frame is not a zstd frame of
/// that length.
pub fn decode_block(data: Vec<u8>, raw_length: u32, block_size: u32) -> Result<Vec<u8>, String> {
    if raw_length == 0 {
        return Ok(data);
    }
    if raw_length > block_size {
        return Err(format!(
            "raw_length {raw_length} exceeds the block size {block_size}"
        ));
    }
    // One decompression context per thread, reused: creating one per block showed in the
    // profile of an initial sync.
    thread_local! {
        static DEC: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let out = DEC
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(d) => d.decompress(&data, raw_length as usize),
                None => Err(std::io::Error::other("no zstd decompressor")),
            }
        })
        .map_err(|e| format!("zstd frame of {} bytes: {e}", data.len()))?;
    if out.len() != raw_length as usize {
        return Err(format!(
            "zstd frame gave {} bytes, raw_length says {raw_length}",
            out.len()
        ));
    }
    Ok(out)
}

/// Cores to spread compression, decompression and hashing over (at least 1, at most 8).
pub fn worker_count() -> usize {
    crate::scan::hash_threads()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn est(link: Option<f64>, zstd1: f64, ratio: f64, cores: u32) -> LinkEstimate {
        LinkEstimate {
            link_bytes_per_sec: link,
            zstd1_bytes_per_sec: zstd1,
            zstd1_ratio: ratio,
            cores,
        }
    }

    #[test]
    fn auto_choice_follows_the_link_table() {
        let mb = 1e6;
        let cases = [
            // (link, zstd1 per core, ratio, cores, level)
            (Some(10_000.0 * mb), 300.0 * mb, 3.0, 2, 0), // 10 GB/s LAN: faster than zstd
            (Some(600.0 * mb), 300.0 * mb, 3.0, 2, 0),    // exactly the compressor: off
            (Some(500.0 * mb), 300.0 * mb, 3.0, 2, 1),    // compressor-bound: cheapest level
            (Some(250.0 * mb), 300.0 * mb, 3.0, 2, 1),    // 600 MB/s < 250 MB/s × 3: level 1
            (Some(100.0 * mb), 300.0 * mb, 3.0, 2, 3),    // level 3: 360 ≥ 300
            (Some(20.0 * mb), 300.0 * mb, 3.0, 2, 9),     // level 9: 90 ≥ 60
            (Some(5.0 * mb), 300.0 * mb, 3.0, 2, 12),     // level 12: 48 ≥ 15
            (Some(0.1 * mb), 300.0 * mb, 3.0, 2, 19),     // a slow WAN: the best ratio
            (None, 300.0 * mb, 3.0, 2, 1),                // unknown link: cheap default
            (Some(1.0 * mb), 300.0 * mb, 1.01, 2, 0),     // incompressible data
            (Some(1.0 * mb), 300.0 * mb, f64::NAN, 2, 0), // nothing measured
        ];
        for (i, (link, z, r, c, want)) in cases.into_iter().enumerate() {
            let got = choose_level(Compression::Auto, &est(link, z, r, c));
            assert_eq!(got, want, "#{i}: expect level {want} got {got}");
        }
    }

    #[test]
    fn settings_are_honoured_whatever_the_link() {
        let e = est(Some(1e12), 1.0, 1.0, 1);
        assert_eq!(choose_level(Compression::Off, &e), 0);
        assert_eq!(choose_level(Compression::Zstd(3), &e), 3);
        assert_eq!(choose_level(Compression::Zstd(0), &e), 1);
        assert_eq!(choose_level(Compression::Zstd(99), &e), MAX_LEVEL);
    }

    #[test]
    fn an_incompressible_block_goes_raw_and_a_compressible_one_as_a_frame() {
        let mut enc = zstd::bulk::Compressor::new(1).unwrap();
        let noise = crate::testdata::noise(4096);
        let (wire, raw) = encode_block(&mut enc, noise.clone()).unwrap();
        assert!(raw == 0 && wire == noise, "noise went as a frame");
        assert_eq!(decode_block(wire, raw, 4096).unwrap(), noise);
        let text = b"replica primary journal ".repeat(170);
        let (wire, raw) = encode_block(&mut enc, text.clone()).unwrap();
        assert!(raw as usize == text.len() && wire.len() < text.len() / 4);
        assert_eq!(decode_block(wire, raw, 4096).unwrap(), text);
    }

    #[test]
    fn a_frame_that_lies_about_its_length_is_refused() {
        let mut enc = zstd::bulk::Compressor::new(1).unwrap();
        let (wire, raw) = encode_block(&mut enc, vec![7u8; 4000]).unwrap();
        assert!(decode_block(wire.clone(), raw + 1, 4096).is_err());
        assert!(decode_block(wire.clone(), raw - 1, 4096).is_err());
        assert!(decode_block(wire.clone(), 5000, 4096).is_err());
        assert!(decode_block(b"not zstd".to_vec(), 8, 4096).is_err());
    }

    proptest! {
        #[test]
        fn a_slower_link_never_gets_a_lower_level(
            a in 1.0f64..1e10, b in 1.0f64..1e10,
            zstd1 in 1e6f64..1e9, ratio in 0.5f64..10.0, cores in 1u32..8,
        ) {
            let (slow, fast) = if a <= b { (a, b) } else { (b, a) };
            let s = choose_level(Compression::Auto, &est(Some(slow), zstd1, ratio, cores));
            let f = choose_level(Compression::Auto, &est(Some(fast), zstd1, ratio, cores));
            prop_assert!(s >= f, "slow {slow} got {s}, fast {fast} got {f}");
            prop_assert!((0..=MAX_LEVEL).contains(&s));
            // Off exactly when the data does not compress or the link outruns the compressor.
            let off = ratio < MIN_RATIO || fast >= zstd1 * f64::from(cores);
            prop_assert_eq!(f == 0, off);
        }

        #[test]
        fn any_block_round_trips(data in proptest::collection::vec(0u8..4, 0..5000), level in 1i32..6) {
            let mut enc = zstd::bulk::Compressor::new(level).unwrap();
            let (wire, raw) = encode_block(&mut enc, data.clone()).unwrap();
            prop_assert!(wire.len() <= data.len());
            prop_assert_eq!(decode_block(wire, raw, 8192).unwrap(), data);
        }
    }
}
