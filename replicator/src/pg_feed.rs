//! The primary's view of a PostgreSQL resource's WAL feed: how far PostgreSQL has written WAL
//! (its `pg_wal` folder) against what is durable at the replica site (segments whose
//! `archive_command`, `tandem wal push`, succeeded), giving the RPO contribution of WAL not
//! archived yet and the feed's health (archiving, stalled, stopped, absent).
//!
//! [`observe`] reads the folder (blocking I/O, no PostgreSQL connection, no credentials: the
//! replicator needs read access to `pg_wal`); [`Tracker::assess`] decides (pure, values in,
//! values out).
//!
//! How the age of the oldest WAL not durable at the replica is bounded: a segment is durable
//! at the replica once PostgreSQL marked it archived (`archive_status/NAME.done`: `tandem wal
//! push` exits 0 only then). Every segment after the newest durable one that holds WAL of its
//! current life (its first page header carries its own address: recycled and pre-allocated
//! files do not) is at risk. Its first write happened after the previous poll that did not see
//! it written, so the RPO reported counts from that poll: an upper bound that includes the
//! poll interval. At the first poll after a start the bound is the modification time of the
//! segment before it (written before it), or, without that file, its own modification time
//! (a bound from below).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A completed segment waiting for `archive_command` longer than this means the feed is
/// stalled (the archiver retries a failing command every few seconds).
pub const STALL_MS: i64 = 5_000;

/// One WAL segment file in `pg_wal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its 24-hex-digit name.
    pub name: String,
    /// Modification time (its last write), unix ms.
    pub mtime_ms: i64,
    /// It holds WAL of its current life (first page header addresses this segment).
    pub written: bool,
}

/// What the `pg_wal` folder of a primary showed at one poll.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// When the folder was read, unix ms.
    pub now_ms: i64,
    /// `None` when readable; otherwise why not (the OS error, naming the folder).
    pub unreadable: Option<String>,
    /// The folder does not exist: no PostgreSQL cluster at the data directory yet.
    pub absent: bool,
    /// `postmaster.pid` exists: a server runs (or crashed without cleaning up).
    pub running: bool,
    /// Segment files, any order.
    pub segments: Vec<Segment>,
    /// Completed segments waiting for `archive_command` (`.ready`), with the time each was
    /// completed (the status file's modification time), unix ms.
    pub ready: Vec<(String, i64)>,
    /// The newest segment archived (`.done`), and when (the status file's change time: the
    /// rename from `.ready`), unix ms.
    pub done: Option<(String, i64)>,
    /// For a server that is not running: `pg_controldata` says `shut down` and names this
    /// segment as its last checkpoint's REDO WAL file (a clean shutdown whose last WAL is the
    /// shutdown checkpoint only).
    pub clean_shutdown_redo: Option<String>,
}

/// The feed's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedState {
    /// WAL is archived as it completes.
    Archiving,
    /// A completed segment has waited longer than [`STALL_MS`]: `archive_command` fails.
    Stalled,
    /// No server runs (`postmaster.pid` absent).
    Stopped,
    /// No `pg_wal` folder: PostgreSQL does not exist at the data directory yet.
    Absent,
    /// `pg_wal` cannot be read (permissions): the feed cannot be judged.
    Unreadable,
}

impl FeedState {
    /// The name status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Archiving => "archiving",
            FeedState::Stalled => "stalled",
            FeedState::Stopped => "stopped",
            FeedState::Absent => "absent",
            FeedState::Unreadable => "unreadable",
        }
    }
}

/// The verdict of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The feed's state; only [`FeedState::Archiving`] is healthy.
    pub state: FeedState,
    /// The newest segment durable at the replica, and when it was archived (unix ms).
    pub last_archived: Option<(String, i64)>,
    /// Completed segments not archived yet.
    pub unarchived_segments: u32,
    /// Bound on the write time (unix ms) of the oldest WAL not durable at the replica; `None`
    /// when all WAL with data is there.
    pub oldest_unarchived_ms: Option<i64>,
    /// One line for status.
    pub detail: String,
}

impl Health {
    /// Only an archiving feed protects the database.
    pub fn healthy(&self) -> bool {
        self.state == FeedState::Archiving
    }
}

