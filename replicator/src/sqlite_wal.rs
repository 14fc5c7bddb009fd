//! Pure SQLite WAL and database-header parsing: WAL header, frames, SQLite's cumulative
//! checksum, and grouping frames into committed transactions (no I/O).
//!
//! Format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page
//! size, checkpoint seq, salt-1, salt-2, checksum of the first 24 bytes), then frames of a
//! 24-byte header (page number, database size in pages after commit — non-zero marks a
//! commit frame —, salt-1, salt-2, cumulative checksum) and one page. All header integers are
//! big-endian; the checksum words are read big-endian for magic `0x377f0683` and
//! little-endian for `0x377f0682`. A frame is valid when its salts equal the header's and its
//! checksum equals the running checksum over the previous frames, its first 8 header bytes
//! and its page. Only frames up to the last valid commit frame are committed.

use std::collections::BTreeMap;
use thiserror::Error;

/// WAL magic with little-endian checksum words.
pub const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// WAL magic with big-endian checksum words.
pub const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
pub const WAL_VERSION: u32 = 3_007_000;
/// Length of the WAL header.
pub const WAL_HEADER_LEN: usize = 32;
/// Length of a WAL frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// Length of the database file header (in page 1).
pub const DB_HEADER_LEN: usize = 100;
/// The magic string that starts every SQLite database file.
pub const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why WAL or database header bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalError {
    /// Fewer bytes than the structure needs.
    #[error("{what}: {len} bytes, need {need}")]
    Short {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The WAL magic at byte 0 is neither 0x377f0682 nor 0x377f0683.
    #[error("WAL magic at byte 0 is {0:#010x}")]
    BadMagic(u32),
    /// The WAL version at byte 4 is not 3007000.
    #[error("WAL version at byte 4 is {0}")]
    BadVersion(u32),
    /// The page size (WAL byte 8 or database byte 16) is not a power of two in 512..=65536.
    #[error("page size {0} is not a power of two in 512..=65536")]
    BadPageSize(u32),
    /// The WAL header checksum at bytes 24..32 does not match its first 24 bytes.
    #[error("WAL header checksum at byte 24 is {stored:08x?}, computed {computed:08x?}")]
    BadHeaderChecksum {
        /// The stored checksum.
        stored: (u32, u32),
        /// The checksum computed over bytes 0..24.
        computed: (u32, u32),
    },
    /// The database file does not start with "SQLite format 3\0".
    #[error("database header at byte 0 lacks the SQLite magic")]
    BadDbMagic,
}

/// The parsed WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksum words are big-endian (magic 0x377f0683).
    pub big_endian: bool,
    /// Page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence: raised each time the WAL restarts.
    pub checkpoint_seq: u32,
    /// Salt-1: raised at every restart; frames must carry it.
    pub salt1: u32,
    /// Salt-2: random at every restart; frames must carry it.
    pub salt2: u32,
    /// Checksum of header bytes 0..24: the seed of the frame checksum chain.
    pub checksum: (u32, u32),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn valid_page_size(n: u32) -> bool {
    (512..=65536).contains(&n) && n.is_power_of_two()
}

impl WalHeader {
    /// Parses and checks the first 32 bytes of a WAL file (magic, version, page size,
    /// header checksum).
    ///
    /// # Errors
    /// A [`WalError`] naming the bad field.
    pub fn parse(b: &[u8]) -> Result<WalHeader, WalError> {
        if b.len() < WAL_HEADER_LEN {
            return Err(WalError::Short {
                what: "WAL header",
                len: b.len(),
                need: WAL_HEADER_LEN,
            });
        }
        let magic = be32(b, 0);
        let big_endian = match magic {
            WAL_MAGIC_LE => false,
            WAL_MAGIC_BE => true,
            m => return Err(WalError::BadMagic(m)),
        };
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(WalError::BadVersion(version));
        }
        let page_size = be32(b, 8);
        if !valid_page_size(page_size) {
            return Err(WalError::BadPageSize(page_size));
        }
        let stored = (be32(b, 24), be32(b, 28));
        let computed = wal_checksum(big_endian, (0, 0), &b[..24]);
        if stored != computed {
            return Err(WalError::BadHeaderChecksum { stored, computed });
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: stored,
        })
    }

    /// Encodes the header (tests and tools: builds WAL bytes).
    pub fn encode(&self) -> [u8; WAL_HEADER_LEN] {
        let mut b = [0u8; WAL_HEADER_LEN];
        let magic = if self.big_endian {
            WAL_MAGIC_BE
        } else {
            WAL_MAGIC_LE
        };
        b[0..4].copy_from_slice(&magic.to_be_bytes());
        b[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.checkpoint_seq.to_be_bytes());
        b[16..20].copy_from_slice(&self.salt1.to_be_bytes());
        b[20..24].copy_from_slice(&self.salt2.to_be_bytes());
        let c = wal_checksum(self.big_endian, (0, 0), &b[..24]);
        b[24..28].copy_from_slice(&c.0.to_be_bytes());
        b[28..32].copy_from_slice(&c.1.to_be_bytes());
        b
    }

    /// The frame size: header plus one page.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.page_size as usize
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes; a tail is ignored), continuing
/// from `init`: for each pair of 32-bit words `(x0, x1)`, `s0 += x0 + s1; s1 += x1 + s0`.
pub fn wal_checksum(big_endian: bool, init: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = init;
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_be_bytes([w[4], w[5], w[6], w[7]]),
            )
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// A read position in one WAL generation: just after the last commit frame taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCursor {
    /// Salt-1 of the generation.
    pub salt1: u32,
    /// Salt-2 of the generation.
    pub salt2: u32,
    /// Checkpoint seq of the generation.
    pub checkpoint_seq: u32,
    /// Byte offset in the WAL file of the next frame.
    pub offset: u64,
    /// Running checksum after the last frame taken.
    pub checksum: (u32, u32),
}

