//! The Merkle tree's side of an append, shared by both stores: grow the tenant's compact range
//! by the spans just placed, collect the complete subtrees to store, and decide whether the
//! commit earns a `checkpoint` span. The stores only read and write the rows.

use chrono::Utc;
use serde_json::json;

use crate::checkpoint::{Checkpoint, origin};
use crate::crypto::NodeKey;
use crate::error::StoreError;
use crate::merkle::{Frontier, Hash, NodeKey as TreeKey, STORED_LEVEL, span_leaf};
use crate::plan::{self, ChainHead, Known, Plan};
use crate::span::{Draft, Principal, Sealed, format_time};

/// A tenant's tree while a transaction extends it.
pub(crate) struct Growth {
    pub frontier: Frontier,
    /// Complete subtrees at [`STORED_LEVEL`] and above closed by this transaction.
    pub nodes: Vec<(TreeKey, Hash)>,
}

impl Growth {
    pub fn new(frontier: Frontier) -> Self {
        Self {
            frontier,
            nodes: Vec::new(),
        }
    }

    /// Appends leaves by their spans' `curr_hash`, in chain order.
    pub fn push_hashes<'a>(
        &mut self,
        hashes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        for h in hashes {
            let leaf = span_leaf(h).map_err(StoreError::Corrupt)?;
            let nodes = &mut self.nodes;
            self.frontier.push(leaf, |key, hash| {
                if key.0 >= STORED_LEVEL {
                    nodes.push((key, *hash));
                }
            });
        }
        Ok(())
    }

    pub fn push_sealed(&mut self, sealed: &[Sealed]) -> Result<(), StoreError> {
        self.push_hashes(sealed.iter().map(|s| s.curr_hash.as_str()))
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }
}

/// The stored frontier must describe exactly the chain before this append; a shorter one is
/// caught up from the spans by the caller, a longer one means the chain lost spans.
pub(crate) fn check_frontier(
    frontier: &Frontier,
    next_pos: i64,
    tenant: &str,
) -> Result<(), StoreError> {
    if frontier.size() > next_pos.max(0) as u64 {
        return Err(StoreError::Corrupt(format!(
            "tenant `{tenant}`: the Merkle tree holds {} spans but the chain head is at {next_pos} \
             (the chain was cut or rolled back; run `logline verify`)",
            frontier.size()
        )));
    }
    Ok(())
}

/// Whether growing from `old` to `new` spans crosses a multiple of `every`.
pub(crate) fn checkpoint_due(old: u64, new: u64, every: u64) -> bool {
    every > 0 && old / every != new / every
}

/// The node acting in a tenant's chain for its own records (checkpoints).
pub(crate) fn node_principal(tenant: &str) -> Principal {
    Principal::new("node", tenant)
}

/// Plans the `checkpoint` span that records the tree head of `size` spans with `root`, placed
/// right after `head`. Its content carries the signed note, so the chain itself says how long
/// it was and what its root was at that point.
pub(crate) fn checkpoint_plan(
    tenant: &str,
    key: &NodeKey,
    head: ChainHead,
    size: u64,
    root: Hash,
) -> Result<Plan, StoreError> {
    let checkpoint = Checkpoint {
        origin: origin(key.public_key(), tenant),
        size,
        root,
    };
    let principal = node_principal(tenant);
    let now = Utc::now();
    let draft = Draft::from_value(
        json!({
            "entity_type": "checkpoint",
            "visibility": "tenant",
            "when": format_time(now),
            "who": principal.user_id,
            "did": "checkpointed the chain",
            "this": format!("tree of {size} spans"),
            "confirmed_by": "node key",
            "if_ok": "prove inclusion and consistency against this tree head",
            "if_doubt": "verify the chain against this checkpoint",
            "if_not": "report truncation, rollback or fork",
            "status": "signed",
            "name": checkpoint.origin,
            "content": {
                "origin": checkpoint.origin,
                "tree_size": size,
                "root_hash": checkpoint.root_b64(),
                "note": checkpoint.sign(key),
            }
        }),
        &principal,
        &[],
        now,
    )?;
    Ok(plan::plan(
        &principal,
        &[draft],
        Known {
            head,
            prior: Default::default(),
            id_heads: Default::default(),
            foreign: Default::default(),
        },
        key,
        now,
    ))
}
