//! A minimal NBD client: fixed-newstyle handshake with `NBD_OPT_GO`, then read, write, flush
//! and disconnect with simple replies, one request at a time.
//!
//! With [`NbdClientTls`] the client first sends `NBD_OPT_STARTTLS`, expects `NBD_REP_ACK`, runs a
//! TLS handshake on the same socket (the server must present the certificate of the expected
//! node; the client presents its own), and negotiates `NBD_OPT_GO` inside TLS. Without it the
//! connection is plaintext, and a server that requires TLS refuses `NBD_OPT_GO` with
//! `NBD_REP_ERR_TLS_REQD`.
//!
//! Wire encoding and parsing reuse the pure helpers of `tandem_core::nbd`.
//! [`NbdPool`] spreads concurrent callers over several connections and reconnects broken ones,
//! which is what a chaos workload needs when the proxy resets connections.

mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use tandem_core::nbd::{
    self, InfoRequest, OptionReply, ProtoError, RequestHeader, CLIENT_FLAG_FIXED_NEWSTYLE,
    CLIENT_FLAG_NO_ZEROES, CMD_DISC, CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_WRITE,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, GREETING_LEN, INFO_EXPORT, MAX_PAYLOAD,
    OPTION_REPLY_HEADER_LEN, OPT_GO, OPT_STARTTLS, REP_ACK, REP_ERR_TLS_REQD, REP_INFO,
    SIMPLE_REPLY_HEADER_LEN, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::ChaosError;
pub use tls::NbdClientTls;
use tls::Stream;

/// Longest option reply payload accepted during the handshake.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// How long the TCP connect and handshake (with TLS, the TLS handshake too) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn protocol(e: ProtoError) -> ChaosError {
    ChaosError::NbdProtocol {
        reason: e.to_string(),
    }
}

/// Reads one option reply (header and payload) during the handshake; `context` names the
/// read in an I/O error.
async fn read_option_reply(
    stream: &mut (impl AsyncRead + Unpin),
    context: &(dyn Fn(&str) -> String + Sync),
) -> Result<(OptionReply, Vec<u8>), ChaosError> {
    let mut header = [0u8; OPTION_REPLY_HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| ChaosError::io(context("option reply"), e))?;
    let reply = nbd::parse_option_reply(&header).map_err(protocol)?;
    if reply.length > MAX_OPTION_REPLY {
        return Err(ChaosError::NbdProtocol {
            reason: format!(
                "option reply of {} bytes, limit {MAX_OPTION_REPLY}",
                reply.length
            ),
        });
    }
    let mut payload = vec![0u8; reply.length as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| ChaosError::io(context("option reply payload"), e))?;
    Ok((reply, payload))
}

/// The error for an error reply `reply_type` to `option`, with a hint when the server
/// requires TLS and this client connected without it.
fn refused(option: u32, reply_type: u32, payload: &[u8], tls: bool) -> ChaosError {
    let mut message = String::from_utf8_lossy(payload).into_owned();
    if reply_type == REP_ERR_TLS_REQD && !tls {
        message.push_str(
            " (the export requires TLS: connect with the cluster's certificates, \
             NBD_OPT_STARTTLS)",
        );
    }
    ChaosError::NbdRefused {
        option,
        reply_type,
        message,
    }
}

/// With TLS 1.3 the server checks the client certificate after the client's side of the
/// handshake is done: its refusal is a TLS alert on the first read. Says so in the error.
fn certificate_refused(e: ChaosError, tls: bool) -> ChaosError {
    match e {
        ChaosError::Io { context, source }
            if tls && source.kind() == std::io::ErrorKind::InvalidData =>
        {
            ChaosError::Io {
                context: format!(
                    "{context} (the server ended TLS: it refused this client's certificate)"
                ),
                source,
            }
        }
        e => e,
    }
}

