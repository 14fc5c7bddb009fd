//! The frame codec: the unit on the wire and in the journal, a batch of changes, zstd-compressed
//! and blake3-checksummed.
//!
//! Layout (all integers little-endian), [`HEADER_LEN`] bytes of header then the payload:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TNDF` |
//! | 4 | 2 | version (1) |
//! | 6 | 2 | flags (bit 0: payload is zstd-compressed, as one or more concatenated zstd frames; otherwise stored raw) |
//! | 8 | 8 | group id |
//! | 16 | 8 | epoch |
//! | 24 | 8 | first seq |
//! | 32 | 4 | change count |
//! | 36 | 4 | raw (decompressed) payload length |
//! | 40 | 4 | payload length on the wire (compressed length) |
//! | 44 | 32 | blake3 of the raw payload |
//! | 76 | 8 | header check: first 8 bytes of blake3 of bytes 0..76 |
//!
//! A compressed payload may be several zstd frames one after the other (zstd decompresses
//! them as one): the [`Encoder`] compresses each data of [`DIRECT_MIN_LEN`] bytes or more
//! as a zstd frame of its own, straight from its change, and the [`Decoder`] decompresses such
//! a frame straight into the change's data buffer; neither copies the data through a staging
//! buffer. Every build of this version reads either layout.
//!
//! The header check lets a receiver trust the epoch and seq fields (and refuse a frame) before
//! it spends anything on decompression. The raw payload is a sequence of changes:
//! `kind u8, resource_len u8, resource, offset u64, length u64, captured_ms i64, data_len u32,
//! data`. Change `i` of a frame has seq `first_seq + i`.
//!
//! Decoding checks, in order: length of the header, magic, version, header check, hard limits
//! on every length (before allocating), payload length against the bytes present, then (after
//! the caller's epoch and seq checks, see [`FrameHeader::parse`]) decompression to exactly the
//! declared raw length, blake3, and the structure of every change. Every failure is a distinct
//! [`FrameError`] variant.

use crate::ids::{Epoch, GroupId, Seq};
use thiserror::Error;

/// Frame magic: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"TNDF";
/// The frame format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 84;
/// Largest raw (decompressed) payload a frame may carry: 64 MiB.
pub const MAX_RAW_LEN: u32 = 64 << 20;
/// Largest number of changes in one frame.
pub const MAX_CHANGES: u32 = 1 << 20;
/// Largest resource name in a change, in bytes.
pub const MAX_RESOURCE_LEN: usize = 255;
/// Fixed bytes per change in the raw payload, besides the resource name and data.
pub const CHANGE_OVERHEAD: usize = 1 + 1 + 8 + 8 + 8 + 4;
/// Flag bit: the payload is zstd-compressed.
pub const FLAG_ZSTD: u16 = 1;
/// Default zstd level for frames (STACK-NOTES: level 1 is the speed/ratio sweet spot here).
pub const DEFAULT_LEVEL: i32 = 1;

/// A compressed payload is stored raw unless it saves at least 1/32 of the bytes.
const STORE_RAW_THRESHOLD_DIV: usize = 32;
/// Payloads shorter than this are stored raw: zstd's own framing would eat the gain.
const MIN_COMPRESS_LEN: usize = 128;