impl WalCursor {
    /// The start of the generation `header` opens (first frame at byte 32).
    pub fn start(header: &WalHeader) -> WalCursor {
        WalCursor {
            salt1: header.salt1,
            salt2: header.salt2,
            checkpoint_seq: header.checkpoint_seq,
            offset: WAL_HEADER_LEN as u64,
            checksum: header.checksum,
        }
    }

    /// Whether the cursor belongs to the generation `header` describes.
    pub fn same_generation(&self, header: &WalHeader) -> bool {
        self.salt1 == header.salt1 && self.salt2 == header.salt2
    }
}

/// What a reader at `cursor` must do with the WAL it now sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalStep {
    /// Same generation: read on from this cursor.
    Continue(WalCursor),
    /// The WAL restarted once (salt-1 one higher: SQLite raises it by one at each restart,
    /// in the shared WAL index, whereas the header's checkpoint seq is counted per connection
    /// and so is no use across processes): read the new generation from its first frame.
    Restarted(WalCursor),
    /// Frames may have been missed (the WAL restarted more than once, or is shorter than the
    /// read position): ship a full snapshot.
    Resnapshot,
}

/// Decides how to read a WAL with header `header` and length `wal_len` from `cursor` (`None`:
/// nothing read yet, start at the first frame).
pub fn next_step(cursor: Option<&WalCursor>, header: &WalHeader, wal_len: u64) -> WalStep {
    match cursor {
        None => WalStep::Continue(WalCursor::start(header)),
        Some(c) if c.same_generation(header) && c.offset <= wal_len => WalStep::Continue(*c),
        Some(c) if c.same_generation(header) => WalStep::Resnapshot,
        Some(c) if header.salt1 == c.salt1.wrapping_add(1) => {
            WalStep::Restarted(WalCursor::start(header))
        }
        Some(_) => WalStep::Resnapshot,
    }
}

/// One committed transaction found in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTxn {
    /// `(page number, byte offset of the page image in the WAL)`, one per page, the last
    /// version of each page in the transaction, sorted by page number, pages beyond
    /// `db_size` dropped.
    pub pages: Vec<(u32, u64)>,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// The cursor just after the commit frame.
    pub end: WalCursor,
}

