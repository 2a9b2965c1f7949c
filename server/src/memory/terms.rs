//! Words for full-text ranking, without a plaintext index. Each word of an item is lower-cased,
//! stop words dropped, a plural `s` trimmed, and replaced by a keyed hash (BLAKE3 under a
//! subkey of the tenant's data key) written in the letters `a`–`p`, which both PostgreSQL's
//! `simple` text search and FTS5 treat as one plain token. The index thus ranks by the same
//! word matches as a plaintext index would, but reveals only which items share words (an
//! attacker with the database and no key learns equality, not the words; forgetting an item
//! deletes its hashes with it).

use super::keys::Secret32;

const STOP: &[&str] = &[
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "for", "is", "are", "was", "were",
    "be", "it", "that", "this", "my", "me", "i", "you", "your", "we", "our", "do", "does", "did",
    "what", "which", "who", "how", "with", "as", "by", "about", "remember", "from", "there",
    "have", "has", "had", "any", "please", "tell",
];

/// The normalized words of `text`, in order, without repeats.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in text.split(|c: char| !c.is_alphanumeric()) {
        let mut w = raw.to_lowercase();
        if w.len() < 2 || STOP.contains(&w.as_str()) {
            continue;
        }
        if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
            w.pop();
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// The keyed hash of one word: 16 letters `a`–`p` (64 bits).
fn hash_word(key: &Secret32, word: &str) -> String {
    let h = blake3::keyed_hash(key.bytes(), word.as_bytes());
    h.as_bytes()[..8]
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|n| char::from(b'a' + n))
        .collect()
}

/// The hashed words of `text` (for a query: the terms to match).
pub fn hashed(key: &Secret32, text: &str) -> Vec<String> {
    words(text).iter().map(|w| hash_word(key, w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_keyed_letter_tokens_that_never_spell_the_word() {
        let k = Secret32::from_test([3; 32]);
        let t = hashed(&k, "My dog's name is Rex; dogs bark");
        assert_eq!(t.len(), 4, "{t:?}");
        assert!(
            t.iter()
                .all(|h| h.len() == 16 && h.chars().all(|c| ('a'..='p').contains(&c)))
        );
        assert_eq!(hashed(&k, "dog")[0], t[0]);
        assert_ne!(hashed(&Secret32::from_test([4; 32]), "dog")[0], t[0]);
        assert!(!t.concat().contains("rex"));
    }
}
