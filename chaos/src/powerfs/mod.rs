//! STUB (replaced by the powerfs branch).
#![allow(missing_docs, dead_code, clippy::all)]
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CutReport {
    pub files_reverted: u64,
    pub bytes_dropped: u64,
    pub dir_changes_dropped: u64,
    pub torn_writes: u64,
}
pub struct PowerFs {
    m: PathBuf,
}
impl PowerFs {
    pub fn mount(mountpoint: &Path, _backing: &Path, _seed: u64) -> anyhow::Result<PowerFs> {
        Ok(PowerFs {
            m: mountpoint.to_owned(),
        })
    }
    pub fn power_cut(&self, _tear: bool) -> anyhow::Result<CutReport> {
        Ok(CutReport::default())
    }
    pub fn mountpoint(&self) -> &Path {
        &self.m
    }
}
