//! NBD TCP server: accepts connections, negotiates an export (fixed newstyle), then serves
//! transmission requests against the export's [`VolumeBackend`], one request at a time.
//!
//! Bounds (see [`ServerOptions`]): a socket in the handshake holds one of at most
//! [`MAX_HANDSHAKES`] handshake places and must reach transmission within
//! [`HANDSHAKE_TIMEOUT`]; a transmission slot ([`Slots`]: [`MAX_CONNECTIONS`] in all,
//! [`MAX_CONNECTIONS_PER_PEER`] per peer address) is taken only when the client asks to enter
//! transmission, so idle or half-open sockets cannot lock real clients out; a client that
//! stalls in the middle of a request for [`STALL_TIMEOUT`] is closed. A connection silent
//! between requests is kept by default ([`IDLE_TIMEOUT`] is `None`): an attached disk may be
//! quiet for hours, and the slot caps bound what silent connections can hold.
//! TLS ([`NbdTls`], given to [`serve_with_tls`]): every option before `NBD_OPT_STARTTLS` is
//! answered `NBD_REP_ERR_TLS_REQD` (`NBD_OPT_ABORT` is served; `NBD_OPT_EXPORT_NAME`, which
//! cannot carry an error, is closed); after the `NBD_REP_ACK` the TLS handshake runs on the same
//! socket, inside the handshake timeout, and option haggling continues inside TLS.
//! Memory per connection is bounded: requests are handled in order, so at most one request's
//! payload (≤ [`proto::MAX_PAYLOAD`]) is held at a time, and it is moved, never copied, on its
//! way to the backend.
//!
//! Shutdown: when the watch value turns `true` (or its sender is dropped) the server stops
//! accepting, every connection finishes the request it is handling, replies, and closes;
//! [`serve`] returns once all connections are gone (or after [`SHUTDOWN_GRACE`], when the
//! stragglers are aborted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::proto::{self, ClientOption, Command, Errno};
use super::slots::{Slot, Slots};
use super::tls::{NbdTls, Stream};
use super::{ExportMap, NbdError};
use crate::volume::VolumeBackend;

/// Most connections in transmission at once (all peers). A client over the cap is refused
/// during option haggling (`NBD_REP_ERR_POLICY` to `NBD_OPT_GO`; `NBD_OPT_EXPORT_NAME`, which
/// cannot carry an error, is closed).
pub const MAX_CONNECTIONS: usize = 128;

/// Most connections in transmission at once from one peer address: one host cannot take every
/// slot.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;

/// Most sockets in the handshake at once (accepted, not yet in transmission). Larger than
/// [`MAX_CONNECTIONS`] because each is short-lived ([`HANDSHAKE_TIMEOUT`]); a socket accepted
/// over this cap is closed at once, before the greeting.
pub const MAX_HANDSHAKES: usize = 256;

/// How long a client has from `accept` to entering transmission (greeting, flags, options,
/// and with TLS the TLS handshake after `NBD_OPT_STARTTLS`).
/// A client that stalls mid-handshake is dropped after this and logged with its address.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection in transmission may stay silent between requests before the server
/// closes it and frees its slot: by default never. A block device attached through NBD (the
/// Linux nbd driver, a qemu VM disk) sends no keepalive and may be quiet for hours; closing it
/// fails the application's next I/O unless its client reconnects. Silent connections are
/// bounded by [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_PEER`] instead.
pub const IDLE_TIMEOUT: Option<Duration> = None;

/// How long a client may stall in the middle of a request (its write payload not all sent, or
/// its reply not read) before the server closes it and frees its slot. Serving a request is
/// the backend's time, not the client's, and does not count.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for connections to finish their current request (a backend that
/// hangs, or a client that stops reading replies) before aborting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Socket buffer size for each direction of a connection.
const IO_BUFFER: usize = 128 * 1024;

/// The limits of one NBD server. [`ServerOptions::default`] is what a replicator serves with
/// (the constants of this module); tests shorten the timeouts and lower the caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// From `accept` to transmission; see [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Longest silence between requests (`None`: unbounded); see [`IDLE_TIMEOUT`].
    pub idle_timeout: Option<Duration>,
    /// Longest stall inside a request; see [`STALL_TIMEOUT`].
    pub stall_timeout: Duration,
    /// Transmission slots in all; see [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Transmission slots per peer address; see [`MAX_CONNECTIONS_PER_PEER`].
    pub max_connections_per_peer: usize,
    /// Sockets in the handshake at once; see [`MAX_HANDSHAKES`].
    pub max_handshakes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_peer: MAX_CONNECTIONS_PER_PEER,
            max_handshakes: MAX_HANDSHAKES,
        }
    }
}

