//! NDJSON exports with a signed trailer (`logline export`, the memory export): the trailer
//! counts the lines and digests them, signed by the node key, so a recipient can check that
//! nothing was added, dropped or changed.

use chrono::{DateTime, Utc};
use ledger::Principal;
use ledger::crypto::NodeKey;
use serde_json::{Value, json};

/// Accumulates exported lines for the trailer.
pub struct SignedExport {
    hasher: blake3::Hasher,
    count: u64,
}

impl Default for SignedExport {
    fn default() -> Self {
        Self::new()
    }
}

impl SignedExport {
    pub fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Counts and digests one line (without its newline) and returns it.
    pub fn line(&mut self, line: String) -> String {
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        self.count += 1;
        line
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `blake3:<hex>` over every line and its newline.
    pub fn digest(&self) -> String {
        format!("blake3:{}", self.hasher.finalize().to_hex())
    }

    /// The last line: `{"trailer": {count, digest, exported_by, tenant_id, exported_at,
    /// public_key, signature}}`.
    pub fn trailer(&self, key: &NodeKey, principal: &Principal, at: DateTime<Utc>) -> Value {
        let digest = self.digest();
        json!({"trailer": {
            "count": self.count,
            "digest": digest,
            "exported_by": principal.user_id,
            "tenant_id": principal.tenant_id,
            "exported_at": ledger::span::format_time(at),
            "public_key": key.public_key(),
            "signature": key.sign_hash(&digest),
        }})
    }
}
