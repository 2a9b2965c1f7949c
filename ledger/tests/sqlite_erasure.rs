//! A redaction on the embedded store removes the content from the disk, not only from views.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use ledger::crypto::NodeKey;
use ledger::store;
use ledger::{Draft, Principal};
use serde_json::json;

fn on_disk(dir: &std::path::Path, needle: &str) -> bool {
    ["ledger.sqlite3", "ledger.sqlite3-wal"].iter().any(|f| {
        std::fs::read(dir.join(f))
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn redacted_content_no_longer_exists_in_the_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = store::open(None, dir.path(), NodeKey::generate())
        .await
        .unwrap();
    let p = Principal::new("ana", "bakery");
    let secret = "peanut-allergy-xyzzy";
    let mut drafts = vec![
        Draft::from_value(
            json!({"who": "ana", "content": {"note": secret}}),
            &p,
            &[],
            Utc::now(),
        )
        .unwrap(),
    ];
    for i in 0..50 {
        drafts.push(
            Draft::from_value(
                json!({"who": "ana", "this": format!("filler {i}")}),
                &p,
                &[],
                Utc::now(),
            )
            .unwrap(),
        );
    }
    let results = store::append(s.as_ref(), &p, drafts).await.unwrap();
    let id = results[0].as_ref().unwrap().id;
    assert!(
        on_disk(dir.path(), secret),
        "the content is on disk before redaction"
    );
    s.redact(&p, id, "GDPR erasure").await.unwrap();
    assert!(
        !on_disk(dir.path(), secret),
        "the content is gone from the files after redaction"
    );
}
