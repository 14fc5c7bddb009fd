//! Replaying journaled frames onto the local images (after a crash between journal and image,
//! or before a new epoch's numbering continues). Touches the image files; idempotent.

use crate::bounds::{change_bounds, volume_range};
use crate::error::{ReplicatorError, Result};
use crate::journal::Journal;
use crate::pipeline::GroupPipeline;
use crate::volume::zero_fill;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tandem_core::frame::{Change, ChangeKind, Decoder};
use tandem_core::ids::Seq;
use tracing::info;

/// Re-applies the journal's unacknowledged frames to the local images, in order (idempotent).
pub(super) async fn replay_journal(
    p: &GroupPipeline,
    paths: &HashMap<String, PathBuf>,
) -> Result<()> {
    replay_frames(p.journal().clone(), paths).await
}

/// Writes every untrimmed frame of `journal` onto the local images, in order, and fdatasyncs
/// them. Idempotent: replaying a suffix of the write history onto an image that already
/// holds it changes nothing. Each image's size is its length when the replay starts (the
/// node created it at its configured size): a frame with a write or trim reaching past it is
/// refused before any of its changes is written.
///
/// # Errors
/// [`ReplicatorError::OutOfBounds`] naming the change, the image and its range;
/// [`ReplicatorError::Io`]; a frame that does not decode.
pub(super) async fn replay_frames(
    journal: Arc<Journal>,
    paths: &HashMap<String, PathBuf>,
) -> Result<()> {
    let paths = paths.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut dec = Decoder::new()?;
        let mut files = HashMap::new();
        for (name, path) in &paths {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| ReplicatorError::io("open", path, e))?;
            let size = f
                .metadata()
                .map_err(|e| ReplicatorError::io("stat", path, e))?
                .len();
            files.insert(name.clone(), (f, path.clone(), size));
        }
        let mut from = journal.trimmed_through().next();
        let mut n = 0u64;
        loop {
            let batch = journal.frames_from(from, 8 << 20)?;
            if batch.is_empty() {
                break;
            }
            for (entry, bytes) in batch {
                let frame = dec.decode(&bytes)?;
                let first = frame.header.meta.first_seq;
                // The whole frame within its images' sizes before any of it is written.
                for (i, c) in frame.changes.iter().enumerate() {
                    if let Some((_, path, size)) = files.get(&c.resource) {
                        check_change(c, Seq(first.0 + i as u64), path, *size)?;
                    }
                }
                for c in &frame.changes {
                    if let Some((f, path, _)) = files.get(&c.resource) {
                        match c.kind {
                            ChangeKind::Write => f
                                .write_all_at(&c.data, c.offset)
                                .map_err(|e| ReplicatorError::io("replay write", path, e))?,
                            ChangeKind::Trim => zero_fill(f, c.offset, c.length, |_, e| {
                                ReplicatorError::io("replay trim", path, e)
                            })?,
                            _ => {}
                        }
                        n += 1;
                    }
                }
                from = entry.last_seq.next();
            }
        }
        for (f, path, _) in files.values() {
            f.sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", path, e))?;
        }
        if n > 0 {
            info!(changes = n, "replayed journal onto the local images");
        }
        Ok(())
    })
    .await
    .map_err(|e| ReplicatorError::Task(e.to_string()))?
}

/// Checks a journaled write or trim against the size of the image at `path` (pure).
fn check_change(c: &Change, seq: Seq, path: &Path, size: u64) -> Result<()> {
    let Some((kind, offset, len)) = volume_range(c) else {
        return Ok(());
    };
    change_bounds(offset, len, size).map_err(|source| ReplicatorError::OutOfBounds {
        seq,
        kind,
        resource: c.resource.clone(),
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::journal::NewFrame;
    use tandem_core::frame::{Encoder, FrameMeta};
    use tandem_core::ids::{Epoch, GroupId};

    fn append(j: &Journal, changes: &[Change]) {
        let first = j.next_seq();
        let bytes = Encoder::new(1)
            .unwrap()
            .encode(
                FrameMeta {
                    group: GroupId::from_name("g"),
                    epoch: Epoch(1),
                    first_seq: first,
                },
                changes,
            )
            .unwrap();
        j.append(&[NewFrame {
            bytes,
            first_seq: first,
            last_seq: Seq(first.0 + changes.len() as u64 - 1),
            oldest_capture_ms: 1,
        }])
        .unwrap();
    }

    #[tokio::test]
    async fn replay_refuses_a_frame_past_the_image_before_writing_any_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("vol.img");
        std::fs::write(&img, vec![5u8; 8192]).unwrap();
        let paths = HashMap::from([("vol".to_owned(), img.clone())]);
        for (i, bad) in [
            Change::write("vol", 8190, vec![1; 4], 0),
            Change::trim("vol", 4096, 1 << 63, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let j = Journal::open(
                &dir.path().join(format!("j{i}")),
                GroupId::from_name("g"),
                Epoch(1),
                crate::journal::DEFAULT_SEGMENT_BYTES,
            )
            .unwrap();
            append(&j, &[Change::write("vol", 0, vec![9; 16], 0)]);
            append(&j, &[Change::write("vol", 16, vec![7; 16], 0), bad]);
            let err = replay_frames(Arc::new(j), &paths).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ReplicatorError::OutOfBounds { seq: Seq(3), .. })
                    && msg.contains(&img.display().to_string())
                    && msg.contains("past the size 8192"),
                "#{i}: expect a named refusal got {msg}"
            );
            let got = std::fs::read(&img).unwrap();
            assert_eq!(got.len(), 8192, "#{i}: the image keeps its size");
            assert_eq!(&got[16..32], &[5u8; 16], "#{i}: nothing of the bad frame");
            // The frame before it was replayed (and is idempotent).
            assert_eq!(&got[..16], &[9u8; 16], "#{i}");
        }
    }
}