/// The export's size and transmission flags from an `NBD_REP_INFO` payload, when it is
/// `NBD_INFO_EXPORT` (other information types are skipped).
fn parse_info(payload: &[u8]) -> Result<Option<(u64, u16)>, ChaosError> {
    if payload.len() < 2 {
        return Err(ChaosError::NbdProtocol {
            reason: "NBD_REP_INFO shorter than its type field".into(),
        });
    }
    let info = u16::from_be_bytes([payload[0], payload[1]]);
    if info != INFO_EXPORT {
        return Ok(None);
    }
    if payload.len() != 12 {
        return Err(ChaosError::NbdProtocol {
            reason: format!("NBD_INFO_EXPORT of {} bytes, expected 12", payload.len()),
        });
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&payload[2..10]);
    let flags = u16::from_be_bytes([payload[10], payload[11]]);
    Ok(Some((u64::from_be_bytes(size), flags)))
}

/// One NBD connection in the transmission phase.
///
/// Not cancel-safe: if a request future is dropped half-way (for example by a timeout) the
/// connection's framing is unknown and the client must be discarded. [`NbdPool`] does that.
pub struct NbdClient {
    stream: Stream,
    addr: SocketAddr,
    tls: bool,
    size: u64,
    flags: u16,
    next_handle: u64,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("size", &self.size)
            .field("flags", &self.flags)
            .field("next_handle", &self.next_handle)
            .finish_non_exhaustive()
    }
}

impl NbdClient {
    /// Connects to `addr` in plaintext and negotiates `export` with `NBD_OPT_GO`.
    ///
    /// # Errors
    /// `Io` (unreachable, closed), `Timeout`, `NbdProtocol` (not a fixed-newstyle server,
    /// malformed reply), `NbdRefused` (unknown export, policy, TLS required).
    pub async fn connect(addr: SocketAddr, export: &str) -> Result<Self, ChaosError> {
        Self::connect_with(addr, export, None).await
    }