/// Serves `exports` on `listener` with the default [`ServerOptions`] until `shutdown` turns
/// true (or its sender is dropped), requiring TLS when `tls` is given; see [`serve_with_tls`].
pub async fn serve(
    listener: TcpListener,
    exports: Arc<ExportMap>,
    tls: Option<NbdTls>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with_tls(listener, exports, ServerOptions::default(), tls, shutdown).await;
}

/// Serves `exports` in plaintext on `listener` within `options`; see [`serve_with_tls`].
pub async fn serve_with(
    listener: TcpListener,
    exports: Arc<ExportMap>,
    options: ServerOptions,
    shutdown: watch::Receiver<bool>,
) {
    serve_with_tls(listener, exports, options, None, shutdown).await;
}

/// Serves `exports` on `listener` within `options` until `shutdown` turns true (or its sender
/// is dropped), then waits for every connection to finish its current request and close.
/// With `tls`, every client must upgrade with `NBD_OPT_STARTTLS` (see the module docs).
///
/// Accept errors (such as running out of file descriptors) are logged and retried after a
/// short pause; connection errors are logged and end only that connection.
pub async fn serve_with_tls(
    listener: TcpListener,
    exports: Arc<ExportMap>,
    options: ServerOptions,
    tls: Option<NbdTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(options.max_handshakes));
    let slots = Slots::new(options.max_connections, options.max_connections_per_peer);
    let mut refused = RefusalLog::default();
    let mut tasks = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, exports = exports.len(), ?options, tls = tls.is_some(), "nbd server listening");
    }
    loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                warn!(error = %e, "nbd connection task panicked");
            }
        }
        let accepted = tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Accept first and close what is over the cap: the backlog never fills with
                // sockets that would be served after everything already waiting.
                let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                    refused.note(peer, options.max_handshakes);
                    drop(stream);
                    continue;
                };
                let exports = Arc::clone(&exports);
                let shutdown = shutdown.clone();
                let slots = slots.clone();
                let tls = tls.clone();
                tasks.spawn(async move {
                    let started = Started {
                        peer,
                        options,
                        handshake,
                        tls,
                    };
                    match handle_connection(stream, started, exports, slots, shutdown).await {
                        Ok(()) => debug!(%peer, "nbd connection closed"),
                        Err(e @ NbdError::IdleTimeout { .. }) => {
                            info!(%peer, error = %e, "nbd connection closed")
                        }
                        Err(e) => warn!(%peer, error = %e, "nbd connection ended with an error"),
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "nbd accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    info!(
        connections = tasks.len(),
        "nbd server shutting down; draining connections"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                warn!(error = %e, "nbd connection task panicked");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = tasks.len(),
            grace = ?SHUTDOWN_GRACE,
            "nbd connections still busy after the grace period; aborting them"
        );
        tasks.shutdown().await;
    }
}

