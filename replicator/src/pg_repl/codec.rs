//! PostgreSQL wire format for a replication connection (protocol 3.0), pure: frontend messages
//! encoded to bytes, backend messages framed and decoded from bytes, the streaming replication
//! sub-messages inside CopyData, and the result sets of replication commands read into values.
//!
//! Nothing here does I/O. [`frame`] is the mini-redis parser: it returns `Ok(None)` when the
//! buffer does not yet hold a whole message, and refuses any length outside
//! `4..=MAX_MESSAGE_LEN` before a byte of the body is awaited. Every decoder is strict and
//! lossless: a body with bytes left over, a string without its terminator or not UTF-8, a
//! negative count is an error, so that [`BackendMessage::encode`] gives back exactly the bytes
//! a message was decoded from (the fuzz target `pg_repl_message` checks that).

use super::Lsn;
use std::fmt;

/// The largest backend message accepted (type byte excluded), in bytes. PostgreSQL sends WAL in
/// CopyData messages of at most 128 kB; 64 MiB leaves room for a timeline history file.
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// Protocol version 3.0, as sent in the startup message.
const PROTOCOL_3_0: i32 = 196_608;

/// Microseconds from the unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A malformed or oversized message from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A length field outside what the protocol or [`MAX_MESSAGE_LEN`] allows.
    #[error("message '{tag}' declares a length of {len} bytes (allowed 4..={max})")]
    BadLength {
        /// The message type byte, as a character.
        tag: char,
        /// The length field as sent (it counts itself).
        len: i64,
        /// The largest accepted.
        max: usize,
    },
    /// A message body that does not have the shape its type requires.
    #[error("malformed '{tag}' message at byte {offset} of its body: {reason}")]
    Malformed {
        /// The message type byte (or CopyData sub-message byte), as a character.
        tag: char,
        /// Offset in the body where decoding stopped.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
}

/// An authentication request (`R` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded (code 0).
    Ok,
    /// A cleartext password is requested (code 3).
    CleartextPassword,
    /// An MD5 password is requested, with this salt (code 5).
    Md5Password([u8; 4]),
    /// SASL authentication, with the mechanisms the server offers (code 10).
    Sasl(Vec<String>),
    /// A SASL challenge (code 11).
    SaslContinue(Vec<u8>),
    /// The SASL outcome (code 12).
    SaslFinal(Vec<u8>),
    /// Any other method (Kerberos 2, SCM 6, GSS 7, SSPI 9, GSS continue 8), with its data.
    Other(i32, Vec<u8>),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name.
    pub name: String,
    /// Table OID (0 for a replication command).
    pub table_oid: i32,
    /// Column attribute number.
    pub column: i16,
    /// Data type OID.
    pub type_oid: i32,
    /// Data type size.
    pub type_size: i16,
    /// Type modifier.
    pub type_modifier: i32,
    /// Format code (0 text, 1 binary).
    pub format: i16,
}

/// The fields of an ErrorResponse or NoticeResponse: (field type byte, value) in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields(pub Vec<(u8, String)>);

