//! SCRAM-SHA-256 client (RFC 5802, RFC 7677) as PostgreSQL speaks it, pure: no channel
//! binding (`n,,`), an empty user name (PostgreSQL takes the user from the startup message),
//! the nonce given by the caller, HMAC/SHA-256/PBKDF2 from `ring`.
//!
//! The exchange: [`ScramClient::new`] → `client_first()` (SASLInitialResponse) →
//! [`ScramClient::server_first`] with the server's challenge → client-final (SASLResponse) →
//! [`ScramClient::verify_server_final`] checks the server's signature, which proves the server
//! knew the password too. The password is used as given: SASLprep is the identity for ASCII
//! passwords; a non-ASCII password that SASLprep would change does not match what PostgreSQL
//! stored.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// The SASL mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The largest iteration count accepted from a server: PostgreSQL's default is 4096; a hostile
/// server could otherwise make the client spin for hours.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Why a SCRAM exchange failed on the client side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The server's message does not follow RFC 5802.
    #[error("SCRAM {step} message from the server is malformed: {reason}")]
    Malformed {
        /// `server-first` or `server-final`.
        step: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The server's final message reports an error (`e=...`).
    #[error("the server rejected the SCRAM exchange: {0}")]
    ServerError(String),
    /// The server's signature does not match: it does not know the password (or a man in the
    /// middle answered).
    #[error("the server's SCRAM signature does not match: the server could not prove it knows the password")]
    BadServerSignature,
    /// A message was handled out of order.
    #[error("SCRAM message out of order: {0}")]
    OutOfOrder(&'static str),
}

/// State of one SCRAM-SHA-256 exchange. Its `Debug` never shows the password.
pub struct ScramClient {
    password: String,
    nonce: String,
    client_first_bare: String,
    /// The server signature expected in server-final, once client-final is built.
    expected_server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("password", &"<redacted>")
            .field("nonce", &self.nonce)
            .field(
                "expected_server_signature",
                &self.expected_server_signature.is_some(),
            )
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A new exchange for `user` (PostgreSQL: empty) with `password` and a client `nonce`
    /// (printable ASCII without `,`; [`random_nonce`] makes one).
    pub fn new(user: &str, password: &str, nonce: &str) -> ScramClient {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            client_first_bare: format!("n={user},r={nonce}"),
            expected_server_signature: None,
        }
    }

    /// The client-first message (GS2 header `n,,` + client-first-bare).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes the server-first message and returns the client-final message (with the proof).
    ///
    /// # Errors
    /// [`ScramError::Malformed`] when the message lacks `r=`, `s=` or `i=`, its nonce does not
    /// extend ours, the salt is not base64 or the iteration count is 0 or above
    /// [`MAX_ITERATIONS`].
    pub fn server_first(&mut self, server_first: &str) -> Result<String, ScramError> {
        let bad = |reason: String| ScramError::Malformed {
            step: "server-first",
            reason,
        };
        let (mut nonce, mut salt, mut iters) = (None, None, None);
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iters = Some(v),
                Some(("m", _)) => return Err(bad("mandatory extension 'm' not supported".into())),
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| bad("no nonce (r=)".into()))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(bad(
                "the server nonce does not extend the client nonce".into()
            ));
        }
        if !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(bad(
                "the nonce has characters outside printable ASCII".into()
            ));
        }
        let salt = B64
            .decode(salt.ok_or_else(|| bad("no salt (s=)".into()))?)
            .map_err(|e| bad(format!("salt is not base64: {e}")))?;
        let iters_text = iters.ok_or_else(|| bad("no iteration count (i=)".into()))?;
        let iters = iters_text
            .parse::<u32>()
            .ok()
            .filter(|i| *i <= MAX_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                bad(format!(
                    "iteration count {iters_text:?} is not in 1..={MAX_ITERATIONS}"
                ))
            })?;

        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iters,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.expected_server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message.
    ///
    /// # Errors
    /// [`ScramError::ServerError`] for `e=...`, [`ScramError::BadServerSignature`] when the
    /// signature differs, [`ScramError::Malformed`] when it is neither, and
    /// [`ScramError::OutOfOrder`] before [`ScramClient::server_first`].
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), ScramError> {
        let expected = self
            .expected_server_signature
            .as_ref()
            .ok_or(ScramError::OutOfOrder("server-final before server-first"))?;
        let first = server_final.split(',').next().unwrap_or("");
        if let Some(e) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(e.to_owned()));
        }
        let v = first.strip_prefix("v=").ok_or(ScramError::Malformed {
            step: "server-final",
            reason: "neither v= nor e=".into(),
        })?;
        let sig = B64.decode(v).map_err(|e| ScramError::Malformed {
            step: "server-final",
            reason: format!("signature is not base64: {e}"),
        })?;
        let expected_key = hmac::Key::new(hmac::HMAC_SHA256, expected);
        // Compared through HMAC verification, which is constant-time.
        let tag = hmac::sign(&expected_key, &sig);
        hmac::verify(&expected_key, expected, tag.as_ref())
            .map_err(|_| ScramError::BadServerSignature)
    }
}

