//! Merkle proofs and signed checkpoints: proofs against a straightforward reference of RFC 9162
//! (any tree size, any leaf, any two sizes), the stored trees of both stores against that
//! reference, checkpoint spans and files, and truncation, rollback and forks detected by
//! `verify` and refused by `latest` — with the database changed behind the application's back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::Utc;
use ledger::checkpoint::{self, Checkpoint, CheckpointPolicy, TreeError};
use ledger::crypto::NodeKey;
use ledger::merkle::{self, Hash};
use ledger::proof::ProofDoc;
use ledger::store::postgres::PgStore;
use ledger::store::sqlite::SqliteStore;
use ledger::store::{self, Store};
use ledger::verify::{ProblemKind, TenantReport, verify_tenant, verify_tenant_against};
use ledger::{Draft, Principal};
use proptest::prelude::*;
use serde_json::json;
use sqlx::Connection;
use testkit::Backend;

// ---- a reference implementation, written from RFC 9162 §2.1 as literally as possible ----

fn sha(parts: &[&[u8]]) -> Hash {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// MTH(D[n]) over leaf inputs.
fn mth(d: &[Vec<u8>]) -> Hash {
    match d.len() {
        0 => sha(&[]),
        1 => sha(&[&[0], &d[0]]),
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

fn largest_pow2_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// PATH(m, D[n]).
fn path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = largest_pow2_below(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b).
fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = largest_pow2_below(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn leaf_inputs(n: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{seed}:{i}").repeat(i % 3 + 1).into_bytes())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any tree size, any leaf, any two sizes: our proofs are the reference's, byte for byte,
    /// and they verify; a wrong index or old root does not. (The tree size is bound by the
    /// signed checkpoint, not the proof: some proofs also fit size n + 1 over the same root.)
    #[test]
    fn proofs_match_the_reference_and_verify(n in 1usize..=600, seed in any::<u64>(), a in any::<usize>(), b in any::<usize>()) {
        let d = leaf_inputs(n, seed);
        let hashes: Vec<Hash> = d.iter().map(|x| merkle::leaf_hash(x)).collect();
        let root = mth(&d);
        prop_assert_eq!(merkle::root(&hashes), root);
        let mut f = merkle::Frontier::new();
        for h in &hashes {
            f.push(*h, |_, _| {});
        }
        prop_assert_eq!(f.root(), root);

        let m = a % n;
        let proof = merkle::proof_from_leaves(&hashes, &merkle::inclusion_ranges(m as u64, n as u64));
        prop_assert_eq!(&proof, &path(m, &d));
        prop_assert!(merkle::verify_inclusion(&hashes[m], m as u64, n as u64, &proof, &root).is_ok());
        if n > 1 {
            let other = (m + 1) % n;
            prop_assert!(merkle::verify_inclusion(&hashes[m], other as u64, n as u64, &proof, &root).is_err());
        }

        let old = b % n + 1; // 1..=n
        let proof = merkle::proof_from_leaves(&hashes, &merkle::consistency_ranges(old as u64, n as u64));
        let expected = if old == n { Vec::new() } else { subproof(old, &d, true) };
        prop_assert_eq!(&proof, &expected);
        let old_root = mth(&d[..old]);
        prop_assert!(merkle::verify_consistency(old as u64, n as u64, &old_root, &root, &proof).is_ok());
        if old < n {
            let mut forked = d.clone();
            forked[old - 1].push(b'!');
            prop_assert!(merkle::verify_consistency(old as u64, n as u64, &mth(&forked[..old]), &root, &proof).is_err());
        }
    }
}

/// Every pair of sizes up to 64, exhaustively (small trees have the most edge cases).
#[test]
fn consistency_proofs_match_the_reference_for_every_pair_of_small_sizes() {
    let d = leaf_inputs(64, 1);
    let hashes: Vec<Hash> = d.iter().map(|x| merkle::leaf_hash(x)).collect();
    for n in 1..=64 {
        for m in 1..n {
            let proof = merkle::proof_from_leaves(
                &hashes[..n],
                &merkle::consistency_ranges(m as u64, n as u64),
            );
            assert_eq!(proof, subproof(m, &d[..n], true), "{m} -> {n}");
        }
    }
}

// ---- the stores ----

const TENANT: &str = "bakery";
const EVERY: u64 = 25;

fn ana() -> Principal {
    Principal::new("ana", TENANT)
}

enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(String),
}

struct Ledger {
    store: Arc<dyn Store>,
    raw: Raw,
    dir: tempfile::TempDir,
}

fn draft(i: usize) -> Draft {
    Draft::from_value(
        json!({"who": "ana", "did": "baked", "this": format!("loaf {i}"),
            "when": "2026-11-20T10:00:00Z", "confirmed_by": "joao", "if_ok": "sell",
            "if_doubt": "taste", "if_not": "bin", "status": "valid", "entity_type": "loaf",
            "visibility": if i.is_multiple_of(3) { "private" } else { "tenant" }}),
        &ana(),
        &[],
        Utc::now(),
    )
    .unwrap()
}

impl Ledger {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate();
        let policy = CheckpointPolicy {
            every: EVERY,
            dir: Some(dir.path().join("checkpoints")),
            tree: true,
        };
        let (store, raw): (Arc<dyn Store>, Raw) = match backend {
            Backend::Sqlite => {
                let s = SqliteStore::open_file(&dir.path().join("ledger.sqlite3"), key)
                    .await
                    .unwrap()
                    .with_checkpoints(policy);
                let pool = s.pool().clone();
                (Arc::new(s), Raw::Sqlite(pool))
            }
            Backend::Postgres => {
                let url = testkit::pg::fresh_database().await;
                (
                    Arc::new(
                        PgStore::connect(&url, key)
                            .await
                            .unwrap()
                            .with_checkpoints(policy),
                    ),
                    Raw::Postgres(url),
                )
            }
        };
        Self { store, raw, dir }
    }

    /// Appends `n` spans in batches of growing size (1, 2, 3, …).
    async fn grow(&self, n: usize) {
        let mut done = 0;
        let mut batch = 1;
        while done < n {
            let k = batch.min(n - done);
            let drafts = (done..done + k).map(draft).collect();
            for r in store::append(self.store.as_ref(), &ana(), drafts)
                .await
                .unwrap()
            {
                r.unwrap();
            }
            done += k;
            batch += 1;
        }
    }

    /// The leaf hashes of the chain, read as the auditor does.
    async fn leaves(&self) -> Vec<Hash> {
        let rows = self.store.audit_page(TENANT, 0, 1_000_000).await.unwrap();
        rows.iter()
            .map(|r| merkle::span_leaf(&r.curr_hash).unwrap())
            .collect()
    }

    async fn verify(&self) -> TenantReport {
        let trusted = store::trusted_keys(self.store.as_ref()).await.unwrap();
        verify_tenant(self.store.as_ref(), TENANT, &trusted)
            .await
            .unwrap()
    }

    /// The file as the node leaves it once its writer thread has caught up.
    fn remembered(&self) -> Checkpoint {
        self.store.checkpointer().flush();
        let text = checkpoint::read_latest(&self.dir.path().join("checkpoints"), TENANT)
            .unwrap()
            .expect("a checkpoint file");
        Checkpoint::open_for(&text, self.store.node_key().public_key(), TENANT).unwrap()
    }

    /// Runs `sql` behind the application's back (`{t}` is the schema prefix).
    async fn tamper(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(pool) => {
                for trigger in [
                    "spans_no_delete",
                    "spans_no_update",
                    "bodies_delete_only_redacted",
                    "merkle_nodes_no_delete",
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS {trigger}"
                    )))
                    .execute(pool)
                    .await
                    .unwrap();
                }
                sqlx::query(sqlx::AssertSqlSafe(sql.replace("{t}", "")))
                    .execute(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Raw::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query("SET session_replication_role = replica")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(sqlx::AssertSqlSafe(sql.replace("{t}", "ledger.")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                conn.close().await.unwrap();
            }
        }
    }

    /// Cuts the chain back to `keep` spans, rolling the head back to match, and drops the
    /// stored tree (so the application rebuilds it from what is left).
    async fn roll_back_to(&self, keep: i64) {
        self.tamper(&format!(
            "DELETE FROM {{t}}span_bodies WHERE (id, seq) IN (SELECT id, seq FROM {{t}}spans \
             WHERE tenant_id = '{TENANT}' AND chain_pos >= {keep})"
        ))
        .await;
        self.tamper(&format!(
            "DELETE FROM {{t}}spans WHERE tenant_id = '{TENANT}' AND chain_pos >= {keep}"
        ))
        .await;
        self.tamper(&format!(
            "UPDATE {{t}}chain_heads SET next_pos = {keep}, last_hash = (SELECT curr_hash FROM \
             {{t}}spans WHERE tenant_id = '{TENANT}' AND chain_pos = {keep} - 1) \
             WHERE tenant_id = '{TENANT}'"
        ))
        .await;
        self.tamper(&format!(
            "DELETE FROM {{t}}merkle_nodes WHERE tenant_id = '{TENANT}'"
        ))
        .await;
        self.tamper(&format!(
            "DELETE FROM {{t}}merkle_heads WHERE tenant_id = '{TENANT}'"
        ))
        .await;
    }
}

fn problem(report: &TenantReport, kind: ProblemKind) -> &ledger::verify::Problem {
    report
        .problems
        .iter()
        .find(|p| p.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {report:#?}"))
}

/// The stored tree equals the reference at every size reached, proofs from the store verify
/// and equal the reference's, checkpoint spans land every EVERY spans, and the file holds the
/// latest signed head.
async fn stored_trees_give_the_reference_proofs(l: Ledger) {
    l.grow(140).await;
    let s = l.store.as_ref();
    let leaves = l.leaves().await;
    let n = leaves.len() as u64;
    // 140 spans in batches 1..=17 cross 25, 50, …: one checkpoint span each time.
    assert!(n > 140, "checkpoint spans were added: {n}");
    let frontier = s.tree_frontier(TENANT).await.unwrap().unwrap();
    assert_eq!(frontier.size(), n);
    let root = merkle::root(&leaves);
    assert_eq!(frontier.root(), root);
    for i in 0..n {
        let proof = checkpoint::inclusion(s, TENANT, i, n).await.unwrap();
        let want = merkle::proof_from_leaves(&leaves, &merkle::inclusion_ranges(i, n));
        assert_eq!(proof, want, "inclusion of {i}");
        merkle::verify_inclusion(&leaves[i as usize], i, n, &proof, &root).unwrap();
    }
    for m in [1, 2, 15, 16, 17, 31, 32, 33, 64, 100, n - 1, n] {
        let proof = checkpoint::consistency(s, TENANT, m, n).await.unwrap();
        let old = merkle::root(&leaves[..m as usize]);
        assert_eq!(checkpoint::root_at(s, TENANT, m).await.unwrap(), old);
        merkle::verify_consistency(m, n, &old, &root, &proof).unwrap();
    }
    assert!(matches!(
        checkpoint::inclusion(s, TENANT, n, n + 1).await,
        Err(TreeError::BeyondTree { .. })
    ));

    // The checkpoint spans say what the tree was when they were written.
    let page = s.audit_page(TENANT, 0, 1000).await.unwrap();
    let mut seen = 0;
    for r in page.iter().filter(|r| r.entity_type == "checkpoint") {
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        let size = body["content"]["tree_size"].as_u64().unwrap();
        assert_eq!(
            size, r.chain_pos as u64,
            "a checkpoint covers the spans before it"
        );
        let note = body["content"]["note"].as_str().unwrap();
        let c = Checkpoint::open_for(note, s.node_key().public_key(), TENANT).unwrap();
        assert_eq!(c.root, merkle::root(&leaves[..size as usize]));
        seen += 1;
    }
    assert!(seen >= 5, "one checkpoint span per {EVERY} spans: {seen}");

    // The remembered file is the newest head, and `latest` hands it out as is.
    let remembered = l.remembered();
    assert_eq!((remembered.size, remembered.root), (n, root));
    let latest = checkpoint::latest(s, s.node_key(), TENANT).await.unwrap();
    assert_eq!(latest.checkpoint, remembered);

    // A proof document checks offline, and not with another key or a changed hash.
    let doc = ProofDoc::Inclusion {
        span_id: None,
        seq: None,
        curr_hash: page[7].curr_hash.clone(),
        leaf_index: 7,
        tree_size: n,
        hashes: ledger::proof::encode(&checkpoint::inclusion(s, TENANT, 7, n).await.unwrap()),
        checkpoint: latest.note.clone(),
        public_key: s.node_key().public_key().to_string(),
    };
    assert_eq!(doc.verify(None).unwrap().size, n);
    assert!(doc.verify(Some(NodeKey::generate().public_key())).is_err());
    let mut bad = doc.clone();
    if let ProofDoc::Inclusion { curr_hash, .. } = &mut bad {
        *curr_hash = page[8].curr_hash.clone();
    }
    assert!(bad.verify(None).is_err());
    assert!(l.verify().await.ok);
}

/// Deleting the tail (and the stored tree), with the chain head left alone: verify names the
/// truncation against the remembered checkpoint.
async fn a_cut_tail_is_found_against_the_checkpoint(l: Ledger) {
    l.grow(60).await;
    let before = l.remembered();
    l.tamper(&format!(
        "DELETE FROM {{t}}spans WHERE tenant_id = '{TENANT}' AND chain_pos >= 50"
    ))
    .await;
    let report = l.verify().await;
    let p = problem(&report, ProblemKind::Truncated);
    assert_eq!(p.table, "checkpoint");
    assert_eq!(p.signed.as_deref(), Some(before.size.to_string().as_str()));
    assert_eq!(p.stored.as_deref(), Some("50"));
}

/// Cutting the tail and rolling the chain head and the tree back to match: the database is
/// self-consistent, only the checkpoint outside it remembers. Verify and `latest` both say
/// truncated, and appending does not overwrite the evidence.
async fn a_rolled_back_chain_is_found_and_not_checkpointed(l: Ledger) {
    l.grow(60).await;
    let before = l.remembered();
    l.roll_back_to(40).await;
    let report = l.verify().await;
    assert!(!report.ok);
    let p = problem(&report, ProblemKind::Truncated);
    assert!(p.reason.contains("the tail was cut"), "{p:?}");
    assert!(
        !report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::ChainHead),
        "the head was rolled back consistently: only the checkpoint can tell"
    );
    let s = l.store.as_ref();
    // Rebuilding the tree happens on the next append; the remembered head must survive it.
    l.grow(3).await;
    assert_eq!(
        l.remembered(),
        before,
        "a shorter tree never replaces the checkpoint"
    );
    assert!(matches!(
        checkpoint::latest(s, s.node_key(), TENANT).await,
        Err(TreeError::Truncated { .. })
    ));
}

/// Rolling back and appending other spans until the chain is longer than before: the root at
/// the checkpoint's size differs (a fork). Verify says so, `latest` refuses to sign, and the
/// remembered checkpoint is not replaced.
async fn a_forked_chain_is_found_and_not_checkpointed(l: Ledger) {
    l.grow(60).await;
    let before = l.remembered();
    l.roll_back_to(40).await;
    l.grow(40).await;
    assert_eq!(
        l.remembered(),
        before,
        "a forked tree never replaces the checkpoint"
    );
    let report = l.verify().await;
    let p = problem(&report, ProblemKind::Fork);
    assert_eq!(p.column, Some("root_hash"));
    assert_eq!(p.chain_pos, Some(before.size as i64 - 1));
    assert_eq!(p.signed.as_deref(), Some(before.root_b64().as_str()));
    let s = l.store.as_ref();
    assert!(matches!(
        checkpoint::latest(s, s.node_key(), TENANT).await,
        Err(TreeError::Fork { .. })
    ));
    // A checkpoint handed out earlier (here: the one remembered) finds it too.
    let trusted = store::trusted_keys(s).await.unwrap();
    let note = before.sign(s.node_key());
    let report = verify_tenant_against(s, TENANT, &trusted, Some(&note))
        .await
        .unwrap();
    problem(&report, ProblemKind::Fork);
}

/// A stored tree altered behind the application's back disagrees with the chain.
async fn an_altered_tree_head_is_found(l: Ledger) {
    l.grow(20).await;
    l.tamper(&format!(
        "UPDATE {{t}}merkle_heads SET peaks = {} WHERE tenant_id = '{TENANT}'",
        match l.raw {
            Raw::Sqlite(_) => "zeroblob(length(peaks))",
            Raw::Postgres(_) => "decode(repeat('00', length(peaks)), 'hex')",
        }
    ))
    .await;
    let report = l.verify().await;
    let p = problem(&report, ProblemKind::TreeHead);
    assert_eq!(p.table, "merkle_heads");
}

/// A checkpoint signed by another key is reported, not silently ignored.
async fn a_checkpoint_from_another_node_is_refused(l: Ledger) {
    l.grow(5).await;
    let s = l.store.as_ref();
    let other = NodeKey::generate();
    let note = Checkpoint {
        origin: checkpoint::origin(other.public_key(), TENANT),
        size: 3,
        root: [0; 32],
    }
    .sign(&other);
    let trusted = store::trusted_keys(s).await.unwrap();
    let report = verify_tenant_against(s, TENANT, &trusted, Some(&note))
        .await
        .unwrap();
    problem(&report, ProblemKind::BadCheckpoint);
}

testkit::both_stores!(
    mod sqlite, postgres;
    open = crate::Ledger::new;
    stored_trees_give_the_reference_proofs,
    a_cut_tail_is_found_against_the_checkpoint,
    a_rolled_back_chain_is_found_and_not_checkpointed,
    a_forked_chain_is_found_and_not_checkpointed,
    an_altered_tree_head_is_found,
    a_checkpoint_from_another_node_is_refused,
);
