//! Tests of the frame codec (`frame.rs`).

use super::*;
use proptest::prelude::*;

fn meta() -> FrameMeta {
    FrameMeta {
        group: GroupId::from_name("vol"),
        epoch: Epoch(3),
        first_seq: Seq(100),
    }
}

fn sample() -> Vec<Change> {
    vec![
        Change::write(
            "disk0",
            4096,
            b"hello hello hello hello".to_vec(),
            1_700_000_000_000,
        ),
        Change::trim("disk0", 0, 65536, 1_700_000_000_001),
        Change::barrier("disk0", 1_700_000_000_002),
    ]
}

#[test]
fn frame_round_trips() {
    let bytes = Encoder::new(1).unwrap().encode(meta(), &sample()).unwrap();
    let f = Decoder::new().unwrap().decode(&bytes).unwrap();
    assert_eq!(f.changes, sample());
    assert_eq!(f.header.meta, meta());
    assert_eq!(f.header.last_seq(), Seq(102));
}

#[test]
fn golden_header_bytes() {
    let bytes = Encoder::new(1)
        .unwrap()
        .encode(meta(), &[Change::barrier("d", 7)])
        .unwrap();
    assert_eq!(&bytes[0..4], b"TNDF");
    assert_eq!(&bytes[4..6], &[1, 0]);
    assert_eq!(&bytes[6..8], &[0, 0], "a tiny payload is stored raw");
    assert_eq!(&bytes[16..24], &3u64.to_le_bytes());
    assert_eq!(&bytes[24..32], &100u64.to_le_bytes());
    assert_eq!(&bytes[32..36], &1u32.to_le_bytes());
    // kind, name len, name, offset, length, time, data len
    let raw: Vec<u8> = [
        &[3u8, 1, b'd'][..],
        &0u64.to_le_bytes(),
        &0u64.to_le_bytes(),
        &7i64.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]
    .concat();
    assert_eq!(&bytes[HEADER_LEN..], &raw[..]);
    assert_eq!(&bytes[44..76], blake3::hash(&raw).as_bytes());
}

#[test]
fn compressible_payload_is_compressed() {
    let changes = vec![Change::write("d", 0, vec![7u8; 1 << 16], 1)];
    let bytes = Encoder::new(1).unwrap().encode(meta(), &changes).unwrap();
    let h = FrameHeader::parse(&bytes).unwrap();
    assert_eq!(h.flags, FLAG_ZSTD);
    assert!(bytes.len() < 1000);
    assert_eq!(
        Decoder::new().unwrap().decode(&bytes).unwrap().changes,
        changes
    );
}

#[test]
fn header_with_huge_raw_len_is_refused_before_allocating() {
    let mut bytes = Encoder::new(1).unwrap().encode(meta(), &sample()).unwrap();
    bytes[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
    let check = header_check(&bytes[..76]);
    bytes[76..84].copy_from_slice(&check);
    assert!(matches!(
        FrameHeader::parse(&bytes),
        Err(FrameError::LimitExceeded {
            field: "raw_len",
            ..
        })
    ));
}

#[test]
fn each_check_has_its_own_error() {
    let good = Encoder::new(1).unwrap().encode(meta(), &sample()).unwrap();
    let mut d = Decoder::new().unwrap();
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(d.decode(&b), Err(FrameError::BadMagic { .. })));
    let mut b = good.clone();
    b[4] = 9;
    assert!(matches!(
        d.decode(&b),
        Err(FrameError::UnsupportedVersion { found: 9 })
    ));
    let mut b = good.clone();
    b[20] ^= 1;
    assert_eq!(d.decode(&b), Err(FrameError::HeaderChecksum));
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    assert!(matches!(
        d.decode(&b),
        Err(FrameError::PayloadChecksum) | Err(FrameError::Decompress(_))
    ));
    assert!(matches!(
        d.decode(&good[..good.len() - 1]),
        Err(FrameError::Truncated { .. })
    ));
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        d.decode(&b),
        Err(FrameError::TrailingBytes { .. })
    ));
    assert!(matches!(
        d.decode(&good[..10]),
        Err(FrameError::Truncated {
            needed: HEADER_LEN,
            have: 10
        })
    ));
}

