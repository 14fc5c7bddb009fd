//! The replication connection's I/O: the socket (TCP or unix), authentication, the replication
//! commands as simple queries, and the copy-both stream of `START_REPLICATION`, split into a
//! [`WalReader`] and a [`StatusWriter`]. Decisions and parsing live in [`super::codec`],
//! [`super::scram`] and the pure functions of [`super`].

use super::codec::{self, Authentication, BackendMessage, ReplicationMessage, ResultSet};
use super::scram::{self, ScramClient};
use super::{ConnConfig, Lsn, PgReplError, SystemInfo, WalEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Smallest read issued, so that small messages do not cost a syscall each.
const READ_CHUNK: usize = 64 * 1024;

/// Rows accepted in the result of one replication command (they return one): bounds the
/// memory a misbehaving server can make the client hold.
const MAX_ROWS: usize = 64;

/// The md5 refusal, word for word what an operator needs to fix it.
const MD5_REFUSED: &str = "server asks for md5 authentication, which Tandem does not support: \
use scram-sha-256 or trust/peer for the replication user in pg_hba.conf";

/// Reads whole backend messages from the socket's read half.
struct MsgReader {
    rd: BoxRead,
    buf: Vec<u8>,
    start: usize,
    target: String,
    /// The run-time parameters the server reported (ParameterStatus), latest value each.
    params: BTreeMap<String, String>,
}

impl MsgReader {
    /// The next message, whatever its type.
    async fn read(&mut self, call: &str) -> Result<BackendMessage, PgReplError> {
        loop {
            let pending = &self.buf[self.start..];
            if let Some((msg, used)) =
                codec::decode(pending).map_err(|e| PgReplError::codec(call, e))?
            {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(msg);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = codec::needed(&self.buf).unwrap_or(0);
            self.buf
                .reserve(want.saturating_sub(self.buf.len()).max(READ_CHUNK));
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| PgReplError::Io {
                    call: call.to_owned(),
                    target: self.target.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(PgReplError::Closed {
                    call: call.to_owned(),
                });
            }
        }
    }

    /// The next message that is not a notice or a parameter status.
    async fn read_skipping(&mut self, call: &str) -> Result<BackendMessage, PgReplError> {
        loop {
            match self.read(call).await? {
                BackendMessage::NoticeResponse(f) => {
                    tracing::debug!(
                        call,
                        sqlstate = f.sqlstate(),
                        "PostgreSQL notice: {}",
                        f.message()
                    );
                }
                BackendMessage::ParameterStatus { name, value } => {
                    self.params.insert(name, value);
                }
                m => return Ok(m),
            }
        }
    }

    /// Reads rows up to ReadyForQuery: the result of a simple query. The first ErrorResponse
    /// becomes the error, after the server is ready again (the connection stays usable).
    async fn result_set(
        &mut self,
        call: &str,
        mut rs: ResultSet,
    ) -> Result<ResultSet, PgReplError> {
        let mut err = None;
        loop {
            match self.read_skipping(call).await? {
                BackendMessage::RowDescription(fields) => {
                    rs.columns = fields.into_iter().map(|f| f.name).collect();
                }
                BackendMessage::DataRow(row) => {
                    if rs.rows.len() >= MAX_ROWS {
                        return Err(PgReplError::protocol(
                            call,
                            format!("more than {MAX_ROWS} rows for a replication command"),
                        ));
                    }
                    rs.rows.push(row);
                }
                BackendMessage::CommandComplete(_) | BackendMessage::EmptyQueryResponse => {}
                BackendMessage::ErrorResponse(f) => {
                    err.get_or_insert_with(|| PgReplError::server(call, &f));
                }
                BackendMessage::ReadyForQuery(_) => return err.map_or(Ok(rs), Err),
                m => {
                    return Err(PgReplError::protocol(
                        call,
                        format!("unexpected '{}' message in a result", m.tag_char()),
                    ))
                }
            }
        }
    }
}

/// Writes frontend messages to the socket's write half.
struct MsgWriter {
    wr: BoxWrite,
    target: String,
    /// The stream ended (end of timeline): status updates are refused.
    ended: bool,
}

impl MsgWriter {
    async fn send(&mut self, call: &str, msg: &[u8]) -> Result<(), PgReplError> {
        let io = |source| PgReplError::Io {
            call: call.to_owned(),
            target: self.target.clone(),
            source,
        };
        self.wr.write_all(msg).await.map_err(io)?;
        self.wr.flush().await.map_err(io)
    }
}

/// A connection to PostgreSQL in physical replication mode (startup parameter
/// `replication=true`), ready for replication commands.
pub struct Client {
    rd: MsgReader,
    wr: MsgWriter,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.rd.target)
            .finish()
    }
}

