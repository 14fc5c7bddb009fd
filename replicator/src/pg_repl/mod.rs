//! A PostgreSQL physical replication client: the subset of the streaming replication protocol
//! a WAL receiver needs (as `pg_receivewal` uses it), speaking to a primary over TCP or its
//! unix socket.
//!
//! - [`codec`]: the wire format, pure (frontend messages encoded, backend messages framed and
//!   decoded, XLogData / keepalive / standby status update, result sets). Fuzzed.
//! - [`scram`]: the SCRAM-SHA-256 client exchange, pure.
//! - [`client`]: the thin async I/O: connect and authenticate, replication commands, and
//!   `START_REPLICATION`, after which the socket is split into a [`WalReader`] and a
//!   [`StatusWriter`] so that WAL is read in one task while flush positions are reported from
//!   another.
//! - this module: the values ([`Lsn`], [`ConnConfig`], [`SystemInfo`], [`WalEvent`]), the
//!   error type, and the pure reading of each command's result set.
//!
//! Contract with PostgreSQL (what makes synchronous replication RPO 0): the flush position a
//! [`StatusWriter`] reports is what the server takes as durable at the receiver; with
//! `synchronous_standby_names` naming the connection's `application_name`, a COMMIT returns
//! only once a reported flush position reaches its commit record. Report only WAL that is
//! durable where it must survive.

pub mod client;
pub mod codec;
pub mod scram;
#[cfg(test)]
mod tests;

pub use client::{Client, StatusWriter, WalReader};

use codec::{CodecError, ErrorFields, ResultSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A WAL position (PostgreSQL's `XLogRecPtr`): a byte address in the WAL stream. Printed and
/// parsed as PostgreSQL does, `X/Y` with the high and low 32 bits in hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Why a text is not an [`Lsn`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position (expected X/Y, 1 to 8 hexadecimal digits each)")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let bad = || LsnParseError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(h, 16).ok()
        };
        let (hi, lo) = (half(hi).ok_or_else(bad)?, half(lo).ok_or_else(bad)?);
        Ok(Lsn(u64::from(hi) << 32 | u64::from(lo)))
    }
}

/// The name of the WAL segment file (24 hex digits: timeline, log, segment) holding `lsn` on
/// timeline `tli`, for segments of `seg_size` bytes; `None` unless `seg_size` is a power of two
/// from 1 MiB to 1 GiB (what initdb allows). The inverse of [`crate::pg_feed::segment_start`].
pub fn segment_name(tli: u32, lsn: Lsn, seg_size: u64) -> Option<String> {
    if !seg_size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&seg_size) {
        return None;
    }
    let segno = lsn.0 / seg_size;
    let per_log = 0x1_0000_0000 / seg_size;
    Some(format!(
        "{tli:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    ))
}

impl WalEvent {
    /// For WAL data, the position just after its last byte (`start + bytes.len()`).
    pub fn data_end(&self) -> Option<Lsn> {
        match self {
            WalEvent::Data { start, bytes, .. } => {
                Some(Lsn(start.0.saturating_add(bytes.len() as u64)))
            }
            _ => None,
        }
    }
}

/// Where and how to connect.
/// Its `Debug` never shows the password.
#[derive(Clone)]
pub struct ConnConfig {
    /// An absolute path: the directory of the server's unix socket (`{host}/.s.PGSQL.{port}`);
    /// otherwise a TCP host name or address.
    pub host: String,
    /// The server's port (also names the unix socket).
    pub port: u16,
    /// The role to connect as; it needs the `REPLICATION` attribute.
    pub user: String,
    /// The password, for `password` and `scram-sha-256` authentication.
    pub password: Option<String>,
    /// `application_name`: what `synchronous_standby_names` and `pg_stat_replication` see.
    pub application_name: String,
    /// Bound on connecting and authenticating together.
    pub connect_timeout: Duration,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier (decimal text; equal on a primary and its standbys).
    pub system_id: String,
    /// The server's current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
}

/// One event of a replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// WAL bytes: `bytes` belong at `start..start + bytes.len()` of the WAL stream.
    Data {
        /// WAL position of the first byte.
        start: Lsn,
        /// The end of WAL on the server when it sent this (not the end of `bytes`).
        wal_end: Lsn,
        /// The server's clock when it sent this, unix milliseconds.
        send_time_ms: i64,
        /// The WAL.
        bytes: Vec<u8>,
    },
    /// A keepalive: the server's end of WAL, and whether it wants a status update now (it
    /// disconnects after `wal_sender_timeout` without one).
    Keepalive {
        /// The end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock when it sent this, unix milliseconds.
        send_time_ms: i64,
        /// Send a status update at once.
        reply_requested: bool,
    },
    /// The server ended the stream: the timeline being streamed is historic and ends here (a
    /// promotion happened). Values from the server's closing result set; `None` when it sent
    /// none. Further calls to [`WalReader::next`] fail.
    EndOfTimeline {
        /// The timeline that follows.
        next_timeline: Option<u32>,
        /// Where it starts (the end of the streamed timeline).
        next_start: Option<Lsn>,
    },
}

