//! The `GET /metrics` server: binds the node's `metrics_listen`, answers each connection with
//! one response and closes it, at most [`MAX_CONNECTIONS`] at once, until shutdown. The only
//! room of the metrics module that touches sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::error::MetricsError;
use super::http::{parse_request_head, respond, RequestHead};
use super::registry::Registry;

/// Most scrapes served at once; further connections wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head before the connection is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (the node's `metrics_listen`) and serves `registry` there until `shutdown`
/// turns true (or its sender is dropped); returns the bound address and the server task.
///
/// # Errors
/// [`MetricsError::Bind`] when the address cannot be bound.
pub async fn start(
    addr: &str,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((local, tokio::spawn(serve(listener, registry, shutdown))))
}

/// Serves `GET /metrics` on `listener`: one request per connection, at most
/// [`MAX_CONNECTIONS`] at once, each closed after its answer or after [`REQUEST_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            RequestHead::Incomplete => continue,
            other => break other,
        }
    };
    let response = respond(&head, || registry.render());
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::metrics::http::MAX_REQUEST_HEAD;
    use crate::metrics::text::parse_text;

    async fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn server_answers_scrapes_and_closes_each_connection() {
        let r = Arc::new(Registry::new());
        r.counter("tandem_test_total", "t", &[("k", "v")]).add(7);
        let (tx, rx) = watch::channel(false);
        let (addr, task) = start("127.0.0.1:0", r.clone(), rx).await.unwrap();
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let exp = parse_text(body).unwrap();
        assert_eq!(exp.value("tandem_test_total", &[("k", "v")]), Some(7.0));
        let reply = http(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD + 10));
        let reply = http(addr, &big).await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn start_reports_the_address_it_could_not_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let (_tx, rx) = watch::channel(false);
        let err = start(&addr, Arc::new(Registry::new()), rx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
    }
}
