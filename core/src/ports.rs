//! Free loopback ports for the embedded local topologies (`tandem demo`, `tandem bench`, tests).
//!
//! Why not simply bind port 0 and release it: the kernel hands out port-0 binds and the source
//! ports of outgoing connections from the same ephemeral range, and may hand the same port out
//! again right after it is released. Two listeners of one topology could then be given the same
//! port, or a node's outgoing connection could take a port before the node that was given it
//! binds it. So ports are drawn at random from *below* the ephemeral range, checked bindable, and
//! never handed out twice by one process.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Lowest port drawn from.
const LOW: u16 = 20000;

/// A loopback TCP port that is free now, outside the kernel's ephemeral range where possible,
/// and not returned before by this process.
pub fn free_port() -> std::io::Result<u16> {
    let high = ephemeral_low().unwrap_or(32768).saturating_sub(1);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    if high > LOW + 1000 {
        let span = u64::from(high - LOW);
        for _ in 0..500 {
            let port = LOW + (random() % span) as u16;
            if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            given.insert(port);
            return Ok(port);
        }
    }
    // The range below the ephemeral one is too small or full: fall back to port 0.
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no free loopback port found",
    ))
}

/// The low end of `/proc/sys/net/ipv4/ip_local_port_range`.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A random number from the standard library's per-process random hasher keys.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = free_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }
}
