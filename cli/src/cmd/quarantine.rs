//! `tandem quarantine show FILE` and `tandem quarantine extract FILE --into IMAGE`: read what a
//! failback resync kept of the old primary's volume before it overwrote it
//! (`DATA/quarantine/GROUP/RESOURCE-epochE-MS.blocks`, see `tandem_replicator::quarantine`).

use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use tandem_replicator::quarantine;

/// `tandem quarantine ...`.
#[derive(Debug, Subcommand)]
pub enum QuarantineCmd {
    /// Print what a quarantine file holds: block size, the old copy's length, and each kept
    /// block's index, byte offset and blake3 (`--json` for a document).
    Show(ShowArgs),
    /// Write the kept blocks into IMAGE at their offsets: run it on a copy of the current
    /// volume to see the old primary's version of the overwritten blocks. A file holding a
    /// block beyond the old copy's length is refused before anything is written.
    Extract(ExtractArgs),
}

/// Arguments of `tandem quarantine show`.
#[derive(Debug, ClapArgs)]
pub struct ShowArgs {
    /// The quarantine file.
    pub file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tandem quarantine extract`.
#[derive(Debug, ClapArgs)]
pub struct ExtractArgs {
    /// The quarantine file.
    pub file: PathBuf,
    /// The image to write the blocks into (created if missing; never the live volume).
    #[arg(long)]
    pub into: PathBuf,
}

/// Runs a `tandem quarantine` subcommand.
pub fn run(cmd: QuarantineCmd) -> Result<()> {
    match cmd {
        QuarantineCmd::Show(a) => {
            let q = quarantine::read(&a.file).map_err(bad_input)?;
            let bs = u64::from(q.block_size);
            if a.json {
                let blocks: Vec<serde_json::Value> = q
                    .blocks
                    .iter()
                    .map(|(i, d)| {
                        // A crafted index may not have a byte offset (null): shown, never wrapped.
                        serde_json::json!({"index": i, "offset": i.checked_mul(bs), "length": d.len(),
                            "blake3": blake3::hash(d).to_hex().to_string()})
                    })
                    .collect();
                let doc = serde_json::json!({"file": a.file.display().to_string(),
                    "block_size": q.block_size, "old_length": q.length, "blocks": blocks});
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{}: {} blocks of {} bytes kept ({} bytes), old copy {} bytes",
                a.file.display(),
                q.blocks.len(),
                q.block_size,
                q.blocks.iter().map(|(_, d)| d.len() as u64).sum::<u64>(),
                q.length
            )?;
            writeln!(
                out,
                "{:>10}  {:>14}  {:>8}  blake3",
                "block", "offset", "length"
            )?;
            for (i, d) in &q.blocks {
                writeln!(
                    out,
                    "{i:>10}  {:>14}  {:>8}  {}",
                    i.checked_mul(bs)
                        .map_or_else(|| "overflow".to_string(), |o| o.to_string()),
                    d.len(),
                    &blake3::hash(d).to_hex()[..16]
                )?;
            }
            Ok(())
        }
        QuarantineCmd::Extract(a) => {
            let q = quarantine::read(&a.file).map_err(bad_input)?;
            // Every block within the old copy's length before anything is written.
            let mut at = Vec::with_capacity(q.blocks.len());
            for (i, d) in &q.blocks {
                let offset = q
                    .block_offset(*i, d.len())
                    .map_err(|e| bad_input(format!("{}: block {i}: {e}", a.file.display())))?;
                at.push(offset);
            }
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&a.into)
                .with_context(|| format!("opening {}", a.into.display()))?;
            for ((i, d), offset) in q.blocks.iter().zip(at) {
                f.write_all_at(d, offset)
                    .with_context(|| format!("writing block {i} into {}", a.into.display()))?;
            }
            f.sync_all()
                .with_context(|| format!("fsync {}", a.into.display()))?;
            println!(
                "wrote {} blocks from {} into {}",
                q.blocks.len(),
                a.file.display(),
                a.into.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn extract_refuses_a_block_beyond_the_old_length_before_writing_anything() {
        let dir = std::env::temp_dir().join(format!("tandem-qx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vol-epoch3-1.blocks");
        let mut bytes = quarantine::encode_header(8, 64).to_vec();
        bytes.extend_from_slice(&quarantine::encode_record(1, &[1; 8]));
        bytes.extend_from_slice(&quarantine::encode_record(8, &[2; 8]));
        std::fs::write(&file, &bytes).unwrap();
        let into = dir.join("copy.img");
        std::fs::write(&into, vec![0u8; 64]).unwrap();
        let err = run(QuarantineCmd::Extract(ExtractArgs {
            file: file.clone(),
            into: into.clone(),
        }))
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("vol-epoch3-1.blocks: block 8: out of bounds: offset 64 + length 8"),
            "{msg}"
        );
        assert_eq!(crate::exit::code_of(&err), 2, "bad input");
        assert_eq!(
            std::fs::read(&into).unwrap(),
            vec![0u8; 64],
            "nothing written"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
