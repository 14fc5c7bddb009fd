//! Credentials never leave the coordinator: secret HTTP headers and user:password in URLs are
//! replaced in a run's JSON before the admin API shows it. Pure.

use serde_json::Value;

/// Header names whose values are credentials: never shown by the admin API.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-vault-token",
];

/// Whether a header carries a credential (the names above, or any with `token`, `secret`,
/// `password` or `key` in it).
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&n.as_str())
        || ["token", "secret", "password", "key"]
            .iter()
            .any(|w| n.contains(w))
}

/// `http://user:pass@host/p` → `http://***@host/p`: credentials in a URL are never shown.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Replaces credentials in a run's JSON before it leaves the coordinator: the values of secret
/// `headers` of `http` steps and user:password in `url`s. The executor keeps the real values
/// (it sends them); status, `tandem run show` and errors never print them.
pub fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match (k.as_str(), x) {
                    ("headers", Value::Object(h)) => {
                        for (name, value) in h.iter_mut() {
                            if is_secret_header(name) {
                                *value = Value::String("<redacted>".into());
                            }
                        }
                    }
                    ("url", Value::String(u)) => *u = redact_url(u),
                    (_, x) => redact_secrets(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn run_json_never_shows_credentials() {
        let mut v = json!({"state": {"plan": {"steps": [{"action": {"http": {
            "url": "http://ops:hunter2@hooks.example/notify?x=1",
            "headers": {"Authorization": "Bearer s3cr3t-token", "X-Api-Key": "k-123",
                        "X-Trace": "visible"},
        }}}]}}});
        redact_secrets(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "s3cr3t-token", "k-123"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert!(text.contains("visible"), "{text}");
        assert!(
            text.contains("http://***@hooks.example/notify?x=1"),
            "{text}"
        );
        assert_eq!(redact_url("http://host:80/a@b"), "http://host:80/a@b");
    }
}