/// What one resource's polls remember: when each segment at risk was first seen written.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    prev_poll_ms: Option<i64>,
    written_since: BTreeMap<String, i64>,
}

impl Tracker {
    /// Judges one observation (and remembers it for the next).
    pub fn assess(&mut self, obs: &Observation) -> Health {
        let now = obs.now_ms;
        let last_archived = obs.done.clone();
        let bad = |state: FeedState, detail: String| Health {
            state,
            last_archived: last_archived.clone(),
            unarchived_segments: 0,
            oldest_unarchived_ms: None,
            detail,
        };
        if obs.absent {
            self.prev_poll_ms = Some(now);
            self.written_since.clear();
            return bad(
                FeedState::Absent,
                "no PostgreSQL cluster (pg_wal missing)".into(),
            );
        }
        if let Some(why) = &obs.unreadable {
            return bad(FeedState::Unreadable, format!("cannot read pg_wal: {why}"));
        }
        let durable = obs.done.as_ref().map(|d| d.0.as_str());
        // Written segments after the newest archived one, and every segment waiting for
        // archive_command (even one before it: PostgreSQL archives in order, but a .ready
        // file is never durable at the replica).
        let mut at_risk: Vec<&str> = obs
            .segments
            .iter()
            .filter(|s| s.written && Some(s.name.as_str()) > durable)
            .map(|s| s.name.as_str())
            .chain(obs.ready.iter().map(|r| r.0.as_str()))
            .collect();
        at_risk.sort_unstable();
        at_risk.dedup();
        for name in &at_risk {
            if !self.written_since.contains_key(*name) {
                let since = self
                    .prev_poll_ms
                    .unwrap_or_else(|| first_poll_bound(obs, name));
                self.written_since.insert((*name).to_owned(), since);
            }
        }
        self.written_since
            .retain(|n, _| at_risk.binary_search(&n.as_str()).is_ok());
        self.prev_poll_ms = Some(now);
        // A clean shutdown leaves its checkpoint record alone in a segment never archived:
        // no transaction is in it.
        let only_shutdown_checkpoint = !obs.running
            && at_risk.len() == 1
            && obs.clean_shutdown_redo.as_deref() == at_risk.first().copied();
        let oldest = if only_shutdown_checkpoint {
            None
        } else {
            at_risk
                .first()
                .and_then(|n| self.written_since.get(*n))
                .copied()
        };
        let oldest_ready = obs.ready.iter().map(|r| r.1).min();
        let waiting = oldest_ready.map_or(0, |t| (now - t).max(0));
        let state = if waiting > STALL_MS {
            FeedState::Stalled
        } else if !obs.running {
            FeedState::Stopped
        } else {
            FeedState::Archiving
        };
        let mut detail = match &last_archived {
            Some((n, t)) => format!("last archived {n} {} ms ago", (now - t).max(0)),
            None => "nothing archived yet".to_owned(),
        };
        detail.push_str(&format!(
            "; {} completed segment(s) waiting for archive_command",
            obs.ready.len()
        ));
        if let Some(t) = oldest {
            detail.push_str(&format!(
                "; WAL not at the replica since {} ms",
                (now - t).max(0)
            ));
        }
        match state {
            FeedState::Stalled => detail.insert_str(
                0,
                &format!("archive_command failing: oldest segment waiting {waiting} ms; "),
            ),
            FeedState::Stopped => detail.insert_str(0, "server not running; "),
            _ => {}
        }
        Health {
            state,
            last_archived,
            unarchived_segments: u32::try_from(obs.ready.len()).unwrap_or(u32::MAX),
            oldest_unarchived_ms: oldest,
            detail,
        }
    }
}

/// Without an earlier poll: the segment before `name` was last written before `name` was
/// first written (an upper bound of the age); without that file, `name`'s own last write (a
/// bound from below).
fn first_poll_bound(obs: &Observation, name: &str) -> i64 {
    let own = obs
        .segments
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.mtime_ms);
    let before = obs
        .segments
        .iter()
        .filter(|s| s.name.as_str() < name && s.written)
        .max_by(|a, b| a.name.cmp(&b.name))
        .map(|s| s.mtime_ms);
    before.or(own).unwrap_or(obs.now_ms)
}