/// Everything that can go wrong on a replication connection. Each names the call (the
/// replication command, `connect`, `authenticate`, `stream`, `status update`).
#[derive(Debug, thiserror::Error)]
pub enum PgReplError {
    /// Reading or writing the socket failed, or connecting did.
    #[error("{call} ({target}): {source}")]
    Io {
        /// The call.
        call: String,
        /// The socket path or host:port.
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting and authenticating took longer than `connect_timeout`.
    #[error("connect to {target}: no session within {after:?}")]
    ConnectTimeout {
        /// The socket path or host:port.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The server closed the connection.
    #[error("{call}: the server closed the connection")]
    Closed {
        /// The call.
        call: String,
    },
    /// The server answered with an ErrorResponse.
    #[error("{call}: server error {sqlstate}: {message}")]
    Server {
        /// The call.
        call: String,
        /// SQLSTATE (`42704` undefined object, `28P01` wrong password, ...).
        sqlstate: String,
        /// The message, with detail and hint.
        message: String,
    },
    /// The server asks for authentication this client cannot do, or a password is missing.
    #[error("{0}")]
    Auth(String),
    /// The server sent something the protocol does not allow here.
    #[error("{call}: protocol violation by the server: {reason}")]
    Protocol {
        /// The call.
        call: String,
        /// What was wrong.
        reason: String,
    },
    /// An argument was refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
}

impl PgReplError {
    /// Whether trying again later can succeed: socket failures, timeouts, a closed connection,
    /// and server errors of classes 08 (connection), 53 (resources: too many connections),
    /// 57 (shutdown, recovery), 58 (system), and `55006` (object in use: the slot is still held
    /// by the previous connection's walsender, which exits shortly).
    pub fn is_retryable(&self) -> bool {
        match self {
            PgReplError::Io { .. }
            | PgReplError::ConnectTimeout { .. }
            | PgReplError::Closed { .. } => true,
            PgReplError::Server { sqlstate, .. } => ["08", "53", "57", "58", "55006"]
                .iter()
                .any(|c| sqlstate.starts_with(c)),
            PgReplError::Auth(_) | PgReplError::Protocol { .. } | PgReplError::Invalid(_) => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgReplError::Server { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    pub(crate) fn server(call: &str, f: &ErrorFields) -> PgReplError {
        PgReplError::Server {
            call: call.to_owned(),
            sqlstate: f.sqlstate().to_owned(),
            message: f.message(),
        }
    }

    pub(crate) fn protocol(call: &str, reason: impl Into<String>) -> PgReplError {
        PgReplError::Protocol {
            call: call.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn codec(call: &str, e: CodecError) -> PgReplError {
        PgReplError::protocol(call, e.to_string())
    }
}

/// SQLSTATE `duplicate_object`: CREATE_REPLICATION_SLOT for a slot that exists.
pub const SQLSTATE_DUPLICATE_OBJECT: &str = "42710";

/// Checks a replication slot name as PostgreSQL does (1 to 63 of `a-z`, `0-9`, `_`), so that
/// it can be put into a command unquoted.
///
/// # Errors
/// [`PgReplError::Invalid`] naming the slot.
pub fn check_slot_name(slot: &str) -> Result<(), PgReplError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PgReplError::Invalid(format!(
            "replication slot name {slot:?} is invalid: 1 to 63 of a-z, 0-9 and _"
        )))
    }
}

/// The result of `IDENTIFY_SYSTEM` read into a [`SystemInfo`].
///
/// # Errors
/// [`PgReplError::Protocol`] naming the column that is missing or unreadable.
pub fn system_info(rs: &ResultSet) -> Result<SystemInfo, PgReplError> {
    let call = "IDENTIFY_SYSTEM";
    let p = |e: String| PgReplError::protocol(call, e);
    let timeline = rs.required(0, "timeline").map_err(p)?;
    let xlogpos = rs.required(0, "xlogpos").map_err(p)?;
    Ok(SystemInfo {
        system_id: rs.required(0, "systemid").map_err(p)?.to_owned(),
        timeline: timeline
            .parse()
            .map_err(|_| p(format!("timeline {timeline:?} is not a number")))?,
        xlog_pos: xlogpos
            .parse()
            .map_err(|e: LsnParseError| p(e.to_string()))?,
    })
}

/// The result of `READ_REPLICATION_SLOT`: the slot's restart position and its timeline, or
/// `None` when the slot does not exist or has no restart position yet.
///
/// # Errors
/// [`PgReplError::Protocol`] when a column is missing or unreadable.
pub fn slot_restart(rs: &ResultSet) -> Result<Option<(Lsn, u32)>, PgReplError> {
    let call = "READ_REPLICATION_SLOT";
    let p = |e: String| PgReplError::protocol(call, e);
    let (Some(lsn), Some(tli)) = (
        rs.text(0, "restart_lsn").map_err(p)?,
        rs.text(0, "restart_tli").map_err(p)?,
    ) else {
        return Ok(None);
    };
    let lsn = lsn.parse().map_err(|e: LsnParseError| p(e.to_string()))?;
    let tli = tli
        .parse()
        .map_err(|_| p(format!("restart_tli {tli:?} is not a number")))?;
    Ok(Some((lsn, tli)))
}

/// The result of `TIMELINE_HISTORY`: the history file's name and content.
///
/// # Errors
/// [`PgReplError::Protocol`] when a column is missing, NULL, or the name is not a plain file
/// name (it is used as one).
pub fn timeline_history(rs: &ResultSet) -> Result<(String, Vec<u8>), PgReplError> {
    let call = "TIMELINE_HISTORY";
    let p = |e: String| PgReplError::protocol(call, e);
    let name = rs.required(0, "filename").map_err(p)?;
    let plain = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        && !name.starts_with('.');
    if !plain {
        return Err(p(format!("file name {name:?} is not a history file name")));
    }
    let content = rs
        .bytes(0, "content")
        .map_err(p)?
        .ok_or_else(|| p("content is NULL".into()))?;
    Ok((name.to_owned(), content.to_vec()))
}

/// The result set that closes a stream at the end of a historic timeline (columns
/// `next_tli`, `next_tli_startpos`) read into [`WalEvent::EndOfTimeline`]; an empty result
/// gives `None`s.
///
/// # Errors
/// [`PgReplError::Protocol`] when a value is unreadable.
pub fn end_of_timeline(rs: &ResultSet) -> Result<WalEvent, PgReplError> {
    let call = "START_REPLICATION";
    if rs.rows.is_empty() {
        return Ok(WalEvent::EndOfTimeline {
            next_timeline: None,
            next_start: None,
        });
    }
    let p = |e: String| PgReplError::protocol(call, e);
    let tli = match rs.text(0, "next_tli").map_err(p)? {
        None => None,
        Some(t) => Some(
            t.parse()
                .map_err(|_| p(format!("next_tli {t:?} is not a number")))?,
        ),
    };
    let start = match rs.text(0, "next_tli_startpos").map_err(p)? {
        None => None,
        Some(s) => Some(s.parse().map_err(|e: LsnParseError| p(e.to_string()))?),
    };
    Ok(WalEvent::EndOfTimeline {
        next_timeline: tli,
        next_start: start,
    })
}