impl ErrorFields {
    /// The value of field `code` (`b'C'` SQLSTATE, `b'M'` message, `b'D'` detail, ...).
    pub fn get(&self, code: u8) -> Option<&str> {
        self.0
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE code, or `"?????"` when the server sent none.
    pub fn sqlstate(&self) -> &str {
        self.get(b'C').unwrap_or("?????")
    }

    /// The primary message, followed by the detail and hint when present.
    pub fn message(&self) -> String {
        let mut m = self.get(b'M').unwrap_or("(no message)").to_owned();
        if let Some(d) = self.get(b'D') {
            m.push_str(" (detail: ");
            m.push_str(d);
            m.push(')');
        }
        if let Some(h) = self.get(b'H') {
            m.push_str(" (hint: ");
            m.push_str(h);
            m.push(')');
        }
        m
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`: an authentication request or outcome.
    Authentication(Authentication),
    /// `S`: a run-time parameter's value.
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `K`: the cancellation key.
    BackendKeyData {
        /// Backend process id.
        pid: i32,
        /// Secret key.
        key: i32,
    },
    /// `Z`: ready for a new query, with the transaction status byte.
    ReadyForQuery(u8),
    /// `T`: the columns of the rows that follow.
    RowDescription(Vec<Field>),
    /// `D`: one row, `None` for NULL.
    DataRow(Vec<Option<Vec<u8>>>),
    /// `C`: a command finished, with its tag.
    CommandComplete(String),
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`: an error; the command failed.
    ErrorResponse(ErrorFields),
    /// `N`: a notice (a warning or information).
    NoticeResponse(ErrorFields),
    /// `W`: the server entered copy-both mode (START_REPLICATION), with the overall format and
    /// the per-column formats.
    CopyBothResponse {
        /// Overall format (0 text, 1 binary).
        format: u8,
        /// Column formats.
        columns: Vec<i16>,
    },
    /// `d`: copy data.
    CopyData(Vec<u8>),
    /// `c`: copy done.
    CopyDone,
    /// Any other message type, with its body as sent.
    Other {
        /// The message type byte.
        tag: u8,
        /// The body.
        body: Vec<u8>,
    },
}

impl BackendMessage {
    /// The message's type byte.
    pub fn tag(&self) -> u8 {
        match self {
            BackendMessage::Authentication(_) => b'R',
            BackendMessage::ParameterStatus { .. } => b'S',
            BackendMessage::BackendKeyData { .. } => b'K',
            BackendMessage::ReadyForQuery(_) => b'Z',
            BackendMessage::RowDescription(_) => b'T',
            BackendMessage::DataRow(_) => b'D',
            BackendMessage::CommandComplete(_) => b'C',
            BackendMessage::EmptyQueryResponse => b'I',
            BackendMessage::ErrorResponse(_) => b'E',
            BackendMessage::NoticeResponse(_) => b'N',
            BackendMessage::CopyBothResponse { .. } => b'W',
            BackendMessage::CopyData(_) => b'd',
            BackendMessage::CopyDone => b'c',
            BackendMessage::Other { tag, .. } => *tag,
        }
    }

    /// The message's type byte as a character, for errors and logs.
    pub fn tag_char(&self) -> char {
        char::from(self.tag())
    }

    /// Decodes the body of a message of type `tag` (the bytes after the length field).
    ///
    /// # Errors
    /// [`CodecError::Malformed`] when the body does not have the type's exact shape.
    pub fn decode(tag: u8, body: &[u8]) -> Result<BackendMessage, CodecError> {
        let mut r = Reader::new(tag, body);
        let msg = match tag {
            b'R' => BackendMessage::Authentication(decode_auth(&mut r)?),
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            b'K' => BackendMessage::BackendKeyData {
                pid: r.i32()?,
                key: r.i32()?,
            },
            b'Z' => BackendMessage::ReadyForQuery(r.u8()?),
            b'T' => {
                let n = r.count()?;
                let mut fields = Vec::with_capacity(n.min(r.remaining() / 19));
                for _ in 0..n {
                    fields.push(Field {
                        name: r.cstr()?,
                        table_oid: r.i32()?,
                        column: r.i16()?,
                        type_oid: r.i32()?,
                        type_size: r.i16()?,
                        type_modifier: r.i32()?,
                        format: r.i16()?,
                    });
                }
                BackendMessage::RowDescription(fields)
            }
            b'D' => {
                let n = r.count()?;
                let mut cols = Vec::with_capacity(n.min(r.remaining() / 4));
                for _ in 0..n {
                    let len = r.i32()?;
                    if len == -1 {
                        cols.push(None);
                    } else {
                        let len =
                            usize::try_from(len).map_err(|_| r.err("column length below -1"))?;
                        cols.push(Some(r.bytes(len)?.to_vec()));
                    }
                }
                BackendMessage::DataRow(cols)
            }
            b'C' => BackendMessage::CommandComplete(r.cstr()?),
            b'I' => BackendMessage::EmptyQueryResponse,
            b'E' => BackendMessage::ErrorResponse(decode_fields(&mut r)?),
            b'N' => BackendMessage::NoticeResponse(decode_fields(&mut r)?),
            b'W' => {
                let format = r.u8()?;
                let n = r.count()?;
                let mut columns = Vec::with_capacity(n.min(r.remaining() / 2));
                for _ in 0..n {
                    columns.push(r.i16()?);
                }
                BackendMessage::CopyBothResponse { format, columns }
            }
            b'd' => BackendMessage::CopyData(r.rest().to_vec()),
            b'c' => BackendMessage::CopyDone,
            _ => BackendMessage::Other {
                tag,
                body: r.rest().to_vec(),
            },
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encodes the message as the server would send it (type byte, length, body). The client
    /// never sends these; this exists for tests and for the fuzz target's round trip.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(self.tag());
        match self {
            BackendMessage::Authentication(a) => encode_auth(&mut w, a),
            BackendMessage::ParameterStatus { name, value } => {
                w.cstr(name);
                w.cstr(value);
            }
            BackendMessage::BackendKeyData { pid, key } => {
                w.i32(*pid);
                w.i32(*key);
            }
            BackendMessage::ReadyForQuery(s) => w.u8(*s),
            BackendMessage::RowDescription(fields) => {
                w.count(fields.len());
                for f in fields {
                    w.cstr(&f.name);
                    w.i32(f.table_oid);
                    w.i16(f.column);
                    w.i32(f.type_oid);
                    w.i16(f.type_size);
                    w.i32(f.type_modifier);
                    w.i16(f.format);
                }
            }
            BackendMessage::DataRow(cols) => {
                w.count(cols.len());
                for c in cols {
                    match c {
                        None => w.i32(-1),
                        Some(v) => {
                            w.len32(v.len());
                            w.bytes(v);
                        }
                    }
                }
            }
            BackendMessage::CommandComplete(t) => w.cstr(t),
            BackendMessage::EmptyQueryResponse | BackendMessage::CopyDone => {}
            BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f) => {
                for (code, v) in &f.0 {
                    w.u8(*code);
                    w.cstr(v);
                }
                w.u8(0);
            }
            BackendMessage::CopyBothResponse { format, columns } => {
                w.u8(*format);
                w.count(columns.len());
                for c in columns {
                    w.i16(*c);
                }
            }
            BackendMessage::CopyData(d) => w.bytes(d),
            BackendMessage::Other { body, .. } => w.bytes(body),
        }
        w.finish()
    }
}

fn decode_auth(r: &mut Reader<'_>) -> Result<Authentication, CodecError> {
    Ok(match r.i32()? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let s = r.bytes(4)?;
            Authentication::Md5Password([s[0], s[1], s[2], s[3]])
        }
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m);
            }
            Authentication::Sasl(mechs)
        }
        11 => Authentication::SaslContinue(r.rest().to_vec()),
        12 => Authentication::SaslFinal(r.rest().to_vec()),
        code => Authentication::Other(code, r.rest().to_vec()),
    })
}

