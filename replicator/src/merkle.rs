//! Merkle trees of blake3 block hashes: build, root, diff and wire form (pure, no I/O).
//!
//! A resource of `length` bytes is cut into blocks of `block_size` bytes; the last block may be
//! partial and is hashed as it is (no padding).
//!
//! **Leaf** = `blake3(block bytes)`, the bytes alone, without the block index. Both sides
//! compare leaves by position, so the index adds nothing to a diff; leaving it out means equal
//! blocks have equal leaves wherever they are, so the hash of an all-zero block is one constant
//! ([`MerkleTree::zeros`]) and a sparse or fresh target is described without reading it.
//!
//! **Internal node** = `blake3(0x01 ‖ left ‖ right)`; an odd node at the end of a level is
//! promoted unchanged. The domain byte keeps an internal node from ever equalling a leaf.
//!
//! **Root** = `blake3(0x02 ‖ length as u64 LE ‖ block_size as u32 LE ‖ top)`, where `top` is
//! the single node left at the top (32 zero bytes for an empty resource). Binding the length
//! and block size makes roots of resources of different lengths differ even when the blocks
//! they have in common are equal.

use std::ops::Range;

/// Bytes in one hash (leaf or node).
pub const HASH_LEN: usize = 32;

/// Largest block size accepted anywhere (tree, wire, server): 4 MiB.
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Most leaves a tree received over the wire may have: 2 Mi leaves, 64 MiB of hashes.
///
/// That covers 128 GiB at 64 KiB blocks and 8 TiB at 4 MiB blocks; larger resources must use
/// larger blocks. The bound keeps a peer from making us allocate without limit.
pub const MAX_WIRE_LEAVES: usize = 2 << 20;

/// Default block size: 64 KiB, where blake3 runs at full speed (STACK-NOTES).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;

const NODE_DOMAIN: u8 = 0x01;
const ROOT_DOMAIN: u8 = 0x02;

/// A 32-byte blake3 hash.
pub type Hash = [u8; HASH_LEN];

/// Errors from building or comparing merkle trees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// The block size is zero or above [`MAX_BLOCK_SIZE`].
    #[error("block_size {block_size} is out of range 1..={max}", max = MAX_BLOCK_SIZE)]
    BlockSize {
        /// The block size given.
        block_size: u32,
    },
    /// The leaves on the wire are not a whole number of 32-byte hashes.
    #[error("leaves field is {len} bytes, not a multiple of {HASH_LEN}")]
    LeavesNotMultiple {
        /// Length of the `leaves` field in bytes.
        len: usize,
    },
    /// More leaves than [`MAX_WIRE_LEAVES`].
    #[error("leaves field holds {count} hashes, over the limit of {limit}")]
    TooManyLeaves {
        /// Number of hashes received.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The number of leaves does not match `ceil(length / block_size)`.
    #[error("{count} leaves do not describe length {length} at block_size {block_size} (expected {expected})")]
    LeafCount {
        /// Number of leaves given.
        count: usize,
        /// Number expected from length and block size.
        expected: u64,
        /// Resource length in bytes.
        length: u64,
        /// Block size in bytes.
        block_size: u32,
    },
    /// Two trees with different block sizes cannot be compared block by block.
    #[error("block_size differs: {a} vs {b}")]
    BlockSizeMismatch {
        /// Block size of the first tree.
        a: u32,
        /// Block size of the second tree.
        b: u32,
    },
}

impl MerkleError {
    /// Whether retrying the same operation could succeed (never: these are all input errors).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks a block size is in `1..=MAX_BLOCK_SIZE`.
///
/// # Errors
/// [`MerkleError::BlockSize`] otherwise.
pub fn check_block_size(block_size: u32) -> Result<(), MerkleError> {
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(MerkleError::BlockSize { block_size });
    }
    Ok(())
}

/// Number of blocks of `block_size` needed to cover `length` bytes (the last may be partial).
pub fn block_count(length: u64, block_size: u32) -> u64 {
    if block_size == 0 {
        return 0;
    }
    length.div_ceil(u64::from(block_size))
}

/// The leaf hash of one block's bytes.
pub fn leaf_hash(block: &[u8]) -> Hash {
    *blake3::hash(block).as_bytes()
}

