//! Streaming a PostgreSQL server's WAL through the group stream, the decisions (pure, no I/O):
//! cutting the WAL the server sends into per-segment changes ([`Splitter`]), which position
//! may be reported to the server as flushed ([`Acks`]: only WAL the replica site acknowledged
//! durable), and since when the oldest WAL not durable at the replica has existed
//! ([`Exposure`]: the RPO of the resource, a bound from above).
//!
//! The I/O (the replication connection, the pipeline) is in `node::pg_stream`.

use std::collections::VecDeque;
use tandem_core::frame::Change;
use tandem_core::ids::Seq;
use tandem_core::walfile;

/// The file name of the WAL segment holding `lsn` on timeline `tli`, segments of `seg_len`
/// bytes (PostgreSQL's `XLogFileName`).
pub fn segment_name(tli: u32, lsn: u64, seg_len: u64) -> String {
    let segno = lsn / seg_len;
    let per_log = 0x1_0000_0000u64 / seg_len;
    format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// The first byte of the segment holding `lsn`.
pub fn segment_start(lsn: u64, seg_len: u64) -> u64 {
    lsn - lsn % seg_len
}

/// The timeline to stream the segment starting at `start` (`seg_len` bytes) from: the
/// timeline holding its last byte ([`timeline_of`]). The segment in which a timeline switched
/// is read from the new timeline's file, which holds the old timeline's WAL up to the switch.
///
/// # Errors
/// A malformed history line.
pub fn timeline_for_segment(
    history: &str,
    start: u64,
    seg_len: u64,
    current: u32,
) -> Result<u32, String> {
    timeline_of(history, start + seg_len - 1, current)
}

/// The timeline that holds WAL position `lsn` on a server now on timeline `current`, from the
/// current timeline's history file (`parent_tli<TAB>switch_lsn<TAB>reason` per line, oldest
/// first): the first timeline that ended after `lsn`, else the current one. A line that does
/// not parse is an error naming it.
///
/// # Errors
/// A malformed history line.
pub fn timeline_of(history: &str, lsn: u64, current: u32) -> Result<u32, String> {
    for line in history.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let parsed = (|| {
            let tli: u32 = f.next()?.parse().ok()?;
            let (hi, lo) = f.next()?.split_once('/')?;
            let end = u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?;
            Some((tli, end))
        })();
        let (tli, end) = parsed.ok_or_else(|| format!("timeline history line {line:?}"))?;
        if lsn < end {
            return Ok(tli);
        }
    }
    Ok(current)
}

/// Cuts the WAL a server streams (contiguous bytes from a segment start) into `WalStream`
/// pieces, each within one segment, and a `WalStreamEnd` (size and blake3) after every
/// segment completed.
#[derive(Debug)]
pub struct Splitter {
    resource: String,
    tli: u32,
    seg_len: u64,
    /// The next byte expected.
    next: u64,
    /// The hash of the current segment from its first byte.
    hasher: blake3::Hasher,
}

impl Splitter {
    /// A splitter for `resource` on timeline `tli`, starting at `start` (a segment start).
    ///
    /// # Errors
    /// `start` is not the first byte of a segment, or `seg_len` is not a valid segment size.
    pub fn new(resource: &str, tli: u32, seg_len: u64, start: u64) -> Result<Splitter, String> {
        if !seg_len.is_power_of_two()
            || !(walfile::MIN_SEGMENT_LEN..=walfile::MAX_FILE_LEN).contains(&seg_len)
        {
            return Err(format!(
                "wal_segment_size {seg_len} is not a power of two from 1 MiB to 1 GiB"
            ));
        }
        if !start.is_multiple_of(seg_len) {
            return Err(format!(
                "streaming must start at a segment start, not at {start:#x}"
            ));
        }
        Ok(Splitter {
            resource: resource.to_owned(),
            tli,
            seg_len,
            next: start,
            hasher: blake3::Hasher::new(),
        })
    }