fn encode_auth(w: &mut Writer, a: &Authentication) {
    match a {
        Authentication::Ok => w.i32(0),
        Authentication::CleartextPassword => w.i32(3),
        Authentication::Md5Password(salt) => {
            w.i32(5);
            w.bytes(salt);
        }
        Authentication::Sasl(mechs) => {
            w.i32(10);
            for m in mechs {
                w.cstr(m);
            }
            w.u8(0);
        }
        Authentication::SaslContinue(d) => {
            w.i32(11);
            w.bytes(d);
        }
        Authentication::SaslFinal(d) => {
            w.i32(12);
            w.bytes(d);
        }
        Authentication::Other(code, d) => {
            w.i32(*code);
            w.bytes(d);
        }
    }
}

fn decode_fields(r: &mut Reader<'_>) -> Result<ErrorFields, CodecError> {
    let mut fields = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(ErrorFields(fields));
        }
        fields.push((code, r.cstr()?));
    }
}

/// Finds the first whole message in `buf`: `Ok(Some((tag, body_range, total_len)))` with the
/// body at `buf[body_range]` and `total_len` bytes to consume, or `Ok(None)` when `buf` holds
/// only part of it (read more, then call again).
///
/// # Errors
/// [`CodecError::BadLength`] when the length field is below 4 or above [`MAX_MESSAGE_LEN`]:
/// checked as soon as the 5-byte header is in, before waiting for the body.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, CodecError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let ulen = usize::try_from(len)
        .ok()
        .filter(|l| (4..=MAX_MESSAGE_LEN).contains(l));
    let Some(ulen) = ulen else {
        return Err(CodecError::BadLength {
            tag: char::from(tag),
            len: i64::from(len),
            max: MAX_MESSAGE_LEN,
        });
    };
    let total = 1 + ulen;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((tag, 5..total, total)))
}

/// Decodes the first whole message in `buf`: `Ok(Some((message, bytes_consumed)))`, or
/// `Ok(None)` when more bytes are needed.
///
/// # Errors
/// [`CodecError`] for a bad length or a malformed body.
pub fn decode(buf: &[u8]) -> Result<Option<(BackendMessage, usize)>, CodecError> {
    match frame(buf)? {
        None => Ok(None),
        Some((tag, body, total)) => Ok(Some((BackendMessage::decode(tag, &buf[body])?, total))),
    }
}

/// How many bytes a partial message at the start of `buf` needs in all (header included), when
/// its header is in: lets a reader reserve the space once. `None` before the header is in or
/// when the length is invalid ([`frame`] reports that).
pub fn needed(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..5)?;
    let len = usize::try_from(i32::from_be_bytes([h[1], h[2], h[3], h[4]])).ok()?;
    (4..=MAX_MESSAGE_LEN).contains(&len).then_some(1 + len)
}

