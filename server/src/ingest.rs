//! Parsing a batch of submitted lines and reporting one result per line: shared by
//! `logline add` and `POST /api/spans`, so both speak exactly the same result shape and apply
//! exactly the same input rules (strict JSON, reserved entity types).

use std::future::Future;

use chrono::{DateTime, Utc};
use ledger::store::AppendResults;
use ledger::{Appended, Draft, InputError, Principal, StoreError};
use serde_json::{Value, json};

/// One input line's outcome.
pub type LineResult = Result<Appended, String>;

/// Per input line: its number, and either the index of its draft or why it was refused.
pub type Slots = Vec<(usize, Result<usize, InputError>)>;

/// Entity types the node writes for itself, and what writes them. A submitted span of one of
/// these types could pass for the node's own record (a chat turn, a rating, an evaluation that
/// promotes a prompt, a checkpoint, a redaction), so submissions are refused. (`eval_run` and
/// `eval_case` are not among them: `logline eval --server` records a person's evaluation
/// through `POST /api/spans`.)
pub const RESERVED: [(&str, &str); 15] = [
    (
        "prompt_run",
        "recorded by POST /api/chat for each chat turn",
    ),
    ("provider_execution", "recorded by POST /api/chat"),
    ("tool_call", "recorded by POST /api/chat"),
    ("feedback", "submit feedback with POST /api/chat/feedback"),
    (
        "prompt_variant_selection",
        "recorded by the chat when it picks a prompt variant",
    ),
    (
        "prompt_variant_promotion",
        "written by the prompt_bandit kernel",
    ),
    (
        "prompt_variant_guardrail",
        "written by the prompt_bandit kernel",
    ),
    (
        "prompt_activation",
        "decided by the prompt_eval kernel after a candidate's evaluation",
    ),
    (
        "checkpoint",
        "signed by the ledger itself; read them with GET /api/checkpoints/latest",
    ),
    (
        "memory",
        "written by POST /api/memory and the chat's memory",
    ),
    (
        "escalation_request",
        "recorded by POST /api/chat when an answer needs a reviewer",
    ),
    ("review_decision", "recorded by POST /api/reviews/{id}"),
    (
        "memory_promotion",
        "ask with POST /api/memory/{id}/promote; reviewers decide with POST /api/memory/promotions/{id}",
    ),
    (
        "redaction",
        "written by `logline redact` and by forgetting memory",
    ),
    (
        "manifest",
        "written by `logline init` and `logline kernels`",
    ),
];

/// What writes a reserved entity type, if `entity_type` is one.
pub fn reserved(entity_type: &str) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(t, _)| *t == entity_type)
        .map(|(_, writer)| *writer)
}

/// Who submits, and under which rules.
#[derive(Clone, Copy)]
pub struct Submitter<'a> {
    pub principal: &'a Principal,
    pub trusted: &'a [String],
    /// Operator override (`logline add --allow-reserved`, e.g. restoring an export): reserved
    /// entity types are accepted. Never set for HTTP callers.
    pub allow_reserved: bool,
}

/// Parses one submitted span: strict JSON ([`ledger::strict`]), the default idempotency key
/// (kept unless the span carries its own), the ledger's validation, and the reserved types.
pub fn parse_one(
    text: &str,
    by: Submitter<'_>,
    idempotency_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Draft, InputError> {
    let mut value = ledger::strict::parse(text)?;
    if let (Some(key), Some(obj)) = (idempotency_key, value.as_object_mut()) {
        obj.entry("idempotency_key").or_insert_with(|| json!(key));
    }
    let draft = Draft::from_value(value, by.principal, by.trusted, now)?;
    if !by.allow_reserved
        && let Some(writer) = reserved(&draft.entity_type)
    {
        return Err(InputError::Reserved {
            entity_type: draft.entity_type,
            writer,
        });
    }
    Ok(draft)
}

/// Parses numbered lines; `Ok(index)` points into the returned drafts. With a prefix, line `n`
/// gets the idempotency key `<prefix>:<n>` unless it carries its own.
pub fn parse_lines(
    lines: &[(usize, &str)],
    by: Submitter<'_>,
    idempotency_prefix: Option<&str>,
) -> (Vec<Draft>, Slots) {
    let now = Utc::now();
    let mut drafts = Vec::new();
    let mut slots = Vec::with_capacity(lines.len());
    for (line_no, text) in lines {
        let key = idempotency_prefix.map(|prefix| format!("{prefix}:{line_no}"));
        match parse_one(text, by, key.as_deref(), now) {
            Ok(d) => {
                slots.push((*line_no, Ok(drafts.len())));
                drafts.push(d);
            }
            Err(e) => slots.push((*line_no, Err(e))),
        }
    }
    (drafts, slots)
}

/// Appends drafts with one result each. The batch is one transaction; if the store fails it
/// as a whole (e.g. a database error on one draft), nothing of it was written, so each draft
/// is retried alone and only the ones that fail again report the error. Only when every draft
/// fails alone is the store itself failing: that error is returned for the whole call.
pub async fn append_each<F, Fut>(
    drafts: Vec<Draft>,
    append: F,
) -> Result<Vec<LineResult>, StoreError>
where
    F: Fn(Vec<Draft>) -> Fut,
    Fut: Future<Output = Result<AppendResults, StoreError>>,
{
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let whole = match append(drafts.clone()).await {
        Ok(results) => {
            return Ok(results
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect());
        }
        Err(e) if drafts.len() == 1 => return Err(e),
        Err(e) => e,
    };
    tracing::warn!(error = %whole, drafts = drafts.len(), "batch append failed; appending each draft alone");
    let mut out = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let r = match append(vec![draft]).await {
            Ok(mut results) => results.pop().map_or_else(
                || Err("no result from the store".to_string()),
                |r| r.map_err(|e| e.to_string()),
            ),
            Err(e) => Err(format!("the store failed this span: {e}")),
        };
        out.push(r);
    }
    if out.iter().all(Result::is_err) {
        return Err(whole);
    }
    Ok(out)
}

