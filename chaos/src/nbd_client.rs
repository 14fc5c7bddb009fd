//! A minimal NBD client: fixed-newstyle handshake with `NBD_OPT_GO`, then read, write, flush
//! and disconnect with simple replies, one request at a time.
//!
//! Wire encoding and parsing reuse the pure helpers of `tandem_core::nbd`.
//! [`NbdPool`] spreads concurrent callers over several connections and reconnects broken ones,
//! which is what a chaos workload needs when the proxy resets connections.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_core::nbd::{
    self, InfoRequest, ProtoError, RequestHeader, CLIENT_FLAG_FIXED_NEWSTYLE,
    CLIENT_FLAG_NO_ZEROES, CMD_DISC, CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_WRITE,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, GREETING_LEN, INFO_EXPORT, MAX_PAYLOAD,
    OPTION_REPLY_HEADER_LEN, OPT_GO, REP_ACK, REP_INFO, SIMPLE_REPLY_HEADER_LEN, TFLAG_READ_ONLY,
    TFLAG_SEND_FLUSH, TFLAG_SEND_FUA,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::ChaosError;

/// Longest option reply payload accepted during the handshake.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// How long the TCP connect and handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn protocol(e: ProtoError) -> ChaosError {
    ChaosError::NbdProtocol {
        reason: e.to_string(),
    }
}

/// One NBD connection in the transmission phase.
///
/// Not cancel-safe: if a request future is dropped half-way (for example by a timeout) the
/// connection's framing is unknown and the client must be discarded. [`NbdPool`] does that.
#[derive(Debug)]
pub struct NbdClient {
    stream: TcpStream,
    addr: SocketAddr,
    size: u64,
    flags: u16,
    next_handle: u64,
}

impl NbdClient {
    /// Connects to `addr` and negotiates `export` with `NBD_OPT_GO`.
    ///
    /// # Errors
    /// `Io` (unreachable, closed), `Timeout`, `NbdProtocol` (not a fixed-newstyle server,
    /// malformed reply), `NbdRefused` (unknown export, policy).
    pub async fn connect(addr: SocketAddr, export: &str) -> Result<Self, ChaosError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(addr, export))
            .await
            .map_err(|_| ChaosError::Timeout {
                what: format!("nbd handshake with {addr}"),
                after_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
            })?
    }

    async fn handshake(addr: SocketAddr, export: &str) -> Result<Self, ChaosError> {
        let io = |what: &str| format!("nbd {what} with {addr}");
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ChaosError::io(io("connect"), e))?;
        let _ = stream.set_nodelay(true);
        let mut greeting = [0u8; GREETING_LEN];
        stream
            .read_exact(&mut greeting)
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
            let mut header = [0u8; OPTION_REPLY_HEADER_LEN];
            stream
                .read_exact(&mut header)
                .await
                .map_err(|e| ChaosError::io(io("option reply"), e))?;
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
                .map_err(|e| ChaosError::io(io("option reply payload"), e))?;
            if reply.option != OPT_GO {
                return Err(ChaosError::NbdProtocol {
                    reason: format!("reply for option {} while negotiating GO", reply.option),
                });
            }
            match reply.reply_type {
                REP_ACK => break,
                REP_INFO => {
                    if payload.len() < 2 {
                        return Err(ChaosError::NbdProtocol {
                            reason: "NBD_REP_INFO shorter than its type field".into(),
                        });
                    }
                    let info = u16::from_be_bytes([payload[0], payload[1]]);
                    if info == INFO_EXPORT {
                        if payload.len() != 12 {
                            return Err(ChaosError::NbdProtocol {
                                reason: format!(
                                    "NBD_INFO_EXPORT of {} bytes, expected 12",
                                    payload.len()
                                ),
                            });
                        }
                        let mut size = [0u8; 8];
                        size.copy_from_slice(&payload[2..10]);
                        let flags = u16::from_be_bytes([payload[10], payload[11]]);
                        export_info = Some((u64::from_be_bytes(size), flags));
                    }
                }
                t if t & 0x8000_0000 != 0 => {
                    return Err(ChaosError::NbdRefused {
                        option: OPT_GO,
                        reply_type: t,
                        message: String::from_utf8_lossy(&payload).into_owned(),
                    });
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
            size,
            flags,
            next_handle: 1,
        })
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
    slots: Vec<Mutex<Option<NbdClient>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl NbdPool {
    /// A pool of `connections` (at least 1) to `export` at `addr`; connects lazily.
    pub fn new(addr: SocketAddr, export: impl Into<String>, connections: usize) -> Self {
        Self {
            addr,
            export: export.into(),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: Default::default(),
        }
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
            None => NbdClient::connect(self.addr, &self.export).await?,
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