/// Where `cfg` points: the unix socket path or `host:port`.
fn target_of(cfg: &ConnConfig) -> String {
    if cfg.host.starts_with('/') {
        format!("{}/.s.PGSQL.{}", cfg.host.trim_end_matches('/'), cfg.port)
    } else {
        format!("{}:{}", cfg.host, cfg.port)
    }
}

async fn open(cfg: &ConnConfig, target: &str) -> Result<(BoxRead, BoxWrite), PgReplError> {
    let io = |source| PgReplError::Io {
        call: "connect".into(),
        target: target.to_owned(),
        source,
    };
    if cfg.host.starts_with('/') {
        let s = tokio::net::UnixStream::connect(target).await.map_err(io)?;
        let (r, w) = s.into_split();
        Ok((Box::new(r), Box::new(w)))
    } else {
        let s = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(io)?;
        // Status updates are small and carry the flush position a synchronous COMMIT waits for.
        s.set_nodelay(true).map_err(io)?;
        let (r, w) = s.into_split();
        Ok((Box::new(r), Box::new(w)))
    }
}

impl Client {
    /// Connects, authenticates (trust, peer, password or SCRAM-SHA-256) and waits until the
    /// server is ready, all within `cfg.connect_timeout`.
    ///
    /// # Errors
    /// [`PgReplError::ConnectTimeout`], [`PgReplError::Io`] when the socket cannot be reached,
    /// [`PgReplError::Auth`] for md5 or another unsupported method or a missing password,
    /// [`PgReplError::Server`] when the server refuses (wrong password `28P01`, no
    /// `pg_hba.conf` entry `28000`, not a replication role).
    pub async fn connect(cfg: &ConnConfig) -> Result<Client, PgReplError> {
        let target = target_of(cfg);
        match tokio::time::timeout(cfg.connect_timeout, Client::connect_now(cfg, &target)).await {
            Ok(r) => r,
            Err(_) => Err(PgReplError::ConnectTimeout {
                target,
                after: cfg.connect_timeout,
            }),
        }
    }

