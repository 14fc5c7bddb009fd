//! Decoding a compressed payload piece by piece: each zstd frame of the payload is
//! decompressed on its own, a large one (a change's data, as [`super::Encoder`] writes it)
//! straight into a buffer of its own that becomes the change's data, the others into the
//! staging buffer. Blake3 and the change structure are checked over the pieces in order, so
//! every check is the one [`super::parse_changes`] makes over the whole payload; a payload
//! whose pieces do not line up with its changes is joined and parsed whole.

use super::{le_u32, le_u64, parse_changes, Change, ChangeKind, FrameError, DIRECT_MIN_LEN};

/// One decompressed zstd frame of a payload: bytes appended to the staging buffer, or a
/// large frame in a buffer of its own.
pub(super) enum Piece {
    /// This range of the staging buffer.
    Staged(std::ops::Range<usize>),
    /// Its own buffer (it may become a change's data as it is).
    Own(Vec<u8>),
}

impl Piece {
    fn bytes<'a>(&'a self, staged: &'a [u8]) -> &'a [u8] {
        match self {
            Piece::Staged(r) => &staged[r.clone()],
            Piece::Own(v) => v.as_slice(),
        }
    }
}

/// Decompresses every zstd frame of `payload` (at most `raw_len` bytes in all): frames of at
/// least [`DIRECT_MIN_LEN`] declared bytes into buffers of their own, the rest appended to
/// `staged` (cleared first). Returns the pieces in payload order.
///
/// # Errors
/// [`FrameError::Decompress`] for a frame zstd refuses, [`FrameError::DecompressedLength`]
/// when the pieces do not add up to `raw_len`.
pub(super) fn decompress(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    payload: &[u8],
    raw_len: usize,
    staged: &mut Vec<u8>,
) -> Result<Vec<Piece>, FrameError> {
    let bad = |e: std::io::Error| FrameError::Decompress(e.to_string());
    let long = |found: usize| FrameError::DecompressedLength {
        expected: raw_len as u32,
        found,
    };
    if payload.is_empty() {
        // zstd has nothing to decompress: refused, as one decompression of it would be.
        return Err(FrameError::Decompress("empty compressed payload".into()));
    }
    staged.clear();
    let mut pieces = Vec::new();
    let mut total = 0usize;
    let mut at = 0usize;
    while at < payload.len() {
        let rest = &payload[at..];
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            FrameError::Decompress(zstd::zstd_safe::get_error_name(code).to_owned())
        })?;
        let frame = rest
            .get(..n)
            .ok_or_else(|| FrameError::Decompress("a zstd frame runs past the payload".into()))?;
        let left = raw_len - total;
        let declared = zstd::zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten();
        let got = match declared {
            Some(size) if size >= DIRECT_MIN_LEN as u64 && size <= left as u64 => {
                let mut own = crate::buffers::take(size as usize);
                let got = dctx.decompress_to_buffer(frame, &mut own).map_err(bad)?;
                pieces.push(Piece::Own(own));
                got
            }
            _ => {
                // After what is staged, into the spare capacity (not zeroed first), with room
                // for what is left of `raw_len` (more is refused by zstd or just below).
                let start = staged.len();
                staged.reserve(left);
                let mut tail = std::io::Cursor::new(&mut *staged);
                tail.set_position(start as u64);
                let got = dctx.decompress_to_buffer(frame, &mut tail).map_err(bad)?;
                pieces.push(Piece::Staged(start..start + got));
                got
            }
        };
        total += got;
        if total > raw_len {
            return Err(long(total));
        }
        at += n;
    }
    if total != raw_len {
        return Err(long(total));
    }
    Ok(pieces)
}

/// blake3 of the payload the pieces make up.
pub(super) fn hash(staged: &[u8], pieces: &[Piece]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for p in pieces {
        h.update(p.bytes(staged));
    }
    *h.finalize().as_bytes()
}

