//! The disk under a benchmark: bytes the device wrote during a run (`/proc/diskstats`), and the
//! physical limit measured in the same run (a sequential write made durable with `fdatasync`).
//! A replication benchmark on one machine writes each byte several times (the primary's journal
//! and image, the replica's image): when the device is the limit, the ratio to a CPU figure
//! says little, and this says so.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

/// Sectors in `/proc/diskstats` are 512 bytes, whatever the device's own sector size.
const SECTOR: u64 = 512;

/// The device holding `dir`, as `major:minor`, and the bytes it has written since boot; `None`
/// when `/proc/diskstats` does not list it (a file system on no block device: tmpfs, overlay).
pub(crate) fn written_bytes(dir: &Path) -> Option<(String, u64)> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    let sectors = sectors_written(&stats, major, minor)?;
    Some((format!("{major}:{minor}"), sectors * SECTOR))
}

/// The sectors written of device `major:minor` in a `/proc/diskstats` text (the 10th column:
/// major, minor, name, then reads completed, reads merged, sectors read, ms reading, writes
/// completed, writes merged, sectors written). Pure.
pub(crate) fn sectors_written(stats: &str, major: u64, minor: u64) -> Option<u64> {
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[0].parse() == Ok(major) && f[1].parse() == Ok(minor))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// Linux's `major(dev)` (glibc's encoding of `st_dev`).
fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)
}

/// Linux's `minor(dev)`.
fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff)
}

/// Writes `mib` MiB to a new file in `dir` in 1 MiB writes, `fdatasync`s it and removes it:
/// MB/s, the device's sequential durable write speed in this run.
pub(crate) fn durable_write_mb_per_s(dir: &Path, mib: usize) -> Result<f64> {
    let path = dir.join("bench-disk-probe");
    let block = tandem_core::mixed::mixed(3, 1 << 20);
    let t = Instant::now();
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    for _ in 0..mib {
        f.write_all(&block)
            .with_context(|| format!("write {}", path.display()))?;
    }
    f.sync_data()
        .with_context(|| format!("fdatasync {}", path.display()))?;
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok((mib << 20) as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_written_are_the_tenth_column_of_the_device_line() {
        let stats = "\
 253       0 vda 5303 1200 600000 900 81234 4000 9876543 7000 0 3000 8000
 253       1 vda1 10 0 80 1 2 0 16 0 0 1 1
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0
";
        assert_eq!(sectors_written(stats, 253, 0), Some(9_876_543));
        assert_eq!(sectors_written(stats, 253, 1), Some(16));
        assert_eq!(sectors_written(stats, 8, 0), None);
        assert_eq!(
            sectors_written("253 0 vda 1 2", 253, 0),
            None,
            "a short line"
        );
    }

    /// glibc's `makedev`.
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    }

    #[test]
    fn device_numbers_decode_as_glibc_encodes_them() {
        for (major, minor) in [(253, 1), (8, 0), (4100, 70_000), (259, 300)] {
            let dev = makedev(major, minor);
            assert_eq!((libc_major(dev), libc_minor(dev)), (major, minor));
        }
        assert_eq!(makedev(253, 1), 0xfd01);
    }

    #[test]
    fn the_probe_writes_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("tandem-disk-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(durable_write_mb_per_s(&dir, 2).unwrap() > 0.0);
        assert!(!dir.join("bench-disk-probe").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