/// The internal node over two children.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_DOMAIN]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A merkle tree over the blocks of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    block_size: u32,
    length: u64,
    leaves: Vec<Hash>,
    /// `levels[0]` are the parents of the leaves, the last level holds the single top node.
    /// Empty when there are fewer than two leaves.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds a tree from leaf hashes of a resource of `length` bytes.
    ///
    /// # Errors
    /// [`MerkleError::BlockSize`] for a block size out of range, [`MerkleError::LeafCount`] when
    /// the number of leaves is not `ceil(length / block_size)`.
    pub fn from_leaves(
        block_size: u32,
        length: u64,
        leaves: Vec<Hash>,
    ) -> Result<MerkleTree, MerkleError> {
        check_block_size(block_size)?;
        let expected = block_count(length, block_size);
        if leaves.len() as u64 != expected {
            return Err(MerkleError::LeafCount {
                count: leaves.len(),
                expected,
                length,
                block_size,
            });
        }
        let levels = build_levels(&leaves);
        Ok(MerkleTree {
            block_size,
            length,
            leaves,
            levels,
        })
    }

    /// Builds a tree by hashing an in-memory resource (tests, small resources).
    ///
    /// # Errors
    /// [`MerkleError::BlockSize`] for a block size out of range.
    pub fn from_bytes(block_size: u32, data: &[u8]) -> Result<MerkleTree, MerkleError> {
        check_block_size(block_size)?;
        let leaves = data.chunks(block_size as usize).map(leaf_hash).collect();
        MerkleTree::from_leaves(block_size, data.len() as u64, leaves)
    }

    /// The tree of an empty resource: diffing against it reports every block of the other side.
    ///
    /// # Errors
    /// [`MerkleError::BlockSize`] for a block size out of range.
    pub fn empty(block_size: u32) -> Result<MerkleTree, MerkleError> {
        MerkleTree::from_leaves(block_size, 0, Vec::new())
    }

    /// The tree of `length` zero bytes, computed without reading anything (a fresh or sparse
    /// target): diffing against it reports only the blocks that are not all zero.
    ///
    /// # Errors
    /// [`MerkleError::BlockSize`] for a block size out of range.
    pub fn zeros(block_size: u32, length: u64) -> Result<MerkleTree, MerkleError> {
        check_block_size(block_size)?;
        let count = block_count(length, block_size);
        let full = leaf_hash(&vec![0u8; block_size as usize]);
        let mut leaves = vec![full; count as usize];
        let tail = (length % u64::from(block_size)) as usize;
        if tail != 0 {
            if let Some(last) = leaves.last_mut() {
                *last = leaf_hash(&vec![0u8; tail]);
            }
        }
        MerkleTree::from_leaves(block_size, length, leaves)
    }

    /// Rebuilds a tree from the wire form of a `MerkleReply` (`leaves` = 32 bytes per block).
    ///
    /// # Errors
    /// [`MerkleError::LeavesNotMultiple`] when `bytes` is not a multiple of 32,
    /// [`MerkleError::TooManyLeaves`] over [`MAX_WIRE_LEAVES`], and the errors of
    /// [`MerkleTree::from_leaves`].
    pub fn from_leaves_bytes(
        block_size: u32,
        length: u64,
        bytes: &[u8],
    ) -> Result<MerkleTree, MerkleError> {
        if !bytes.len().is_multiple_of(HASH_LEN) {
            return Err(MerkleError::LeavesNotMultiple { len: bytes.len() });
        }
        let count = bytes.len() / HASH_LEN;
        if count > MAX_WIRE_LEAVES {
            return Err(MerkleError::TooManyLeaves {
                count,
                limit: MAX_WIRE_LEAVES,
            });
        }
        let leaves = bytes
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect();
        MerkleTree::from_leaves(block_size, length, leaves)
    }

    /// The leaves concatenated, 32 bytes per block, for the `leaves` field of `MerkleReply`.
    pub fn leaves_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.leaves.len() * HASH_LEN);
        for leaf in &self.leaves {
            out.extend_from_slice(leaf);
        }
        out
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Resource length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Number of blocks (leaves).
    pub fn block_count(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The leaf hashes, one per block.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// The top node (32 zero bytes for an empty resource, the leaf itself for one block).
    fn top(&self) -> Hash {
        match (self.levels.last(), self.leaves.as_slice()) {
            (Some(level), _) => level.first().copied().unwrap_or([0u8; HASH_LEN]),
            (None, [one]) => *one,
            (None, _) => [0u8; HASH_LEN],
        }
    }

    /// The root: binds the top node to the length and block size (see the module doc).
    pub fn root(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&[ROOT_DOMAIN]);
        h.update(&self.length.to_le_bytes());
        h.update(&self.block_size.to_le_bytes());
        h.update(&self.top());
        *h.finalize().as_bytes()
    }

    /// Replaces the leaf of one block and updates the nodes above it.
    ///
    /// Used by the scanner to record the hash of the bytes it actually shipped. An index past
    /// the end is ignored (the tree describes a fixed length).
    pub fn set_leaf(&mut self, index: u64, leaf: Hash) {
        let Ok(mut i) = usize::try_from(index) else {
            return;
        };
        let Some(slot) = self.leaves.get_mut(i) else {
            return;
        };
        *slot = leaf;
        for k in 0..self.levels.len() {
            let below: &[Hash] = if k == 0 {
                &self.leaves
            } else {
                &self.levels[k - 1]
            };
            let parent = i / 2;
            let value = match (below.get(2 * parent), below.get(2 * parent + 1)) {
                (Some(l), Some(r)) => node_hash(l, r),
                (Some(l), None) => *l,
                _ => return,
            };
            if let Some(p) = self.levels[k].get_mut(parent) {
                *p = value;
            }
            i = parent;
        }
    }

    /// The node at `level` (0 = leaves) and `index`, if any.
    fn node(&self, level: usize, index: usize) -> Option<&Hash> {
        if level == 0 {
            self.leaves.get(index)
        } else {
            self.levels.get(level - 1).and_then(|l| l.get(index))
        }
    }
}