    async fn connect_now(cfg: &ConnConfig, target: &str) -> Result<Client, PgReplError> {
        let fields = [
            ("user", Some(cfg.user.as_str())),
            ("application_name", Some(cfg.application_name.as_str())),
            ("password", cfg.password.as_deref()),
        ];
        for (name, value) in fields {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(PgReplError::Invalid(format!(
                    "connection setting {name} contains a NUL byte"
                )));
            }
        }
        let (rd, wr) = open(cfg, target).await?;
        let mut c = Client {
            rd: MsgReader {
                rd,
                buf: Vec::new(),
                start: 0,
                target: target.to_owned(),
                params: BTreeMap::new(),
            },
            wr: MsgWriter {
                wr,
                target: target.to_owned(),
                ended: false,
            },
        };
        let startup = codec::startup_message(&[
            ("user", &cfg.user),
            ("replication", "true"),
            ("application_name", &cfg.application_name),
        ]);
        c.wr.send("connect", &startup).await?;
        c.authenticate(cfg).await?;
        loop {
            match c.rd.read_skipping("connect").await? {
                BackendMessage::BackendKeyData { .. } => {}
                BackendMessage::ReadyForQuery(_) => return Ok(c),
                BackendMessage::ErrorResponse(f) => return Err(PgReplError::server("connect", &f)),
                m => {
                    return Err(PgReplError::protocol(
                        "connect",
                        format!("unexpected '{}' message before ReadyForQuery", m.tag_char()),
                    ))
                }
            }
        }
    }

    /// Answers the server's authentication requests until AuthenticationOk.
    async fn authenticate(&mut self, cfg: &ConnConfig) -> Result<(), PgReplError> {
        const CALL: &str = "authenticate";
        loop {
            match self.rd.read_skipping(CALL).await? {
                BackendMessage::Authentication(Authentication::Ok) => return Ok(()),
                BackendMessage::Authentication(Authentication::CleartextPassword) => {
                    let pw = password(cfg, "a cleartext password")?;
                    self.wr.send(CALL, &codec::password_message(pw)).await?;
                }
                BackendMessage::Authentication(Authentication::Md5Password(_)) => {
                    return Err(PgReplError::Auth(MD5_REFUSED.into()))
                }
                BackendMessage::Authentication(Authentication::Sasl(mechs)) => {
                    if !mechs.iter().any(|m| m == scram::MECHANISM) {
                        return Err(PgReplError::Auth(format!(
                            "server offers SASL mechanisms {mechs:?}, Tandem speaks only {} (without channel binding)",
                            scram::MECHANISM
                        )));
                    }
                    let pw = password(cfg, "a SCRAM-SHA-256 password")?;
                    self.scram(pw).await?;
                }
                BackendMessage::Authentication(Authentication::Other(code, _)) => {
                    return Err(PgReplError::Auth(format!(
                        "server asks for authentication method {code} ({}), which Tandem does not support: use scram-sha-256 or trust/peer for the replication user in pg_hba.conf",
                        auth_name(code)
                    )))
                }
                BackendMessage::ErrorResponse(f) => return Err(PgReplError::server(CALL, &f)),
                m => {
                    return Err(PgReplError::protocol(
                        CALL,
                        format!("unexpected '{}' message during authentication", m.tag_char()),
                    ))
                }
            }
        }
    }

    /// The SCRAM-SHA-256 exchange, up to (not including) AuthenticationOk.
    async fn scram(&mut self, password: &str) -> Result<(), PgReplError> {
        const CALL: &str = "authenticate (SCRAM-SHA-256)";
        let nonce = scram::random_nonce()
            .map_err(|_| PgReplError::Auth("no random bytes for a SCRAM nonce".into()))?;
        let mut sc = ScramClient::new("", password, &nonce);
        let first = codec::sasl_initial_response(scram::MECHANISM, sc.client_first().as_bytes());
        self.wr.send(CALL, &first).await?;
        let server_first = match self.rd.read_skipping(CALL).await? {
            BackendMessage::Authentication(Authentication::SaslContinue(d)) => d,
            BackendMessage::ErrorResponse(f) => return Err(PgReplError::server(CALL, &f)),
            m => return Err(unexpected(CALL, &m, "SASLContinue")),
        };
        let server_first = std::str::from_utf8(&server_first)
            .map_err(|_| PgReplError::protocol(CALL, "server-first message is not UTF-8"))?;
        let client_final = sc
            .server_first(server_first)
            .map_err(|e| PgReplError::Auth(e.to_string()))?;
        self.wr
            .send(CALL, &codec::sasl_response(client_final.as_bytes()))
            .await?;
        let server_final = match self.rd.read_skipping(CALL).await? {
            BackendMessage::Authentication(Authentication::SaslFinal(d)) => d,
            BackendMessage::ErrorResponse(f) => return Err(PgReplError::server(CALL, &f)),
            m => return Err(unexpected(CALL, &m, "SASLFinal")),
        };
        let server_final = std::str::from_utf8(&server_final)
            .map_err(|_| PgReplError::protocol(CALL, "server-final message is not UTF-8"))?;
        sc.verify_server_final(server_final)
            .map_err(|e| PgReplError::Auth(e.to_string()))
    }

    /// A run-time parameter the server reported (`server_version`, `server_encoding`,
    /// `integer_datetimes`, ...), as of the last message read.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.rd.params.get(name).map(String::as_str)
    }

    /// Runs one command as a simple query and returns its rows.
    async fn query(&mut self, call: &str, sql: &str) -> Result<ResultSet, PgReplError> {
        self.wr.send(call, &codec::query(sql)).await?;
        self.rd.result_set(call, ResultSet::default()).await
    }

    /// `IDENTIFY_SYSTEM`: the cluster's identifier, current timeline and WAL flush position.
    ///
    /// # Errors
    /// I/O, server and protocol errors.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, PgReplError> {
        let rs = self.query("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM").await?;
        super::system_info(&rs)
    }

    /// `SHOW name`: a setting's value as text (`in_hot_standby`: `on` on a standby).
    ///
    /// # Errors
    /// [`PgReplError::Invalid`] for a name other than letters, digits and `_`; I/O, server
    /// and protocol errors.
    pub async fn show(&mut self, name: &str) -> Result<String, PgReplError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PgReplError::Invalid(format!("setting name {name:?}")));
        }
        let call = format!("SHOW {name}");
        let rs = self.query(&call, &call).await?;
        rs.required(0, name)
            .map(str::to_owned)
            .map_err(|e| PgReplError::protocol(&call, e))
    }

    /// `SHOW wal_segment_size`, in bytes (16 MiB unless initdb chose otherwise).
    ///
    /// # Errors
    /// I/O, server and protocol errors, and a value that is not a size.
    pub async fn wal_segment_size(&mut self) -> Result<u64, PgReplError> {
        const CALL: &str = "SHOW wal_segment_size";
        let rs = self.query(CALL, CALL).await?;
        let p = |e: String| PgReplError::protocol(CALL, e);
        codec::parse_size(rs.required(0, "wal_segment_size").map_err(p)?).map_err(p)
    }

    /// Creates the physical replication slot `slot` with its WAL reserved from now on:
    /// `Ok(true)` when created, `Ok(false)` when it already existed (SQLSTATE 42710).
    ///
    /// # Errors
    /// [`PgReplError::Invalid`] for a bad slot name; I/O, server (e.g. `max_replication_slots`
    /// reached) and protocol errors.
    pub async fn ensure_physical_slot(&mut self, slot: &str) -> Result<bool, PgReplError> {
        super::check_slot_name(slot)?;
        let sql = format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL");
        match self.query("CREATE_REPLICATION_SLOT", &sql).await {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some(super::SQLSTATE_DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+): the slot's restart position and its timeline,
    /// `None` when the slot does not exist or has none.
    ///
    /// # Errors
    /// [`PgReplError::Invalid`] for a bad slot name; I/O, server and protocol errors.
    pub async fn slot_restart_lsn(
        &mut self,
        slot: &str,
    ) -> Result<Option<(Lsn, u32)>, PgReplError> {
        super::check_slot_name(slot)?;
        let sql = format!("READ_REPLICATION_SLOT {slot}");
        let rs = self.query("READ_REPLICATION_SLOT", &sql).await?;
        super::slot_restart(&rs)
    }

    /// `TIMELINE_HISTORY tli`: the history file's name (`0000000N.history`) and content.
    ///
    /// # Errors
    /// I/O, server (no such timeline: `58P01`) and protocol errors.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Vec<u8>), PgReplError> {
        let rs = self
            .query("TIMELINE_HISTORY", &format!("TIMELINE_HISTORY {tli}"))
            .await?;
        super::timeline_history(&rs)
    }

    /// `START_REPLICATION SLOT slot PHYSICAL from TIMELINE timeline`: the server streams WAL
    /// from `from`. The connection becomes a [`WalReader`] and a [`StatusWriter`], usable from
    /// different tasks.
    ///
    /// Send a first status update at once (flush = the durable position, e.g. `from`):
    /// PostgreSQL takes a receiver that never reported a valid flush position for an
    /// asynchronous one, so until then it is not the synchronous standby that
    /// `synchronous_standby_names` names (and COMMITs waiting for that name keep waiting).
    ///
    /// # Errors
    /// [`PgReplError::Invalid`] for a bad slot name; [`PgReplError::Server`] when the server
    /// refuses (no such slot `42704`, WAL already removed `58P01`, a position past the
    /// timeline's end); I/O and protocol errors.
    pub async fn start(
        mut self,
        slot: &str,
        from: Lsn,
        timeline: u32,
    ) -> Result<(WalReader, StatusWriter), PgReplError> {
        const CALL: &str = "START_REPLICATION";
        super::check_slot_name(slot)?;
        let sql = format!("START_REPLICATION SLOT {slot} PHYSICAL {from} TIMELINE {timeline}");
        self.wr.send(CALL, &codec::query(&sql)).await?;
        let state = match self.rd.read_skipping(CALL).await? {
            BackendMessage::CopyBothResponse { .. } => StreamState::Streaming,
            BackendMessage::ErrorResponse(f) => return Err(PgReplError::server(CALL, &f)),
            // A historic timeline that ends exactly at `from`: no copy, only the result set
            // naming the next timeline.
            BackendMessage::RowDescription(fields) => {
                let rs = ResultSet {
                    columns: fields.into_iter().map(|f| f.name).collect(),
                    rows: Vec::new(),
                };
                let rs = self.rd.result_set(CALL, rs).await?;
                StreamState::Pending(super::end_of_timeline(&rs)?)
            }
            m => return Err(unexpected(CALL, &m, "CopyBothResponse")),
        };
        let wr = Arc::new(Mutex::new(self.wr));
        Ok((
            WalReader {
                rd: self.rd,
                wr: Arc::clone(&wr),
                state,
                expected: from,
            },
            StatusWriter { wr },
        ))
    }

    /// Says goodbye (Terminate) and closes the connection.
    ///
    /// # Errors
    /// When the socket cannot be written.
    pub async fn close(mut self) -> Result<(), PgReplError> {
        self.wr.send("close", &codec::terminate()).await
    }
}

