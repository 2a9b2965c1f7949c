//! Signed checkpoints: a tenant's tree size and Merkle root ([`crate::merkle`]) in the C2SP
//! `tlog-checkpoint` text format, signed as a C2SP `signed-note` with the node's Ed25519 key.
//!
//! ```text
//! logline/1a2b3c4d5e6f7a8b/acme      <- origin: node key id and tenant
//! 1042                               <- tree size (spans 0..1042 of the chain)
//! 3q2+7w...=                         <- base64 of the RFC 9162 root hash
//!
//! — logline/1a2b3c4d5e6f7a8b/acme 3Jk1...==
//! ```
//!
//! The signature line is `— <key name> base64(key id || signature)`, where the key name is the
//! origin, the key id is the first four bytes of `SHA-256(name || "\n" || 0x01 || public key)`
//! and the signature is Ed25519 over the note's text up to (not including) the blank line.
//! Checkpoints are kept outside the database too (a file per tenant under the data directory,
//! see [`Checkpointer`]): an attacker who rewrites the database cannot rewrite what was
//! already handed out, so truncation, rollback and forks show as a checkpoint the chain no
//! longer matches. This module also reads the stored trees ([`Tree`]) for inclusion and
//! consistency proofs: O(log n) subtree hashes, each read from `merkle_nodes` (16 leaves and
//! up) or hashed from at most 16 spans' `curr_hash`, read with the tree's size in one
//! [`Tree::tree_read`] (one statement on PostgreSQL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::{NodeKey, parse_public_key};
use crate::error::StoreError;
use crate::merkle::{
    self, Frontier, Hash, NodeKey as MerkleKey, Range, consistency_ranges, fetch_plan, fill_small,
    inclusion_ranges, range_hash, range_subtrees,
};

/// Spans between two `checkpoint` spans in a chain unless configured otherwise.
pub const DEFAULT_EVERY: u64 = 1000;

/// A tree head: what a checkpoint asserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    #[serde(serialize_with = "ser_hash")]
    pub root: Hash,
}

fn ser_hash<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(h))
}

/// Why a checkpoint text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("no signature by `{origin}` with this node's key")]
    NoSignature { origin: String },
    #[error("the signature by `{origin}` does not verify")]
    BadSignature { origin: String },
    #[error("checkpoint origin `{found}` is not this node's origin for the tenant (`{expected}`)")]
    WrongOrigin { expected: String, found: String },
}

/// The first eight bytes of the node key, in hex: tells nodes (and their logs) apart.
pub fn node_id(public_key: &str) -> String {
    let hex_part = public_key.strip_prefix("ed25519:").unwrap_or(public_key);
    hex_part.chars().take(16).collect()
}

