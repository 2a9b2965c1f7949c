//! Inclusion and consistency proofs over a store's Merkle trees, the latest checkpoint a node
//! may hand out, and the self-contained proof documents `logline proof verify` checks offline.
//!
//! A proof needs O(log n) subtree hashes; each is read from `merkle_nodes` (16 leaves and up)
//! or hashed from at most 16 spans' `curr_hash`, all in one round trip per table.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::{self, Checkpoint, CheckpointError, b64, unb64};
use crate::error::StoreError;
use crate::merkle::{
    self, Hash, NodeKey, ProofError, Range, consistency_ranges, fetch_plan, fill_small,
    inclusion_ranges, range_hash, range_subtrees,
};
use crate::store::Store;

/// Why a tree could not be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant `{tenant}` has no Merkle tree yet")]
    NoTree { tenant: String },
    #[error("tenant `{tenant}`: tree size {size} is beyond the tree's {available} spans")]
    BeyondTree {
        tenant: String,
        size: u64,
        available: u64,
    },
    #[error(
        "tenant `{tenant}`: the remembered checkpoint has {remembered} spans but the ledger's tree \
         only {stored} (the chain was truncated or rolled back)"
    )]
    Truncated {
        tenant: String,
        remembered: u64,
        stored: u64,
    },
    #[error(
        "tenant `{tenant}`: the ledger's tree at size {size} has root {stored} but the remembered \
         checkpoint says {remembered} (a fork: the chain was rewritten)"
    )]
    Fork {
        tenant: String,
        size: u64,
        remembered: String,
        stored: String,
    },
    #[error("tenant `{tenant}`: the remembered checkpoint is unusable: {source}")]
    Checkpoint {
        tenant: String,
        #[source]
        source: CheckpointError,
    },
}

/// The hashes of `ranges` in tenant's tree, in order.
async fn range_hashes(
    store: &dyn Store,
    tenant: &str,
    ranges: &[Range],
) -> Result<Vec<Hash>, StoreError> {
    let keys: Vec<NodeKey> = ranges.iter().flat_map(|r| range_subtrees(*r)).collect();
    let (stored, leaves) = fetch_plan(&keys);
    let (mut nodes, leaf_hashes) = store.tree_nodes(tenant, &stored, &leaves).await?;
    if let Some(missing) = stored.iter().find(|k| !nodes.contains_key(k)) {
        return Err(StoreError::Corrupt(format!(
            "tenant `{tenant}`: Merkle node (level {}, index {}) is missing",
            missing.0, missing.1
        )));
    }
    fill_small(&keys, &leaf_hashes, &mut nodes).map_err(|p| {
        StoreError::Corrupt(format!("tenant `{tenant}`: the span at chain_pos {p} is missing"))
    })?;
    ranges
        .iter()
        .map(|r| {
            range_hash(*r, &nodes)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant `{tenant}`: subtree {r:?}")))
        })
        .collect()
}

/// The tenant's stored tree size.
pub async fn tree_size(store: &dyn Store, tenant: &str) -> Result<u64, StoreError> {
    Ok(store.tree_frontier(tenant).await?.map_or(0, |f| f.size()))
}

fn within(tenant: &str, size: u64, available: u64) -> Result<(), TreeError> {
    if size > available {
        return Err(TreeError::BeyondTree {
            tenant: tenant.to_string(),
            size,
            available,
        });
    }
    Ok(())
}

/// The root of the tenant's tree when it had `size` spans.
pub async fn root_at(store: &dyn Store, tenant: &str, size: u64) -> Result<Hash, TreeError> {
    within(tenant, size, tree_size(store, tenant).await?)?;
    if size == 0 {
        return Ok(merkle::empty_root());
    }
    Ok(range_hashes(store, tenant, &[(0, size)]).await?[0])
}

/// The audit path of leaf `index` in the tenant's tree of `size` spans.
pub async fn inclusion(
    store: &dyn Store,
    tenant: &str,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    within(tenant, size, tree_size(store, tenant).await?)?;
    within(tenant, index + 1, size)?;
    Ok(range_hashes(store, tenant, &inclusion_ranges(index, size)).await?)
}

