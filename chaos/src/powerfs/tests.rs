//! Tests of the pure model: a property test against a plain reference, then tearing,
//! writeback, and the namespace cases one by one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;

use proptest::prelude::*;

use super::model::{tear_point, CutReport, FsError, Ino, Kind, Model, ROOT, SECTOR};
use super::store::MemStore;
use crate::rng::SplitMix64;

type TestResult = Result<(), FsError>;

/// A folder's (live, last-synced) entries in the reference.
type RefDir = (BTreeMap<String, Ino>, BTreeMap<String, Ino>);

/// The reference: whole copies of each file's live and last-synced bytes, and each folder's
/// live and last-synced entries. Nothing clever, so it can be trusted.
#[derive(Debug, Default)]
struct Reference {
    files: HashMap<Ino, (Vec<u8>, Vec<u8>)>,
    dirs: HashMap<Ino, RefDir>,
}

impl Reference {
    fn new() -> Self {
        let mut r = Reference::default();
        r.dirs.insert(ROOT, Default::default());
        r
    }

    fn entry(&self, dir: Ino, name: &str) -> Option<Ino> {
        self.dirs.get(&dir).and_then(|d| d.0.get(name).copied())
    }

    /// Folder 0 is the root, 1 and 2 are `d1`/`d2` in the root (if they exist live).
    fn dir(&self, index: u8) -> Option<Ino> {
        if index == 0 {
            return Some(ROOT);
        }
        self.entry(ROOT, &format!("d{index}"))
            .filter(|ino| self.dirs.contains_key(ino))
    }

    fn file(&self, dir: u8, file: u8) -> Option<Ino> {
        self.entry(self.dir(dir)?, &format!("f{file}"))
            .filter(|ino| self.files.contains_key(ino))
    }

