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
//! longer matches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crypto::{NodeKey, parse_public_key};
use crate::merkle::Hash;

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
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
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
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| bad("no origin"))?;
        let size: u64 = lines
            .next()
            .and_then(|s| {
                (!s.starts_with('+') && !(s.len() > 1 && s.starts_with('0')))
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
        let key = parse_public_key(public_key).map_err(|e| CheckpointError::Malformed(e))?;
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

/// A tree head a commit left behind, before it is signed.
#[derive(Clone, Debug)]
pub struct TreeHead {
    pub tenant: String,
    pub size: u64,
    pub root: Hash,
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

/// Signs tree heads after commit and keeps the newest per tenant in files. Never writes a
/// smaller tree over a larger one (commits of one process can finish out of order).
pub struct Checkpointer {
    pub policy: CheckpointPolicy,
    written: Mutex<HashMap<String, u64>>,
}

impl Checkpointer {
    pub fn new(policy: CheckpointPolicy) -> Self {
        Self {
            policy,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Signs and writes each head (after its transaction committed). A failed write is logged,
    /// not returned: the spans are durable already, and the next commit writes again.
    pub fn after_commit(&self, key: &NodeKey, heads: &[TreeHead]) {
        let Some(dir) = &self.policy.dir else { return };
        if heads.is_empty() {
            return;
        }
        let Ok(mut written) = self.written.lock() else {
            return;
        };
        for h in heads {
            if written.get(&h.tenant).is_some_and(|s| *s >= h.size) {
                continue;
            }
            let note = Checkpoint {
                origin: origin(key.public_key(), &h.tenant),
                size: h.size,
                root: h.root,
            }
            .sign(key);
            match write_atomic(dir, &file_for(dir, &h.tenant), &note) {
                Ok(()) => {
                    written.insert(h.tenant.clone(), h.size);
                }
                Err(e) => tracing::warn!(error = %e, tenant = %h.tenant, "checkpoint file not written"),
            }
        }
    }
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