/// A message of the streaming replication protocol, carried in a CopyData from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: WAL bytes.
    XLogData {
        /// WAL position of the first byte of `data`.
        start: Lsn,
        /// The current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at sending, microseconds since 2000-01-01 UTC.
        send_time: i64,
        /// The WAL bytes.
        data: Vec<u8>,
    },
    /// `k`: primary keepalive.
    Keepalive {
        /// The current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at sending, microseconds since 2000-01-01 UTC.
        send_time: i64,
        /// The server asks for a status update at once (or it disconnects at timeout).
        reply_requested: bool,
    },
}

/// Bytes before the WAL data in an XLogData CopyData (`w`, start, end, clock).
pub const XLOG_DATA_HEADER_LEN: usize = 25;

impl ReplicationMessage {
    /// Decodes the payload of a CopyData received during START_REPLICATION, taking its bytes
    /// (the WAL of an XLogData is moved out, not copied).
    ///
    /// # Errors
    /// [`CodecError::Malformed`] (tag `d`) for an empty payload, an unknown sub-message or a
    /// wrong size.
    pub fn decode(mut payload: Vec<u8>) -> Result<ReplicationMessage, CodecError> {
        let Some(&kind) = payload.first() else {
            return Err(CodecError::Malformed {
                tag: 'd',
                offset: 0,
                reason: "empty CopyData during replication",
            });
        };
        let mut r = Reader::new(kind, &payload[1..]);
        match kind {
            b'w' => {
                let start = Lsn(r.u64()?);
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                payload.drain(..XLOG_DATA_HEADER_LEN);
                Ok(ReplicationMessage::XLogData {
                    start,
                    wal_end,
                    send_time,
                    data: payload,
                })
            }
            b'k' => {
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                let reply = r.u8()?;
                if reply > 1 {
                    return Err(r.err("reply flag neither 0 nor 1"));
                }
                r.finish()?;
                Ok(ReplicationMessage::Keepalive {
                    wal_end,
                    send_time,
                    reply_requested: reply == 1,
                })
            }
            _ => Err(CodecError::Malformed {
                tag: 'd',
                offset: 0,
                reason: "unknown replication message (expected 'w' or 'k')",
            }),
        }
    }

    /// Encodes the message as a CopyData payload (for tests and the fuzz round trip).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            ReplicationMessage::XLogData {
                start,
                wal_end,
                send_time,
                data,
            } => {
                out.push(b'w');
                out.extend_from_slice(&start.0.to_be_bytes());
                out.extend_from_slice(&wal_end.0.to_be_bytes());
                out.extend_from_slice(&send_time.to_be_bytes());
                out.extend_from_slice(data);
            }
            ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => {
                out.push(b'k');
                out.extend_from_slice(&wal_end.0.to_be_bytes());
                out.extend_from_slice(&send_time.to_be_bytes());
                out.push(u8::from(*reply_requested));
            }
        }
        out
    }
}

/// PostgreSQL's clock (microseconds since 2000-01-01 UTC) to unix milliseconds (floor).
pub fn pg_micros_to_unix_ms(micros: i64) -> i64 {
    micros.div_euclid(1000) + PG_EPOCH_UNIX_MICROS / 1000
}

/// Unix microseconds to PostgreSQL's clock (microseconds since 2000-01-01 UTC).
pub fn unix_micros_to_pg_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// The startup message: protocol 3.0 and `params` (name, value) pairs.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        push_cstr(&mut body, k);
        push_cstr(&mut body, v);
    }
    body.push(0);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len_field(4 + body.len()).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A PasswordMessage carrying a cleartext password.
pub fn password_message(password: &str) -> Vec<u8> {
    let mut w = Writer::new(b'p');
    w.cstr(password);
    w.finish()
}

/// A SASLInitialResponse: the chosen mechanism and the client-first message.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(b'p');
    w.cstr(mechanism);
    w.len32(data.len());
    w.bytes(data);
    w.finish()
}

/// A SASLResponse: the client-final message.
pub fn sasl_response(data: &[u8]) -> Vec<u8> {
    let mut w = Writer::new(b'p');
    w.bytes(data);
    w.finish()
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut w = Writer::new(b'Q');
    w.cstr(sql);
    w.finish()
}

/// CopyDone from the client (ends its side of copy-both mode).
pub fn copy_done() -> Vec<u8> {
    Writer::new(b'c').finish()
}