    /// Connects to `addr` and negotiates `export` with `NBD_OPT_GO`; with `tls`, upgrades to
    /// TLS with `NBD_OPT_STARTTLS` first (and negotiates inside TLS).
    ///
    /// # Errors
    /// As [`NbdClient::connect`]; with `tls` also `NbdRefused` for `NBD_OPT_STARTTLS` (the
    /// server has no TLS) and `Io` for a failed TLS handshake (server certificate not trusted
    /// or not the expected node's, client certificate refused).
    pub async fn connect_with(
        addr: SocketAddr,
        export: &str,
        tls: Option<&NbdClientTls>,
    ) -> Result<Self, ChaosError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(addr, export, tls))
            .await
            .map_err(|_| ChaosError::Timeout {
                what: format!(
                    "nbd handshake with {addr}{}",
                    if tls.is_some() { " (TLS)" } else { "" }
                ),
                after_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
            })?
    }

    /// Sends `NBD_OPT_STARTTLS` (after the client flags in `out`), expects `NBD_REP_ACK`, and
    /// runs the TLS handshake on the socket.
    async fn start_tls(
        mut tcp: TcpStream,
        addr: SocketAddr,
        out: &mut Vec<u8>,
        tls: &NbdClientTls,
    ) -> Result<Stream, ChaosError> {
        let io = |what: &str| format!("nbd {what} with {addr} (STARTTLS)");
        nbd::encode_option(OPT_STARTTLS, &[], out);
        tcp.write_all(out)
            .await
            .map_err(|e| ChaosError::io(io("option"), e))?;
        out.clear();
        let (reply, payload) = read_option_reply(&mut tcp, &io).await?;
        if reply.option != OPT_STARTTLS {
            return Err(ChaosError::NbdProtocol {
                reason: format!(
                    "reply for option {} while negotiating STARTTLS",
                    reply.option
                ),
            });
        }
        match reply.reply_type {
            REP_ACK => tls.upgrade(tcp, addr).await,
            t if t & 0x8000_0000 != 0 => Err(refused(OPT_STARTTLS, t, &payload, true)),
            t => Err(ChaosError::NbdProtocol {
                reason: format!("unexpected reply type {t:#x} to NBD_OPT_STARTTLS"),
            }),
        }
    }

    async fn handshake(
        addr: SocketAddr,
        export: &str,
        tls: Option<&NbdClientTls>,
    ) -> Result<Self, ChaosError> {
        let over = if tls.is_some() { " over TLS" } else { "" };
        let io = |what: &str| format!("nbd {what} with {addr}{over}");
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ChaosError::io(io("connect"), e))?;
        let _ = tcp.set_nodelay(true);
        let mut greeting = [0u8; GREETING_LEN];
        tcp.read_exact(&mut greeting)
            .await
            .map_err(|e| ChaosError::io(io("greeting"), e))?;
        let server_flags = nbd::parse_greeting(&greeting).map_err(protocol)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ChaosError::NbdProtocol {
                reason: format!("server at {addr} does not offer fixed newstyle"),
            });
        }
        let mut client_flags = CLIENT_FLAG_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            client_flags |= CLIENT_FLAG_NO_ZEROES;
        }
        let mut out = client_flags.to_be_bytes().to_vec();
        let mut stream: Stream = match tls {
            Some(tls) => Self::start_tls(tcp, addr, &mut out, tls).await?,
            None => Box::new(tcp),
        };
        let go = nbd::encode_info_request(&InfoRequest {
            name: export.to_string(),
            requests: Vec::new(),
        });
        nbd::encode_option(OPT_GO, &go, &mut out);
        stream
            .write_all(&out)
            .await
            .map_err(|e| ChaosError::io(io("option"), e))?;

        let mut export_info: Option<(u64, u16)> = None;
        loop {
            let (reply, payload) = read_option_reply(&mut stream, &io)
                .await
                .map_err(|e| certificate_refused(e, tls.is_some()))?;
            if reply.option != OPT_GO {
                return Err(ChaosError::NbdProtocol {
                    reason: format!("reply for option {} while negotiating GO", reply.option),
                });
            }
            match reply.reply_type {
                REP_ACK => break,
                REP_INFO => {
                    if let Some(info) = parse_info(&payload)? {
                        export_info = Some(info);
                    }
                }
                t if t & 0x8000_0000 != 0 => {
                    return Err(refused(OPT_GO, t, &payload, tls.is_some()));
                }
                t => {
                    return Err(ChaosError::NbdProtocol {
                        reason: format!("unexpected option reply type {t:#x}"),
                    });
                }
            }
        }
        let Some((size, flags)) = export_info else {
            return Err(ChaosError::NbdProtocol {
                reason: "server acknowledged GO without NBD_INFO_EXPORT".into(),
            });
        };
        Ok(Self {
            stream,
            addr,
            tls: tls.is_some(),
            size,
            flags,
            next_handle: 1,
        })
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags the server announced (`NBD_FLAG_*`).
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// True when the server announced the export read-only.
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    async fn request(
        &mut self,
        command: &'static str,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: &[u8],
    ) -> Result<(), ChaosError> {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        let header = RequestHeader {
            flags,
            kind,
            handle,
            offset,
            length,
        };
        let mut out = Vec::with_capacity(nbd::REQUEST_HEADER_LEN + data.len());
        nbd::encode_request(&header, data, &mut out);
        let addr = self.addr;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| ChaosError::io(format!("nbd {command} to {addr}"), e))?;
        if kind == CMD_DISC {
            return Ok(());
        }
        let mut reply = [0u8; SIMPLE_REPLY_HEADER_LEN];
        self.stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| ChaosError::io(format!("nbd {command} reply from {addr}"), e))?;
        let reply = nbd::parse_simple_reply(&reply).map_err(protocol)?;
        if reply.handle != handle {
            return Err(ChaosError::NbdProtocol {
                reason: format!(
                    "reply for handle {} while {handle} is pending",
                    reply.handle
                ),
            });
        }
        if reply.error.0 != 0 {
            return Err(ChaosError::NbdCommand {
                command,
                offset,
                length: u64::from(length),
                errno: reply.error.0,
            });
        }
        Ok(())
    }

    fn check_len(len: usize, offset: u64) -> Result<u32, ChaosError> {
        u32::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or_else(|| ChaosError::Config {
                field: "length",
                reason: format!("{len} bytes at offset {offset} is over the {MAX_PAYLOAD} limit"),
            })
    }

    /// Writes `data` at `offset`; with `fua` (when the server supports it) it is durable on
    /// return.
    ///
    /// # Errors
    /// `NbdCommand` with the server's errno (EPERM when read-only or fenced, ENOSPC past the
    /// end), `Io`, `NbdProtocol`, or `Config` for a payload over 32 MiB.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ChaosError> {
        let len = Self::check_len(data.len(), offset)?;
        let flags = if fua && self.flags & TFLAG_SEND_FUA != 0 {
            CMD_FLAG_FUA
        } else {
            0
        };
        self.request("write", CMD_WRITE, flags, offset, len, data)
            .await
    }

    /// Reads `len` bytes at `offset`.
    ///
    /// # Errors
    /// As [`NbdClient::write`].
    pub async fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ChaosError> {
        let length = Self::check_len(len, offset)?;
        self.request("read", CMD_READ, 0, offset, length, &[])
            .await?;
        let mut data = vec![0u8; len];
        let addr = self.addr;
        self.stream
            .read_exact(&mut data)
            .await
            .map_err(|e| ChaosError::io(format!("nbd read data from {addr}"), e))?;
        Ok(data)
    }

    /// Makes every completed write durable. A no-op when the server does not announce flush
    /// (its writes are then durable on completion).
    ///
    /// # Errors
    /// As [`NbdClient::write`].
    pub async fn flush(&mut self) -> Result<(), ChaosError> {
        if self.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.request("flush", CMD_FLUSH, 0, 0, 0, &[]).await
    }

    /// Sends `NBD_CMD_DISC` and closes the connection.
    ///
    /// # Errors
    /// `Io` when the request cannot be sent.
    pub async fn disconnect(mut self) -> Result<(), ChaosError> {
        self.request("disconnect", CMD_DISC, 0, 0, 0, &[]).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// Several NBD connections to one export, shared by concurrent callers; a connection that
/// fails with anything but a server error value (or whose request was cancelled) is dropped
/// and replaced on next use.
#[derive(Debug)]
pub struct NbdPool {
    addr: SocketAddr,
    export: String,
    tls: Option<NbdClientTls>,
    slots: Vec<Mutex<Option<NbdClient>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl NbdPool {
    /// A pool of `connections` (at least 1) to `export` at `addr`; connects lazily.
    pub fn new(addr: SocketAddr, export: impl Into<String>, connections: usize) -> Self {
        Self {
            addr,
            export: export.into(),
            tls: None,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        }
    }

    /// The same pool connecting over TLS (`NBD_OPT_STARTTLS`) with `tls`.
    #[must_use]
    pub fn with_tls(mut self, tls: NbdClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    async fn with_client<T>(
        &self,
        slot: usize,
        op: impl AsyncFnOnce(&mut NbdClient) -> Result<T, ChaosError>,
    ) -> Result<T, ChaosError> {
        let mut guard = self.slots[slot % self.slots.len()].lock().await;
        // Taken out while in use: if this future is dropped mid-request, the slot stays empty.
        let mut client = match guard.take() {
            Some(c) => c,
            None => NbdClient::connect_with(self.addr, &self.export, self.tls.as_ref()).await?,
        };
        let result = op(&mut client).await;
        if matches!(result, Ok(_) | Err(ChaosError::NbdCommand { .. })) {
            *guard = Some(client);
        }
        result
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes through the next connection in turn.
    ///
    /// # Errors
    /// As [`NbdClient::connect`] and [`NbdClient::write`].
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ChaosError> {
        self.with_client(self.pick(), async |c| c.write(offset, data, fua).await)
            .await
    }

    /// Reads through the next connection in turn.
    ///
    /// # Errors
    /// As [`NbdClient::connect`] and [`NbdClient::read`].
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ChaosError> {
        self.with_client(self.pick(), async |c| c.read(offset, len).await)
            .await
    }

    /// Flushes every connection (a flush covers only its own connection's writes unless the
    /// server announces multi-conn).
    ///
    /// # Errors
    /// The first error met.
    pub async fn flush(&self) -> Result<(), ChaosError> {
        for slot in 0..self.slots.len() {
            let open = self.slots[slot].lock().await.is_some();
            if open {
                self.with_client(slot, async |c| c.flush().await).await?;
            }
        }
        Ok(())
    }

    /// Disconnects every open connection.
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(c) = slot.lock().await.take() {
                let _ = c.disconnect().await;
            }
        }
    }
}