#[test]
fn encoder_refuses_inconsistent_changes() {
    let mut c = Change::write("d", 0, vec![1, 2, 3], 0);
    c.length = 4;
    assert!(matches!(
        Encoder::new(1).unwrap().encode(meta(), &[c]),
        Err(FrameError::Encode(_))
    ));
    let long = "x".repeat(300);
    assert!(matches!(
        Encoder::new(1)
            .unwrap()
            .encode(meta(), &[Change::barrier(&long, 0)]),
        Err(FrameError::Encode(_))
    ));
    // The same checks, before any seq is given.
    assert!(check_batch(&[Change::barrier(&long, 0)]).is_err());
    let ok = sample();
    let raw: usize = ok.iter().map(Change::encoded_len).sum();
    assert_eq!(check_batch(&ok).ok(), Some(raw));
}

/// The raw payload of `changes`, as the format lays it out.
fn raw_payload(changes: &[Change]) -> Vec<u8> {
    let mut raw = Vec::new();
    for c in changes {
        push_head(c, &mut raw);
        raw.extend_from_slice(&c.data);
    }
    raw
}

/// A frame whose compressed payload is `parts` (ranges of the raw payload of `changes`),
/// each compressed as one zstd frame.
fn frame_of_parts(changes: &[Change], cuts: &[usize]) -> Vec<u8> {
    let raw = raw_payload(changes);
    let mut payload = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&raw.len())) {
        payload.extend(zstd::bulk::compress(&raw[from..to], 1).unwrap());
        from = to;
    }
    let mut bytes = vec![0u8; HEADER_LEN];
    write_header(
        &mut bytes,
        FLAG_ZSTD,
        meta(),
        changes.len() as u32,
        raw.len() as u32,
        payload.len() as u32,
        blake3::hash(&raw).as_bytes(),
    );
    bytes.extend(payload);
    bytes
}

fn large_mix() -> Vec<Change> {
    let big = |seed: u8| -> Vec<u8> {
        (0..(1usize << 20))
            .map(|i| seed.wrapping_add((i / 13) as u8))
            .collect()
    };
    vec![
        Change::write("disk0", 0, big(1), 1),
        Change::write("disk0", 1 << 20, b"small".to_vec(), 2),
        Change::barrier("disk0", 3),
        Change::write("disk0", 2 << 20, big(2), 4),
        Change::write("disk0", 3 << 20, big(3), 5),
        Change::trim("disk0", 0, 4096, 6),
    ]
}

#[test]
fn large_data_is_compressed_as_frames_of_its_own_and_round_trips() {
    let changes = large_mix();
    let bytes = Encoder::new(1).unwrap().encode(meta(), &changes).unwrap();
    let h = FrameHeader::parse(&bytes).unwrap();
    assert_eq!(h.flags, FLAG_ZSTD);
    assert_eq!(
        &h.payload_hash,
        blake3::hash(&raw_payload(&changes)).as_bytes()
    );
    // Head, big(1), heads and small data, big(2), head, big(3), head: seven zstd frames.
    let mut payload = &bytes[HEADER_LEN..];
    let mut frames = 0;
    while !payload.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(payload).unwrap();
        payload = &payload[n..];
        frames += 1;
    }
    assert_eq!(frames, 7);
    let f = Decoder::new().unwrap().decode(&bytes).unwrap();
    assert_eq!(f.changes, changes);
    // One zstd decompression of the whole payload (what a build before this layout did)
    // reads the same raw payload.
    let whole = zstd::bulk::decompress(&bytes[HEADER_LEN..], h.raw_len as usize).unwrap();
    assert_eq!(whole, raw_payload(&changes));
}

#[test]
fn payloads_cut_anywhere_into_zstd_frames_decode_the_same() {
    let changes = large_mix();
    let raw_len = raw_payload(&changes).len();
    let mut d = Decoder::new().unwrap();
    // (cuts, why): one frame as older builds wrote; cuts inside data, inside a change head,
    // at a data start but not its end.
    let cases: [(&[usize], &str); 4] = [
        (&[], "one zstd frame"),
        (&[100_000, 700_000], "cut inside the first data"),
        (&[20, 1 << 20], "cut inside the first head"),
        (
            &[37, raw_len - 90_000],
            "a large piece that is not one change's data",
        ),
    ];
    for (i, (cuts, why)) in cases.iter().enumerate() {
        let bytes = frame_of_parts(&changes, cuts);
        let got = d.decode(&bytes).map(|f| f.changes);
        assert_eq!(
            got.as_ref().ok(),
            Some(&changes),
            "#{i} ({why}): got {got:?}"
        );
    }
}