    /// The next byte expected.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The changes carrying `bytes` at WAL position `start`, captured at `captured_ms`.
    ///
    /// # Errors
    /// `start` is not the next byte expected (a gap or an overlap in what the server sent).
    pub fn push(
        &mut self,
        start: u64,
        mut bytes: &[u8],
        captured_ms: i64,
    ) -> Result<Vec<Change>, String> {
        if start != self.next {
            return Err(format!(
                "the server sent WAL at {start:#x} while {:#x} was expected next",
                self.next
            ));
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let off = self.next % self.seg_len;
            let n = ((self.seg_len - off) as usize).min(bytes.len());
            let (piece, rest) = bytes.split_at(n);
            let name = segment_name(self.tli, self.next, self.seg_len);
            out.push(
                walfile::stream_piece(&self.resource, &name, self.seg_len, off, piece, captured_ms)
                    .map_err(|r| format!("{name}: {r}"))?,
            );
            self.hasher.update(piece);
            self.next += n as u64;
            bytes = rest;
            if self.next.is_multiple_of(self.seg_len) {
                let hash = std::mem::take(&mut self.hasher).finalize();
                out.push(
                    walfile::stream_end(&self.resource, &name, self.seg_len, &hash, captured_ms)
                        .map_err(|r| format!("{name}: {r}"))?,
                );
            }
        }
        Ok(out)
    }
}

/// Which WAL position the server may be told is flushed: the end of the newest submission
/// whose last seq the replica acknowledged durable.
#[derive(Debug, Default)]
pub struct Acks {
    pending: VecDeque<(Seq, u64)>,
    flushed: u64,
}

impl Acks {
    /// Starts at `flushed` (the slot's position: durable at the replica before).
    pub fn new(flushed: u64) -> Acks {
        Acks {
            pending: VecDeque::new(),
            flushed,
        }
    }

    /// WAL up to `end` went into the stream with last seq `seq`.
    pub fn submitted(&mut self, seq: Seq, end: u64) {
        self.pending.push_back((seq, end));
    }

    /// The end of the WAL submitted to the stream (acknowledged or not).
    pub fn submitted_end(&self) -> u64 {
        self.pending.back().map_or(self.flushed, |p| p.1)
    }

    /// The replica acknowledged every seq up to `durable`: returns the new flushed position
    /// when it moved.
    pub fn acked(&mut self, durable: Seq) -> Option<u64> {
        let before = self.flushed;
        while let Some(&(seq, end)) = self.pending.front() {
            if seq > durable {
                break;
            }
            self.flushed = self.flushed.max(end);
            self.pending.pop_front();
        }
        (self.flushed > before).then_some(self.flushed)
    }

    /// The WAL position durable at the replica.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }
}

/// Since when WAL not yet durable at the replica has existed, from what the server said.
///
/// Every message of the server carries its WAL end (its flush position when it sent the
/// message) and its send time. The first WAL byte not durable at the replica (`flushed`) was
/// not written yet when a message with a WAL end at or before it was sent; so its commit came
/// after the newest such message — that message's send time is the bound (from above) of its
/// age. Status updates that ask for a reply every [`STATUS_INTERVAL_MS`] keep such messages
/// coming, so the bound is at most that much too old.
#[derive(Debug, Default, Clone)]
pub struct Exposure {
    /// (WAL end, send time ms) of recent messages, both increasing; the front is the newest
    /// one at or before the flushed position, when known.
    marks: VecDeque<(u64, i64)>,
    /// The newest WAL end the server reported.
    server_end: u64,
}

/// How often the client sends a status update asking for a reply.
pub const STATUS_INTERVAL_MS: u64 = 100;

/// At most this many marks are kept (older ones merge into the front).
const MAX_MARKS: usize = 4096;

impl Exposure {
    /// A message with WAL end `wal_end` sent at `send_ms`.
    pub fn observe(&mut self, wal_end: u64, send_ms: i64) {
        if wal_end < self.server_end {
            // A server that went back (a new timeline from an older point): start over.
            self.marks.clear();
        }
        self.server_end = wal_end;
        match self.marks.back_mut() {
            Some(last) if last.0 == wal_end => last.1 = last.1.max(send_ms),
            _ => self.marks.push_back((wal_end, send_ms)),
        }
        if self.marks.len() > MAX_MARKS {
            // Keep the bound safe: dropping the second-oldest keeps an older (larger) age.
            self.marks.remove(1);
        }
    }

    /// The newest WAL end the server reported.
    pub fn server_end(&self) -> u64 {
        self.server_end
    }