/// What one captured change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum ChangeKind {
    /// `data` written at byte `offset` of a volume.
    Write = 1,
    /// `length` bytes at `offset` discarded (read back as zeroes).
    Trim = 2,
    /// A flush: everything before it must be durable before it is acknowledged.
    Barrier = 3,
    /// A database page: `data` is the page image, `offset` the page number.
    DbPage = 4,
    /// A database commit: the pages before it form one transaction; `offset` is the database
    /// size in pages after the commit.
    DbCommit = 5,
    /// A piece of a PostgreSQL archive file (WAL segment, timeline history, backup label):
    /// `offset` is the byte offset of the piece in the file, `data` is the file name
    /// (see the `walfile` module, which builds these changes) followed by the bytes.
    WalChunk = 6,
    /// A PostgreSQL archive file is complete: `offset` is its size, `data` its file name and
    /// the blake3 of its whole content (see the `walfile` module, which builds these changes).
    /// A barrier.
    WalEnd = 7,
    /// A group-wide checkpoint marker asked for by an operator: `data` is its tag (UTF-8, at
    /// most [`MAX_TAG_LEN`] bytes), `resource` is empty. Everything before it in the stream is
    /// in the checkpoint: a consistent cut of the whole group.
    Checkpoint = 8,
    /// A piece of the WAL segment PostgreSQL is writing, streamed as it is written (see the
    /// `walfile` module): `offset` is the byte offset of the piece in the segment, `data` the
    /// segment's file name, the segment size and the bytes. The replica writes it into the
    /// segment's `.partial` file; a [`ChangeKind::WalEnd`] publishes the complete segment.
    WalStream = 9,
    /// The streamed WAL segment is complete: `offset` is its size, `data` its file name and
    /// the blake3 of its whole content (as [`ChangeKind::WalEnd`]); the replica checks its
    /// `.partial` file against both and publishes it under its own name. A barrier.
    WalStreamEnd = 10,
}

/// Longest checkpoint tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;

impl ChangeKind {
    /// Parses the kind byte of a change.
    pub fn from_u8(b: u8) -> Option<ChangeKind> {
        Some(match b {
            1 => ChangeKind::Write,
            2 => ChangeKind::Trim,
            3 => ChangeKind::Barrier,
            4 => ChangeKind::DbPage,
            5 => ChangeKind::DbCommit,
            6 => ChangeKind::WalChunk,
            7 => ChangeKind::WalEnd,
            8 => ChangeKind::Checkpoint,
            9 => ChangeKind::WalStream,
            10 => ChangeKind::WalStreamEnd,
            _ => return None,
        })
    }

    /// True for the kinds whose `data` holds `length` bytes.
    pub fn carries_data(self) -> bool {
        matches!(
            self,
            ChangeKind::Write
                | ChangeKind::DbPage
                | ChangeKind::WalChunk
                | ChangeKind::WalEnd
                | ChangeKind::Checkpoint
                | ChangeKind::WalStream
                | ChangeKind::WalStreamEnd
        )
    }

    /// True for barriers (flush, commit): durable on the replica before acknowledged.
    pub fn is_barrier(self) -> bool {
        matches!(
            self,
            ChangeKind::Barrier
                | ChangeKind::DbCommit
                | ChangeKind::WalEnd
                | ChangeKind::WalStreamEnd
                | ChangeKind::Checkpoint
        )
    }
}

/// One captured change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Name of the resource within its group.
    pub resource: String,
    /// What the change is.
    pub kind: ChangeKind,
    /// Byte offset (volumes) or page number (databases); meaning depends on `kind`.
    pub offset: u64,
    /// Length of the range the change covers; equals `data.len()` for writes and pages.
    pub length: u64,
    /// Capture time, unix milliseconds.
    pub captured_ms: i64,
    /// The bytes written (empty for trims and barriers).
    pub data: Vec<u8>,
}

impl Change {
    /// A volume write of `data` at `offset`.
    pub fn write(resource: &str, offset: u64, data: Vec<u8>, captured_ms: i64) -> Change {
        Change {
            resource: resource.to_owned(),
            kind: ChangeKind::Write,
            offset,
            length: data.len() as u64,
            captured_ms,
            data,
        }
    }

    /// A trim of `length` bytes at `offset`.
    pub fn trim(resource: &str, offset: u64, length: u64, captured_ms: i64) -> Change {
        Change {
            resource: resource.to_owned(),
            kind: ChangeKind::Trim,
            offset,
            length,
            captured_ms,
            data: Vec::new(),
        }
    }

    /// A barrier (flush) on a resource.
    pub fn barrier(resource: &str, captured_ms: i64) -> Change {
        Change {
            resource: resource.to_owned(),
            kind: ChangeKind::Barrier,
            offset: 0,
            length: 0,
            captured_ms,
            data: Vec::new(),
        }
    }

    /// A group-wide checkpoint marker tagged `tag` (see [`ChangeKind::Checkpoint`]).
    pub fn checkpoint(tag: &str, captured_ms: i64) -> Change {
        Change {
            resource: String::new(),
            kind: ChangeKind::Checkpoint,
            offset: 0,
            length: tag.len() as u64,
            captured_ms,
            data: tag.as_bytes().to_vec(),
        }
    }

