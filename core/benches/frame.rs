//! Frame codec throughput against raw zstd level 1 + blake3 on the same 1 MiB of mixed data.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tandem_core::frame::{Change, Decoder, Encoder, FrameMeta};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::mixed::mixed;

const BATCH: usize = 1 << 20;
const WRITE: usize = 64 << 10;

fn batch() -> (Vec<u8>, Vec<Change>) {
    let data = mixed(42, BATCH);
    let changes = data
        .chunks(WRITE)
        .enumerate()
        .map(|(i, c)| Change::write("disk0", (i * WRITE) as u64, c.to_vec(), 1_700_000_000_000))
        .collect();
    (data, changes)
}

fn codec(c: &mut Criterion) {
    let (data, changes) = batch();
    let meta = FrameMeta {
        group: GroupId::from_name("vol"),
        epoch: Epoch(1),
        first_seq: Seq(1),
    };
    let mut g = c.benchmark_group("frame_1MiB_mixed");
    g.throughput(Throughput::Bytes(BATCH as u64));
    g.sample_size(30);

    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    g.bench_function("raw_zstd1_compress", |b| {
        b.iter(|| black_box(z.compress(black_box(&data)).unwrap()))
    });
    g.bench_function("raw_blake3", |b| {
        b.iter(|| black_box(blake3::hash(black_box(&data))))
    });
    g.bench_function("raw_zstd1_plus_blake3", |b| {
        b.iter(|| {
            let h = blake3::hash(black_box(&data));
            black_box((z.compress(black_box(&data)).unwrap(), h))
        })
    });
    let mut enc = Encoder::new(1).unwrap();
    g.bench_function("frame_encode", |b| {
        b.iter(|| black_box(enc.encode(meta, black_box(&changes)).unwrap()))
    });
    let frame = enc.encode(meta, &changes).unwrap();
    let compressed = z.compress(&data).unwrap();
    let mut dz = zstd::bulk::Decompressor::new().unwrap();
    g.bench_function("raw_zstd_decompress_plus_blake3", |b| {
        b.iter(|| {
            let out = dz.decompress(black_box(&compressed), BATCH).unwrap();
            black_box(blake3::hash(&out))
        })
    });
    let mut dec = Decoder::new().unwrap();
    g.bench_function("frame_decode", |b| {
        b.iter(|| black_box(dec.decode(black_box(&frame)).unwrap()))
    });
    g.finish();
    eprintln!(
        "mixed data: {} bytes -> frame {} bytes (ratio {:.2})",
        BATCH,
        frame.len(),
        BATCH as f64 / frame.len() as f64
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