fn password<'a>(cfg: &'a ConnConfig, what: &str) -> Result<&'a str, PgReplError> {
    cfg.password.as_deref().ok_or_else(|| {
        PgReplError::Auth(format!(
            "server asks for {what} for user {:?} and none is configured",
            cfg.user
        ))
    })
}

fn auth_name(code: i32) -> &'static str {
    match code {
        2 => "Kerberos V5",
        6 => "SCM credentials",
        7 => "GSSAPI",
        8 => "GSSAPI continue",
        9 => "SSPI",
        _ => "unknown",
    }
}

fn unexpected(call: &str, m: &BackendMessage, wanted: &str) -> PgReplError {
    PgReplError::protocol(
        call,
        format!("expected {wanted}, got a '{}' message", m.tag_char()),
    )
}

enum StreamState {
    Streaming,
    /// The end of timeline is known; the next call returns it.
    Pending(WalEvent),
    Ended,
}

/// The receiving half of a replication stream.
pub struct WalReader {
    rd: MsgReader,
    wr: Arc<Mutex<MsgWriter>>,
    state: StreamState,
    /// Where the next WAL data must start: the stream is contiguous from the start position.
    expected: Lsn,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("target", &self.rd.target)
            .finish()
    }
}

impl WalReader {
    /// The next event: WAL, a keepalive, or the end of the timeline (after which the stream is
    /// over). Waits as long as the server sends nothing: the server sends a keepalive at least
    /// every `wal_sender_timeout / 2`; bound the wait with a timeout to detect a dead link.
    ///
    /// At the end of a timeline the server sends CopyDone; this answers with CopyDone (the
    /// server waits for it) and reads the closing result set.
    ///
    /// Cancel-safe while streaming (a `timeout` around it loses nothing), except during the
    /// end-of-timeline exchange.
    ///
    /// WAL data is checked to continue the stream exactly (the first at the start position,
    /// each next one where the previous ended): a gap or an overlap is a protocol error.
    ///
    /// # Errors
    /// [`PgReplError::Server`] when the server fails the stream (e.g. WAL removed); I/O,
    /// protocol and closed-connection errors (a server shutting down ends the stream with
    /// `COPY 0` and closes: [`PgReplError::Closed`], retryable). After an error or the end of
    /// the timeline, every call fails.
    pub async fn next(&mut self) -> Result<WalEvent, PgReplError> {
        match &self.state {
            StreamState::Streaming => {}
            StreamState::Pending(_) => {
                if let StreamState::Pending(ev) =
                    std::mem::replace(&mut self.state, StreamState::Ended)
                {
                    self.wr.lock().await.ended = true;
                    return Ok(ev);
                }
            }
            StreamState::Ended => {
                return Err(PgReplError::Invalid(
                    "the replication stream has ended: connect again".into(),
                ))
            }
        }
        let r = self.read_event().await;
        if !matches!(r, Ok(WalEvent::Data { .. } | WalEvent::Keepalive { .. })) {
            self.state = StreamState::Ended;
        }
        r
    }