/// Logs sockets closed because every handshake place was taken: the first at once, then at
/// most one line a second with the count (a flood must not become a flood of log lines).
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, limit: usize) {
        self.unlogged += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            warn!(
                %peer,
                refused = self.unlogged,
                limit,
                "nbd handshake places all taken: closed new connection(s) before the greeting"
            );
            self.last = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

/// Resolves once shutdown is requested: the value is true, or the sender is gone.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // An Err means the sender was dropped: nobody can ever ask us to keep running.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a connection task starts with: who, within which limits, and its handshake place.
struct Started {
    peer: SocketAddr,
    options: ServerOptions,
    handshake: OwnedSemaphorePermit,
    /// TLS required (`None`: plaintext).
    tls: Option<NbdTls>,
}

/// The buffered stream of a connection: reads through the `BufReader`, writes through the
/// `BufWriter` (one request at a time, so one object serves both directions).
type Buffered = BufReader<BufWriter<Stream>>;

fn buffered(stream: Stream) -> Buffered {
    BufReader::with_capacity(IO_BUFFER, BufWriter::with_capacity(IO_BUFFER, stream))
}

struct Connection {
    peer: SocketAddr,
    io: Buffered,
    /// TLS this server requires, until the client has upgraded (then `None`).
    tls_pending: Option<NbdTls>,
    /// Whether the connection runs over TLS now.
    tls_on: bool,
    /// Who the client certificate names (TLS only).
    identity: Option<String>,
    /// Why the client certificate may not use NBD (then every option is refused).
    refusal: Option<String>,
    shutdown: watch::Receiver<bool>,
    out: Vec<u8>,
    /// Bound on the wait for the next request ([`ServerOptions::idle_timeout`]).
    idle_timeout: Option<Duration>,
    /// Bound on reading a payload and writing a reply ([`ServerOptions::stall_timeout`]).
    stall_timeout: Duration,
}

/// What the negotiation phase ended with.
enum Negotiated {
    /// Enter transmission on this export (name, backend), holding this slot.
    Export(String, Arc<dyn VolumeBackend>, Slot),
    /// The client aborted, closed, or the server is shutting down.
    Closed,
}

async fn handle_connection(
    stream: TcpStream,
    started: Started,
    exports: Arc<ExportMap>,
    slots: Slots,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError> {
    let Started {
        peer,
        options,
        handshake,
        tls,
    } = started;
    stream.set_nodelay(true)?;
    let mut conn = Connection {
        peer,
        io: buffered(Box::new(stream)),
        tls_pending: tls,
        tls_on: false,
        identity: None,
        refusal: None,
        shutdown,
        out: Vec::with_capacity(256),
        idle_timeout: options.idle_timeout,
        stall_timeout: options.stall_timeout,
    };
    debug!(%peer, "nbd connection accepted");
    let negotiated =
        tokio::time::timeout(options.handshake_timeout, conn.negotiate(&exports, &slots))
            .await
            .unwrap_or(Err(NbdError::HandshakeTimeout {
                after: options.handshake_timeout,
            }));
    // The handshake place is free again whatever the outcome.
    drop(handshake);
    let result = match negotiated {
        Ok(Negotiated::Export(name, backend, slot)) => {
            let writes = tandem_core::metrics::global().counter(
                "tandem_nbd_writes_total",
                "NBD write and write-zeroes requests completed successfully, per export.",
                &[("export", &name)],
            );
            let served = conn.transmit(backend.as_ref(), &writes).await;
            drop(slot);
            served
        }
        Ok(Negotiated::Closed) => Ok(()),
        Err(e) => Err(e),
    };
    // Best effort and bounded: the client may already be gone, or may not read.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = conn.io.flush().await;
        let _ = conn.io.shutdown().await;
    })
    .await;
    result
}

impl Connection {
    /// Reads exactly `buf.len()` bytes, unless shutdown is requested first or the client closes
    /// cleanly before the first byte. Returns false in those two cases.
    async fn read_message(&mut self, buf: &mut [u8]) -> Result<bool, NbdError> {
        let read = tokio::select! {
            biased;
            () = shutdown_requested(&mut self.shutdown) => return Ok(false),
            read = self.io.read(&mut buf[..1]) => read?,
        };
        if read == 0 {
            return Ok(false);
        }
        self.read_rest(&mut buf[1..]).await
    }

    /// Reads exactly `buf.len()` bytes; returns false if shutdown is requested first (a
    /// half-received request was never acknowledged, so dropping it loses nothing).
    async fn read_rest(&mut self, buf: &mut [u8]) -> Result<bool, NbdError> {
        tokio::select! {
            biased;
            read = self.io.read_exact(buf) => {
                read?;
                Ok(true)
            }
            () = shutdown_requested(&mut self.shutdown) => Ok(false),
        }
    }