    /// With WAL durable at the replica up to `flushed`: `Ok(None)` when nothing the server
    /// reported is beyond it, `Ok(Some(ms))` the bound of the oldest WAL at risk, `Err(())`
    /// when no message is known to predate that WAL (the caller uses another bound).
    /// Marks older than needed are dropped.
    #[allow(clippy::result_unit_err)]
    pub fn at_risk_since(&mut self, flushed: u64) -> Result<Option<i64>, ()> {
        while self.marks.len() > 1 && self.marks[1].0 <= flushed {
            self.marks.pop_front();
        }
        if self.server_end <= flushed {
            return Ok(None);
        }
        match self.marks.front() {
            Some(&(end, ms)) if end <= flushed => Ok(Some(ms)),
            _ => Err(()),
        }
    }
}

impl Exposure {
    /// The bound for WAL at `pos` without forgetting anything: the send time of the newest
    /// message whose WAL end is at or before `pos`, if one is known.
    pub fn bound_for(&self, pos: u64) -> Option<i64> {
        // The marks' WAL ends increase: a binary search, not a walk over up to MAX_MARKS.
        let after = self.marks.partition_point(|(end, _)| *end <= pos);
        after.checked_sub(1).map(|i| self.marks[i].1)
    }
}

/// The state of one resource's stream, shared by its task and the heartbeat.
#[derive(Debug, Default, Clone)]
pub struct StreamStatus {
    /// A replication session is open.
    pub connected: bool,
    /// Why the last session ended or could not start.
    pub last_error: Option<String>,
    /// What the server said about its WAL end.
    pub exposure: Exposure,
    /// The WAL position durable at the replica (the flush position reported to the server).
    pub flushed: u64,
    /// The server's timeline being streamed.
    pub timeline: u32,
}

