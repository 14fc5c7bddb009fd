//! Pure NBD wire format: constants, parsers that never panic and return `Incomplete` when they
//! need more bytes, request validation, and reply encoders. No I/O lives here: the server
//! (`tandem_replicator::nbd::server`) and the chaos harness's client own the sockets.
//!
//! Reference: the NBD protocol spec (NetworkBlockDevice/nbd `doc/proto.md`), fixed newstyle
//! negotiation with simple replies only (no structured replies, no extended headers); TLS by
//! `NBD_OPT_STARTTLS` (the gate before the upgrade is [`before_tls`]; the TLS itself is the
//! server's).
//!
//! - [`wire`]: magic numbers, flags, codes, lengths, limits, `Errno`, `ProtoError`.
//! - [`handshake`]: greeting, client flags, options and option replies.
//! - [`transmission`]: requests, their validation, transmission flags and simple replies.
//!
//! Everything is re-exported here, so `tandem_core::nbd::X` names any item.

pub mod handshake;
pub mod transmission;
pub mod wire;

pub use handshake::*;
pub use transmission::*;
pub use wire::*;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&bytes);
            let _ = parse_option_request(&bytes);
            let _ = parse_client_flags(&bytes);
            let _ = parse_greeting(&bytes);
            let _ = parse_option_reply(&bytes);
            let _ = parse_simple_reply(&bytes);
            if bytes.len() >= 4 {
                let option = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % 16;
                let _ = parse_option(option, &bytes[4..]);
            }
            if let Ok(h) = parse_request_header(&bytes) {
                let _ = check_request(&h, u64::from(bytes.len() as u32) << 20, bytes.len() % 2 == 0);
            }
        }

    }
}
