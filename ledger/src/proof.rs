//! The self-contained proof documents the API and `logline proof` hand out and `logline proof
//! verify` checks offline: the proof hashes, the leaf or the older root, and the signed
//! checkpoint they lead to. Generating the hashes is [`crate::checkpoint`]'s job.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::{self, Checkpoint, CheckpointError, TreeError, b64, unb64};
use crate::error::StoreError;
use crate::merkle::{self, Hash, ProofError};
use crate::span::StoredSpan;
use crate::store::Store;

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
                let old =
                    unb64(old_root).ok_or_else(|| ProofDocError::BadHash(old_root.clone()))?;
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

/// Where a stored span sits: its tenant and chain position, read from its envelope.
fn position(span: &StoredSpan) -> Result<(String, u64), StoreError> {
    #[derive(Deserialize)]
    struct Pos {
        tenant_id: String,
        chain_pos: u64,
    }
    let p: Pos = serde_json::from_str(&span.envelope)
        .map_err(|e| StoreError::Corrupt(format!("span envelope: {e}")))?;
    Ok((p.tenant_id, p.chain_pos))
}

/// The inclusion proof of a span (already read with the caller's visibility) in the latest
/// checkpoint of its tenant's tree.
pub async fn span_inclusion(
    store: &dyn Store,
    id: Uuid,
    seq: i64,
    span: &StoredSpan,
) -> Result<ProofDoc, TreeError> {
    let (tenant, pos) = position(span)?;
    let key = store.node_key();
    let latest = checkpoint::latest(store, key, &tenant).await?;
    let size = latest.checkpoint.size;
    let hashes = checkpoint::inclusion(store, &tenant, pos, size).await?;
    Ok(ProofDoc::Inclusion {
        span_id: Some(id),
        seq: Some(seq),
        curr_hash: span.curr_hash.clone(),
        leaf_index: pos,
        tree_size: size,
        hashes: encode(&hashes),
        checkpoint: latest.note,
        public_key: key.public_key().to_string(),
    })
}

/// The consistency proof from the tenant's tree of `from` spans to that of `to` spans (the
/// latest checkpoint by default). A checkpoint for an older `to` is signed only after its root
/// is shown consistent with the latest.
pub async fn consistency_doc(
    store: &dyn Store,
    tenant: &str,
    from: u64,
    to: Option<u64>,
) -> Result<ProofDoc, TreeError> {
    let key = store.node_key();
    let latest = checkpoint::latest(store, key, tenant).await?;
    let newest = latest.checkpoint.size;
    let to = to.unwrap_or(newest);
    let beyond = |size, available| TreeError::BeyondTree {
        tenant: tenant.to_string(),
        size,
        available,
    };
    if to > newest {
        return Err(beyond(to, newest));
    }
    if from > to {
        return Err(beyond(from, to));
    }
    let note = if to == newest {
        latest.note
    } else {
        let root = checkpoint::root_at(store, tenant, to).await?;
        let proof = checkpoint::consistency(store, tenant, to, newest).await?;
        if merkle::verify_consistency(to, newest, &root, &latest.checkpoint.root, &proof).is_err() {
            return Err(TreeError::Fork {
                tenant: tenant.to_string(),
                size: to,
                remembered: latest.checkpoint.root_b64(),
                stored: b64(&root),
            });
        }
        Checkpoint {
            origin: checkpoint::origin(key.public_key(), tenant),
            size: to,
            root,
        }
        .sign(key)
    };
    let old_root = checkpoint::root_at(store, tenant, from).await?;
    let hashes = checkpoint::consistency(store, tenant, from, to).await?;
    Ok(ProofDoc::Consistency {
        old_size: from,
        old_root: b64(&old_root),
        new_size: to,
        hashes: encode(&hashes),
        checkpoint: note,
        public_key: key.public_key().to_string(),
    })
}