    async fn read_event(&mut self) -> Result<WalEvent, PgReplError> {
        const CALL: &str = "START_REPLICATION stream";
        let ev = match self.rd.read_skipping(CALL).await? {
            BackendMessage::CopyData(payload) => {
                match ReplicationMessage::decode(payload)
                    .map_err(|e| PgReplError::codec(CALL, e))?
                {
                    ReplicationMessage::XLogData {
                        start,
                        wal_end,
                        send_time,
                        data,
                    } => {
                        self.expected = next_position(self.expected, start, data.len())
                            .map_err(|e| PgReplError::protocol(CALL, e))?;
                        WalEvent::Data {
                            start,
                            wal_end,
                            send_time_ms: codec::pg_micros_to_unix_ms(send_time),
                            bytes: data,
                        }
                    }
                    ReplicationMessage::Keepalive {
                        wal_end,
                        send_time,
                        reply_requested,
                    } => WalEvent::Keepalive {
                        wal_end,
                        send_time_ms: codec::pg_micros_to_unix_ms(send_time),
                        reply_requested,
                    },
                }
            }
            BackendMessage::CopyDone => {
                let mut wr = self.wr.lock().await;
                wr.ended = true;
                wr.send(CALL, &codec::copy_done()).await?;
                drop(wr);
                let rs = self.rd.result_set(CALL, ResultSet::default()).await?;
                return super::end_of_timeline(&rs);
            }
            BackendMessage::ErrorResponse(f) => return Err(PgReplError::server(CALL, &f)),
            BackendMessage::CommandComplete(tag) => {
                return Err(PgReplError::Closed {
                    call: format!("{CALL} (the server ended it with {tag:?}: shutting down)"),
                })
            }
            m => return Err(unexpected(CALL, &m, "CopyData or CopyDone")),
        };
        Ok(ev)
    }
}

