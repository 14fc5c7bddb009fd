//! Errors of the cluster client: "could not reach" (the connection failed or timed out) kept
//! apart from "peer said no" (a gRPC status from a peer that answered), as openraft does; each
//! names the call and the address. Pure: no I/O.

/// Why a call of the cluster client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made to `addr` (refused, unreachable, TLS, bad address).
    #[error("{call}: could not reach {addr}: {reason}")]
    Unreachable {
        /// The call (`status`, `audit`, `propose`, `operate`, `resync`, `verify`).
        call: &'static str,
        /// The address dialled.
        addr: String,
        /// The transport's reason, with its cause chain.
        reason: String,
    },
    /// The peer answered the call with an error status.
    #[error("{call}: {addr} said no: {message}")]
    Refused {
        /// The call.
        call: &'static str,
        /// The address that answered.
        addr: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The peer's message.
        message: String,
    },
    /// The peer answered, but with something that does not decode.
    #[error("{call}: undecodable reply from {addr}: {reason}")]
    Decode {
        /// The call.
        call: &'static str,
        /// The address that answered.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{call}: {addr} did not answer within {after_ms} ms")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The address asked.
        addr: String,
        /// How long we waited.
        after_ms: u64,
    },
    /// There was no address to ask.
    #[error("{call}: no coordinator address to ask")]
    NoAddress {
        /// The call.
        call: &'static str,
    },
}

impl ClientError {
    /// Builds [`ClientError::Refused`] from the status a peer answered with.
    pub fn refused(call: &'static str, addr: &str, status: &tonic::Status) -> Self {
        ClientError::Refused {
            call,
            addr: addr.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// True when trying again (the same peer or another) may succeed: the peer could not be
    /// reached, did not answer in time, or answered that it is unavailable (no leader yet, a
    /// connection lost mid-call).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            ClientError::Decode { .. } | ClientError::NoAddress { .. } => false,
        }
    }

    /// The gRPC status code when the peer said no.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What the peer said when it said no; otherwise the whole error as text.
    pub fn peer_message(&self) -> String {
        match self {
            ClientError::Refused { message, .. } => message.clone(),
            e => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_retryable_and_a_refusal_only_when_unavailable() {
        let cases = [
            (
                ClientError::Unreachable {
                    call: "status",
                    addr: "a:1".into(),
                    reason: "refused".into(),
                },
                true,
            ),
            (
                ClientError::refused("operate", "a:1", &tonic::Status::unavailable("no leader")),
                true,
            ),
            (
                ClientError::refused("operate", "a:1", &tonic::Status::invalid_argument("no")),
                false,
            ),
            (
                ClientError::Decode {
                    call: "audit",
                    addr: "a:1".into(),
                    reason: "x".into(),
                },
                false,
            ),
        ];
        for (i, (e, want)) in cases.iter().enumerate() {
            assert_eq!(e.is_retryable(), *want, "#{i}: {e}");
        }
    }

    #[test]
    fn errors_name_the_call_and_the_address() {
        let e = ClientError::refused("propose", "127.0.0.1:7101", &tonic::Status::not_found("x"));
        assert_eq!(e.to_string(), "propose: 127.0.0.1:7101 said no: x");
        assert_eq!(e.peer_message(), "x");
        assert_eq!(e.code(), Some(tonic::Code::NotFound));
    }
}