    /// Bytes this change takes in a raw payload.
    pub fn encoded_len(&self) -> usize {
        CHANGE_OVERHEAD + self.resource.len() + self.data.len()
    }
}

/// Where a frame sits: its group, epoch and first seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The group whose stream this frame belongs to.
    pub group: GroupId,
    /// The epoch the frame was captured in (the fencing token).
    pub epoch: Epoch,
    /// Seq of the first change in the frame.
    pub first_seq: Seq,
}

/// The parsed, integrity-checked fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Format version.
    pub version: u16,
    /// Flag bits ([`FLAG_ZSTD`]).
    pub flags: u16,
    /// Group, epoch and first seq.
    pub meta: FrameMeta,
    /// Number of changes.
    pub change_count: u32,
    /// Decompressed payload length.
    pub raw_len: u32,
    /// Payload length on the wire.
    pub payload_len: u32,
    /// blake3 of the raw payload.
    pub payload_hash: [u8; 32],
}

impl FrameHeader {
    /// Seq of the last change in the frame (`first_seq` when the frame is empty).
    pub fn last_seq(&self) -> Seq {
        Seq(self
            .meta
            .first_seq
            .0
            .saturating_add(u64::from(self.change_count).saturating_sub(1)))
    }

    /// Total encoded length of the frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// Parses and checks the header at the start of `bytes`, without touching the payload.
    ///
    /// Checks, in order: enough bytes for a header, magic, version, header check, hard limits
    /// on the counts and lengths, and that the payload bytes are all present (and no more).
    ///
    /// # Errors
    /// A [`FrameError`] naming the first check that failed.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Truncated {
                needed: HEADER_LEN,
                have: bytes.len(),
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let check = header_check(&bytes[..76]);
        if bytes[76..84] != check {
            return Err(FrameError::HeaderChecksum);
        }
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags & !FLAG_ZSTD != 0 {
            return Err(FrameError::UnknownFlags { flags });
        }
        let group = GroupId(le_u64(bytes, 8));
        let epoch = Epoch(le_u64(bytes, 16));
        let first_seq = Seq(le_u64(bytes, 24));
        let change_count = le_u32(bytes, 32);
        let raw_len = le_u32(bytes, 36);
        let payload_len = le_u32(bytes, 40);
        if change_count > MAX_CHANGES {
            return Err(FrameError::LimitExceeded {
                field: "change_count",
                value: u64::from(change_count),
                limit: u64::from(MAX_CHANGES),
            });
        }
        if raw_len > MAX_RAW_LEN {
            return Err(FrameError::LimitExceeded {
                field: "raw_len",
                value: u64::from(raw_len),
                limit: u64::from(MAX_RAW_LEN),
            });
        }
        let max_payload = if flags & FLAG_ZSTD != 0 {
            zstd::zstd_safe::compress_bound(raw_len as usize) as u64
        } else {
            u64::from(raw_len)
        };
        if u64::from(payload_len) > max_payload {
            return Err(FrameError::LimitExceeded {
                field: "payload_len",
                value: u64::from(payload_len),
                limit: max_payload,
            });
        }
        if flags & FLAG_ZSTD == 0 && payload_len != raw_len {
            return Err(FrameError::LengthMismatch {
                field: "payload_len",
                expected: u64::from(raw_len),
                found: u64::from(payload_len),
            });
        }
        if (raw_len as u64) < u64::from(change_count) * CHANGE_OVERHEAD as u64 {
            return Err(FrameError::LengthMismatch {
                field: "raw_len",
                expected: u64::from(change_count) * CHANGE_OVERHEAD as u64,
                found: u64::from(raw_len),
            });
        }
        let mut payload_hash = [0u8; 32];
        payload_hash.copy_from_slice(&bytes[44..76]);
        let header = FrameHeader {
            version,
            flags,
            meta: FrameMeta {
                group,
                epoch,
                first_seq,
            },
            change_count,
            raw_len,
            payload_len,
            payload_hash,
        };
        let total = header.frame_len();
        if bytes.len() < total {
            return Err(FrameError::Truncated {
                needed: total,
                have: bytes.len(),
            });
        }
        if bytes.len() > total {
            return Err(FrameError::TrailingBytes {
                expected: total,
                found: bytes.len(),
            });
        }
        Ok(header)
    }
}

