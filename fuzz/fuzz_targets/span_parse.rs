//! Span parsing and canonical JSON: `Draft::parse_line` must never panic on any text, and the
//! canonical form (RFC 8785) of any JSON value must parse back to the same value and be a
//! fixed point (canonicalising it again changes nothing).
#![no_main]

use chrono::{TimeZone, Utc};
use ledger::Principal;
use ledger::crypto::canonical;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let principal = Principal::new("ana", "bakery");
    let now = Utc
        .timestamp_opt(1_780_000_000, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let _ = ledger::Draft::parse_line(text, &principal, &[], now);

    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let once = canonical(&value);
    let back: Value = serde_json::from_str(&once)
        .unwrap_or_else(|e| panic!("canonical JSON does not parse ({e}): {once}"));
    let twice = canonical(&back);
    assert_eq!(once, twice, "canonical JSON is not a fixed point");
    // Numbers may be normalised (1.0 → 1, 1e2 → 100); everything else reads back unchanged.
    if !text.contains(|c: char| matches!(c, '.' | 'e' | 'E')) && !has_big_int(&value) {
        assert_eq!(back, value, "canonical JSON reads back differently: {once}");
    }
});

/// Integers beyond 2^53 are written as the nearest double by RFC 8785, so they do not read
/// back as the same integer.
fn has_big_int(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().map_or(true, |i| i.unsigned_abs() > 1 << 53),
        Value::Array(a) => a.iter().any(has_big_int),
        Value::Object(o) => o.values().any(has_big_int),
        _ => false,
    }
}