    fn cut(&mut self) {
        for (live, synced) in self.files.values_mut() {
            *live = synced.clone();
        }
        for (live, synced) in self.dirs.values_mut() {
            *live = synced.clone();
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u8),
    Mkdir(u8),
    Write(u8, u8, u16, u16, u8),
    Truncate(u8, u8, u16),
    Fsync(u8, u8),
    FsyncDir(u8),
    Unlink(u8, u8),
    Rename(u8, u8, u8, u8),
    Rmdir(u8),
    Cut,
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly the root, so most requests find their file.
    let d = prop_oneof![3 => Just(0u8), 1 => 1u8..3];
    let f = 0u8..2;
    prop_oneof![
        3 => (d.clone(), f.clone()).prop_map(|(d, f)| Op::Create(d, f)),
        1 => (1u8..3).prop_map(Op::Mkdir),
        6 => (d.clone(), f.clone(), 0u16..3000, 1u16..1500, any::<u8>())
            .prop_map(|(d, f, o, l, b)| Op::Write(d, f, o, l, b)),
        3 => (d.clone(), f.clone(), 0u16..4000).prop_map(|(d, f, s)| Op::Truncate(d, f, s)),
        2 => (d.clone(), f.clone()).prop_map(|(d, f)| Op::Fsync(d, f)),
        2 => d.clone().prop_map(Op::FsyncDir),
        1 => (d.clone(), f.clone()).prop_map(|(d, f)| Op::Unlink(d, f)),
        2 => (d.clone(), f.clone(), d.clone(), f.clone())
            .prop_map(|(a, b, c, e)| Op::Rename(a, b, c, e)),
        1 => (1u8..3).prop_map(Op::Rmdir),
        1 => Just(Op::Cut),
    ]
}

fn name(prefix: &str, i: u8) -> String {
    format!("{prefix}{i}")
}

/// Applies `op` to the model and the reference; the model must fail exactly when the
/// reference says the request is invalid.
fn apply(model: &mut Model<MemStore>, r: &mut Reference, op: &Op) -> TestResult {
    match *op {
        Op::Create(d, f) => {
            let Some(dir) = r.dir(d) else { return Ok(()) };
            let n = name("f", f);
            let res = model.create(dir, OsStr::new(&n), 0o644);
            if r.entry(dir, &n).is_some() {
                assert!(matches!(res, Err(FsError::Exists(_))), "{op:?}: {res:?}");
            } else {
                let ino = res?.ino;
                r.files.insert(ino, Default::default());
                r.dirs.entry(dir).or_default().0.insert(n, ino);
            }
        }
        Op::Mkdir(d) => {
            let n = name("d", d);
            let res = model.mkdir(ROOT, OsStr::new(&n), 0o755);
            if r.entry(ROOT, &n).is_some() {
                assert!(res.is_err(), "{op:?}: {res:?}");
            } else {
                let ino = res?.ino;
                r.dirs.insert(ino, Default::default());
                r.dirs.entry(ROOT).or_default().0.insert(n, ino);
            }
        }
        Op::Write(d, f, off, len, byte) => {
            let Some(ino) = r.file(d, f) else {
                return Ok(());
            };
            let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
            model.write(ino, u64::from(off), &data, false)?;
            let live = &mut r.files.entry(ino).or_default().0;
            let end = usize::from(off) + data.len();
            if live.len() < end {
                live.resize(end, 0);
            }
            live[usize::from(off)..end].copy_from_slice(&data);
        }
        Op::Truncate(d, f, size) => {
            let Some(ino) = r.file(d, f) else {
                return Ok(());
            };
            model.truncate(ino, u64::from(size))?;
            r.files
                .entry(ino)
                .or_default()
                .0
                .resize(usize::from(size), 0);
        }
        Op::Fsync(d, f) => {
            let Some(ino) = r.file(d, f) else {
                return Ok(());
            };
            model.fsync(ino)?;
            let file = r.files.entry(ino).or_default();
            file.1 = file.0.clone();
        }
        Op::FsyncDir(d) => {
            let Some(dir) = r.dir(d) else { return Ok(()) };
            model.fsyncdir(dir)?;
            let entries = r.dirs.entry(dir).or_default();
            entries.1 = entries.0.clone();
        }
        Op::Unlink(d, f) => {
            let Some(dir) = r.dir(d) else { return Ok(()) };
            let n = name("f", f);
            let res = model.unlink(dir, OsStr::new(&n));
            if r.file(d, f).is_some() {
                res?;
                r.dirs.entry(dir).or_default().0.remove(&n);
            } else {
                assert!(res.is_err(), "{op:?}: {res:?}");
            }
        }
        Op::Rename(d, f, to_d, to_f) => {
            let (Some(src_dir), Some(dst_dir)) = (r.dir(d), r.dir(to_d)) else {
                return Ok(());
            };
            let Some(ino) = r.file(d, f) else {
                return Ok(());
            };
            let (n, to_n) = (name("f", f), name("f", to_f));
            model.rename(src_dir, OsStr::new(&n), dst_dir, OsStr::new(&to_n))?;
            // POSIX: two names of one file (a cut can leave a file in both the folder it was
            // renamed out of and the one it went to): rename does nothing.
            if r.entry(dst_dir, &to_n) == Some(ino) {
                return Ok(());
            }
            r.dirs.entry(src_dir).or_default().0.remove(&n);
            r.dirs.entry(dst_dir).or_default().0.insert(to_n, ino);
        }
        Op::Rmdir(d) => {
            let n = name("d", d);
            let res = model.rmdir(ROOT, OsStr::new(&n));
            match r.dir(d) {
                Some(dir) if r.dirs.get(&dir).is_some_and(|e| e.0.is_empty()) => {
                    res?;
                    r.dirs.entry(ROOT).or_default().0.remove(&n);
                }
                _ => assert!(res.is_err(), "{op:?}: {res:?}"),
            }
        }
        Op::Cut => {
            model.power_cut(false)?;
            r.cut();
        }
    }
    Ok(())
}

/// The model's live tree equals the reference's: same entries in every reachable folder and
/// the same bytes in every reachable file.
fn check_tree(model: &mut Model<MemStore>, r: &Reference, dir: Ino, path: &str) -> TestResult {
    let listed = model.readdir(dir)?;
    let want = &r.dirs[&dir].0;
    let got: BTreeMap<String, Ino> = listed
        .iter()
        .map(|(n, ino, _)| (n.to_string_lossy().into_owned(), *ino))
        .collect();
    assert_eq!(&got, want, "entries of {path}/");
    for (n, ino, kind) in listed {
        let child = format!("{path}/{}", n.to_string_lossy());
        match kind {
            Kind::Dir => check_tree(model, r, ino, &child)?,
            Kind::File => {
                let want = &r.files[&ino].0;
                assert_eq!(model.attr(ino)?.size, want.len() as u64, "size of {child}");
                let got = model.read(ino, 0, 1 << 20)?;
                assert!(
                    got == *want,
                    "content of {child}: {} vs {} bytes",
                    got.len(),
                    want.len()
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After any sequence and a cut, every file reads as at its last sync and every folder
    /// lists its entries as of its own last sync; between cuts the live view is exact.
    #[test]
    fn after_a_cut_every_file_and_folder_is_as_at_its_last_sync(
        ops in proptest::collection::vec(op(), 1..100)
    ) {
        let mut model = Model::new(MemStore::default(), 7, None);
        let mut r = Reference::new();
        for (i, op) in ops.iter().enumerate() {
            apply(&mut model, &mut r, op).map_err(|e| TestCaseError::fail(format!("#{i} {op:?}: {e}")))?;
            check_tree(&mut model, &r, ROOT, "").map_err(|e| TestCaseError::fail(format!("#{i} {op:?}: {e}")))?;
        }
        model.power_cut(false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        r.cut();
        check_tree(&mut model, &r, ROOT, "").map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(model.stats().unsynced_bytes, 0);
    }
}

/// A file `name` in the root whose entry is durable, with `durable` synced into it.
fn durable_file(model: &mut Model<MemStore>, name: &str, durable: &[u8]) -> Result<Ino, FsError> {
    let ino = model.create(ROOT, OsStr::new(name), 0o644)?.ino;
    model.fsyncdir(ROOT)?;
    model.write(ino, 0, durable, false)?;
    model.fsync(ino)?;
    Ok(ino)
}

#[test]
fn tear_keeps_a_sector_aligned_prefix_of_the_last_write_only() -> TestResult {
    let mut points = std::collections::BTreeSet::new();
    for seed in 0..32 {
        let mut model = Model::new(MemStore::default(), seed, None);
        let other = durable_file(&mut model, "other", b"")?;
        let ino = durable_file(&mut model, "f", &[1u8; 100])?;
        model.write(other, 0, &[5u8; 4096], false)?;
        model.write(ino, 0, &[7u8; 4096], false)?;
        let report = model.power_cut(true)?;
        assert_eq!(report.torn_writes, 1, "seed {seed}");
        let size = model.attr(ino)?.size;
        assert!(
            size > 0 && size < 4096 && size % SECTOR == 0,
            "seed {seed}: size {size}"
        );
        assert_eq!(
            model.read(ino, 0, 8192)?,
            vec![7u8; size as usize],
            "seed {seed}"
        );
        assert_eq!(
            model.attr(other)?.size,
            0,
            "seed {seed}: an earlier write survived"
        );
        points.insert(size);
    }
    assert!(
        points.len() > 2,
        "tear points do not vary with the seed: {points:?}"
    );
    Ok(())
}

#[test]
fn tear_of_a_write_inside_one_sector_keeps_nothing() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, None);
    let ino = durable_file(&mut model, "f", &[1u8; 600])?;
    model.write(ino, 520, &[9u8; 100], false)?;
    let report = model.power_cut(true)?;
    assert_eq!(report.torn_writes, 0);
    assert_eq!(report.bytes_dropped, 100);
    assert_eq!(model.read(ino, 0, 1000)?, vec![1u8; 600]);
    Ok(())
}

#[test]
fn tear_point_is_strictly_inside_and_aligned() {
    let mut rng = SplitMix64::new(3);
    assert_eq!(tear_point(0, 512, &mut rng), None);
    assert_eq!(tear_point(100, 1024, &mut rng), Some(512));
    for _ in 0..100 {
        let p = tear_point(700, 5000, &mut rng);
        assert!(
            p.is_some_and(|p| p > 700 && p < 5000 && p % SECTOR == 0),
            "{p:?}"
        );
    }
}

#[test]
fn writeback_over_the_cap_makes_the_oldest_file_durable() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, Some(1000));
    let a = durable_file(&mut model, "a", b"")?;
    let b = durable_file(&mut model, "b", b"")?;
    model.write(a, 0, &[1u8; 600], false)?;
    assert_eq!(model.stats().writebacks, 0);
    model.write(b, 0, &[2u8; 600], false)?;
    let stats = model.stats();
    assert_eq!((stats.writebacks, stats.bytes_written_back), (1, 600));
    assert_eq!(stats.unsynced_bytes, 600);
    assert_eq!(model.store().bytes(a), &[1u8; 600][..]);
    let report = model.power_cut(false)?;
    assert_eq!(report.bytes_dropped, 600);
    assert_eq!(model.read(a, 0, 1000)?, vec![1u8; 600]);
    assert_eq!(model.attr(b)?.size, 0);
    Ok(())
}

#[test]
fn file_synced_in_a_folder_never_synced_is_gone_after_a_cut() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, None);
    let dir = model.mkdir(ROOT, OsStr::new("d"), 0o755)?.ino;
    let ino = model.create(dir, OsStr::new("f"), 0o644)?.ino;
    model.write(ino, 0, b"data", false)?;
    model.fsync(ino)?;
    model.fsyncdir(dir)?;
    let report = model.power_cut(false)?;
    assert_eq!(report.dir_changes_dropped, 1, "{report:?}");
    assert!(model.lookup(ROOT, OsStr::new("d")).is_err());
    assert_eq!(model.inode_count(), 1, "unreachable inodes kept");
    Ok(())
}