/// Joins parse outcomes with the append results, in line order.
pub fn join(slots: Slots, results: &[LineResult]) -> Vec<(usize, LineResult)> {
    slots
        .into_iter()
        .map(|(line, slot)| {
            let r = match slot {
                Ok(i) => match results.get(i) {
                    Some(r) => r.clone(),
                    None => Err("no result from the store".to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (line, r)
        })
        .collect()
}

/// The NDJSON result object of one line.
pub fn result_json(line: usize, result: &LineResult) -> Value {
    match result {
        Ok(a) => {
            json!({"line": line, "ok": true, "id": a.id, "seq": a.seq, "chain_pos": a.chain_pos,
                        "curr_hash": a.curr_hash, "status": a.status, "duplicate": a.duplicate})
        }
        Err(e) => json!({"line": line, "ok": false, "error": e}),
    }
}

/// Numbered non-blank lines of an NDJSON body.
pub fn ndjson_lines(input: &str) -> Vec<(usize, &str)> {
    input
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use ledger::store;
    use testkit::Fixture;

    use super::*;

    const LINES: [(usize, &str); 3] = [
        (1, r#"{"did":"first"}"#),
        (2, r#"{"did":"second"}"#),
        (3, r#"{"did":"third"}"#),
    ];

    fn ana() -> Principal {
        Principal::new("ana", "bakery")
    }

    /// A database error on one draft fails that draft only: the others are still stored.
    async fn a_store_failure_on_one_draft_fails_only_that_draft(f: Fixture) {
        let p = ana();
        let by = Submitter {
            principal: &p,
            trusted: &[],
            allow_reserved: false,
        };
        let (mut drafts, slots) = parse_lines(&LINES, by, None);
        assert_eq!(drafts.len(), 3);
        // Past validation (which refuses it): PostgreSQL cannot index a `who` this long, so its
        // store fails the transaction holding it; SQLite stores it.
        // (Random text: PostgreSQL compresses index entries, so a repeated letter would fit.)
        let who: String = (0..100)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        drafts[1].body.insert("who".into(), json!(who));
        let results = append_each(drafts, |d| store::append(f.store.as_ref(), &p, d))
            .await
            .unwrap();
        let joined = join(slots, &results);
        let oks: Vec<bool> = joined.iter().map(|(_, r)| r.is_ok()).collect();
        match f.store.backend() {
            "postgres" => {
                assert_eq!(oks, [true, false, true], "{joined:?}");
                let e = joined[1].1.as_ref().unwrap_err();
                assert!(e.contains("the store failed this span"), "{e}");
            }
            _ => assert_eq!(oks, [true, true, true], "{joined:?}"),
        }
        for (_, r) in &joined {
            if let Ok(a) = r {
                assert!(f.store.get(&p, a.id, None).await.unwrap().is_some());
            }
        }
    }

    testkit::both_stores!(mod on_sqlite, on_postgres; open = testkit::Fixture::new;
        a_store_failure_on_one_draft_fails_only_that_draft);

    #[tokio::test]
    async fn a_store_that_fails_every_draft_fails_the_call() {
        let p = ana();
        let by = Submitter {
            principal: &p,
            trusted: &[],
            allow_reserved: false,
        };
        let (drafts, _) = parse_lines(&LINES, by, None);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = append_each(drafts, |_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Err(StoreError::Config("down".into())) }
        })
        .await;
        assert!(matches!(r, Err(StoreError::Config(_))));
        assert_eq!(calls.into_inner(), 4, "the batch, then each draft alone");
    }

    #[test]
    fn reserved_types_are_refused_with_their_writer_unless_allowed() {
        let p = ana();
        let mut by = Submitter {
            principal: &p,
            trusted: &[],
            allow_reserved: false,
        };
        for (kind, _) in RESERVED {
            let text = json!({"entity_type": kind}).to_string();
            let e = parse_one(&text, by, None, Utc::now()).unwrap_err();
            assert!(
                matches!(&e, InputError::Reserved { entity_type, .. } if entity_type == kind),
                "{e:?}"
            );
        }
        let e = parse_one(r#"{"entity_type":"feedback"}"#, by, None, Utc::now()).unwrap_err();
        assert!(e.to_string().contains("POST /api/chat/feedback"), "{e}");
        for fine in [
            "prompt_block",
            "prompt_variant",
            "contract",
            "law",
            "contract_amendment",
            "eval_run",
            "eval_case",
            "note",
        ] {
            let text = json!({ "entity_type": fine }).to_string();
            assert!(parse_one(&text, by, None, Utc::now()).is_ok(), "{fine}");
        }
        by.allow_reserved = true;
        assert!(parse_one(r#"{"entity_type":"prompt_run"}"#, by, None, Utc::now()).is_ok());
    }
}
