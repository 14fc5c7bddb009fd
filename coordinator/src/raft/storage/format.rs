//! The on-disk format of the raft storage: the value envelope (magic, version, checksum),
//! the keys, the peer map codec and protobuf values in envelopes. Pure: bytes in, bytes out.

use std::collections::BTreeMap;

use protobuf::Message as PbMessage;

use super::error::StorageError;

const MAGIC: [u8; 2] = *b"TR";

const VERSION: u8 = 1;

const HEADER: usize = 2 + 1 + 8;

/// Wraps a payload in the storage envelope (magic, version, checksum).
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    out.extend_from_slice(payload);
    out
}

/// Checks and strips the storage envelope; the error says what was wrong.
pub fn open_sealed(value: &[u8]) -> Result<&[u8], String> {
    if value.len() < HEADER {
        return Err(format!(
            "value of {} bytes is shorter than the header",
            value.len()
        ));
    }
    if value[..2] != MAGIC {
        return Err(format!("bad magic {:02x?}", &value[..2]));
    }
    if value[2] != VERSION {
        return Err(format!("unsupported version {}", value[2]));
    }
    let payload = &value[HEADER..];
    if blake3::hash(payload).as_bytes()[..8] != value[3..HEADER] {
        return Err("checksum mismatch".to_string());
    }
    Ok(payload)
}

/// Encodes a peer address map: count, then (id, length, utf-8 address) each, all big-endian.
pub fn encode_peers(peers: &BTreeMap<u64, String>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(peers.len() as u32).to_be_bytes());
    for (id, addr) in peers {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(addr.len() as u32).to_be_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out
}

/// Decodes [`encode_peers`]; returns the map and the number of bytes consumed.
pub fn decode_peers(buf: &[u8]) -> Result<(BTreeMap<u64, String>, usize), String> {
    fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= buf.len())
            .ok_or_else(|| format!("peer map truncated at byte {pos}"))?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    }
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> Result<u32, String> {
        let b = take(buf, pos, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let count = u32_at(&mut pos)?;
    let mut peers = BTreeMap::new();
    for _ in 0..count {
        let b = take(buf, &mut pos, 8)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(b);
        let len = u32_at(&mut pos)? as usize;
        let at = pos;
        let addr = std::str::from_utf8(take(buf, &mut pos, len)?)
            .map_err(|_| format!("peer address at byte {at} is not utf-8"))?;
        peers.insert(u64::from_be_bytes(id), addr.to_string());
    }
    Ok((peers, pos))
}

pub(super) fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(super) const K_HARD_STATE: &[u8] = b"m:hard_state";

pub(super) const K_CONF_STATE: &[u8] = b"m:conf_state";

pub(super) const K_TRUNCATED: &[u8] = b"m:truncated";

pub(super) const K_SNAP_META: &[u8] = b"m:snap_meta";

/// Where the snapshot bytes lived before they got a tree of their own (read once, to move
/// them, when a store of the old layout is opened).
pub(super) const K_SNAP_DATA: &[u8] = b"m:snap_data";

/// The sled tree that holds the snapshot bytes, apart from the log and the metadata: sled
/// rewrites a whole node when it consolidates the deltas of any key in it, so a snapshot
/// kept beside the hard state (written at every commit) was rewritten tens of times a second.
pub(super) const SNAP_TREE: &[u8] = b"snapshots";

/// Key of the snapshot taken at `index` in [`SNAP_TREE`]: `s` + big-endian index.
pub(super) fn snap_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b's';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(super) const K_PEERS: &[u8] = b"m:peers";

fn key_name(key: &[u8]) -> String {
    if key.len() == 9 && (key[0] == b'e' || key[0] == b's') {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[1..]);
        let what = if key[0] == b'e' { "entry" } else { "snapshot" };
        format!("{what} {}", u64::from_be_bytes(b))
    } else {
        String::from_utf8_lossy(key).into_owned()
    }
}

pub(super) fn corrupt(key: &[u8], reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: key_name(key),
        reason: reason.into(),
    }
}

pub(super) fn encode_pb<M: PbMessage>(what: &'static str, m: &M) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes()
        .map(|b| seal(&b))
        .map_err(|source| StorageError::Encode { what, source })
}

pub(super) fn decode_pb<M: PbMessage + Default>(
    key: &[u8],
    value: &[u8],
) -> Result<M, StorageError> {
    let payload = open_sealed(value).map_err(|r| corrupt(key, r))?;
    let mut m = M::default();
    m.merge_from_bytes(payload)
        .map_err(|e| corrupt(key, e.to_string()))?;
    Ok(m)
}

pub(super) fn u64_pair(key: &[u8], value: &[u8]) -> Result<(u64, u64), StorageError> {
    let p = open_sealed(value).map_err(|r| corrupt(key, r))?;
    if p.len() != 16 {
        return Err(corrupt(key, format!("expected 16 bytes, got {}", p.len())));
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&p[..8]);
    b.copy_from_slice(&p[8..]);
    Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

pub(super) fn seal_u64_pair(a: u64, b: u64) -> Vec<u8> {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&a.to_be_bytes());
    p[8..].copy_from_slice(&b.to_be_bytes());
    seal(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_golden_bytes() {
        let sealed = seal(b"abc");
        let mut want = b"TR\x01".to_vec();
        want.extend_from_slice(&blake3::hash(b"abc").as_bytes()[..8]);
        want.extend_from_slice(b"abc");
        assert_eq!(sealed, want);
        // blake3("abc") starts with 6437b3ac38465133 (published test vector).
        assert_eq!(
            &sealed[3..11],
            &[0x64, 0x37, 0xb3, 0xac, 0x38, 0x46, 0x51, 0x33]
        );
        assert_eq!(open_sealed(&sealed).unwrap(), b"abc");
    }

    #[test]
    fn envelope_detects_corruption() {
        let sealed = seal(b"hello raft");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open_sealed(&bad).is_err(),
                "#{i}: flipped byte not detected"
            );
        }
        assert!(open_sealed(&sealed[..5]).is_err());
    }

    #[test]
    fn peers_round_trip_and_truncation_is_refused() {
        let mut peers = BTreeMap::new();
        peers.insert(1, "http://127.0.0.1:7101".to_string());
        peers.insert(7, "http://[::1]:9".to_string());
        let b = encode_peers(&peers);
        assert_eq!(decode_peers(&b).unwrap(), (peers, b.len()));
        for cut in 0..b.len() {
            assert!(
                decode_peers(&b[..cut]).is_err(),
                "#{cut}: truncation accepted"
            );
        }
    }
}
