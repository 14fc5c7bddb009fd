//! Rewinding a copy of the replica to a recovery point: the undo records of the seqs after it,
//! applied newest first. File I/O on the copy only.

use super::codec::{
    decode_record_body, decode_segment_header, parse_record_header, Record, RecordKind,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::store::SegmentSnap;
use crate::error::{ReplicatorError, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use tandem_core::ids::Seq;

/// Rewinds copies of a group's resources from `upto` (the watermark they were copied at) back
/// to `target`, applying every undo record of seqs `target+1 ..= upto` newest first; `files`
/// maps resource names to the copies. Returns the number of records applied.
///
/// # Errors
/// [`ReplicatorError::CorruptHistory`] naming segment and offset (the copy is then not a
/// recovery and must be discarded), [`ReplicatorError::NoRecoveryPoint`] when the segments do
/// not reach back to `target`, or [`ReplicatorError::Io`].
pub fn rewind(
    segments: &[SegmentSnap],
    target: Seq,
    upto: Seq,
    files: &HashMap<String, (File, PathBuf)>,
) -> Result<u64> {
    let mut applied = 0u64;
    let mut zeros = Vec::new();
    let mut reached = target >= upto;
    if let Some(first) = segments.first() {
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        first
            .file
            .read_exact_at(&mut head, 0)
            .map_err(|e| ReplicatorError::io("read", &first.path, e))?;
        let (_, base, _) =
            decode_segment_header(&head).map_err(|reason| ReplicatorError::CorruptHistory {
                path: first.path.clone(),
                offset: 0,
                reason,
            })?;
        if base > target && target < upto {
            return Err(ReplicatorError::NoRecoveryPoint(format!(
                "the history reaches back to seq {base}, not to seq {target}"
            )));
        }
    }
    for seg in segments.iter().rev() {
        if reached {
            break;
        }
        let corrupt = |offset: u64, reason: String| ReplicatorError::CorruptHistory {
            path: seg.path.clone(),
            offset,
            reason,
        };
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        seg.file
            .read_exact_at(&mut head, 0)
            .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
        let (_, base, _) = decode_segment_header(&head).map_err(|r| corrupt(0, r))?;
        // Records of seq `base` itself may sit here (a change split over two segments).
        if base > upto {
            continue;
        }
        // Index the undo records of the wanted seqs, then apply them newest first.
        let mut index = Vec::new();
        let mut at = SEGMENT_HEADER_LEN as u64;
        let mut rh = [0u8; RECORD_HEADER_LEN];
        while at < seg.len {
            seg.file
                .read_exact_at(&mut rh, at)
                .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
            let h = parse_record_header(&rh).map_err(|r| corrupt(at, r))?;
            if h.kind == RecordKind::Undo && h.seq > target && h.seq <= upto {
                index.push((at, h));
            }
            at += h.record_len();
        }
        for (at, h) in index.into_iter().rev() {
            let mut body = vec![0u8; (h.record_len() - RECORD_HEADER_LEN as u64) as usize];
            seg.file
                .read_exact_at(&mut body, at + RECORD_HEADER_LEN as u64)
                .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
            let r = decode_record_body(&h, &body).map_err(|reason| corrupt(at, reason))?;
            let Some((f, path)) = files.get(&r.name) else {
                return Err(corrupt(
                    at,
                    format!("undo record for unknown resource {:?}", r.name),
                ));
            };
            write_old_bytes(f, &r, &mut zeros)
                .map_err(|e| ReplicatorError::io("pwrite undo", path, e))?;
            let len = f
                .metadata()
                .map_err(|e| ReplicatorError::io("stat", path, e))?
                .len();
            if len > r.old_len {
                f.set_len(r.old_len)
                    .map_err(|e| ReplicatorError::io("truncate", path, e))?;
            }
            applied += 1;
        }
        if base <= target {
            reached = true;
            break;
        }
    }
    if !reached {
        return Err(ReplicatorError::NoRecoveryPoint(format!(
            "the history does not reach back to seq {target}"
        )));
    }
    for (f, path) in files.values() {
        f.sync_data()
            .map_err(|e| ReplicatorError::io("fdatasync", path, e))?;
    }
    Ok(applied)
}

/// Writes the old bytes of undo record `r` back into `f`: its data, or its zero bytes (a hole
/// when recorded) from `zeros`, a buffer of zeros grown as needed.
fn write_old_bytes(f: &File, r: &Record, zeros: &mut Vec<u8>) -> std::io::Result<()> {
    if r.zeros == 0 {
        return f.write_all_at(&r.data, r.offset);
    }
    let n = r.zeros as usize;
    if zeros.len() < n {
        zeros.resize(n, 0);
    }
    f.write_all_at(&zeros[..n], r.offset)
}