/// The start address of segment `name` (24 hex digits: timeline, log, segment) for segments of
/// `seg_size` bytes; `None` for another name or size.
pub fn segment_start(name: &str, seg_size: u64) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if !seg_size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&seg_size) {
        return None;
    }
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    let per_log = 0x1_0000_0000u64 / seg_size;
    if seg >= per_log {
        return None;
    }
    (log * per_log + seg).checked_mul(seg_size)
}

/// Whether the first page header of segment `name` (`head`: its first 16 bytes; the file is
/// `seg_size` bytes) addresses this segment: it holds WAL of its current life.
pub fn header_is_current(name: &str, seg_size: u64, head: &[u8]) -> bool {
    let (Some(start), Some(addr)) = (
        segment_start(name, seg_size),
        head.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) else {
        return false;
    };
    // The page magic (2 bytes) is never 0 in a written page.
    head.get(..2).is_some_and(|m| m != [0, 0]) && u64::from_le_bytes(addr) == start
}

/// The REDO WAL file of a cleanly shut down cluster from `pg_controldata` output.
pub fn parse_clean_shutdown(out: &str) -> Option<String> {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|s| s.trim().to_owned())
    };
    (field("Database cluster state:")? == "shut down")
        .then(|| field("Latest checkpoint's REDO WAL file:"))
        .flatten()
}