fn build_levels(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    let mut levels: Vec<Vec<Hash>> = Vec::new();
    let mut current: &[Hash] = leaves;
    while current.len() > 1 {
        let next: Vec<Hash> = current
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                [one] => *one,
                _ => [0u8; HASH_LEN],
            })
            .collect();
        levels.push(next);
        current = levels.last().map(|v| v.as_slice()).unwrap_or(&[]);
    }
    levels
}

/// Indexes of the blocks that differ between `a` and `b`, as coalesced ascending ranges.
///
/// Blocks present on one side only (different lengths) count as differing. With equal block
/// counts the walk descends from the top and skips equal subtrees; otherwise it compares leaves.
///
/// # Errors
/// [`MerkleError::BlockSizeMismatch`] when the trees use different block sizes.
pub fn diff(a: &MerkleTree, b: &MerkleTree) -> Result<Vec<Range<u64>>, MerkleError> {
    if a.block_size != b.block_size {
        return Err(MerkleError::BlockSizeMismatch {
            a: a.block_size,
            b: b.block_size,
        });
    }
    let mut indexes: Vec<u64> = Vec::new();
    if a.leaves.len() == b.leaves.len() && !a.leaves.is_empty() {
        // Same shape: descend, depth-first, left to right, so indexes come out ascending.
        let top_level = a.levels.len();
        let mut stack: Vec<(usize, usize)> = vec![(top_level, 0)];
        while let Some((level, index)) = stack.pop() {
            if a.node(level, index) == b.node(level, index) {
                continue;
            }
            if level == 0 {
                indexes.push(index as u64);
                continue;
            }
            let right = 2 * index + 1;
            if a.node(level - 1, right).is_some() {
                stack.push((level - 1, right));
            }
            stack.push((level - 1, 2 * index));
        }
    } else {
        let common = a.leaves.len().min(b.leaves.len());
        for (i, (x, y)) in a.leaves.iter().zip(&b.leaves).enumerate() {
            if x != y {
                indexes.push(i as u64);
            }
        }
        let longest = a.leaves.len().max(b.leaves.len());
        indexes.extend(common as u64..longest as u64);
    }
    Ok(coalesce(indexes))
}

