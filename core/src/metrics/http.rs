//! The HTTP/1.1 of a scrape, pure: parsing a request head from the bytes read so far and
//! building the whole response (200 with the exposition on `GET /metrics`, else an error).

use super::text::CONTENT_TYPE;

/// Largest HTTP request head accepted (request line and headers); larger requests get 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHead {
    /// More bytes are needed (no blank line yet).
    Incomplete,
    /// A complete request line and headers.
    Complete {
        /// Method (`GET`).
        method: String,
        /// Path without the query string.
        path: String,
    },
    /// The head is not HTTP/1.x.
    Malformed,
    /// The head is longer than [`MAX_REQUEST_HEAD`].
    TooLarge,
}

/// Parses the head of an HTTP/1.x request from the bytes read so far.
pub fn parse_request_head(buf: &[u8]) -> RequestHead {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Tolerate bare LF line ends too.
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            return parse_request_line(&buf[..end]);
        }
        return if buf.len() > MAX_REQUEST_HEAD {
            RequestHead::TooLarge
        } else {
            RequestHead::Incomplete
        };
    };
    if end > MAX_REQUEST_HEAD {
        return RequestHead::TooLarge;
    }
    parse_request_line(&buf[..end])
}

fn parse_request_line(head: &[u8]) -> RequestHead {
    let Ok(text) = std::str::from_utf8(head) else {
        return RequestHead::Malformed;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if version.starts_with("HTTP/1.") && !method.is_empty() && target.starts_with('/') =>
        {
            let path = target.split('?').next().unwrap_or(target);
            RequestHead::Complete {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => RequestHead::Malformed,
    }
}

/// The full HTTP/1.1 response (head and body) to `head`; `body` renders the exposition and is
/// called only for `GET /metrics`.
pub fn respond(head: &RequestHead, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, body) = match head {
        RequestHead::Complete { method, path } if method == "GET" && path == "/metrics" => {
            ("200 OK", CONTENT_TYPE, body())
        }
        RequestHead::Complete { .. } => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try GET /metrics\n".to_owned(),
        ),
        RequestHead::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n".to_owned(),
        ),
        RequestHead::Malformed | RequestHead::Incomplete => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn request_head_parser_handles_partial_oversized_and_query() {
        assert_eq!(parse_request_head(b"GET /metr"), RequestHead::Incomplete);
        assert_eq!(
            parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            RequestHead::Complete {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_request_head(b"GET /metrics HTTP/1.0\n\n"),
            RequestHead::Complete {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_request_head(b"hello there\r\n\r\n"),
            RequestHead::Malformed
        );
        let big = vec![b'a'; MAX_REQUEST_HEAD + 1];
        assert_eq!(parse_request_head(&big), RequestHead::TooLarge);
    }

    #[test]
    fn respond_serves_metrics_only_on_get_metrics() {
        let get = |m: &str, p: &str| RequestHead::Complete {
            method: m.into(),
            path: p.into(),
        };
        let ok = String::from_utf8(respond(&get("GET", "/metrics"), || "a 1\n".into())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(ok.contains("Content-Length: 4\r\n"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        for head in [
            get("GET", "/"),
            get("POST", "/metrics"),
            get("GET", "/metricsx"),
        ] {
            let r = String::from_utf8(respond(&head, || panic!("rendered for {head:?}"))).unwrap();
            assert!(r.starts_with("HTTP/1.1 404"), "{head:?}: {r}");
        }
        let r = String::from_utf8(respond(&RequestHead::TooLarge, String::new)).unwrap();
        assert!(r.starts_with("HTTP/1.1 431"));
    }
}