/// Terminate: the client is closing the connection.
pub fn terminate() -> Vec<u8> {
    Writer::new(b'X').finish()
}

/// A Standby status update (`r` in a CopyData): WAL positions written, flushed (durable) and
/// applied by the receiver, its clock (microseconds since 2000-01-01 UTC), and whether the
/// server should reply at once.
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    clock_pg_micros: i64,
    reply_requested: bool,
) -> Vec<u8> {
    let mut w = Writer::new(b'd');
    w.u8(b'r');
    w.bytes(&write.0.to_be_bytes());
    w.bytes(&flush.0.to_be_bytes());
    w.bytes(&apply.0.to_be_bytes());
    w.bytes(&clock_pg_micros.to_be_bytes());
    w.u8(u8::from(reply_requested));
    w.finish()
}

/// The rows and columns a simple query returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultSet {
    /// Column names, from the RowDescription.
    pub columns: Vec<String>,
    /// The rows, `None` for NULL.
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
}

impl ResultSet {
    /// The value of column `name` in row `row` as bytes: `Ok(None)` for NULL.
    ///
    /// # Errors
    /// A message naming the column when the row or column does not exist.
    pub fn bytes(&self, row: usize, name: &str) -> Result<Option<&[u8]>, String> {
        let col = self
            .columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("no column \"{name}\" in {:?}", self.columns))?;
        let r = self
            .rows
            .get(row)
            .ok_or_else(|| format!("no row {row} ({} rows)", self.rows.len()))?;
        let v = r
            .get(col)
            .ok_or_else(|| format!("row {row} has {} values, not {}", r.len(), col + 1))?;
        Ok(v.as_deref())
    }

    /// The value of column `name` in row `row` as text: `Ok(None)` for NULL.
    ///
    /// # Errors
    /// As [`ResultSet::bytes`], and when the value is not UTF-8.
    pub fn text(&self, row: usize, name: &str) -> Result<Option<&str>, String> {
        match self.bytes(row, name)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| format!("column \"{name}\" is not UTF-8")),
        }
    }

    /// The value of column `name` in row `row` as text, NULL refused.
    ///
    /// # Errors
    /// As [`ResultSet::text`], and for NULL.
    pub fn required(&self, row: usize, name: &str) -> Result<&str, String> {
        self.text(row, name)?
            .ok_or_else(|| format!("column \"{name}\" is NULL"))
    }
}

/// Parses a size setting as `SHOW` prints it (`16MB`, `1GB`, `512kB`, `8192B`, or a bare
/// number of bytes) into bytes.
///
/// # Errors
/// A message quoting the value when the number or unit is unknown, or the value overflows.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => return Err(format!("size {s:?} has an unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows 64 bits"))
}

fn len_field(len: usize) -> i32 {
    // Frontend messages are built from our own values (SQL text, passwords, positions), far
    // below 2 GiB; saturating keeps this total without a panic path.
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn push_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Builds one tagged message: type byte, length (patched in `finish`), body.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(tag: u8) -> Writer {
        Writer {
            buf: vec![tag, 0, 0, 0, 0],
        }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn count(&mut self, n: usize) {
        self.i16(i16::try_from(n).unwrap_or(i16::MAX));
    }
    fn len32(&mut self, n: usize) {
        self.i32(len_field(n));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    fn cstr(&mut self, s: &str) {
        push_cstr(&mut self.buf, s);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = len_field(self.buf.len() - 1).to_be_bytes();
        self.buf[1..5].copy_from_slice(&len);
        self.buf
    }
}

/// Reads a message body front to back, every read bounds-checked.
struct Reader<'a> {
    tag: u8,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(tag: u8, buf: &'a [u8]) -> Reader<'a> {
        Reader { tag, buf, pos: 0 }
    }
    fn err(&self, reason: &'static str) -> CodecError {
        CodecError::Malformed {
            tag: char::from(self.tag),
            offset: self.pos,
            reason,
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err("body ends inside a field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// An Int16 count, refused when negative.
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| self.err("negative count"))
    }
    fn cstr(&mut self) -> Result<String, CodecError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("string without its terminating NUL"))?;
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| self.err("string not UTF-8"))?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn finish(&self) -> Result<(), CodecError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err("bytes left over after the last field"))
        }
    }
}

impl fmt::Display for ReplicationMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationMessage::XLogData { start, data, .. } => {
                write!(f, "XLogData {start} +{}", data.len())
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => write!(f, "keepalive end {wal_end} reply {reply_requested}"),
        }
    }
}
