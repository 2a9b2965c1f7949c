//! Keys for memory content at rest: one AES-256-GCM data key per tenant, wrapped by a
//! key-encryption key (KEK) and stored in the `memory_keys` table — never in a span body, so
//! redacting bodies cannot lose it and reading a body does not reveal it.
//!
//! The KEK is derived from the node key (BLAKE3 key derivation) unless `LOGLINE_MEMORY_KEY`
//! supplies one (64 hex digits, e.g. fetched from a real KMS by the process that starts the
//! server). Its id (a digest, not the key) is stored beside each wrapped key so that starting
//! with a different KEK fails with a clear error instead of garbage.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ledger::Principal;
use ledger::crypto::{NodeKey, random_bytes};
use ledger::store::memory::{MemoryIndex, WrappedKey};
use tokio::sync::RwLock;

use super::error::MemoryError;

/// The environment variable that supplies the KEK instead of the node key.
pub const MEMORY_KEY_ENV: &str = "LOGLINE_MEMORY_KEY";

/// A 32-byte secret whose `Debug` hides it.
#[derive(Clone)]
pub struct Secret32([u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(…)")
    }
}

impl Secret32 {
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    #[cfg(test)]
    pub fn from_test(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A subkey for one purpose (term hashing, the lexical embedder).
    pub fn derive(&self, context: &str) -> Secret32 {
        Secret32(blake3::derive_key(context, &self.0))
    }
}

/// Ciphertext and its nonce, base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// The KEK and the tenants' unwrapped data keys (cached for the process's life).
pub struct KeyRing {
    kek: Secret32,
    kek_id: String,
    cache: RwLock<HashMap<String, Secret32>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

fn kek_id(source: &str, kek: &Secret32) -> String {
    let id = blake3::derive_key("logline memory kek id v1", kek.bytes());
    format!("{source}:{}", hex::encode(&id[..8]))
}

impl KeyRing {
    /// The KEK derived from the node key.
    pub fn from_node_key(node: &NodeKey) -> Self {
        let kek = Secret32(node.derive_secret("logline memory kek v1"));
        Self::with_kek("node", kek)
    }

    /// The KEK from `LOGLINE_MEMORY_KEY` when set (64 hex digits), else from the node key.
    pub fn from_lookup(
        node: &NodeKey,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MemoryError> {
        match lookup(MEMORY_KEY_ENV) {
            None => Ok(Self::from_node_key(node)),
            Some(v) => {
                let bytes = hex::decode(v.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                let bytes = bytes.ok_or_else(|| {
                    MemoryError::Config(format!("{MEMORY_KEY_ENV} must be 64 hex digits"))
                })?;
                Ok(Self::with_kek("env", Secret32(bytes)))
            }
        }
    }

    fn with_kek(source: &str, kek: Secret32) -> Self {
        Self {
            kek_id: kek_id(source, &kek),
            kek,
            cache: RwLock::default(),
        }
    }

    /// A key derived from the KEK for node-wide purposes (the lexical embedder's hashing).
    pub fn node_subkey(&self, context: &str) -> Secret32 {
        self.kek.derive(context)
    }

    /// The tenant's data key, made and stored (wrapped) on first use.
    pub async fn data_key(
        &self,
        index: &dyn MemoryIndex,
        principal: &Principal,
    ) -> Result<Secret32, MemoryError> {
        let tenant = &principal.tenant_id;
        if let Some(k) = self.cache.read().await.get(tenant) {
            return Ok(k.clone());
        }
        let stored = match index.memory_key(principal).await? {
            Some(w) => w,
            None => {
                let fresh = Secret32(random_bytes::<32>());
                let wrapped = self.wrap(tenant, &fresh)?;
                index.put_memory_key(principal, &wrapped).await?
            }
        };
        let key = self.unwrap(tenant, &stored)?;
        self.cache.write().await.insert(tenant.clone(), key.clone());
        Ok(key)
    }

    fn wrap(&self, tenant: &str, dek: &Secret32) -> Result<WrappedKey, MemoryError> {
        let s = seal(&self.kek, &wrap_aad(tenant), dek.bytes())?;
        Ok(WrappedKey {
            kek_id: self.kek_id.clone(),
            wrapped: format!("{}.{}", s.nonce, s.ciphertext),
        })
    }

    fn unwrap(&self, tenant: &str, w: &WrappedKey) -> Result<Secret32, MemoryError> {
        if w.kek_id != self.kek_id {
            return Err(MemoryError::Config(format!(
                "tenant {tenant}'s memory key is wrapped by key-encryption key {}, but this \
                 server has {} (set {MEMORY_KEY_ENV} or the node key it was made with)",
                w.kek_id, self.kek_id
            )));
        }
        let (nonce, ciphertext) = w
            .wrapped
            .split_once('.')
            .ok_or_else(|| MemoryError::Crypto("wrapped key is malformed".into()))?;
        let plain = open(
            &self.kek,
            &wrap_aad(tenant),
            &Sealed {
                nonce: nonce.into(),
                ciphertext: ciphertext.into(),
            },
        )?;
        <[u8; 32]>::try_from(plain)
            .map(Secret32)
            .map_err(|_| MemoryError::Crypto("unwrapped key has the wrong length".into()))
    }
}

fn wrap_aad(tenant: &str) -> Vec<u8> {
    format!("logline-memory-dek:v1:{tenant}").into_bytes()
}

/// Encrypts `plain` under `key`, bound to `aad` (a fresh random 96-bit nonce each time).
pub fn seal(key: &Secret32, aad: &[u8], plain: &[u8]) -> Result<Sealed, MemoryError> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.bytes()));
    let nonce = random_bytes::<12>();
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
        .map_err(|_| MemoryError::Crypto("encryption failed".into()))?;
    Ok(Sealed {
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Decrypts and authenticates; a wrong key, wrong `aad` or altered byte fails.
pub fn open(key: &Secret32, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, MemoryError> {
    let bad = |what: &str| MemoryError::Crypto(format!("{what} is not base64"));
    let nonce = B64.decode(&sealed.nonce).map_err(|_| bad("nonce"))?;
    let ciphertext = B64
        .decode(&sealed.ciphertext)
        .map_err(|_| bad("ciphertext"))?;
    let nonce = <[u8; 12]>::try_from(nonce)
        .map_err(|_| MemoryError::Crypto("nonce must be 12 bytes".into()))?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key.bytes()));
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &ciphertext,
                aad,
            },
        )
        .map_err(|_| MemoryError::Crypto("ciphertext does not authenticate".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_content_opens_only_with_its_key_and_binding() {
        let k = Secret32([7; 32]);
        let s = seal(&k, b"a", b"my dog is Rex").unwrap();
        assert_eq!(open(&k, b"a", &s).unwrap(), b"my dog is Rex");
        assert!(open(&k, b"b", &s).is_err());
        assert!(open(&Secret32([8; 32]), b"a", &s).is_err());
        assert!(!s.ciphertext.contains("Rex"));
    }

    #[test]
    fn a_memory_key_from_the_environment_must_be_64_hex_digits() {
        let node = NodeKey::from_seed([1; 32]);
        assert!(KeyRing::from_lookup(&node, |_| Some("abc".into())).is_err());
        let env = KeyRing::from_lookup(&node, |_| Some("11".repeat(32))).unwrap();
        assert!(env.kek_id.starts_with("env:"));
        assert!(KeyRing::from_node_key(&node).kek_id.starts_with("node:"));
    }
}
