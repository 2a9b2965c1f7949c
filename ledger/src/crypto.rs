//! Canonical JSON (RFC 8785), BLAKE3 digests and Ed25519 signatures.
//!
//! Every hash in the ledger is written `blake3:<64 hex>`; every signature is over the 32 raw
//! digest bytes, so any Ed25519 implementation can check a span from its `curr_hash` alone.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;

/// The `prev_hash` of the first span of every tenant chain.
pub const GENESIS_HASH: &str =
    "blake3:0000000000000000000000000000000000000000000000000000000000000000";

/// RFC 8785 canonical form of a JSON value.
///
/// Written out by hand because it sits on the ingest hot path (a general-purpose canonicaliser
/// cost ~10 µs per span); numbers that are not small integers are delegated to
/// `serde_json_canonicalizer`, and a property test checks both agree on arbitrary values.
pub fn canonical(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// Largest integer an IEEE double holds exactly; beyond it JCS formats the rounded double.
const MAX_SAFE_INT: u64 = 1 << 53;

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i.unsigned_abs() <= MAX_SAFE_INT => out.push_str(&i.to_string()),
            (_, Some(u)) if u <= MAX_SAFE_INT => out.push_str(&u.to_string()),
            // Serialising a finite number cannot fail.
            _ => out.push_str(&serde_json_canonicalizer::to_string(n).unwrap_or_default()),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| utf16_cmp(a.0, b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// JCS orders keys by their UTF-16 code units.
fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{09}' => out.push_str("\\t"),
            '\u{0a}' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\u{0d}' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `blake3:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

/// The raw 32 bytes behind a `blake3:<hex>` string.
pub fn digest_bytes(hash: &str) -> Result<[u8; 32], String> {
    let hex_part = hash
        .strip_prefix("blake3:")
        .ok_or_else(|| format!("hash `{hash}` does not start with `blake3:`"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|e| format!("hash `{hash}`: {e}"))?;
    Ok(out)
}

/// Fresh random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS random source failing leaves no safe way to make keys or salts: stop loudly.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("operating system random source failed: {e}");
    }
    buf
}

/// The node's Ed25519 key. Its `Debug` never shows the secret half.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
    public: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Self {
        Self::from_seed(random_bytes::<32>())
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let public = format!(
            "ed25519:{}",
            hex::encode(signing.verifying_key().to_bytes())
        );
        Self { signing, public }
    }

    /// `ed25519:<hex>` of the verifying key.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// A 32-byte secret derived from the node key for one purpose (BLAKE3 key derivation with
    /// `context`), so keys such as memory's key-encryption key follow the node key without
    /// reusing it or revealing it.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.signing.to_bytes())
    }

    /// The raw 32 bytes of the verifying key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// An Ed25519 signature over arbitrary bytes (signed notes, see [`crate::checkpoint`]).
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Hex signature over the raw bytes of a `blake3:` hash.
    pub fn sign_hash(&self, hash: &str) -> String {
        let bytes = digest_bytes(hash).unwrap_or_default();
        hex::encode(self.signing.sign(&bytes).to_bytes())
    }

    /// Loads the key file, or creates it (mode 0600) when absent. Returns whether it was created.
    /// Safe when several processes start at once: the key is written to a private temporary
    /// file and linked into place, so a reader never sees a half-written key and exactly one
    /// creator wins.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok((Self::from_file_text(path, &text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir)?;
        let key = Self::generate();
        let tmp = dir.join(format!(".node.key.{}", hex::encode(random_bytes::<8>())));
        write_private(&tmp, &hex::encode(key.signing.to_bytes()))?;
        let linked = std::fs::hard_link(&tmp, path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Self::from_file_text(path, &text)
    }

    fn from_file_text(path: &Path, text: &str) -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("node key {} is not 64 hex characters: {e}", path.display()),
            )
        })?;
        Ok(Self::from_seed(seed))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// Parses `ed25519:<hex>`.
pub fn parse_public_key(key: &str) -> Result<VerifyingKey, String> {
    let hex_part = key
        .strip_prefix("ed25519:")
        .ok_or_else(|| format!("public key `{key}` does not start with `ed25519:`"))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|e| format!("public key: {e}"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("public key: {e}"))
}

/// Checks a hex Ed25519 signature over the raw bytes of a `blake3:` hash.
pub fn verify_hash_signature(public_key: &str, hash: &str, signature: &str) -> Result<(), String> {
    let key = parse_public_key(public_key)?;
    let message = digest_bytes(hash)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature, &mut sig)
        .map_err(|e| format!("signature is not 128 hex characters: {e}"))?;
    key.verify_strict(&message, &Signature::from_bytes(&sig))
        .map_err(|_| "Ed25519 signature does not match".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f\\u{e000}-\\u{e0ff}\\u{1f600}-\\u{1f64f}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    "[a-z\\u{e000}-\\u{e0ff}\\u{1f600}-\\u{1f64f}\\x00-\\x1f]{0,6}",
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_matches_the_reference_rfc8785_implementation(v in arb_json()) {
            prop_assert_eq!(canonical(&v), serde_json_canonicalizer::to_string(&v).unwrap());
        }

        #[test]
        fn canonical_form_is_stable_through_a_parse_round_trip(v in arb_json()) {
            let once = canonical(&v);
            let reparsed: Value = serde_json::from_str(&once).unwrap();
            prop_assert_eq!(canonical(&reparsed), once);
        }
    }

    #[test]
    fn canonical_form_sorts_keys_and_normalises_numbers() {
        let v = json!({"b": 1.0, "a": [true, null, "é"], "c": {"z": 1, "y": 2}});
        assert_eq!(
            canonical(&v),
            r#"{"a":[true,null,"é"],"b":1,"c":{"y":2,"z":1}}"#
        );
    }

    #[test]
    fn a_signature_verifies_only_for_its_hash_and_key() {
        let key = NodeKey::generate();
        let h = digest(b"span");
        let sig = key.sign_hash(&h);
        assert!(verify_hash_signature(key.public_key(), &h, &sig).is_ok());
        assert!(verify_hash_signature(key.public_key(), &digest(b"other"), &sig).is_err());
        let other = NodeKey::generate();
        assert!(verify_hash_signature(other.public_key(), &h, &sig).is_err());
    }

    #[test]
    fn racing_creators_all_end_up_with_the_one_key_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        NodeKey::load_or_create(&path)
                            .unwrap()
                            .0
                            .public_key()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = NodeKey::load(&path).unwrap();
        assert!(keys.iter().all(|k| k == on_disk.public_key()));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }

    #[test]
    fn key_file_is_created_private_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (a, created) = NodeKey::load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = NodeKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