/// Turns ascending block indexes into coalesced ranges (`[1,2,3,7]` → `[1..4, 7..8]`).
pub fn coalesce(indexes: impl IntoIterator<Item = u64>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for i in indexes {
        match out.last_mut() {
            Some(last) if last.end == i => last.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Total number of blocks in a set of ranges.
pub fn count_blocks(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// The byte range covered by a block range, clipped to `length` (the last block may be partial).
pub fn block_range_to_bytes(blocks: &Range<u64>, block_size: u32, length: u64) -> Range<u64> {
    let bs = u64::from(block_size);
    let start = blocks.start.saturating_mul(bs).min(length);
    let end = blocks.end.saturating_mul(bs).min(length);
    start..end
}

/// The byte ranges of block ranges, clipped to `length` (pass the longer length when the two
/// sides differ), for reports.
pub fn byte_ranges(blocks: &[Range<u64>], block_size: u32, length: u64) -> Vec<Range<u64>> {
    blocks
        .iter()
        .map(|r| block_range_to_bytes(r, block_size, length))
        .collect()
}

pub use tandem_core::ranges::describe_byte_ranges;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const BS: u32 = 16;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn linear_diff(a: &MerkleTree, b: &MerkleTree) -> Vec<Range<u64>> {
        let n = a.leaves.len().max(b.leaves.len());
        coalesce((0..n as u64).filter(|&i| a.leaves.get(i as usize) != b.leaves.get(i as usize)))
    }

    #[test]
    fn leaf_is_blake3_of_block_bytes_alone() {
        let d = data(40, 1);
        let t = MerkleTree::from_bytes(BS, &d).unwrap();
        assert_eq!(t.block_count(), 3);
        assert_eq!(t.leaves()[0], *blake3::hash(&d[0..16]).as_bytes());
        assert_eq!(t.leaves()[2], *blake3::hash(&d[32..40]).as_bytes());
    }

    #[test]
    fn root_golden_value_for_three_blocks() {
        // Odd node promoted: top = node(node(l0, l1), l2).
        let d = data(40, 1);
        let t = MerkleTree::from_bytes(BS, &d).unwrap();
        let l: Vec<Hash> = d.chunks(16).map(leaf_hash).collect();
        let top = node_hash(&node_hash(&l[0], &l[1]), &l[2]);
        let mut h = blake3::Hasher::new();
        h.update(&[0x02]);
        h.update(&40u64.to_le_bytes());
        h.update(&16u32.to_le_bytes());
        h.update(&top);
        assert_eq!(t.root(), *h.finalize().as_bytes());
    }

    #[test]
    fn roots_differ_for_different_lengths_with_equal_common_blocks() {
        let d = data(64, 3);
        let a = MerkleTree::from_bytes(BS, &d[..48]).unwrap();
        let b = MerkleTree::from_bytes(BS, &d).unwrap();
        assert_ne!(a.root(), b.root());
        assert_eq!(diff(&a, &b).unwrap(), vec![3..4]);
    }

    #[test]
    fn empty_and_zero_length_trees_are_equal() {
        let a = MerkleTree::empty(BS).unwrap();
        let b = MerkleTree::from_bytes(BS, &[]).unwrap();
        assert_eq!(a.root(), b.root());
        assert!(diff(&a, &b).unwrap().is_empty());
    }

    #[test]
    fn diff_against_empty_reports_every_block() {
        let d = data(50, 2);
        let a = MerkleTree::from_bytes(BS, &d).unwrap();
        let e = MerkleTree::empty(BS).unwrap();
        assert_eq!(diff(&e, &a).unwrap(), vec![0..4]);
    }

    #[test]
    fn zeros_tree_equals_hashing_zero_bytes() {
        let z = vec![0u8; 70];
        assert_eq!(
            MerkleTree::zeros(BS, 70).unwrap(),
            MerkleTree::from_bytes(BS, &z).unwrap()
        );
    }

    #[test]
    fn diff_refuses_different_block_sizes() {
        let a = MerkleTree::from_bytes(16, &data(32, 0)).unwrap();
        let b = MerkleTree::from_bytes(32, &data(32, 0)).unwrap();
        assert_eq!(
            diff(&a, &b),
            Err(MerkleError::BlockSizeMismatch { a: 16, b: 32 })
        );
    }

    #[test]
    fn block_size_zero_and_over_four_mib_are_refused() {
        assert!(matches!(
            MerkleTree::empty(0),
            Err(MerkleError::BlockSize { block_size: 0 })
        ));
        assert!(MerkleTree::empty(MAX_BLOCK_SIZE).is_ok());
        assert!(MerkleTree::empty(MAX_BLOCK_SIZE + 1).is_err());
    }

    #[test]
    fn from_leaves_refuses_wrong_leaf_count() {
        let err = MerkleTree::from_leaves(BS, 33, vec![[0u8; 32]; 2]).unwrap_err();
        assert_eq!(
            err,
            MerkleError::LeafCount {
                count: 2,
                expected: 3,
                length: 33,
                block_size: BS
            }
        );
    }

    #[test]
    fn from_leaves_bytes_refuses_length_not_multiple_of_32() {
        assert_eq!(
            MerkleTree::from_leaves_bytes(BS, 16, &[0u8; 33]),
            Err(MerkleError::LeavesNotMultiple { len: 33 })
        );
    }

    #[test]
    fn from_leaves_bytes_refuses_more_than_the_limit() {
        let bytes = vec![0u8; (MAX_WIRE_LEAVES + 1) * HASH_LEN];
        let length = (MAX_WIRE_LEAVES as u64 + 1) * u64::from(BS);
        assert_eq!(
            MerkleTree::from_leaves_bytes(BS, length, &bytes),
            Err(MerkleError::TooManyLeaves {
                count: MAX_WIRE_LEAVES + 1,
                limit: MAX_WIRE_LEAVES
            })
        );
    }

    #[test]
    fn leaves_bytes_round_trip() {
        let t = MerkleTree::from_bytes(BS, &data(100, 9)).unwrap();
        let back = MerkleTree::from_leaves_bytes(BS, 100, &t.leaves_bytes()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.root(), t.root());
    }

    #[test]
    fn byte_ranges_are_clipped_to_length_and_formatted_in_hex() {
        let r = byte_ranges(&[1..3, 5..7], 0x10000, 0x60000 + 100);
        assert_eq!(r, vec![0x10000..0x30000, 0x50000..0x60064]);
        assert_eq!(
            describe_byte_ranges(&r),
            "0x10000..0x30000, 0x50000..0x60064"
        );
        assert_eq!(describe_byte_ranges(&[]), "none");
    }

    #[test]
    fn coalesce_joins_adjacent_indexes() {
        assert_eq!(coalesce([1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        assert_eq!(count_blocks(&[1..4, 7..8]), 4);
    }

    proptest! {
        #[test]
        fn diff_of_a_tree_with_itself_is_empty(d in proptest::collection::vec(any::<u8>(), 0..600)) {
            let t = MerkleTree::from_bytes(BS, &d).unwrap();
            prop_assert!(diff(&t, &t).unwrap().is_empty());
        }

        #[test]
        fn changing_a_set_of_blocks_reports_exactly_that_set(
            d in proptest::collection::vec(any::<u8>(), 1..800),
            picks in proptest::collection::btree_set(0usize..64, 0..20),
        ) {
            let a = MerkleTree::from_bytes(BS, &d).unwrap();
            let n = a.block_count() as usize;
            let changed: std::collections::BTreeSet<usize> = picks.into_iter().filter(|&i| i < n).collect();
            let mut e = d.clone();
            for &i in &changed {
                e[i * BS as usize] ^= 0xff;
            }
            let b = MerkleTree::from_bytes(BS, &e).unwrap();
            let got = diff(&a, &b).unwrap();
            let expected = coalesce(changed.iter().map(|&i| i as u64));
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(diff(&b, &a).unwrap(), expected);
        }

        #[test]
        fn descent_agrees_with_leaf_by_leaf_comparison(
            a in proptest::collection::vec(0u8..3, 0..300),
            b in proptest::collection::vec(0u8..3, 0..300),
        ) {
            let ta = MerkleTree::from_bytes(4, &a).unwrap();
            let tb = MerkleTree::from_bytes(4, &b).unwrap();
            prop_assert_eq!(diff(&ta, &tb).unwrap(), linear_diff(&ta, &tb));
        }

        #[test]
        fn root_equal_iff_leaves_equal(
            a in proptest::collection::vec(0u8..2, 0..40),
            b in proptest::collection::vec(0u8..2, 0..40),
        ) {
            // Tiny alphabet and 2-byte blocks so equal trees happen often.
            let ta = MerkleTree::from_bytes(2, &a).unwrap();
            let tb = MerkleTree::from_bytes(2, &b).unwrap();
            let same = ta.leaves() == tb.leaves() && ta.length() == tb.length();
            prop_assert_eq!(ta.root() == tb.root(), same);
        }

        #[test]
        fn set_leaf_matches_a_rebuilt_tree(
            d in proptest::collection::vec(any::<u8>(), 0..500),
            index in 0u64..40,
            seed in any::<u8>(),
        ) {
            let mut t = MerkleTree::from_bytes(BS, &d).unwrap();
            let leaf = leaf_hash(&[seed]);
            t.set_leaf(index, leaf);
            let mut leaves = MerkleTree::from_bytes(BS, &d).unwrap().leaves().to_vec();
            if let Some(l) = leaves.get_mut(index as usize) {
                *l = leaf;
            }
            let rebuilt = MerkleTree::from_leaves(BS, d.len() as u64, leaves).unwrap();
            prop_assert_eq!(t.root(), rebuilt.root());
            prop_assert_eq!(t, rebuilt);
        }
    }
}