/// A stream's status shared between its task and the heartbeat.
pub type SharedStatus = std::sync::Arc<std::sync::Mutex<StreamStatus>>;

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The health a heartbeat reports for a postgres resource with `stream = true`: the archive
/// feed's `feed` as read from `pg_wal`, judged with the stream's status.
///
/// Streaming: healthy whatever the archiver does (the archive is the fallback), and the age
/// of the oldest WAL not durable at the replica is the stream's bound ([`Exposure`]), or the
/// archive feed's when the stream knows no message from before that WAL (just started).
/// Not streaming: unhealthy (the group shows degraded with the reason), and the age is the
/// older of the two bounds — WAL streamed but not archived is not counted as safe by the
/// archive feed, so this may count too much, never too little.
pub fn judge(
    mut feed: tandem_core::proto::ResourceHealth,
    st: &mut StreamStatus,
) -> tandem_core::proto::ResourceHealth {
    let flushed = st.flushed;
    let stream_bound = st.exposure.at_risk_since(flushed);
    let archive = format!("archive feed {}: {}", feed.state, feed.detail);
    if st.connected {
        feed.oldest_unarchived_ms = match stream_bound {
            Ok(None) => 0,
            Ok(Some(ms)) => ms,
            Err(()) => feed.oldest_unarchived_ms,
        };
        feed.detail = format!(
            "streaming timeline {}: WAL durable at the replica through {}, server at {}; {archive}",
            st.timeline,
            lsn(flushed),
            lsn(st.exposure.server_end().max(flushed))
        );
        feed.state = "streaming".into();
        feed.healthy = true;
        feed.durable_lsn = flushed;
        feed.durable_timeline = st.timeline;
        return feed;
    }
    if let Ok(Some(ms)) = stream_bound {
        feed.oldest_unarchived_ms = match feed.oldest_unarchived_ms {
            0 => ms,
            f => f.min(ms),
        };
    }
    let why = st.last_error.as_deref().unwrap_or("not connected yet");
    feed.detail = format!("not streaming ({why}); {archive}");
    feed.healthy = false;
    feed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tandem_core::frame::ChangeKind;

    const SEG: u64 = 16 << 20;

    #[test]
    fn segment_names_match_postgresql() {
        assert_eq!(
            segment_name(1, 0x0300_0000, SEG),
            "000000010000000000000003"
        );
        assert_eq!(
            segment_name(2, 0x1_0500_0010, SEG),
            "000000020000000100000005"
        );
        assert_eq!(
            segment_name(1, 0x1_0500_0010, 1 << 30),
            "000000010000000100000000"
        );
        // The pg_feed parser reads the same name back to the same start.
        let name = segment_name(3, 0x7_2345_6789, SEG);
        assert_eq!(
            crate::pg_feed::segment_start(&name, SEG),
            Some(segment_start(0x7_2345_6789, SEG))
        );
    }

    #[test]
    fn wal_across_a_segment_end_becomes_pieces_and_an_end_with_the_whole_hash() {
        let start = 3 * SEG;
        let mut s = Splitter::new("db", 1, SEG, start).unwrap();
        let seg: Vec<u8> = (0..SEG + 10).map(|i| (i * 7) as u8).collect();
        let mut out = s.push(start, &seg[..100], 5).unwrap();
        out.extend(s.push(start + 100, &seg[100..], 6).unwrap());
        let kinds: Vec<_> = out.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::WalStream,
                ChangeKind::WalStream,
                ChangeKind::WalStreamEnd,
                ChangeKind::WalStream
            ]
        );
        let end = walfile::parse(&out[2].data, true).unwrap();
        assert_eq!(end.name, "000000010000000000000003");
        assert_eq!(end.bytes, blake3::hash(&seg[..SEG as usize]).as_bytes());
        assert_eq!(out[2].offset, SEG);
        let last = walfile::parse_stream(&out[3].data, out[3].offset).unwrap();
        assert_eq!(
            (last.name, out[3].offset, last.bytes),
            ("000000010000000000000004", 0, &seg[SEG as usize..])
        );
        assert_eq!(s.next(), start + SEG + 10);
        // A gap is refused.
        assert!(s
            .push(start + SEG + 11, b"x", 7)
            .unwrap_err()
            .contains("expected next"));
        assert!(Splitter::new("db", 1, SEG, start + 1).is_err());
        assert!(Splitter::new("db", 1, 3 << 20, 0).is_err());
    }

    #[test]
    fn a_position_before_a_switch_point_is_on_the_parent_timeline() {
        let h = "1\t0/5000060\tno recovery target specified\n\n2\t0/9000000\tbefore 2000-01-01\n";
        assert_eq!(timeline_of(h, 0x300_0000, 3), Ok(1));
        assert_eq!(timeline_of(h, 0x500_0060, 3), Ok(2));
        assert_eq!(timeline_of(h, 0x900_0000, 3), Ok(3));
        assert_eq!(timeline_of("", 5, 1), Ok(1));
        assert!(timeline_of("x\ty", 5, 2).is_err());
        // The segment holding the switch point is read from the new timeline's file.
        assert_eq!(timeline_for_segment(h, 0x500_0000, 1 << 24, 3), Ok(2));
        assert_eq!(timeline_for_segment(h, 0x400_0000, 1 << 24, 3), Ok(1));
    }

    #[test]
    fn only_acknowledged_submissions_move_the_flushed_position() {
        let mut a = Acks::new(100);
        a.submitted(Seq(5), 200);
        a.submitted(Seq(9), 300);
        assert_eq!(a.acked(Seq(4)), None);
        assert_eq!(a.acked(Seq(6)), Some(200));
        assert_eq!(a.acked(Seq(8)), None);
        assert_eq!(a.acked(Seq(20)), Some(300));
        assert_eq!(a.flushed(), 300);
    }

    #[test]
    fn the_exposure_counts_from_the_last_message_that_predates_the_unflushed_wal() {
        let mut e = Exposure::default();
        assert_eq!(e.at_risk_since(0), Ok(None));
        e.observe(1000, 10); // idle keepalive: the server is at 1000
        e.observe(1000, 110);
        assert_eq!(e.at_risk_since(1000), Ok(None));
        e.observe(1500, 150); // a commit between 110 and 150
        assert_eq!(e.at_risk_since(1000), Ok(Some(110)));
        e.observe(1800, 190);
        assert_eq!(e.at_risk_since(1000), Ok(Some(110)));
        // The replica has 1500: what is beyond was written after the message at 150.
        assert_eq!(e.at_risk_since(1500), Ok(Some(150)));
        assert_eq!(e.at_risk_since(1800), Ok(None));
        // Nothing known from before the WAL beyond 50: no bound from this stream.
        let mut fresh = Exposure::default();
        fresh.observe(900, 5);
        assert_eq!(fresh.at_risk_since(50), Err(()));
    }

    fn feed(state: &str, oldest: i64) -> tandem_core::proto::ResourceHealth {
        tandem_core::proto::ResourceHealth {
            resource: "db".into(),
            state: state.into(),
            healthy: state == "archiving",
            oldest_unarchived_ms: oldest,
            detail: "d".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_stream_reports_its_own_bound_and_a_broken_one_degrades_and_keeps_the_older() {
        let mut st = StreamStatus {
            connected: true,
            flushed: 1000,
            timeline: 1,
            ..Default::default()
        };
        st.exposure.observe(1000, 50);
        st.exposure.observe(1200, 70);
        // The archive feed counts a whole unarchived segment from 10; the stream knows better.
        let h = judge(feed("archiving", 10), &mut st);
        assert_eq!(
            (h.state.as_str(), h.healthy, h.oldest_unarchived_ms),
            ("streaming", true, 50)
        );
        assert!(
            h.detail.contains("through 0/3E8, server at 0/4B0"),
            "{}",
            h.detail
        );
        st.flushed = 1200;
        assert_eq!(judge(feed("stalled", 10), &mut st).oldest_unarchived_ms, 0);
        // Just connected, nothing known from before the unflushed WAL: the archive's bound.
        let mut fresh = StreamStatus {
            connected: true,
            ..Default::default()
        };
        fresh.exposure.observe(900, 60);
        assert_eq!(
            judge(feed("archiving", 10), &mut fresh).oldest_unarchived_ms,
            10
        );
        // Down: unhealthy, named, and the older bound of the two.
        st.connected = false;
        st.exposure.observe(1500, 90); // written after 70, not durable at the replica
        st.last_error = Some("connect: refused".into());
        let h = judge(feed("archiving", 80), &mut st);
        assert!(
            !h.healthy && h.detail.contains("not streaming (connect: refused)"),
            "{h:?}"
        );
        assert_eq!(h.oldest_unarchived_ms, 70);
        assert_eq!(
            judge(feed("archiving", 0), &mut st).oldest_unarchived_ms,
            70
        );
        assert_eq!(
            judge(feed("archiving", 60), &mut st).oldest_unarchived_ms,
            60
        );
    }

    proptest! {
        #[test]
        fn bound_for_is_the_newest_mark_at_or_before_the_position(
            steps in proptest::collection::vec((0u64..64, 0i64..5), 1..200),
            pos in 0u64..4000,
        ) {
            let mut e = Exposure::default();
            let (mut end, mut ms) = (0u64, 0i64);
            let mut seen = Vec::new();
            for (de, dm) in steps {
                end += de;
                ms += dm;
                e.observe(end, ms);
                seen.push((end, ms));
            }
            // The reference: the newest observation whose WAL end is at or before pos (equal
            // ends keep the latest send time, as observe does).
            let want = seen.iter().rev().find(|(end, _)| *end <= pos).map(|(_, ms)| *ms);
            prop_assert_eq!(e.bound_for(pos), want);
        }
    }

    proptest! {
        /// The bound is never later than the true first write of the oldest WAL at risk.
        #[test]
        fn the_bound_is_never_younger_than_the_truth(
            steps in proptest::collection::vec((0u64..50, 1i64..20, any::<bool>()), 1..60)
        ) {
            // A server writes `w` bytes at increasing times; each step may send a message.
            let (mut end, mut now) = (0u64, 0i64);
            let mut writes: Vec<(u64, i64)> = Vec::new(); // (end after write, time of write)
            let mut e = Exposure::default();
            e.observe(0, 0);
            let mut flushed = 0u64;
            for (w, dt, send) in steps {
                now += dt;
                if w > 0 {
                    end += w;
                    writes.push((end, now));
                }
                if send {
                    now += 1;
                    e.observe(end, now);
                }
                // The replica acknowledges some prefix of what was sent.
                flushed = flushed.max(e.server_end() / 2);
                if let Ok(Some(bound)) = e.at_risk_since(flushed) {
                    let truth = writes.iter().find(|(e2, _)| *e2 > flushed).map(|w| w.1);
                    if let Some(t) = truth {
                        prop_assert!(bound <= t, "bound {bound} after the write at {t}");
                    }
                }
            }
        }
    }
}
