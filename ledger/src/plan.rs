//! Placing a batch of drafts in a tenant's chain. Pure: the stores read the chain head, the
//! version heads and the idempotency keys inside their writing transaction (with the tenant's
//! chain locked), call [`plan`], and persist what it returns. One piece of logic serves both
//! stores, so they cannot drift apart.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::crypto::NodeKey;
use crate::error::AppendError;
use crate::span::{Appended, Draft, Placement, Principal, Sealed, Visibility};

/// The tip of a tenant's chain: the position the next span takes and the hash it links to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub next_pos: i64,
    pub last_hash: String,
}

/// The latest version of a span id, as the version table records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdHead {
    pub latest_seq: i64,
    pub owner_id: String,
    pub visibility: Visibility,
}

/// What the store knows before planning.
pub struct Known {
    pub head: ChainHead,
    /// Earlier appends of this tenant by idempotency key.
    pub prior: HashMap<String, Appended>,
    /// Version heads of the explicit ids in the batch that live in this tenant.
    pub id_heads: HashMap<Uuid, IdHead>,
    /// Explicit ids already taken by another tenant.
    pub foreign: HashSet<Uuid>,
}

/// What the store must write, and what each draft's caller is told.
pub struct Plan {
    pub sealed: Vec<Sealed>,
    pub results: Vec<Result<Appended, AppendError>>,
    pub head: ChainHead,
    /// Version heads to upsert, one per id touched.
    pub id_heads: HashMap<Uuid, IdHead>,
}

pub fn plan(
    principal: &Principal,
    drafts: &[Draft],
    mut known: Known,
    key: &NodeKey,
    now: DateTime<Utc>,
) -> Plan {
    let mut sealed = Vec::with_capacity(drafts.len());
    let mut results = Vec::with_capacity(drafts.len());
    let mut touched: HashMap<Uuid, IdHead> = HashMap::new();
    for draft in drafts {
        if let Some(k) = &draft.idempotency_key
            && let Some(prior) = known.prior.get(k)
        {
            results.push(Ok(Appended {
                duplicate: true,
                ..prior.clone()
            }));
            continue;
        }
        let (id, seq) = match place(principal, draft, &known) {
            Ok(p) => p,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let s = draft.hash(
            Placement {
                id,
                seq,
                chain_pos: known.head.next_pos,
                prev_hash: &known.head.last_hash,
                recorded_at: now,
            },
            key.public_key(),
        );
        let appended = Appended {
            id,
            seq,
            chain_pos: s.chain_pos,
            curr_hash: s.curr_hash.clone(),
            status: s.status.clone(),
            duplicate: false,
        };
        known.head = ChainHead {
            next_pos: s.chain_pos + 1,
            last_hash: s.curr_hash.clone(),
        };
        let head = IdHead {
            latest_seq: seq,
            owner_id: draft.owner_id.clone(),
            visibility: draft.visibility,
        };
        known.id_heads.insert(id, head.clone());
        touched.insert(id, head);
        if let Some(k) = &draft.idempotency_key {
            known.prior.insert(k.clone(), appended.clone());
        }
        sealed.push(s);
        results.push(Ok(appended));
    }
    sign_all(&mut sealed, key);
    Plan {
        sealed,
        results,
        head: known.head,
        id_heads: touched,
    }
}

fn place(principal: &Principal, draft: &Draft, known: &Known) -> Result<(Uuid, i64), AppendError> {
    let Some(id) = draft.id else {
        return match draft.seq {
            None | Some(0) => Ok((Uuid::now_v7(), 0)),
            Some(_) => Err(AppendError::SeqWithoutId),
        };
    };
    if known.foreign.contains(&id) {
        return Err(AppendError::NotVisible(id));
    }
    match known.id_heads.get(&id) {
        None => match draft.seq {
            None | Some(0) => Ok((id, 0)),
            Some(_) => Err(AppendError::NoSuchSpan(id)),
        },
        Some(head) => {
            if head.visibility == Visibility::Private && head.owner_id != principal.user_id {
                return Err(AppendError::NotOwner(id));
            }
            let next = head.latest_seq + 1;
            match draft.seq {
                Some(given) if given != next => Err(AppendError::SeqConflict {
                    id,
                    latest: head.latest_seq,
                    next,
                    given,
                }),
                _ => Ok((id, next)),
            }
        }
    }
}

/// Below this many spans, signing on the calling thread beats starting helpers.
const PARALLEL_SIGN_MIN: usize = 64;

/// Signs every hashed span, spreading the work over the machine's cores.
fn sign_all(sealed: &mut [Sealed], key: &NodeKey) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if sealed.len() < PARALLEL_SIGN_MIN || threads == 1 {
        for s in sealed.iter_mut() {
            s.signature = key.sign_hash(&s.curr_hash);
        }
        return;
    }
    let chunk = sealed.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in sealed.chunks_mut(chunk) {
            scope.spawn(move || {
                for s in part {
                    s.signature = key.sign_hash(&s.curr_hash);
                }
            });
        }
    });
}
