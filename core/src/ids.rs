//! Identity and position newtypes: never bare integers across an API.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Sequence number of a change within a group's stream; 0 means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq after this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A group's fencing token, raised by the coordinators at every role change.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Numeric id of a protection group on the wire: the first 8 bytes of blake3(name).
///
/// Frames carry this instead of the name so the header keeps a fixed size.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct GroupId(pub u64);

impl GroupId {
    /// Derives the wire id of a group from its configured name.
    pub fn from_name(name: &str) -> GroupId {
        let h = blake3::hash(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        GroupId(u64::from_le_bytes(b))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_id_is_stable_for_a_name() {
        assert_eq!(GroupId::from_name("vol"), GroupId::from_name("vol"));
        assert_ne!(GroupId::from_name("vol"), GroupId::from_name("db"));
    }
}