/// Scans frames of the generation of `cursor` in `bytes`, which hold the WAL file from
/// `cursor.offset` on, and returns the committed transactions in order. Stops at the first
/// frame that is short, carries other salts or fails its checksum; frames after the last
/// commit frame are left for a later scan.
pub fn scan_frames(header: &WalHeader, cursor: &WalCursor, bytes: &[u8]) -> Vec<WalTxn> {
    let mut out = Vec::new();
    let flen = header.frame_len();
    let mut sum = cursor.checksum;
    let mut pos = 0usize;
    let mut pages: BTreeMap<u32, u64> = BTreeMap::new();
    while pos + flen <= bytes.len() {
        let f = &bytes[pos..pos + flen];
        let (pgno, commit) = (be32(f, 0), be32(f, 4));
        if be32(f, 8) != cursor.salt1 || be32(f, 12) != cursor.salt2 || pgno == 0 {
            break;
        }
        let s = wal_checksum(header.big_endian, sum, &f[..8]);
        let s = wal_checksum(header.big_endian, s, &f[FRAME_HEADER_LEN..]);
        if (be32(f, 16), be32(f, 20)) != s {
            break;
        }
        sum = s;
        let page_at = cursor.offset + (pos + FRAME_HEADER_LEN) as u64;
        pages.insert(pgno, page_at);
        pos += flen;
        if commit != 0 {
            let taken = std::mem::take(&mut pages);
            out.push(WalTxn {
                pages: taken.into_iter().filter(|(p, _)| *p <= commit).collect(),
                db_size: commit,
                end: WalCursor {
                    offset: cursor.offset + pos as u64,
                    checksum: sum,
                    ..*cursor
                },
            });
        }
    }
    out
}

/// How far the frames of the generation of `cursor` run in `bytes` (the WAL file from
/// `cursor.offset` on): the length of the prefix made of whole frames that carry the
/// generation's salts and continue its checksum chain, and the running checksum after them.
/// Lets a reader fetch a long WAL in pieces and stop at the first frame that is not part of
/// the generation (a WAL file is reused after a restart and keeps its largest size: its tail
/// holds old frames) instead of reading the whole file at every poll.
pub fn valid_frames(header: &WalHeader, cursor: &WalCursor, bytes: &[u8]) -> (usize, (u32, u32)) {
    let flen = header.frame_len();
    let mut sum = cursor.checksum;
    let mut pos = 0usize;
    while pos + flen <= bytes.len() {
        let f = &bytes[pos..pos + flen];
        if be32(f, 8) != cursor.salt1 || be32(f, 12) != cursor.salt2 || be32(f, 0) == 0 {
            break;
        }
        let s = wal_checksum(header.big_endian, sum, &f[..8]);
        let s = wal_checksum(header.big_endian, s, &f[FRAME_HEADER_LEN..]);
        if (be32(f, 16), be32(f, 20)) != s {
            break;
        }
        sum = s;
        pos += flen;
    }
    (pos, sum)
}

/// A whole WAL file parsed: its header and its committed transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalScan {
    /// The header.
    pub header: WalHeader,
    /// Committed transactions in order.
    pub txns: Vec<WalTxn>,
}

/// Parses a whole WAL file (the fuzz entry point): header, then every committed transaction.
///
/// # Errors
/// A [`WalError`] for a bad header; bad frames only end the scan.
pub fn parse_wal(bytes: &[u8]) -> Result<WalScan, WalError> {
    let header = WalHeader::parse(bytes)?;
    let cursor = WalCursor::start(&header);
    let txns = scan_frames(&header, &cursor, &bytes[WAL_HEADER_LEN..]);
    Ok(WalScan { header, txns })
}

/// The fields of a database file header that replication needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbHeader {
    /// Page size in bytes (byte 16; the value 1 means 65536).
    pub page_size: u32,
    /// File change counter (byte 24).
    pub change_counter: u32,
    /// Database size in pages (byte 28), when valid (non-zero and byte 92 equals byte 24).
    pub db_size: Option<u32>,
}

impl DbHeader {
    /// Parses the first 100 bytes of a database file.
    ///
    /// # Errors
    /// [`WalError::Short`], [`WalError::BadDbMagic`] or [`WalError::BadPageSize`].
    pub fn parse(b: &[u8]) -> Result<DbHeader, WalError> {
        if b.len() < DB_HEADER_LEN {
            return Err(WalError::Short {
                what: "database header",
                len: b.len(),
                need: DB_HEADER_LEN,
            });
        }
        if &b[..16] != DB_MAGIC {
            return Err(WalError::BadDbMagic);
        }
        let raw = u32::from(u16::from_be_bytes([b[16], b[17]]));
        let page_size = if raw == 1 { 65536 } else { raw };
        if !valid_page_size(page_size) {
            return Err(WalError::BadPageSize(page_size));
        }
        let change_counter = be32(b, 24);
        let size = be32(b, 28);
        let db_size = (size != 0 && be32(b, 92) == change_counter).then_some(size);
        Ok(DbHeader {
            page_size,
            change_counter,
            db_size,
        })
    }
}