/// The origin line of a tenant's checkpoints: `logline/<node id>/<tenant>`, the tenant
/// percent-encoded so the origin is a valid note key name (no spaces, no `+`).
pub fn origin(public_key: &str, tenant: &str) -> String {
    let mut out = format!("logline/{}/", node_id(public_key));
    for b in tenant.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The C2SP key id of an Ed25519 key named `name`.
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n\x01");
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl Checkpoint {
    /// The note body: origin, size, base64 root, each newline-terminated.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The signed note text.
    pub fn sign(&self, key: &NodeKey) -> String {
        let body = self.body();
        let sig = key.sign_bytes(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&key_id(&self.origin, &key.public_bytes()));
        blob.extend_from_slice(&sig);
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }

    /// Parses a signed note and checks the signature by its origin under `public_key`
    /// (`ed25519:<hex>`). Other signatures (witnesses) are ignored.
    pub fn open(text: &str, public_key: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_string());
        let (body, sigs) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size: u64 = lines
            .next()
            .and_then(|s| {
                (!s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0')))
                .then(|| s.parse().ok())
                .flatten()
            })
            .ok_or_else(|| bad("the second line is not a tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the third line is not a base64 SHA-256 root"))?;
        let checkpoint = Self {
            origin: origin.to_string(),
            size,
            root,
        };
        let key = parse_public_key(public_key).map_err(CheckpointError::Malformed)?;
        let id = key_id(origin, &key.to_bytes());
        let mut found = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(bad("a signature line does not start with `— `"));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(bad("a signature line has no signature"));
            };
            let Ok(blob) = B64.decode(b64) else {
                return Err(bad("a signature is not base64"));
            };
            if name != origin || blob.len() != 68 || blob[..4] != id {
                continue;
            }
            found = true;
            let sig = Signature::from_slice(&blob[4..]).map_err(|_| bad("signature length"))?;
            if key.verify(body.as_bytes(), &sig).is_err() {
                return Err(CheckpointError::BadSignature {
                    origin: origin.to_string(),
                });
            }
        }
        if !found {
            return Err(CheckpointError::NoSignature {
                origin: origin.to_string(),
            });
        }
        Ok(checkpoint)
    }

    /// [`Checkpoint::open`], and the origin must be this node's for `tenant`.
    pub fn open_for(text: &str, public_key: &str, tenant: &str) -> Result<Self, CheckpointError> {
        let c = Self::open(text, public_key)?;
        let expected = origin(public_key, tenant);
        if c.origin != expected {
            return Err(CheckpointError::WrongOrigin {
                expected,
                found: c.origin,
            });
        }
        Ok(c)
    }

    /// The root as base64 (the note's third line).
    pub fn root_b64(&self) -> String {
        B64.encode(self.root)
    }
}

