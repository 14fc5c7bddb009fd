//! Durable file bytes of the power-loss file system: one backing file per inode on the real
//! disk, or (for tests) in memory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::model::{FsError, Ino, Store};

/// A [`Store`] keeping inode N's durable bytes in `<dir>/ino-N`. The real disk is never cut, so
/// these files need no fsync of their own.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    open: HashMap<Ino, File>,
}

/// Open backing files kept at most; past this the cache is emptied (files reopen on demand).
const MAX_OPEN: usize = 512;

impl DirStore {
    /// Uses `dir` (created if missing); backing files left there by an earlier mount are removed.
    ///
    /// # Errors
    /// If the folder cannot be made or listed, or a stale backing file cannot be removed.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("ino-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(DirStore {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        })
    }

    fn path(&self, ino: Ino) -> PathBuf {
        self.dir.join(format!("ino-{}", ino.0))
    }

    fn file(&mut self, ino: Ino) -> Result<&File, FsError> {
        if !self.open.contains_key(&ino) {
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            let path = self.path(ino);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| FsError::Io(format!("open {}: {e}", path.display())))?;
            self.open.insert(ino, file);
        }
        self.open
            .get(&ino)
            .ok_or_else(|| FsError::Io(format!("backing file of inode {} not open", ino.0)))
    }

    fn io_err(&self, ino: Ino, what: &str, offset: u64, e: std::io::Error) -> FsError {
        FsError::Io(format!(
            "{what} {} at offset {offset}: {e}",
            self.path(ino).display()
        ))
    }
}

impl Store for DirStore {
    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let res = self.file(ino)?.read_exact_at(buf, offset);
        res.map_err(|e| self.io_err(ino, "read", offset, e))
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let res = self.file(ino)?.write_all_at(data, offset);
        res.map_err(|e| self.io_err(ino, "write", offset, e))
    }

    fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), FsError> {
        let res = self.file(ino)?.set_len(len);
        res.map_err(|e| self.io_err(ino, "set length of", len, e))
    }

    fn remove(&mut self, ino: Ino) -> Result<(), FsError> {
        self.open.remove(&ino);
        let path = self.path(ino);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::Io(format!("remove {}: {e}", path.display()))),
        }
    }
}

/// A [`Store`] in memory, for tests.
#[derive(Debug, Default)]
pub struct MemStore {
    files: HashMap<Ino, Vec<u8>>,
}

impl MemStore {
    /// The bytes kept for `ino` (empty when none).
    pub fn bytes(&self, ino: Ino) -> &[u8] {
        self.files.get(&ino).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl Store for MemStore {
    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let bytes = self.bytes(ino);
        let start = usize::try_from(offset).map_err(|e| FsError::Io(e.to_string()))?;
        let src = bytes.get(start..start + buf.len()).ok_or_else(|| {
            FsError::Io(format!("inode {}: read past the end at {offset}", ino.0))
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let start = usize::try_from(offset).map_err(|e| FsError::Io(e.to_string()))?;
        let file = self.files.entry(ino).or_default();
        if file.len() < start + data.len() {
            file.resize(start + data.len(), 0);
        }
        file[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), FsError> {
        let len = usize::try_from(len).map_err(|e| FsError::Io(e.to_string()))?;
        self.files.entry(ino).or_default().resize(len, 0);
        Ok(())
    }

    fn remove(&mut self, ino: Ino) -> Result<(), FsError> {
        self.files.remove(&ino);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_store_keeps_bytes_per_inode_and_clears_stale_files(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        std::fs::write(tmp.path().join("ino-9"), b"stale")?;
        let mut store = DirStore::new(tmp.path())?;
        assert!(
            !tmp.path().join("ino-9").exists(),
            "stale backing file kept"
        );
        store.write(Ino(2), 3, b"abc")?;
        let mut buf = [9u8; 6];
        store.read(Ino(2), 0, &mut buf)?;
        assert_eq!(&buf, b"\0\0\0abc");
        store.set_len(Ino(2), 4)?;
        assert_eq!(std::fs::metadata(tmp.path().join("ino-2"))?.len(), 4);
        assert!(
            store.read(Ino(2), 2, &mut buf).is_err(),
            "read past the end"
        );
        store.remove(Ino(2))?;
        assert!(!tmp.path().join("ino-2").exists());
        Ok(())
    }
}