/// Checks that WAL data of `len` bytes at `start` continues the stream exactly where it stands
/// (`expected`) and returns the position after it.
///
/// # Errors
/// A message naming both positions for a gap or an overlap, or a position past 2^64.
fn next_position(expected: Lsn, start: Lsn, len: usize) -> Result<Lsn, String> {
    if start != expected {
        return Err(format!(
            "WAL data at {start}, expected {expected}: a gap or an overlap in the stream"
        ));
    }
    start
        .0
        .checked_add(len as u64)
        .map(Lsn)
        .ok_or_else(|| format!("WAL data at {start} +{len} ends past the last position"))
}

/// The sending half of a replication stream: standby status updates.
pub struct StatusWriter {
    wr: Arc<Mutex<MsgWriter>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// Sends a standby status update: WAL received up to `write`, durable up to `flush`,
    /// applied up to `apply`, with this machine's clock; `reply_requested` asks the server for
    /// a keepalive at once. `flush` is what synchronous commits wait for and what the slot
    /// releases WAL up to: only report WAL that is durable where it must survive.
    ///
    /// # Errors
    /// I/O errors, and [`PgReplError::Invalid`] after the stream ended.
    pub async fn send(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgReplError> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let msg = codec::standby_status_update(
            write,
            flush,
            apply,
            codec::unix_micros_to_pg_micros(now_us),
            reply_requested,
        );
        let mut wr = self.wr.lock().await;
        if wr.ended {
            return Err(PgReplError::Invalid(
                "status update after the replication stream ended".into(),
            ));
        }
        wr.send("standby status update", &msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_data_must_continue_the_stream_exactly() {
        assert_eq!(next_position(Lsn(100), Lsn(100), 28), Ok(Lsn(128)));
        assert_eq!(next_position(Lsn(100), Lsn(100), 0), Ok(Lsn(100)));
        for (i, start) in [Lsn(99), Lsn(101), Lsn(0)].into_iter().enumerate() {
            let e = next_position(Lsn(100), start, 1).unwrap_err();
            assert!(e.contains("expected 0/64"), "#{i}: {e}");
        }
        assert!(next_position(Lsn(u64::MAX), Lsn(u64::MAX), 1).is_err());
    }
}