#[test]
fn rename_over_reverts_without_a_folder_sync_and_holds_with_one() -> TestResult {
    for sync_dir in [false, true] {
        let mut model = Model::new(MemStore::default(), 1, None);
        durable_file(&mut model, "cfg", b"old")?;
        let tmp = model.create(ROOT, OsStr::new("cfg.tmp"), 0o644)?.ino;
        model.write(tmp, 0, b"new!", false)?;
        model.fsync(tmp)?;
        model.rename(ROOT, OsStr::new("cfg.tmp"), ROOT, OsStr::new("cfg"))?;
        if sync_dir {
            model.fsyncdir(ROOT)?;
        }
        model.power_cut(false)?;
        let cfg = model.lookup(ROOT, OsStr::new("cfg"))?.ino;
        let want: &[u8] = if sync_dir { b"new!" } else { b"old" };
        assert_eq!(model.read(cfg, 0, 100)?, want, "sync_dir={sync_dir}");
        assert!(model.lookup(ROOT, OsStr::new("cfg.tmp")).is_err());
        assert_eq!(model.inode_count(), 2, "sync_dir={sync_dir}");
    }
    Ok(())
}

#[test]
fn unlinked_open_file_lives_until_released_and_handles_die_at_a_cut() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, None);
    let ino = model.create(ROOT, OsStr::new("f"), 0o644)?.ino;
    let fh = model.open(ino, false)?;
    model.unlink(ROOT, OsStr::new("f"))?;
    model.write(ino, 0, b"still here", false)?;
    assert_eq!(model.read(ino, 0, 100)?, b"still here");
    model.release(fh)?;
    assert!(model.attr(ino).is_err(), "released unlinked file kept");
    let ino = durable_file(&mut model, "g", b"")?;
    let fh = model.open(ino, true)?;
    assert_eq!(model.handle_sync(fh), Ok(true));
    model.power_cut(false)?;
    assert_eq!(model.handle_sync(fh), Err(FsError::BadHandle(fh)));
    model.release(fh)?;
    Ok(())
}