/// Rewrites a database header (the first 100 bytes of page 1) so that a reader in rollback
/// journal mode opens it: format bytes 18/19 set to 1 (legacy, not WAL), the change counter
/// raised by one so cached readers notice the change, version-valid-for set to it, and the
/// in-header size set to `db_size`.
pub fn materialise_header(h: &mut [u8], db_size: u32) {
    if h.len() < DB_HEADER_LEN {
        return;
    }
    h[18] = 1;
    h[19] = 1;
    let counter = be32(h, 24).wrapping_add(1);
    h[24..28].copy_from_slice(&counter.to_be_bytes());
    h[28..32].copy_from_slice(&db_size.to_be_bytes());
    h[92..96].copy_from_slice(&counter.to_be_bytes());
}

/// Encodes one WAL frame continuing the checksum chain `sum`; returns the frame and the new
/// running checksum (tests and tools).
pub fn encode_frame(
    header: &WalHeader,
    sum: (u32, u32),
    pgno: u32,
    commit: u32,
    page: &[u8],
) -> (Vec<u8>, (u32, u32)) {
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + page.len());
    f.extend_from_slice(&pgno.to_be_bytes());
    f.extend_from_slice(&commit.to_be_bytes());
    f.extend_from_slice(&header.salt1.to_be_bytes());
    f.extend_from_slice(&header.salt2.to_be_bytes());
    let s = wal_checksum(header.big_endian, sum, &f[..8]);
    let s = wal_checksum(header.big_endian, s, page);
    f.extend_from_slice(&s.0.to_be_bytes());
    f.extend_from_slice(&s.1.to_be_bytes());
    f.extend_from_slice(page);
    (f, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hdr(big_endian: bool, page_size: u32) -> WalHeader {
        let mut h = WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: 7,
            salt1: 0x1111_2222,
            salt2: 0x3333_4444,
            checksum: (0, 0),
        };
        h.checksum = WalHeader::parse(&h.encode()).unwrap().checksum;
        h
    }

    /// Builds a WAL from frames `(pgno, commit, fill byte)`.
    fn build(h: &WalHeader, frames: &[(u32, u32, u8)]) -> Vec<u8> {
        let mut out = h.encode().to_vec();
        let mut sum = h.checksum;
        for &(p, c, fill) in frames {
            let page = vec![fill; h.page_size as usize];
            let (f, s) = encode_frame(h, sum, p, c, &page);
            sum = s;
            out.extend_from_slice(&f);
        }
        out
    }

    #[test]
    fn checksum_matches_sqlite_definition_on_known_words() {
        // Two words pairs, little-endian: (1,2) then (3,4).
        let data = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
        // s0=1, s1=2+1=3; s0=1+3+3=7, s1=3+4+7=14.
        assert_eq!(wal_checksum(false, (0, 0), &data), (7, 14));
        let be = [0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        assert_eq!(wal_checksum(true, (0, 0), &be), (7, 14));
    }

    #[test]
    fn header_round_trips_and_refuses_bad_fields() {
        for be in [false, true] {
            let h = hdr(be, 4096);
            let b = h.encode();
            assert_eq!(WalHeader::parse(&b).unwrap(), h);
            let mut bad = b;
            bad[3] ^= 0x10;
            assert!(matches!(WalHeader::parse(&bad), Err(WalError::BadMagic(_))));
            let mut bad = b;
            bad[13] ^= 1;
            assert!(matches!(
                WalHeader::parse(&bad),
                Err(WalError::BadHeaderChecksum { .. })
            ));
            assert!(matches!(
                WalHeader::parse(&b[..31]),
                Err(WalError::Short { need: 32, .. })
            ));
        }
        let mut h = hdr(false, 4096);
        h.page_size = 1000;
        assert_eq!(
            WalHeader::parse(&h.encode()),
            Err(WalError::BadPageSize(1000))
        );
    }

    #[test]
    fn frames_group_into_transactions_up_to_each_commit() {
        let h = hdr(false, 512);
        let wal = build(&h, &[(1, 0, 1), (2, 0, 2), (1, 3, 3), (3, 4, 4), (5, 0, 5)]);
        let scan = parse_wal(&wal).unwrap();
        assert_eq!(scan.txns.len(), 2, "the trailing uncommitted frame is left");
        let t0 = &scan.txns[0];
        assert_eq!(t0.db_size, 3);
        let pgnos: Vec<u32> = t0.pages.iter().map(|p| p.0).collect();
        assert_eq!(pgnos, [1, 2]);
        // Page 1's last version (fill 3, third frame) is taken.
        let off = t0.pages[0].1 as usize;
        assert_eq!(wal[off], 3);
        assert_eq!(t0.end.offset, 32 + 3 * (24 + 512));
        assert_eq!(scan.txns[1].end.offset, 32 + 4 * (24 + 512));
    }

    #[test]
    fn pages_beyond_commit_size_are_dropped() {
        let h = hdr(true, 512);
        let wal = build(&h, &[(4, 0, 1), (2, 2, 2)]);
        let t = &parse_wal(&wal).unwrap().txns[0];
        assert_eq!(t.pages.iter().map(|p| p.0).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn scan_stops_at_corrupt_frame_or_old_salt() {
        let h = hdr(false, 512);
        let mut wal = build(&h, &[(1, 1, 1), (2, 2, 2), (3, 3, 3)]);
        let second_page = 32 + (24 + 512) + 24 + 100;
        wal[second_page] ^= 0xff;
        assert_eq!(parse_wal(&wal).unwrap().txns.len(), 1);
        let mut wal = build(&h, &[(1, 1, 1), (2, 2, 2)]);
        wal[32 + (24 + 512) + 8] ^= 1; // salt-1 of the second frame
        assert_eq!(parse_wal(&wal).unwrap().txns.len(), 1);
    }

    #[test]
    fn valid_frames_stops_at_the_first_frame_of_an_old_generation() {
        let h = hdr(false, 512);
        let wal = build(&h, &[(1, 0, 1), (2, 2, 2), (3, 3, 3)]);
        let body = &wal[WAL_HEADER_LEN..];
        let flen = h.frame_len();
        let start = WalCursor::start(&h);
        // All three frames, then the same read over a trailing half frame.
        assert_eq!(valid_frames(&h, &start, body).0, 3 * flen);
        assert_eq!(valid_frames(&h, &start, &body[..3 * flen - 7]).0, 2 * flen);
        // A frame of another generation (new salts) ends the run.
        let mut h2 = h;
        h2.salt1 += 1;
        let old = build(&h2, &[(9, 9, 9)]);
        let mut mixed = body[..2 * flen].to_vec();
        mixed.extend_from_slice(&old[WAL_HEADER_LEN..]);
        let (n, sum) = valid_frames(&h, &start, &mixed);
        assert_eq!(n, 2 * flen);
        // The checksum after them continues the chain: the third frame validates from it.
        let mid = WalCursor {
            offset: start.offset + n as u64,
            checksum: sum,
            ..start
        };
        assert_eq!(valid_frames(&h, &mid, &body[2 * flen..]).0, flen);
    }

    #[test]
    fn scan_resumes_from_a_cursor() {
        let h = hdr(false, 512);
        let wal = build(&h, &[(1, 1, 1), (2, 2, 2), (1, 2, 9)]);
        let all = parse_wal(&wal).unwrap().txns;
        let c = all[0].end;
        let rest = scan_frames(&h, &c, &wal[c.offset as usize..]);
        assert_eq!(rest, all[1..].to_vec());
    }

    #[test]
    fn next_step_follows_one_restart_and_resnapshots_after_a_gap() {
        let h = hdr(false, 512);
        let c = WalCursor {
            offset: 32 + 536,
            ..WalCursor::start(&h)
        };
        assert_eq!(
            next_step(None, &h, 0),
            WalStep::Continue(WalCursor::start(&h))
        );
        assert_eq!(next_step(Some(&c), &h, 32 + 536), WalStep::Continue(c));
        assert_eq!(next_step(Some(&c), &h, 100), WalStep::Resnapshot);
        let mut once = h;
        once.salt1 += 1;
        once.salt2 = 99;
        assert_eq!(
            next_step(Some(&c), &once, 32),
            WalStep::Restarted(WalCursor::start(&once))
        );
        let mut twice = once;
        twice.salt1 += 1;
        assert_eq!(next_step(Some(&c), &twice, 4096), WalStep::Resnapshot);
    }

    #[test]
    fn db_header_reads_page_size_and_valid_size() {
        let mut b = vec![0u8; 100];
        b[..16].copy_from_slice(DB_MAGIC);
        b[16..18].copy_from_slice(&1u16.to_be_bytes());
        b[24..28].copy_from_slice(&5u32.to_be_bytes());
        b[28..32].copy_from_slice(&9u32.to_be_bytes());
        b[92..96].copy_from_slice(&5u32.to_be_bytes());
        let d = DbHeader::parse(&b).unwrap();
        assert_eq!((d.page_size, d.db_size), (65536, Some(9)));
        b[95] = 4;
        assert_eq!(DbHeader::parse(&b).unwrap().db_size, None);
        materialise_header(&mut b, 12);
        let d = DbHeader::parse(&b).unwrap();
        assert_eq!(
            (b[18], b[19], d.change_counter, d.db_size),
            (1, 1, 6, Some(12))
        );
        b[0] = b'X';
        assert_eq!(DbHeader::parse(&b), Err(WalError::BadDbMagic));
    }

    #[test]
    fn real_wal_from_sqlite_parses_with_valid_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        for i in 0..20 {
            c.execute(
                "INSERT INTO t(v) VALUES (?1)",
                [format!("row {i} {}", "x".repeat(300))],
            )
            .unwrap();
        }
        let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let wal = std::fs::read(dir.path().join("t.db-wal")).unwrap();
        // Golden bytes of the header: magic (native byte order on this machine), version,
        // page size, checkpoint seq 0.
        let magic = if cfg!(target_endian = "little") {
            [0x37, 0x7f, 0x06, 0x82]
        } else {
            [0x37, 0x7f, 0x06, 0x83]
        };
        assert_eq!(wal[..4], magic);
        assert_eq!(wal[4..16], [0, 0x2d, 0xe2, 0x18, 0, 0, 4, 0, 0, 0, 0, 0]);
        let scan = parse_wal(&wal).unwrap();
        assert_eq!(scan.header.page_size, 1024);
        assert_eq!(scan.txns.len(), 21, "CREATE TABLE + 20 inserts");
        let last = scan.txns.last().unwrap();
        assert_eq!(last.db_size, pages);
        assert_eq!(last.end.offset as usize, wal.len());
        // Page 1 of the first transaction is a database header in WAL format (18/19 = 2).
        let (p1, at) = scan.txns[0].pages[0];
        assert_eq!(p1, 1);
        let head = &wal[at as usize..at as usize + 100];
        assert_eq!(DbHeader::parse(head).unwrap().page_size, 1024);
        assert_eq!((head[18], head[19]), (2, 2));
        // One flipped bit in the last frame ends the scan just before it.
        let mut bad = wal.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(parse_wal(&bad).unwrap().txns.len(), 20);
    }

    proptest! {
        #[test]
        fn parse_wal_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse_wal(&bytes);
        }

        #[test]
        fn built_wal_parses_to_its_commits(
            be in any::<bool>(),
            frames in proptest::collection::vec((1u32..20, any::<bool>(), any::<u8>()), 0..40),
            cut in 0usize..40_000,
        ) {
            let h = hdr(be, 512);
            let spec: Vec<(u32, u32, u8)> = frames
                .iter()
                .map(|&(p, commit, fill)| (p, if commit { 20 } else { 0 }, fill))
                .collect();
            let wal = build(&h, &spec);
            let txns = parse_wal(&wal).unwrap().txns;
            prop_assert_eq!(txns.len(), spec.iter().filter(|f| f.1 != 0).count());
            // Every page image in a transaction is the last version before its commit.
            let mut start = 0;
            for t in &txns {
                let end_frame = (t.end.offset as usize - 32) / (24 + 512);
                let mut expect = BTreeMap::new();
                for &(p, _, fill) in &spec[start..end_frame] {
                    expect.insert(p, fill);
                }
                let got: BTreeMap<u32, u8> =
                    t.pages.iter().map(|&(p, o)| (p, wal[o as usize])).collect();
                prop_assert_eq!(got, expect);
                start = end_frame;
            }
            // A truncated WAL yields a prefix of the transactions.
            let cut = cut.min(wal.len());
            if cut >= 32 {
                let part = parse_wal(&wal[..cut]).unwrap().txns;
                prop_assert_eq!(&txns[..part.len()], &part[..]);
            }
        }
    }
}
