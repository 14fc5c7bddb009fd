//! Connection admission of the NBD server: who gets one of the bounded transmission slots (a
//! total cap and a cap per peer address). Bookkeeping only; no sockets, no clocks.
//!
//! A slot is taken when a client asks to enter transmission (`NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME`), never at `accept`: a socket that never finishes the handshake holds
//! no slot, so idle TCP connections cannot lock real clients out. The slot is given back when
//! its [`Slot`] is dropped (the connection ended).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Why a client was not given a transmission slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SlotRefusal {
    /// Every slot of the server is taken.
    #[error("the server already serves its limit of {limit} connections")]
    Total {
        /// The server's total cap.
        limit: usize,
    },
    /// This peer address already holds its share of the slots.
    #[error("{peer} already holds its limit of {limit} connections")]
    PerPeer {
        /// The peer address.
        peer: IpAddr,
        /// The per-peer cap.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The transmission slots of one server: at most `max_total` at once, at most `max_per_peer`
/// for one peer address. Cheap to clone (shared counts).
#[derive(Debug, Clone)]
pub struct Slots {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_peer: usize,
}

/// One taken slot; given back on drop.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    peer: IpAddr,
}

impl Slots {
    /// Slots for a server that serves at most `max_total` connections, at most `max_per_peer`
    /// of them from one address.
    pub fn new(max_total: usize, max_per_peer: usize) -> Slots {
        Slots {
            counts: Arc::default(),
            max_total,
            max_per_peer,
        }
    }

    /// Takes a slot for `peer`, unless a cap is reached.
    ///
    /// # Errors
    /// [`SlotRefusal::Total`] or [`SlotRefusal::PerPeer`]; nothing is taken then.
    pub fn try_take(&self, peer: IpAddr) -> Result<Slot, SlotRefusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(SlotRefusal::Total {
                limit: self.max_total,
            });
        }
        let mine = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.max_per_peer {
            return Err(SlotRefusal::PerPeer {
                peer,
                limit: self.max_per_peer,
            });
        }
        counts.total += 1;
        counts.per_peer.insert(peer, mine + 1);
        Ok(Slot {
            counts: Arc::clone(&self.counts),
            peer,
        })
    }

    /// Slots taken now (all peers).
    pub fn in_use(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Forget the address: the map stays as small as the set of connected peers.
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn per_peer_cap_refuses_only_that_peer() {
        let slots = Slots::new(10, 2);
        let _a = slots.try_take(ip(1)).unwrap();
        let _b = slots.try_take(ip(1)).unwrap();
        assert_eq!(
            slots.try_take(ip(1)).unwrap_err(),
            SlotRefusal::PerPeer {
                peer: ip(1),
                limit: 2
            }
        );
        let _c = slots.try_take(ip(2)).unwrap();
        assert_eq!(slots.in_use(), 3);
    }

    #[test]
    fn total_cap_refuses_every_peer() {
        let slots = Slots::new(3, 2);
        let taken: Vec<Slot> = [1, 2, 3]
            .into_iter()
            .map(|i| slots.try_take(ip(i)).unwrap())
            .collect();
        for i in [1, 4] {
            assert_eq!(
                slots.try_take(ip(i)).unwrap_err(),
                SlotRefusal::Total { limit: 3 },
                "#{i}: expect the total cap"
            );
        }
        drop(taken);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn a_dropped_slot_is_given_back_and_its_peer_forgotten() {
        let slots = Slots::new(2, 1);
        let a = slots.try_take(ip(1)).unwrap();
        assert!(slots.try_take(ip(1)).is_err());
        drop(a);
        assert_eq!(slots.in_use(), 0);
        assert!(slots
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_peer
            .is_empty());
        let _again = slots.try_take(ip(1)).unwrap();
        assert_eq!(slots.in_use(), 1);
    }
}
