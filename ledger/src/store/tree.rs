//! The Merkle tree's side of an append, shared by both stores: grow the tenant's compact range
//! by the spans just placed, collect the complete subtrees to store, and decide whether the
//! commit earns a `checkpoint` span. The stores only read and write the rows.

use chrono::Utc;
use serde_json::json;

use crate::checkpoint::{Checkpoint, TreeHead, origin};
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

/// The tree of the tenant a transaction is appending to, grown by each of the tenant's batches
/// and written once after the last: a group commit of eight writers' single spans is eight
/// batches of one tenant, and one `merkle_heads` write per commit instead of eight is most of
/// what the tree costs on ingest.
pub(crate) struct Pending {
    pub tenant: String,
    pub growth: Growth,
    /// The tree before this transaction, for the head recorded after commit.
    pub old_size: u64,
    pub old_root: Hash,
    /// The chain head after the tenant's last batch: where a due `checkpoint` span goes.
    pub head: ChainHead,
}

impl Pending {
    pub fn new(tenant: &str, growth: Growth, head: ChainHead) -> Self {
        Self {
            tenant: tenant.to_string(),
            old_size: growth.size(),
            old_root: growth.frontier.root(),
            growth,
            head,
        }
    }

    /// Whether the transaction's spans crossed a multiple of `every`.
    pub fn checkpoint_due(&self, every: u64) -> bool {
        checkpoint_due(self.old_size, self.growth.size(), every)
    }

    /// The head to record (sign into the checkpoint file) after commit.
    pub fn head(&self) -> TreeHead {
        TreeHead {
            tenant: self.tenant.clone(),
            size: self.growth.size(),
            root: self.growth.frontier.root(),
            old_size: self.old_size,
            old_root: self.old_root,
        }
    }
}

/// The trees one transaction grows: the tenant being appended to, and the heads of those done.
#[derive(Default)]
pub(crate) struct Trees {
    pub pending: Option<Pending>,
    pub heads: Vec<TreeHead>,
}

impl Trees {
    /// The pending tree, when it is `tenant`'s.
    pub fn pending_for(&mut self, tenant: &str) -> Option<&mut Pending> {
        self.pending.as_mut().filter(|p| p.tenant == tenant)
    }

    /// Whether another tenant's tree is pending (and must be written before `tenant`'s batch).
    pub fn other_than(&self, tenant: &str) -> bool {
        self.pending.as_ref().is_some_and(|p| p.tenant != tenant)
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
