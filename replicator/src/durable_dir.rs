//! Creating folders durably: every missing component of a path is created and its parent
//! fsynced, so a power loss cannot take back a folder that files were then made durable in.
//!
//! Why: `create_dir_all` leaves the new directory entry in the page cache of its parent. A
//! file later created, written and fdatasync'ed inside it is durable only once the entry
//! naming its folder is too (ext4 without `dirsync`, XFS: fsync of the file does not reach the
//! parent's parent). After a power loss the whole folder, and every durable file in it, is
//! gone.

use crate::error::{ReplicatorError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Creates `dir` and every missing parent, fsyncing the parent of each component it created
/// (from the outermost down), so the folder survives a power loss. A folder that already
/// exists is left alone (nothing is synced). Blocking.
///
/// # Errors
/// [`ReplicatorError::Io`] naming the folder that could not be created or synced.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    let missing = missing_components(dir);
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| ReplicatorError::io("create dir", dir, e))?;
    for created in &missing {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| ReplicatorError::io("fsync dir", parent, e))?;
        #[cfg(test)]
        SYNCED.with(|s| s.borrow_mut().push(parent.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Folders fsynced by [`create_dir_durable`] on this thread (tests observe the call sites).
    static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the list of folders fsynced by [`create_dir_durable`] on this thread since the last
/// call (tests only).
#[cfg(test)]
pub(crate) fn take_synced() -> Vec<PathBuf> {
    SYNCED.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// The components of `dir` that do not exist yet, outermost first (pure but for `exists`).
fn missing_components(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    missing.reverse();
    missing
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn missing_components_are_listed_outermost_first_and_created() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a").join("b").join("c");
        let want = vec![
            d.path().join("a"),
            d.path().join("a").join("b"),
            deep.clone(),
        ];
        assert_eq!(missing_components(&deep), want);
        take_synced();
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        let parents: Vec<PathBuf> = want
            .iter()
            .map(|p| p.parent().unwrap().to_owned())
            .collect();
        assert_eq!(take_synced(), parents, "each new folder's parent fsynced");
        assert!(missing_components(&deep).is_empty());
        // Existing: nothing to do, no error.
        create_dir_durable(&deep).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = create_dir_durable(&file.join("sub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sub"), "{err}");
    }
}