/// The consistency proof between the tenant's trees of `old` and `new` spans.
pub async fn consistency(
    store: &dyn Store,
    tenant: &str,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError> {
    within(tenant, new, tree_size(store, tenant).await?)?;
    within(tenant, old, new)?;
    Ok(range_hashes(store, tenant, &consistency_ranges(old, new)).await?)
}

/// A checkpoint with its signed note text.
#[derive(Clone, Debug, Serialize)]
pub struct SignedCheckpoint {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    pub note: String,
}

/// The checkpoint this node remembers outside the database for `tenant`, if any (its
/// signature and origin checked).
pub fn remembered(store: &dyn Store, tenant: &str) -> Result<Option<SignedCheckpoint>, TreeError> {
    let Some(dir) = &store.checkpointer().policy.dir else {
        return Ok(None);
    };
    let Some(note) = checkpoint::read_latest(dir, tenant).map_err(StoreError::from)? else {
        return Ok(None);
    };
    let c = Checkpoint::open_for(&note, store.node_key().public_key(), tenant).map_err(|source| {
        TreeError::Checkpoint {
            tenant: tenant.to_string(),
            source,
        }
    })?;
    Ok(Some(SignedCheckpoint { checkpoint: c, note }))
}

/// The newest checkpoint of the tenant's tree. The stored tree is signed only when it extends
/// the checkpoint the node remembers (checked with a consistency proof): a truncated or
/// rewritten ledger gets an error naming what differs, never a signature.
pub async fn latest(store: &dyn Store, tenant: &str) -> Result<SignedCheckpoint, TreeError> {
    let frontier = store
        .tree_frontier(tenant)
        .await?
        .ok_or_else(|| TreeError::NoTree {
            tenant: tenant.to_string(),
        })?;
    let (size, root) = (frontier.size(), frontier.root());
    if let Some(known) = remembered(store, tenant)? {
        let k = &known.checkpoint;
        if k.size > size {
            return Err(TreeError::Truncated {
                tenant: tenant.to_string(),
                remembered: k.size,
                stored: size,
            });
        }
        let proof = consistency(store, tenant, k.size, size).await?;
        if merkle::verify_consistency(k.size, size, &k.root, &root, &proof).is_err() {
            let stored = root_at(store, tenant, k.size).await.map_or_else(
                |e| format!("unreadable ({e})"),
                |r| b64(&r),
            );
            return Err(TreeError::Fork {
                tenant: tenant.to_string(),
                size: k.size,
                remembered: k.root_b64(),
                stored,
            });
        }
        if k.size == size {
            return Ok(known);
        }
    }
    let key = store.node_key();
    let checkpoint = Checkpoint {
        origin: checkpoint::origin(key.public_key(), tenant),
        size,
        root,
    };
    let note = checkpoint.sign(key);
    store.checkpointer().after_commit(
        key,
        &[checkpoint::TreeHead {
            tenant: tenant.to_string(),
            size,
            root,
        }],
    );
    Ok(SignedCheckpoint { checkpoint, note })
}

/// A self-contained proof, checkable offline by [`ProofDoc::verify`] (or by hand, see
/// docs/checkpoints.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProofDoc {
    /// The span whose `curr_hash` is given is leaf `leaf_index` of the checkpointed tree.
    Inclusion {
        span_id: Option<Uuid>,
        seq: Option<i64>,
        curr_hash: String,
        leaf_index: u64,
        tree_size: u64,
        /// Base64 SHA-256 hashes, leaf first.
        hashes: Vec<String>,
        /// The signed note of the tree of `tree_size` spans.
        checkpoint: String,
        /// The node key the checkpoint is signed with (`ed25519:<hex>`).
        public_key: String,
    },
    /// The tree of `old_size` spans with root `old_root` is a prefix of the checkpointed tree.
    Consistency {
        old_size: u64,
        /// Base64 root of the older tree (the older checkpoint's third line).
        old_root: String,
        new_size: u64,
        hashes: Vec<String>,
        checkpoint: String,
        public_key: String,
    },
}

/// Why a proof document does not hold.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofDocError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint is for {checkpoint} spans but the proof for {proof}")]
    SizeMismatch { checkpoint: u64, proof: u64 },
    #[error("the proof is signed with {found}, not the expected key {expected}")]
    UntrustedKey { expected: String, found: String },
    #[error("`{0}` is not a base64 SHA-256 hash")]
    BadHash(String),
    #[error("curr_hash: {0}")]
    BadLeaf(String),
    #[error(transparent)]
    Proof(#[from] ProofError),
}

fn decode(hashes: &[String]) -> Result<Vec<Hash>, ProofDocError> {
    hashes
        .iter()
        .map(|h| unb64(h).ok_or_else(|| ProofDocError::BadHash(h.clone())))
        .collect()
}

impl ProofDoc {
    /// Checks the checkpoint's signature (by `key` when given, else by the key the document
    /// names) and the proof against its root; returns the checkpoint.
    pub fn verify(&self, key: Option<&str>) -> Result<Checkpoint, ProofDocError> {
        let (note, public_key, size) = match self {
            Self::Inclusion {
                checkpoint,
                public_key,
                tree_size,
                ..
            } => (checkpoint, public_key, *tree_size),
            Self::Consistency {
                checkpoint,
                public_key,
                new_size,
                ..
            } => (checkpoint, public_key, *new_size),
        };
        if let Some(k) = key
            && k != public_key
        {
            return Err(ProofDocError::UntrustedKey {
                expected: k.to_string(),
                found: public_key.clone(),
            });
        }
        let c = Checkpoint::open(note, public_key)?;
        if c.size != size {
            return Err(ProofDocError::SizeMismatch {
                checkpoint: c.size,
                proof: size,
            });
        }
        match self {
            Self::Inclusion {
                curr_hash,
                leaf_index,
                hashes,
                ..
            } => {
                let leaf = merkle::span_leaf(curr_hash).map_err(ProofDocError::BadLeaf)?;
                merkle::verify_inclusion(&leaf, *leaf_index, size, &decode(hashes)?, &c.root)?;
            }
            Self::Consistency {
                old_size,
                old_root,
                hashes,
                ..
            } => {
                let old = unb64(old_root).ok_or_else(|| ProofDocError::BadHash(old_root.clone()))?;
                merkle::verify_consistency(*old_size, size, &old, &c.root, &decode(hashes)?)?;
            }
        }
        Ok(c)
    }
}

/// Encodes proof hashes for a [`ProofDoc`].
pub fn encode(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(b64).collect()
}