    /// Reads exactly `len` more bytes onto the end of `buf` (into its spare capacity: tokio's
    /// `read_to_end` tracks what is initialised, so nothing is zeroed first, and a buffer
    /// made with room for `len` never grows); false if shutdown is requested first, as
    /// [`Connection::read_rest`].
    async fn read_payload(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<bool, NbdError> {
        let want = buf.len() + len;
        let mut limited = (&mut self.io).take(len as u64);
        tokio::select! {
            biased;
            read = limited.read_to_end(buf) => {
                read?;
                if buf.len() < want {
                    return Err(NbdError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the client closed after {} of a {len}-byte payload", len - (want - buf.len())),
                    )));
                }
                Ok(true)
            }
            () = shutdown_requested(&mut self.shutdown) => Ok(false),
        }
    }

    /// Sends and clears the staged output.
    async fn send_out(&mut self) -> Result<(), NbdError> {
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Answers `NBD_OPT_STARTTLS`: an error when this server has no TLS or the connection is
    /// already upgraded; else `NBD_REP_ACK` and the TLS handshake on the same socket.
    async fn start_tls(&mut self) -> Result<(), NbdError> {
        let Some(tls) = self.tls_pending.take() else {
            let (reply, message) = if self.tls_on {
                (proto::REP_ERR_INVALID, "TLS is already negotiated")
            } else {
                (proto::REP_ERR_UNSUP, "TLS is not configured on this server")
            };
            self.stage_option_error(proto::OPT_STARTTLS, reply, message);
            return self.send_out().await;
        };
        // Bytes sent before our ACK would be taken as options inside TLS: refuse them.
        let waiting = self.io.buffer().len();
        if waiting > 0 {
            return Err(NbdError::StartTlsPipelined { bytes: waiting });
        }
        proto::encode_option_reply(proto::OPT_STARTTLS, proto::REP_ACK, &[], &mut self.out);
        self.send_out().await?;
        let placeholder: Stream = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.io, buffered(placeholder));
        let (stream, client) = tls.upgrade(plain.into_inner().into_inner()).await?;
        match &client.refusal {
            None => info!(peer = %self.peer, client = %client.name, "nbd client upgraded to TLS"),
            Some(why) => {
                warn!(peer = %self.peer, client = %client.name, reason = %why, "nbd client upgraded to TLS but is refused")
            }
        }
        self.io = buffered(stream);
        self.tls_on = true;
        self.identity = Some(client.name);
        self.refusal = client.refusal;
        Ok(())
    }

    /// After the upgrade, for a certificate that may not use NBD: every option but
    /// `NBD_OPT_ABORT` is answered `NBD_REP_ERR_POLICY` with the reason (`NBD_OPT_EXPORT_NAME`
    /// closes). Returns true when the option was answered here.
    async fn refuse_not_allowed(&mut self, option: u32) -> Result<bool, NbdError> {
        let Some(why) = self.refusal.clone() else {
            return Ok(false);
        };
        match option {
            proto::OPT_ABORT => Ok(false),
            proto::OPT_EXPORT_NAME => Err(NbdError::NotAllowed(why)),
            _ => {
                self.stage_option_error(option, proto::REP_ERR_POLICY, &why);
                self.send_out().await?;
                Ok(true)
            }
        }
    }

    /// Before the upgrade on a TLS-only server: answers every option but `NBD_OPT_STARTTLS` and
    /// `NBD_OPT_ABORT` with `NBD_REP_ERR_TLS_REQD` (its payload unread beyond its length).
    /// Returns true when the option was answered here.
    async fn refuse_before_tls(&mut self, option: u32) -> Result<bool, NbdError> {
        if self.tls_pending.is_none() {
            return Ok(false);
        }
        match proto::before_tls(option) {
            proto::BeforeTls::StartTls | proto::BeforeTls::Abort => Ok(false),
            proto::BeforeTls::Close => Err(NbdError::TlsRequired),
            proto::BeforeTls::TlsRequired => {
                debug!(peer = %self.peer, option, "option refused before TLS");
                let message = format!("option {option} not permitted before NBD_OPT_STARTTLS");
                self.stage_option_error(option, proto::REP_ERR_TLS_REQD, &message);
                self.send_out().await?;
                Ok(true)
            }
        }
    }

    fn stage_option_error(&mut self, option: u32, reply_type: u32, message: &str) {
        // Error strings are limited like every NBD string; cut on a character boundary.
        let mut end = message.len().min(proto::MAX_NAME_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        proto::encode_option_reply(
            option,
            reply_type,
            &message.as_bytes()[..end],
            &mut self.out,
        );
    }

    /// The handshake and option haggling (fixed newstyle). A transmission slot is taken only
    /// here, when the client asks to enter transmission on an export that exists.
    async fn negotiate(
        &mut self,
        exports: &ExportMap,
        slots: &Slots,
    ) -> Result<Negotiated, NbdError> {
        proto::encode_greeting(&mut self.out);
        self.send_out().await?;
        let mut flags = [0u8; 4];
        if !self.read_message(&mut flags).await? {
            return Ok(Negotiated::Closed);
        }
        let client = proto::parse_client_flags(&flags)?;
        let mut refusals = 0u32;
        loop {
            let mut header = [0u8; proto::OPTION_HEADER_LEN];
            if !self.read_message(&mut header).await? {
                return Ok(Negotiated::Closed);
            }
            // Length is checked against MAX_OPTION_LEN before this allocation.
            let header = proto::parse_option_header(&header)?;
            if self.tls_pending.is_some() && header.option == proto::OPT_EXPORT_NAME {
                return Err(NbdError::TlsRequired);
            }
            let mut payload = vec![0u8; header.length as usize];
            if !self.read_rest(&mut payload).await? {
                return Ok(Negotiated::Closed);
            }
            if self.refuse_before_tls(header.option).await?
                || self.refuse_not_allowed(header.option).await?
            {
                continue;
            }
            let option = match proto::parse_option(header.option, &payload) {
                Ok(option) => option,
                Err(e) if header.option == proto::OPT_EXPORT_NAME => return Err(e.into()),
                Err(e) => {
                    debug!(peer = %self.peer, error = %e, "invalid option");
                    self.stage_option_error(header.option, proto::REP_ERR_INVALID, &e.to_string());
                    self.send_out().await?;
                    continue;
                }
            };
            match option {
                ClientOption::ExportName(name) => {
                    let Some(backend) = exports.get(&name) else {
                        return Err(NbdError::UnknownExport { name });
                    };
                    // EXPORT_NAME cannot be answered with an error: over a cap, close.
                    let slot = slots
                        .try_take(self.peer.ip())
                        .map_err(NbdError::TooManyConnections)?;
                    let flags =
                        proto::transmission_flags(backend.writable(), backend.can_multi_conn());
                    proto::encode_export_name_reply(
                        backend.size(),
                        flags,
                        client.no_zeroes,
                        &mut self.out,
                    );
                    self.send_out().await?;
                    info!(peer = %self.peer, export = %name, tls = self.tls_on, client = self.identity.as_deref().unwrap_or("-"), "nbd client entered transmission");
                    return Ok(Negotiated::Export(name, backend, slot));
                }
                ClientOption::Abort => {
                    proto::encode_option_reply(
                        proto::OPT_ABORT,
                        proto::REP_ACK,
                        &[],
                        &mut self.out,
                    );
                    // The client may close before reading the ACK; that is fine.
                    let _ = self.send_out().await;
                    return Ok(Negotiated::Closed);
                }
                ClientOption::List => {
                    for name in exports.names() {
                        proto::encode_rep_server(&name, &mut self.out);
                    }
                    proto::encode_option_reply(proto::OPT_LIST, proto::REP_ACK, &[], &mut self.out);
                    self.send_out().await?;
                }
                ClientOption::Info(request) | ClientOption::Go(request) => {
                    let go = header.option == proto::OPT_GO;
                    let Some(backend) = exports.get(&request.name) else {
                        let message = format!("no export named {:?}", request.name);
                        self.stage_option_error(header.option, proto::REP_ERR_UNKNOWN, &message);
                        self.send_out().await?;
                        continue;
                    };
                    let slot = if go {
                        match slots.try_take(self.peer.ip()) {
                            Ok(slot) => Some(slot),
                            Err(refusal) => {
                                // The client may try again (or abort) in this negotiation;
                                // the handshake timeout still bounds it. One warning per
                                // connection: a client asking in a loop is not a log flood.
                                refusals += 1;
                                if refusals == 1 {
                                    warn!(peer = %self.peer, export = %request.name, %refusal, "nbd client refused: connection cap reached");
                                } else {
                                    debug!(peer = %self.peer, %refusal, refusals, "nbd client refused again");
                                }
                                let message = format!("too many connections: {refusal}");
                                self.stage_option_error(
                                    header.option,
                                    proto::REP_ERR_POLICY,
                                    &message,
                                );
                                self.send_out().await?;
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let flags =
                        proto::transmission_flags(backend.writable(), backend.can_multi_conn());
                    proto::encode_info_export(header.option, backend.size(), flags, &mut self.out);
                    if request.requests.contains(&proto::INFO_BLOCK_SIZE) {
                        proto::encode_info_block_size(
                            header.option,
                            proto::BLOCK_SIZE,
                            &mut self.out,
                        );
                    }
                    proto::encode_option_reply(header.option, proto::REP_ACK, &[], &mut self.out);
                    self.send_out().await?;
                    if let Some(slot) = slot {
                        info!(peer = %self.peer, export = %request.name, tls = self.tls_on, client = self.identity.as_deref().unwrap_or("-"), "nbd client entered transmission");
                        return Ok(Negotiated::Export(request.name, backend, slot));
                    }
                }
                ClientOption::StartTls => self.start_tls().await?,
                ClientOption::Unsupported(option) => {
                    self.stage_option_error(option, proto::REP_ERR_UNSUP, "option not supported");
                    self.send_out().await?;
                }
            }
        }
    }

    /// The transmission phase: one request at a time, simple replies. Waiting for a request is
    /// bounded by the idle timeout (none by default); receiving its payload and sending its
    /// reply by the stall timeout; serving it is not (that is the backend's time, not the
    /// client's silence).
    async fn transmit(
        &mut self,
        backend: &dyn VolumeBackend,
        writes: &tandem_core::metrics::Counter,
    ) -> Result<(), NbdError> {
        let (idle, limit) = (self.idle_timeout, self.stall_timeout);
        loop {
            let mut raw = [0u8; proto::REQUEST_HEADER_LEN];
            let got = match idle {
                Some(idle) => bounded(idle, self.read_message(&mut raw)).await?,
                None => self.read_message(&mut raw).await?,
            };
            if !got {
                return Ok(());
            }
            // Bad magic or an oversized write payload: framing cannot continue, close.
            let header = proto::parse_request_header(&raw)?;
            // The payload is read into its own buffer (a reused one: the image write gives
            // it back, see `tandem_core::buffers`) and moved from here to the backend (and by
            // `GroupVolume` into the journal and back to the image): never copied, and never
            // zeroed before the socket fills it.
            let mut data = Vec::new();
            if header.payload_len() > 0 {
                data = tandem_core::buffers::take(header.payload_len());
                if !bounded(limit, self.read_payload(&mut data, header.payload_len())).await? {
                    return Ok(());
                }
            }
            let command = match proto::check_request(&header, backend.size(), backend.writable()) {
                Ok(Command::Disconnect) => return Ok(()),
                Ok(command) => command,
                Err(errno) => {
                    debug!(peer = %self.peer, ?header, ?errno, "request refused");
                    bounded(limit, self.reply(header.handle, Err(errno))).await?;
                    continue;
                }
            };
            let is_write = matches!(command, Command::Write { .. } | Command::WriteZeroes { .. });
            let result = execute(backend, command, data).await.map_err(|e| {
                warn!(peer = %self.peer, ?header, error = %e, "volume request failed");
                e.nbd_errno()
            });
            if is_write && result.is_ok() {
                writes.inc();
                // Durable (and, in sync mode, at the replica) but not yet answered.
                tandem_core::fault::check("primary-before-ack").map_err(NbdError::Io)?;
            }
            bounded(limit, self.reply(header.handle, result)).await?;
        }
    }

    async fn reply(&mut self, handle: u64, result: Result<Vec<u8>, Errno>) -> Result<(), NbdError> {
        match result {
            Ok(data) => {
                proto::encode_simple_reply(Errno::OK, handle, &mut self.out);
                self.io.write_all(&self.out).await?;
                self.io.write_all(&data).await?;
            }
            Err(errno) => {
                proto::encode_simple_reply(errno, handle, &mut self.out);
                self.io.write_all(&self.out).await?;
            }
        }
        self.out.clear();
        self.io.flush().await?;
        Ok(())
    }
}

/// Runs `io` (a read or write of the socket in transmission), failing with
/// [`NbdError::IdleTimeout`] if it makes no end within `limit`.
async fn bounded<T>(
    limit: Duration,
    io: impl std::future::Future<Output = Result<T, NbdError>>,
) -> Result<T, NbdError> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or(Err(NbdError::IdleTimeout { after: limit }))
}

/// Runs one validated command; returns the read data (empty for other commands).
async fn execute(
    backend: &dyn VolumeBackend,
    command: Command,
    data: Vec<u8>,
) -> Result<Vec<u8>, crate::volume::VolumeError> {
    match command {
        Command::Read { offset, len } => {
            let data = backend.read(offset, len).await?;
            if data.len() != len as usize {
                return Err(crate::volume::VolumeError::Backend {
                    what: format!(
                        "backend returned {} bytes for a {len}-byte read at offset {offset}",
                        data.len()
                    ),
                    retryable: false,
                    errno: Errno::EIO,
                });
            }
            Ok(data)
        }
        Command::Write { offset, fua, .. } => {
            backend.write(offset, data, fua).await?;
            Ok(Vec::new())
        }
        Command::WriteZeroes { offset, len, fua } => {
            backend.write_zeroes(offset, len, fua).await?;
            Ok(Vec::new())
        }
        Command::Trim { offset, len, fua } => {
            backend.trim(offset, len).await?;
            if fua {
                backend.flush().await?;
            }
            Ok(Vec::new())
        }
        Command::Flush => {
            backend.flush().await?;
            Ok(Vec::new())
        }
        // Handled by the caller; nothing to do here.
        Command::Disconnect => Ok(Vec::new()),
    }
}
