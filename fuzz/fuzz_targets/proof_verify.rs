//! Proof verification with arbitrary input. For a tree of 1–64 spans built here and its signed
//! checkpoint: an inclusion or consistency proof document derived from the fuzz input (any
//! leaf, index, sizes, hashes) verifies only if it is the true proof of a true statement; the
//! raw RFC 9162 checks accept nothing else either; and arbitrary bytes read as a proof
//! document never make verification panic.
#![no_main]

use ledger::checkpoint::{Checkpoint, b64, origin};
use ledger::crypto::NodeKey;
use ledger::merkle::{self, Hash};
use ledger::proof::{ProofDoc, encode};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzz input a piece at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }
    fn hash(&mut self) -> Hash {
        std::array::from_fn(|_| self.byte())
    }
    /// A small number most of the time (near the tree), sometimes any u64.
    fn size(&mut self, near: u64) -> u64 {
        match self.byte() % 8 {
            0 => self.u64(),
            _ => u64::from(self.byte()) % (near + 2),
        }
    }
    fn hashes(&mut self, correct: &[Hash]) -> Vec<Hash> {
        match self.byte() % 4 {
            0 => correct.to_vec(),
            1 => {
                // The true proof with one hash changed, dropped or added.
                let mut p = correct.to_vec();
                let at = usize::from(self.byte());
                match self.byte() % 3 {
                    0 if !p.is_empty() => {
                        let i = at % p.len();
                        p[i][usize::from(self.byte()) % 32] ^= 1 | self.byte();
                    }
                    1 if !p.is_empty() => {
                        p.remove(at % p.len());
                    }
                    _ => p.insert(at % (p.len() + 1), self.hash()),
                }
                p
            }
            _ => (0..self.byte() % 16).map(|_| self.hash()).collect(),
        }
    }
}

fn curr_hash(i: u64) -> String {
    format!("blake3:{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15 + 1)
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a proof document: never a panic.
    if data.first() == Some(&b'{') {
        if let Ok(doc) = serde_json::from_slice::<ProofDoc>(data) {
            let _ = doc.verify(None);
        }
        return;
    }
    let mut input = Input(data);
    let key = NodeKey::from_seed([7; 32]);
    let pk = key.public_key().to_string();
    let n = 1 + u64::from(input.byte() % 64);
    let names: Vec<String> = (0..n).map(curr_hash).collect();
    let leaves: Vec<Hash> = names
        .iter()
        .map(|h| merkle::span_leaf(h).unwrap_or_else(|e| panic!("test leaf {h}: {e}")))
        .collect();
    let root_of = |m: u64| merkle::root(&leaves[..m as usize]);
    let root = root_of(n);
    let checkpoint = Checkpoint {
        origin: origin(&pk, "bakery"),
        size: n,
        root,
    }
    .sign(&key);

    if input.byte() % 2 == 0 {
        // Inclusion: which span, at which index, in which tree, with which hashes.
        let leaf = input.size(n) % (n + 1);
        let index = input.size(n);
        let size = input.size(n);
        let correct = match (index < n, leaf < n) {
            (true, _) => merkle::proof_from_leaves(&leaves, &merkle::inclusion_ranges(index, n)),
            _ => Vec::new(),
        };
        let proof = input.hashes(&correct);
        let claimed = names
            .get(leaf as usize)
            .cloned()
            .unwrap_or_else(|| curr_hash(leaf));
        let doc = ProofDoc::Inclusion {
            span_id: None,
            seq: None,
            curr_hash: claimed.clone(),
            leaf_index: index,
            tree_size: size,
            hashes: encode(&proof),
            checkpoint: checkpoint.clone(),
            public_key: pk.clone(),
        };
        if doc.verify(Some(&pk)).is_ok() {
            assert_eq!(size, n, "accepted a proof for another tree size");
            assert_eq!(leaf, index, "accepted span {leaf} as leaf {index}");
            assert_eq!(proof, correct, "accepted a wrong inclusion proof");
        }
        let leaf_hash = merkle::span_leaf(&claimed).unwrap_or([0; 32]);
        if merkle::verify_inclusion(&leaf_hash, index, size, &proof, &root).is_ok() {
            // The raw check binds leaf, index and root; the size is bound to the root only by
            // a signed checkpoint (checked above): a leaf whose path has the same shape in a
            // smaller or larger tree verifies under either size.
            assert_eq!(leaf, index, "raw: accepted span {leaf} as leaf {index}");
            if size == n {
                assert_eq!(proof, correct, "raw: accepted a wrong inclusion proof");
            }
        }
    } else {
        // Consistency: from which older size and root.
        let old = input.size(n);
        let size = input.size(n);
        let true_old = old <= n;
        let correct = if true_old && old > 0 {
            merkle::proof_from_leaves(&leaves, &merkle::consistency_ranges(old, n))
        } else {
            Vec::new()
        };
        let old_root = match input.byte() % 4 {
            0 => input.hash(),
            _ if true_old => root_of(old),
            _ => root,
        };
        let proof = input.hashes(&correct);
        let doc = ProofDoc::Consistency {
            old_size: old,
            old_root: b64(&old_root),
            new_size: size,
            hashes: encode(&proof),
            checkpoint: checkpoint.clone(),
            public_key: pk.clone(),
        };
        let check = |what: &str| {
            assert!(true_old, "{what}: accepted an older size {old} beyond {n}");
            assert_eq!(old_root, root_of(old), "{what}: accepted a wrong old root");
            assert_eq!(proof, correct, "{what}: accepted a wrong consistency proof");
        };
        if doc.verify(Some(&pk)).is_ok() {
            assert_eq!(size, n, "accepted a proof for another tree size");
            check("document");
        }
        if merkle::verify_consistency(old, n, &old_root, &root, &proof).is_ok() {
            check("raw");
        }
    }
});