/// A decoded frame: its header and its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The checked header.
    pub header: FrameHeader,
    /// The changes, in capture order; change `i` has seq `first_seq + i`.
    pub changes: Vec<Change>,
}

/// Why a frame was refused. Each variant names the check that failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the declared payload needs.
    #[error("frame truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The first four bytes are not `TNDF`.
    #[error("bad frame magic {found:02x?} at byte 0 (expected \"TNDF\")")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A frame format this build does not read.
    #[error("unsupported frame version {found} at byte 4 (this build reads {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// The header check (bytes 76..84) does not match the header.
    #[error("frame header checksum mismatch (bytes 0..76 were altered)")]
    HeaderChecksum,
    /// Flag bits this build does not know.
    #[error("unknown frame flags {flags:#06x} at byte 6")]
    UnknownFlags {
        /// The flags found.
        flags: u16,
    },
    /// A count or length over its hard limit: refused before allocating.
    #[error("frame field {field} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// The header field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A length that disagrees with another.
    #[error("frame field {field}: expected {expected}, found {found}")]
    LengthMismatch {
        /// The field that disagrees.
        field: &'static str,
        /// What it should be.
        expected: u64,
        /// What it is.
        found: u64,
    },
    /// More bytes than header and payload.
    #[error("frame has trailing bytes: expected {expected} bytes, found {found}")]
    TrailingBytes {
        /// The frame's length.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// zstd refused the payload.
    #[error("frame payload does not decompress: {0}")]
    Decompress(String),
    /// The payload decompressed to a different length than declared.
    #[error("frame payload decompressed to {found} bytes, header says {expected}")]
    DecompressedLength {
        /// Declared raw length.
        expected: u32,
        /// Actual.
        found: usize,
    },
    /// blake3 of the raw payload does not match the header.
    #[error("frame payload blake3 mismatch")]
    PayloadChecksum,
    /// A change inside the payload is malformed.
    #[error("malformed change #{index} at payload byte {offset}: {reason}")]
    MalformedChange {
        /// Index of the change in the frame.
        index: u32,
        /// Byte offset in the raw payload.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The encoder was given something it must not write.
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl FrameError {
    /// Whether resending the same frame may succeed (corruption in flight) as opposed to a
    /// frame that is wrong at its source. Every decode failure is worth one resend from the
    /// journal; encode errors are not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, FrameError::Encode(_))
    }
}

/// Encodes batches of changes into frames, reusing one zstd context and one buffer.
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    /// The zstd level the context is set to; 0: frames are stored raw.
    level: i32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder compressing at `level` (see [`DEFAULT_LEVEL`]).
    ///
    /// # Errors
    /// [`FrameError::Encode`] if zstd cannot create its context.
    /// Level 0 stores every frame raw (zstd's own level 0 would mean its default level).
    pub fn new(level: i32) -> Result<Encoder, FrameError> {
        let compressor = zstd::bulk::Compressor::new(level.max(1))
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        Ok(Encoder {
            compressor,
            raw: Vec::new(),
            level: level.max(0),
        })
    }

    /// The level frames are encoded at (0: stored raw).
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Encodes the next frames at `level` (0: stored raw); the zstd context is kept. A frame
    /// of any level decodes the same way.
    ///
    /// # Errors
    /// [`FrameError::Encode`] if zstd refuses the level.
    pub fn set_level(&mut self, level: i32) -> Result<(), FrameError> {
        let level = level.max(0);
        if level == self.level {
            return Ok(());
        }
        if level > 0 {
            self.compressor
                .set_compression_level(level)
                .map_err(|e| FrameError::Encode(format!("zstd level {level}: {e}")))?;
        }
        self.level = level;
        Ok(())
    }

    /// Encodes `changes` as one frame at `meta`.
    ///
    /// The raw payload is never assembled in one buffer when it holds large data: the small
    /// parts (change headers, small data) are gathered and compressed together, and each data
    /// of at least [`DIRECT_MIN_LEN`] bytes is compressed straight from its change as a zstd
    /// frame of its own, into the output after the header; blake3 is fed the same pieces in
    /// order. The payload is then a concatenation of zstd frames, which every decoder of this
    /// format reads as one (zstd decompresses concatenated frames into one output).
    ///
    /// # Errors
    /// As [`check_batch`], or [`FrameError::Encode`] if zstd fails.
    pub fn encode(&mut self, meta: FrameMeta, changes: &[Change]) -> Result<Vec<u8>, FrameError> {
        self.encode_into(meta, changes, Vec::new())
    }

    /// As [`Encoder::encode`], into `out` (cleared first; its capacity is reused, so a caller
    /// that hands back the buffers of frames it is done with allocates none per frame).
    ///
    /// # Errors
    /// As [`Encoder::encode`].
    pub fn encode_into(
        &mut self,
        meta: FrameMeta,
        changes: &[Change],
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, FrameError> {
        let raw_len = check_batch(changes)?;
        let mut hash = blake3::Hasher::new();
        // Room for every piece's bound (one zstd frame per large data, one per run of small
        // parts between them): the output never moves while zstd writes it.
        let direct = changes
            .iter()
            .filter(|c| c.data.len() >= DIRECT_MIN_LEN)
            .count();
        let room = zstd::zstd_safe::compress_bound(raw_len) + (2 * direct + 1) * FRAME_SLACK;
        out.clear();
        out.reserve(HEADER_LEN + room.max(raw_len));
        out.resize(HEADER_LEN, 0);
        let attempt = raw_len >= MIN_COMPRESS_LEN && self.level > 0;
        let compressed = attempt && self.compress_pieces(changes, &mut out, &mut hash, raw_len)?;
        if !compressed {
            // Stored raw: the pieces copied after the header (hashed here unless the
            // compression attempt hashed them already).
            out.truncate(HEADER_LEN);
            for c in changes {
                push_head(c, &mut out);
                out.extend_from_slice(&c.data);
            }
            if !attempt {
                hash.update(&out[HEADER_LEN..]);
            }
        }
        let payload_len = (out.len() - HEADER_LEN) as u32;
        let flags = if compressed { FLAG_ZSTD } else { 0 };
        write_header(
            &mut out[..HEADER_LEN],
            flags,
            meta,
            changes.len() as u32,
            raw_len as u32,
            payload_len,
            hash.finalize().as_bytes(),
        );
        Ok(out)
    }

    /// Compresses the payload of `changes` piece by piece after the header in `out` (see
    /// [`Encoder::encode`]), hashing every piece; returns whether it paid (saved at least
    /// 1/32 of `raw_len`). `out` is left with the header and whatever was written.
    fn compress_pieces(
        &mut self,
        changes: &[Change],
        out: &mut Vec<u8>,
        hash: &mut blake3::Hasher,
        raw_len: usize,
    ) -> Result<bool, FrameError> {
        self.raw.clear();
        for c in changes {
            let at = self.raw.len();
            push_head(c, &mut self.raw);
            hash.update(&self.raw[at..]);
            hash.update(&c.data);
            if c.data.len() >= DIRECT_MIN_LEN {
                let small = std::mem::take(&mut self.raw);
                self.compress_into(&small, out)?;
                self.raw = small;
                self.raw.clear();
                self.compress_into(&c.data, out)?;
            } else {
                self.raw.extend_from_slice(&c.data);
            }
        }
        let small = std::mem::take(&mut self.raw);
        self.compress_into(&small, out)?;
        self.raw = small;
        let n = out.len() - HEADER_LEN;
        Ok(n + raw_len / STORE_RAW_THRESHOLD_DIV < raw_len)
    }

    /// Appends `piece` to `out` as one zstd frame (nothing for an empty piece), written into
    /// the spare capacity (not zeroed first).
    fn compress_into(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if piece.is_empty() {
            return Ok(());
        }
        out.reserve(zstd::zstd_safe::compress_bound(piece.len()));
        let at = out.len() as u64;
        let mut tail = std::io::Cursor::new(out);
        tail.set_position(at);
        self.compressor
            .compress_to_buffer(piece, &mut tail)
            .map_err(|e| FrameError::Encode(format!("zstd: {e}")))?;
        Ok(())
    }
}

/// Data at least this long is compressed as a zstd frame of its own, straight from its change
/// (and decompressed straight into its own buffer): never copied into a staging buffer.
pub const DIRECT_MIN_LEN: usize = 64 << 10;

/// Room per zstd frame beyond `compress_bound` of its part (frame header and last block).
const FRAME_SLACK: usize = 64;

/// Appends the fixed part of a change in the raw payload to `out`: kind, name length, name,
/// offset, length, capture time, data length (everything but the data).
fn push_head(c: &Change, out: &mut Vec<u8>) {
    out.push(c.kind as u8);
    out.push(c.resource.len() as u8);
    out.extend_from_slice(c.resource.as_bytes());
    out.extend_from_slice(&c.offset.to_le_bytes());
    out.extend_from_slice(&c.length.to_le_bytes());
    out.extend_from_slice(&c.captured_ms.to_le_bytes());
    out.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
}

/// Checks that `changes` can be encoded as one frame and returns their raw payload length,
/// so that a caller can refuse a bad batch before giving it seqs (the pipeline encodes
/// frames in parallel and cannot take seqs back once later frames have them).
///
/// # Errors
/// [`FrameError::Encode`] if the batch breaks a hard limit (too many changes, a raw payload
/// over [`MAX_RAW_LEN`], a resource name over [`MAX_RESOURCE_LEN`], a data length that
/// disagrees with its kind).
pub fn check_batch(changes: &[Change]) -> Result<usize, FrameError> {
    if changes.len() > MAX_CHANGES as usize {
        return Err(FrameError::Encode(format!(
            "{} changes exceed the limit {MAX_CHANGES}",
            changes.len()
        )));
    }
    let raw_len: usize = changes.iter().map(Change::encoded_len).sum();
    if raw_len > MAX_RAW_LEN as usize {
        return Err(FrameError::Encode(format!(
            "raw payload of {raw_len} bytes exceeds the limit {MAX_RAW_LEN}"
        )));
    }
    for (i, c) in changes.iter().enumerate() {
        if c.resource.len() > MAX_RESOURCE_LEN {
            return Err(FrameError::Encode(format!(
                "change #{i}: resource name of {} bytes exceeds {MAX_RESOURCE_LEN}",
                c.resource.len()
            )));
        }
        if c.kind.carries_data() && c.length != c.data.len() as u64 {
            return Err(FrameError::Encode(format!(
                "change #{i}: length {} but {} data bytes",
                c.length,
                c.data.len()
            )));
        }
        if !c.kind.carries_data() && !c.data.is_empty() {
            return Err(FrameError::Encode(format!(
                "change #{i}: a {:?} carries no data",
                c.kind
            )));
        }
    }
    Ok(raw_len)
}

/// Decodes frames, reusing one zstd context and one buffer.
pub struct Decoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    raw: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A new decoder.
    ///
    /// # Errors
    /// [`FrameError::Decompress`] if zstd cannot create its context.
    pub fn new() -> Result<Decoder, FrameError> {
        let decompressor =
            zstd::bulk::Decompressor::new().map_err(|e| FrameError::Decompress(e.to_string()))?;
        Ok(Decoder {
            decompressor,
            raw: Vec::new(),
        })
    }

    /// Parses, checks and decodes a whole frame.
    ///
    /// # Errors
    /// The first failed check, as a [`FrameError`].
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Frame, FrameError> {
        let header = FrameHeader::parse(bytes)?;
        self.decode_payload(header, bytes)
    }

    /// Decodes the payload of a frame whose header was already parsed from `bytes` (so a
    /// receiver can check the epoch and seq in between without decompressing).
    ///
    /// # Errors
    /// Decompression, length, blake3 or change-structure failures.
    pub fn decode_payload(
        &mut self,
        header: FrameHeader,
        bytes: &[u8],
    ) -> Result<Frame, FrameError> {
        let payload = bytes
            .get(HEADER_LEN..header.frame_len())
            .ok_or(FrameError::Truncated {
                needed: header.frame_len(),
                have: bytes.len(),
            })?;
        if header.flags & FLAG_ZSTD != 0 {
            // Piece by piece (see `frame_pieces`): a change's large data is decompressed
            // straight into its own buffer, never copied out of the payload.
            let parts = pieces::decompress(
                &mut self.decompressor,
                payload,
                header.raw_len as usize,
                &mut self.raw,
            )?;
            if pieces::hash(&self.raw, &parts) != header.payload_hash {
                return Err(FrameError::PayloadChecksum);
            }
            let changes = pieces::parse(&self.raw, parts, header.change_count)?;
            return Ok(Frame { header, changes });
        }
        if hash_payload(payload) != header.payload_hash {
            return Err(FrameError::PayloadChecksum);
        }
        let changes = parse_changes(payload, header.change_count)?;
        Ok(Frame { header, changes })
    }
}

