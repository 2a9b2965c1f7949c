//! Parsing a batch of submitted lines and reporting one result per line: shared by
//! `logline add` and `POST /api/spans`, so both speak exactly the same result shape.

use chrono::Utc;
use ledger::{Appended, Draft, InputError, Principal};
use serde_json::{Value, json};

/// One input line's outcome.
pub type LineResult = Result<Appended, String>;

/// Per input line: its number, and either the index of its draft or why it was refused.
pub type Slots = Vec<(usize, Result<usize, InputError>)>;

/// Parses numbered lines; `Ok(index)` points into the returned drafts.
pub fn parse_lines(
    lines: &[(usize, &str)],
    principal: &Principal,
    trusted: &[String],
    idempotency_prefix: Option<&str>,
) -> (Vec<Draft>, Slots) {
    let now = Utc::now();
    let mut drafts = Vec::new();
    let mut slots = Vec::with_capacity(lines.len());
    for (line_no, text) in lines {
        let parsed = match idempotency_prefix {
            None => Draft::parse_line(text, principal, trusted, now),
            Some(prefix) => with_key(text, &format!("{prefix}:{line_no}"))
                .and_then(|v| Draft::from_value(v, principal, trusted, now)),
        };
        match parsed {
            Ok(d) => {
                slots.push((*line_no, Ok(drafts.len())));
                drafts.push(d);
            }
            Err(e) => slots.push((*line_no, Err(e))),
        }
    }
    (drafts, slots)
}

/// Parses a line and gives it an idempotency key unless it carries its own.
pub fn with_key(text: &str, key: &str) -> Result<Value, InputError> {
    if text.len() > ledger::span::MAX_SPAN_BYTES {
        return Err(InputError::TooLarge {
            size: text.len(),
            limit: ledger::span::MAX_SPAN_BYTES,
        });
    }
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| InputError::NotJson(e.to_string()))?;
    if let Some(obj) = v.as_object_mut() {
        obj.entry("idempotency_key").or_insert_with(|| json!(key));
    }
    Ok(v)
}

/// Joins parse outcomes with the store's append results, in line order.
pub fn join(
    slots: Slots,
    results: &[Result<Appended, ledger::AppendError>],
) -> Vec<(usize, LineResult)> {
    slots
        .into_iter()
        .map(|(line, slot)| {
            let r = match slot {
                Ok(i) => match results.get(i) {
                    Some(Ok(a)) => Ok(a.clone()),
                    Some(Err(e)) => Err(e.to_string()),
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