/// A fresh client nonce: 18 random bytes, base64 (24 printable characters, no `,`).
///
/// # Errors
/// When the system's random source fails.
pub fn random_nonce() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 18];
    ring::rand::SystemRandom::new().fill(&mut b)?;
    Ok(B64.encode(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    #[test]
    fn rfc7677_test_vector_gives_the_published_proof_and_accepts_the_server_signature() {
        let mut c = ScramClient::new("user", "pencil", NONCE);
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let final_msg = c.server_first(SERVER_FIRST).unwrap();
        assert_eq!(
            final_msg,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_wrong_server_signature_or_an_error_is_refused() {
        let mut c = ScramClient::new("user", "pencil", NONCE);
        c.server_first(SERVER_FIRST).unwrap();
        assert_eq!(
            c.verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::BadServerSignature)
        );
        assert_eq!(
            c.verify_server_final("e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
        assert!(matches!(
            c.verify_server_final("x=1"),
            Err(ScramError::Malformed { .. })
        ));
    }

    #[test]
    fn a_wrong_password_gives_a_different_proof() {
        let mut c = ScramClient::new("user", "pencil2", NONCE);
        let f = c.server_first(SERVER_FIRST).unwrap();
        assert!(!f.ends_with("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
        assert_eq!(
            c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn malformed_server_first_messages_are_refused_with_a_reason() {
        let cases = [
            ("s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "no nonce"),
            (
                "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "does not extend",
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "does not extend",
            ),
            ("r=rOprNGfwEbeRWgbNEkqOx,i=4096", "no salt"),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096", "not base64"),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
                "no iteration",
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
                "iteration count",
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999",
                "iteration count",
            ),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
                "iteration count",
            ),
            ("m=ext,r=rOprNGfwEbeRWgbNEkqOx", "mandatory extension"),
        ];
        for (i, (msg, want)) in cases.iter().enumerate() {
            let mut c = ScramClient::new("", "pencil", NONCE);
            let e = c.server_first(msg).unwrap_err().to_string();
            assert!(e.contains(want), "#{i}: expect {want:?} in {e:?}");
        }
    }

    #[test]
    fn server_final_before_server_first_is_out_of_order() {
        let c = ScramClient::new("", "pencil", NONCE);
        assert!(matches!(
            c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::OutOfOrder(_))
        ));
    }

    #[test]
    fn user_names_are_escaped_and_nonces_are_fresh_and_printable() {
        let c = ScramClient::new("a=b,c", "p", "n");
        assert_eq!(c.client_first(), "n,,n=a=3Db=2Cc,r=n");
        let (a, b) = (random_nonce().unwrap(), random_nonce().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|x| (0x21..=0x7e).contains(&x) && x != b','));
    }
}