/// The tenant an origin of this node names (the inverse of [`origin`]).
pub fn tenant_of(origin: &str) -> Option<String> {
    let rest = origin.strip_prefix("logline/")?;
    let (_, tenant) = rest.split_once('/')?;
    let bytes = tenant.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = tenant.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a hash as standard base64 (how proofs carry hashes).
pub fn b64(h: &Hash) -> String {
    B64.encode(h)
}

/// Decodes a base64 SHA-256 hash.
pub fn unb64(s: &str) -> Option<Hash> {
    B64.decode(s).ok().and_then(|v| v.try_into().ok())
}

/// The file a tenant's latest checkpoint is kept in under `dir`.
pub fn file_for(dir: &Path, tenant: &str) -> PathBuf {
    let name: String = origin("", tenant)
        .trim_start_matches("logline//")
        .to_string();
    dir.join(format!("{name}.checkpoint"))
}

/// Reads the tenant's remembered checkpoint text, if any.
pub fn read_latest(dir: &Path, tenant: &str) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(file_for(dir, tenant)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

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

/// The hashes of `ranges` in the tenant's tree, in order, read together with the tree's size
/// (one round trip on PostgreSQL), which must be at least `size`.
async fn range_hashes(
    tree: &dyn Tree,
    tenant: &str,
    size: u64,
    ranges: &[Range],
) -> Result<Vec<Hash>, TreeError> {
    let keys: Vec<MerkleKey> = ranges.iter().flat_map(|r| range_subtrees(*r)).collect();
    let (stored, leaves) = fetch_plan(&keys);
    let read = tree.tree_read(tenant, &stored, &leaves).await?;
    within(tenant, size, read.frontier.map_or(0, |f| f.size()))?;
    let mut nodes = read.nodes;
    if let Some(missing) = stored.iter().find(|k| !nodes.contains_key(k)) {
        return Err(StoreError::Corrupt(format!(
            "tenant `{tenant}`: Merkle node (level {}, index {}) is missing",
            missing.0, missing.1
        ))
        .into());
    }
    fill_small(&keys, &read.leaves, &mut nodes).map_err(|p| {
        StoreError::Corrupt(format!(
            "tenant `{tenant}`: the span at chain_pos {p} is missing"
        ))
    })?;
    Ok(ranges
        .iter()
        .map(|r| {
            range_hash(*r, &nodes)
                .ok_or_else(|| StoreError::Corrupt(format!("tenant `{tenant}`: subtree {r:?}")))
        })
        .collect::<Result<_, _>>()?)
}

/// The tenant's stored tree size.
pub async fn tree_size(tree: &dyn Tree, tenant: &str) -> Result<u64, StoreError> {
    Ok(tree.tree_frontier(tenant).await?.map_or(0, |f| f.size()))
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
pub async fn root_at(tree: &dyn Tree, tenant: &str, size: u64) -> Result<Hash, TreeError> {
    if size == 0 {
        within(tenant, size, tree_size(tree, tenant).await?)?;
        return Ok(merkle::empty_root());
    }
    Ok(range_hashes(tree, tenant, size, &[(0, size)]).await?[0])
}

/// The audit path of leaf `index` in the tenant's tree of `size` spans.
pub async fn inclusion(
    tree: &dyn Tree,
    tenant: &str,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    within(tenant, index + 1, size)?;
    range_hashes(tree, tenant, size, &inclusion_ranges(index, size)).await
}

/// The consistency proof between the tenant's trees of `old` and `new` spans.
pub async fn consistency(
    tree: &dyn Tree,
    tenant: &str,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError> {
    within(tenant, old, new)?;
    range_hashes(tree, tenant, new, &consistency_ranges(old, new)).await
}

/// A tree head a commit left behind, before it is signed, with the tree it grew from.
#[derive(Clone, Debug)]
pub struct TreeHead {
    pub tenant: String,
    pub size: u64,
    pub root: Hash,
    pub old_size: u64,
    pub old_root: Hash,
}

/// How the stores checkpoint: a `checkpoint` span every `every` spans (0: never), and a signed
/// file per tenant after every commit when `dir` is set.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    pub every: u64,
    pub dir: Option<PathBuf>,
    /// Maintain the Merkle tree at all. Off only to measure what checkpointing costs (`bench
    /// ingest`); the next append with it on catches the tree up from the chain.
    pub tree: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every: DEFAULT_EVERY,
            dir: None,
            tree: true,
        }
    }
}

/// The checkpoint files of one node, and the tree head each last recorded (read from the file
/// once, then kept in memory).
pub struct Checkpointer {
    pub policy: CheckpointPolicy,
    known: Mutex<HashMap<String, (u64, Hash)>>,
    /// The last frontier each tenant's append left, so the next append need not read it back.
    /// Used only when its size is the chain head's `next_pos` read under the chain's lock; any
    /// other size (another process appended, a transaction rolled back) reads the table.
    frontiers: Mutex<HashMap<String, Frontier>>,
    files: Arc<Files>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The checkpoint files and the queue of heads waiting to be written to them.
///
/// Signing a note and replacing a file cost more than a single-span commit itself, so commits
/// only queue their head and one thread per store writes the newest head of each tenant:
/// a burst of commits becomes one write. The file trails the database by at most the write in
/// progress and [`WRITE_INTERVAL`]; dropping the store (or [`Checkpointer::flush`]) waits for the
/// queue to drain.
struct Files {
    dir: Option<PathBuf>,
    /// The tree size each tenant's file holds, so an older head never replaces a newer one.
    on_disk: Mutex<HashMap<String, u64>>,
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: HashMap<String, (u64, Hash)>,
    busy: bool,
    closed: bool,
    /// Callers of [`Checkpointer::flush`] waiting now.
    flushing: usize,
}

/// How often at most the writer thread rewrites the files: the window in which the newest
/// commits are in the database but not yet in a checkpoint file.
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Files {
    /// Signs the head and writes it, unless the file already holds one at least as large.
    fn write(&self, key: &NodeKey, tenant: &str, size: u64, root: Hash) -> std::io::Result<String> {
        let note = Checkpoint {
            origin: origin(key.public_key(), tenant),
            size,
            root,
        }
        .sign(key);
        let Some(dir) = &self.dir else {
            return Ok(note);
        };
        let mut on_disk = self
            .on_disk
            .lock()
            .map_err(|_| std::io::Error::other("checkpoint file lock poisoned"))?;
        if on_disk.get(tenant).is_some_and(|s| *s >= size) {
            return Ok(note);
        }
        write_atomic(dir, &file_for(dir, tenant), &note)?;
        on_disk.insert(tenant.to_string(), size);
        Ok(note)
    }

    /// The writer thread: takes everything queued, writes it, and sleeps until more comes or
    /// the store closes.
    fn run(&self, key: NodeKey) {
        loop {
            let batch = {
                let Ok(mut q) = self.queue.lock() else { return };
                while q.pending.is_empty() && !q.closed {
                    q = match self.changed.wait(q) {
                        Ok(q) => q,
                        Err(_) => return,
                    };
                }
                if q.pending.is_empty() {
                    return;
                }
                q.busy = true;
                std::mem::take(&mut q.pending)
            };
            for (tenant, (size, root)) in batch {
                if let Err(e) = self.write(&key, &tenant, size, root) {
                    tracing::error!(error = %e, tenant = %tenant, size, "checkpoint file not written");
                }
            }
            let Ok(mut q) = self.queue.lock() else { return };
            q.busy = false;
            self.changed.notify_all();
            // Heads arriving meanwhile wait and coalesce, unless someone waits for the file.
            let _ = self
                .changed
                .wait_timeout_while(q, WRITE_INTERVAL, |q| !q.closed && q.flushing == 0);
        }
    }
}

impl Checkpointer {
    pub fn new(policy: CheckpointPolicy) -> Self {
        let files = Arc::new(Files {
            dir: policy.dir.clone(),
            on_disk: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        Self {
            policy,
            known: Mutex::new(HashMap::new()),
            frontiers: Mutex::new(HashMap::new()),
            files,
            writer: Mutex::new(None),
        }
    }

    /// Waits until every queued head is in its file.
    pub fn flush(&self) {
        let Ok(mut q) = self.files.queue.lock() else {
            return;
        };
        q.flushing += 1;
        self.files.changed.notify_all();
        while !q.pending.is_empty() || q.busy {
            q = match self.files.changed.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            };
        }
        q.flushing -= 1;
    }

    /// Records `size`/`root` as the tenant's newest head and queues its file write.
    fn enqueue(&self, key: &NodeKey, tenant: &str, size: u64, root: Hash) -> Result<(), TreeError> {
        self.remember(tenant, size, root)?;
        if self.policy.dir.is_none() {
            return Ok(());
        }
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| StoreError::Config("checkpoint writer lock poisoned".into()))?;
        if writer.is_none() {
            let (files, key) = (self.files.clone(), key.clone());
            *writer = Some(
                std::thread::Builder::new()
                    .name("checkpoint-files".into())
                    .spawn(move || files.run(key))
                    .map_err(StoreError::from)?,
            );
        }
        let mut q = self
            .files
            .queue
            .lock()
            .map_err(|_| StoreError::Config("checkpoint queue lock poisoned".into()))?;
        let slot = q.pending.entry(tenant.to_string()).or_insert((size, root));
        if slot.0 < size {
            *slot = (size, root);
        }
        drop(q);
        self.files.changed.notify_all();
        Ok(())
    }

    fn remember(&self, tenant: &str, size: u64, root: Hash) -> Result<(), TreeError> {
        let mut known = self
            .known
            .lock()
            .map_err(|_| StoreError::Config("checkpoint lock poisoned".into()))?;
        if known.get(tenant).is_none_or(|(s, _)| *s < size) {
            known.insert(tenant.to_string(), (size, root));
        }
        Ok(())
    }

    /// The cached frontier of `tenant`, if it describes a chain of exactly `size` spans.
    pub fn cached_frontier(&self, tenant: &str, size: u64) -> Option<Frontier> {
        let cache = self.frontiers.lock().ok()?;
        cache.get(tenant).filter(|f| f.size() == size).cloned()
    }

    /// Remembers the frontier an append left.
    pub fn cache_frontier(&self, tenant: &str, frontier: &Frontier) {
        if let Ok(mut cache) = self.frontiers.lock() {
            cache.insert(tenant.to_string(), frontier.clone());
        }
    }

    /// The tree head last recorded for `tenant`: from memory, else from its file (whose
    /// signature and origin must hold).
    fn known(&self, key: &NodeKey, tenant: &str) -> Result<Option<(u64, Hash)>, TreeError> {
        if let Some(k) = self.known.lock().ok().and_then(|m| m.get(tenant).copied()) {
            return Ok(Some(k));
        }
        Ok(remembered(self, key, tenant)?.map(|c| (c.checkpoint.size, c.checkpoint.root)))
    }

    /// Signs a head and writes it now (the newest checkpoint asked for on a read path).
    fn write(
        &self,
        key: &NodeKey,
        tenant: &str,
        size: u64,
        root: Hash,
    ) -> Result<String, TreeError> {
        self.remember(tenant, size, root)?;
        Ok(self
            .files
            .write(key, tenant, size, root)
            .map_err(StoreError::from)?)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Ok(mut q) = self.files.queue.lock() {
            q.closed = true;
        }
        self.files.changed.notify_all();
        if let Some(t) = self.writer.get_mut().ok().and_then(Option::take) {
            let _ = t.join();
        }
    }
}

/// Reads a store's Merkle trees: what proofs and checkpoints need, apart from the rest of the
/// [`crate::store::Store`] (which extends it).
#[async_trait]
pub trait Tree: Send + Sync {
    /// How this store checkpoints, and where it keeps the signed checkpoint files.
    fn checkpointer(&self) -> &Checkpointer;

    /// The tenant's Merkle tree as stored (its compact range), if it has one (administrative).
    async fn tree_frontier(&self, tenant: &str) -> Result<Option<Frontier>, StoreError>;

    /// The tenant's stored frontier, the stored subtree hashes at `stored` (level >=
    /// [`crate::merkle::STORED_LEVEL`]) and the `curr_hash` of the spans at `leaves` as leaf
    /// hashes, in one read: a proof is one round trip (administrative: proofs reveal hashes
    /// only). Absent rows are simply missing from the maps.
    async fn tree_read(
        &self,
        tenant: &str,
        stored: &[MerkleKey],
        leaves: &[u64],
    ) -> Result<TreeRead, StoreError>;
}

/// One read of a tenant's tree ([`Tree::tree_read`]).
#[derive(Debug, Default)]
pub struct TreeRead {
    /// The stored compact range; `None` when the tenant has no tree.
    pub frontier: Option<Frontier>,
    /// Stored subtree hashes by key.
    pub nodes: HashMap<MerkleKey, Hash>,
    /// Leaf hashes by chain position.
    pub leaves: HashMap<u64, Hash>,
}

/// Records the heads a commit left (called by the stores after commit): each is signed and
/// written only when it extends the head on record — directly (the commit grew from it) or by
/// a consistency proof. A head that does not is logged and not written, so a rewritten ledger
/// never overwrites the evidence against it. Failures are logged, not returned: the spans are
/// durable already, and the next commit records again.
pub async fn record(tree: &dyn Tree, key: &NodeKey, heads: &[TreeHead]) {
    if tree.checkpointer().policy.dir.is_none() {
        return;
    }
    for h in heads {
        if let Err(e) = record_one(tree, key, h).await {
            tracing::error!(error = %e, tenant = %h.tenant, size = h.size, "checkpoint not recorded");
        }
    }
}

async fn record_one(tree: &dyn Tree, key: &NodeKey, h: &TreeHead) -> Result<(), TreeError> {
    let cp = tree.checkpointer();
    match cp.known(key, &h.tenant)? {
        // Another commit (of this process or another) recorded a larger tree already.
        Some((size, _)) if size >= h.size => return Ok(()),
        Some((size, root)) if size == h.old_size && root == h.old_root => {}
        Some((size, root)) => extends(tree, &h.tenant, size, root, h.size, h.root).await?,
        None => {}
    }
    cp.enqueue(key, &h.tenant, h.size, h.root)
}

/// Checks that the tenant's tree of `size` spans with `root` extends the one on record.
async fn extends(
    tree: &dyn Tree,
    tenant: &str,
    known_size: u64,
    known_root: Hash,
    size: u64,
    root: Hash,
) -> Result<(), TreeError> {
    if known_size > size {
        return Err(TreeError::Truncated {
            tenant: tenant.to_string(),
            remembered: known_size,
            stored: size,
        });
    }
    let fork = |stored: String| TreeError::Fork {
        tenant: tenant.to_string(),
        size: known_size,
        remembered: B64.encode(known_root),
        stored,
    };
    // The same size needs no proof (and no read): the roots must be equal.
    if known_size == size {
        return if known_root == root {
            Ok(())
        } else {
            Err(fork(b64(&root)))
        };
    }
    let proof = consistency(tree, tenant, known_size, size).await?;
    if merkle::verify_consistency(known_size, size, &known_root, &root, &proof).is_err() {
        let stored = root_at(tree, tenant, known_size)
            .await
            .map_or_else(|e| format!("unreadable ({e})"), |r| b64(&r));
        return Err(fork(stored));
    }
    Ok(())
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
pub fn remembered(
    cp: &Checkpointer,
    key: &NodeKey,
    tenant: &str,
) -> Result<Option<SignedCheckpoint>, TreeError> {
    let Some(dir) = &cp.policy.dir else {
        return Ok(None);
    };
    let Some(note) = read_latest(dir, tenant).map_err(StoreError::from)? else {
        return Ok(None);
    };
    let c = Checkpoint::open_for(&note, key.public_key(), tenant).map_err(|source| {
        TreeError::Checkpoint {
            tenant: tenant.to_string(),
            source,
        }
    })?;
    Ok(Some(SignedCheckpoint {
        checkpoint: c,
        note,
    }))
}

/// The newest checkpoint of the tenant's tree, signed now if the one on record is older. The
/// stored tree is signed only when it extends the checkpoint on record: a truncated or
/// rewritten ledger gets an error naming what differs, never a signature.
pub async fn latest(
    tree: &dyn Tree,
    key: &NodeKey,
    tenant: &str,
) -> Result<SignedCheckpoint, TreeError> {
    let frontier = tree
        .tree_frontier(tenant)
        .await?
        .ok_or_else(|| TreeError::NoTree {
            tenant: tenant.to_string(),
        })?;
    let (size, root) = (frontier.size(), frontier.root());
    let cp = tree.checkpointer();
    if let Some(known) = remembered(cp, key, tenant)? {
        let k = &known.checkpoint;
        extends(tree, tenant, k.size, k.root, size, root).await?;
        if k.size == size {
            return Ok(known);
        }
    }
    let note = cp.write(key, tenant, size, root)?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            origin: origin(key.public_key(), tenant),
            size,
            root,
        },
        note,
    })
}