#[test]
fn pieces_that_do_not_add_up_to_the_raw_length_are_refused() {
    let changes = large_mix();
    let good = frame_of_parts(&changes, &[]);
    let h = FrameHeader::parse(&good).unwrap();
    let raw = raw_payload(&changes);
    let mut d = Decoder::new().unwrap();
    // One more zstd frame after the payload: too many bytes.
    let mut extra = good[HEADER_LEN..].to_vec();
    extra.extend(zstd::bulk::compress(&[7u8; 100_000], 1).unwrap());
    // The last 200 000 bytes missing: too few.
    let short = zstd::bulk::compress(&raw[..raw.len() - 200_000], 1).unwrap();
    for (i, payload) in [extra, short].into_iter().enumerate() {
        let mut bytes = vec![0u8; HEADER_LEN];
        write_header(
            &mut bytes,
            FLAG_ZSTD,
            meta(),
            h.change_count,
            h.raw_len,
            payload.len() as u32,
            &h.payload_hash,
        );
        bytes.extend(payload);
        let got = d.decode(&bytes);
        assert!(
            matches!(
                got,
                Err(FrameError::DecompressedLength { .. }) | Err(FrameError::Decompress(_))
            ),
            "#{i}: got {got:?}"
        );
    }
}

fn arb_change() -> impl Strategy<Value = Change> {
    (
        0u8..8,
        "[a-z0-9]{1,12}",
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            (0usize..8192, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
            // Large enough to be a zstd frame of its own (see `DIRECT_MIN_LEN`).
            (DIRECT_MIN_LEN - 2..DIRECT_MIN_LEN + 50_000, any::<u8>())
                .prop_map(|(n, b)| (0..n).map(|i| b.wrapping_add((i / 7) as u8)).collect()),
        ],
    )
        .prop_map(|(k, resource, offset, len, t, data)| {
            let kind = ChangeKind::from_u8(k + 1).unwrap_or(ChangeKind::Write);
            let (length, data) = if kind.carries_data() {
                (data.len() as u64, data)
            } else {
                (len, Vec::new())
            };
            Change {
                resource,
                kind,
                offset,
                length,
                captured_ms: t,
                data,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_batch_round_trips(changes in proptest::collection::vec(arb_change(), 0..24),
                             epoch in any::<u64>(), seq in any::<u64>()) {
        let m = FrameMeta { group: GroupId(seq ^ 0x55), epoch: Epoch(epoch), first_seq: Seq(seq) };
        let bytes = Encoder::new(1).unwrap().encode(m, &changes).unwrap();
        let f = Decoder::new().unwrap().decode(&bytes).unwrap();
        prop_assert_eq!(f.header.meta, m);
        prop_assert_eq!(f.changes, changes);
    }

    #[test]
    fn any_batch_round_trips_at_any_level_one_encoder_switching(
        batches in proptest::collection::vec(
            (proptest::collection::vec(arb_change(), 0..12), prop_oneof![Just(0i32), Just(-3i32), 1i32..6]),
            1..6)) {
        let mut enc = Encoder::new(1).unwrap();
        let mut dec = Decoder::new().unwrap();
        for (changes, level) in batches {
            enc.set_level(level).unwrap();
            prop_assert_eq!(enc.level(), level.max(0));
            let bytes = enc.encode(meta(), &changes).unwrap();
            if level <= 0 {
                prop_assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]) & FLAG_ZSTD, 0, "level {} compressed", level);
            }
            let f = dec.decode(&bytes).unwrap();
            prop_assert_eq!(f.changes, changes);
        }
    }

    #[test]
    fn any_flipped_bit_is_detected(changes in proptest::collection::vec(arb_change(), 1..8),
                                   pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let bytes = Encoder::new(1).unwrap().encode(meta(), &changes).unwrap();
        let mut bad = bytes.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(Decoder::new().unwrap().decode(&bad).is_err(), "flip at byte {} bit {} not detected", i, bit);
    }

    #[test]
    fn any_truncation_is_detected(changes in proptest::collection::vec(arb_change(), 1..8),
                                  cut in any::<prop::sample::Index>()) {
        let bytes = Encoder::new(1).unwrap().encode(meta(), &changes).unwrap();
        let n = cut.index(bytes.len());
        prop_assert!(Decoder::new().unwrap().decode(&bytes[..n]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Decoder::new().unwrap().decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512), count in 0u32..64, zstd in any::<bool>()) {
        // A forged header with a correct header check: the payload checks must still hold.
        let mut bytes = vec![0u8; HEADER_LEN];
        let flags = if zstd { FLAG_ZSTD } else { 0 };
        let raw_len = if zstd { 4096 } else { body.len() as u32 };
        write_header(&mut bytes, flags, meta(), count, raw_len, body.len() as u32, blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        let _ = Decoder::new().unwrap().decode(&bytes);
    }
}