fn ms(t: std::io::Result<std::time::SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads the `pg_wal` folder of the cluster at `data_dir` at `now_ms` (blocking). Only the
/// segments after the newest archived one have their first page header read. When no server
/// runs and WAL is not archived, `controldata` is asked for the clean-shutdown REDO file
/// (`pg_controldata`'s output, or `None`).
pub fn observe(
    data_dir: &Path,
    now_ms: i64,
    controldata: impl FnOnce() -> Option<String>,
) -> Observation {
    let wal = data_dir.join("pg_wal");
    let mut obs = Observation {
        now_ms,
        running: data_dir.join("postmaster.pid").exists(),
        ..Default::default()
    };
    let status = match std::fs::read_dir(wal.join("archive_status")) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            obs.absent = true;
            return obs;
        }
        Err(e) => {
            obs.unreadable = Some(format!("{}: {e}", wal.display()));
            return obs;
        }
    };
    for e in status.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        if let Some(seg) = name.strip_suffix(".ready") {
            if seg.len() == 24 {
                obs.ready.push((seg.to_owned(), ms(meta.modified())));
            }
        } else if let Some(seg) = name.strip_suffix(".done") {
            if seg.len() == 24 && obs.done.as_ref().is_none_or(|d| d.0.as_str() < seg) {
                obs.done = Some((
                    seg.to_owned(),
                    meta.ctime() * 1000 + meta.ctime_nsec() / 1_000_000,
                ));
            }
        }
    }
    let rd = match std::fs::read_dir(&wal) {
        Ok(rd) => rd,
        Err(e) => {
            obs.unreadable = Some(format!("{}: {e}", wal.display()));
            return obs;
        }
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        // Segments up to the newest archived one are durable: their header does not matter,
        // only the newest of them (a bound for the next one's first write).
        let written = if obs.done.as_ref().is_some_and(|d| name <= d.0) {
            true
        } else {
            let mut head = [0u8; 16];
            std::fs::File::open(e.path())
                .and_then(|f| f.read_exact_at(&mut head, 0))
                .is_ok_and(|()| header_is_current(&name, meta.len(), &head))
        };
        obs.segments.push(Segment {
            name,
            mtime_ms: ms(meta.modified()),
            written,
        });
    }
    let pending = obs
        .segments
        .iter()
        .any(|s| s.written && obs.done.as_ref().is_none_or(|d| s.name > d.0));
    if !obs.running && pending {
        obs.clean_shutdown_redo = controldata().as_deref().and_then(parse_clean_shutdown);
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn seg(name: &str, mtime_ms: i64, written: bool) -> Segment {
        Segment {
            name: name.into(),
            mtime_ms,
            written,
        }
    }

    const S1: &str = "000000010000000000000001";
    const S2: &str = "000000010000000000000002";
    const S3: &str = "000000010000000000000003";
    const S4: &str = "000000010000000000000004";

    fn running(now_ms: i64, segments: Vec<Segment>) -> Observation {
        Observation {
            now_ms,
            running: true,
            segments,
            done: Some((S1.into(), 900)),
            ..Default::default()
        }
    }

    #[test]
    fn segment_addresses_follow_the_name() {
        assert_eq!(segment_start(S1, MB16), Some(MB16));
        assert_eq!(
            segment_start("0000000200000001000000FF", MB16),
            Some((256 + 255) * MB16)
        );
        assert_eq!(segment_start("000000010000000000000100", MB16), None);
        assert_eq!(segment_start("00000001.history", MB16), None);
        assert_eq!(segment_start(S1, 1000), None);
        let mut head = [0u8; 16];
        head[..2].copy_from_slice(&0xD110u16.to_le_bytes());
        head[8..].copy_from_slice(&(2 * MB16).to_le_bytes());
        assert!(header_is_current(S2, MB16, &head));
        // A recycled file still carries its old address; a zero-filled one none.
        assert!(!header_is_current(S3, MB16, &head));
        assert!(!header_is_current(S2, MB16, &[0u8; 16]));
    }

    #[test]
    fn unarchived_wal_counts_from_the_poll_before_it_was_seen() {
        let mut t = Tracker::default();
        // 1. Only the archived segment and a recycled future one: nothing at risk.
        let h = t.assess(&running(
            1_000,
            vec![seg(S1, 900, true), seg(S2, 10, false)],
        ));
        assert_eq!(h.oldest_unarchived_ms, None, "{h:?}");
        assert!(h.healthy());
        // 2. Commits land in S2 between polls: at risk since the poll at 1000.
        let h = t.assess(&running(
            1_500,
            vec![seg(S1, 900, true), seg(S2, 1_400, true)],
        ));
        assert_eq!(h.oldest_unarchived_ms, Some(1_000), "{h:?}");
        // 3. More writes do not move the bound; S3 starts too.
        let h = t.assess(&running(
            4_000,
            vec![
                seg(S1, 900, true),
                seg(S2, 3_000, true),
                seg(S3, 3_900, true),
            ],
        ));
        assert_eq!(h.oldest_unarchived_ms, Some(1_000), "{h:?}");
        // 4. S2 archived: the oldest at risk is S3, first seen written at 4000 (poll at 1500
        //    did not see it).
        let mut o = running(4_500, vec![seg(S2, 3_000, true), seg(S3, 4_400, true)]);
        o.done = Some((S2.into(), 4_450));
        let h = t.assess(&o);
        assert_eq!(h.oldest_unarchived_ms, Some(1_500), "{h:?}");
        assert_eq!(h.last_archived, Some((S2.into(), 4_450)));
        // 5. Everything archived, the next segment untouched: RPO contribution none.
        let mut o = running(5_000, vec![seg(S3, 4_400, true), seg(S4, 10, false)]);
        o.done = Some((S3.into(), 4_900));
        assert_eq!(t.assess(&o).oldest_unarchived_ms, None);
    }

    #[test]
    fn a_failing_archive_command_stalls_the_feed_and_the_rpo_keeps_growing() {
        let mut t = Tracker::default();
        t.assess(&running(1_000, vec![seg(S1, 900, true)]));
        let mut o = running(
            3_000,
            vec![
                seg(S1, 900, true),
                seg(S2, 2_000, true),
                seg(S3, 2_900, true),
            ],
        );
        o.ready = vec![(S2.into(), 2_000)];
        let h = t.assess(&o);
        assert_eq!(h.state, FeedState::Archiving, "not yet stalled: {h:?}");
        assert_eq!(h.unarchived_segments, 1);
        o.now_ms = 2_000 + STALL_MS + 1;
        o.ready.push((S3.into(), 6_000));
        let h = t.assess(&o);
        assert_eq!(h.state, FeedState::Stalled, "{h:?}");
        assert!(!h.healthy());
        assert_eq!(h.unarchived_segments, 2);
        assert_eq!(h.oldest_unarchived_ms, Some(1_000));
        assert!(h.detail.contains("archive_command failing"), "{}", h.detail);
        // A segment still waiting while a later one was archived stays at risk.
        o.done = Some((S3.into(), 7_000));
        o.ready = vec![(S2.into(), 2_000)];
        let h = t.assess(&o);
        assert_eq!(h.oldest_unarchived_ms, Some(1_000), "{h:?}");
    }

    #[test]
    fn the_first_poll_bounds_by_the_segment_before() {
        let mut t = Tracker::default();
        let h = t.assess(&running(
            5_000,
            vec![seg(S1, 900, true), seg(S2, 4_000, true)],
        ));
        assert_eq!(h.oldest_unarchived_ms, Some(900));
        // Without the segment before: its own last write (a bound from below).
        let mut t = Tracker::default();
        let mut o = running(5_000, vec![seg(S2, 4_000, true)]);
        o.done = None;
        assert_eq!(t.assess(&o).oldest_unarchived_ms, Some(4_000));
    }

    #[test]
    fn a_missing_cluster_or_a_stopped_server_is_not_healthy() {
        let mut t = Tracker::default();
        let h = t.assess(&Observation {
            now_ms: 1,
            absent: true,
            ..Default::default()
        });
        assert_eq!(h.state, FeedState::Absent);
        assert!(!h.healthy());
        let h = t.assess(&Observation {
            now_ms: 1,
            unreadable: Some("permission denied".into()),
            ..Default::default()
        });
        assert_eq!(h.state, FeedState::Unreadable);
        // A crash: the unarchived WAL stays at risk.
        let mut o = running(2_000, vec![seg(S1, 900, true), seg(S2, 1_500, true)]);
        o.running = false;
        let h = t.assess(&o);
        assert_eq!(h.state, FeedState::Stopped);
        assert_eq!(h.oldest_unarchived_ms, Some(1));
        // A clean shutdown: only its checkpoint is left unarchived.
        o.clean_shutdown_redo = Some(S2.into());
        assert_eq!(t.assess(&o).oldest_unarchived_ms, None);
    }

    #[test]
    fn observe_reads_status_files_and_page_headers() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        assert!(observe(data, 1, || None).absent);
        let wal = data.join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        std::fs::write(data.join("postmaster.pid"), b"1").unwrap();
        let mb = 1u64 << 20;
        let segment = |name: &str, addr: u64| {
            let mut head = vec![0u8; 16];
            if addr > 0 {
                head[..2].copy_from_slice(&0xD110u16.to_le_bytes());
                head[8..].copy_from_slice(&addr.to_le_bytes());
            }
            std::fs::write(wal.join(name), &head).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(wal.join(name))
                .unwrap();
            f.set_len(mb).unwrap();
        };
        segment(S1, mb);
        segment(S2, 2 * mb);
        // Recycled: still the address of its former life.
        segment(S3, mb);
        std::fs::write(wal.join("archive_status").join(format!("{S1}.done")), b"").unwrap();
        std::fs::write(wal.join("archive_status").join(format!("{S2}.ready")), b"").unwrap();
        std::fs::write(wal.join("archive_status/00000002.history.ready"), b"").unwrap();
        let o = observe(data, 5, || {
            panic!("a running server needs no pg_controldata")
        });
        assert!(o.running && !o.absent && o.unreadable.is_none(), "{o:?}");
        assert_eq!(o.done.as_ref().map(|d| d.0.as_str()), Some(S1));
        assert_eq!(
            o.ready.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            [S2]
        );
        let mut written: Vec<(&str, bool)> = o
            .segments
            .iter()
            .map(|s| (s.name.as_str(), s.written))
            .collect();
        written.sort_unstable();
        assert_eq!(written, [(S1, true), (S2, true), (S3, false)]);
        // Stopped with WAL not archived: pg_controldata is asked.
        std::fs::remove_file(data.join("postmaster.pid")).unwrap();
        let o = observe(data, 6, || {
            Some(format!(
                "Database cluster state: shut down\nLatest checkpoint's REDO WAL file: {S2}\n"
            ))
        });
        assert_eq!(o.clean_shutdown_redo.as_deref(), Some(S2));
    }

    #[test]
    fn clean_shutdown_is_read_from_pg_controldata() {
        let out = "Database cluster state:               shut down\nLatest checkpoint's REDO WAL file:    000000010000000000000005\n";
        assert_eq!(
            parse_clean_shutdown(out).as_deref(),
            Some("000000010000000000000005")
        );
        let crashed = out.replace("shut down", "in production");
        assert_eq!(parse_clean_shutdown(&crashed), None);
    }
}
