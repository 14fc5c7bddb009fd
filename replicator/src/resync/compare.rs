//! Two merkle trees compared: equal or not, and the differing blocks and byte ranges (pure).

use crate::merkle::{self, Hash, MerkleError, MerkleTree};
use std::ops::Range;

/// Hex form of a hash, for reports and errors.
pub fn hex(hash: &Hash) -> String {
    tandem_core::bytes::hex(hash)
}

/// The result of comparing two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when the roots are equal (same length, same blocks).
    pub equal: bool,
    /// Root of side a.
    pub root_a: Hash,
    /// Root of side b.
    pub root_b: Hash,
    /// Length of side a.
    pub length_a: u64,
    /// Length of side b.
    pub length_b: u64,
    /// Differing block indexes, coalesced.
    pub differing_blocks: Vec<Range<u64>>,
    /// Differing byte ranges, clipped to the longer length.
    pub differing_bytes: Vec<Range<u64>>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.equal {
            write!(f, "equal: root {}", hex(&self.root_a))
        } else {
            write!(
                f,
                "differ: {} blocks, differing bytes {} (lengths {} / {})",
                merkle::count_blocks(&self.differing_blocks),
                merkle::describe_byte_ranges(&self.differing_bytes),
                self.length_a,
                self.length_b
            )
        }
    }
}

/// Compares two trees (from both sides of a group, taken at a barrier).
///
/// # Errors
/// [`MerkleError::BlockSizeMismatch`] when the trees use different block sizes.
pub fn verify(a: &MerkleTree, b: &MerkleTree) -> Result<VerifyReport, MerkleError> {
    let differing_blocks = merkle::diff(a, b)?;
    let longer = a.length().max(b.length());
    let differing_bytes = merkle::byte_ranges(&differing_blocks, a.block_size(), longer);
    let (root_a, root_b) = (a.root(), b.root());
    Ok(VerifyReport {
        equal: root_a == root_b,
        root_a,
        root_b,
        length_a: a.length(),
        length_b: b.length(),
        differing_blocks,
        differing_bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn verify_names_the_differing_byte_ranges() {
        let a = vec![1u8; 5 * 16 + 3];
        let mut b = a.clone();
        b[16] = 9;
        b[2 * 16 + 1] = 9;
        b[5 * 16] = 9;
        let ta = MerkleTree::from_bytes(16, &a).unwrap();
        let tb = MerkleTree::from_bytes(16, &b).unwrap();
        let r = verify(&ta, &tb).unwrap();
        assert!(!r.equal);
        assert_eq!(r.differing_blocks, vec![1..3, 5..6]);
        assert_eq!(r.differing_bytes, vec![16..48, 80..83]);
        assert_eq!(
            r.to_string(),
            "differ: 3 blocks, differing bytes 0x10..0x30, 0x50..0x53 (lengths 83 / 83)"
        );
        let same = verify(&ta, &ta).unwrap();
        assert!(same.equal && same.differing_blocks.is_empty());
    }

    #[test]
    fn verify_of_different_lengths_covers_the_longer_tail() {
        let a = vec![1u8; 100];
        let ta = MerkleTree::from_bytes(16, &a).unwrap();
        let tb = MerkleTree::from_bytes(16, &a[..40]).unwrap();
        let r = verify(&ta, &tb).unwrap();
        assert_eq!(r.differing_bytes, vec![32..100]);
        assert!(!r.equal);
    }
}