fn hash_payload(raw: &[u8]) -> [u8; 32] {
    if raw.len() >= 1 << 20 {
        let mut h = blake3::Hasher::new();
        h.update(raw);
        *h.finalize().as_bytes()
    } else {
        *blake3::hash(raw).as_bytes()
    }
}

fn header_check(prefix: &[u8]) -> [u8; 8] {
    let h = blake3::hash(prefix);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

fn write_header(
    out: &mut [u8],
    flags: u16,
    meta: FrameMeta,
    count: u32,
    raw_len: u32,
    payload_len: u32,
    hash: &[u8; 32],
) {
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&flags.to_le_bytes());
    out[8..16].copy_from_slice(&meta.group.0.to_le_bytes());
    out[16..24].copy_from_slice(&meta.epoch.0.to_le_bytes());
    out[24..32].copy_from_slice(&meta.first_seq.0.to_le_bytes());
    out[32..36].copy_from_slice(&count.to_le_bytes());
    out[36..40].copy_from_slice(&raw_len.to_le_bytes());
    out[40..44].copy_from_slice(&payload_len.to_le_bytes());
    out[44..76].copy_from_slice(hash);
    let check = header_check(&out[..76]);
    out[76..84].copy_from_slice(&check);
}

use crate::bytes::le_u64;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn parse_changes(raw: &[u8], count: u32) -> Result<Vec<Change>, FrameError> {
    // The header already bounded count * CHANGE_OVERHEAD by raw_len, so this is bounded too.
    let mut changes = Vec::with_capacity(count as usize);
    let mut at = 0usize;
    for index in 0..count {
        let start = at;
        let bad = |reason: &'static str| FrameError::MalformedChange {
            index,
            offset: start,
            reason,
        };
        let fixed = raw.get(at..at + 2).ok_or_else(|| bad("truncated kind"))?;
        let kind = ChangeKind::from_u8(fixed[0]).ok_or_else(|| bad("unknown kind"))?;
        let name_len = fixed[1] as usize;
        at += 2;
        let name = raw
            .get(at..at + name_len)
            .ok_or_else(|| bad("truncated resource name"))?;
        let resource = std::str::from_utf8(name)
            .map_err(|_| bad("resource name is not UTF-8"))?
            .to_owned();
        at += name_len;
        let nums = raw
            .get(at..at + 28)
            .ok_or_else(|| bad("truncated offset/length/time"))?;
        let offset = le_u64(nums, 0);
        let length = le_u64(nums, 8);
        let captured_ms = le_u64(nums, 16) as i64;
        let data_len = le_u32(nums, 24) as usize;
        at += 28;
        let data = raw
            .get(at..at + data_len)
            .ok_or_else(|| bad("data runs past the payload"))?;
        at += data_len;
        if kind.carries_data() {
            if length != data_len as u64 {
                return Err(bad("length differs from data length"));
            }
        } else if data_len != 0 {
            return Err(bad("a trim or barrier carries data"));
        }
        changes.push(Change {
            resource,
            kind,
            offset,
            length,
            captured_ms,
            data: data.to_vec(),
        });
    }
    if at != raw.len() {
        return Err(FrameError::MalformedChange {
            index: count,
            offset: at,
            reason: "bytes after the last change",
        });
    }
    Ok(changes)
}

#[path = "frame_pieces.rs"]
mod pieces;

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