#[test]
fn sync_write_is_durable_at_once_and_truncate_then_extend_reads_zeros() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, None);
    let ino = durable_file(&mut model, "f", b"abcdef")?;
    model.truncate(ino, 2)?;
    model.truncate(ino, 6)?;
    assert_eq!(model.read(ino, 0, 10)?, b"ab\0\0\0\0");
    model.write(ino, 6, b"g", true)?;
    let report = model.power_cut(false)?;
    assert_eq!(report, CutReport::default());
    assert_eq!(model.read(ino, 0, 10)?, b"ab\0\0\0\0g");
    assert_eq!(model.stats().sync_writes, 1);
    Ok(())
}

#[test]
fn namespace_errors_name_the_right_errno_class() -> TestResult {
    let mut model = Model::new(MemStore::default(), 1, None);
    let dir = model.mkdir(ROOT, OsStr::new("d"), 0o755)?.ino;
    let f = model.create(dir, OsStr::new("f"), 0o644)?.ino;
    assert!(matches!(
        model.rmdir(ROOT, OsStr::new("d")),
        Err(FsError::NotEmpty(_))
    ));
    assert!(matches!(
        model.unlink(ROOT, OsStr::new("d")),
        Err(FsError::IsDir(_))
    ));
    assert!(matches!(
        model.create(dir, OsStr::new("f"), 0o644),
        Err(FsError::Exists(_))
    ));
    assert!(matches!(
        model.lookup(f, OsStr::new("x")),
        Err(FsError::NotDir(_))
    ));
    assert!(matches!(
        model.rename(dir, OsStr::new("f"), ROOT, OsStr::new("d")),
        Err(FsError::IsDir(_))
    ));
    assert!(matches!(
        model.write(f, u64::MAX - 1, b"xy", false),
        Err(FsError::Invalid(_))
    ));
    assert!(matches!(model.read(dir, 0, 1), Err(FsError::IsDir(_))));
    Ok(())
}
