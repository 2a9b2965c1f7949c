//! RFC 9162 Merkle tree hashing over a tenant's chain, as certificate-transparency logs do it.
//!
//! Leaf `i` of a tenant's tree is the span at `chain_pos = i`; its leaf input is the 32 raw
//! bytes of the span's `curr_hash` (the BLAKE3 digest that the span's signature covers), so
//! `leaf_hash = SHA-256(0x00 || digest)` and `node_hash = SHA-256(0x01 || left || right)`.
//! SHA-256 rather than the ledger's BLAKE3 because RFC 9162 and the C2SP checkpoint tooling
//! specify it: any CT/sumdb-style verifier can check our proofs unchanged. The hashing is a
//! small fraction of ingest (two short SHA-256 per span).
//!
//! Pure functions only: the reference root (`root`), the incremental [`Frontier`] the stores
//! keep (the compact range: one hash per set bit of the tree size), which subtree hashes a
//! proof needs (`inclusion_ranges`, `consistency_ranges`), how to build those from complete
//! aligned subtrees (`range_subtrees`, `range_hash`), and the RFC's verification algorithms.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A complete, aligned subtree: leaves `idx << level .. (idx + 1) << level`.
pub type NodeKey = (u8, u64);

/// Subtrees at this level and above are stored (`merkle_nodes`); smaller ones are recomputed
/// from at most 2^STORED_LEVEL leaves, which keeps the table at 1/8 row per span.
pub const STORED_LEVEL: u8 = 4;

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256()` of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of a span, from its `curr_hash` (`blake3:<hex>`).
pub fn span_leaf(curr_hash: &str) -> Result<Hash, String> {
    Ok(leaf_hash(&crate::crypto::digest_bytes(curr_hash)?))
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH over already-hashed leaves, straight from the RFC's recursive definition (the
/// reference the incremental code is tested against).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The compact range of a tree: the roots of its maximal complete subtrees, largest (leftmost)
/// first. Appending a leaf completes subtrees, which are reported so they can be stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its stored form; `peaks` must hold one hash per set bit of
    /// `size`.
    pub fn from_parts(size: u64, peaks: &[u8]) -> Result<Self, String> {
        if peaks.len() != 32 * size.count_ones() as usize {
            return Err(format!(
                "a tree of {size} leaves has {} peaks, not {} bytes of them",
                size.count_ones(),
                peaks.len()
            ));
        }
        let peaks = peaks
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks concatenated, as stored.
    pub fn peak_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// Appends one leaf hash; `completed` sees every complete subtree this closes, the leaf
    /// itself included (level 0).
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(NodeKey, &Hash)) {
        let mut hash = leaf;
        let mut level = 0u8;
        let mut idx = self.size;
        completed((0, idx), &hash);
        while idx & 1 == 1 {
            // The bit being carried has a peak; an invariant of the structure.
            let Some(left) = self.peaks.pop() else { break };
            hash = node_hash(&left, &hash);
            level += 1;
            idx >>= 1;
            completed((level, idx), &hash);
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// The tree head: the peaks folded from the right (RFC 9162's MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, p| node_hash(p, &acc))
    }
}

/// A leaf range `[start, end)` whose MTH is one element of a proof.
pub type Range = (u64, u64);

/// The ranges whose hashes form the inclusion proof (audit path) of leaf `index` in a tree of
/// `size` leaves, in proof order (RFC 9162 §2.1.3.1 PATH).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range> {
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    // Walk down from the root, collecting siblings, then reverse (the proof is leaf-first).
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            lo += k;
        }
    }
    out.reverse();
    out
}

/// The ranges whose hashes form the consistency proof from tree size `old` to `new`
/// (RFC 9162 §2.1.4.1 PROOF / SUBPROOF), for `0 < old <= new`.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<Range> {
    let mut out = Vec::new();
    if old == 0 || old >= new {
        return out;
    }
    let (mut m, mut lo, mut hi, mut whole) = (old, 0u64, new, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push((lo, hi));
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push((lo + k, hi));
            hi = lo + k;
        } else {
            out.push((lo, lo + k));
            m -= k;
            lo += k;
            whole = false;
        }
    }
    out.reverse();
    out
}

/// The complete aligned subtrees whose hashes make up the MTH of `[start, end)`, a node of
/// some tree (its start aligned to the largest power of two not above its length).
pub fn range_subtrees(range: Range) -> Vec<NodeKey> {
    let (mut lo, hi) = range;
    let mut out = Vec::new();
    while lo < hi {
        let n = hi - lo;
        let level = if n.is_power_of_two() {
            n.trailing_zeros()
        } else {
            split(n).trailing_zeros()
        } as u8;
        out.push((level, lo >> level));
        lo += 1 << level;
    }
    out
}

/// The MTH of `[start, end)` from its subtrees' hashes (folded from the right), or `None`
/// when one is missing.
pub fn range_hash(range: Range, nodes: &HashMap<NodeKey, Hash>) -> Option<Hash> {
    let parts = range_subtrees(range);
    let mut it = parts.iter().rev();
    let mut acc = *nodes.get(it.next()?)?;
    for key in it {
        acc = node_hash(nodes.get(key)?, &acc);
    }
    Some(acc)
}

/// Where a subtree's hash comes from: stored subtrees (level >= [`STORED_LEVEL`]) and the
/// leaf positions to hash the smaller ones from.
pub fn fetch_plan(keys: &[NodeKey]) -> (Vec<NodeKey>, Vec<u64>) {
    let mut stored = Vec::new();
    let mut leaves = Vec::new();
    for &(level, idx) in keys {
        if level >= STORED_LEVEL {
            stored.push((level, idx));
        } else {
            leaves.extend((idx << level)..((idx + 1) << level));
        }
    }
    stored.sort_unstable();
    stored.dedup();
    leaves.sort_unstable();
    leaves.dedup();
    (stored, leaves)
}

/// Completes `nodes` (holding the stored subtrees) with the small subtrees of `keys`, hashed
/// from `leaves` (position → leaf hash). Returns the first missing leaf, if any.
pub fn fill_small(
    keys: &[NodeKey],
    leaves: &HashMap<u64, Hash>,
    nodes: &mut HashMap<NodeKey, Hash>,
) -> Result<(), u64> {
    for &(level, idx) in keys {
        if level >= STORED_LEVEL || nodes.contains_key(&(level, idx)) {
            continue;
        }
        let start = idx << level;
        let mut hs = Vec::with_capacity(1 << level);
        for p in start..start + (1 << level) {
            hs.push(*leaves.get(&p).ok_or(p)?);
        }
        nodes.insert((level, idx), root(&hs));
    }
    Ok(())
}

/// Why a proof does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldBeyondNew { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
    #[error("the proof does not lead to the old root")]
    OldRootMismatch,
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is leaf `index` of the tree of `size` leaves with
/// root `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root`. Equal sizes need an empty proof and equal
/// roots; the empty tree (whose root must be [`empty_root`]) is a prefix of every tree.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OldBeyondNew { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Found by the `proof_verify` fuzz target: any root was accepted as the empty tree's.
        return if !proof.is_empty() {
            Err(ProofError::WrongLength)
        } else if *old_root != empty_root() {
            Err(ProofError::OldRootMismatch)
        } else {
            Ok(())
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The proof hashes for `ranges` over an in-memory list of leaf hashes (tests, offline tools).
pub fn proof_from_leaves(leaves: &[Hash], ranges: &[Range]) -> Vec<Hash> {
    ranges
        .iter()
        .map(|&(a, b)| root(&leaves[a as usize..b as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 6962's reference tree over 8 leaves (the inputs of the CT test suite); roots taken
    /// from certificate-transparency-go's `merkle` test data.
    #[test]
    fn roots_match_the_certificate_transparency_test_vectors() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let hs: Vec<Hash> = inputs.iter().map(|d| leaf_hash(d)).collect();
        let mut f = Frontier::new();
        for (i, h) in hs.iter().enumerate() {
            f.push(*h, |_, _| {});
            assert_eq!(hex::encode(root(&hs[..=i])), roots[i], "size {}", i + 1);
            assert_eq!(hex::encode(f.root()), roots[i]);
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Regression (found by the `proof_verify` fuzz target): a consistency "proof" from size 0
    /// accepted any old root; only the empty tree's root is the root of size 0.
    #[test]
    fn a_consistency_proof_from_the_empty_tree_needs_the_empty_root() {
        let r = root(&leaves(5));
        assert_eq!(verify_consistency(0, 5, &empty_root(), &r, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 5, &[7; 32], &r, &[]),
            Err(ProofError::OldRootMismatch)
        );
        assert_eq!(
            verify_consistency(0, 0, &[7; 32], &empty_root(), &[]),
            Err(ProofError::RootMismatch)
        );
    }

    #[test]
    fn inclusion_and_consistency_proofs_verify_for_every_small_tree() {
        let all = leaves(70);
        for n in 1..=70u64 {
            let tree = &all[..n as usize];
            let r = root(tree);
            for i in 0..n {
                let proof = proof_from_leaves(tree, &inclusion_ranges(i, n));
                assert_eq!(
                    verify_inclusion(&tree[i as usize], i, n, &proof, &r),
                    Ok(())
                );
                let wrong = leaf_hash(b"not a leaf");
                assert!(verify_inclusion(&wrong, i, n, &proof, &r).is_err());
            }
            for m in 0..=n {
                let old = root(&all[..m as usize]);
                let proof = proof_from_leaves(tree, &consistency_ranges(m, n));
                assert_eq!(
                    verify_consistency(m, n, &old, &r, &proof),
                    Ok(()),
                    "{m}->{n}"
                );
                if m > 0 && m < n {
                    let forged = leaf_hash(b"fork");
                    assert!(verify_consistency(m, n, &forged, &r, &proof).is_err());
                }
            }
        }
    }
}