/// The changes of the payload the pieces make up (`count` of them). A piece that is exactly
/// one change's data becomes that data when it has a buffer of its own (moved, not copied);
/// when a change's head or data runs across pieces, the payload is joined and parsed whole
/// (same checks, same errors).
///
/// # Errors
/// As [`parse_changes`].
pub(super) fn parse(
    staged: &[u8],
    pieces: Vec<Piece>,
    count: u32,
) -> Result<Vec<Change>, FrameError> {
    match pieces.as_slice() {
        [] => return parse_changes(&[], count),
        [one] => return parse_changes(one.bytes(staged), count),
        _ => {}
    }
    match walk(staged, &pieces, count) {
        Some(layout) => Ok(assemble(staged, pieces, layout)),
        None => {
            let mut whole = Vec::new();
            for p in &pieces {
                whole.extend_from_slice(p.bytes(staged));
            }
            parse_changes(&whole, count)
        }
    }
}

/// Where one change's data is: a whole piece, or a range of one piece.
enum DataAt {
    Whole(usize),
    Part(usize, std::ops::Range<usize>),
}

/// One change without its data, and where its data is.
type Parsed = (ChangeKind, String, u64, u64, i64, DataAt);

/// Walks the changes when every head lies within one piece and every data is within one
/// piece or is a whole piece; `None` otherwise, or when anything is malformed (the
/// whole-payload parse then names the error).
fn walk(staged: &[u8], pieces: &[Piece], count: u32) -> Option<Vec<Parsed>> {
    let mut out = Vec::with_capacity(count as usize);
    // (piece, offset in it)
    let (mut p, mut at) = (0usize, 0usize);
    for _ in 0..count {
        while pieces.get(p).is_some_and(|x| at == x.bytes(staged).len()) {
            (p, at) = (p + 1, 0);
        }
        let head = pieces.get(p)?.bytes(staged).get(at..)?;
        let kind = ChangeKind::from_u8(*head.first()?)?;
        let name_len = *head.get(1)? as usize;
        let name = std::str::from_utf8(head.get(2..2 + name_len)?).ok()?;
        let nums = head.get(2 + name_len..2 + name_len + 28)?;
        let (offset, length) = (le_u64(nums, 0), le_u64(nums, 8));
        let captured_ms = le_u64(nums, 16) as i64;
        let data_len = le_u32(nums, 24) as usize;
        at += 2 + name_len + 28;
        let carries = kind.carries_data();
        if (carries && length != data_len as u64) || (!carries && data_len != 0) {
            return None;
        }
        let here = pieces.get(p)?.bytes(staged).len();
        let data = if data_len > 0 && at == here {
            // The data starts a piece: it must be that whole piece.
            let next = pieces.get(p + 1)?;
            if next.bytes(staged).len() != data_len {
                return None;
            }
            (p, at) = (p + 1, data_len);
            DataAt::Whole(p)
        } else {
            let end = at.checked_add(data_len).filter(|e| *e <= here)?;
            let r = at..end;
            at = end;
            DataAt::Part(p, r)
        };
        out.push((kind, name.to_owned(), offset, length, captured_ms, data));
    }
    // Nothing after the last change.
    let rest: usize = pieces.iter().skip(p).map(|x| x.bytes(staged).len()).sum();
    (rest == at).then_some(out)
}

/// The changes of a walk, each whole own piece moved into its change.
fn assemble(staged: &[u8], pieces: Vec<Piece>, layout: Vec<Parsed>) -> Vec<Change> {
    let mut pieces: Vec<Option<Piece>> = pieces.into_iter().map(Some).collect();
    let mut changes = Vec::with_capacity(layout.len());
    for (kind, resource, offset, length, captured_ms, at) in layout {
        let data = match at {
            DataAt::Whole(i) => match pieces.get_mut(i).and_then(Option::take) {
                Some(Piece::Own(v)) => v,
                Some(Piece::Staged(r)) => staged[r].to_vec(),
                None => Vec::new(),
            },
            DataAt::Part(i, r) => pieces
                .get(i)
                .and_then(Option::as_ref)
                .map(|x| x.bytes(staged)[r].to_vec())
                .unwrap_or_default(),
        };
        changes.push(Change {
            resource,
            kind,
            offset,
            length,
            captured_ms,
            data,
        });
    }
    changes
}