/// Writes through a temporary file and a rename, so a reader sees the old or the new note.
fn write_atomic(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!(
        "tmp{}",
        hex::encode(crate::crypto::random_bytes::<4>())
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_a_changed_one_does_not() {
        let key = NodeKey::from_seed([7; 32]);
        let c = Checkpoint {
            origin: origin(key.public_key(), "acme corp+1"),
            size: 42,
            root: [9; 32],
        };
        assert!(c.origin.ends_with("/acme%20corp%2B1"));
        assert_eq!(tenant_of(&c.origin).as_deref(), Some("acme corp+1"));
        let note = c.sign(&key);
        assert!(note.contains("\n\n\u{2014} logline/"));
        assert_eq!(Checkpoint::open(&note, key.public_key()), Ok(c.clone()));
        assert!(Checkpoint::open_for(&note, key.public_key(), "acme corp+1").is_ok());
        assert!(matches!(
            Checkpoint::open_for(&note, key.public_key(), "other"),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        let forged = note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(
            Checkpoint::open(&forged, key.public_key()),
            Err(CheckpointError::BadSignature { .. })
        ));
        let other = NodeKey::from_seed([8; 32]);
        assert!(matches!(
            Checkpoint::open(&note, other.public_key()),
            Err(CheckpointError::NoSignature { .. })
        ));
    }
}
